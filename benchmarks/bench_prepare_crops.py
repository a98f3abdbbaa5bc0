"""Crops path of `abaw prepare`: frames/s of indexing + packing, as a ratio to JPEG decoding.

The bound is plain PIL decoding of the same jpg files, read from the same disk, with the same
number of threads that prepare uses. Run: python benchmarks/bench_prepare_crops.py --videos 20
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from abaw_kit.classes import ANNOTATION_HEADER
from abaw_kit.prepare import PrepareOptions, prepare
from abaw_kit.workspace import Workspace


def build_release(root: Path, videos: int, frames: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    train = root / "6th_ABAW_Annotations" / "EXPR_Recognition_Challenge" / "Train_Set"
    train.mkdir(parents=True)
    (train.parent / "Validation_Set").mkdir()
    files = []
    base = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    for v in range(videos):
        labels = rng.integers(-1, 8, frames)
        (train / f"video{v}.txt").write_text(ANNOTATION_HEADER + "\n"
                                             + "\n".join(map(str, labels)) + "\n")
        for f in range(1, frames + 1):
            path = root / "cropped_aligned" / f"video{v}" / f"{f:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(np.roll(base, f, axis=1)).save(buf, format="JPEG", quality=90)
            path.write_bytes(buf.getvalue())
            files.append(path)
    return files


def decode(path: Path) -> np.ndarray:
    with Image.open(io.BytesIO(path.read_bytes())) as img:
        return np.asarray(img.convert("RGB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-crops-"))
    try:
        files = build_release(tmp / "release", args.videos, args.frames)
        n = len(files)
        start = time.perf_counter()
        for path in files:
            decode(path)
        serial = n / (time.perf_counter() - start)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(decode, files))
        pooled = n / (time.perf_counter() - start)
        start = time.perf_counter()
        prepare(Workspace(tmp / "work"), PrepareOptions(data_root=tmp / "release",
                                                        splits=("train",), workers=args.workers))
        ours = n / (time.perf_counter() - start)
        print(f"frames: {n}  workers: {args.workers}")
        print(f"bound, JPEG decode, 1 thread:          {serial:9.0f} frames/s")
        print(f"bound, JPEG decode, {args.workers} threads:         {pooled:9.0f} frames/s")
        print(f"prepare --source crops:                {ours:9.0f} frames/s")
        print(f"ratio to the {args.workers}-thread decode bound:      {ours / pooled:9.2f}")
        print(f"ratio to the 1-thread decode bound:    {ours / serial:9.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
