"""``train()``: the plain function behind ``abaw train``; one run folder, resumable exactly.

It writes the run folder's config, metrics, log, checkpoints and training plots (the layout:
abaw_kit.run_dir.RunDir). Under torchrun every rank trains; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from abaw_kit.classes import NUM_CLASSES
from abaw_kit.config import (
    RESUME_MUTABLE,
    TrainConfig,
    changed_keys,
    load_config,
    save_config,
)
from abaw_kit.data.store import FaceStore
from abaw_kit.errors import AbawError
from abaw_kit.infer import macro_f1_of, predict_rows, validation_rows
from abaw_kit.progress import progress_bar
from abaw_kit.run_dir import RunDir
from abaw_kit.ssl import make_alignment, make_threshold
from abaw_kit.ssl.registry import threshold_class
from abaw_kit.train import checkpoint as ckpt
from abaw_kit.train import device_views
from abaw_kit.train.data import (
    TrainingData,
    broken_images_note,
    build_training_data,
    class_loss_weights,
    training_loaders,
)
from abaw_kit.train.distributed import DistContext, init_distributed
from abaw_kit.train.gpu import (
    determinism,
    device_capability,
    precision_note,
    use_channels_last,
)
from abaw_kit.train.logbook import THRESHOLD_COLUMNS, Meter, MetricsLog, RunLog
from abaw_kit.train.loop import (
    Batch,
    NonFiniteLoss,
    build_state,
    optimizer_step,
    raise_if_diverged,
    train_step,
)
from abaw_kit.train.model import Normalizer, check_backbone, create_model, model_data_config
from abaw_kit.workspace import Workspace

Log = Callable[[str], None]


def train(work: Workspace, cfg: TrainConfig | None, *, run_name: str | None = None,
          resume: bool = False, progress: bool = True, stop_after: int | None = None,
          log: Log | None = None, reshard: bool = False) -> dict[str, Any]:
    """Train (or, with ``resume``, continue exactly) a run; returns its summary.

    ``cfg`` may be None with ``resume``: the run's saved config is used. ``stop_after=k``
    returns right after step k without a final checkpoint, as if the process were killed there
    (tests; time-boxed jobs then continue with ``resume``). ``reshard``: a resume may run on
    another number of processes than the checkpoint's (not exact: see ``TrainingRun.restore``).
    """
    if reshard and not resume:
        raise AbawError("--reshard changes how a run resumes; use it with --resume")
    if cfg is None:
        if not resume:
            raise AbawError("no training config given; pass one or use --resume")
        cfg = load_config(RunDir(work.run_dir(run_name)).config)
    check_backbone(cfg.model.backbone)
    dist = init_distributed(cfg.train.device)
    threads = torch.get_num_threads()
    if dist.device.type == "cpu" and cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:  # data problems surface before a run folder exists
        data = build_training_data(work, cfg, rank=dist.rank,
                                   with_unlabelled=uses_unlabelled(cfg))
        run_dir, cfg = _open_run_dir(work, cfg, run_name, resume, dist)
        session = TrainingRun(work, cfg, run_dir, dist, progress=progress, log=log)
        try:
            return session.run(data, resume=resume, stop_after=stop_after, reshard=reshard)
        except BaseException:
            if not resume and not session.stepped and dist.is_main:
                _remove_unstarted_run(run_dir)
            raise
    finally:
        torch.set_num_threads(threads)
        dist.close()


def _open_run_dir(work: Workspace, cfg: TrainConfig, run_name: str | None, resume: bool,
                  dist: DistContext) -> tuple[RunDir, TrainConfig]:
    """The run folder (created, config saved) and the config the run follows."""
    if resume:
        run_dir = RunDir(work.run_dir(run_name))
        saved = load_config(run_dir.config)
        shown = changed_keys(saved, cfg, RESUME_MUTABLE.__contains__)
        if shown:
            raise AbawError(f"--resume {run_dir.name}: the config differs from the run's "
                            f"config.yaml ({shown}); resume with the run's own config (no "
                            "--config/--set), or start a new run")
        done = ckpt.last_step(run_dir.checkpoints)
        if done is not None and cfg.train.steps < done:  # checked before config.yaml changes
            raise AbawError(f"--resume {run_dir.name}: the run has trained {done} steps "
                            f"already, so --steps {cfg.train.steps} would end before its "
                            f"checkpoint; pass --steps {done} or more")
    else:
        name = run_name or f"{cfg.ssl.method}-{time.strftime('%Y%m%d-%H%M%S')}"
        exists = RunDir(work.run_path(name)).config.is_file()
        name, exists = dist.broadcast_object((name, exists))  # rank 0 decides for all
        run_dir = RunDir(work.run_path(name))
        if exists:
            raise AbawError(f"run '{name}' already exists in {work.runs_dir}; continue it with "
                            "--resume, or choose another --run name")
    dist.barrier()  # every rank has read what it needs before rank 0 writes
    if dist.is_main:
        run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir.config)
    dist.barrier()
    return run_dir, cfg


def _remove_unstarted_run(run_dir: RunDir) -> None:
    """Undo a start that failed before its first step (bad weights file, model error...), so
    the same ``--run`` name works on the next try. Only the files a start writes go."""
    for path in (run_dir.config, run_dir.log, run_dir.metrics):
        path.unlink(missing_ok=True)
    for folder in (run_dir.checkpoints, run_dir.path):
        with contextlib.suppress(OSError):  # not empty: something else lives there, keep it
            folder.rmdir()


class TrainingRun:
    """One training session of a run folder: builds everything, loops, validates, saves."""

    def __init__(self, work: Workspace, cfg: TrainConfig, run_dir: Path | RunDir,
                 dist: DistContext, *, progress: bool, log: Log | None = None) -> None:
        self.work, self.cfg, self.run_dir, self.dist = work, cfg, RunDir(run_dir), dist
        self.console = Console(stderr=True, highlight=False) if progress and dist.is_main \
            else None
        self.log = RunLog(self.run_dir.log, console=self.console, log=log, enabled=dist.is_main)
        self.ckpt_dir = self.run_dir.checkpoints
        self.metrics = MetricsLog(self.run_dir.metrics, enabled=dist.is_main)
        self.best_f1: float | None = None
        self.best_step: int | None = None
        self.last_f1: float | None = None
        self.last_saved: int | None = None
        self.train_seconds = 0.0
        self.images_seen = 0
        self._rng_to_restore: dict[str, Any] | None = None
        self.segments: list[tuple[int, int]] = [(0, dist.world_size)]  # see ResumableBatchSampler
        self.broken_images: set[int] = set()  # unlabelled pool indices skipped as broken
        self.stepped = False  # a training step has run: the folder now holds a real run

    # -- setup ------------------------------------------------------------------------------

    def build(self, data: TrainingData) -> None:
        cfg, dist = self.cfg, self.dist
        notice = _seed_everything(cfg.train.seed, cfg.train.deterministic, dist.device)
        if notice:
            self.log(notice)
        self.data = data
        threshold = (make_threshold(cfg.ssl.method, NUM_CLASSES,
                                    num_unlabeled=data.num_unlabelled, **cfg.ssl.params)
                     if data.unlabelled is not None else None)
        alignment = (make_alignment(cfg.ssl.dist_align, cfg.ssl.dist_align_momentum,
                                    data.class_counts)
                     if threshold is not None and uses_unlabelled(cfg) else None)
        model, report = create_model(cfg.model)
        if report is not None:
            self.log(f"initial weights: {report.summary()}")
        model = model.to(dist.device)
        self.data_config = model_data_config(model)
        channels_last = use_channels_last(cfg.train.channels_last, dist.device)
        normalize = Normalizer(self.data_config["mean"], self.data_config["std"],
                               cfg.data.input_size, dist.device, channels_last)
        weights = (class_loss_weights(self.data.class_counts, cfg.data.balance_power)
                   if cfg.data.balance == "weights" else None)
        hidden = (torch.from_numpy(data.hidden_labels) if data.hidden_labels is not None
                  else None)
        if cfg.ssl.oracle and (hidden is None or not uses_unlabelled(cfg)):
            raise AbawError("ssl.oracle needs an SSL method and unlabelled images whose true "
                            "class is known (the demo's, or few-label leftovers); this run has "
                            "none")
        self.state = build_state(cfg, model, normalize, dist, threshold, weights, hidden,
                                 alignment)
        torch.manual_seed(cfg.train.seed * 1000 + 17 + dist.rank)  # dropout differs per rank
        self.val_store, self.val_rows = self._validation_set()
        self._describe()

    def _validation_set(self) -> tuple[FaceStore | None, np.ndarray]:
        path = self.work.store_dir("val")
        if not (path / "index.parquet").is_file():
            self.log(f"no val face store at {path}: validation (and the best checkpoint) "
                     "skipped; run `abaw prepare` with the validation split to enable it")
            return None, np.zeros(0, np.int64)
        store = FaceStore(path)
        rows = validation_rows(store, self.cfg.eval.max_frames)
        if len(rows) == 0:
            self.log(f"the val store {path} has no labelled frames with a face: no validation")
            return None, rows
        return store, rows

    def _describe(self) -> None:
        cfg, data = self.cfg, self.data
        self.log(f"run {self.run_dir} | {cfg.model.backbone} on {self.dist.device} x"
                 f"{self.dist.world_size} | ssl {cfg.ssl.method} | labelled frames "
                 f"{len(data.labelled)} | unlabelled {data.num_unlabelled} {data.unlabelled_counts}"
                 f" | val frames {len(self.val_rows)}")
        note = precision_note(cfg.train.amp, self.dist.device.type,
                              device_capability(self.dist.device))
        if note:
            self.log(note)

    # -- resume -----------------------------------------------------------------------------

    def restore(self, reshard: bool = False) -> int:
        """Load the last checkpoint into the built state; returns the step to continue from.

        ``reshard``: the checkpoint may come from another number of processes. Not exact: the
        data streams go on at the item after the last one seen (the same number of images),
        the step count and schedule go on from the saved step with this run's global batch,
        and every rank is reseeded from (seed, rank, step, world size), as the saved random
        states belong to other ranks.
        """
        loaded = ckpt.load_checkpoint(self.ckpt_dir)
        if loaded is None:
            self.log("no checkpoint in this run yet: starting from step 0")
            return 0
        if ckpt.read_pointer(self.ckpt_dir) is None:
            self.log(f"{self.run_dir.pointer} was missing: resuming from the newest "
                     f"complete checkpoint (step {loaded[1]['step']})")
        tensors, saved = loaded
        step = int(saved["step"])
        was_world = int(saved.get("sampler", {}).get("world_size", self.dist.world_size))
        self._check_same_stream(saved, ignore_world=reshard)
        self.segments = [(int(a), int(b)) for a, b in
                         saved["sampler"].get("segments") or [(0, was_world)]]
        model_state, ema_state = ckpt.split_weights(tensors)
        state = self.state
        try:
            state.raw.load_state_dict(model_state)
            state.ema.module.load_state_dict(ema_state)
            state.optimizer.load_state_dict(saved["optimizer"])
            state.scheduler.load_state_dict(saved["scheduler"])
            if state.scaler is not None and saved.get("scaler"):
                state.scaler.load_state_dict(saved["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise AbawError(f"checkpoint in {self.ckpt_dir} does not fit this run's model "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
        if state.threshold is not None:
            state.threshold.load_state_dict(saved["threshold"])
        if state.alignment is not None:
            state.alignment.load_state_dict(saved.get("alignment") or {})
        state.scheduler.t_initial = self.cfg.train.steps  # a longer run stretches the cosine
        state.scheduler.step_update(num_updates=step)
        self.best_f1, self.best_step = saved.get("best_val_f1"), saved.get("best_step")
        self.last_saved = step
        if was_world == self.dist.world_size:
            self._rng_to_restore = saved["rng"][self.dist.rank]
            self.log(f"resumed {self.run_dir.name} at step {step}")
            return step
        self.segments.append((step, self.dist.world_size))
        self._reseed(step)
        self.log(f"resumed {self.run_dir.name} at step {step} on {self.dist.world_size} "
                 f"process(es) instead of {was_world} (--reshard, not exact): the data goes on "
                 "after the last image seen, every rank reseeded")
        return step

    def _reseed(self, step: int) -> None:
        seed = int(np.random.SeedSequence([self.cfg.train.seed, self.dist.rank, step,
                                           self.dist.world_size]).generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # every device's generator too

    def _check_same_stream(self, saved: dict[str, Any], ignore_world: bool) -> None:
        """Resume needs the same items behind the sampler positions, and exact resume the
        same process count."""
        was, now = saved.get("sampler", {}), self._stream_signature()
        was_data = {key: was.get(key) for key in ("labelled", "unlabelled")}
        now_data = {key: now[key] for key in ("labelled", "unlabelled")}
        if was_data != now_data:
            raise AbawError(f"cannot resume {self.run_dir.name} exactly: the training data "
                            f"changed since the checkpoint (was {was_data}, now {now_data}); "
                            "start a new run")
        if not ignore_world and was.get("world_size") != now["world_size"]:
            raise AbawError(f"cannot resume {self.run_dir.name} exactly: it was trained on "
                            f"{was.get('world_size')} process(es), this is "
                            f"{now['world_size']}; add --reshard to go on anyway (not "
                            "exact: same images seen, ranks reseeded), or use the same count")

    def _stream_signature(self) -> dict[str, int]:
        return {"labelled": len(self.data.labelled), "unlabelled": self.data.num_unlabelled,
                "world_size": self.dist.world_size}

    # -- the loop ---------------------------------------------------------------------------

    def run(self, data: TrainingData, *, resume: bool, stop_after: int | None,
            reshard: bool = False) -> dict[str, Any]:
        self.build(data)
        start = self.restore(reshard) if resume else 0
        self.metrics.start(start if resume else None)
        pin = self.dist.device.type == "cuda"
        loaders = training_loaders(self.data, self.cfg, start=start, rank=self.dist.rank,
                                   world_size=self.dist.world_size, pin_memory=pin,
                                   segments=self.segments)
        views_on = self.dist.device if self.cfg.data.views == "device" else None
        batches = batch_stream(*(iter(loader) if loader is not None else None
                                 for loader in loaders), views_on, self.cfg.data.input_size)
        if self._rng_to_restore is not None:  # last: starting a loader draws from the torch RNG
            ckpt.restore_rng(self._rng_to_restore, self.dist.device, self.dist.local_rank)
        end = self.cfg.train.steps if stop_after is None else min(stop_after, self.cfg.train.steps)
        try:
            self._loop(batches, start, end)
        finally:
            del batches, loaders  # shuts persistent workers down
        if end == self.cfg.train.steps:
            return self._finish()
        return self._summary(completed=False, final_step=end)

    def _loop(self, batches: Iterator[Batch], start: int, end: int) -> None:
        meter = Meter()
        images_per_step = self.cfg.data.batch_size * self.dist.world_size * (
            1 + 2 * self.cfg.ssl.uratio if uses_unlabelled(self.cfg) else 1)
        with progress_bar(self.console is not None, f"train {self.run_dir.name}", end,
                          "steps", console=self.console, completed=start) as advance:
            tick = time.perf_counter()
            for step in range(start, end):
                batch = next(batches)
                if batch.broken is not None:
                    self.broken_images.update(batch.broken.tolist())
                self.stepped = True
                out = train_step(self.state, batch, step)  # NaN/inf: noted, checked below
                optimizer_step(self.state, out["loss"], step)
                meter.add(out["logs"])
                done = step + 1
                self.images_seen += images_per_step
                self.train_seconds += time.perf_counter() - tick
                self._after_step(done, meter, images_per_step)
                advance(1)
                tick = time.perf_counter()

    def _after_step(self, done: int, meter: Meter, images_per_step: int) -> None:
        cfg = self.cfg
        last = done == cfg.train.steps
        validate = self.val_store is not None and (
            last or bool(cfg.eval.every and done % cfg.eval.every == 0))
        write = last or validate or done % cfg.train.log_every == 0
        save = last or done % cfg.train.ckpt_every == 0
        if write or save:  # the one host sync of an interval: a diverged step goes no further
            self._check_finite()
        val_f1 = self.validate(done) if validate else None
        if write:
            self._write_row(done, meter, val_f1)
        if save:
            self.save(done)

    def _check_finite(self) -> None:
        try:
            raise_if_diverged(self.state)
        except NonFiniteLoss as exc:
            self._stop_diverged(exc.step)

    def _write_row(self, step: int, meter: Meter, val_f1: float | None) -> None:
        row: dict[str, Any] = {"step": step, **meter.flush(), "lr": self.state.lr,
                               "val_f1": val_f1}
        row["images_per_s"] = self.images_seen / max(self.train_seconds, 1e-9)
        threshold = self.state.threshold
        if threshold is not None:
            row.update(zip(THRESHOLD_COLUMNS, threshold.class_thresholds().cpu().tolist(),
                           strict=True))
        self.metrics.write(row)
        if "loss" in row:
            extra = f" mask {row['mask_ratio']:.2f}" if "mask_ratio" in row else ""
            if "pseudo_acc" in row:
                extra += f" pseudo-label acc {row['pseudo_acc']:.2f}"
            self.log(f"step {step}: loss {row['loss']:.4f}{extra} lr {row['lr']:.2e}"
                     + (f" val F1 {val_f1:.4f}" if val_f1 is not None else ""))

    def _stop_diverged(self, step: int) -> None:
        kept = (f"the last good checkpoint (step {self.last_saved}) is kept in {self.ckpt_dir}"
                if self.last_saved else "no checkpoint was written yet")
        if self.dist.is_main:
            self._plots()
        raise AbawError(f"training diverged at step {step}: the loss became NaN/inf; {kept}. "
                        f"Lower optim.lr (now {self.cfg.optim.lr:g}) or raise "
                        "optim.warmup_steps and start a new run (--pretrained "
                        "<checkpoint .safetensors> starts it from those weights)")

    # -- validation and checkpoints ---------------------------------------------------------

    def validate(self, step: int) -> float:
        """Macro-F1 of the EMA weights on raw val frames; every rank predicts one shard.

        Under DDP each rank's EMA averages its own model's BatchNorm statistics (every rank
        updates them from its own batches), so the EMAs drift apart while only rank 0's is
        saved: rank 0's EMA is copied to every rank first, so the shards score what is saved,
        and rank 0's F1 decides the best checkpoint everywhere.
        """
        assert self.val_store is not None
        self.dist.broadcast_module(self.state.ema.module)
        shard = np.array_split(self.val_rows, self.dist.world_size)[self.dist.rank]
        probs = predict_rows(self.state.ema.module, self.state.normalize, self.val_store, shard,
                             batch_size=self.cfg.eval.batch_size,
                             num_workers=self.cfg.eval.num_workers,
                             amp_dtype=self.state.amp_dtype)
        probs = np.concatenate(self.dist.gather_objects(probs))
        f1 = self.dist.broadcast_object(macro_f1_of(self.val_store, self.val_rows, probs))
        self.last_f1 = f1
        if self.best_f1 is None or f1 > self.best_f1:
            self.best_f1, self.best_step = f1, step
            if self.dist.is_main:
                ckpt.save_best(self.ckpt_dir, self._weights(), {**self._meta(step), "val_f1": f1})
        return f1

    def save(self, step: int) -> None:
        state = self.state
        finite = torch.stack([p.detach().isfinite().all() for p in state.raw.parameters()]).all()
        if not self.dist.all_true(finite):
            self._stop_diverged(step)
        self.dist.broadcast_module(state.ema.module)  # all ranks go on from what is saved
        rng = self.dist.gather_objects(ckpt.capture_rng(self.dist.device))
        if self.dist.is_main:
            ckpt.save_checkpoint(self.ckpt_dir, step, self._weights(), {
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "scaler": state.scaler.state_dict() if state.scaler is not None else None,
                "threshold": state.threshold.state_dict() if state.threshold else {},
                "alignment": state.alignment.state_dict() if state.alignment else {},
                "sampler": {"next_batch": step, **self._stream_signature(),
                            "segments": [list(seg) for seg in self.segments]}, "rng": rng,
                "best_val_f1": self.best_f1, "best_step": self.best_step,
            }, self._meta(step))
        self.last_saved = step

    def _weights(self) -> dict[str, torch.Tensor]:
        return ckpt.pack_weights(self.state.raw, self.state.ema.module)

    def _meta(self, step: int) -> dict[str, Any]:
        return {"step": step, "backbone": self.cfg.model.backbone, "num_classes": NUM_CLASSES,
                "input_size": self.cfg.data.input_size, "ssl": self.cfg.ssl.method,
                **self.data_config}

    # -- the end ----------------------------------------------------------------------------

    def _finish(self) -> dict[str, Any]:
        plots: list[str] = []
        if self.dist.is_main:
            plots = [str(p) for p in self._plots()]
            self.work.set_latest_run(self.run_dir.name)
        summary = self._summary(completed=True, final_step=self.cfg.train.steps)
        summary["plots"] = plots
        broken = set().union(*self.dist.gather_objects(self.broken_images))
        summary["unlabelled_broken"] = len(broken)
        if broken:
            self.log(broken_images_note(self.data, broken))
        best = f"best val F1 {self.best_f1:.4f} (step {self.best_step})" if self.best_f1 else \
            "no validation"
        self.log(f"done: {best}; {summary['images_per_s']:.1f} images/s; run folder "
                 f"{self.run_dir}")
        return summary

    def _plots(self) -> list[Path]:
        from abaw_kit.plots.train import plot_training

        return plot_training(self.run_dir.metrics, self.run_dir.plots)

    def _summary(self, *, completed: bool, final_step: int) -> dict[str, Any]:
        threshold = self.state.threshold
        best = self.run_dir.best
        return {
            "run": self.run_dir.name, "run_dir": str(self.run_dir), "completed": completed,
            "ssl": self.cfg.ssl.method, "backbone": self.cfg.model.backbone,
            "steps": final_step, "world_size": self.dist.world_size,
            "best_val_f1": self.best_f1, "best_step": self.best_step,
            "last_val_f1": self.last_f1,
            "images_per_s": self.images_seen / max(self.train_seconds, 1e-9),
            "train_seconds": self.train_seconds,
            "labelled_frames": len(self.data.labelled),
            "unlabelled_images": self.data.num_unlabelled,
            "class_thresholds": (threshold.class_thresholds().cpu().tolist()
                                 if threshold is not None else None),
            "config": str(self.run_dir.config),
            "metrics_csv": str(self.run_dir.metrics),
            "checkpoint_best": str(best) if best.is_file() else None,
            "checkpoint_last": (str(ckpt.weights_file(self.ckpt_dir, "last"))
                                if self.last_saved is not None else None),
            "plots": [],
        }


def batch_stream(labelled_iter: Iterator[Any], unlabelled_iter: Iterator[Any] | None,
                 views_on: torch.device | None = None, size: int = 0) -> Iterator[Batch]:
    """Zip the two endless loader iterators into ``Batch`` objects. ``views_on``: the device
    where the views are made from the workers' faces and parameters (``data.views: device``);
    None: the workers sent finished views."""
    while True:
        if views_on is None:
            images, labels = next(labelled_iter)
        else:
            faces, crops, labels = next(labelled_iter)
            images = device_views.labelled_views(faces, crops, views_on, size)
        if unlabelled_iter is None:
            yield Batch(images, labels)
        elif views_on is None:
            weak, strong, indices, broken = next(unlabelled_iter)
            yield Batch(images, labels, weak, strong, indices, broken)
        else:
            faces, crops, augment, indices, broken = next(unlabelled_iter)
            weak, strong = device_views.unlabelled_views(faces, crops, augment, views_on, size)
            yield Batch(images, labels, weak, strong, indices, broken)


def uses_unlabelled(cfg: TrainConfig) -> bool:
    """Whether the run's SSL method learns from an unlabelled stream (the method says)."""
    return threshold_class(cfg.ssl.method).uses_unlabelled


def _seed_everything(seed: int, deterministic: bool, device: torch.device) -> str | None:
    """Same initial weights on every rank; cuDNN autotuning unless determinism is asked for.

    Returns the one-line notice of what ``train.deterministic`` cannot make deterministic.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    env, notice = determinism(deterministic, device.type, os.environ)
    os.environ.update(env)  # before the first cuBLAS call: the model has not run yet
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    return notice
