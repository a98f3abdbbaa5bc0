"""Unlabelled-data losses every pseudo-label method shares: consistency, class balance and
negative learning. A method's own terms live in its module (FreeMatch's fairness loss:
``freematch.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def class_balance_weights(pseudo_labels: Tensor, mask: Tensor, num_classes: int,
                          power: float) -> Tensor:
    """Per-sample weights count(class)^-power over the accepted pseudo-labels of the (global)
    batch, scaled so the accepted samples' weights sum to their number.

    Why: the supervised loss sees class-balanced batches, but face-recognition photos are
    mostly neutral or smiling, so even right pseudo-labels pull the decision towards those
    classes and the rare ones lose recall, which macro-F1 punishes. power=1 gives every class
    present among the accepted the same total weight; 0 leaves the weights at 1.
    """
    accepted = mask.detach().float()
    counts = torch.zeros(num_classes, device=mask.device).index_add_(0, pseudo_labels, accepted)
    per_class = torch.where(counts > 0, counts.clamp(min=1.0) ** -power, torch.zeros_like(counts))
    weights = per_class[pseudo_labels] * accepted
    total = weights.sum()
    return torch.where(total > 0, weights * accepted.sum() / total.clamp(min=1e-12), accepted)


def consistency_loss(strong_logits: Tensor, pseudo_labels: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy of the strong view to hard pseudo-labels, masked, mean over the whole batch.

    Dividing by the batch size (not by the number of accepted samples), as FixMatch does, makes
    the unlabelled loss grow with the share of confident pseudo-labels instead of letting a
    single accepted sample carry the full weight early in training.
    """
    if strong_logits.shape[0] == 0:
        return strong_logits.sum() * 0.0
    per_sample = F.cross_entropy(strong_logits.float(), pseudo_labels.long(), reduction="none")
    return (per_sample * mask.detach().to(per_sample.dtype)).mean()  # mask may carry weights


def negative_learning_loss(strong_logits: Tensor, weak_probs: Tensor, rejected: Tensor,
                           threshold: float) -> Tensor:
    """Selective negative learning on images the threshold rejected: push the strong view's
    probability of every class the teacher gives less than ``threshold`` towards 0.

    A low-confidence face still says reliably what it is *not* ("not Fear" when the teacher
    gives Fear 1%); -log(1 - p(c)) on those complementary labels uses images that positive
    pseudo-labelling throws away. Mean over the whole batch and the selected classes, so the
    loss does not grow with the number of classes picked.
    """
    negatives = (weak_probs.detach() < threshold) & (rejected.detach()[:, None] > 0)
    if strong_logits.shape[0] == 0:  # no ``negatives.any()``: it would wait for the device
        return strong_logits.sum() * 0.0
    probs = strong_logits.float().softmax(dim=1)
    per_class = -torch.log((1.0 - probs).clamp(min=1e-6))
    per_sample = (per_class * negatives).sum(dim=1) / negatives.sum(dim=1).clamp(min=1)
    return per_sample.mean()
