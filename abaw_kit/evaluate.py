"""`abaw evaluate` and `abaw submit`: probabilities -> filled -> smoothed -> scored or written.

The same chain serves both commands so that the submission is made exactly the way the reported
validation F1 was obtained: frames without a face are interpolated per video (``fill_missing``),
then the smoothing chosen on val (recorded in ``<run>/smoothing.json``) is applied, and only then
the argmax is taken.

The records (``eval_<split>.json``: the full report, what --json prints; ``smoothing.json``;
the evaluation plots) go to the run folder for the frame model, or to ``<run>/temporal/`` for
the temporal model (``--model temporal``, the default once `abaw train-temporal` has run), so
each model keeps its own smoothing choice. The layout: abaw_kit.run_dir.RunDir.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from abaw_kit import submission as sub
from abaw_kit.classes import CLASS_NAMES, NUM_CLASSES
from abaw_kit.data.store import FaceStore
from abaw_kit.errors import AbawError
from abaw_kit.metrics import frame_report, macro_f1
from abaw_kit.plots.eval import plot_confusion, plot_f1_vs_window, plot_per_class_f1
from abaw_kit.run_dir import ModelDir, RunDir
from abaw_kit.smoothing import (
    SmoothSpec,
    check_fits,
    choose_smoothing,
    fill_missing,
    groups_without_faces,
    longest_group,
    parse_spec,
    record_smoothing,
    recorded_smoothing,
)
from abaw_kit.smoothing import smooth as apply_smoothing
from abaw_kit.tables import METRIC_DIGITS, kv_table, right, rows_table
from abaw_kit.workspace import Workspace, atomic_path, atomic_write_json

if TYPE_CHECKING:
    from rich.table import Table

ProbabilityProvider = Callable[[Path, FaceStore, str], np.ndarray]
"""(run_dir, store, split) -> float [len(store.index), 8], NaN rows for frames without a face."""

MODELS = ("auto", "frame", "temporal")
SUBMISSION_STEM = "expr_submission"
DEFAULT_FPS = 30.0
"""Aff-Wild2 videos are mostly 30 fps; only smoothing windows given in seconds depend on it."""


def model_probabilities(device: str = "auto", batch_size: int | None = None,
                        progress: bool = False) -> ProbabilityProvider:
    """The default provider: the run's model over the face store (cached by abaw_kit.infer)."""

    def provide(run_dir: Path, store: FaceStore, split: str) -> np.ndarray:
        from abaw_kit.infer import split_probabilities

        return split_probabilities(run_dir, store, split, device=device, batch_size=batch_size,
                                   progress=progress)

    return provide


@dataclass(frozen=True)
class ProbabilitySource:
    """Where a split's probabilities come from and where their records go."""

    model: str  # "frame" or "temporal"
    provider: ProbabilityProvider
    records: ModelDir  # the folder of eval_<split>.json, smoothing.json and plots/


def probability_source(run_dir: Path, model: str = "auto", device: str = "auto",
                       batch_size: int | None = None, progress: bool = False,
                       probabilities: ProbabilityProvider | None = None) -> ProbabilitySource:
    """``model``: frame, temporal, or auto (temporal when the run has a temporal model)."""
    if model not in MODELS:
        raise AbawError(f"--model {model!r}: expected one of {', '.join(MODELS)}")
    folder = RunDir(run_dir)
    if probabilities is not None:
        return ProbabilitySource("frame" if model == "auto" else model, probabilities, folder
                                 if model != "temporal" else folder.temporal)
    if model == "auto":
        from abaw_kit.temporal.predict import has_temporal_model

        model = "temporal" if has_temporal_model(run_dir) else "frame"
    if model == "frame":
        return ProbabilitySource("frame", model_probabilities(device, batch_size, progress),
                                 folder)

    def provide(run: Path, store: FaceStore, split: str) -> np.ndarray:
        from abaw_kit.temporal.predict import temporal_split_probabilities

        return temporal_split_probabilities(run, store, split, device=device,
                                            batch_size=batch_size, progress=progress)

    return ProbabilitySource("temporal", provide, folder.temporal)


def _split_probabilities(provider: ProbabilityProvider, run_dir: Path, store: FaceStore,
                         split: str) -> np.ndarray:
    probs = np.asarray(provider(run_dir, store, split))
    expected = (len(store.index), NUM_CLASSES)
    if probs.shape != expected:
        raise AbawError(f"probabilities for split '{split}' of run {run_dir.name} have shape "
                        f"{probs.shape}; expected {expected} (one row per frame of the store)")
    return probs


def _filled(probs: np.ndarray, videos: pd.Series) -> tuple[np.ndarray, dict[str, Any]]:
    """Interpolate frames without a face; report how many frames and which videos needed it."""
    missing = np.isnan(probs).any(axis=1)
    empty = groups_without_faces(probs, videos)
    return fill_missing(probs, videos), {"frames_filled": int(missing.sum()),
                                         "videos_without_face": empty}


# ----------------------------------------------------------------------------- output paths


def output_file(work: Workspace, path: str | Path, *, force: bool, option: str) -> Path:
    """``path`` if it may be written: never inside the data root, even with ``force``, and an
    existing file only with ``force``, so one mistyped path cannot replace a release annotation
    or an earlier result. ``option`` names the flag the user gave the path with."""
    path = Path(path).expanduser()
    root = work.data_root()
    target = path.resolve()
    if root is not None and (target == root or root in target.parents):
        raise AbawError(f"{path} is inside the data root {root} (the release `abaw prepare` "
                        f"read); nothing is written there, even with --force: choose another "
                        f"{option}")
    if path.is_dir():
        raise AbawError(f"{option} {path} is a folder; expected a file path")
    if path.exists() and not path.is_file():
        raise AbawError(f"{option} {path} exists and is not a regular file; expected a file path")
    if (path.exists() or path.is_symlink()) and not force:
        raise AbawError(f"{path} already exists; pass --force to overwrite it or choose another "
                        f"{option}")
    return path


# ----------------------------------------------------------------------------- smoothing choice


def _choose_and_record(records: ModelDir, probs: np.ndarray, labels: np.ndarray,
                       videos: pd.Series, split: str, fps: float
                       ) -> tuple[SmoothSpec, list[dict[str, Any]]]:
    spec, table = choose_smoothing(probs, labels, videos, fps=fps)
    record_smoothing(records.smoothing, spec, table, chosen_on=split, fps=fps)
    return spec, table


def _auto_spec(work: Workspace, run_dir: Path, source: ProbabilitySource,
               fps: float) -> SmoothSpec:
    """For a split other than val: the recorded choice, else choose on val now and record it."""
    recorded = recorded_smoothing(source.records.smoothing)
    if recorded is not None:
        return recorded
    store = FaceStore(work.store_dir("val"))
    index = store.index
    filled, _ = _filled(_split_probabilities(source.provider, run_dir, store, "val"),
                        index["video"])
    spec, _ = _choose_and_record(source.records, filled, index["label"].to_numpy(),
                                 index["video"], "val", fps)
    return spec


# ----------------------------------------------------------------------------- evaluate


def evaluate_split(work: Workspace, split: str = "val", run: str | None = None,
                   smooth: str | SmoothSpec = "auto", predictions_file: str | Path | None = None,
                   write_predictions: str | Path | None = None, force: bool = False,
                   device: str = "auto", batch_size: int | None = None,
                   progress: bool = False,
                   fps: float = DEFAULT_FPS,
                   probabilities: ProbabilityProvider | None = None,
                   model: str = "auto") -> dict[str, Any]:
    """Score a split: an ABAW-format file (``predictions_file``, no model) or a run's model.

    With a model: F1 before and after smoothing, per class, per video; ``smooth='auto'`` picks the
    filter on val and records it for `abaw submit`. Writes the report and plots into the run
    (``model``: see ``probability_source``; the temporal model's records go to its folder).
    ``write_predictions`` must be a new file (or ``force``) outside the data root; it and the
    smoothing window are checked before the model runs.
    """
    store = FaceStore(work.store_dir(split))
    index = store.index
    labels = index["label"].to_numpy(np.int64)
    if not (labels >= 0).any():
        raise AbawError(f"split '{split}' has no labelled frames ({work.store_dir(split)}); "
                        "scoring needs labels: use --split val (test labels are private)")
    if predictions_file is not None:
        if write_predictions is not None:
            raise AbawError("--write-predictions needs a model run; it cannot be combined with "
                            "--predictions")
        return score_file(predictions_file, index, split)
    spec = parse_spec(smooth)
    videos = index["video"]
    check_fits(spec, longest_group(videos), fps)
    out_file = (output_file(work, write_predictions, force=force, option="--write-predictions")
                if write_predictions is not None else None)
    run_dir = work.run_dir(run)
    source = probability_source(run_dir, model, device, batch_size, progress, probabilities)
    records = source.records
    raw = _split_probabilities(source.provider, run_dir, store, split)
    has_face = ~np.isnan(raw).any(axis=1)
    filled, fill_report = _filled(raw, videos)
    before = macro_f1(labels, filled.argmax(axis=1))
    face_labels = np.where(has_face, labels, -1)
    face_f1 = (macro_f1(face_labels, _argmax_or_zero(raw)) if (face_labels >= 0).any()
               else None)
    table: list[dict[str, Any]] = []
    chosen_here = False
    if spec.kind == "auto":
        if split == "val":
            spec, table = _choose_and_record(records, filled, labels, videos, split, fps)
            chosen_here = True
        else:
            spec = _auto_spec(work, run_dir, source, fps)
    preds = apply_smoothing(filled, videos, spec, fps=fps).argmax(axis=1)
    report = frame_report(labels, preds, videos)
    result: dict[str, Any] = {
        "split": split, "run": run_dir.name, "run_dir": str(run_dir), "model": source.model,
        "smoothing": str(spec),
        "smoothing_chosen_on_this_split": chosen_here,
        "macro_f1_before_smoothing": before,
        "macro_f1_frames_with_face": face_f1,
        **report, **fill_report,
        "smoothing_table": table,
    }
    if out_file is not None:
        path = sub.write_predictions(out_file, videos, index["frame"], preds)
        result["predictions_file"] = str(Path(path).resolve())
    result["plots"] = _evaluation_plots(records, split, report, table)
    result["report_file"] = str(records.eval_report(split))
    atomic_write_json(records.eval_report(split), result)
    return result


def _argmax_or_zero(probs: np.ndarray) -> np.ndarray:
    """Argmax per row; rows without a face (NaN) get 0 and must be masked out by the caller."""
    return np.nan_to_num(probs, nan=0.0).argmax(axis=1)


def _evaluation_plots(records: ModelDir, split: str, report: dict[str, Any],
                      table: list[dict[str, Any]]) -> dict[str, str]:
    plots = records.plots
    written = {
        "confusion": plot_confusion(report["confusion"], plots / f"confusion_{split}.png",
                                    title=f"{split}: confusion (row-normalised)"),
        "per_class_f1": plot_per_class_f1(report["per_class_f1"],
                                          plots / f"per_class_f1_{split}.png",
                                          title=f"{split}: per-class F1"),
    }
    if table:
        written["f1_vs_window"] = plot_f1_vs_window(table, plots / f"f1_vs_window_{split}.png")
    return {name: str(path) for name, path in written.items()}


def score_file(path: str | Path, index: pd.DataFrame, split: str) -> dict[str, Any]:
    """Score an ABAW-format file against the store's labels; every labelled frame needs a line.

    Lines for frames the split does not annotate are ignored and counted; lines naming a video
    that is not in the split are an error (most likely the file of another split).
    """
    path = Path(path)
    table = sub.read_predictions(path)
    known = set(index["video"].unique())
    unknown = ~table["video"].isin(known).to_numpy()
    if unknown.any():
        first = int(np.flatnonzero(unknown)[0])
        raise AbawError(f"{path}:{first + 2}: video '{table['video'].iat[first]}' is not in "
                        f"split '{split}'; expected a prediction file for that split")
    merged = index[["video", "frame", "label"]].merge(
        table.rename(columns={"label": "pred"}), on=["video", "frame"], how="left", sort=False)
    lacking = ((merged["label"] >= 0) & merged["pred"].isna()).to_numpy()
    if lacking.any():
        row = merged.iloc[int(np.flatnonzero(lacking)[0])]
        raise AbawError(f"{path}: no prediction for {sub.format_frame(row['video'], row['frame'])}"
                        f" ({int(lacking.sum())} labelled frames of split '{split}' lack one)")
    scored = merged["label"].to_numpy(np.int64) >= 0
    preds = merged["pred"].fillna(0).to_numpy(np.int64)
    report = frame_report(merged["label"].to_numpy(np.int64), preds, merged["video"])
    return {"split": split, "predictions_file": str(path.resolve()), "smoothing": "none (labels)",
            **report, "lines": len(table),
            "lines_ignored": int(len(table) - int(scored.sum()))}


# ----------------------------------------------------------------------------- submit


def load_example(work: Workspace) -> tuple[pd.DataFrame, str]:
    """The frames the submission must list, and where they came from.

    The release's example file (recorded by `prepare` in the workspace's source.json) decides;
    without it, the test face store, which `prepare` built from that same file.
    """
    from abaw_kit.data.release import read_example_file

    record = work.read_source()
    recorded = record.example_file if record else None
    if recorded is not None and recorded.is_file():
        return read_example_file(recorded), str(recorded)
    test_dir = work.store_dir("test")
    if (test_dir / "index.parquet").is_file():
        index = FaceStore(test_dir).index
        return index[["video", "frame"]].reset_index(drop=True), f"{test_dir} (test face store)"
    raise AbawError(f"no example submission known: neither {work.source_file} names an existing "
                    "example file nor is there a test face store; run `abaw prepare` on a "
                    "release with test_set_examples/")


def _submission_spec(records: ModelDir, requested: str | SmoothSpec | None,
                     model: str) -> SmoothSpec:
    if requested is not None and parse_spec(requested).kind != "auto":
        return parse_spec(requested)
    recorded = recorded_smoothing(records.smoothing)
    if recorded is not None:
        return recorded
    if requested is None:
        return SmoothSpec("none")
    raise AbawError(f"--smooth auto: the {model} model has no recorded choice "
                    f"({records.smoothing}); run `abaw evaluate --split val --model "
                    f"{model}` first")


def _output_path(work: Workspace, out: str | Path | None, force: bool) -> Path:
    """A numbered new file in ``<work>/submissions`` (or in the folder ``out``), else ``out``;
    an existing file only with ``force``, and never a path inside the data root."""
    if out is None or Path(out).expanduser().is_dir():
        folder = work.root / "submissions" if out is None else Path(out).expanduser()
        return output_file(work, sub.next_free_path(folder, SUBMISSION_STEM), force=False,
                           option="--out")
    return output_file(work, out, force=force, option="--out")


def make_submission(work: Workspace, run: str | None = None, out: str | Path | None = None,
                    smooth: str | SmoothSpec | None = None, force: bool = False,
                    device: str = "auto", batch_size: int | None = None,
                    progress: bool = False,
                    fps: float = DEFAULT_FPS,
                    probabilities: ProbabilityProvider | None = None,
                    model: str = "auto") -> dict[str, Any]:
    """Predict the test set, fill, smooth, align to the example, write and check the file.

    ``smooth=None`` applies the model's recorded choice (`evaluate --smooth auto`), else none.
    ``out=None`` writes a numbered file in ``<work>/submissions``; see ``_output_path``.
    ``model``: frame, temporal, or auto (see ``probability_source``).
    """
    run_dir = work.run_dir(run)
    example, example_source = load_example(work)
    source = probability_source(run_dir, model, device, batch_size, progress, probabilities)
    spec = _submission_spec(source.records, smooth, source.model)
    store = FaceStore(work.store_dir("test"))
    index = store.index
    check_fits(spec, longest_group(index["video"]), fps)
    path = _output_path(work, out, force)  # before the model runs: a refusal costs nothing
    filled, fill_report = _filled(_split_probabilities(source.provider, run_dir, store, "test"),
                                  index["video"])
    smoothed = apply_smoothing(filled, index["video"], spec, fps=fps)
    aligned, differences = sub.align_to_example(example, index["video"], index["frame"], smoothed)
    labels = aligned.argmax(axis=1)
    with atomic_path(path, suffix=".txt") as unchecked:
        # Checked before it takes its final name: a file that fails the check never appears.
        sub.write_predictions(unchecked, example["video"], example["frame"], labels)
        summary = sub.check_submission(unchecked, example)
    summary["path"] = str(path.resolve())
    demo_score = _demo_test_f1(work, example, labels)
    if demo_score is not None:
        summary["demo_test_macro_f1"] = demo_score
    not_listed = sorted(set(index["video"].unique()) - set(example["video"].unique()))
    return {
        **summary, "run": run_dir.name, "model": source.model, "smoothing": str(spec),
        "example": example_source,
        **fill_report,
        "frames_filled_from_edge": int(sum(d["filled"] for d in differences)),
        "frames_dropped_beyond_example": int(sum(d["dropped"] for d in differences)),
        "videos_differing_from_example": differences,
        "videos_not_in_example": not_listed,
    }


def _demo_test_f1(work: Workspace, example: pd.DataFrame, labels: np.ndarray) -> float | None:
    """Where the release's hidden test labels are known (the demo's): the submission's
    macro-F1; else None."""
    record = work.read_source()
    truth_file = record.test_labels_file if record else None
    if truth_file is None or not truth_file.is_file():
        return None
    truth = sub.read_predictions(truth_file).rename(columns={"label": "truth"})
    merged = example[["video", "frame"]].assign(pred=labels).merge(
        truth, on=["video", "frame"], how="inner")
    return round(macro_f1(merged["truth"].to_numpy(), merged["pred"].to_numpy()), 4)


def check_file(path: str | Path, work: Workspace) -> dict[str, Any]:
    """`abaw submit --check FILE`: validate a submission against the release's example file."""
    example, example_source = load_example(work)
    return {**sub.check_submission(path, example), "example": example_source}


# ----------------------------------------------------------------------------- tables


def evaluation_tables(result: dict[str, Any], worst_videos: int = 5) -> list[Table]:
    """Rich tables for people: the summary, per class, and the videos with the lowest F1."""
    summary = kv_table(f"evaluation of split {result['split']}",
                       [(key, result[key]) for key in (
                           "run", "model", "predictions_file", "smoothing",
                           "macro_f1_before_smoothing", "macro_f1", "accuracy", "n_frames",
                           "frames_filled", "report_file") if result.get(key) is not None],
                       digits=METRIC_DIGITS)
    classes = rows_table("per class", ["class", *right("F1", "support")],
                         [(name, float(result["per_class_f1"][name]), result["support"][name])
                          for name in CLASS_NAMES], digits=METRIC_DIGITS)
    tables = [summary, classes]
    per_video = result.get("per_video_f1") or {}
    if per_video:
        worst = sorted(per_video.items(), key=lambda item: item[1])[:worst_videos]
        tables.append(rows_table(
            f"{min(worst_videos, len(per_video))} videos with the lowest F1",
            ["video", *right("F1")], [(video, float(score)) for video, score in worst],
            digits=METRIC_DIGITS))
    return tables
