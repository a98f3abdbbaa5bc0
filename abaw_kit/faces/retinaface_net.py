"""RetinaFace (backbone + FPN + SSH + class/box/landmark heads), prior boxes and box decoding.

Two backbones, one head design, so that both released weight files load with strict key and
shape checks:

- ``resnet50``: the ``retinaface-pytorch`` package (ternaus/retinaface, ``resnet50_2020-07-20``):
  ``body.*`` is torchvision's ResNet-50 up to layer4 (no fc), FPN width 256, plain ReLU;
- ``mobilenet0.25``: biubug6's ``mobilenet0.25_Final.pth`` (Face-Detector-1MB-with-landmark,
  MIT): ``body.stage{1,2,3}`` is a MobileNetV1 at width 0.25, FPN width 64. Measured on real
  faces (tests/test_faces_real.py): this file was trained with plain ReLU and the smaller
  anchors (10, 20), (32, 64), (128, 256) of that repository's 300-pixel training, not with the
  leaky ReLU and (16, 32) ... (256, 512) anchors of the Pytorch_Retinaface MobileNet: with
  those, the astronaut photo gets 8 "faces" at 640 pixels and the landmarks miss the eyes.

Shared names: ``fpn.output{1,2,3}``, ``fpn.merge{1,2}``, ``ssh{1,2,3}.conv3X3 / conv5X5_1 /
conv5X5_2 / conv7X7_2 / conv7x7_3`` (sic: the last one has a lower-case x),
``ClassHead.i.conv1x1``, ``BboxHead.i.conv1x1``, ``LandmarkHead.i.conv1x1``. Two anchors per
location on strides 8/16/32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter

STEPS: tuple[int, ...] = (8, 16, 32)
VARIANCE: tuple[float, float] = (0.1, 0.2)
ANCHORS_PER_LOCATION = 2


@dataclass(frozen=True)
class Architecture:
    """What differs between the two released RetinaFace networks."""

    backbone_channels: tuple[int, int, int]  # the three stages the FPN reads
    fpn_channels: int
    min_sizes: tuple[tuple[int, int], ...]  # anchor sizes (input pixels) per stride


ARCHITECTURES: dict[str, Architecture] = {
    "resnet50": Architecture((512, 1024, 2048), 256,  # layer2, layer3, layer4
                             ((16, 32), (64, 128), (256, 512))),
    "mobilenet0.25": Architecture((64, 128, 256), 64,  # stage1, stage2, stage3
                                  ((10, 20), (32, 64), (128, 256))),
}


def _conv_bn(in_ch: int, out_ch: int, kernel: int, relu: bool, stride: int = 1,
             groups: int = 1) -> list[nn.Module]:
    """Conv (no bias) + BatchNorm (+ activation), as a list so that blocks can be chained with
    the weights' own indices (0 conv, 1 BN, 2 activation, 3 conv, ...)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False,
                  groups=groups),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def _block(in_ch: int, out_ch: int, kernel: int, relu: bool) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(in_ch, out_ch, kernel, relu))


def _depthwise_separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """MobileNetV1 unit: 3x3 depthwise (stride) then 1x1 pointwise, each with BN + ReLU."""
    return nn.Sequential(*_conv_bn(in_ch, in_ch, 3, True, stride=stride, groups=in_ch),
                         *_conv_bn(in_ch, out_ch, 1, True))


class MobileNetV1Quarter(nn.Module):
    """MobileNetV1 at width 0.25 as three stages (strides 8, 16, 32; 64, 128, 256 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            nn.Sequential(*_conv_bn(3, 8, 3, True, stride=2)),
            _depthwise_separable(8, 16, 1), _depthwise_separable(16, 32, 2),
            _depthwise_separable(32, 32, 1), _depthwise_separable(32, 64, 2),
            _depthwise_separable(64, 64, 1))
        self.stage2 = nn.Sequential(_depthwise_separable(64, 128, 2),
                                    *(_depthwise_separable(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(_depthwise_separable(128, 256, 2),
                                    _depthwise_separable(256, 256, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fine = self.stage1(images)
        middle = self.stage2(fine)
        return {"1": fine, "2": middle, "3": self.stage3(middle)}


class FeaturePyramid(nn.Module):
    """Top-down merge of the three backbone stages into ``out_channels`` maps."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        self.output1 = _block(in_channels[0], out_channels, 1, True)
        self.output2 = _block(in_channels[1], out_channels, 1, True)
        self.output3 = _block(in_channels[2], out_channels, 1, True)
        self.merge1 = _block(out_channels, out_channels, 3, True)
        self.merge2 = _block(out_channels, out_channels, 3, True)

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        fine, middle, coarse = (self.output1(stages[0]), self.output2(stages[1]),
                                self.output3(stages[2]))
        middle = self.merge2(middle + F.interpolate(coarse, size=middle.shape[-2:],
                                                    mode="nearest"))
        fine = self.merge1(fine + F.interpolate(middle, size=fine.shape[-2:], mode="nearest"))
        return [fine, middle, coarse]


class ContextModule(nn.Module):
    """SSH context module: parallel 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) receptive fields."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half, quarter = channels // 2, channels // 4
        self.conv3X3 = _block(channels, half, 3, False)
        self.conv5X5_1 = _block(channels, quarter, 3, True)
        self.conv5X5_2 = _block(quarter, quarter, 3, False)
        self.conv7X7_2 = _block(quarter, quarter, 3, True)
        self.conv7x7_3 = _block(quarter, quarter, 3, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.conv5X5_1(x)
        branches = [self.conv3X3(x), self.conv5X5_2(shared),
                    self.conv7x7_3(self.conv7X7_2(shared))]
        return F.relu(torch.cat(branches, dim=1))


class AnchorHead(nn.Module):
    """1x1 conv predicting ``values`` numbers per anchor; output [B, H*W*anchors, values]."""

    def __init__(self, channels: int, values: int, anchors: int = ANCHORS_PER_LOCATION) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(channels, anchors * values, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFaceNet(nn.Module):
    """Images [B,3,H,W] normalised -> (boxes [B,N,4], logits [B,N,2], landmarks [B,N,10])."""

    def __init__(self, backbone: str = "resnet50") -> None:
        super().__init__()
        if backbone not in ARCHITECTURES:
            raise ValueError(f"unknown RetinaFace backbone {backbone!r}: "
                             f"choose one of {', '.join(ARCHITECTURES)}")
        arch = ARCHITECTURES[backbone]
        self.backbone = backbone
        self.body: nn.Module = (
            MobileNetV1Quarter() if backbone == "mobilenet0.25" else
            IntermediateLayerGetter(resnet50(weights=None),
                                    return_layers={"layer2": "1", "layer3": "2", "layer4": "3"}))
        width = arch.fpn_channels
        self.fpn = FeaturePyramid(arch.backbone_channels, width)
        self.ssh1 = ContextModule(width)
        self.ssh2 = ContextModule(width)
        self.ssh3 = ContextModule(width)
        self.ClassHead = nn.ModuleList(AnchorHead(width, 2) for _ in STEPS)
        self.BboxHead = nn.ModuleList(AnchorHead(width, 4) for _ in STEPS)
        self.LandmarkHead = nn.ModuleList(AnchorHead(width, 10) for _ in STEPS)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pyramid = self.fpn(list(self.body(images).values()))
        contexts = (self.ssh1, self.ssh2, self.ssh3)
        features = [ssh(level) for ssh, level in zip(contexts, pyramid, strict=True)]
        return (self._run_heads(self.BboxHead, features), self._run_heads(self.ClassHead, features),
                self._run_heads(self.LandmarkHead, features))

    @staticmethod
    def _run_heads(heads: nn.ModuleList, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([head(f) for head, f in zip(heads, features, strict=True)], dim=1)


def prior_boxes(height: int, width: int, backbone: str = "resnet50") -> torch.Tensor:
    """Anchors [N,4] as (cx, cy, w, h) relative to the input size, in the heads' output order.

    Per stride: rows, then columns, then the two anchor sizes; feature maps are ceil(size/step),
    which is what both backbones' padded stride-2 convolutions produce for any input size.
    """
    levels = []
    for step, sizes in zip(STEPS, ARCHITECTURES[backbone].min_sizes, strict=True):
        rows, cols = -(-height // step), -(-width // step)
        cy, cx = torch.meshgrid((torch.arange(rows) + 0.5) * step / height,
                                (torch.arange(cols) + 0.5) * step / width, indexing="ij")
        centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        extents = torch.tensor([[s / width, s / height] for s in sizes]).expand_as(centres)
        levels.append(torch.cat([centres, extents], dim=-1).reshape(-1, 4))
    return torch.cat(levels).float()


def decode_boxes(offsets: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Regression offsets [..., N, 4] -> boxes (x1, y1, x2, y2) relative to the input size."""
    centres = priors[:, :2] + offsets[..., :2] * VARIANCE[0] * priors[:, 2:]
    extents = priors[:, 2:] * torch.exp(offsets[..., 2:] * VARIANCE[1])
    return torch.cat([centres - extents / 2, centres + extents / 2], dim=-1)


def decode_landmarks(offsets: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Landmark offsets [..., N, 10] -> points [..., N, 5, 2] relative to the input size."""
    points = offsets.reshape(*offsets.shape[:-1], 5, 2)
    return priors[:, None, :2] + points * VARIANCE[0] * priors[:, None, 2:]
