"""torchvision ImageNet weights -> the matching timm backbone's keys, mapped strictly.

A timm-layout file needs no mapping (``model.py`` loads it by name and shape). A torchvision file
is recognised by its keys, renamed key by key and checked tensor by tensor: every tensor of the
file must land on a tensor of the same shape and every backbone tensor must be set, so a file of
another architecture fails on its first misfit instead of silently loading half a network. Only
the classifier is exempt: a head of another shape (ImageNet's 1000 classes) is dropped and ours
stays freshly initialised; one that fits is loaded, as for timm-layout files. The run then uses
the mean/std the torchvision weights were trained with (``Mapped.mean`` / ``Mapped.std``).

Rules (checked in tests/test_pretrained.py: the timm model gives the torchvision model's features):

- ``mobilenet_v2`` -> ``mobilenetv2_100``: ``features.0`` is the stem (``conv_stem``, ``bn1``),
  the last ``features.N`` the head conv (``conv_head``, ``bn2``), ``features.i`` in between is the
  i-th block of timm's ``blocks.<stage>.<j>`` counted in order across stages, its layers renamed by
  ``_BLOCK_LAYERS``; ``classifier.1`` is ``classifier``.
- resnets: torchvision and timm use the same key names (``fc`` is the classifier), so the mapping
  is the identity, still checked tensor by tensor; a timm file of this layout (e.g. an abaw-kit
  resnet checkpoint) is therefore loaded strictly too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import torch
from torch import nn

from abaw_kit.errors import AbawError

SUPPORTED = ("torchvision mobilenet_v2 -> timm mobilenetv2_100, "
             "torchvision resnet18/34/50/101/152 -> timm resnet18/34/50/101/152")
# torchvision's ImageNet weights are trained on inputs normalised with these
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)

# torchvision InvertedResidual sub-module -> timm block layer. Without expansion (the first block)
# torchvision has dw conv, bn, pw conv, bn; timm calls it DepthwiseSeparableConv.
_BLOCK_LAYERS = {
    "expand": {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw",
               "conv.1.1": "bn2", "conv.2": "conv_pwl", "conv.3": "bn3"},
    "no_expand": {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"},
}
_RESNET_NAMES = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
                 ("bottleneck", (3, 4, 6, 3)): "resnet50",
                 ("bottleneck", (3, 4, 23, 3)): "resnet101",
                 ("bottleneck", (3, 8, 36, 3)): "resnet152"}

_TORCHVISION_RESNET_KEY = re.compile(
    r"(conv1|bn1|fc)\.|layer[1-4]\.\d+\.(conv\d|bn\d|downsample\.[01])\.")


@dataclass
class Mapped:
    """A foreign file in the timm backbone's keys, ready for ``load_state_dict``."""

    layout: str  # what the file is, e.g. "torchvision mobilenet_v2"
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped_head: list[str] = field(default_factory=list)  # timm head keys left re-initialised
    zeroed_counters: list[str] = field(default_factory=list)  # BN counters absent from old files
    mean: tuple[float, float, float] = TORCHVISION_MEAN
    std: tuple[float, float, float] = TORCHVISION_STD


def detect_layout(state: dict[str, torch.Tensor]) -> str | None:
    """'mobilenet_v2' / 'resnet' for a torchvision layout; None for anything else (timm's own).

    ``.conv.`` in the block keys tells mobilenet_v2 from torchvision's efficientnets (``.block.``).
    """
    if {"features.0.0.weight", "features.1.conv.0.0.weight", "classifier.1.weight"} <= state.keys():
        return "mobilenet_v2"
    if {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight"} <= state.keys():
        return "resnet"
    return None


def map_torchvision(state: dict[str, torch.Tensor], layout: str, model: nn.Module,
                    path: Path) -> Mapped:
    """Rename ``state`` into ``model``'s keys; AbawError on the first tensor that does not fit."""
    mapped = Mapped(layout=describe(state, layout))
    rename = _mobilenet_v2_renamer(state, model) if layout == "mobilenet_v2" else _identity
    own = model.state_dict()
    head = _head_prefixes(model)
    for key, tensor in state.items():
        target = rename(key)
        if (target is not None and target.startswith(head) and target in own
                and own[target].shape != tensor.shape):  # ImageNet's 1000 classes
            mapped.dropped_head.append(target)
            continue
        if target is None or target not in own:
            as_name = f" (as {target})" if target not in (None, key) else ""
            _misfit(path, mapped.layout, model, f"{key}{as_name} has no place in it")
        if own[target].shape != tensor.shape:
            as_name = f" as {target}" if target != key else ""
            _misfit(path, mapped.layout, model,
                    f"{key} has shape {tuple(tensor.shape)} in the file, "
                    f"{tuple(own[target].shape)} in the model{as_name}")
        mapped.state[target] = tensor
    _check_complete(mapped, own, head, model, path)
    return mapped


def _check_complete(mapped: Mapped, own: dict[str, torch.Tensor], head: tuple[str, ...],
                    model: nn.Module, path: Path) -> None:
    """Every backbone tensor must come from the file; old files lack the BN batch counters."""
    for key, value in own.items():
        if key in mapped.state or key.startswith(head):
            continue
        if key.endswith(".num_batches_tracked"):  # only used with momentum=None; torch fills 0 too
            mapped.state[key] = torch.zeros_like(value)
            mapped.zeroed_counters.append(key)
            continue
        _misfit(path, mapped.layout, model, f"the model's {key} gets no tensor from the file")


def describe(state: dict[str, torch.Tensor], layout: str) -> str:
    """The file's architecture in words, for messages (e.g. 'torchvision resnet50')."""
    if layout != "resnet":
        return f"torchvision {layout}"
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    depths = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")})
                   for i in range(1, 5))
    plain = (tuple(state["layer1.0.conv2.weight"].shape) == (64, 64, 3, 3)  # not wide / ResNeXt
             and all(_TORCHVISION_RESNET_KEY.match(k) for k in state))  # no SE, no deep stem
    name = _RESNET_NAMES.get((kind, depths)) if plain else None
    return f"torchvision {name}" if name else \
        f"resnet-style ({kind} blocks {'-'.join(map(str, depths))})"


def _identity(key: str) -> str:
    return key


def _mobilenet_v2_renamer(state: dict[str, torch.Tensor],
                          model: nn.Module) -> Callable[[str], str | None]:
    """torchvision key -> timm key (None: no counterpart), from timm's stage/block structure."""
    blocks = [f"blocks.{s}.{j}" for s, stage in enumerate(getattr(model, "blocks", ()))
              for j in range(len(stage))]
    last = max(int(k.split(".")[1]) for k in state if k.startswith("features."))

    def module(name: str) -> str | None:
        parts = name.split(".")
        if name == "classifier.1":
            return "classifier"
        if parts[0] != "features" or len(parts) < 3 or not parts[1].isdigit():
            return None
        index, rest = int(parts[1]), ".".join(parts[2:])
        if rest.startswith("conv."):
            if not 1 <= index <= len(blocks):
                return None
            kind = "expand" if f"features.{index}.conv.3.weight" in state else "no_expand"
            layer = _BLOCK_LAYERS[kind].get(rest)
            return f"{blocks[index - 1]}.{layer}" if layer else None
        ends = {0: {"0": "conv_stem", "1": "bn1"}, last: {"0": "conv_head", "1": "bn2"}}
        return ends.get(index, {}).get(rest)

    def rename(key: str) -> str | None:
        name, _, param = key.rpartition(".")
        target = module(name)
        return f"{target}.{param}" if target else None

    return rename


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the model's classifier, from timm's pretrained config."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{name}." for name in names)


def _misfit(path: Path, layout: str, model: nn.Module, detail: str) -> NoReturn:
    backbone = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    raise AbawError(f"--pretrained {path}: {layout} weights do not fit backbone '{backbone}': "
                    f"{detail} (supported: {SUPPORTED}; set model.backbone to match the file)")
