"""Pseudo-label thresholds and SSL losses.

FlexMatch and FreeMatch are checked against independent loop re-implementations of the USB
reference procedures (written from the published formulas, not by calling abaw_kit), over a
stream of random batches that includes repeated sample indices and a skewed class mix.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from abaw_kit.errors import AbawError
from abaw_kit.ssl import (
    THRESHOLDS,
    available_thresholds,
    consistency_loss,
    freematch_fairness_loss,
    make_threshold,
)

NUM_UNLABELED = 60


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _stream(seed: int, num_classes: int = 5, batch: int = 24, steps: int = 20):
    """(float32 probs [B, C], int64 indices [B]) batches with varied confidence."""
    rng = np.random.default_rng(seed)
    out = []
    for step in range(steps):
        logits = rng.normal(size=(batch, num_classes)) * rng.uniform(0.5, 6.0)
        indices = rng.integers(0, NUM_UNLABELED, size=batch)
        if step == 7:  # skewed: three quarters of the batch confidently class 0
            logits[: batch * 3 // 4, 0] += 8.0
        if step == 11:  # only two distinct samples, confidently predicted as various classes
            indices = rng.choice([3, 5], size=batch)
            logits[np.arange(batch), rng.integers(0, num_classes, size=batch)] += 10.0
        out.append((_softmax(logits).astype(np.float32), indices))
    return out


def _reference_flexmatch(batches, num_classes, num_unlabeled, p_cutoff, warmup):
    """USB's FlexMatch hook as plain loops: mask with sigma before the batch, then update."""
    selected = [-1] * num_unlabeled
    sigma = [0.0] * num_classes
    masks = []
    for probs, indices in batches:
        mask = []
        for row in probs:
            c = int(np.argmax(row))
            mask.append(float(row[c] >= p_cutoff * (sigma[c] / (2.0 - sigma[c]))))
        for row, i in zip(probs, indices, strict=True):
            c = int(np.argmax(row))
            if row[c] >= p_cutoff:
                selected[int(i)] = c
        counts = Counter(selected)
        if max(counts.values()) < num_unlabeled:
            labelled = [n for label, n in counts.items() if label != -1]
            denom = max(counts.values()) if warmup else max(labelled)
            sigma = [counts[c] / denom for c in range(num_classes)]
        masks.append(mask)
    return masks


def _reference_freematch(batches, num_classes, momentum):
    """FreeMatch SAT as plain loops: EMAs updated with the batch, then the mask."""
    m = momentum
    tau, p_model = 1.0 / num_classes, [1.0 / num_classes] * num_classes
    hist = [1.0 / num_classes] * num_classes
    masks = []
    for probs, _ in batches:
        rows = [[float(v) for v in row] for row in probs]
        tau = m * tau + (1 - m) * sum(max(r) for r in rows) / len(rows)
        p_model = [m * p_model[c] + (1 - m) * sum(r[c] for r in rows) / len(rows)
                   for c in range(num_classes)]
        winners = Counter(r.index(max(r)) for r in rows)
        hist = [m * hist[c] + (1 - m) * winners[c] / len(rows) for c in range(num_classes)]
        masks.append([float(max(r) >= tau * p_model[r.index(max(r))] / max(p_model))
                      for r in rows])
    return masks, tau, p_model, hist


def _run(th, batches):
    return [th.mask(torch.from_numpy(p), torch.from_numpy(i)).tolist() for p, i in batches]


@pytest.mark.parametrize(("p_cutoff", "warmup"), [(0.95, True), (0.95, False), (0.7, True)])
def test_flexmatch_matches_reference_procedure(p_cutoff: float, warmup: bool) -> None:
    batches = _stream(seed=1)
    th = make_threshold("flexmatch", 5, num_unlabeled=NUM_UNLABELED, p_cutoff=p_cutoff,
                        thresh_warmup=warmup)
    ours = _run(th, batches)
    reference = _reference_flexmatch(batches, 5, NUM_UNLABELED, p_cutoff, warmup)
    assert ours == reference
    flat = np.concatenate(ours)
    assert 0.0 < flat.mean() < 1.0  # the stream exercises both decisions


@pytest.mark.parametrize("momentum", [0.999, 0.9, 0.5])
def test_freematch_matches_reference_procedure(momentum: float) -> None:
    batches = _stream(seed=2)
    th = make_threshold("freematch", 5, momentum=momentum)
    ours = _run(th, batches)
    reference, tau, p_model, hist = _reference_freematch(batches, 5, momentum)
    assert ours == reference
    if momentum < 0.99:  # with 0.999 twenty batches barely move tau off 1/C: all pass
        assert 0.0 < np.concatenate(ours).mean() < 1.0
    assert th.time_p.item() == pytest.approx(tau, rel=1e-5)
    np.testing.assert_allclose(th.p_model.numpy(), p_model, rtol=1e-5)
    np.testing.assert_allclose(th.label_hist.numpy(), hist, rtol=1e-5)


def test_flexmatch_hand_computed_without_warmup() -> None:
    th = make_threshold("flexmatch", 3, num_unlabeled=4, p_cutoff=0.75, thresh_warmup=False)

    def step(rows, indices):
        return th.mask(torch.tensor(rows), torch.tensor(indices)).tolist()

    # Nothing remembered yet: every threshold is 0. Sample 0 becomes class 0 -> sigma [1, 0, 0].
    assert step([[0.8, 0.1, 0.1], [0.5, 0.25, 0.25]], [0, 1]) == [1.0, 1.0]
    assert th.class_thresholds().tolist() == [0.75, 0.0, 0.0]
    # Class 0 needs 0.75 (inclusive); class 1 needs 0.
    assert step([[0.7, 0.2, 0.1], [0.75, 0.125, 0.125], [0.25, 0.5, 0.25]], [1, 2, 3]) == [
        0.0, 1.0, 1.0]
    # Sample 1 twice in one batch, confident both times: the last prediction (class 2) wins.
    assert step([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], [1, 1]) == [1.0, 1.0]
    assert th.selected_label.tolist() == [0, 2, 0, -1]
    np.testing.assert_allclose(th.class_thresholds().numpy(), [0.75, 0.0, 0.25])
    # All four samples now share class 0: USB leaves sigma unchanged in that case.
    assert step([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]], [1, 3]) == [1.0, 1.0]
    assert th.selected_label.tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(th.class_thresholds().numpy(), [0.75, 0.0, 0.25])


def test_flexmatch_warmup_counts_unused_samples() -> None:
    th = make_threshold("flexmatch", 3, num_unlabeled=4, p_cutoff=0.75)
    th.mask(torch.tensor([[0.8, 0.1, 0.1]]), torch.tensor([0]))
    # counts: unused 3, class 0 1 -> sigma = [1/3, 0, 0]; threshold 0.75 * (1/3) / (5/3).
    np.testing.assert_allclose(th.class_thresholds().numpy(), [0.15, 0.0, 0.0], rtol=1e-6)


def test_freematch_hand_computed_uses_updated_emas() -> None:
    th = make_threshold("freematch", 2, momentum=0.5)
    # tau: 0.5 -> 0.609375; p: [0.5, 0.5] -> [0.609375, 0.390625]. With the pre-update tau
    # (0.5) both rows would pass; with the updated one the second (0.5625) does not.
    mask = th.mask(torch.tensor([[0.875, 0.125], [0.5625, 0.4375]]))
    assert mask.tolist() == [1.0, 0.0]
    # Class 1: tau * p(1) / p(0) = 0.390625.
    np.testing.assert_allclose(th.class_thresholds().numpy(), [0.609375, 0.390625])
    # tau -> 0.6328125; p -> [0.5078125, 0.4921875]; class 1 scaled by p(1)/p(0).
    mask = th.mask(torch.tensor([[0.25, 0.75], [0.5625, 0.4375]]))
    assert mask.tolist() == [1.0, 0.0]
    np.testing.assert_allclose(th.class_thresholds().numpy(),
                               [0.6328125, 0.6328125 * 0.4921875 / 0.5078125], rtol=1e-6)
    np.testing.assert_allclose(th.label_hist.numpy(), [0.625, 0.375])


def test_fixmatch_and_none() -> None:
    probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.02, 0.98]])
    assert make_threshold("fixmatch", 2).mask(probs).tolist() == [1.0, 0.0, 1.0]
    assert make_threshold("fixmatch", 2, p_cutoff=0.9).mask(probs).tolist() == [1.0, 1.0, 1.0]
    assert make_threshold("none", 2).mask(probs).tolist() == [0.0, 0.0, 0.0]
    assert torch.isinf(make_threshold("none", 2).class_thresholds()).all()


def _build(name: str, num_classes: int = 5):
    return make_threshold(name, num_classes, num_unlabeled=NUM_UNLABELED,
                          **({"warmup_steps": 3, "momentum": 0.8} if name == "dtm" else {}))


@pytest.mark.parametrize("name", available_thresholds())
def test_make_threshold_builds_every_method(name: str) -> None:
    th = make_threshold(name, 8, num_unlabeled=100)
    assert th.name == name and isinstance(th, THRESHOLDS[name])
    probs = torch.softmax(torch.randn(6, 8), dim=1)
    mask = th.mask(probs, torch.arange(6))
    assert mask.shape == (6,) and mask.dtype == torch.float32
    assert set(mask.tolist()) <= {0.0, 1.0}
    assert th.class_thresholds().shape == (8,)


@pytest.mark.parametrize("name", available_thresholds())
def test_state_dict_round_trip_resumes_exactly(name: str, tmp_path) -> None:
    batches = _stream(seed=3)
    first = _build(name)
    _run(first, batches[:6])
    saved = first.state_dict()
    continued = _run(first, batches[6:])  # keeps going; `saved` must not change with it
    save_file(saved, tmp_path / "threshold.safetensors")
    resumed = _build(name)
    resumed.load_state_dict(load_file(tmp_path / "threshold.safetensors"))
    assert _run(resumed, batches[6:]) == continued
    assert torch.equal(resumed.class_thresholds(), first.class_thresholds())
    for key, value in first.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value)


@pytest.mark.parametrize("name", available_thresholds())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_probs_are_cast_safely(name: str, dtype: torch.dtype) -> None:
    batches = _stream(seed=4)
    low, full = _build(name), _build(name)
    for probs, indices in batches:
        half = torch.from_numpy(probs).to(dtype)
        idx = torch.from_numpy(indices)
        assert torch.equal(low.mask(half, idx), full.mask(half.float(), idx))
    assert torch.equal(low.class_thresholds(), full.class_thresholds())


def test_unknown_name_lists_valid_names_and_suggests() -> None:
    with pytest.raises(AbawError, match="did you mean 'freematch'") as err:
        make_threshold("freemach", 8)
    for name in available_thresholds():
        assert name in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_or_bad_parameters_are_rejected() -> None:
    with pytest.raises(AbawError, match=r"unknown parameter 'gama'.*gamma.*did you mean 'gamma'"):
        make_threshold("dtm", 8, gama=0.3)
    with pytest.raises(AbawError, match="unknown parameter 'momentum'.*valid: p_cutoff"):
        make_threshold("fixmatch", 8, momentum=0.9)
    with pytest.raises(AbawError, match="'p_cutoff' must be a number"):
        make_threshold("fixmatch", 8, p_cutoff="high")
    with pytest.raises(AbawError, match=r"p_cutoff must be in \(0, 1\]"):
        make_threshold("flexmatch", 8, num_unlabeled=10, p_cutoff=1.5)
    with pytest.raises(AbawError, match="momentum must be in"):
        make_threshold("freematch", 8, momentum=1.0)
    with pytest.raises(AbawError, match="needs num_unlabeled"):
        make_threshold("flexmatch", 8)
    with pytest.raises(AbawError, match="num_classes"):
        make_threshold("fixmatch", 1)
    assert make_threshold("fixmatch", 8, p_cutoff=None).p_cutoff == 0.95  # None keeps default
    assert make_threshold(" FixMatch ", 8).name == "fixmatch"


def test_bad_batches_are_reported() -> None:
    flex = make_threshold("flexmatch", 3, num_unlabeled=10)
    probs = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="needs the unlabelled sample indices"):
        flex.mask(probs)
    with pytest.raises(AbawError, match=r"unlabelled index 10 is outside 0\.\.9"):
        flex.mask(probs, torch.tensor([1, 10]))
    with pytest.raises(ValueError, match=r"shape \[batch, 3\]"):
        flex.mask(torch.full((2, 4), 0.25), torch.tensor([0, 1]))
    with pytest.raises(AbawError, match="NaN/inf"):
        make_threshold("dtm", 3).mask(torch.tensor([[float("nan"), 0.5, 0.5]]))


@pytest.mark.parametrize("name", available_thresholds())
def test_empty_batch_changes_nothing(name: str) -> None:
    th = _build(name)
    before = th.state_dict()
    assert th.mask(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)).shape == (0,)
    for key, value in th.state_dict().items():
        assert torch.equal(value, before[key])


def test_load_state_dict_rejects_other_method_or_size() -> None:
    with pytest.raises(AbawError, match="saved by another --ssl method"):
        make_threshold("dtm", 5).load_state_dict(make_threshold("freematch", 5).state_dict())
    small = make_threshold("flexmatch", 5, num_unlabeled=10).state_dict()
    with pytest.raises(AbawError, match=r"'selected_label' has shape \(10,\), expected \(20,\)"):
        make_threshold("flexmatch", 5, num_unlabeled=20).load_state_dict(small)
    small["selected_label"][0] = 7
    target = make_threshold("flexmatch", 5, num_unlabeled=10)
    with pytest.raises(AbawError, match="outside -1..4"):
        target.load_state_dict(small)
    assert torch.all(target.selected_label == -1)  # a refused checkpoint changes nothing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", available_thresholds())
def test_state_follows_the_device_of_the_probabilities(name: str) -> None:
    batches = _stream(seed=5)
    cpu, gpu = _build(name), _build(name)
    for probs, indices in batches:
        p, i = torch.from_numpy(probs), torch.from_numpy(indices)
        gpu_mask = gpu.mask(p.cuda(), i.cuda())
        assert gpu_mask.is_cuda
        assert torch.equal(cpu.mask(p, i), gpu_mask.cpu())
    for key in gpu.STATE:
        value = getattr(gpu, key)
        assert not isinstance(value, torch.Tensor) or value.is_cuda
    resumed = _build(name)
    resumed.load_state_dict(gpu.state_dict())  # GPU checkpoint into a fresh CPU object
    p, i = torch.from_numpy(batches[0][0]), torch.from_numpy(batches[0][1])
    assert torch.equal(resumed.mask(p, i), cpu.mask(p, i))


def test_consistency_loss_is_masked_cross_entropy_over_whole_batch() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 3.0, 0.0]],
                          requires_grad=True)
    labels = torch.tensor([0, 2, 1])
    mask = torch.tensor([1.0, 0.0, 1.0])
    loss = consistency_loss(logits, labels, mask)
    log_p = logits.detach().numpy() - np.log(np.exp(logits.detach().numpy()).sum(1, keepdims=True))
    expected = -(log_p[0, 0] + log_p[2, 1]) / 3  # divided by the batch, not by accepted ones
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[1] == 0) and torch.any(logits.grad[0] != 0)
    assert consistency_loss(logits, labels, torch.zeros(3)).item() == 0.0


def _reference_fairness(logits, mask, p_model, label_hist):
    sel = logits[mask > 0].astype(np.float64)
    probs = np.exp(sel - sel.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    hist = np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs)
    inv = np.array([1 / h if h > 0 else 0.0 for h in hist])
    target = p_model / label_hist
    target /= target.sum()
    mean = probs.mean(0) * inv
    mean /= mean.sum()
    return float((target * np.log(mean + 1e-12)).sum())


def test_freematch_fairness_loss_matches_definition() -> None:
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(10, 4)).astype(np.float32) * 2
    logits[:, 3] -= 10.0  # class 3 never wins: its histogram entry is 0
    mask = (rng.uniform(size=10) > 0.3).astype(np.float32)
    p_model = np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32)
    label_hist = np.array([0.5, 0.2, 0.2, 0.1], dtype=np.float32)
    t_logits = torch.from_numpy(logits).requires_grad_(True)
    loss = freematch_fairness_loss(t_logits, torch.from_numpy(mask), torch.from_numpy(p_model),
                                   torch.from_numpy(label_hist))
    assert loss.item() == pytest.approx(_reference_fairness(logits, mask, p_model, label_hist),
                                        rel=1e-5)
    loss.backward()
    assert torch.isfinite(t_logits.grad).all() and t_logits.grad.abs().sum() > 0
    assert torch.all(t_logits.grad[torch.from_numpy(mask) == 0] == 0)
    nothing = freematch_fairness_loss(t_logits, torch.zeros(10), torch.from_numpy(p_model),
                                      torch.from_numpy(label_hist))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_class_counts_match_bincount() -> None:
    from abaw_kit.ssl import class_counts

    labels = torch.tensor([3, 0, 3, 7, 1, 3, 0])
    weights = torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0, 1.0, 2.0])
    assert torch.equal(class_counts(labels, 8), torch.bincount(labels, minlength=8))
    assert torch.equal(class_counts(labels, 8, weights),
                       torch.bincount(labels, weights=weights, minlength=8).float())
    assert torch.equal(class_counts(labels[:0], 8), torch.zeros(8, dtype=torch.long))


@pytest.mark.parametrize("warmup", [True, False])
def test_flexmatch_with_mostly_repeated_indices_matches_reference(warmup: bool) -> None:
    # six samples, 24 rows a batch: every batch repeats indices, confident or not
    rng = np.random.default_rng(9)
    batches = []
    for _ in range(30):
        logits = rng.normal(size=(24, 5)) * rng.uniform(0.5, 6.0)
        batches.append((_softmax(logits).astype(np.float32), rng.integers(0, 6, size=24)))
    th = make_threshold("flexmatch", 5, num_unlabeled=6, p_cutoff=0.7, thresh_warmup=warmup)
    assert _run(th, batches) == _reference_flexmatch(batches, 5, 6, 0.7, warmup)
    assert torch.equal(th._counts, torch.bincount(th.selected_label + 1, minlength=6))


def test_a_methods_own_loss_terms_and_parameters_live_with_the_method() -> None:
    generator = torch.Generator().manual_seed(11)
    probs = torch.softmax(torch.randn(6, 4, generator=generator) * 3, dim=1)
    logits = torch.randn(6, 4, generator=generator).requires_grad_(True)
    free = make_threshold("freematch", 4, momentum=0.5)
    mask = free.mask(probs)
    terms = free.extra_loss(logits, mask, probs)
    assert list(terms) == ["fair_loss"] and terms["fair_loss"].weight == 0.001
    expected = freematch_fairness_loss(logits, mask, free.p_model, free.label_hist)
    assert torch.equal(terms["fair_loss"].value, expected)
    assert make_threshold("freematch", 4, fairness_weight=0).extra_loss(logits, mask, probs) == {}
    for name in available_thresholds():  # DTM builds on FreeMatch's threshold, not its loss
        if name != "freematch":
            th = make_threshold(name, 4, num_unlabeled=6)
            assert th.extra_loss(logits, mask, probs) == {}, name
    assert make_threshold("dtm", 4).accepted_share() is not None
    assert make_threshold("fixmatch", 4).accepted_share() is None
    assert [n for n in available_thresholds() if not THRESHOLDS[n].uses_unlabelled] == ["none"]


def test_a_parameter_the_method_would_ignore_is_rejected_naming_key_and_method() -> None:
    with pytest.raises(AbawError, match=r"threshold 'dtm': unknown parameter 'fairness_weight' "
                                        r".*a parameter of freematch, which 'dtm' would ignore"):
        make_threshold("dtm", 8, fairness_weight=0.01)
    with pytest.raises(AbawError, match="fairness_weight must be >= 0"):
        make_threshold("freematch", 8, fairness_weight=-1.0)


def test_method_names_come_from_the_registry_without_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, typer.main\nfrom abaw_kit import cli, config\n"
            "assert 'torch' not in sys.modules\n"
            "train = typer.main.get_command(cli.app).commands['train']\n"
            "print([p.help for p in train.params if p.name == 'ssl'][0])\n"
            "print(config.ssl_methods())\nassert 'torch' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    help_text, names = done.stdout.splitlines()
    assert help_text == " | ".join(available_thresholds()) + "."
    assert names == str(tuple(available_thresholds()))
