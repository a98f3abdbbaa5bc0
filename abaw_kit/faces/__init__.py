"""Face detection (RetinaFace or an offline cascade), tracking of the annotated subject, and
5-point alignment to the 112x112 ArcFace crop used by Aff-Wild2's cropped_aligned faces.

The names below load on first use, so that reading ``DEFAULT_DETECTOR`` (CLI defaults) does
not import scikit-image and torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ARCFACE_TEMPLATE_112": "abaw_kit.faces.align",
    "align_face": "abaw_kit.faces.align",
    "DEFAULT_DETECTOR": "abaw_kit.faces.detector",
    "Detections": "abaw_kit.faces.base",
    "FaceDetector": "abaw_kit.faces.base",
    "detector_names": "abaw_kit.faces.detector",
    "make_detector": "abaw_kit.faces.detector",
    "register_detector": "abaw_kit.faces.detector",
    "ExtractResult": "abaw_kit.faces.extract",
    "SubjectFaces": "abaw_kit.faces.extract",
    "extract_video_faces": "abaw_kit.faces.extract",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
