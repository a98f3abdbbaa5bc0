"""FlexMatch (Zhang et al., 2021): curriculum pseudo-labelling with class-wise thresholds.

Mask decisions are identical to the USB reference (``FlexMatchThresholdingHook``):

- every unlabelled sample remembers the class of its latest prediction whose confidence reached
  ``p_cutoff`` (-1 = never);
- sigma(c) = (samples remembered as c) / max count, where during ``thresh_warmup`` the count of
  never-confident samples takes part in the max (so thresholds start near 0 and rise as more
  samples become confident); sigma is left unchanged while all samples share one value;
- a prediction of class c passes if max prob >= p_cutoff * (sigma(c) / (2 - sigma(c)));
- the mask uses sigma from before the batch; then the batch's confident predictions are
  remembered and sigma is recomputed.

Repeated indices in one batch: the last confident occurrence wins (USB leaves it to the
scatter order, which is undefined on GPU). Counts are updated incrementally, O(batch) per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from abaw_kit.ssl.base import Threshold, is_count
from abaw_kit.ssl.registry import register_threshold


@register_threshold("flexmatch")
class FlexMatchThreshold(Threshold):
    """Needs the unlabelled sample indices and ``num_unlabeled`` (size of the index)."""

    needs_indices = True
    DEFAULTS = {"p_cutoff": 0.95, "thresh_warmup": True}
    STATE = ("selected_label", "classwise_acc")

    def __init__(self, num_classes: int, *, num_unlabeled: int | None = None,
                 **params: Any) -> None:
        super().__init__(num_classes, **params)
        self._require(is_count(num_unlabeled) and num_unlabeled >= 1,
                      f"needs num_unlabeled >= 1 (the number of unlabelled images), "
                      f"got {num_unlabeled!r}")
        self.p_cutoff: float = self.params["p_cutoff"]
        self.thresh_warmup: bool = self.params["thresh_warmup"]
        self._require(0.0 < self.p_cutoff <= 1.0,
                      f"p_cutoff must be in (0, 1], got {self.p_cutoff}")
        self.num_unlabeled = int(num_unlabeled)
        self.selected_label = torch.full((self.num_unlabeled,), -1, dtype=torch.long)
        self.classwise_acc = torch.zeros(num_classes)
        self._counts: Tensor | None = None  # bincount(selected_label + 1), derived

    def class_thresholds(self) -> Tensor:
        acc = self.classwise_acc
        return self.p_cutoff * (acc / (2.0 - acc))

    def _mask(self, probs: Tensor, indices: Tensor | None) -> Tensor:
        assert indices is not None  # guaranteed by needs_indices
        max_probs, pred = probs.max(dim=1)
        mask = (max_probs >= self.class_thresholds()[pred]).float()
        self._remember(indices, pred, max_probs >= self.p_cutoff)
        self._refresh_sigma()
        return mask

    def _remember(self, indices: Tensor, pred: Tensor, confident: Tensor) -> None:
        """selected_label[i] = class of the last confident prediction of sample i in the batch.

        Fixed shapes only (no ``nonzero``, no boolean indexing), so a GPU step never waits for
        the device here. Sorted by (index, confident), batch order kept among equals, the last
        row of each index group is its last confident prediction if it has one.
        """
        order = torch.sort(indices * 2 + confident.long(), stable=True).indices
        ids, new, sure = indices[order], pred[order], confident[order]
        rows = torch.arange(len(ids), device=ids.device)
        last = torch.ones_like(sure)
        last[:-1] = ids[1:] != ids[:-1]
        update = last & sure  # at most one row per index
        # Every row of a group writes its group's value, so repeated indices write one value.
        end = torch.where(last, rows, len(ids)).flip(0).cummin(0).values.flip(0)
        old = self.selected_label[ids]
        value = torch.where(update[end], new[end], old)
        step = update.long()
        counts = self._current_counts()
        counts.index_add_(0, old + 1, -step)
        counts.index_add_(0, new + 1, step)
        self.selected_label[ids] = value

    def _refresh_sigma(self) -> None:
        counts = self._current_counts()
        top = counts.max()
        denom = top if self.thresh_warmup else counts[1:].max()
        fresh = (counts[1:].double() / denom.clamp(min=1).double()).float()
        self.classwise_acc = torch.where(top < self.num_unlabeled, fresh, self.classwise_acc)

    def _current_counts(self) -> Tensor:
        if self._counts is None or self._counts.device != self.selected_label.device:
            self._counts = torch.bincount(self.selected_label + 1, minlength=self.num_classes + 1)
        return self._counts

    def _check_indices(self, indices: Tensor) -> None:
        """Range check: free for CPU indices (the training loop passes those when it runs on
        one process); GPU indices (gathered from all ranks) cost one host sync."""
        if indices.numel():
            low, high = (int(v) for v in torch.stack(torch.aminmax(indices)).tolist())
            self._require(low >= 0 and high < self.num_unlabeled,
                          f"unlabelled index {low if low < 0 else high} is outside "
                          f"0..{self.num_unlabeled - 1} (num_unlabeled does not match the index)")

    def load_state_dict(self, state: Mapping[str, Tensor | float | int]) -> None:
        labels = torch.as_tensor(state.get("selected_label", self.selected_label))
        self._require(bool(((labels >= -1) & (labels < self.num_classes)).all()),
                      "checkpoint 'selected_label' holds values outside "
                      f"-1..{self.num_classes - 1}")
        super().load_state_dict(state)
        self._counts = None
