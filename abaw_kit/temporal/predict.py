"""Per-frame probabilities from a run's temporal model: what ``abaw evaluate`` and ``abaw submit``
use with ``--model temporal`` (the default once the run has one).

The split's windows (``temporal.predict_stride`` apart) go through the temporal model's EMA
weights; the outputs are stitched back per video (overlaps averaged, never across videos) into
one row per frame of the face store, NaN where no window saw a face, so the evaluation's
no-face interpolation and smoothing run exactly as for the frame model. Results are cached in
the temporal model's ``cache/`` (``RunDir(run).temporal.cache``) per (temporal checkpoint,
embeddings, face store).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from abaw_kit.classes import NUM_CLASSES
from abaw_kit.config import TrainConfig, load_config
from abaw_kit.data.store import FaceStore
from abaw_kit.embed import EmbeddingStore
from abaw_kit.errors import AbawError
from abaw_kit.infer import ProbabilityCache, cache_key
from abaw_kit.progress import progress_bar
from abaw_kit.run_dir import RunDir
from abaw_kit.temporal.data import SplitWindows
from abaw_kit.temporal.models import build_temporal_model
from abaw_kit.temporal.train import (
    EMBEDDING_FIELDS,
    KIND,
    predict_stride,
    stitched_probabilities,
    uses_video_centre,
)
from abaw_kit.temporal.train import window_probabilities as run_windows
from abaw_kit.train.checkpoint import read_weights, split_weights, usable_weights
from abaw_kit.train.distributed import resolve_device
from abaw_kit.train.gpu import device_amp_dtype


def has_temporal_model(run_dir: Path | RunDir) -> bool:
    """True when ``abaw train-temporal`` has left weights in the run."""
    return RunDir(run_dir).temporal.has_weights()


@dataclass
class LoadedTemporal:
    model: nn.Module
    cfg: TrainConfig
    checkpoint: Path
    meta: dict[str, Any]
    device: torch.device
    amp_dtype: torch.dtype | None


def temporal_weights(run: RunDir) -> Path:
    """The weights file ``load_temporal_model`` loads (best, else last), found without
    loading it: what the probability cache is keyed on."""
    folder = run.temporal
    if not folder.has_weights():
        raise AbawError(f"run {run.name} has no temporal model ({folder}); run "
                        f"`abaw train-temporal --run {run.name}` first, or pass "
                        "--model frame")
    return usable_weights(folder.checkpoints)[0]


def load_temporal_model(run_dir: Path | RunDir, *, device: str = "auto") -> LoadedTemporal:
    """The EMA weights of the best (else the last) temporal checkpoint, in eval mode."""
    run = RunDir(run_dir)
    folder, path = run.temporal, temporal_weights(run)
    cfg = load_config(folder.config)
    tensors, meta = read_weights(path)
    if meta.get("kind") != KIND:
        raise AbawError(f"{path} is not a temporal-model checkpoint")
    t, chosen = cfg.temporal, resolve_device(device)
    model = build_temporal_model(t, int(meta["embeddings"]["dim"]), int(meta["window"]))
    try:
        model.load_state_dict(split_weights(tensors)[1])
    except RuntimeError as exc:
        raise AbawError(f"{path} does not match the temporal config {folder.config} "
                        f"({str(exc).splitlines()[0]})") from None
    return LoadedTemporal(model.to(chosen).eval(), cfg, path, meta, chosen,
                          device_amp_dtype(cfg.train.amp, chosen))


def check_embeddings_match(loaded: LoadedTemporal, embeddings: EmbeddingStore) -> None:
    """Refuse embeddings the temporal model was not trained on, naming both."""
    trained = loaded.meta["embeddings"]
    now = {k: embeddings.record.get(k) for k in EMBEDDING_FIELDS}
    if any(trained.get(k) != now[k] for k in EMBEDDING_FIELDS):
        def name(record: dict[str, Any]) -> str:
            return (f"{record.get('checkpoint')} sha256 "
                    f"{str(record.get('checkpoint_sha256'))[:12]} ({record.get('backbone')}, "
                    f"{record.get('dim')}-d)")
        raise AbawError(f"the temporal model {loaded.checkpoint} was trained on embeddings of "
                        f"{name(trained)}, but the {embeddings.split} embeddings are of "
                        f"{name(now)}; retrain it: `abaw train-temporal --run "
                        f"{embeddings.run} --force`")


def temporal_split_probabilities(run_dir: Path | RunDir, store: FaceStore, split: str, *,
                                 device: str = "auto", batch_size: int | None = None,
                                 progress: bool = False) -> np.ndarray:
    """float32 [len(store.index), 8]; NaN rows where no window saw a face. Cached; the cache
    is looked at before the model loads."""
    run = RunDir(run_dir)
    checkpoint = temporal_weights(run)
    embeddings = EmbeddingStore(run, store, split)
    cache = ProbabilityCache(run.temporal.cache, split)

    def key_of(path: Path) -> dict[str, Any]:
        return {**cache_key(path, store),
                "embeddings_sha256": embeddings.record["checkpoint_sha256"]}

    key = key_of(checkpoint)
    cached = cache.get(key, len(store.index))
    if cached is not None:
        return cached
    loaded = load_temporal_model(run, device=device)
    check_embeddings_match(loaded, embeddings)
    if loaded.checkpoint != checkpoint:  # a new best appeared meanwhile
        key = key_of(loaded.checkpoint)
    window = int(loaded.meta["window"])
    windows = SplitWindows(embeddings, window, predict_stride(loaded.cfg.temporal, window),
                           video_centre=uses_video_centre(loaded.cfg.temporal))
    probs = np.full((len(store.index), NUM_CLASSES), np.nan, np.float32)
    with progress_bar(progress, f"temporal {split}", windows.frames_with_face,
                      "frames") as advance:
        outputs = run_windows(loaded.model, windows, np.arange(len(windows)), loaded.device,
                              batch_size=batch_size or 64, amp_dtype=loaded.amp_dtype,
                              advance=advance)
    for video, video_probs in zip(windows.videos, stitched_probabilities(windows, outputs),
                                  strict=True):
        probs[video.rows] = video_probs
    cache.put(key, probs)
    return probs
