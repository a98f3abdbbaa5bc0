"""FreeMatch (Wang et al., ICLR 2023): self-adaptive thresholds (SAT).

Mask decisions are identical to the USB reference (``FreeMatchThresholdingHook``, default
options: mean confidence, no clipping). Per unlabelled batch q [B, C], momentum m:

    tau     <- m * tau     + (1 - m) * mean_b max_c q_b(c)       # starts at 1/C
    p(c)    <- m * p(c)    + (1 - m) * mean_b q_b(c)             # starts at 1/C
    hist(c) <- m * hist(c) + (1 - m) * share of argmax == c      # starts at 1/C
    mask_b   = [ max_c q_b(c) >= tau * p(argmax q_b) / max_c p(c) ]

As in USB, the EMAs are updated with the batch *before* its mask is computed. ``p_model`` and
``label_hist`` feed ``freematch_fairness_loss``. (An early USB version started the EMAs at 1
instead of 1/C; the paper and current USB use 1/C.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from abaw_kit.ssl.base import Threshold, class_counts
from abaw_kit.ssl.registry import register_threshold


@register_threshold("freematch")
class FreeMatchThreshold(Threshold):
    """Global EMA confidence scaled per class by the EMA class-wise mean probability."""

    DEFAULTS = {"momentum": 0.999}
    STATE = ("time_p", "p_model", "label_hist")

    def __init__(self, num_classes: int, **params: Any) -> None:
        super().__init__(num_classes, **params)
        self.momentum: float = self.params["momentum"]
        self._require(0.0 <= self.momentum < 1.0,
                      f"momentum must be in [0, 1), got {self.momentum}")
        self.p_model = torch.full((num_classes,), 1.0 / num_classes)
        self.label_hist = torch.full((num_classes,), 1.0 / num_classes)
        self.time_p = self.p_model.mean()

    def class_thresholds(self) -> Tensor:
        return self.time_p * (self.p_model / self.p_model.max())

    def _mask(self, probs: Tensor, indices: Tensor | None) -> Tensor:
        max_probs, pred = self._update_emas(probs)
        return (max_probs >= self.class_thresholds()[pred]).float()

    def _update_emas(self, probs: Tensor) -> tuple[Tensor, Tensor]:
        """Fold one batch into tau, p_model and label_hist; return (max prob, argmax)."""
        m = self.momentum
        max_probs, pred = probs.max(dim=1)
        self.time_p = self.time_p * m + (1 - m) * max_probs.mean()
        self.p_model = self.p_model * m + (1 - m) * probs.mean(dim=0)
        hist = class_counts(pred, self.num_classes).to(self.p_model.dtype)
        self.label_hist = self.label_hist * m + (1 - m) * (hist / hist.sum())
        return max_probs, pred
