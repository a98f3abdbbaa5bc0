"""A split's embeddings as windows (what the temporal model reads), and the training order.

Inputs are gathered per batch from the memory-mapped per-video files (``abaw_kit.embed``), so
memory is bounded by the window batch, never by the split: a 1M-frame split of 1280-d float16
embeddings (2.6 GB on disk) trains on a small machine.

The training order is a pure function of (seed, step, rank): batch ``k`` of rank ``r`` holds the
global window positions ``(k * world + r) * B ...``, read through a per-epoch permutation and a
per-epoch random shift of every window start (below the stride, so each epoch sees other cuts
of the same videos). Resuming at step ``k`` therefore continues the exact sequence with no
sampler state to save.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from abaw_kit.embed import EmbeddingStore, VideoEmbeddings
from abaw_kit.temporal.windows import WindowPlan, gather_window, plan_windows, window_labels


def face_row_map(has_face: np.ndarray) -> np.ndarray:
    """int64 [T]: each frame's row in its video's embeddings file, -1 without a face."""
    has_face = np.asarray(has_face, bool)
    rows = np.full(len(has_face), -1, dtype=np.int64)
    rows[has_face] = np.arange(int(has_face.sum()))
    return rows


def video_mean(embeddings: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """float32 [D] mean of one video's embeddings (zeros for none), read in chunks so that a
    memory-mapped file is never loaded whole."""
    total = np.zeros(embeddings.shape[1], np.float64)
    for start in range(0, len(embeddings), chunk):
        total += embeddings[start:start + chunk].astype(np.float64).sum(axis=0)
    return (total / max(len(embeddings), 1)).astype(np.float32)


@dataclass
class WindowBatch:
    x: np.ndarray  # float32 [B, L, D]
    mask: np.ndarray  # bool [B, L]: the frame has a face
    labels: np.ndarray  # int64 [B, L]: -1 where no loss (no face, unlabelled, padding)
    centre: np.ndarray | None = None  # float32 [B, D]: each window's video mean (video_centre)


class SplitWindows:
    """The windows over every video of one split's embeddings (see the module docstring).

    With ``clip`` (training), ``window`` is clipped to the longest video (``clipped_from`` then
    says from what), since a longer window would only be padding; without it (validation,
    prediction: the trained window), shorter videos are one padded window each.
    ``labelled_only`` keeps the windows with at least one labelled frame with a face: the only
    ones that carry a loss. With ``video_centre`` every batch also carries the mean embedding
    of its window's whole video (``temporal.centre_over: video``), computed once per video.
    """

    def __init__(self, embeddings: EmbeddingStore, window: int, stride: int, *,
                 labelled_only: bool = False, clip: bool = False,
                 video_centre: bool = False) -> None:
        self.split, self.dim = embeddings.split, embeddings.dim
        self.videos: list[VideoEmbeddings] = [v for v in embeddings if len(v.frames)]
        self.lengths = [len(v.frames) for v in self.videos]
        self.face_rows = [face_row_map(v.has_face) for v in self.videos]
        longest = max(self.lengths, default=0)
        self.clipped_from = window if clip and 0 < longest < window else None
        window = min(window, longest) if self.clipped_from else window
        plan = plan_windows(self.lengths, window, min(stride, window))
        if labelled_only and len(plan):
            keep = np.array([self._has_loss(int(v), int(s), window)
                             for v, s in zip(plan.videos, plan.starts, strict=True)], bool)
            plan = WindowPlan(plan.videos[keep], plan.starts[keep], window)
        self.plan, self.window, self.stride = plan, window, min(stride, window)
        self._masks: np.ndarray | None = None
        self.video_means = (np.stack([video_mean(v.embeddings) for v in self.videos])
                            if video_centre and self.videos else None)

    def _has_loss(self, video: int, start: int, window: int) -> bool:
        part = slice(start, start + window)
        return bool(((self.videos[video].labels[part] >= 0)
                     & self.videos[video].has_face[part]).any())

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def frames_with_face(self) -> int:
        return int(sum(int(v.has_face.sum()) for v in self.videos))

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Labelled frames with a face per class (the class-weighted loss's counts)."""
        counts = np.zeros(num_classes, np.int64)
        for video in self.videos:
            labels = video.labels[(video.labels >= 0) & video.has_face]
            counts += np.bincount(labels, minlength=num_classes)[:num_classes]
        return counts

    def masks(self) -> np.ndarray:
        """bool [windows, window]: which positions of each window hold a face (no reading);
        computed once, as every validation stitches with them."""
        if self._masks is not None:
            return self._masks
        out = np.zeros((len(self.plan), self.window), bool)
        for i, (video, start) in enumerate(zip(self.plan.videos, self.plan.starts, strict=True)):
            rows = self.face_rows[int(video)][int(start):int(start) + self.window]
            out[i, :len(rows)] = rows >= 0
        self._masks = out
        return out

    def gather(self, indices: Sequence[int] | np.ndarray,
               shifts: np.ndarray | None = None) -> WindowBatch:
        """Windows ``indices`` of the plan, each start moved by ``shifts`` (clipped to the
        video)."""
        indices = np.asarray(indices, np.int64)
        batch = len(indices)
        x = np.zeros((batch, self.window, self.dim), np.float32)
        mask = np.zeros((batch, self.window), bool)
        labels = np.full((batch, self.window), -1, np.int64)
        for j, i in enumerate(indices):
            video = int(self.plan.videos[i])
            start = self._start(i, video, 0 if shifts is None else int(shifts[j]))
            x[j], mask[j] = gather_window(self.videos[video].embeddings, self.face_rows[video],
                                          start, self.window)
            labels[j] = window_labels(self.videos[video].labels, mask[j], start, self.window)
        centre = (None if self.video_means is None
                  else self.video_means[self.plan.videos[indices]])
        return WindowBatch(x, mask, labels, centre)

    def _start(self, i: int, video: int, shift: int) -> int:
        start = int(self.plan.starts[i])
        if shift:
            start = min(start + shift, max(0, self.lengths[video] - self.window))
        return start


class WindowOrder:
    """Which windows (and start shifts) batch ``step`` of ``rank`` holds; see the module doc."""

    def __init__(self, windows: int, batch_size: int, *, seed: int, max_shift: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if windows <= 0:
            raise ValueError("no windows to train on")
        self.windows, self.batch_size, self.seed = windows, batch_size, seed
        self.max_shift, self.rank, self.world_size = max_shift, rank, world_size
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(window indices, start shifts) of this rank's batch at ``step``."""
        first = (step * self.world_size + self.rank) * self.batch_size
        positions = np.arange(first, first + self.batch_size, dtype=np.int64)
        epochs, within = np.divmod(positions, self.windows)
        indices = np.empty(self.batch_size, np.int64)
        shifts = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epochs):
            order, epoch_shifts = self._epoch(int(epoch))
            take = epochs == epoch
            indices[take] = order[within[take]]
            shifts[take] = epoch_shifts[order[within[take]]]
        return indices, shifts

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(self.windows)
            shifts = rng.integers(0, max(self.max_shift, 1), self.windows)
            if len(self._epochs) >= 2:  # a batch spans at most two epochs
                del self._epochs[min(self._epochs)]
            self._epochs[epoch] = (order, shifts)
        return self._epochs[epoch]
