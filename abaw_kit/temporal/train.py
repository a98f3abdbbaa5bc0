"""``train_temporal()``: the plain function behind ``abaw train-temporal``.

It trains the ``temporal`` section's sequence model on windows of a finished frame run's
embeddings (``abaw embed``): train windows for the loss, val windows for the macro-F1 every
``temporal.eval_every`` steps, the best EMA weights kept. The frame model stays frozen, so
one frame run can carry a temporal model trained, retrained and resumed independently.

It writes ``<run>/temporal/`` (``RunDir(run).temporal``), laid out like a run folder (see
abaw_kit.run_dir): ``config.yaml`` is the run's config with the ``temporal`` section as
resolved here, ``checkpoints/`` has the frame trainer's layout; ``cache/`` and the evaluation
records come later (``abaw evaluate --model temporal``).
Under torchrun every rank trains on its share of each global batch (DDP); rank 0 writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from abaw_kit.classes import NUM_CLASSES
from abaw_kit.config import TemporalConfig, TrainConfig, changed_keys, load_config, save_config
from abaw_kit.data.store import FaceStore
from abaw_kit.embed import EmbeddingStore
from abaw_kit.errors import AbawError
from abaw_kit.metrics import macro_f1
from abaw_kit.progress import progress_bar
from abaw_kit.run_dir import ModelDir, RunDir
from abaw_kit.temporal.data import SplitWindows, WindowBatch, WindowOrder
from abaw_kit.temporal.models import FrameResidual, build_temporal_model
from abaw_kit.temporal.windows import stitch
from abaw_kit.train import checkpoint as ckpt
from abaw_kit.train.data import class_loss_weights
from abaw_kit.train.distributed import DistContext, init_distributed
from abaw_kit.train.gpu import autocast, device_amp_dtype
from abaw_kit.train.logbook import MetricsLog, RunLog
from abaw_kit.workspace import Workspace

Log = Callable[[str], None]
KIND = "temporal"
COLUMNS = ["step", "loss", "lr", "windows_per_s", "val_f1"]
REQUIRED_STATE = ("step", "optimizer", "scheduler", "rng", "data")
RESUME_MUTABLE = frozenset({"temporal.steps", "train.device", "train.threads"})
"""Keys a resumed temporal run may change; the frame run's keys never change here."""
EMBEDDING_FIELDS = ("checkpoint", "checkpoint_sha256", "backbone", "dim")
"""What the temporal model's input depends on: recorded in its weights, checked on use."""


def resolve_temporal_config(run_dir: Path | RunDir, config: str | Path | None, overrides: list[str],
                            flags: dict[str, Any] | None = None, *,
                            resume: bool = False) -> TrainConfig:
    """The run's config (or, with ``resume``, the temporal model's) < ``--config`` < ``--set``.

    Only ``temporal.*`` keys (and ``train.device`` / ``train.threads``) may change: the frame
    model and its embeddings are fixed by the run.
    """
    from abaw_kit.config import resolve_config

    run = RunDir(run_dir)
    source = (run.temporal if resume else run).config
    if not source.is_file():
        what = ("no temporal model to resume (no temporal/config.yaml); start one without "
                "--resume") if resume else "not a training run (no config.yaml); pass --run NAME"
        raise AbawError(f"{run_dir}: {what}")
    base = load_config(source)
    cfg = resolve_config(config, overrides, flags, base=base)
    shown = changed_keys(base, cfg, lambda key: key.startswith("temporal.")
                         or key in ("train.device", "train.threads"))
    if shown:
        raise AbawError(f"train-temporal changes only temporal.* keys (and train.device / "
                        f"train.threads); the frame run's keys are fixed ({shown}); train a "
                        "new frame run for those")
    return cfg


def train_temporal(work: Workspace, cfg: TrainConfig, *, run: str | None = None,
                   resume: bool = False, force: bool = False, progress: bool = True,
                   stop_after: int | None = None, log: Log | None = None) -> dict[str, Any]:
    """Train (or, with ``resume``, continue exactly) the temporal model of a frame run;
    ``force`` replaces an existing one.

    ``stop_after=k`` returns right after step k without a final checkpoint, as if killed there.
    """
    run_dir = RunDir(work.run_dir(run))
    dist = init_distributed(cfg.train.device)
    threads = torch.get_num_threads()
    if dist.device.type == "cpu" and cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        data = TemporalData.open(work, run_dir, cfg.temporal)  # fails before any folder exists
        if force and not resume and dist.is_main:
            remove_temporal_model(run_dir)
        folder = _open_folder(run_dir, cfg, resume, dist)
        session = TemporalRun(cfg, folder, data, dist, progress=progress, log=log)
        return session.run(resume=resume, stop_after=stop_after)
    finally:
        torch.set_num_threads(threads)
        dist.close()


@dataclass
class TemporalData:
    """The train windows (with loss) and val windows (all, for stitching) of a run's embeddings."""

    train: SplitWindows
    val: SplitWindows | None
    val_store: FaceStore | None
    embeddings: dict[str, Any]  # the EMBEDDING_FIELDS of the train embeddings' record
    notes: list[str]
    frame_head: tuple[torch.Tensor, torch.Tensor] | None = None  # temporal.residual only

    @classmethod
    def open(cls, work: Workspace, run_dir: Path | RunDir,
             temporal: TemporalConfig) -> TemporalData:
        train_embeddings = EmbeddingStore(run_dir, FaceStore(work.store_dir("train")), "train")
        video_centre = uses_video_centre(temporal)
        train = SplitWindows(train_embeddings, temporal.window, temporal.stride,
                             labelled_only=True, clip=True, video_centre=video_centre)
        notes = []
        if train.clipped_from:
            notes.append(f"temporal.window {train.clipped_from} is longer than every train "
                         f"video: clipped to {train.window} frames, the longest")
        if len(train) == 0:
            raise AbawError(f"split 'train' of run {run_dir.name} has no labelled frame with a "
                            "face in its embeddings: nothing to train the temporal model on")
        val = val_store = None
        if (work.store_dir("val") / "index.parquet").is_file():
            val_store = FaceStore(work.store_dir("val"))
            val_embeddings = EmbeddingStore(run_dir, val_store, "val")
            _check_same_embeddings(train_embeddings.record, val_embeddings.record, "val")
            val = SplitWindows(val_embeddings, train.window,
                               predict_stride(temporal, train.window),
                               video_centre=video_centre)
            if not (val_store.index["label"].to_numpy() >= 0).any() or \
                    val.frames_with_face == 0:
                notes.append("the val embeddings have no labelled frame with a face: no "
                             "validation, the last weights are kept")
                val = val_store = None
        else:
            notes.append("no val face store: no validation, the last weights are kept")
        record = {k: train_embeddings.record[k] for k in EMBEDDING_FIELDS}
        head = frame_classifier(run_dir, record["checkpoint"]) if temporal.residual else None
        return cls(train, val, val_store, record, notes, head)

    def signature(self, world_size: int) -> dict[str, Any]:
        """What must not change for an exact resume (the windows behind each step)."""
        return {"train_windows": len(self.train), "window": self.train.window,
                "embeddings_sha256": self.embeddings["checkpoint_sha256"],
                "world_size": world_size}


def frame_classifier(run_dir: Path, checkpoint: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the frame model's linear classifier, from the checkpoint the
    embeddings were made from (its EMA weights, as ``abaw embed`` used)."""
    from abaw_kit.infer import load_run_model

    loaded = load_run_model(run_dir, device="cpu")
    if loaded.checkpoint.name != checkpoint:
        raise AbawError(f"the embeddings were made from {checkpoint}, the run's model is now "
                        f"{loaded.checkpoint.name}; run `abaw embed --run {run_dir.name}` again")
    head = loaded.model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise AbawError(f"temporal.residual needs a linear classifier on the pooled features; "
                        f"{loaded.cfg.model.backbone} has {type(head).__name__}: set "
                        "temporal.residual=false")
    return head.weight.detach().float().clone(), head.bias.detach().float().clone()


def predict_stride(temporal: TemporalConfig, window: int) -> int:
    """``temporal.predict_stride``, 0 meaning a quarter of the (clipped) window."""
    return min(temporal.predict_stride or max(1, window // 4), window)


def uses_video_centre(temporal: TemporalConfig) -> bool:
    """Whether the windows must carry their video's mean embedding (``centre_over: video``)."""
    return temporal.centre and temporal.centre_over == "video"


def _check_same_embeddings(train: dict[str, Any], other: dict[str, Any], split: str) -> None:
    if train.get("checkpoint_sha256") != other.get("checkpoint_sha256"):
        raise AbawError(f"the train and {split} embeddings were made from different checkpoints "
                        f"({train.get('checkpoint')} vs {other.get('checkpoint')}); run "
                        "`abaw embed` again so that every split uses the same one")


def _open_folder(run_dir: RunDir, cfg: TrainConfig, resume: bool,
                 dist: DistContext) -> ModelDir:
    """``<run>/temporal`` (config saved); refuses to overwrite a model without --resume."""
    folder = run_dir.temporal
    ckpt_dir = folder.checkpoints
    if resume:
        saved = load_config(folder.config)
        shown = changed_keys(saved, cfg, RESUME_MUTABLE.__contains__)
        if shown:
            raise AbawError(f"--resume: the config differs from {folder.config} "
                            f"({shown}); resume with the model's own config, or start anew "
                            "with --force")
        done = ckpt.last_step(ckpt_dir)
        if done is not None and cfg.temporal.steps < done:
            raise AbawError(f"--resume: the temporal model has trained {done} steps already; "
                            f"pass --steps {done} or more")
    elif dist.broadcast_object(folder.config.is_file()):  # rank 0 decides for all
        raise AbawError(f"run {run_dir.name} already has a temporal model ({folder}); continue "
                        "it with --resume, or pass --force to train a new one over it")
    dist.barrier()
    if dist.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, folder.config)
    dist.barrier()
    return folder


def remove_temporal_model(run_dir: Path | RunDir) -> None:
    """``--force``: delete the files of an earlier temporal model (only those), first the
    checkpoints, so a kill midway never leaves a config beside weights it did not train."""
    folder = RunDir(run_dir).temporal
    for path in (folder.checkpoints, folder.cache, folder.plots):
        if path.is_dir():
            for item in path.iterdir():
                if item.is_file():
                    item.unlink()
    for item in folder.path.iterdir() if folder.path.is_dir() else ():
        if item.is_file():
            item.unlink()


class TemporalRun:
    """One training session of ``<run>/temporal``: builds, loops, validates, saves."""

    def __init__(self, cfg: TrainConfig, folder: Path | ModelDir, data: TemporalData,
                 dist: DistContext, *, progress: bool, log: Log | None = None) -> None:
        self.cfg, self.t, self.data, self.dist = cfg, cfg.temporal, data, dist
        self.folder = ModelDir(folder)
        self.console = Console(stderr=True, highlight=False) if progress and dist.is_main \
            else None
        self.log = RunLog(self.folder.log, console=self.console, log=log, enabled=dist.is_main)
        self.ckpt_dir = self.folder.checkpoints
        self.metrics = MetricsLog(self.folder.metrics, enabled=dist.is_main, columns=COLUMNS)
        self.best_f1: float | None = None
        self.best_step: int | None = None
        self.last_f1: float | None = None
        self.last_saved: int | None = None
        self.seconds = 0.0
        self.windows_seen = 0

    @property
    def run_name(self) -> str:
        """The frame run this temporal model belongs to (the folder above ``temporal/``)."""
        return self.folder.path.parent.name

    # -- setup ------------------------------------------------------------------------------

    def build(self) -> None:
        t, dist = self.t, self.dist
        torch.manual_seed(t.seed)
        window = self.data.train.window
        model = build_temporal_model(t, self.data.train.dim, window)
        if isinstance(model, FrameResidual):
            if self.data.frame_head is None:
                raise AbawError("temporal.residual needs the frame model's classifier; this "
                                "data has none")
            model.set_frame_head(*self.data.frame_head)
        model = model.to(dist.device)
        self.raw = model
        self.optimizer = create_optimizer_v2(model, opt="adamw", lr=t.lr,
                                             weight_decay=t.weight_decay)
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=t.steps, lr_min=t.lr * 1e-2,
                                           warmup_t=min(t.warmup_steps, t.steps),
                                           warmup_lr_init=t.lr * 1e-3, t_in_epochs=False)
        self.ema = ModelEmaV3(model, decay=t.ema_decay, use_warmup=True)
        self.model: nn.Module = model
        if dist.enabled:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        counts = self.data.train.class_counts(NUM_CLASSES)
        self.class_weights = class_loss_weights(counts, t.balance_power).to(dist.device)
        self.amp_dtype = device_amp_dtype(self.cfg.train.amp, dist.device)
        self.order = WindowOrder(len(self.data.train), t.batch_size, seed=t.seed,
                                 max_shift=self.data.train.stride, rank=dist.rank,
                                 world_size=dist.world_size)
        torch.manual_seed(t.seed * 1000 + 17 + dist.rank)  # dropout differs per rank
        for note in self.data.notes:
            self.log(note)
        val = self.data.val
        self.log(f"temporal {t.model} (width {t.width}, depth {t.depth}) on {dist.device} x"
                 f"{dist.world_size} | window {window}, stride {self.data.train.stride} | "
                 f"{len(self.data.train)} train windows | val "
                 f"{len(val) if val is not None else 0} windows | embeddings "
                 f"{self.data.embeddings['checkpoint']} ({self.data.embeddings['backbone']}, "
                 f"{self.data.train.dim}-d)")

    # -- resume -----------------------------------------------------------------------------

    def restore(self) -> int:
        loaded = ckpt.load_checkpoint(self.ckpt_dir, REQUIRED_STATE)
        if loaded is None:
            self.log("no temporal checkpoint yet: starting from step 0")
            return 0
        tensors, saved = loaded
        now = self.data.signature(self.dist.world_size)
        if saved["data"] != now:
            raise AbawError(f"cannot resume the temporal model exactly: its windows or process "
                            f"count changed (was {saved['data']}, now {now}); train a new one "
                            "with --force")
        model_state, ema_state = ckpt.split_weights(tensors)
        try:
            self.raw.load_state_dict(model_state)
            self.ema.module.load_state_dict(ema_state)
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise AbawError(f"checkpoint in {self.ckpt_dir} does not fit this temporal model "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
        step = int(saved["step"])
        self.scheduler.t_initial = self.t.steps
        self.scheduler.step_update(num_updates=step)
        self.best_f1, self.best_step = saved.get("best_val_f1"), saved.get("best_step")
        self.last_saved = step
        ckpt.restore_rng(saved["rng"][self.dist.rank], self.dist.device, self.dist.local_rank)
        self.log(f"resumed the temporal model at step {step}")
        return step

    # -- the loop ---------------------------------------------------------------------------

    def run(self, *, resume: bool, stop_after: int | None) -> dict[str, Any]:
        self.build()
        start = self.restore() if resume else 0
        self.metrics.start(start if resume else None)
        end = self.t.steps if stop_after is None else min(stop_after, self.t.steps)
        loss_sum = torch.zeros((), device=self.dist.device)
        logged = 0
        with progress_bar(self.console is not None, f"train-temporal {self.run_name}",
                          end, "steps", console=self.console, completed=start) as advance:
            for step in range(start, end):
                tick = time.perf_counter()
                loss = self.train_step(step)
                loss_sum += loss.detach()
                logged += 1
                self.seconds += time.perf_counter() - tick
                self.windows_seen += self.t.batch_size * self.dist.world_size
                done = step + 1
                if self._after_step(done, loss_sum, logged):
                    loss_sum, logged = torch.zeros((), device=self.dist.device), 0
                advance(1)
        if end == self.t.steps:
            return self._finish()
        return self._summary(completed=False, final_step=end)

    def train_step(self, step: int) -> torch.Tensor:
        indices, shifts = self.order.batch(step)
        batch = self._to_device(self.data.train.gather(indices, shifts))
        x = F.dropout(batch["x"], self.t.input_dropout, training=True)
        self.model.train()
        with autocast(self.amp_dtype):
            logits = (self.model(x, batch["mask"], batch["centre"]) if "centre" in batch
                      else self.model(x, batch["mask"]))
        loss = window_loss(logits.float(), batch["labels"], self.class_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.raw.parameters(), 5.0)
        self.optimizer.step()
        self.scheduler.step_update(num_updates=step + 1)
        self.ema.update(self.raw, step=step + 1)
        return loss

    def _to_device(self, batch: WindowBatch) -> dict[str, torch.Tensor]:
        pin = self.dist.device.type == "cuda"
        out = {}
        for name in ("x", "mask", "labels", "centre"):
            if getattr(batch, name) is None:
                continue
            tensor = torch.from_numpy(getattr(batch, name))
            out[name] = (tensor.pin_memory() if pin else tensor).to(self.dist.device,
                                                                    non_blocking=pin)
        return out

    def _after_step(self, done: int, loss_sum: torch.Tensor, logged: int) -> bool:
        """Validate / log / save as due; True when the loss interval was written out."""
        t = self.t
        last = done == t.steps
        validate = self.data.val is not None and (
            last or bool(t.eval_every and done % t.eval_every == 0))
        write = last or validate or done % t.log_every == 0
        save = last or done % t.ckpt_every == 0
        if write or save:
            mean_loss = float(loss_sum) / max(logged, 1)  # the one host sync of an interval
            if not np.isfinite(mean_loss):
                raise AbawError(f"the temporal model diverged by step {done} (loss NaN/inf); "
                                f"lower temporal.lr (now {t.lr:g}) and train anew with --force")
        val_f1 = self.validate(done) if validate else None
        if write:
            self.metrics.write({"step": done, "loss": mean_loss, "lr": self._lr(),
                                "windows_per_s": self.windows_seen / max(self.seconds, 1e-9),
                                "val_f1": val_f1})
            self.log(f"step {done}: loss {mean_loss:.4f} lr {self._lr():.2e}"
                     + (f" val F1 {val_f1:.4f}" if val_f1 is not None else ""))
        if save:
            self.save(done)
        return write

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- validation and checkpoints ---------------------------------------------------------

    def validate(self, step: int) -> float:
        """Macro-F1 of the EMA weights on the val frames with a face and a label, from the
        stitched per-frame probabilities (every rank predicts a share of the windows)."""
        val, store = self.data.val, self.data.val_store
        assert val is not None and store is not None
        self.dist.broadcast_module(self.ema.module)
        shard = np.array_split(np.arange(len(val)), self.dist.world_size)[self.dist.rank]
        outputs = window_probabilities(self.ema.module, val, shard, self.dist.device,
                                       batch_size=self.t.batch_size * 4,
                                       amp_dtype=self.amp_dtype)
        outputs = np.concatenate(self.dist.gather_objects(outputs))
        f1 = self.dist.broadcast_object(stitched_f1(val, outputs))
        self.last_f1 = f1
        if self.best_f1 is None or f1 > self.best_f1:
            self.best_f1, self.best_step = f1, step
            if self.dist.is_main:
                ckpt.save_best(self.ckpt_dir, self._weights(), {**self._meta(step), "val_f1": f1})
        return f1

    def save(self, step: int) -> None:
        self.dist.broadcast_module(self.ema.module)
        rng = self.dist.gather_objects(ckpt.capture_rng(self.dist.device))
        if self.dist.is_main:
            ckpt.save_checkpoint(self.ckpt_dir, step, self._weights(), {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng,
                "data": self.data.signature(self.dist.world_size),
                "best_val_f1": self.best_f1, "best_step": self.best_step,
            }, self._meta(step))
        self.last_saved = step

    def _weights(self) -> dict[str, torch.Tensor]:
        return ckpt.pack_weights(self.raw, self.ema.module)

    def _meta(self, step: int) -> dict[str, Any]:
        return {"kind": KIND, "step": step, "window": self.data.train.window,
                "embeddings": self.data.embeddings, "num_classes": NUM_CLASSES}

    # -- the end ----------------------------------------------------------------------------

    def _finish(self) -> dict[str, Any]:
        plots: list[str] = []
        if self.dist.is_main:
            from abaw_kit.plots.train import plot_training

            plots = [str(p) for p in plot_training(self.folder.metrics, self.folder.plots)]
        summary = self._summary(completed=True, final_step=self.t.steps)
        summary["plots"] = plots
        best = (f"best val F1 {self.best_f1:.4f} (step {self.best_step})"
                if self.best_f1 is not None else "no validation")
        self.log(f"done: {best}; {summary['windows_per_s']:.1f} windows/s; {self.folder}")
        return summary

    def _summary(self, *, completed: bool, final_step: int) -> dict[str, Any]:
        best = self.folder.best
        return {
            "run": self.run_name, "temporal_dir": str(self.folder),
            "completed": completed, "model": self.t.model, "window": self.data.train.window,
            "steps": final_step, "world_size": self.dist.world_size,
            "train_windows": len(self.data.train),
            "best_val_f1": self.best_f1, "best_step": self.best_step,
            "last_val_f1": self.last_f1,
            "windows_per_s": self.windows_seen / max(self.seconds, 1e-9),
            "train_seconds": self.seconds,
            "metrics_csv": str(self.folder.metrics),
            "checkpoint_best": str(best) if best.is_file() else None,
            "plots": [],
        }


def window_loss(logits: torch.Tensor, labels: torch.Tensor,
                class_weights: torch.Tensor | None) -> torch.Tensor:
    """Class-weighted cross-entropy over the frames that carry a label (-1: none), averaged
    by their total weight; 0 (with a gradient) for a batch without any."""
    flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    losses = F.cross_entropy(flat_logits, flat_labels.clamp_min(0), weight=class_weights,
                             reduction="none")
    valid = flat_labels >= 0
    weights = (class_weights[flat_labels.clamp_min(0)] if class_weights is not None
               else torch.ones_like(losses)) * valid
    return (losses * valid).sum() / weights.sum().clamp_min(1e-12)


@torch.inference_mode()
def window_probabilities(model: nn.Module, windows: SplitWindows, indices: np.ndarray,
                         device: torch.device, *, batch_size: int,
                         amp_dtype: torch.dtype | None = None,
                         advance: Callable[[int], None] | None = None) -> np.ndarray:
    """float32 [len(indices), window, 8] softmax outputs of the windows ``indices``."""
    was_training = model.training
    model.eval()
    out = np.empty((len(indices), windows.window, NUM_CLASSES), np.float32)
    try:
        for start in range(0, len(indices), batch_size):
            part = indices[start:start + batch_size]
            batch = windows.gather(part)
            x = torch.from_numpy(batch.x).to(device)
            mask = torch.from_numpy(batch.mask).to(device)
            with autocast(amp_dtype):
                logits = (model(x, mask) if batch.centre is None
                          else model(x, mask, torch.from_numpy(batch.centre).to(device)))
            out[start:start + len(part)] = logits.float().softmax(-1).cpu().numpy()
            if advance is not None:
                advance(int(batch.mask.sum()))
    finally:
        model.train(was_training)
    return out


def stitched_probabilities(windows: SplitWindows, outputs: np.ndarray) -> list[np.ndarray]:
    """Per video [T, 8] probabilities (NaN without a face) from every window's outputs."""
    return stitch(outputs, windows.masks(), windows.plan, windows.lengths)


def stitched_f1(windows: SplitWindows, outputs: np.ndarray) -> float:
    """Macro-F1 of the stitched probabilities on the labelled frames with a face."""
    per_video = stitched_probabilities(windows, outputs)
    labels, preds = [], []
    for video, probs in zip(windows.videos, per_video, strict=True):
        scored = (video.labels >= 0) & video.has_face & ~np.isnan(probs).any(axis=1)
        labels.append(video.labels[scored])
        preds.append(probs[scored].argmax(axis=1))
    return macro_f1(np.concatenate(labels), np.concatenate(preds))
