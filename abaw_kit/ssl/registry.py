"""Which SSL methods exist, and the one factory the trainer calls: ``make_threshold``.

A new method is one module - a ``Threshold`` subclass decorated ``@register_threshold("name")``,
with its parameters in ``DEFAULTS`` and its own loss terms in ``extra_loss`` - plus one line in
``METHODS`` below. Nothing else names the methods: the ``--ssl`` help, the config's choices and
the error messages all read this registry.

This module does not import torch: the names (``available_thresholds``) are known without
loading any method, so the CLI and the config stay quick to import; a method's module is loaded
the first time it is built or asked for (``threshold_class``).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from abaw_kit.errors import AbawError

if TYPE_CHECKING:
    from abaw_kit.ssl.base import Threshold

METHODS: dict[str, str] = {
    "none": "abaw_kit.ssl.none",
    "fixmatch": "abaw_kit.ssl.fixmatch",
    "flexmatch": "abaw_kit.ssl.flexmatch",
    "freematch": "abaw_kit.ssl.freematch",
    "dtm": "abaw_kit.ssl.dtm",
}
"""The built-in methods: the name ``--ssl`` accepts -> the module that registers it."""

THRESHOLDS: dict[str, type[Threshold]] = {}
"""The threshold classes registered so far, by name (``load_all`` fills it with every method)."""


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
    """The method names, sorted (without importing any method)."""
    return sorted(set(METHODS) | set(THRESHOLDS))


def threshold_class(name: str) -> type[Threshold]:
    """The class registered as ``name`` (case and spaces ignored), its module loaded if needed."""
    key = name.strip().lower()
    if key not in THRESHOLDS and key in METHODS:
        importlib.import_module(METHODS[key])
        if key not in THRESHOLDS:
            raise RuntimeError(f"{METHODS[key]} does not register the SSL method '{key}'")
    cls = THRESHOLDS.get(key)
    if cls is None:
        close = difflib.get_close_matches(key, available_thresholds(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise AbawError(f"unknown SSL threshold '{name}' (valid: "
                        f"{', '.join(available_thresholds())}){hint}")
    return cls


def load_all() -> dict[str, type[Threshold]]:
    """Load every built-in method; returns ``THRESHOLDS``."""
    for name in METHODS:
        threshold_class(name)
    return THRESHOLDS


def parameter_owners(key: str) -> list[str]:
    """The methods that have a parameter ``key`` in their ``DEFAULTS``, sorted."""
    return sorted(name for name, cls in load_all().items() if key in cls.DEFAULTS)


def make_threshold(name: str, num_classes: int, *, num_unlabeled: int | None = None,
                   **params: Any) -> Threshold:
    """Build the threshold ``name``; params left as None keep the method's default.

    ``num_unlabeled`` (the size of the unlabelled index) is required by methods that keep
    per-sample state (``needs_indices``, i.e. FlexMatch) and ignored by the others. A
    parameter the method does not have is an error, never silently ignored; when it belongs
    to another method, the message says which.
    """
    cls = threshold_class(name)
    params = {key: value for key, value in params.items() if value is not None}
    for key in params:
        if key not in cls.DEFAULTS:
            from abaw_kit.ssl.base import unknown_parameter

            raise unknown_parameter(cls.name, cls.DEFAULTS, key, parameter_owners(key))
    if cls.needs_indices:
        return cls(num_classes, num_unlabeled=num_unlabeled, **params)
    return cls(num_classes, **params)
