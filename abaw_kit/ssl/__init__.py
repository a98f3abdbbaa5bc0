"""Semi-supervised learning: pseudo-label thresholds (``make_threshold``) and their losses.

One module per method, each a small ``Threshold`` subclass with ``_mask`` (the decision for
one batch), ``class_thresholds`` (the per-class threshold), its parameters in ``DEFAULTS`` and
its own loss terms in ``extra_loss``: ``none.py``, ``fixmatch.py``, ``flexmatch.py``,
``freematch.py``, ``dtm.py``. Distribution alignment of the teacher's probabilities before
any threshold is ``alignment.py``. The shared interface is in ``base.py``, the losses every method
shares in ``losses.py``, and the list of methods in ``registry.py`` (``METHODS``).

Names are loaded on first use, so ``import abaw_kit.ssl`` (and the registry's method names)
does not import torch; ``THRESHOLDS`` loads every method.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from abaw_kit.ssl.alignment import DistributionAlignment, make_alignment
    from abaw_kit.ssl.base import LossTerm, Threshold, class_counts
    from abaw_kit.ssl.dtm import DynamicThreshold
    from abaw_kit.ssl.fixmatch import FixedThreshold
    from abaw_kit.ssl.flexmatch import FlexMatchThreshold
    from abaw_kit.ssl.freematch import FreeMatchThreshold, freematch_fairness_loss
    from abaw_kit.ssl.losses import (
        class_balance_weights,
        consistency_loss,
        negative_learning_loss,
    )
    from abaw_kit.ssl.none import NoThreshold
    from abaw_kit.ssl.registry import (
        METHODS,
        THRESHOLDS,
        available_thresholds,
        make_threshold,
        register_threshold,
        threshold_class,
    )

_HOMES = {
    "DistributionAlignment": "alignment", "make_alignment": "alignment",
    "LossTerm": "base", "Threshold": "base", "class_counts": "base",
    "DynamicThreshold": "dtm", "FixedThreshold": "fixmatch", "FlexMatchThreshold": "flexmatch",
    "FreeMatchThreshold": "freematch", "freematch_fairness_loss": "freematch",
    "NoThreshold": "none", "class_balance_weights": "losses", "consistency_loss": "losses",
    "negative_learning_loss": "losses", "METHODS": "registry", "THRESHOLDS": "registry",
    "available_thresholds": "registry", "make_threshold": "registry",
    "register_threshold": "registry", "threshold_class": "registry",
}
"""Exported name -> the module of this package that defines it."""

__all__ = [
    "METHODS",
    "THRESHOLDS",
    "DistributionAlignment",
    "DynamicThreshold",
    "FixedThreshold",
    "FlexMatchThreshold",
    "FreeMatchThreshold",
    "LossTerm",
    "NoThreshold",
    "Threshold",
    "available_thresholds",
    "class_balance_weights",
    "class_counts",
    "consistency_loss",
    "freematch_fairness_loss",
    "make_alignment",
    "make_threshold",
    "negative_learning_loss",
    "register_threshold",
    "threshold_class",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'abaw_kit.ssl' has no attribute '{name}'")
    module = importlib.import_module(f"abaw_kit.ssl.{home}")
    if name == "THRESHOLDS":
        module.load_all()
    value = getattr(module, name)
    globals()[name] = value
    return value
