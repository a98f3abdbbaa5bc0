"""The Dynamic Threshold Module: warm-up, adaptation, class balancing, bounds, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abaw_kit.errors import AbawError
from abaw_kit.ssl import make_threshold


def _rows(classes: np.ndarray, confidence: np.ndarray, num_classes: int) -> torch.Tensor:
    """One probability row per sample: `confidence` on its class, the rest spread evenly."""
    probs = np.repeat(((1.0 - confidence) / (num_classes - 1))[:, None], num_classes, axis=1)
    probs[np.arange(len(classes)), classes] = confidence
    return torch.tensor(probs, dtype=torch.float32)


def _balanced(confidence: float, num_classes: int = 4, batch: int = 32) -> torch.Tensor:
    classes = np.arange(batch) % num_classes
    return _rows(classes, np.full(batch, confidence), num_classes)


def _dominated(rng: np.random.Generator, num_classes: int = 4, batch: int = 40) -> torch.Tensor:
    """80% confidently class 0 (like neutral faces in FR data), the rest rare classes."""
    dominant = rng.uniform(size=batch) < 0.8
    classes = np.where(dominant, 0, rng.integers(1, num_classes, size=batch))
    confidence = np.where(dominant, rng.uniform(0.6, 0.99, size=batch),
                          rng.uniform(0.6, 0.9, size=batch))
    return _rows(classes, confidence, num_classes)


def test_thresholds_start_high_then_follow_confidence() -> None:
    th = make_threshold("dtm", 4, momentum=0.9, warmup_steps=5, min_threshold=0.3)
    for _ in range(5):
        probs = _balanced(0.9)
        mask = th.mask(probs)
        assert torch.all(th.class_thresholds() == 0.95)
        assert torch.equal(mask, (probs.max(dim=1).values >= 0.95).float())
    for _ in range(40):
        th.mask(_balanced(0.45))
    after_low = th.class_thresholds()
    assert torch.all(after_low < 0.6)
    means = []
    for _ in range(40):
        th.mask(_balanced(0.97))
        means.append(th.class_thresholds().mean().item())
    assert means[-1] > after_low.mean().item() + 0.3
    assert all(np.diff(means) >= -1e-6)  # rises as confidence rises


def test_dominant_class_gets_the_higher_threshold_and_stops_flooding() -> None:
    rng_dtm, rng_free = np.random.default_rng(0), np.random.default_rng(0)
    common = {"momentum": 0.95, "warmup_steps": 0, "min_threshold": 0.5,
              "max_threshold": 0.95}
    dtm = make_threshold("dtm", 4, **common)
    free_like = make_threshold("dtm", 4, gamma=0.0, **common)  # FreeMatch within the bounds
    share = {"dtm": [], "free": []}
    for step in range(200):
        for th, rng, key in ((dtm, rng_dtm, "dtm"), (free_like, rng_free, "free")):
            probs = _dominated(rng)
            mask = th.mask(probs).bool()
            thresholds = th.class_thresholds()
            assert torch.all((thresholds >= 0.5) & (thresholds <= 0.95))
            if step >= 150 and mask.any():
                share[key].append((probs[mask].argmax(dim=1) == 0).float().mean().item())
    thresholds = dtm.class_thresholds()
    assert torch.all(thresholds[0] > thresholds[1:] + 0.1)
    assert thresholds[0] > free_like.class_thresholds()[0] + 0.05  # the histogram term
    assert np.mean(share["dtm"]) < np.mean(share["free"]) - 0.1


def test_a_prior_matching_the_skew_keeps_the_dominant_threshold_lower() -> None:
    common = {"momentum": 0.95, "warmup_steps": 0}
    uniform = make_threshold("dtm", 4, **common)
    skewed = make_threshold("dtm", 4, class_prior=[0.8, 0.2 / 3, 0.2 / 3, 0.2 / 3], **common)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    for _ in range(100):
        uniform.mask(_dominated(rng_a))
        skewed.mask(_dominated(rng_b))
    assert skewed.class_thresholds()[0] < uniform.class_thresholds()[0] - 0.05


def test_bounds_hold_on_random_batches() -> None:
    rng = np.random.default_rng(2)
    th = make_threshold("dtm", 8, momentum=0.8, warmup_steps=2, min_threshold=0.55,
                        max_threshold=0.9, gamma=2.0)
    for _ in range(60):
        logits = torch.from_numpy(rng.normal(size=(16, 8)) * rng.uniform(0.5, 8)).float()
        th.mask(torch.softmax(logits, dim=1))
        thresholds = th.class_thresholds()
        assert torch.all((thresholds >= 0.55) & (thresholds <= 0.9))


def test_without_balancing_bounds_and_warmup_it_is_freematch() -> None:
    rng = np.random.default_rng(3)
    dtm = make_threshold("dtm", 5, momentum=0.7, gamma=0.0, min_threshold=0.0,
                         max_threshold=1.0, warmup_steps=0)
    free = make_threshold("freematch", 5, momentum=0.7)
    masks = []
    for _ in range(25):
        logits = torch.from_numpy(rng.normal(size=(20, 5)) * rng.uniform(0.5, 5)).float()
        probs = torch.softmax(logits, dim=1)
        masks.append(dtm.mask(probs))
        assert torch.equal(masks[-1], free.mask(probs))
        assert torch.equal(dtm.class_thresholds(), free.class_thresholds())
    assert 0 < torch.cat(masks).mean() < 1


def test_hand_computed_formula() -> None:
    th = make_threshold("dtm", 2, momentum=0.5, gamma=1.0, min_threshold=0.1,
                        max_threshold=0.9, warmup_steps=1)
    # Warm-up batch: threshold 0.9, nothing passes, the histogram h stays at the prior.
    assert th.mask(torch.tensor([[0.875, 0.125], [0.5625, 0.4375]])).tolist() == [0.0, 0.0]
    assert th.pseudo_hist.tolist() == [0.5, 0.5]
    # tau -> 0.6328125, p -> [0.5078125, 0.4921875]; h/pi = 1: FreeMatch's thresholds.
    assert th.mask(torch.tensor([[0.25, 0.75], [0.5625, 0.4375]])).tolist() == [1.0, 0.0]
    np.testing.assert_allclose(th.pseudo_hist.numpy(), [0.25, 0.75])  # accepted: one class 1
    # Now h/pi = [0.5, 1.5]: class 0 -> 0.6328125 * 0.5, class 1 -> clipped to 0.9.
    np.testing.assert_allclose(th.class_thresholds().numpy(), [0.31640625, 0.9])
    # tau -> 0.62890625, p -> [0.50390625, 0.49609375]: thresholds [0.3145, 0.9]. FreeMatch
    # would say [0.6289, 0.6191], i.e. the opposite decisions [0, 1].
    assert th.mask(torch.tensor([[0.625, 0.375], [0.375, 0.625]])).tolist() == [1.0, 0.0]
    # h -> [0.625, 0.375], h/pi = [1.25, 0.75]: both thresholds inside the bounds again.
    np.testing.assert_allclose(th.class_thresholds().numpy(), [
        0.62890625 * 1.25, 0.62890625 * 0.49609375 / 0.50390625 * 0.75], rtol=1e-6)


def test_resume_during_warmup_continues_the_step_count() -> None:
    rng = np.random.default_rng(4)
    batches = [torch.softmax(torch.from_numpy(rng.normal(size=(16, 4)) * 4).float(), dim=1)
               for _ in range(8)]
    first = make_threshold("dtm", 4, momentum=0.8, warmup_steps=3)
    for probs in batches[:2]:
        first.mask(probs)
    resumed = make_threshold("dtm", 4, momentum=0.8, warmup_steps=3)
    resumed.load_state_dict(first.state_dict())
    for step, probs in enumerate(batches[2:], start=3):
        assert torch.equal(first.mask(probs), resumed.mask(probs))
        thresholds = resumed.class_thresholds()
        assert torch.equal(thresholds, first.class_thresholds())
        assert torch.all(thresholds == 0.95) == (step <= 3)


@pytest.mark.parametrize(("params", "message"), [
    ({"class_prior": [0.5, 0.5]}, "class_prior must be 4 positive numbers"),
    ({"class_prior": [0.5, 0.5, 0.0, 0.0]}, "class_prior must be 4 positive numbers"),
    ({"class_prior": "neutral"}, "class_prior must be 4 positive numbers"),
    ({"min_threshold": 0.9, "max_threshold": 0.8}, "min_threshold <= max_threshold"),
    ({"gamma": -1.0}, "gamma must be >= 0"),
    ({"warmup_steps": -5}, "warmup_steps must be >= 0"),
    ({"warmup_steps": 2.5}, "'warmup_steps' must be an integer"),
])
def test_bad_parameters_are_rejected(params: dict, message: str) -> None:
    with pytest.raises(AbawError, match=message):
        make_threshold("dtm", 4, **params)
