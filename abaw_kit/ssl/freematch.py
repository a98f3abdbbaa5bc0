"""FreeMatch (Wang et al., ICLR 2023): self-adaptive thresholds (SAT) and the self-adaptive
fairness loss.

Mask decisions are identical to the USB reference (``FreeMatchThresholdingHook``, default
options: mean confidence, no clipping). Per unlabelled batch q [B, C], momentum m:

    tau     <- m * tau     + (1 - m) * mean_b max_c q_b(c)       # starts at 1/C
    p(c)    <- m * p(c)    + (1 - m) * mean_b q_b(c)             # starts at 1/C
    hist(c) <- m * hist(c) + (1 - m) * share of argmax == c      # starts at 1/C
    mask_b   = [ max_c q_b(c) >= tau * p(argmax q_b) / max_c p(c) ]

As in USB, the EMAs are updated with the batch *before* its mask is computed. ``p_model`` and
``label_hist`` feed the fairness loss (``freematch_fairness_loss``), which FreeMatch adds to the
step's loss as ``fairness_weight * L_f`` (USB's ``lambda_e * ent_loss``: not ramped, unlike
``lambda_u`` here). (An early USB version started the EMAs at 1 instead of 1/C; the paper and
current USB use 1/C.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from abaw_kit.ssl.base import LossTerm, Threshold, class_counts
from abaw_kit.ssl.registry import register_threshold


class SelfAdaptiveThreshold(Threshold):
    """FreeMatch's threshold without its loss: a global EMA confidence scaled per class by the
    EMA class-wise mean probability. Shared by FreeMatch and DTM; not a method of its own."""

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


@register_threshold("freematch")
class FreeMatchThreshold(SelfAdaptiveThreshold):
    """Self-adaptive threshold + ``fairness_weight`` * the self-adaptive fairness loss."""

    DEFAULTS = {"momentum": 0.999, "fairness_weight": 0.001}

    def __init__(self, num_classes: int, **params: Any) -> None:
        super().__init__(num_classes, **params)
        self.fairness_weight: float = self.params["fairness_weight"]
        self._require(self.fairness_weight >= 0.0,
                      f"fairness_weight must be >= 0, got {self.fairness_weight}")

    def extra_loss(self, strong_logits: Tensor, mask: Tensor,
                   weak_probs: Tensor) -> dict[str, LossTerm]:
        if self.fairness_weight <= 0:
            return {}
        fairness = freematch_fairness_loss(strong_logits, mask, self.p_model, self.label_hist)
        return {"fair_loss": LossTerm(fairness, self.fairness_weight)}


def freematch_fairness_loss(strong_logits: Tensor, mask: Tensor, p_model: Tensor,
                            label_hist: Tensor) -> Tensor:
    """FreeMatch's self-adaptive fairness loss L_f = -H(SumNorm(p/h), SumNorm(pbar/hbar)).

    p, h: the threshold's EMA class-wise mean probability and argmax histogram (``p_model``,
    ``label_hist``). pbar, hbar: the mean strong-view probability and the argmax histogram of
    the accepted (mask=1) samples of this batch. Dividing each mean by its histogram removes
    the effect of class frequency; H(a, b) = -sum a*log(b + 1e-12), and classes with a zero
    histogram get a zero scale, as in USB. Minimising L_f (a sum of a*log b, <= 0) lowers the
    batch's mean probability where the model's own debiased prior is high, i.e. it spreads the
    accepted predictions over more classes. Returns 0 (with a graph) when nothing is accepted.

    The accepted rows are weighted by the mask, not selected: fixed shapes, so a GPU step does
    not wait for the device to learn how many were accepted.
    """
    accepted = (mask.detach() > 0).float()
    count = accepted.sum()
    probs = strong_logits.float().softmax(dim=-1)
    num_classes = probs.shape[1]
    hist = class_counts(probs.argmax(dim=-1), num_classes, accepted)
    hist = hist / count.clamp(min=1.0)
    target = p_model.detach().float() * _inverse_or_zero(label_hist.detach().float())
    target = target / target.sum()
    batch_mean = (probs * accepted[:, None]).sum(dim=0) / count.clamp(min=1.0)
    batch_mean = batch_mean * _inverse_or_zero(hist)
    batch_mean = batch_mean / batch_mean.sum().clamp(min=1e-12)  # finite when none accepted
    loss = (target * torch.log(batch_mean + 1e-12)).sum()
    return torch.where(count > 0, loss, strong_logits.sum() * 0.0)


def _inverse_or_zero(values: Tensor) -> Tensor:
    return torch.where(values > 0, 1.0 / values, torch.zeros_like(values))
