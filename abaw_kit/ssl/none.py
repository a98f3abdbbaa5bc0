"""No unlabelled loss: the supervised baseline run through the same training loop.

``uses_unlabelled = False``: the trainer builds no unlabelled stream for it, so no step forwards
unlabelled views or calls ``mask``; the mask (all rejected) keeps the interface complete.
"""

from __future__ import annotations

import torch
from torch import Tensor

from abaw_kit.ssl.base import Threshold
from abaw_kit.ssl.registry import register_threshold


@register_threshold("none")
class NoThreshold(Threshold):
    """Rejects every pseudo-label, so the unlabelled loss is always zero."""

    uses_unlabelled = False

    def _mask(self, probs: Tensor, indices: Tensor | None) -> Tensor:
        return probs.new_zeros(probs.shape[0])

    def class_thresholds(self) -> Tensor:
        """Infinity for every class: no probability passes."""
        return torch.full((self.num_classes,), float("inf"))
