"""Views computed where the model is (``data.views: device``): the weak crop + flip and timm's
RandAugment as batched tensor operations.

Why: on a GPU server the loader workers' PIL views cost most of their CPU (about 0.3 ms of
box resize and 0.45 ms of RandAugment per image, issue #14), so an H100 waits for them. Here
the workers only decode the faces and draw each image's parameters (crop box, flip, operations,
magnitudes) from the batch's own RNG, exactly as the PIL path draws them, so batch k stays a
function of (seed, stream, rank, k) and an exact resume holds; the training step applies them
on the model's device (CPU included) before normalising.

How close it is to the PIL path (``tests/test_device_views.py`` measures it on the same
parameters): colour operations within 0.6 grey levels per pixel on average (PIL's integer
rounding); rotate, shear and translate within 0.8, the differences along the edges, where PIL
handles the border its own way; the weak crop within 0.5 (an area average against PIL's
antialiased bilinear). timm draws bilinear or bicubic for each geometric operation; here it is
always bilinear (the draw is still made, so the random streams stay in step). ``GaussianBlur``
and ``GaussianBlurRand`` (timm's '3a' sets) have no batched version: a spec using them is a
config error with device views.

Parameters travel as small batch-first tensors (``WeakParams``, ``StrongParams``, which pin
like any batch part when the loader pins memory).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.transforms.v2.functional import equalize

from abaw_kit.errors import AbawError

FILL = 128.0  # grey that geometric operations pull in from outside the face (timm's img_mean)
NO_OP = -1


@dataclass
class WeakParams:
    """Per image: the crop box (left, top, right, bottom, in pixels of the stored face) and
    whether it is flipped."""

    boxes: Tensor  # float32 [B, 4]
    flips: Tensor  # bool [B]

    def to(self, device: torch.device) -> WeakParams:
        return WeakParams(self.boxes.to(device, non_blocking=True),
                          self.flips.to(device, non_blocking=True))

    def pin_memory(self) -> WeakParams:  # called by DataLoader(pin_memory=True)
        return WeakParams(self.boxes.pin_memory(), self.flips.pin_memory())


@dataclass
class StrongParams:
    """Per image and RandAugment layer: the operation (index into ``OPERATIONS``, ``NO_OP``
    where the layer's coin said skip) and its argument as timm's level function gave it."""

    ops: Tensor  # int64 [B, layers]
    args: Tensor  # float32 [B, layers]

    def pin_memory(self) -> StrongParams:  # called by DataLoader(pin_memory=True)
        return StrongParams(self.ops.pin_memory(), self.args.pin_memory())


# ---------------------------------------------------------------------------------------------
# Drawing the parameters (loader workers)


GEOMETRIC = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY",
                       "TranslateXRel", "TranslateYRel"})
"""timm's operations that also draw their interpolation (bilinear or bicubic) at random."""


class _Recorder:
    """Stands in for one timm operation's image function: records what it would be called with
    and returns the image unchanged. A geometric one also makes timm's random choice of
    interpolation (device views always resample bilinearly), so the global RNGs advance as in
    the PIL path and both paths draw the same parameters from the same seed."""

    def __init__(self, name: str, sink: list[tuple[str, float]]) -> None:
        self.name, self.sink = name, sink

    def __call__(self, img: Any, *level_args: Any, **kwargs: Any) -> Any:
        resample = kwargs.get("resample")
        if self.name in GEOMETRIC and isinstance(resample, (list, tuple)):
            random.choice(resample)
        self.sink.append((self.name, float(level_args[0]) if level_args else 0.0))
        return img


class StrongParamDrawer:
    """Draws RandAugment parameters with timm's own RandAugment object, so the choice of
    operations, their coins, magnitude noise, clipping, signs and level mapping are timm's (of
    whatever spec), from the same global RNGs the PIL path uses (``seeded_globals``)."""

    def __init__(self, randaugment: Any, spec: str) -> None:
        names = [op.name for op in randaugment.ops]
        unsupported = sorted(set(names) - set(OPERATIONS))
        if unsupported:
            raise AbawError(f"data.randaugment '{spec}': {', '.join(unsupported)} has no batched "
                            "version for data.views=device (supported: "
                            f"{', '.join(OPERATIONS)}); use data.views=worker")
        self.layers = int(randaugment.num_layers)
        self.sink: list[tuple[str, float]] = []
        self.recording = copy.copy(randaugment)
        self.recording.ops = []
        for op in randaugment.ops:
            clone = copy.copy(op)
            clone.aug_fn = _Recorder(op.name, self.sink)
            self.recording.ops.append(clone)
        self.dummy = Image.new("RGB", (1, 1))

    def draw(self, count: int) -> StrongParams:
        ops = np.full((count, self.layers), NO_OP, np.int64)
        args = np.zeros((count, self.layers), np.float32)
        for b in range(count):
            self.sink.clear()
            self.recording(self.dummy)
            for layer, (name, arg) in enumerate(self.sink):
                ops[b, layer], args[b, layer] = OP_INDEX[name], arg
        return StrongParams(torch.from_numpy(ops), torch.from_numpy(args))


def weak_params(boxes: list[tuple[float, float, float, float]], flips: list[bool]) -> WeakParams:
    return WeakParams(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                      torch.tensor(flips, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# Applying them (the training step, on the model's device)


def weak_views(faces: Tensor, params: WeakParams, size: int) -> Tensor:
    """uint8 NHWC faces -> float NCHW weak views (0..255, whole grey levels) of ``size``.

    ``roi_align`` averages ceil(box / size) bilinear samples per output pixel, an area filter
    close to PIL's box resize when it shrinks (no aliasing) and plain bilinear when it grows.
    """
    x = faces.to(params.boxes.device, non_blocking=True).permute(0, 3, 1, 2).float()
    rois = torch.cat([torch.arange(len(x), device=x.device, dtype=x.dtype)[:, None],
                      params.boxes.to(x.dtype)], dim=1)
    out = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                    aligned=True)
    out = torch.where(params.flips[:, None, None, None], out.flip(-1), out)
    return out.round().clamp(0, 255)


def strong_views(weak: Tensor, params: StrongParams) -> Tensor:
    """float NCHW weak views -> RandAugment views: layer by layer, each operation on the
    images that drew it, rounded to whole grey levels after each (as PIL's uint8 images are).

    ``params`` stay on the CPU, where the loader delivered them: which images drew which
    operation is decided there, so a GPU step never waits for the host to read a mask back.
    """
    x = weak
    ops_cpu = params.ops.cpu()
    args = params.args.to(weak.device, non_blocking=True)
    for layer in range(ops_cpu.shape[1]):
        for index in torch.unique(ops_cpu[:, layer]).tolist():
            if index == NO_OP:
                continue
            chosen = torch.nonzero(ops_cpu[:, layer] == index).flatten().to(
                weak.device, non_blocking=True)
            operation = OPERATIONS[OP_NAMES[index]]
            x = x.index_copy(0, chosen, operation(x[chosen], args[chosen, layer]).round()
                             .clamp(0, 255))
    return x


def to_uint8_nhwc(x: Tensor) -> Tensor:
    """The layout the PIL path delivers and ``Normalizer`` takes."""
    return x.to(torch.uint8).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------
# The operations: float NCHW images (0..255) and one argument per image [N]


def _per_image(values: Tensor) -> Tensor:
    return values[:, None, None, None]


def _grey(x: Tensor) -> Tensor:
    """PIL's RGB -> L: 0.299 R + 0.587 G + 0.114 B, rounded; [N, 1, H, W]."""
    weights = x.new_tensor([0.299, 0.587, 0.114])[None, :, None, None]
    return (x * weights).sum(dim=1, keepdim=True).round()


def _blend(x: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate)."""
    return degenerate + _per_image(factor) * (x - degenerate)


def _color(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, _grey(x).expand_as(x), factor)


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = (_grey(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor()
    return _blend(x, mean.expand_as(x), factor)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, /13) as the degenerate; the border keeps its pixels."""
    kernel = x.new_ones(3, 1, 3, 3)
    kernel[:, :, 1, 1] = 5.0
    smooth = F.conv2d(x, kernel / 13.0, groups=3).round()
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(x, degenerate, factor)


def _auto_contrast(x: Tensor, _: Tensor) -> Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    scale = 255.0 / (high - low).clamp(min=1.0)
    stretched = (x * scale - low * scale).floor().clamp(0, 255)
    return torch.where(high > low, stretched, x)


def _equalize(x: Tensor, _: Tensor) -> Tensor:
    return equalize(x.to(torch.uint8)).float()


def _invert(x: Tensor, _: Tensor) -> Tensor:
    return 255.0 - x


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    step = _per_image(torch.exp2(8.0 - bits.clamp(0, 8)))
    return torch.where(_per_image(bits) >= 8, x, (x / step).floor() * step)


def _solarize(x: Tensor, threshold: Tensor) -> Tensor:
    return torch.where(x >= _per_image(threshold), 255.0 - x, x)


def _solarize_add(x: Tensor, add: Tensor) -> Tensor:
    return torch.where(x < 128, (x + _per_image(add)).clamp(max=255), x)


def _affine(x: Tensor, matrices: Tensor) -> Tensor:
    """Resample with per-image affine maps [N, 2, 3] from output to input pixel coordinates
    (pixel centres at +0.5, as PIL's ``Image.transform``); outside the face is ``FILL``."""
    size_w, size_h = x.shape[-1], x.shape[-2]
    to_pixels = x.new_tensor([[size_w / 2, 0, size_w / 2], [0, size_h / 2, size_h / 2],
                              [0, 0, 1]])
    from_pixels = x.new_tensor([[2 / size_w, 0, -1], [0, 2 / size_h, -1], [0, 0, 1]])
    full = torch.cat([matrices, x.new_tensor([0, 0, 1]).expand(len(x), 1, 3)], dim=1)
    theta = from_pixels @ full @ to_pixels
    grid = F.affine_grid(theta[:, :2], list(x.shape), align_corners=False)
    return F.grid_sample(x - FILL, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + FILL


def _matrices(n: int, x: Tensor) -> Tensor:
    return torch.eye(2, 3, dtype=x.dtype, device=x.device).repeat(n, 1, 1)


def _shear_x(x: Tensor, factor: Tensor) -> Tensor:
    m = _matrices(len(x), x)
    m[:, 0, 1] = factor
    return _affine(x, m)


def _shear_y(x: Tensor, factor: Tensor) -> Tensor:
    m = _matrices(len(x), x)
    m[:, 1, 0] = factor
    return _affine(x, m)


def _translate_x(x: Tensor, pixels: Tensor) -> Tensor:
    m = _matrices(len(x), x)
    m[:, 0, 2] = pixels
    return _affine(x, m)


def _translate_y(x: Tensor, pixels: Tensor) -> Tensor:
    m = _matrices(len(x), x)
    m[:, 1, 2] = pixels
    return _affine(x, m)


def _translate_x_rel(x: Tensor, fraction: Tensor) -> Tensor:
    return _translate_x(x, fraction * x.shape[-1])


def _translate_y_rel(x: Tensor, fraction: Tensor) -> Tensor:
    return _translate_y(x, fraction * x.shape[-2])


def _rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """PIL's ``Image.rotate``: counter-clockwise about the centre."""
    angle = -degrees * (math.pi / 180.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    centre_x, centre_y = x.shape[-1] / 2, x.shape[-2] / 2
    m = torch.stack([torch.stack([cos, sin, centre_x - cos * centre_x - sin * centre_y], -1),
                     torch.stack([-sin, cos, centre_y + sin * centre_x - cos * centre_y], -1)],
                    dim=1)
    return _affine(x, m)


def _desaturate(x: Tensor, factor: Tensor) -> Tensor:
    return _color(x, (1.0 - factor).clamp(0.0, 1.0))


Operation = Callable[[Tensor, Tensor], Tensor]
OPERATIONS: dict[str, Operation] = {
    "AutoContrast": _auto_contrast,
    "Equalize": _equalize,
    "Invert": _invert,
    "Rotate": _rotate,
    "Posterize": _posterize,
    "PosterizeIncreasing": _posterize,
    "PosterizeOriginal": _posterize,
    "Solarize": _solarize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _color,
    "ColorIncreasing": _color,
    "Contrast": _contrast,
    "ContrastIncreasing": _contrast,
    "Brightness": _brightness,
    "BrightnessIncreasing": _brightness,
    "Sharpness": _sharpness,
    "SharpnessIncreasing": _sharpness,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "TranslateXRel": _translate_x_rel,
    "TranslateYRel": _translate_y_rel,
    "Desaturate": _desaturate,
}
"""timm's RandAugment operation names -> batched versions (same argument as timm's op)."""
OP_NAMES = tuple(OPERATIONS)
OP_INDEX = {name: i for i, name in enumerate(OP_NAMES)}


@torch.no_grad()
def labelled_views(faces: Tensor, crops: WeakParams, device: torch.device, size: int) -> Tensor:
    """A labelled batch's weak views on ``device``, uint8 NHWC."""
    return to_uint8_nhwc(weak_views(faces, crops.to(device), size))


@torch.no_grad()
def unlabelled_views(faces: Tensor, crops: WeakParams, augment: StrongParams,
                     device: torch.device, size: int) -> tuple[Tensor, Tensor]:
    """An unlabelled batch's weak and strong views on ``device``, uint8 NHWC."""
    weak = weak_views(faces, crops.to(device), size)
    return to_uint8_nhwc(weak), to_uint8_nhwc(strong_views(weak, augment))
