"""The registry of face detector backends and the one factory ``make_detector``.

A backend is a module that imports ``faces/base.py`` only and offers a factory
``build(*, weights, device, **params)``; the factory, not the detector's constructor, reads or
downloads the weights. Backends are imported lazily, so that ``--detector cascade`` never builds
a torch network, and a new backend is one module plus one ``register_detector`` line below.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from abaw_kit.errors import AbawError
from abaw_kit.faces.base import (
    LANDMARK_NAMES,
    Detections,
    FaceDetector,
    box_iou,
    box_overlaps,
    check_images,
)

__all__ = ["DEFAULT_DETECTOR", "LANDMARK_NAMES", "DetectorFactory", "Detections", "FaceDetector",
           "box_iou", "box_overlaps", "check_images", "detector_names", "make_detector",
           "register_detector"]

DetectorFactory = Callable[..., FaceDetector]
_REGISTRY: dict[str, DetectorFactory] = {}


def register_detector(name: str, factory: DetectorFactory) -> None:
    """Make ``make_detector(name)`` build ``factory(weights=..., device=..., **params)``."""
    if name in _REGISTRY:
        warnings.warn(f"face detector {name!r} registered twice; the last one wins", stacklevel=2)
    _REGISTRY[name] = factory


def detector_names() -> list[str]:
    return sorted(_REGISTRY)


def lazy_factory(module: str, factory: str, **bound: Any) -> DetectorFactory:
    """``module.factory(**bound, **kwargs)``, the module imported on the first call."""

    def build(**kwargs: Any) -> FaceDetector:
        return getattr(importlib.import_module(module), factory)(**bound, **kwargs)

    return build


register_detector("retinaface-mobilenet", lazy_factory(
    "abaw_kit.faces.retinaface", "build_retinaface", backbone="mobilenet0.25"))
register_detector("retinaface", lazy_factory(
    "abaw_kit.faces.retinaface", "build_retinaface", backbone="resnet50"))
register_detector("cascade", lazy_factory("abaw_kit.faces.cascade", "build_cascade"))
DEFAULT_DETECTOR = "retinaface-mobilenet"  # released weights of 1.7 MB, fast on a CPU


def make_detector(name: str = DEFAULT_DETECTOR, *, weights: str | Path | None = None,
                  device: str = "cpu", **params: Any) -> FaceDetector:
    """Build a registered detector; ``None`` params are dropped so backend defaults hold.

    Every backend takes ``max_size``: the long side frames are resized to before detection
    (boxes and landmarks come back in the original pixels).
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AbawError(f"unknown face detector {name!r}: choose one of "
                        f"{', '.join(detector_names())}{hint}")
    params = {key: value for key, value in params.items() if value is not None}
    return _REGISTRY[name](weights=weights, device=device, **params)
