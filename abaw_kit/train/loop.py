"""One training step, split as USB does: ``train_step`` computes the losses, ``optimizer_step``
applies them. Everything stateful sits in ``TrainState`` so checkpoints can capture it whole.

SSL step (FixMatch family): labelled, weak and strong views go through the network in one
forward pass (shared BatchNorm statistics; ``ssl.weak_no_grad`` forwards the weak views apart,
without a graph); the weak-view probabilities of every rank are gathered so the threshold sees
the global batch and its state stays identical on all ranks; the accepted pseudo-labels
supervise the strong views. What is special to a method (its own loss terms, its running share
of accepted labels, whether it uses unlabelled images at all) the loop asks the threshold.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from abaw_kit.classes import NUM_CLASSES
from abaw_kit.config import TrainConfig
from abaw_kit.ssl import (
    DistributionAlignment,
    Threshold,
    class_balance_weights,
    consistency_loss,
    negative_learning_loss,
)
from abaw_kit.train.distributed import DistContext
from abaw_kit.train.gpu import autocast, device_amp_dtype, use_channels_last
from abaw_kit.train.model import Normalizer

EMA_WARMUP_POWER = 0.75  # timm's suggestion for runs of < ~100k steps


NO_BAD_STEP = 2**62  # ``TrainState.first_bad_step`` while every step has been finite


class NonFiniteLoss(RuntimeError):
    """The forward pass produced NaN/inf: training diverged at ``step`` (counted from 1)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"the network output is NaN/inf at step {step}")
        self.step = step


@dataclass
class Batch:
    """One step's uint8 NHWC images; the unlabelled part is None for supervised training."""

    images: Tensor
    labels: Tensor
    weak: Tensor | None = None
    strong: Tensor | None = None
    indices: Tensor | None = None
    broken: Tensor | None = None  # pool indices skipped as broken (the loader used the next)


@dataclass
class TrainState:
    """What a step needs and what a checkpoint saves."""

    cfg: TrainConfig
    model: nn.Module  # what runs forward/backward (DDP-wrapped when distributed)
    raw: nn.Module  # the unwrapped model: optimiser, EMA and checkpoints use it
    ema: ModelEmaV3
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler | None
    threshold: Threshold | None
    normalize: Normalizer
    dist: DistContext
    class_weights: Tensor | None = None
    amp_dtype: torch.dtype | None = None
    hidden_labels: Tensor | None = None  # few-label protocol only: see TrainingData
    alignment: DistributionAlignment | None = None  # ssl.dist_align: see ssl/alignment.py
    first_bad_step: Tensor | None = None  # on the device: see note_finite

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.amp_dtype)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def build_state(cfg: TrainConfig, model: nn.Module, normalize: Normalizer, dist: DistContext,
                threshold: Threshold | None, class_weights: Tensor | None,
                hidden_labels: Tensor | None = None,
                alignment: DistributionAlignment | None = None) -> TrainState:
    """Optimiser, warm-up + cosine schedule, EMA, AMP and DDP around ``model`` (on its device)."""
    device = dist.device
    amp_dtype = device_amp_dtype(cfg.train.amp, device)
    if use_channels_last(cfg.train.channels_last, device):
        model = model.to(memory_format=torch.channels_last)
    optim = cfg.optim
    optimizer = create_optimizer_v2(model, opt=optim.name, lr=optim.lr,
                                    weight_decay=optim.weight_decay, momentum=optim.momentum)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=cfg.train.steps, lr_min=optim.min_lr,
        warmup_t=min(optim.warmup_steps, cfg.train.steps), warmup_lr_init=optim.lr * 1e-3,
        t_in_epochs=False)
    ema = ModelEmaV3(model, decay=optim.ema_decay, use_warmup=True,
                     warmup_power=EMA_WARMUP_POWER)
    wrapped = model
    if dist.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    weights = class_weights.to(device) if class_weights is not None else None
    hidden = hidden_labels.to(device) if hidden_labels is not None else None
    if threshold is not None:
        threshold.check_finite = False  # no host sync per step: train_step notes NaN/inf
    return TrainState(cfg, wrapped, model, ema, optimizer, scheduler, scaler, threshold,
                      normalize, dist, weights, amp_dtype, hidden, alignment)


def unsup_ramp(cfg: TrainConfig, step: int) -> float:
    """The ramp of the unlabelled losses at ``step``: 0 during the supervised warm-up, then
    linear from 0 to 1 over ``ssl.unsup_ramp`` steps."""
    ssl = cfg.ssl
    if step < ssl.unsup_start:
        return 0.0
    if ssl.unsup_ramp <= 0:
        return 1.0
    return min(1.0, (step - ssl.unsup_start + 1) / ssl.unsup_ramp)


def unsup_weight(cfg: TrainConfig, step: int) -> float:
    """lambda_u at ``step``: lambda_u times the ramp (``unsup_ramp``)."""
    return cfg.ssl.lambda_u * unsup_ramp(cfg, step)


def train_step(state: TrainState, batch: Batch, step: int = 0) -> dict[str, Any]:
    """Forward pass and losses of one step: ``{"loss": Tensor, "logs": {name: Tensor}}``.

    With ``ssl.teacher: ema`` the weak views go through the EMA weights without a graph, and
    the student forwards only the labelled and strong views; with ``ssl.weak_no_grad`` the
    student forwards the weak views apart, without a graph. NaN/inf outputs are only noted
    here (``note_finite``): no host sync in a step.
    """
    labels = batch.labels.to(state.dist.device, non_blocking=True)
    threshold = state.threshold
    unlabelled = (batch.weak is not None and threshold is not None
                  and threshold.uses_unlabelled)
    ramp = unsup_ramp(state.cfg, step) if unlabelled else 0.0
    weight = state.cfg.ssl.lambda_u * ramp
    use_unlabelled = unlabelled and weight > 0
    from_teacher = use_unlabelled and state.cfg.ssl.teacher == "ema"
    weak_apart = use_unlabelled and not from_teacher and state.cfg.ssl.weak_no_grad
    parts = [batch.images]
    if use_unlabelled:
        parts += [batch.strong] if from_teacher or weak_apart else [batch.weak, batch.strong]
    weak_logits = student_weak_logits(state, batch.weak) if weak_apart else None
    with state.autocast():
        logits = state.model(torch.cat([state.normalize(p) for p in parts])).float()
    n = len(labels)
    sup = F.cross_entropy(logits[:n], labels, weight=state.class_weights,
                          label_smoothing=state.cfg.optim.label_smoothing)
    logs: dict[str, Tensor] = {"sup_loss": sup.detach(), "loss": sup.detach()}
    if not use_unlabelled:
        note_finite(state, step, logits, sup)
        return {"loss": sup, "logs": logs}
    if from_teacher:
        weak_logits, strong_logits = teacher_logits(state, batch.weak), logits[n:]
    elif weak_logits is not None:
        strong_logits = logits[n:]
    else:
        weak_logits, strong_logits = logits[n:].chunk(2)
    unsup, unsup_logs = unlabelled_loss(state, weak_logits, strong_logits, batch.indices,
                                        weight, ramp)
    loss = sup + unsup
    note_finite(state, step, logits, weak_logits, loss)
    return {"loss": loss, "logs": {**logs, **unsup_logs, "loss": loss.detach()}}


def note_finite(state: TrainState, step: int, *outputs: Tensor) -> None:
    """Remember on the device the first step whose outputs hold NaN/inf. Checking on the host
    would stall every step; ``raise_if_diverged`` reads it back when the run flushes."""
    finite = torch.stack([torch.isfinite(t.detach()).all() for t in outputs]).all()
    first = state.first_bad_step
    if first is None:
        first = torch.full((), NO_BAD_STEP, dtype=torch.long, device=finite.device)
    state.first_bad_step = torch.where(finite, first, first.clamp(max=step + 1))


def raise_if_diverged(state: TrainState) -> None:
    """NonFiniteLoss naming the first step with NaN/inf outputs on any rank, if there was one.

    One host sync and a tiny all-gather: the run calls it before it logs, validates or saves,
    so a diverged step is never logged as a number, validated or checkpointed.
    """
    first = state.first_bad_step
    if first is None:
        first = torch.full((), NO_BAD_STEP, dtype=torch.long, device=state.dist.device)
    step = int(state.dist.all_gather_cat(first.reshape(1)).min())
    if step < NO_BAD_STEP:
        raise NonFiniteLoss(step)


@torch.no_grad()
def student_weak_logits(state: TrainState, weak: Tensor) -> Tensor:
    """``ssl.weak_no_grad``: the student's logits on the weak views from a forward of their
    own without a graph, so backward covers only the labelled and strong rows.

    Still train mode: BatchNorm normalises the weak views with their own batch statistics
    (not the joint batch's) and updates its running statistics with them as a second update
    per step. The unwrapped model: DDP has no gradients to reduce here.
    """
    with state.autocast():
        return state.raw(state.normalize(weak)).float()


@torch.no_grad()
def teacher_logits(state: TrainState, weak: Tensor) -> Tensor:
    """The EMA weights' logits on the weak views (eval mode: its running BN statistics)."""
    teacher = state.ema.module
    was_training = teacher.training
    teacher.eval()
    with state.autocast():
        logits = teacher(state.normalize(weak)).float()
    teacher.train(was_training)
    return logits


def accepted_class_share(state: TrainState, pseudo: Tensor, mask: Tensor) -> Tensor:
    """The share of each class among accepted pseudo-labels, floored at 1e-3 so no logit
    offset is infinite: the threshold's running estimate where it keeps one
    (``accepted_share``, DTM's), else this (global) batch's counts with one pseudo-count per
    class."""
    assert state.threshold is not None
    running = state.threshold.accepted_share()
    if running is not None:
        share = running.float()
    else:
        share = torch.zeros(NUM_CLASSES, device=mask.device).index_add_(0, pseudo, mask.float())
        share = share + 1.0
    share = share.clamp(min=1e-3)
    return share / share.sum()


def unlabelled_loss(state: TrainState, weak_logits: Tensor, strong_logits: Tensor,
                    indices: Tensor | None, weight: float,
                    ramp: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Consistency on accepted pseudo-labels, weighted ``weight`` (lambda_u x ``ramp``), +
    negative learning on the rejected ones (``ramp`` x negative_weight), + the method's own
    terms (``extra_loss``, e.g. FreeMatch's fairness, at their own weights), and what to log."""
    assert state.threshold is not None
    probs, mask, global_probs, global_mask = shared_mask(
        state, weak_logits.detach().softmax(dim=1), indices)
    pseudo = probs.argmax(dim=1)
    ssl = state.cfg.ssl
    truth = None  # the true classes where known (diagnostics, and the oracle)
    if state.hidden_labels is not None and indices is not None:
        truth = state.hidden_labels[indices.to(state.hidden_labels.device, non_blocking=True)]
    if ssl.oracle:  # the upper bound: true classes where known, everything known accepted
        assert truth is not None
        pseudo, mask = truth.clamp(min=0), (truth >= 0).to(mask.dtype)
    weights = mask
    if ssl.unsup_balance > 0:  # counted over all ranks' accepted labels, applied to our rows
        all_weights = class_balance_weights(global_probs.argmax(dim=1), global_mask,
                                            NUM_CLASSES, ssl.unsup_balance)
        n, rank = probs.shape[0], state.dist.rank
        weights = all_weights[rank * n:(rank + 1) * n]
    adjusted = strong_logits
    if ssl.unsup_logit_adjust > 0:
        share = accepted_class_share(state, global_probs.argmax(dim=1), global_mask)
        adjusted = strong_logits.float() + ssl.unsup_logit_adjust * share.log()
    consistency = consistency_loss(adjusted, pseudo, weights)
    loss = weight * consistency
    accepted = mask if ssl.oracle else global_mask  # the oracle accepts what it knows
    logs = {"unsup_loss": consistency.detach(), "mask_ratio": accepted.mean(),
            # index_add_, not a weighted bincount: it has a deterministic CUDA kernel
            "pseudo_hist": torch.zeros(NUM_CLASSES, device=global_mask.device).index_add_(
                0, global_probs.argmax(dim=1), global_mask.float())}
    if ssl.negative_weight > 0:
        negative = negative_learning_loss(strong_logits, probs, 1.0 - mask,
                                          ssl.negative_threshold)
        loss = loss + ramp * ssl.negative_weight * negative
        logs["neg_loss"] = negative.detach()
    for name, term in state.threshold.extra_loss(strong_logits, mask, probs).items():
        loss = loss + term.weight * term.value
        logs[name] = term.value.detach()
    if truth is not None:
        checked = mask * (truth >= 0)
        logs["pseudo_checked"] = checked.sum()
        logs["pseudo_correct"] = (checked * (pseudo == truth)).sum()
    return loss, logs


def shared_mask(state: TrainState, probs: Tensor,
                indices: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(this rank's probs, its mask, all ranks' probs, all ranks' mask): one threshold update
    per step. With ``ssl.dist_align`` the probs returned are the aligned ones: the threshold,
    the pseudo-labels and negative learning all see what alignment made of the teacher's."""
    threshold, dist = state.threshold, state.dist
    assert threshold is not None
    all_probs = dist.all_gather_cat(probs)
    n = probs.shape[0]
    rows = slice(dist.rank * n, (dist.rank + 1) * n)
    if state.alignment is not None:  # on the global batch: the running mean stays rank-equal
        all_probs = state.alignment(all_probs)
        probs = all_probs[rows]
    all_indices = None
    if threshold.needs_indices and indices is not None:
        # one process: the loader's CPU indices as they are (checked there, copied without
        # blocking); DDP gathers them on the device
        all_indices = (dist.all_gather_cat(indices.to(dist.device, non_blocking=True))
                       if dist.enabled else indices)
    all_mask = threshold.mask(all_probs, all_indices)
    return probs, all_mask[rows], all_probs, all_mask


def optimizer_step(state: TrainState, loss: Tensor, step: int) -> None:
    """Backward, clip, step; then schedule and EMA for the step just completed (``step + 1``)."""
    state.optimizer.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(state.optimizer)
    else:
        loss.backward()
    if state.cfg.optim.clip_grad > 0:
        nn.utils.clip_grad_norm_(state.raw.parameters(), state.cfg.optim.clip_grad)
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.scheduler.step_update(num_updates=step + 1)
    state.ema.update(state.raw, step=step + 1)
