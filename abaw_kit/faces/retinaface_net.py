"""RetinaFace (ResNet-50 + FPN + SSH + class/box/landmark heads), prior boxes and box decoding.

Module and parameter names follow the released weights of the ``retinaface-pytorch`` package
(ternaus/retinaface, ``resnet50_2020-07-20``) so that its state dict loads with strict key and
shape checks: ``body.*`` (torchvision ResNet-50 up to layer4, no fc), ``fpn.output{1,2,3}``,
``fpn.merge{1,2}``, ``ssh{1,2,3}.conv3X3 / conv5X5_1 / conv5X5_2 / conv7X7_2 / conv7x7_3``
(sic: the last one has a lower-case x), ``ClassHead.i.conv1x1``, ``BboxHead.i.conv1x1``,
``LandmarkHead.i.conv1x1``. Two anchors per location on strides 8/16/32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter

MIN_SIZES: tuple[tuple[int, int], ...] = ((16, 32), (64, 128), (256, 512))
STEPS: tuple[int, ...] = (8, 16, 32)
VARIANCE: tuple[float, float] = (0.1, 0.2)
ANCHORS_PER_LOCATION = 2
FPN_CHANNELS = 256
BACKBONE_CHANNELS = (512, 1024, 2048)  # ResNet-50 layer2, layer3, layer4


def _conv_bn(in_ch: int, out_ch: int, kernel: int, relu: bool) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU): indices 0 and 1 carry the weights' key names."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=1, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FeaturePyramid(nn.Module):
    """Top-down merge of the three backbone stages into FPN_CHANNELS maps."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out_channels, 1, relu=True)
        self.output2 = _conv_bn(in_channels[1], out_channels, 1, relu=True)
        self.output3 = _conv_bn(in_channels[2], out_channels, 1, relu=True)
        self.merge1 = _conv_bn(out_channels, out_channels, 3, relu=True)
        self.merge2 = _conv_bn(out_channels, out_channels, 3, relu=True)

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
        self.conv3X3 = _conv_bn(channels, half, 3, relu=False)
        self.conv5X5_1 = _conv_bn(channels, quarter, 3, relu=True)
        self.conv5X5_2 = _conv_bn(quarter, quarter, 3, relu=False)
        self.conv7X7_2 = _conv_bn(quarter, quarter, 3, relu=True)
        self.conv7x7_3 = _conv_bn(quarter, quarter, 3, relu=False)

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

    def __init__(self) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(
            resnet50(weights=None), return_layers={"layer2": "1", "layer3": "2", "layer4": "3"})
        self.fpn = FeaturePyramid(BACKBONE_CHANNELS, FPN_CHANNELS)
        self.ssh1 = ContextModule(FPN_CHANNELS)
        self.ssh2 = ContextModule(FPN_CHANNELS)
        self.ssh3 = ContextModule(FPN_CHANNELS)
        self.ClassHead = nn.ModuleList(AnchorHead(FPN_CHANNELS, 2) for _ in STEPS)
        self.BboxHead = nn.ModuleList(AnchorHead(FPN_CHANNELS, 4) for _ in STEPS)
        self.LandmarkHead = nn.ModuleList(AnchorHead(FPN_CHANNELS, 10) for _ in STEPS)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pyramid = self.fpn(list(self.body(images).values()))
        contexts = (self.ssh1, self.ssh2, self.ssh3)
        features = [ssh(level) for ssh, level in zip(contexts, pyramid, strict=True)]
        return (self._run_heads(self.BboxHead, features), self._run_heads(self.ClassHead, features),
                self._run_heads(self.LandmarkHead, features))

    @staticmethod
    def _run_heads(heads: nn.ModuleList, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([head(f) for head, f in zip(heads, features, strict=True)], dim=1)


def prior_boxes(height: int, width: int) -> torch.Tensor:
    """Anchors [N,4] as (cx, cy, w, h) relative to the input size, in the heads' output order.

    Per stride: rows, then columns, then the two anchor sizes; feature maps are ceil(size/step),
    which is what ResNet's padded stride-2 convolutions produce for any input size.
    """
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
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
