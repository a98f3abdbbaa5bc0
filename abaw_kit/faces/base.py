"""What every face detector backend shares: ``Detections``, the ``FaceDetector`` protocol and
the input and box helpers.

Backends (cascade.py, retinaface.py) import this module only; detector.py holds the registry
and the factory ``make_detector`` and imports the backends lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


@dataclass
class Detections:
    """The faces found in one image, best score first; coordinates in that image's pixels.

    "left" means the image's left (the subject's right), as in the ArcFace template.
    """

    boxes: np.ndarray  # [n,4] float32 x1,y1,x2,y2
    scores: np.ndarray  # [n] float32
    landmarks: np.ndarray  # [n,5,2] float32, order of LANDMARK_NAMES

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(-1, 5, 2)
        if not (len(self.boxes) == len(self.scores) == len(self.landmarks)):
            raise ValueError("boxes, scores and landmarks must describe the same faces")

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces with 5 landmarks in a batch of RGB images."""

    name: str

    def detect(self, images: np.ndarray) -> list[Detections]:
        """``images`` uint8 [B,H,W,3] RGB -> one Detections per image."""
        ...


def check_images(images: np.ndarray) -> np.ndarray:
    """Accept one [H,W,3] image or a [B,H,W,3] batch of uint8 RGB; return the batch."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [B,H,W,3], got {images.dtype} {images.shape}")
    return images


def box_overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection over the smaller box, both [len(a), len(b)], for x1,y1,x2,y2 boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)[:, None]
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)[None, :]
    iou = inter / np.maximum(area_a + area_b - inter, 1e-9)
    return iou, inter / np.maximum(np.minimum(area_a, area_b), 1e-9)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of x1,y1,x2,y2 boxes."""
    return box_overlaps(a, b)[0]
