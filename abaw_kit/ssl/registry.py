"""Name -> threshold class, and the one factory the trainer calls: ``make_threshold``.

A new method is one module with ``@register_threshold("name")`` on its class, plus one import
line in ``abaw_kit/ssl/__init__.py``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from abaw_kit.errors import AbawError
from abaw_kit.ssl.base import Threshold

THRESHOLDS: dict[str, type[Threshold]] = {}
"""Every registered threshold class, by the name ``--ssl`` accepts."""


def register_threshold(name: str) -> Callable[[type[Threshold]], type[Threshold]]:
    """Class decorator: register ``cls`` under ``name`` and set ``cls.name``."""

    def add(cls: type[Threshold]) -> type[Threshold]:
        if name in THRESHOLDS:
            raise ValueError(f"threshold '{name}' is registered twice")
        cls.name = name
        THRESHOLDS[name] = cls
        return cls

    return add


def available_thresholds() -> list[str]:
    """The registered names, sorted."""
    return sorted(THRESHOLDS)


def make_threshold(name: str, num_classes: int, *, num_unlabeled: int | None = None,
                   **params: Any) -> Threshold:
    """Build the threshold ``name``; params left as None keep the method's default.

    ``num_unlabeled`` (the size of the unlabelled index) is required by methods that keep
    per-sample state (``needs_indices``, i.e. FlexMatch) and ignored by the others.
    """
    cls = THRESHOLDS.get(name.strip().lower())
    if cls is None:
        close = difflib.get_close_matches(name.strip().lower(), THRESHOLDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise AbawError(f"unknown SSL threshold '{name}' (valid: "
                        f"{', '.join(available_thresholds())}){hint}")
    params = {key: value for key, value in params.items() if value is not None}
    if cls.needs_indices:
        return cls(num_classes, num_unlabeled=num_unlabeled, **params)
    return cls(num_classes, **params)
