"""FixMatch (Sohn et al., 2020): one fixed confidence threshold for every class and step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from abaw_kit.ssl.base import Threshold
from abaw_kit.ssl.registry import register_threshold


@register_threshold("fixmatch")
class FixedThreshold(Threshold):
    """mask_b = [max_c q_b(c) >= p_cutoff]; stateless."""

    DEFAULTS = {"p_cutoff": 0.95}

    def __init__(self, num_classes: int, **params: Any) -> None:
        super().__init__(num_classes, **params)
        self.p_cutoff: float = self.params["p_cutoff"]
        self._require(0.0 < self.p_cutoff <= 1.0,
                      f"p_cutoff must be in (0, 1], got {self.p_cutoff}")

    def _mask(self, probs: Tensor, indices: Tensor | None) -> Tensor:
        return (probs.max(dim=1).values >= self.p_cutoff).float()

    def class_thresholds(self) -> Tensor:
        return torch.full((self.num_classes,), self.p_cutoff)
