"""The interface every pseudo-label threshold implements, and what they share.

A threshold is a small stateful policy: given the weak-view softmax probabilities of one
unlabelled batch it says which samples may contribute a pseudo-label (``mask``), and it keeps
whatever running statistics the method needs. The state lives in plain tensors that follow the
device of the probabilities, so the same object works on CPU and GPU.

What a method may add beyond the mask, each with a default that adds nothing: its own loss
terms (``extra_loss``, e.g. FreeMatch's fairness loss), its running share of accepted pseudo-labels
(``accepted_share``, DTM's), and whether it uses unlabelled images at all (``uses_unlabelled``:
False for the supervised baseline, so no unlabelled stream is built). A method's own parameters,
loss weights included, are its ``DEFAULTS`` (set through ``ssl.params``), so a parameter that
the chosen method would ignore is an error.

Distributed training: the trainer all-gathers ``probs`` (and ``indices``) across ranks, calls
``mask`` on the gathered batch on every rank and keeps its own rows. Every rank then applies the
same update to the same state, so nothing here needs to know about DDP.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

import torch
from torch import Tensor

from abaw_kit.errors import AbawError


@dataclass(frozen=True)
class LossTerm:
    """One of a method's own loss terms: ``weight * value`` joins the step's loss, and ``value``
    is logged (unweighted) under the term's name."""

    value: Tensor
    weight: float


class Threshold(ABC):
    """Base class of the pseudo-label thresholds registered in ``THRESHOLDS``.

    Subclasses declare their parameters with defaults in ``DEFAULTS`` (the single source of
    defaults; unknown keys are rejected) and the names of their state attributes in ``STATE``.
    """

    name: ClassVar[str] = ""
    needs_indices: ClassVar[bool] = False
    uses_unlabelled: ClassVar[bool] = True
    """False: the method learns from the labelled frames only; the trainer then builds no
    unlabelled stream and never calls ``mask``."""
    DEFAULTS: ClassVar[Mapping[str, Any]] = {}
    STATE: ClassVar[tuple[str, ...]] = ()
    check_finite: bool = True
    """Refuse NaN/inf probabilities. The trainer turns it off: on a GPU the check would stall
    the host every step, and the trainer notes non-finite outputs itself on the device."""

    def __init__(self, num_classes: int, **params: Any) -> None:
        if not is_count(num_classes) or num_classes < 2:
            raise AbawError(f"threshold '{self.name}': num_classes must be an integer >= 2, "
                            f"got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.params: dict[str, Any] = _resolve_params(self.name, self.DEFAULTS, params)

    @torch.no_grad()
    def mask(self, probs: Tensor, indices: Tensor | None = None) -> Tensor:
        """0./1. float mask [B] for one unlabelled batch; updates the state like a training step.

        ``probs``: weak-view softmax probabilities [B, C] (any float dtype; compared in float32).
        ``indices``: positions of the samples in the unlabelled index, for ``needs_indices``.
        """
        probs = self._prepare(probs)
        idx = self._prepare_indices(indices, probs) if self.needs_indices else None
        if probs.shape[0] == 0:
            return probs.new_zeros(0)
        return self._mask(probs, idx)

    @abstractmethod
    def _mask(self, probs: Tensor, indices: Tensor | None) -> Tensor:
        """The method itself: ``probs`` is float32, detached, non-empty, on the state's device."""

    @abstractmethod
    def class_thresholds(self) -> Tensor:
        """The effective confidence threshold per class [C] implied by the current state."""

    def extra_loss(self, strong_logits: Tensor, mask: Tensor,
                   weak_probs: Tensor) -> dict[str, LossTerm]:
        """The method's own loss terms for this step, by log name; none by default.

        Called after ``mask`` in the same step (the state already holds this batch), on this
        rank's rows: ``strong_logits`` [B, C] (with a graph), ``mask`` [B] the accepted rows
        (0./1., after the oracle where it is on), ``weak_probs`` [B, C] the teacher's detached
        probabilities. The trainer adds ``weight * value`` of each term as it is, with no
        ramp: the weight is the method's parameter.
        """
        return {}

    def accepted_share(self) -> Tensor | None:
        """The running share of each class among accepted pseudo-labels [C], where the method
        keeps one (DTM); None: the trainer counts the step's accepted labels instead."""
        return None

    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the running state (all tensors, so safetensors can store them)."""
        out = {}
        for key in self.STATE:
            value = getattr(self, key)
            out[key] = value.detach().clone() if isinstance(value, Tensor) else torch.tensor(value)
        return out

    def load_state_dict(self, state: Mapping[str, Tensor | float | int]) -> None:
        """Restore a ``state_dict()``; the next ``mask`` continues exactly where it stopped."""
        if set(state) != set(self.STATE):
            raise AbawError(f"threshold '{self.name}': checkpoint state has keys {sorted(state)}, "
                            f"expected {sorted(self.STATE)} (saved by another --ssl method?)")
        loaded: dict[str, Any] = {}
        for key in self.STATE:  # check everything before changing anything
            current, value = getattr(self, key), torch.as_tensor(state[key])
            if not isinstance(current, Tensor):
                loaded[key] = type(current)(value.item())
            elif value.shape != current.shape:
                raise AbawError(f"threshold '{self.name}': checkpoint '{key}' has shape "
                                f"{tuple(value.shape)}, expected {tuple(current.shape)} (the "
                                f"number of classes or unlabelled images changed)")
            else:
                loaded[key] = value.detach().to(current.device, current.dtype).clone()
        for key, value in loaded.items():
            setattr(self, key, value)

    def _require(self, ok: bool, what: str) -> None:
        if not ok:
            raise AbawError(f"threshold '{self.name}': {what}")

    def _prepare(self, probs: Tensor) -> Tensor:
        if not isinstance(probs, Tensor) or probs.ndim != 2 or probs.shape[1] != self.num_classes:
            shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
            raise ValueError(f"threshold '{self.name}': expected probabilities of shape "
                             f"[batch, {self.num_classes}], got {shape}")
        probs = probs.detach().float()  # float16/bfloat16 from autocast: compare in float32
        if self.check_finite and not bool(torch.isfinite(probs).all()):
            raise AbawError(f"threshold '{self.name}': the unlabelled batch has NaN/inf "
                            "probabilities (training diverged: lower the learning rate)")
        self._follow(probs.device)
        return probs

    def _prepare_indices(self, indices: Tensor | None, probs: Tensor) -> Tensor:
        """Indices checked where they are (CPU indices: no device sync), then copied to the
        probabilities' device without blocking."""
        if indices is None:
            raise ValueError(f"threshold '{self.name}' needs the unlabelled sample indices")
        indices = torch.as_tensor(indices)
        if indices.shape != (probs.shape[0],) or indices.is_floating_point() or \
                indices.dtype == torch.bool:
            raise ValueError(f"threshold '{self.name}': expected integer indices of shape "
                             f"[{probs.shape[0]}], got {indices.dtype} {tuple(indices.shape)}")
        self._check_indices(indices)
        return indices.to(probs.device, torch.long, non_blocking=True)

    def _check_indices(self, indices: Tensor) -> None:  # noqa: B027 - optional hook
        """Raise if the (integer, 1-D) indices do not fit the state; nothing to check here."""

    def _follow(self, device: torch.device) -> None:
        """Move every state tensor to ``device`` (state follows the probabilities)."""
        for key, value in list(vars(self).items()):
            if isinstance(value, Tensor) and value.device != device:
                setattr(self, key, value.to(device))


def _resolve_params(method: str, defaults: Mapping[str, Any],
                    params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``params``; unknown names and wrong types are user errors."""
    for key in params:
        if key not in defaults:
            raise unknown_parameter(method, defaults, key)
    return {key: _coerce(method, key, params.get(key, default), default)
            for key, default in defaults.items()}


def unknown_parameter(method: str, defaults: Mapping[str, Any], key: str,
                      owners: Iterable[str] = ()) -> AbawError:
    """The one-line error for a parameter ``key`` that ``method`` does not have; ``owners``:
    the methods that do have it (the parameter would be ignored by this one)."""
    close = difflib.get_close_matches(key, defaults, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    valid = ", ".join(sorted(defaults)) or "none"
    owners = list(owners)
    owned = (f"; '{key}' is a parameter of {', '.join(owners)}, which '{method}' would ignore"
             if owners else "")
    return AbawError(f"threshold '{method}': unknown parameter '{key}' (valid: {valid})"
                     f"{hint}{owned}")


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    """``value`` in the type of ``default`` (None: free-form, checked by the method)."""
    if default is None or value is default:
        return value
    is_number = isinstance(value, Real) and not isinstance(value, bool)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        kind = "true or false"
    elif isinstance(default, int):
        if is_number and float(value).is_integer():
            return int(value)
        kind = "an integer"
    else:
        if is_number:
            return float(value)
        kind = "a number"
    raise AbawError(f"threshold '{method}': parameter '{key}' must be {kind}, got {value!r}")


def class_counts(labels: Tensor, num_classes: int, weights: Tensor | None = None) -> Tensor:
    """Per-class (weighted) counts as a one-hot sum: unlike ``bincount`` on CUDA, which reads
    the largest label back to the host, this never waits for the device."""
    one_hot = labels[:, None] == torch.arange(num_classes, device=labels.device)
    if weights is None:
        return one_hot.sum(dim=0)
    return (one_hot.to(weights.dtype) * weights[:, None]).sum(dim=0)


def is_count(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)
