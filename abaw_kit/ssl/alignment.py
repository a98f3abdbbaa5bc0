"""Distribution alignment of the teacher's probabilities on unlabelled images (``ssl.dist_align``).

Per unlabelled (global) batch of weak-view probabilities q [B, C], momentum m, target prior pi:

    p_u(c) <- m * p_u(c) + (1 - m) * mean_b q_b(c)      # starts at pi
    q~_b(c) = q_b(c) * pi(c) / p_u(c), renormalised over c

The threshold, the pseudo-label and the diagnostics then use q~ (as ReMixMatch aligns before
sharpening). Why: on the demo the teacher calls a fifth of the face-recognition photos Other
(3.7 % of them are) and almost never Fear or Disgust (``pseudo_label_quality.py``), so every
threshold selects labels with the teacher's bias, not the photos' classes. Dividing by the
running mean prediction and multiplying by the labelled frames' class frequencies (``labelled``)
or by 1/C (``uniform``) moves probability mass from the over-predicted classes to the
under-predicted ones before anything is thresholded.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from abaw_kit.config import DIST_ALIGN_TARGETS
from abaw_kit.errors import AbawError

PRIOR_FLOOR = 1e-4
"""Smallest share a class may have in the target or the running mean, so no class is switched
off for good (a class with no labelled frame) and no ratio divides by zero."""


class DistributionAlignment:
    """The running mean of the teacher's unlabelled predictions and the alignment it implies.

    The state is one tensor, updated from the gathered global batch, so it is identical on every
    rank; it follows the probabilities' device and is saved in the checkpoint (exact resume).
    """

    def __init__(self, prior: Tensor, momentum: float) -> None:
        if not 0.0 <= momentum < 1.0:
            raise AbawError(f"ssl.dist_align_momentum must be in [0, 1), got {momentum}")
        prior = prior.detach().float().flatten().clamp(min=PRIOR_FLOOR)
        self.prior = prior / prior.sum()
        self.momentum = float(momentum)
        self.p_unlabelled = self.prior.clone()

    @torch.no_grad()
    def __call__(self, probs: Tensor) -> Tensor:
        """Aligned probabilities [B, C] of one global batch; updates the running mean first."""
        probs = probs.detach().float()
        if self.prior.device != probs.device:
            self.prior = self.prior.to(probs.device)
            self.p_unlabelled = self.p_unlabelled.to(probs.device)
        m = self.momentum
        self.p_unlabelled = m * self.p_unlabelled + (1.0 - m) * probs.mean(dim=0)
        ratio = self.prior / self.p_unlabelled.clamp(min=PRIOR_FLOOR)
        aligned = probs * ratio
        return aligned / aligned.sum(dim=1, keepdim=True).clamp(min=1e-12)

    def state_dict(self) -> dict[str, Tensor]:
        return {"p_unlabelled": self.p_unlabelled.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        value = state.get("p_unlabelled")
        if value is None or tuple(value.shape) != tuple(self.prior.shape):
            raise AbawError(f"checkpoint holds no distribution-alignment state of "
                            f"{self.prior.numel()} classes (saved without ssl.dist_align?)")
        self.p_unlabelled = value.detach().float().to(self.prior.device).clone()


def make_alignment(target: str, momentum: float,
                   labelled_counts: np.ndarray) -> DistributionAlignment | None:
    """The aligner ``ssl.dist_align`` asks for, or None for ``off``."""
    if target == "off":
        return None
    counts = np.asarray(labelled_counts, np.float64)
    if target == "uniform":
        prior = torch.full((len(counts),), 1.0 / len(counts))
    elif target == "labelled":
        if counts.sum() <= 0:
            raise AbawError("ssl.dist_align=labelled needs labelled frames to take the class "
                            "frequencies from; this run has none")
        prior = torch.from_numpy(counts / counts.sum())
    else:
        raise AbawError(f"ssl.dist_align must be one of {', '.join(DIST_ALIGN_TARGETS)}, "
                        f"got {target!r}")
    return DistributionAlignment(prior, momentum)
