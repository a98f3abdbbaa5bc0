"""Frame probabilities from a trained run: the one evaluator used during training and after it.

``predict_rows`` is the core: face-store rows -> softmax probabilities, streamed in batches
(DataLoader workers read uint8 faces; resizing and normalisation run on the device), so memory
stays bounded for a million frames. Validation during training calls it on the EMA weights;
``split_probabilities`` (what ``abaw evaluate`` / ``abaw submit`` use) calls it on a whole split
and caches the result in the run's ``cache/`` per (checkpoint, face store), so trying another
smoothing is instant: a cached split does not even load the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from abaw_kit.classes import NUM_CLASSES
from abaw_kit.config import TrainConfig, load_config
from abaw_kit.data.store import FaceStore
from abaw_kit.errors import AbawError
from abaw_kit.metrics import macro_f1
from abaw_kit.progress import progress_bar
from abaw_kit.run_dir import RunDir
from abaw_kit.train.checkpoint import read_weights, split_weights, usable_weights
from abaw_kit.train.distributed import resolve_device
from abaw_kit.train.gpu import (
    autocast,
    device_amp_dtype,
    model_memory_format,
    use_channels_last,
)
from abaw_kit.train.model import Normalizer, create_model
from abaw_kit.workspace import atomic_path, atomic_write_json


@dataclass
class LoadedModel:
    """A run's network in eval mode on its device, with the input pipeline it was trained with."""

    model: nn.Module
    normalize: Normalizer
    device: torch.device
    cfg: TrainConfig
    checkpoint: Path
    which: str
    step: int
    amp_dtype: torch.dtype | None = None
    note: str = ""


def load_run_model(run_dir: Path | RunDir, *, device: str = "auto",
                   which: str = "best") -> LoadedModel:
    """The EMA weights of ``best`` (falls back to ``last`` when no validation ran) or ``last``."""
    run = RunDir(run_dir)
    cfg = load_config(run.require_config())
    path, used = usable_weights(run.checkpoints, which)
    note = "no best checkpoint (no validation ran): using the last one" if used != which else ""
    tensors, meta = read_weights(path)
    chosen = resolve_device(device)
    model, _ = create_model(cfg.model, pretrained="none")
    _, ema_state = split_weights(tensors)
    try:
        model.load_state_dict(ema_state)
    except RuntimeError as exc:
        raise AbawError(f"{path} does not match model.backbone '{cfg.model.backbone}' of "
                        f"{run.config} ({str(exc).splitlines()[0]})") from None
    channels_last = use_channels_last(cfg.train.channels_last, chosen)
    model = model.to(chosen, memory_format=model_memory_format(channels_last)).eval()
    normalize = Normalizer(meta["mean"], meta["std"], int(meta["input_size"]), chosen,
                           channels_last)
    if chosen.type == "cuda":  # fixed batch shapes: autotuned convolutions pay off at once
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
    amp = device_amp_dtype(cfg.train.amp, chosen)
    return LoadedModel(model, normalize, chosen, cfg, path, used, int(meta["step"]), amp, note)


def predict_faces(loaded: LoadedModel, faces: np.ndarray,
                  batch_size: int | None = None) -> np.ndarray:
    """uint8 [n,112,112,3] faces -> float32 [n,8] class probabilities."""
    faces = np.asarray(faces, dtype=np.uint8)
    batch_size = batch_size or default_batch_size(loaded.device, loaded.normalize.size)
    out = np.empty((len(faces), NUM_CLASSES), dtype=np.float32)
    for start in range(0, len(faces), batch_size):
        chunk = torch.from_numpy(faces[start:start + batch_size])
        out[start:start + len(chunk)] = _forward(loaded.model, loaded.normalize, chunk,
                                                 loaded.amp_dtype)
    return out


@torch.inference_mode()
def _forward(model: nn.Module, normalize: Normalizer, images: torch.Tensor,
             amp_dtype: torch.dtype | None) -> np.ndarray:
    return _device_outputs(model, normalize, images, amp_dtype).cpu().numpy()


Head = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""What the streaming loop computes from a normalised batch, on the device (under autocast)."""


def class_probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """float32 softmax of the logits: what validation, evaluation and submission use."""
    return model(x).float().softmax(dim=1)


def _device_outputs(model: nn.Module, normalize: Normalizer, images: torch.Tensor,
                    amp_dtype: torch.dtype | None,
                    head: Head = class_probabilities) -> torch.Tensor:
    """``head`` of a uint8 batch, left on the model's device (call under inference_mode)."""
    x = normalize(images)
    with autocast(amp_dtype):
        return head(model, x)


class FaceRowBatches(Dataset):
    """Batch ``k`` -> uint8 faces of ``rows[k*B:(k+1)*B]`` (one worker call per batch)."""

    def __init__(self, store: FaceStore, rows: np.ndarray, batch_size: int) -> None:
        self.store, self.rows, self.batch_size = store, np.asarray(rows, np.int64), batch_size

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, k: int) -> torch.Tensor:
        rows = self.rows[k * self.batch_size:(k + 1) * self.batch_size]
        return torch.from_numpy(self.store.faces(rows))


GPU_BATCH_PIXELS = 1024 * 112 * 112
OUTPUT_CHUNK_ROWS = 65536  # device-side outputs per host copy: 2 MiB of probabilities
OUTPUT_CHUNK_BYTES = 128 * 1024 * 1024  # ...or less for wide outputs (embeddings)


def default_workers(device: torch.device) -> int:
    """Loader workers for inference.

    On CUDA the model outruns one reading process, so workers read ahead. On CPU the model is
    the bottleneck and reading a batch costs ~1% of its forward pass; a worker would only add
    inter-process copies and compete for the same cores (measured: 0.77x vs 1.0x in-process).
    """
    if device.type != "cuda":
        return 0
    return min(4, max(1, (os.cpu_count() or 1) - 1))


def default_batch_size(device: torch.device, input_size: int = 112) -> int:
    """Frames per inference batch: 256 on CPU (larger only adds memory); on CUDA 1024 at
    112 px, fewer for larger inputs (same pixels per batch, at least 128), which keeps a
    ResNet-50 in fp16 within a few GiB and the GPU busy between the loader's batches."""
    if device.type != "cuda":
        return 256
    return max(128, int(GPU_BATCH_PIXELS // (input_size * input_size)) // 64 * 64)


def predict_rows(model: nn.Module, normalize: Normalizer, store: FaceStore, rows: np.ndarray, *,
                 batch_size: int | None = None, num_workers: int | None = None,
                 amp_dtype: torch.dtype | None = None, progress: bool = False,
                 description: str = "predict") -> np.ndarray:
    """float32 [len(rows), 8] probabilities of face-store rows (all must have a face)."""
    rows = np.asarray(rows, np.int64)
    out = np.empty((len(rows), NUM_CLASSES), dtype=np.float32)
    done = 0  # rows copied to ``out``

    def consume(pending: list[torch.Tensor]) -> None:
        nonlocal done
        done = _copy_out(out, done, pending)

    stream_rows(model, normalize, store, rows, consume, batch_size=batch_size,
                num_workers=num_workers, amp_dtype=amp_dtype, progress=progress,
                description=description)
    return out


def stream_rows(model: nn.Module, normalize: Normalizer, store: FaceStore, rows: np.ndarray,
                consume: Callable[[list[torch.Tensor]], None], *,
                head: Head = class_probabilities, batch_size: int | None = None,
                num_workers: int | None = None, amp_dtype: torch.dtype | None = None,
                progress: bool = False, description: str = "predict") -> None:
    """``head`` of face-store rows (all with a face), handed in row order to ``consume`` as
    device tensors, one call per ``OUTPUT_CHUNK_ROWS`` rows or ``OUTPUT_CHUNK_BYTES`` bytes
    (and one for the rest): what ``predict_rows`` and ``abaw embed`` share.

    The outputs stay on the device until a chunk is full: a host copy per batch would make
    the host wait for every batch and leave the GPU idle while the next one is fetched.
    """
    rows = np.asarray(rows, np.int64)
    if len(rows) == 0:
        return
    batch_size = batch_size or default_batch_size(normalize.device, normalize.size)
    workers = default_workers(normalize.device) if num_workers is None else num_workers
    dataset = FaceRowBatches(store, rows, batch_size)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        pin_memory=normalize.device.type == "cuda",
                        prefetch_factor=2 if workers else None)
    was_training = model.training
    model.eval()
    pending: list[torch.Tensor] = []
    held = held_bytes = 0  # rows and bytes waiting on the device
    try:
        with progress_bar(progress, description, total=len(rows), unit="frames") as advance, \
                torch.inference_mode():
            for images in loader:
                output = _device_outputs(model, normalize, images, amp_dtype, head)
                pending.append(output)
                held += len(output)
                held_bytes += output.numel() * output.element_size()
                if held >= OUTPUT_CHUNK_ROWS or held_bytes >= OUTPUT_CHUNK_BYTES:
                    consume(pending)
                    held, held_bytes, pending = 0, 0, []
                advance(len(images))
            if pending:
                consume(pending)
    finally:
        model.train(was_training)


def _copy_out(out: np.ndarray, start: int, pending: list[torch.Tensor]) -> int:
    """One device-to-host copy of the pending probabilities into ``out[start:]``; the next
    start."""
    block = torch.cat(pending).cpu().numpy()
    out[start:start + len(block)] = block
    return start + len(block)


def validation_rows(store: FaceStore, max_frames: int = 0) -> np.ndarray:
    """Labelled rows with a face, or an evenly spaced subset of ``max_frames`` of them."""
    rows = store.rows(labelled=True, with_face=True)
    if 0 < max_frames < len(rows):
        rows = rows[np.linspace(0, len(rows) - 1, max_frames).round().astype(np.int64)]
    return rows


def macro_f1_of(store: FaceStore, rows: np.ndarray, probs: np.ndarray) -> float:
    """The challenge metric of raw (unsmoothed) frame predictions."""
    labels = store.index["label"].to_numpy(np.int64)[rows]
    return macro_f1(labels, probs.argmax(axis=1))


def split_probabilities(run_dir: Path | RunDir, store: FaceStore, split: str, *,
                        device: str = "auto", batch_size: int | None = None,
                        progress: bool = False, which: str = "best") -> np.ndarray:
    """float32 [len(store.index), 8]; NaN rows for frames without a face. Cached in the run;
    the cache is looked at before the model loads (its key needs only the checkpoint file)."""
    run = RunDir(run_dir)
    run.require_config()
    checkpoint, _ = usable_weights(run.checkpoints, which)  # what load_run_model would load
    cache = ProbabilityCache(run.cache, split)
    key = cache_key(checkpoint, store)
    cached = cache.get(key, len(store.index))
    if cached is not None:
        return cached
    loaded = load_run_model(run, device=device, which=which)
    if loaded.checkpoint != checkpoint:  # a new best appeared meanwhile
        key = cache_key(loaded.checkpoint, store)
    probs = np.full((len(store.index), NUM_CLASSES), np.nan, dtype=np.float32)
    rows = store.rows(labelled=None, with_face=True)
    probs[rows] = predict_rows(loaded.model, loaded.normalize, store, rows,
                               batch_size=batch_size, amp_dtype=loaded.amp_dtype,
                               progress=progress, description=f"predict {split}")
    cache.put(key, probs)
    return probs


def cache_key(checkpoint: Path, store: FaceStore) -> dict[str, Any]:
    """What the probabilities depend on: the checkpoint file and the store's index."""
    stat = checkpoint.stat()
    return {"checkpoint": checkpoint.name, "checkpoint_size": stat.st_size,
            "checkpoint_mtime_ns": stat.st_mtime_ns, "store_index_sha256": store.index_sha256()}


class ProbabilityCache:
    """``probs_<split>.npy`` + ``probs_<split>.json`` (its key, written last as the commit)."""

    def __init__(self, cache_dir: Path, split: str) -> None:
        self.array_path = cache_dir / f"probs_{split}.npy"
        self.key_path = cache_dir / f"probs_{split}.json"

    def get(self, key: dict[str, Any], rows: int) -> np.ndarray | None:
        try:
            stored = json.loads(self.key_path.read_text())
            if stored != key:
                return None
            probs = np.load(self.array_path)
        except (OSError, ValueError):
            return None
        if probs.shape != (rows, NUM_CLASSES) or probs.dtype != np.float32:
            return None
        return probs

    def put(self, key: dict[str, Any], probs: np.ndarray) -> None:
        self.key_path.unlink(missing_ok=True)  # a crash below leaves no key: a cache miss
        with atomic_path(self.array_path, suffix=".npy") as tmp:
            np.save(tmp, probs)
        atomic_write_json(self.key_path, key)
