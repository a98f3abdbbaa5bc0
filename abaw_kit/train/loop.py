"""One training step, split as USB does: ``train_step`` computes the losses, ``optimizer_step``
applies them. Everything stateful sits in ``TrainState`` so checkpoints can capture it whole.

SSL step (FixMatch family): labelled, weak and strong views go through the network in one
forward pass (shared BatchNorm statistics); the weak-view probabilities of every rank are
gathered so the threshold sees the global batch and its state stays identical on all ranks;
the accepted pseudo-labels supervise the strong views.
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
    Threshold,
    class_balance_weights,
    consistency_loss,
    freematch_fairness_loss,
    negative_learning_loss,
)
from abaw_kit.train.distributed import DistContext
from abaw_kit.train.model import Normalizer

EMA_WARMUP_POWER = 0.75  # timm's suggestion for runs of < ~100k steps


class NonFiniteLoss(RuntimeError):
    """The forward pass produced NaN/inf: training diverged at this step."""


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

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def build_state(cfg: TrainConfig, model: nn.Module, normalize: Normalizer, dist: DistContext,
                threshold: Threshold | None, class_weights: Tensor | None,
                hidden_labels: Tensor | None = None) -> TrainState:
    """Optimiser, warm-up + cosine schedule, EMA, AMP and DDP around ``model`` (on its device)."""
    device = dist.device
    amp_dtype = None
    if device.type == "cuda" and cfg.train.amp != "none":
        amp_dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    if device.type == "cuda" and cfg.train.channels_last:
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
    return TrainState(cfg, wrapped, model, ema, optimizer, scheduler, scaler, threshold,
                      normalize, dist, weights, amp_dtype, hidden)


def unsup_weight(cfg: TrainConfig, step: int) -> float:
    """lambda_u at ``step``: 0 during the supervised warm-up, then a linear ramp to lambda_u."""
    ssl = cfg.ssl
    if step < ssl.unsup_start:
        return 0.0
    if ssl.unsup_ramp <= 0:
        return ssl.lambda_u
    return ssl.lambda_u * min(1.0, (step - ssl.unsup_start + 1) / ssl.unsup_ramp)


def train_step(state: TrainState, batch: Batch, step: int = 0) -> dict[str, Any]:
    """Forward pass and losses of one step: ``{"loss": Tensor, "logs": {name: Tensor}}``.

    With ``ssl.teacher: ema`` the weak views go through the EMA weights without a graph, and
    the student forwards only the labelled and strong views.
    """
    labels = batch.labels.to(state.dist.device, non_blocking=True)
    weight = unsup_weight(state.cfg, step) if batch.weak is not None else 0.0
    use_unlabelled = batch.weak is not None and weight > 0
    from_teacher = use_unlabelled and state.cfg.ssl.teacher == "ema"
    parts = [batch.images]
    if use_unlabelled:
        parts += [batch.strong] if from_teacher else [batch.weak, batch.strong]
    with state.autocast():
        logits = state.model(torch.cat([state.normalize(p) for p in parts])).float()
    if not state.dist.all_true(torch.isfinite(logits.detach()).all()):
        raise NonFiniteLoss("the network output is NaN/inf")
    n = len(labels)
    sup = F.cross_entropy(logits[:n], labels, weight=state.class_weights,
                          label_smoothing=state.cfg.optim.label_smoothing)
    logs: dict[str, Tensor] = {"sup_loss": sup.detach(), "loss": sup.detach()}
    if not use_unlabelled:
        return {"loss": sup, "logs": logs}
    if from_teacher:
        weak_logits, strong_logits = teacher_logits(state, batch.weak), logits[n:]
    else:
        weak_logits, strong_logits = logits[n:].chunk(2)
    unsup, unsup_logs = unlabelled_loss(state, weak_logits, strong_logits, batch.indices,
                                        weight)
    loss = sup + unsup
    return {"loss": loss, "logs": {**logs, **unsup_logs, "loss": loss.detach()}}


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


def unlabelled_loss(state: TrainState, weak_logits: Tensor, strong_logits: Tensor,
                    indices: Tensor | None, weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Consistency on accepted pseudo-labels (+ FreeMatch fairness, + negative learning on
    the rejected ones), and what to log."""
    assert state.threshold is not None
    probs = weak_logits.detach().softmax(dim=1)
    mask, global_probs, global_mask = shared_mask(state, probs, indices)
    pseudo = probs.argmax(dim=1)
    ssl = state.cfg.ssl
    weights = mask
    if ssl.unsup_balance > 0:  # counted over all ranks' accepted labels, applied to our rows
        all_weights = class_balance_weights(global_probs.argmax(dim=1), global_mask,
                                            NUM_CLASSES, ssl.unsup_balance)
        n, rank = probs.shape[0], state.dist.rank
        weights = all_weights[rank * n:(rank + 1) * n]
    consistency = consistency_loss(strong_logits, pseudo, weights)
    loss = weight * consistency
    logs = {"unsup_loss": consistency.detach(), "mask_ratio": global_mask.mean(),
            "pseudo_hist": torch.bincount(global_probs.argmax(dim=1), weights=global_mask,
                                          minlength=NUM_CLASSES)}
    if ssl.negative_weight > 0:
        negative = negative_learning_loss(strong_logits, probs, 1.0 - mask,
                                          ssl.negative_threshold)
        loss = loss + weight / max(ssl.lambda_u, 1e-12) * ssl.negative_weight * negative
        logs["neg_loss"] = negative.detach()
    if ssl.method == "freematch" and ssl.fairness_weight > 0:
        fairness = freematch_fairness_loss(strong_logits, mask, state.threshold.p_model,
                                           state.threshold.label_hist)
        loss = loss + ssl.fairness_weight * fairness
        logs["fair_loss"] = fairness.detach()
    if state.hidden_labels is not None and indices is not None:
        truth = state.hidden_labels[indices.to(state.hidden_labels.device)]
        checked = mask * (truth >= 0)
        logs["pseudo_checked"] = checked.sum()
        logs["pseudo_correct"] = (checked * (pseudo == truth)).sum()
    return loss, logs


def shared_mask(state: TrainState, probs: Tensor,
                indices: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(this rank's mask, all ranks' probs, all ranks' mask): one threshold update per step."""
    threshold, dist = state.threshold, state.dist
    assert threshold is not None
    all_probs = dist.all_gather_cat(probs)
    all_indices = None
    if threshold.needs_indices and indices is not None:
        all_indices = dist.all_gather_cat(indices.to(dist.device))
    all_mask = threshold.mask(all_probs, all_indices)
    n = probs.shape[0]
    return all_mask[dist.rank * n:(dist.rank + 1) * n], all_probs, all_mask


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
