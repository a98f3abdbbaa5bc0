"""Temporal-model training on a synthetic 1M-frame embedding set: windows/s and peak memory.

Writes ``--videos`` float16 embedding files of ``--dim`` columns (default 500 x 2000 frames x
1280 = 1M frames, 2.6 GB, the size of Aff-Wild2's EXPR train set of EfficientNet/MobileNetV2
features) and trains the default temporal model (``temporal`` config defaults) on them with
the real trainer (``TemporalRun``: gathering windows from the memory-mapped files, loss,
AdamW, EMA) for ``--steps`` steps. Reported:

- windows/s of the trainer, and as a ratio to the bound measured in the same run: the same
  model's forward + backward + optimiser step on one in-memory batch, repeated (no reading);
- peak resident memory (VmHWM) and the peak of anonymous (non-file) memory, against the 2.6 GB
  of embeddings: memory is bounded by the window batch, not by the split.

    python benchmarks/bench_temporal.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from abaw_kit.config import TrainConfig
from abaw_kit.embed import VideoEmbeddings
from abaw_kit.run_dir import RunDir
from abaw_kit.temporal.data import SplitWindows
from abaw_kit.temporal.train import TemporalData, TemporalRun, window_loss
from abaw_kit.train.distributed import DistContext


class SyntheticEmbeddings:
    """What SplitWindows reads from an EmbeddingStore: split, dim and the videos."""

    def __init__(self, folder: Path, videos: int, frames: int, dim: int) -> None:
        self.split, self.dim, self.videos = "train", dim, []
        for v in range(videos):
            path = folder / f"v{v:04d}.npy"
            rng = np.random.default_rng([0, v])  # per video: kept files match a rerun's masks
            has_face = rng.random(frames) > 0.05
            labels = np.repeat(rng.integers(0, 8, frames // 50 + 1), 50)[:frames]
            if not path.is_file():
                out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                                shape=(int(has_face.sum()), dim))
                for start in range(0, len(out), 500):
                    out[start:start + 500] = rng.standard_normal(
                        (min(500, len(out) - start), dim)).astype(np.float16)
                out.flush()
                del out
            self.videos.append(VideoEmbeddings(
                video=f"v{v}", rows=np.arange(frames), frames=np.arange(frames),
                has_face=has_face, labels=labels,
                embeddings=np.load(path, mmap_mode="r")))

    def __iter__(self):  # noqa: ANN204 - the EmbeddingStore protocol SplitWindows uses
        return iter(self.videos)


def memory_mb() -> dict[str, float]:
    """VmHWM (peak resident) and RssAnon (anonymous resident now) of this process, in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=500)
    parser.add_argument("--frames", type=int, default=2000, help="frames per video")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=None, help="keep the files here")
    args = parser.parse_args()
    cfg = TrainConfig()
    cfg.temporal.steps, cfg.temporal.log_every, cfg.temporal.ckpt_every = args.steps, 10**6, 10**6
    with tempfile.TemporaryDirectory(prefix="abaw-bench-temporal-") as scratch:
        folder = args.dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        embeddings = SyntheticEmbeddings(folder, args.videos, args.frames, args.dim)
        write_s = time.perf_counter() - started
        before = memory_mb()
        windows = SplitWindows(embeddings, cfg.temporal.window, cfg.temporal.stride,
                               labelled_only=True, clip=True)
        data = TemporalData(windows, None, None, {"checkpoint": "synthetic", "backbone": "-",
                                                  "checkpoint_sha256": "-", "dim": args.dim},
                            [], frame_head=(0.01 * torch.randn(8, args.dim), torch.zeros(8)))
        model_dir = RunDir(folder).temporal
        run = TemporalRun(cfg, model_dir, data, DistContext(0, 1, torch.device("cpu")),
                          progress=False, log=lambda m: None)
        model_dir.checkpoints.mkdir(parents=True, exist_ok=True)
        run.build()
        run.train_step(0)  # warm-up
        tick = time.perf_counter()
        for step in range(1, args.steps):
            run.train_step(step)
        trainer = (args.steps - 1) * cfg.temporal.batch_size / (time.perf_counter() - tick)
        after = memory_mb()
        bound = forward_backward_bound(run, args.steps)
    frames = args.videos * args.frames
    result = {
        "frames": frames, "dim": args.dim, "embeddings_gb": round(
            sum(v.embeddings.nbytes for v in embeddings.videos) / 1e9, 2),
        "train_windows": len(windows), "window": windows.window,
        "batch_windows": cfg.temporal.batch_size, "threads": torch.get_num_threads(),
        "windows_per_s": round(trainer, 1), "bound_windows_per_s": round(bound, 1),
        "ratio_to_bound": round(trainer / bound, 3),
        "peak_rss_mb": round(after["VmHWM"], 0), "anon_rss_mb_before": round(
            before["RssAnon"], 0), "anon_rss_mb_after": round(after["RssAnon"], 0),
        "file_rss_mb_after": round(after["RssFile"], 0), "write_s": round(write_s, 1)}
    print(json.dumps(result, indent=2))


def forward_backward_bound(run: TemporalRun, steps: int) -> float:
    """Windows/s of forward + backward + step on one batch already in memory."""
    indices, shifts = run.order.batch(0)
    batch = run._to_device(run.data.train.gather(indices, shifts))  # noqa: SLF001
    run.model.train()

    def step() -> None:
        logits = run.model(batch["x"], batch["mask"])
        loss = window_loss(logits.float(), batch["labels"], run.class_weights)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()

    step()
    tick = time.perf_counter()
    for _ in range(steps - 1):
        step()
    return (steps - 1) * run.t.batch_size / (time.perf_counter() - tick)


if __name__ == "__main__":
    main()
