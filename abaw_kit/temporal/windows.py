"""Windows of consecutive frames of one video, and stitching their outputs back per frame.

A window never spans two videos (each video is one subject's sequence: ``X_left`` and
``X_right`` are two videos here). Frames without a face are masked, never invented: their
input is a zero vector with ``mask`` False, they get no loss, and stitching gives them no
probability (NaN), which the evaluation's no-face interpolation then fills as for the frame
model. Windows are planned so that every frame is covered: starts 0, stride, 2*stride, ... and
a last window ending on the last frame; a video shorter than the window is one window, padded
(and masked) at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowPlan:
    """Window ``i`` covers frames ``starts[i] .. starts[i] + window - 1`` of video
    ``videos[i]`` (positions past that video's end are padding)."""

    videos: np.ndarray  # [n] int64 index into the videos' list
    starts: np.ndarray  # [n] int64 first frame
    window: int

    def __len__(self) -> int:
        return len(self.videos)


def plan_windows(lengths: Sequence[int], window: int, stride: int) -> WindowPlan:
    """Windows over every frame of every video (see the module docstring)."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} would skip frames")
    videos, starts = [], []
    for index, length in enumerate(lengths):
        if length <= 0:
            continue
        last = max(0, length - window)
        video_starts = list(range(0, last + 1, stride))
        if video_starts[-1] != last:
            video_starts.append(last)
        videos.extend([index] * len(video_starts))
        starts.extend(video_starts)
    return WindowPlan(np.asarray(videos, np.int64), np.asarray(starts, np.int64), window)


def gather_window(embeddings: np.ndarray, face_rows: np.ndarray, start: int,
                  window: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of one window: float32 [window, D] and mask [window] (True: a face).

    ``face_rows`` [T] maps each frame of the video to its row in ``embeddings`` (the video's
    embeddings of the frames with a face, in frame order), -1 where the frame has no face.
    Only the rows this window needs are read, so a memory-mapped file stays on disk.
    """
    rows = face_rows[start:start + window]
    mask = np.zeros(window, dtype=bool)
    mask[:len(rows)] = rows >= 0
    x = np.zeros((window, embeddings.shape[1]), dtype=np.float32)
    present = np.flatnonzero(mask)
    if len(present):
        x[present] = embeddings[rows[present]]
    return x, mask


def window_labels(labels: np.ndarray, mask: np.ndarray, start: int, window: int,
                  ignore: int = -1) -> np.ndarray:
    """int64 [window] labels of one window; ``ignore`` where masked, unlabelled or padding."""
    out = np.full(window, ignore, dtype=np.int64)
    part = np.asarray(labels[start:start + window], dtype=np.int64)
    out[:len(part)] = part
    out[~mask] = ignore
    return out


def stitch(outputs: np.ndarray, masks: np.ndarray, plan: WindowPlan,
           lengths: Sequence[int]) -> list[np.ndarray]:
    """Per video float32 [T, C]: each frame's outputs averaged over the windows that cover it
    with a face; NaN rows where no window saw a face on that frame.

    ``outputs`` [n, window, C] and ``masks`` [n, window] are in the plan's order.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if outputs.shape[:2] != (len(plan), plan.window) or masks.shape != outputs.shape[:2]:
        raise ValueError(f"outputs {outputs.shape} and masks {masks.shape} do not match a plan "
                         f"of {len(plan)} windows of {plan.window}")
    classes = outputs.shape[2]
    sums = [np.zeros((length, classes)) for length in lengths]
    counts = [np.zeros(length) for length in lengths]
    for i, (video, start) in enumerate(zip(plan.videos, plan.starts, strict=True)):
        length = lengths[video]
        span = min(plan.window, length - start)
        valid = masks[i, :span]
        sums[video][start:start + span][valid] += outputs[i, :span][valid]
        counts[video][start:start + span][valid] += 1
    stitched = []
    for total, count in zip(sums, counts, strict=True):
        with np.errstate(invalid="ignore", divide="ignore"):
            stitched.append((total / count[:, None]).astype(np.float32))
    return stitched
