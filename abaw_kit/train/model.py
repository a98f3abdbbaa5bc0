"""The network: any timm backbone with an 8-way head, and the weights it starts from.

``model.pretrained`` is ``timm`` (timm's own download), ``imagenet`` (torchvision's ImageNet
file, found offline first: ``imagenet_weights.py``), ``none`` (random init) or a local file
(.safetensors, or a PyTorch state dict read with ``weights_only=True``). From a local file the
classifier of another shape (e.g. ImageNet's 1000 classes) is dropped and re-initialised.
A local file may also be torchvision's ImageNet weights for mobilenetv2_100, resnet18/34/50/101/152
(e.g. ``mobilenet_v2-b0353104.pth``): renamed and checked tensor by tensor in ``pretrained.py``,
and the run then normalises with the mean/std those weights were trained with.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

from abaw_kit.classes import NUM_CLASSES
from abaw_kit.config import ModelConfig
from abaw_kit.errors import AbawError
from abaw_kit.train.imagenet_weights import imagenet_weights_file
from abaw_kit.train.pretrained import Mapped, detect_layout, map_torchvision
from abaw_kit.weights_io import read_weights_file, unwrap_checkpoint


@dataclass
class WeightsReport:
    """What loading a local weights file did, so the user can see a mismatch at a glance."""

    source: str
    loaded: int = 0
    dropped_shape: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    layout: str | None = None  # a mapped foreign file, e.g. "torchvision resnet50"; None: timm's
    mean: tuple[float, ...] | None = None  # the normalisation the file's weights were trained
    std: tuple[float, ...] | None = None  # with (None: timm's config for the backbone)
    zeroed: list[str] = field(default_factory=list)  # BN batch counters the file lacks

    def summary(self) -> str:
        parts = [f"{self.loaded} tensors loaded from {self.source}"]
        if self.layout is not None:
            parts[0] += f" ({self.layout}, mapped to timm names; mean {self.mean} std {self.std})"
        for label, keys in (("re-initialised (other shape)", self.dropped_shape),
                            ("missing", self.missing), ("unexpected", self.unexpected),
                            ("BN counters set to 0 (not in the file)", self.zeroed)):
            if keys:
                shown = ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        return "; ".join(parts)


def check_backbone(name: str) -> None:
    """Fail early (before a run folder exists) on a name timm does not know."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise AbawError(f"unknown backbone '{name}' (model.backbone): not a timm model{hint} "
                    "(see timm.list_models())")


def create_model(cfg: ModelConfig, *, num_classes: int = NUM_CLASSES,
                 pretrained: str | None = None) -> tuple[nn.Module, WeightsReport | None]:
    """The backbone with its head; ``pretrained`` overrides ``cfg.pretrained`` (inference: none)."""
    check_backbone(cfg.backbone)
    source = cfg.pretrained if pretrained is None else pretrained
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": cfg.drop_rate}
    if cfg.drop_path_rate > 0:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    model = _timm_model(cfg.backbone, source == "timm", kwargs)
    report = None
    if source == "imagenet":
        report = load_pretrained_file(model, imagenet_weights_file(cfg.backbone))
    elif source not in ("timm", "none"):
        report = load_pretrained_file(model, Path(source).expanduser())
    return model, report


def _timm_model(name: str, download: bool, kwargs: dict[str, Any]) -> nn.Module:
    try:
        try:
            return timm.create_model(name, pretrained=download, **kwargs)
        except TypeError as exc:  # a model without stochastic depth
            if "drop_path_rate" not in str(exc):
                raise
            kwargs = {k: v for k, v in kwargs.items() if k != "drop_path_rate"}
            return timm.create_model(name, pretrained=download, **kwargs)
    except Exception as exc:  # noqa: BLE001 - network/hub errors have no common base class
        if not download:
            raise
        raise AbawError(f"could not get timm's pretrained weights for '{name}' ({_short(exc)}); "
                        "offline? pass --pretrained PATH (a local .safetensors or state-dict "
                        "file) or --pretrained none") from exc


def load_pretrained_file(model: nn.Module, path: Path) -> WeightsReport:
    """Initialise ``model`` from a local file; keys of another shape are left as initialised.

    A torchvision file is mapped strictly (``pretrained.py``); a timm-layout file by name and shape.
    """
    state = read_state_dict(path)
    layout = detect_layout(state)
    if layout is not None:
        return _load_mapped(model, map_torchvision(state, layout, model, path), path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    report = WeightsReport(source=str(path), loaded=len(usable))
    report.dropped_shape = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    result = model.load_state_dict(usable, strict=False)
    report.missing = sorted(set(result.missing_keys) - set(report.dropped_shape))
    report.unexpected = sorted(k for k in state if k not in own)
    if not usable:
        raise AbawError(f"--pretrained {path}: none of its {len(state)} tensors fits this "
                        "backbone (wrong model.backbone for these weights?)")
    return report


def _load_mapped(model: nn.Module, mapped: Mapped, path: Path) -> WeightsReport:
    """Load a mapped file and make the model's data config carry the file's mean/std."""
    result = model.load_state_dict(mapped.state, strict=False)
    if result.unexpected_keys or set(result.missing_keys) != set(mapped.dropped_head):
        raise AbawError(f"--pretrained {path}: internal mapping error ({result})")  # checked before
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update(mean=mapped.mean, std=mapped.std)
    model.pretrained_cfg = model.default_cfg = cfg  # what model_data_config (timm) reads
    return WeightsReport(source=str(path), loaded=len(mapped.state) - len(mapped.zeroed_counters),
                         dropped_shape=sorted(mapped.dropped_head), layout=mapped.layout,
                         mean=mapped.mean, std=mapped.std, zeroed=mapped.zeroed_counters)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch state dict (``weights_only=True``).

    Accepts the usual wrappers (``state_dict`` / ``model`` / ``ema`` keys, a ``module.`` prefix)
    and abaw-kit checkpoints (``model.*`` + ``ema.*``: the EMA weights are taken).
    """
    if not path.is_file():
        raise AbawError(f"--pretrained {path}: file not found (give a .safetensors or "
                        "state-dict file, 'timm' or 'none')")
    try:
        state = read_weights_file(path)
    except Exception as exc:  # noqa: BLE001 - corrupt files raise many kinds of errors
        raise AbawError(f"--pretrained {path}: cannot read it as weights ({_short(exc)})") from exc
    return _unwrap(state, path)


def _unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    state = unwrap_checkpoint(state)
    if not isinstance(state, dict) or not state:
        raise AbawError(f"--pretrained {path}: expected a mapping of tensor names to tensors, "
                        f"found {type(state).__name__}")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise AbawError(f"--pretrained {path}: expected a mapping of tensor names to tensors, "
                        "found a mapping without tensors")
    if tensors and all(k.startswith(("model.", "ema.")) for k in tensors):
        tensors = {k.removeprefix("ema."): v for k, v in tensors.items() if k.startswith("ema.")}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def model_data_config(model: nn.Module) -> dict[str, Any]:
    """mean/std the backbone expects, from its timm pretrained config.

    After a torchvision file that config carries the file's mean/std (``_load_mapped``).
    """
    data_cfg = resolve_data_config({}, model=model)
    return {"mean": [float(v) for v in data_cfg["mean"]],
            "std": [float(v) for v in data_cfg["std"]]}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class Normalizer:
    """uint8 NHWC batches -> normalised float NCHW on the device (resized when needed).

    Doing this on the device keeps the loader's tensors small (uint8) and its work cheap.
    """

    def __init__(self, mean: list[float], std: list[float], size: int, device: torch.device,
                 channels_last: bool = False) -> None:
        self.size, self.device, self.channels_last = size, device, channels_last
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, 3, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)
                      ).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                antialias=True, align_corners=False)
        x = x * self.scale - self.shift
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=memory_format)
