"""`abaw submit` without the model: fill + smooth + align + write + check a test-sized submission.

Synthetic data of the ABAW5 test set's size (228 videos, about 1M frames, 2% without a face).
Each step is timed on this machine; writing and checking are also given as a ratio to bounds
measured in the same run on the same file: a plain write_bytes of its bytes, and pandas' C CSV
parser reading it without any validation.
Run: python benchmarks/bench_submission.py --frames 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from abaw_kit.smoothing import fill_missing, smooth
from abaw_kit.submission import align_to_example, check_submission, write_predictions


def synthetic_test_set(frames: int, videos: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """(index with video, frame; probabilities with NaN rows) of about ``frames`` frames."""
    rng = np.random.default_rng(seed)
    lengths = rng.multinomial(frames - videos, np.ones(videos) / videos) + 1
    names = np.repeat([f"{i}-30-1280x720" for i in range(videos)], lengths)
    numbers = np.concatenate([np.arange(1, n + 1) for n in lengths])
    probs = rng.dirichlet(np.ones(8), size=frames).astype(np.float32)
    probs[rng.random(frames) < 0.02] = np.nan
    return pd.DataFrame({"video": names, "frame": numbers}), probs


def timed(label: str, frames: int, func: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = func()
    seconds = time.perf_counter() - start
    print(f"{label:<34} {seconds:7.3f} s   {frames / seconds:>12,.0f} frames/s")
    return value, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--videos", type=int, default=228)
    parser.add_argument("--smooth", default="mean:101", help="smoothing spec to apply")
    args = parser.parse_args()

    index, probs = synthetic_test_set(args.frames, args.videos)
    n = len(index)
    print(f"{n:,} frames, {args.videos} videos, smoothing {args.smooth} "
          "(times measured on this machine)")
    videos = index["video"]
    filled, t_fill = timed("fill_missing", n, lambda: fill_missing(probs, videos))
    smoothed, t_smooth = timed(f"smooth {args.smooth}", n,
                               lambda: smooth(filled, videos, args.smooth))
    (aligned, _), t_align = timed("align_to_example", n, lambda: align_to_example(
        index, videos, index["frame"], smoothed))
    labels = aligned.argmax(axis=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "expr_submission_1.txt"
        _, t_write = timed("write_predictions", n,
                           lambda: write_predictions(path, videos, index["frame"], labels))
        _, t_check = timed("check_submission (read + compare)", n,
                           lambda: check_submission(path, index))
        data = path.read_bytes()
        bound = Path(tmp) / "bound.txt"
        _, b_write = timed("bound: write_bytes of the same file", n,
                           lambda: bound.write_bytes(data))
        _, b_read = timed("bound: pandas read_csv, no checks", n, lambda: pd.read_csv(path))
        size_mb = len(data) / 1e6
    total = t_fill + t_smooth + t_align + t_write + t_check
    print(f"{'total':<34} {total:7.3f} s   {n / total:>12,.0f} frames/s   ({size_mb:.1f} MB file)")
    print(f"write_predictions / raw write: {t_write / b_write:8.1f}x;  "
          f"check_submission / read_csv: {t_check / b_read:8.1f}x")


if __name__ == "__main__":
    main()
