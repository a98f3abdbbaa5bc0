"""DTM: the Dynamic Threshold Module for pseudo-labels on unlabelled face-recognition images.

Yu et al. (CVPRW 2023) describe DTM as a threshold that adapts to the training stage and to each
expression class; their code is not public. This is our version, built on FreeMatch's
self-adaptive threshold. Per unlabelled batch of weak-view probabilities q [B, C], momentum m,
target class prior pi (uniform unless ``class_prior``):

    tau    <- m * tau  + (1 - m) * mean_b max_c q_b(c)       # global confidence, starts at 1/C
    p(c)   <- m * p(c) + (1 - m) * mean_b q_b(c)             # class-wise mean prob, starts at 1/C
    tau_c   = clip(tau * p(c) / max_k p(k) * (h(c) / pi(c))^gamma, min_threshold, max_threshold)
              (tau_c = max_threshold during the first warmup_steps batches)
    mask_b  = [ max_c q_b(c) >= tau_{argmax q_b} ]
    h(c)   <- m * h(c) + (1 - m) * share of class c among the batch's accepted pseudo-labels
              (starts at pi; unchanged when the batch accepts nothing)

Why the additions (with gamma=0, bounds [0, 1] and no warm-up its mask is exactly FreeMatch's;
DTM has no fairness loss: its balancing is in the threshold):
- h/pi: face-recognition photos are mostly neutral or smiling. FreeMatch gives the dominant
  class the global threshold tau, so it floods the pseudo-labels while fear and disgust (1-2% of
  Aff-Wild2 train) vanish, which macro F1 punishes. The ratio raises the threshold of classes
  accepted more often than pi and lowers it for the others: a feedback loop towards pi.
  gamma=0.5 damps it so one noisy EMA cannot swing a threshold from bound to bound.
- Bounds: with 8 classes an argmax below ~0.5 is too often wrong, and a threshold of 1 would
  switch a class off for good; min/max keep every class reachable and every label plausible.
- Warm-up: the FR images differ from Aff-Wild2 frames, so early predictions on them are
  unreliable, yet FreeMatch's 1/C start accepts almost everything. Keeping the threshold high
  for ~1/(1-m) steps (the EMA horizon) lets the EMAs forget their start before they decide.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from abaw_kit.ssl.freematch import SelfAdaptiveThreshold
from abaw_kit.ssl.registry import register_threshold


@register_threshold("dtm")
class DynamicThreshold(SelfAdaptiveThreshold):
    """FreeMatch's threshold + pseudo-label histogram balancing, bounds and a warm-up."""

    DEFAULTS = {"momentum": 0.999, "gamma": 0.5, "min_threshold": 0.5, "max_threshold": 0.95,
                "warmup_steps": 1000, "class_prior": None}
    STATE = (*SelfAdaptiveThreshold.STATE, "pseudo_hist", "step")

    def __init__(self, num_classes: int, **params: Any) -> None:
        super().__init__(num_classes, **params)
        self.gamma: float = self.params["gamma"]
        self.min_threshold: float = self.params["min_threshold"]
        self.max_threshold: float = self.params["max_threshold"]
        self.warmup_steps: int = self.params["warmup_steps"]
        self._require(self.gamma >= 0.0, f"gamma must be >= 0, got {self.gamma}")
        self._require(0.0 <= self.min_threshold <= self.max_threshold <= 1.0,
                      f"need 0 <= min_threshold <= max_threshold <= 1, got "
                      f"{self.min_threshold} and {self.max_threshold}")
        self._require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        self.prior = self._target_prior(self.params["class_prior"])
        self.pseudo_hist = self.prior.clone()
        self.step = 0

    def class_thresholds(self) -> Tensor:
        if self.step <= self.warmup_steps:
            return torch.full_like(self.p_model, self.max_threshold)
        balance = (self.pseudo_hist / self.prior) ** self.gamma
        return (super().class_thresholds() * balance).clamp(self.min_threshold, self.max_threshold)

    def accepted_share(self) -> Tensor:
        return self.pseudo_hist

    def _mask(self, probs: Tensor, indices: Tensor | None) -> Tensor:
        self.step += 1
        max_probs, pred = self._update_emas(probs)
        mask = (max_probs >= self.class_thresholds()[pred]).float()
        accepted = torch.zeros_like(self.pseudo_hist).index_add_(0, pred, mask)
        total = accepted.sum()
        m = self.momentum
        fresh = self.pseudo_hist * m + (1 - m) * (accepted / total.clamp(min=1))
        self.pseudo_hist = torch.where(total > 0, fresh, self.pseudo_hist)
        return mask

    def _target_prior(self, class_prior: Any) -> Tensor:
        if class_prior is None:
            return torch.full((self.num_classes,), 1.0 / self.num_classes)
        try:
            prior = torch.as_tensor(class_prior, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):
            prior = torch.zeros(0, dtype=torch.float64)
        self._require(prior.numel() == self.num_classes and bool(torch.isfinite(prior).all())
                      and bool((prior > 0).all()),
                      f"class_prior must be {self.num_classes} positive numbers (e.g. the "
                      f"labelled class frequencies), got {class_prior!r}")
        return (prior / prior.sum()).float()
