"""The layout of a run folder: the one place that names its files and sub-folders.

A run ``<work>/runs/<name>/`` (``abaw train``; ``Workspace.run_dir`` finds it by name)::

    config.yaml          the resolved training config (abaw_kit.config)
    metrics.csv          one row per logged step (abaw_kit.train.logbook)
    train.log            every session's messages, appended
    checkpoints/         step pairs, last.json (points at the newest complete pair) and
                         best.safetensors (the best validation F1): abaw_kit.train.checkpoint
    plots/               training curves (abaw_kit.plots.train) and evaluation plots
                         (confusion_<split>.png, per_class_f1_<split>.png, f1_vs_window_<split>.png)
    cache/               probs_<split>.npy + .json: a split's probabilities (abaw_kit.infer)
    smoothing.json       the filter `abaw evaluate --smooth auto` chose on val, reused by
                         `abaw submit` and `abaw predict` (its format: abaw_kit.smoothing)
    eval_<split>.json    the report of `abaw evaluate` (abaw_kit.evaluate)
    embeddings/<split>/  per-frame embeddings of `abaw embed` (the files inside: abaw_kit.embed)
    temporal/            the temporal model of `abaw train-temporal` (abaw_kit.temporal), laid
                         out like the run itself: config.yaml (the run's config with the
                         temporal section it was trained with), metrics.csv, train.log,
                         checkpoints/, plots/, cache/, smoothing.json, eval_<split>.json

``ModelDir`` names the files every trained model has (a run, and its ``temporal/`` folder);
``RunDir`` adds what only a frame run has. Both are plain path arithmetic: no I/O, no torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from abaw_kit.errors import AbawError
from abaw_kit.workspace import check_split

CONFIG = "config.yaml"
METRICS = "metrics.csv"
LOG = "train.log"
CHECKPOINTS = "checkpoints"
BEST = "best.safetensors"
POINTER = "last.json"
PLOTS = "plots"
CACHE = "cache"
SMOOTHING = "smoothing.json"
EMBEDDINGS = "embeddings"
TEMPORAL = "temporal"


class ModelDir:
    """The folder of one trained model (see the module docstring); ``os.PathLike``, so it can
    be given wherever a path is expected."""

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.path == self.path  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best(self) -> Path:
        """``checkpoints/best.safetensors``."""
        return self.checkpoints / BEST

    @property
    def pointer(self) -> Path:
        """``checkpoints/last.json``."""
        return self.checkpoints / POINTER

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    @property
    def cache(self) -> Path:
        return self.path / CACHE

    @property
    def smoothing(self) -> Path:
        return self.path / SMOOTHING

    def eval_report(self, split: str) -> Path:
        """``eval_<split>.json``."""
        return self.path / f"eval_{check_split(split)}.json"

    def has_weights(self) -> bool:
        """Whether training has left weights here (a best checkpoint or a last pointer)."""
        return self.best.is_file() or self.pointer.is_file()

    def require_config(self) -> Path:
        """``config.yaml``, or a clear error when the folder is not a training run."""
        if not self.config.is_file():
            raise AbawError(f"{self.path} is not a training run (no {CONFIG}); pass --run NAME")
        return self.config


class RunDir(ModelDir):
    """A frame run's folder: a ``ModelDir`` plus its embeddings and its temporal model."""

    __slots__ = ()

    def embeddings(self, split: str) -> Path:
        """``embeddings/<split>/``."""
        return self.path / EMBEDDINGS / check_split(split)

    @property
    def temporal(self) -> ModelDir:
        """``temporal/``: the run's temporal model, with the same files as a run."""
        return ModelDir(self.path / TEMPORAL)
