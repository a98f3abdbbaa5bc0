"""Is data loading what limits training or inference? Ratios to bounds measured in the same run.

Training: images/s of the real step (batches streamed by the DataLoader workers from a face
store and an unlabelled index, with weak + RandAugment views) divided by images/s of the same
model, step and batch size on one batch already in memory (the bound: forward, backward,
optimiser, EMA and threshold, no loading). Target >= 0.85 on CPU.

Inference: frames/s of ``split_probabilities`` (store -> workers -> model, cache cleared)
divided by frames/s of the same model's forward on uint8 faces already in memory, same batch
size (a whole call: model loading and cache bookkeeping included). Target >= 0.9.

The machine may be shared: real and bound runs alternate; training compares median step
times, inference the median of per-round ratios (each pair measured back to back), so a burst
of someone else's load does not decide the result.

    python benchmarks/bench_train.py --backbone resnet18 --input-size 112 --batch-size 32
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from abaw_kit.config import resolve_config
from abaw_kit.data.store import FaceStore, FaceStoreWriter
from abaw_kit.infer import load_run_model, predict_faces, split_probabilities
from abaw_kit.run_dir import RunDir
from abaw_kit.train.data import build_training_data, labelled_workers, training_loaders
from abaw_kit.train.distributed import init_distributed
from abaw_kit.train.loop import optimizer_step, train_step
from abaw_kit.train.run import TrainingRun, batch_stream, train, uses_unlabelled
from abaw_kit.workspace import Workspace


def smooth_faces(count: int, rng: np.random.Generator) -> np.ndarray:
    """Face-like smooth images (JPEG-compressible, unlike noise)."""
    out = np.empty((count, 112, 112, 3), np.uint8)
    for i in range(count):
        coarse = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
        out[i] = np.asarray(Image.fromarray(coarse).resize((112, 112), Image.Resampling.BICUBIC))
    return out


def build_workspace(root: Path, frames: int, unlabelled: int) -> Workspace:
    from abaw_kit.unlabeled.ingest import ingest

    rng = np.random.default_rng(0)
    work = Workspace(root)
    for split, count in (("train", frames), ("val", 256)):
        writer = FaceStoreWriter(work.store_dir(split))
        videos = [f"v{i}" for i in range(4)]
        for video in videos:
            n = count // len(videos)
            writer.write_video(video, np.arange(1, n + 1), rng.integers(-1, 8, n),
                               np.ones(n, bool), smooth_faces(n, rng))
        writer.finalize(videos, {"split": split})
    folder = root / "fr-images"
    folder.mkdir()
    for i, face in enumerate(smooth_faces(unlabelled, rng)):
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, "JPEG", quality=90)
        (folder / f"{i:06d}.jpg").write_bytes(buffer.getvalue())
    ingest([folder], work.unlabeled_dir)
    return work


def time_steps(session: TrainingRun, next_batch, steps: int, start: int) -> list[float]:
    """Seconds of each of ``steps`` training steps (data included when next_batch streams)."""
    times = []
    for step in range(start, start + steps):
        begin = time.perf_counter()
        out = train_step(session.state, next_batch())
        optimizer_step(session.state, out["loss"], step)
        times.append(time.perf_counter() - begin)
    return times


def bench_training(work: Workspace, args: argparse.Namespace) -> float:
    """Blocks of real and bound steps alternate; the ratio compares median step times."""
    cfg = resolve_config(None, args.settings, {"ssl": args.ssl})
    run_dir = work.runs_dir / "bench"
    run_dir.mkdir(parents=True, exist_ok=True)
    session = TrainingRun(work, cfg, run_dir, init_distributed("cpu"), progress=False,
                          log=lambda _m: None)
    session.build(build_training_data(work, cfg, with_unlabelled=uses_unlabelled(cfg)))
    loaders = training_loaders(session.data, cfg, start=0, rank=0, world_size=1,
                               pin_memory=False)
    stream = batch_stream(*(iter(x) if x is not None else None for x in loaders))
    fixed = next(stream)
    per_step = cfg.data.batch_size * (1 + 2 * cfg.ssl.uratio if uses_unlabelled(cfg) else 1)
    time_steps(session, lambda: next(stream), args.warmup, 0)  # workers up, caches warm
    real: list[float] = []
    bound: list[float] = []
    step = args.warmup
    for _ in range(args.rounds):
        real += time_steps(session, lambda: next(stream), args.steps, step)
        bound += time_steps(session, lambda: fixed, args.steps, step)
        step += args.steps
    real_rate, bound_rate = per_step / np.median(real), per_step / np.median(bound)
    print(f"training  {cfg.model.backbone} {cfg.data.input_size}px batch "
          f"{cfg.data.batch_size}+{2 * cfg.ssl.uratio * cfg.data.batch_size} unlabelled views, "
          f"workers {labelled_workers(cfg.data, args.ssl != 'none')} labelled + "
          f"{cfg.data.num_workers} unlabelled, {torch.get_num_threads()} torch threads, "
          f"{len(real)} steps each")
    print(f"  real loop  {real_rate:8.1f} images/s (median step {np.median(real):.3f} s)")
    print(f"  bound      {bound_rate:8.1f} images/s (median step {np.median(bound):.3f} s)")
    ratio = real_rate / bound_rate
    print(f"  ratio      {ratio:.3f}  (target >= 0.85)")
    return ratio


def bench_inference(work: Workspace, args: argparse.Namespace) -> float:
    cfg = resolve_config(None, [*args.settings, "train.steps=2", "eval.every=0"],
                         {"ssl": "none"})
    train(work, cfg, run_name="bench-infer", progress=False)
    run_dir = work.runs_dir / "bench-infer"
    store = FaceStore(work.store_dir("train"))
    rows = store.rows(labelled=None)
    loaded = load_run_model(run_dir, device="cpu")
    faces = store.faces(rows)
    predict_faces(loaded, faces[: args.infer_batch], args.infer_batch)  # warm-up
    real, bound = [], []
    for _ in range(args.rounds):  # pairs close in time: each ratio sees the same machine load
        shutil.rmtree(RunDir(run_dir).cache, ignore_errors=True)
        begin = time.perf_counter()
        split_probabilities(run_dir, store, "train", device="cpu", batch_size=args.infer_batch)
        real.append(len(rows) / (time.perf_counter() - begin))
        begin = time.perf_counter()
        predict_faces(loaded, faces, args.infer_batch)
        bound.append(len(rows) / (time.perf_counter() - begin))
    ratios = [r / b for r, b in zip(real, bound, strict=True)]
    print(f"inference {cfg.model.backbone} {cfg.data.input_size}px, {len(rows)} frames, "
          f"batch {args.infer_batch}")
    print(f"  split_probabilities {np.median(real):8.1f} frames/s (median)   rounds "
          f"{[round(r, 1) for r in real]}")
    print(f"  forward in memory   {np.median(bound):8.1f} frames/s (median)   rounds "
          f"{[round(b, 1) for b in bound]}")
    ratio = float(np.median(ratios))
    print(f"  ratio               {ratio:.3f}  (median of per-round ratios "
          f"{[round(x, 3) for x in ratios]}; target >= 0.9)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--uratio", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1,
                        help="unlabelled-stream loader workers (the labelled stream: auto)")
    parser.add_argument("--ssl", default="dtm")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=2000, help="train store frames")
    parser.add_argument("--unlabelled", type=int, default=1000)
    parser.add_argument("--infer-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = torch's default); 1 leaves the other cores "
                             "to the loader workers and is steadier on a shared machine")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.settings = [f"model.backbone={args.backbone}", "model.pretrained=none",
                     f"data.input_size={args.input_size}", f"data.batch_size={args.batch_size}",
                     f"data.num_workers={args.workers}", f"ssl.uratio={args.uratio}",
                     "train.device=cpu", "eval.num_workers=0"]
    with tempfile.TemporaryDirectory(prefix="abaw-bench-train-") as tmp:
        work = build_workspace(Path(tmp), args.frames, args.unlabelled)
        if not args.skip_training:
            bench_training(work, args)
        if not args.skip_inference:
            bench_inference(work, args)


if __name__ == "__main__":
    main()
