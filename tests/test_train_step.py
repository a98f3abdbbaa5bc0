"""One training step: the weak views forwarded apart without a graph (``ssl.weak_no_grad``),
NaN/inf noted on the device and raised at the flush, and no host sync in a GPU step."""

from __future__ import annotations

import pytest
import torch

from abaw_kit.config import resolve_config
from abaw_kit.ssl import make_threshold
from abaw_kit.train.distributed import DistContext
from abaw_kit.train.loop import (
    Batch,
    NonFiniteLoss,
    TrainState,
    build_state,
    optimizer_step,
    raise_if_diverged,
    train_step,
)
from abaw_kit.train.model import Normalizer


class GradRows(torch.nn.Module):
    """A linear classifier (no BatchNorm, no dropout: rows are independent) that records the
    rows and the grad mode of every forward; ``norm`` adds a BatchNorm in front."""

    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(3) if norm else torch.nn.Identity()
        self.head = torch.nn.Linear(3, 8)
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return self.head(self.norm(x).mean(dim=(2, 3)))


def make_state(method: str, overrides: list[str], model: torch.nn.Module,
               device: str = "cpu") -> TrainState:
    cfg = resolve_config(None, [f"train.device={device}", *overrides], {"ssl": method})
    dist = DistContext(rank=0, world_size=1, device=torch.device(device))
    # thresholds low enough for the tiny model's flat probabilities to pass some of the time
    params = {"fixmatch": {"p_cutoff": 0.2}, "flexmatch": {"p_cutoff": 0.2},
              "dtm": {"warmup_steps": 0, "min_threshold": 0.0, "max_threshold": 0.2,
                      "momentum": 0.5}}.get(method, {})
    threshold = make_threshold(method, 8, num_unlabeled=32, **params)
    return build_state(cfg, model.to(dist.device),
                       Normalizer([0.5] * 3, [0.2] * 3, 8, dist.device), dist, threshold, None)


def make_batch(seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 255, (n, 8, 8, 3), generator=generator, dtype=torch.uint8)

    indices = torch.randint(0, 32, (8,), generator=generator)
    return Batch(images(4), torch.arange(4), images(8), images(8), indices)


@pytest.mark.parametrize("method", ["fixmatch", "flexmatch", "freematch", "dtm"])
def test_weak_views_without_a_graph_give_the_same_masks_and_gradients(method: str) -> None:
    results = {}
    for apart in (False, True):
        torch.manual_seed(0)
        model = GradRows()
        state = make_state(method, [f"ssl.weak_no_grad={str(apart).lower()}"], model)
        for step in range(3):  # thresholds with state: several updates must agree too
            model.calls.clear()
            out = train_step(state, make_batch(step), step)
            out["loss"].backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        results[apart] = (model.calls, out["logs"], grads, state.threshold.state_dict())
    joint, apart = results[False], results[True]
    assert joint[0] == [(4 + 8 + 8, True)]  # labelled + weak + strong in one graph
    assert apart[0] == [(8, False), (4 + 8, True)]  # weak apart without a graph: backward
    # covers only the labelled and strong rows
    assert torch.equal(joint[1]["mask_ratio"], apart[1]["mask_ratio"])
    assert torch.equal(joint[1]["pseudo_hist"], apart[1]["pseudo_hist"])  # same pseudo-labels
    assert joint[1]["mask_ratio"] > 0
    for key, value in joint[1].items():
        assert torch.allclose(value, apart[1][key], atol=1e-6), key
    for name, grad in joint[2].items():  # the detached weak rows never had a gradient
        assert torch.allclose(grad, apart[2][name], atol=1e-6), name
    for key, value in joint[3].items():
        assert torch.allclose(value.double(), apart[3][key].double(), atol=1e-6), key


def test_weak_views_apart_update_the_batchnorm_statistics_a_second_time() -> None:
    counts = {}
    for apart in (False, True):
        model = GradRows(norm=True)
        state = make_state("fixmatch", [f"ssl.weak_no_grad={str(apart).lower()}"], model)
        train_step(state, make_batch(), 0)
        counts[apart] = int(model.norm.num_batches_tracked)
    assert counts == {False: 1, True: 2}


def test_the_mean_teacher_ignores_the_option() -> None:
    model = GradRows()
    state = make_state("fixmatch", ["ssl.weak_no_grad=true", "ssl.teacher=ema"], model)
    state.ema.module.calls = []
    train_step(state, make_batch(), 0)
    assert model.calls == [(4 + 8, True)] and state.ema.module.calls == [(8, False)]


def test_a_non_finite_step_is_noted_and_raised_at_the_check_not_in_the_step() -> None:
    model = GradRows()
    state = make_state("dtm", [], model)
    raise_if_diverged(state)  # nothing noted yet: fine
    for step in range(2):
        optimizer_step(state, train_step(state, make_batch(step), step)["loss"], step)
    raise_if_diverged(state)
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    for step in range(2, 5):  # no exception in the steps themselves
        optimizer_step(state, train_step(state, make_batch(step), step)["loss"], step)
    with pytest.raises(NonFiniteLoss) as caught:
        raise_if_diverged(state)
    assert caught.value.step == 3  # the first bad step, counted from 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize(("method", "extra"), [
    ("dtm", []), ("flexmatch", []), ("freematch", []), ("fixmatch", ["ssl.teacher=ema"]),
    ("dtm", ["ssl.weak_no_grad=true", "ssl.negative_weight=0.5", "ssl.unsup_balance=1"])])
def test_a_gpu_step_never_waits_for_the_device(method: str, extra: list[str]) -> None:
    """train_step + optimizer_step under CUDA's sync debug mode: any host sync is an error."""
    state = make_state(method, ["train.amp=none", *extra], GradRows(norm=True), "cuda")

    def pinned(step: int) -> Batch:
        batch = make_batch(step)
        return Batch(*(t.pin_memory() for t in (batch.images, batch.labels, batch.weak,
                                                batch.strong, batch.indices)))

    for step in range(2):  # first steps: lazy state (FlexMatch's counts) and cuBLAS set-up
        optimizer_step(state, train_step(state, pinned(step), step)["loss"], step)
    batches = [pinned(step) for step in range(2, 5)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, batch in zip(range(2, 5), batches, strict=True):
            optimizer_step(state, train_step(state, batch, step)["loss"], step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    raise_if_diverged(state)  # the one sync, at the flush
