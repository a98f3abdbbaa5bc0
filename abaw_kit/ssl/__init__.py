"""Semi-supervised learning: pseudo-label thresholds (``make_threshold``) and their losses.

Where the threshold is computed: one module per method, each a small class with ``_mask``
(the decision for one batch) and ``class_thresholds`` (the per-class threshold):
``none.py``, ``fixmatch.py``, ``flexmatch.py``, ``freematch.py``, ``dtm.py``; the shared
interface is in ``base.py``, the name registry in ``registry.py``.
"""

from __future__ import annotations

from abaw_kit.ssl import dtm, fixmatch, flexmatch, freematch, none  # noqa: F401  (registers)
from abaw_kit.ssl.base import Threshold, class_counts
from abaw_kit.ssl.dtm import DynamicThreshold
from abaw_kit.ssl.fixmatch import FixedThreshold
from abaw_kit.ssl.flexmatch import FlexMatchThreshold
from abaw_kit.ssl.freematch import FreeMatchThreshold
from abaw_kit.ssl.losses import (
    class_balance_weights,
    consistency_loss,
    freematch_fairness_loss,
    negative_learning_loss,
)
from abaw_kit.ssl.none import NoThreshold
from abaw_kit.ssl.registry import (
    THRESHOLDS,
    available_thresholds,
    make_threshold,
    register_threshold,
)

__all__ = [
    "THRESHOLDS",
    "DynamicThreshold",
    "FixedThreshold",
    "FlexMatchThreshold",
    "FreeMatchThreshold",
    "NoThreshold",
    "Threshold",
    "available_thresholds",
    "class_balance_weights",
    "class_counts",
    "consistency_loss",
    "freematch_fairness_loss",
    "make_threshold",
    "negative_learning_loss",
    "register_threshold",
]
