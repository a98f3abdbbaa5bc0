"""The offline detector: scikit-image's LBP frontal-face cascade (no weights to download).

It finds frontal faces only and has no landmarks, so the 5 points are an approximation: the
ArcFace template placed inside the box at a fixed scale and offset. The constants were read off
the astronaut photo of ``skimage.data`` (eyes at about 27%/72% of the box width and 34% of its
height, mouth corners at about 75% of its height): the template's 112x112 crop is made to
span 1.3 box widths and its centre sits on the point (0.5, 0.355) of the box. An aligned crop
therefore shows the detected box, upright and centred, but not the head's roll; use RetinaFace
for real landmarks. There is no confidence either: every kept detection scores 1.0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage import data as skimage_data
from skimage.feature import Cascade

from abaw_kit.errors import AbawError
from abaw_kit.faces.align import ARCFACE_TEMPLATE_112
from abaw_kit.faces.base import Detections, box_overlaps, check_images

# Box widths per template width, and the box point (relative x, y) under the template centre.
LANDMARK_SCALE = 1.3
BOX_ANCHOR = np.array([0.5, 0.355], dtype=np.float32)
# The 5 landmarks relative to a box (x1,y1) with unit size, shape [5,2].
RELATIVE_LANDMARKS = ((ARCFACE_TEMPLATE_112 / 112.0 - 0.5) * LANDMARK_SCALE + BOX_ANCHOR).astype(
    np.float32)


def landmarks_from_boxes(boxes: np.ndarray) -> np.ndarray:
    """Estimated 5 landmarks [n,5,2] for square-ish boxes [n,4] (see the module docstring)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    origin = boxes[:, None, :2]
    extent = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
    return origin + RELATIVE_LANDMARKS[None] * extent


def suppress_nested(boxes: np.ndarray, iou: float = 0.3, contained: float = 0.6) -> np.ndarray:
    """Largest first; drop boxes overlapping a kept one (the cascade's merge leaves duplicates)."""
    boxes = boxes[np.argsort(-(boxes[:, 2] - boxes[:, 0]), kind="stable")]
    overlap_iou, overlap_small = box_overlaps(boxes, boxes)
    kept: list[int] = []
    for i in range(len(boxes)):
        if all(overlap_iou[i, k] <= iou and overlap_small[i, k] <= contained for k in kept):
            kept.append(i)
    return boxes[kept]


class CascadeDetector:
    """LBP cascade on a grey copy scaled so its longest side is ``max_side`` (speed).

    ``min_size`` is in pixels of that scaled copy; ``min_neighbors`` is how many overlapping raw
    windows confirm a face (higher: fewer false faces, more misses).
    """

    name = "cascade"

    def __init__(self, max_side: int = 320, scale_factor: float = 1.2, step_ratio: float = 1.0,
                 min_size: int = 20, min_neighbors: int = 4) -> None:
        if max_side < min_size:
            raise ValueError(f"max_side ({max_side}) must be at least min_size ({min_size})")
        self.max_side = max_side
        self.scale_factor = scale_factor
        self.step_ratio = step_ratio
        self.min_size = min_size
        self.min_neighbors = min_neighbors
        self._cascade = Cascade(skimage_data.lbp_frontal_face_cascade_filename())

    def _grey_scaled(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        grey = Image.fromarray(image).convert("L")
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            grey = grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(grey, dtype=np.float32) / 255.0, scale

    def _detect_one(self, image: np.ndarray) -> Detections:
        grey, scale = self._grey_scaled(image)
        if min(grey.shape) < self.min_size:
            return Detections.empty()
        found = self._cascade.detect_multi_scale(
            img=grey, scale_factor=self.scale_factor, step_ratio=self.step_ratio,
            min_size=(self.min_size, self.min_size), max_size=grey.shape,
            min_neighbor_number=self.min_neighbors)
        if not found:
            return Detections.empty()
        boxes = np.array([[d["c"], d["r"], d["c"] + d["width"], d["r"] + d["height"]]
                          for d in found], dtype=np.float32) / scale
        boxes = suppress_nested(boxes)
        return Detections(boxes, np.ones(len(boxes)), landmarks_from_boxes(boxes))

    def detect(self, images: np.ndarray) -> list[Detections]:
        return [self._detect_one(image) for image in check_images(images)]


def build_cascade(*, weights: str | Path | None = None, device: str = "cpu",
                  max_size: int | None = None, **params: Any) -> CascadeDetector:
    """The registry's factory (``--detector cascade``): no weights, always on the CPU."""
    if max_size is not None:  # the one size option every backend takes
        params["max_side"] = max_size
    if weights is not None:
        raise AbawError(f"the cascade detector has no weights to load (got {weights}); "
                        "use --detector retinaface-mobilenet or retinaface to load weights")
    return CascadeDetector(**params)
