"""The SSL levers around the thresholds: mean teacher, supervised warm-up, negative learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abaw_kit.config import resolve_config
from abaw_kit.ssl import class_balance_weights, make_threshold, negative_learning_loss
from abaw_kit.train.distributed import DistContext
from abaw_kit.train.loop import Batch, build_state, train_step, unsup_weight
from abaw_kit.train.model import Normalizer


def test_unsup_weight_is_zero_in_warm_up_then_ramps_to_lambda_u() -> None:
    cfg = resolve_config(None, ["ssl.lambda_u=2", "ssl.unsup_start=10", "ssl.unsup_ramp=4"])
    weights = [unsup_weight(cfg, step) for step in range(8, 16)]
    assert weights == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    cfg = resolve_config(None, ["ssl.lambda_u=1.5"])
    assert unsup_weight(cfg, 0) == 1.5


def test_negative_learning_pushes_down_only_unlikely_classes_of_rejected_images() -> None:
    strong = torch.zeros(2, 4, requires_grad=True)
    weak = torch.tensor([[0.70, 0.27, 0.02, 0.01],   # rejected: classes 2 and 3 are "not"
                         [0.97, 0.01, 0.01, 0.01]])  # accepted: no negative labels
    loss = negative_learning_loss(strong, weak, rejected=torch.tensor([1.0, 0.0]),
                                  threshold=0.05)
    loss.backward()
    assert loss.item() == pytest.approx(-torch.log(torch.tensor(0.75)).item() / 2)
    grad = strong.grad
    assert grad is not None
    assert (grad[1] == 0).all()  # the accepted image is left to the positive pseudo-label
    assert grad[0, 2] > 0 and grad[0, 3] > 0  # descent lowers the logits of "not" classes
    assert grad[0, 0] < 0 and grad[0, 1] < 0
    nothing = negative_learning_loss(strong, weak, torch.zeros(2), 0.05)
    assert nothing.item() == 0.0


class RowCounter(torch.nn.Module):
    """A tiny classifier that remembers how many rows each forward pass saw."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 8)
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize(("teacher", "step", "student_rows", "teacher_rows"), [
    ("student", 5, [4 + 8 + 8], []),   # FixMatch: labelled + weak + strong through the student
    ("ema", 5, [4 + 8], [8]),          # mean teacher: the weak views go through the EMA only
    ("ema", 1, [4], []),               # supervised warm-up: no unlabelled forward at all
])
def test_who_sees_which_views(teacher: str, step: int, student_rows: list[int],
                              teacher_rows: list[int]) -> None:
    cfg = resolve_config(None, [f"ssl.teacher={teacher}", "ssl.unsup_start=3",
                                "ssl.params.p_cutoff=0.01"], {"ssl": "fixmatch"})
    model = RowCounter()
    dist = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
    state = build_state(cfg, model, Normalizer([0.5] * 3, [0.2] * 3, 8, dist.device), dist,
                        make_threshold("fixmatch", 8, p_cutoff=0.01), None)
    state.ema.module.rows = []
    generator = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 255, (n, 8, 8, 3), generator=generator, dtype=torch.uint8)

    batch = Batch(images(4), torch.arange(4), images(8), images(8), torch.arange(8))
    model.rows.clear()
    out = train_step(state, batch, step)
    assert model.rows == student_rows
    assert state.ema.module.rows == teacher_rows
    assert ("mask_ratio" in out["logs"]) == (step >= 3)


def test_class_balance_gives_every_accepted_class_the_same_total_weight() -> None:
    pseudo = torch.tensor([0, 0, 0, 0, 4, 3, 3, 5])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # two rejected
    weights = class_balance_weights(pseudo, mask, 8, power=1.0)
    per_class = torch.zeros(8).index_add_(0, pseudo, weights)
    assert torch.allclose(per_class[[0, 3, 4]], torch.full((3,), 2.0))  # 6 accepted, 3 classes
    assert weights[6] == 0 and weights[7] == 0  # rejected stay out
    assert weights.sum() == pytest.approx(mask.sum())
    assert torch.equal(class_balance_weights(pseudo, mask, 8, power=0.0), mask)
    nothing = torch.zeros(8)
    assert torch.equal(class_balance_weights(pseudo, nothing, 8, power=1.0), nothing)


def _lever_state(overrides: list[str], method: str = "dtm",
                 hidden: torch.Tensor | None = None) -> tuple[object, Batch]:
    cfg = resolve_config(None, overrides, {"ssl": method})
    dist = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
    threshold = make_threshold(method, 8, **cfg.ssl.params)
    state = build_state(cfg, RowCounter(), Normalizer([0.5] * 3, [0.2] * 3, 8, dist.device),
                        dist, threshold, None, hidden)
    generator = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 255, (n, 8, 8, 3), generator=generator, dtype=torch.uint8)

    return state, Batch(images(4), torch.arange(4), images(8), images(8), torch.arange(8))


def test_logit_adjustment_with_a_uniform_share_changes_nothing() -> None:
    # DTM's pseudo-label share starts at the uniform prior (momentum 1 keeps it there):
    # log(1/8) shifts every logit alike, and cross-entropy ignores a common shift
    frozen = ["ssl.params.warmup_steps=0", "ssl.params.min_threshold=0",
              "ssl.params.max_threshold=0.01"]
    plain_state, batch = _lever_state(frozen)
    adjusted_state, _ = _lever_state([*frozen, "ssl.unsup_logit_adjust=1"])
    plain_state.threshold.momentum = adjusted_state.threshold.momentum = 1.0
    adjusted_state.model.load_state_dict(plain_state.model.state_dict())
    plain = train_step(plain_state, batch, 0)["logs"]["unsup_loss"]
    adjusted = train_step(adjusted_state, batch, 0)["logs"]["unsup_loss"]
    assert adjusted.item() == pytest.approx(plain.item(), rel=1e-5)
    skewed = torch.tensor([0.86, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02])
    plain_state.threshold.pseudo_hist = adjusted_state.threshold.pseudo_hist = skewed
    plain = train_step(plain_state, batch, 1)["logs"]["unsup_loss"]
    adjusted = train_step(adjusted_state, batch, 1)["logs"]["unsup_loss"]
    assert adjusted.item() != pytest.approx(plain.item(), rel=1e-3)  # the loop applies it


def test_logit_adjustment_charges_less_for_labels_of_the_frequent_class() -> None:
    from abaw_kit.train.loop import accepted_class_share, consistency_loss

    state, _ = _lever_state([])
    state.threshold.pseudo_hist = torch.tensor([0.9, 0.0, 0.02, 0.02, 0.02, 0.02, 0.01, 0.01])
    share = accepted_class_share(state, torch.zeros(1, dtype=torch.long), torch.ones(1))
    assert share.min() > 0 and share.sum() == pytest.approx(1.0)  # floored, no -inf offset
    logits = torch.zeros(2, 8)
    labels = torch.tensor([0, 2])  # the frequent class, a rare one
    per_frequent = consistency_loss(logits[:1] + share.log(), labels[:1], torch.ones(1))
    per_rare = consistency_loss(logits[1:] + share.log(), labels[1:], torch.ones(1))
    assert per_frequent < per_rare  # the prior explains the frequent label: less gradient


def test_the_oracle_trains_on_the_known_classes_and_needs_them() -> None:
    hidden = torch.tensor([3, 3, 1, -1, 0, 7, 2, 5])
    state, batch = _lever_state(["ssl.oracle=true"], hidden=hidden)
    logs = train_step(state, batch, 0)["logs"]
    assert logs["pseudo_checked"].item() == 7 and logs["pseudo_correct"].item() == 7
    assert logs["unsup_loss"].item() > 0  # every known image counts, thresholds or not


def test_the_loop_adds_a_methods_own_terms_at_their_weight() -> None:
    from abaw_kit.ssl import FixedThreshold, LossTerm

    class WithExtra(FixedThreshold):  # a method with a loss term of its own (not registered)
        def extra_loss(self, strong_logits, mask, weak_probs):
            return {"extra_loss": LossTerm(strong_logits.float().pow(2).mean(), 0.25)}

    state, batch = _lever_state(["ssl.params.p_cutoff=0.01"], method="fixmatch")
    plain = train_step(state, batch, 0)  # FixMatch keeps no state: the same step twice
    state.threshold = WithExtra(8, p_cutoff=0.01)
    extra = train_step(state, batch, 0)
    value = extra["logs"]["extra_loss"]
    assert "extra_loss" not in plain["logs"] and value > 0
    assert extra["loss"].item() == pytest.approx(plain["loss"].item() + 0.25 * value.item())


def test_none_goes_through_the_interface_and_forwards_no_unlabelled_views() -> None:
    state, batch = _lever_state([], method="none")
    out = train_step(state, batch, 5)
    assert state.model.rows == [4]  # labelled rows only, although the batch has weak views
    assert set(out["logs"]) == {"sup_loss", "loss"}


def test_distribution_alignment_moves_mass_from_over_to_under_predicted_classes() -> None:
    from abaw_kit.ssl import make_alignment

    counts = np.array([50, 10, 10, 10, 5, 5, 5, 5])  # the labelled frames' class frequencies
    prior = torch.tensor(counts / counts.sum(), dtype=torch.float32)
    aligner = make_alignment("labelled", 0.0, counts)  # momentum 0: this batch's mean only
    assert aligner is not None
    teacher = torch.full((4, 8), 0.02)
    teacher[:, 7] = 0.86  # the teacher calls every image class 7 (5 % of the labels)
    aligned = aligner(teacher)
    expected = teacher * prior / teacher.mean(dim=0)
    assert torch.allclose(aligned, expected / expected.sum(dim=1, keepdim=True))
    assert torch.allclose(aligned.sum(dim=1), torch.ones(4))
    assert (aligned.argmax(dim=1) == 0).all()  # the labelled prior's class, not the bias
    assert torch.allclose(aligned.mean(dim=0), prior, atol=1e-6)  # one class per image here

    slow = make_alignment("uniform", 0.99, counts)  # starts at the target: a small first step
    assert slow is not None
    first = slow(teacher)
    assert torch.allclose(slow.p_unlabelled, 0.99 / 8 + 0.01 * teacher[0])
    restored = make_alignment("uniform", 0.99, counts)
    assert restored is not None
    restored.load_state_dict(slow.state_dict())
    assert torch.equal(restored(teacher), slow(teacher)) and not torch.equal(first, slow(teacher))
    assert make_alignment("off", 0.99, counts) is None


def test_distribution_alignment_refuses_what_it_cannot_do() -> None:
    from abaw_kit.errors import AbawError
    from abaw_kit.ssl import make_alignment

    with pytest.raises(AbawError, match="needs labelled frames"):
        make_alignment("labelled", 0.9, np.zeros(8))
    with pytest.raises(AbawError, match="momentum"):
        make_alignment("uniform", 1.0, np.ones(8))
    aligner = make_alignment("uniform", 0.9, np.ones(8))
    assert aligner is not None
    with pytest.raises(AbawError, match="no distribution-alignment state"):
        aligner.load_state_dict({})


def test_the_threshold_and_the_pseudo_labels_see_the_aligned_probabilities() -> None:
    frozen = ["ssl.params.warmup_steps=0", "ssl.params.min_threshold=0",
              "ssl.params.max_threshold=0.01"]
    state, batch = _lever_state(frozen, method="dtm")
    from abaw_kit.ssl import make_alignment

    state.alignment = make_alignment("uniform", 0.0, np.ones(8))
    seen: list[torch.Tensor] = []
    original = state.threshold.mask

    def spy(probs: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        seen.append(probs)
        return original(probs, indices)

    state.threshold.mask = spy
    train_step(state, batch, 0)
    assert len(seen) == 1
    # aligned to the uniform target with momentum 0: the batch's mean prediction is 1/C
    assert torch.allclose(seen[0].mean(dim=0), torch.full((8,), 1 / 8), atol=1e-3)
    assert state.alignment.p_unlabelled.sum().item() == pytest.approx(1.0)
