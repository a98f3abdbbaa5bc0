"""Is `abaw embed` as fast as the backbone? Its frames/s over a bound measured in the same run.

Real: one whole ``embed_run`` call on a synthetic face store (``--force``: every video
recomputed; model loading, checkpoint hashing, per-video atomic writes included), streamed by
infer.stream_rows (DataLoader -> device-side normalisation -> pooled features -> host).
Bound: the same model's pooled features (same normalisation, precision and batch size) on
uint8 faces already in memory, batch by batch, nothing written. Issue 12 floor: >= 0.9.

The machine may be shared: real and bound passes alternate and the result is the median of
the per-round ratios (each pair measured back to back).

    python benchmarks/bench_embed.py --backbone resnet18 --frames 1024 --batch-size 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_train import smooth_faces

from abaw_kit.config import resolve_config
from abaw_kit.data.store import FaceStore, FaceStoreWriter
from abaw_kit.embed import embed_run, pooled_features
from abaw_kit.infer import LoadedModel, _device_outputs, load_run_model
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace


def build_workspace(root: Path, frames: int, videos: int) -> Workspace:
    """A train store of ``videos`` equal videos, ~5% frames without a face, smooth faces."""
    rng = np.random.default_rng(0)
    work = Workspace(root)
    writer = FaceStoreWriter(work.store_dir("train"))
    names = [f"v{i:03d}" for i in range(videos)]
    for name in names:
        n = frames // videos
        has_face = rng.random(n) > 0.05
        writer.write_video(name, np.arange(1, n + 1), rng.integers(-1, 8, n), has_face,
                           smooth_faces(int(has_face.sum()), rng))
    writer.finalize(names, {"split": "train"})
    return work


def bound_rate(loaded: LoadedModel, faces: np.ndarray, batch: int) -> float:
    """Frames/s of the pooled features on in-memory uint8 batches (one sync at the end)."""
    batches = [torch.from_numpy(faces[i:i + batch]) for i in range(0, len(faces), batch)]
    with torch.inference_mode():
        _device_outputs(loaded.model, loaded.normalize, batches[0], loaded.amp_dtype,
                        pooled_features)  # warm-up
        begin = time.perf_counter()
        outs = [_device_outputs(loaded.model, loaded.normalize, b, loaded.amp_dtype,
                                pooled_features) for b in batches]
        torch.cat(outs).cpu()
    return len(faces) / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--frames", type=int, default=1024, help="frames in the store")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="abaw-bench-embed-") as tmp:
        work = build_workspace(Path(tmp), args.frames, args.videos)
        cfg = resolve_config(None, [f"model.backbone={args.backbone}", "model.pretrained=none",
                                    f"data.input_size={args.input_size}", "data.batch_size=8",
                                    "data.num_workers=0", "train.steps=1", "eval.every=0",
                                    f"train.device={args.device}"], {"ssl": "none"})
        train(work, cfg, run_name="bench", progress=False)
        run_dir = work.runs_dir / "bench"
        store = FaceStore(work.store_dir("train"))
        faces = store.faces(store.rows(labelled=None))
        loaded = load_run_model(run_dir, device=args.device)
        real, bound, dim = [], [], 0
        for _ in range(args.rounds):  # pairs close in time: each ratio sees the same load
            begin = time.perf_counter()
            result = embed_run(work, "bench", ["train"], device=args.device,
                               batch_size=args.batch_size, force=True)
            real.append(len(faces) / (time.perf_counter() - begin))
            assert result["splits"]["train"]["frames_embedded"] == len(faces)
            dim = result["dim"]
            bound.append(bound_rate(loaded, faces, args.batch_size))
        ratios = [r / b for r, b in zip(real, bound, strict=True)]
        print(f"embed {args.backbone} {args.input_size}px on {args.device}, {len(faces)} frames "
              f"in {args.videos} videos, dim {dim}, batch {args.batch_size}, "
              f"{torch.get_num_threads()} torch threads")
        print(f"  abaw embed (whole call) {np.median(real):8.1f} frames/s (median)  rounds "
              f"{[round(r, 1) for r in real]}")
        print(f"  forward in memory       {np.median(bound):8.1f} frames/s (median)  rounds "
              f"{[round(b, 1) for b in bound]}")
        print(f"  ratio                   {float(np.median(ratios)):.3f}  (median of per-round "
              f"ratios {[round(x, 3) for x in ratios]}; floor >= 0.9)")


if __name__ == "__main__":
    main()
