"""Sequence networks that label every frame of a window of per-frame embeddings.

Both take ``x`` [B, L, D] and ``mask`` [B, L] (True: the frame has a face) and return logits
[B, L, classes]. Masked frames are zero inputs and never attended to (Transformer) or are
flagged by an extra input channel (TCN, whose convolutions cannot skip them); their outputs
are ignored by the loss and by stitching. ``WindowCentred`` (``temporal.centre``) and
``FrameResidual`` (``temporal.residual``) wrap them; with ``temporal.centre_over: video`` they also
take ``centre`` [B, D], the mean embedding of each window's video.

- ``transformer``: linear projection, positional encoding (sinusoidal, learned or none), a
  pre-norm ``nn.TransformerEncoder`` with the key-padding mask, a linear head.
- ``tcn``: a non-causal dilated temporal convolution network (kernel 3, dilation 1, 2, 4, ...
  per block, residual), so the receptive field doubles per block: 2^(depth+1) - 1 frames.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from abaw_kit.classes import NUM_CLASSES
from abaw_kit.config import TEMPORAL_MODELS, TEMPORAL_POSITIONAL, TemporalConfig


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """[length, width] sine/cosine positional encoding (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32)
                          * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : width // 2]
    return table


class TemporalTransformer(nn.Module):
    """Per-frame labels from a Transformer encoder over the window."""

    def __init__(self, dim_in: int, *, width: int = 256, depth: int = 4, heads: int = 4,
                 dropout: float = 0.1, max_len: int = 1024, positional: str = "sinusoidal",
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        if positional not in TEMPORAL_POSITIONAL:
            raise ValueError(f"positional must be one of {TEMPORAL_POSITIONAL}, got {positional!r}")
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.max_len = max_len
        self.project = nn.Sequential(nn.LayerNorm(dim_in), nn.Linear(dim_in, width),
                                     nn.Dropout(dropout))
        self.positional = positional
        if positional == "learned":
            self.positions = nn.Parameter(torch.zeros(max_len, width))
            nn.init.trunc_normal_(self.positions, std=0.02)
        elif positional == "sinusoidal":
            self.register_buffer("positions", sinusoidal_positions(max_len, width),
                                 persistent=False)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width,
                                           dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"window of {length} frames > max_len {self.max_len}")
        hidden = self.project(x)
        if self.positional != "none":
            hidden = hidden + self.positions[:length].to(hidden.dtype)
        # a window without any face would make every attention row empty (NaN): let such
        # windows attend to everything; their outputs are ignored anyway
        padding = ~mask & mask.any(dim=1, keepdim=True)
        return self.head(self.encoder(hidden, src_key_padding_mask=padding))


class _DilatedBlock(nn.Module):
    def __init__(self, width: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm1d(width), nn.GELU(), nn.Dropout(dropout),
            nn.Conv1d(width, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class TemporalTCN(nn.Module):
    """Per-frame labels from a non-causal dilated TCN over the window."""

    def __init__(self, dim_in: int, *, width: int = 256, depth: int = 4, dropout: float = 0.1,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.LayerNorm(dim_in + 1), nn.Linear(dim_in + 1, width))
        self.blocks = nn.Sequential(*(_DilatedBlock(width, 2 ** i, dropout)
                                      for i in range(depth)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        flagged = torch.cat([x * mask[..., None], mask[..., None].to(x.dtype)], dim=-1)
        hidden = self.project(flagged).transpose(1, 2)  # [B, width, L]
        return self.head(self.blocks(hidden).transpose(1, 2))


class WindowCentred(nn.Module):
    """Feeds ``net`` each frame's embedding and its difference from the subject's mean
    embedding: ``centre`` [B, D] when given (the whole video's mean, ``temporal.centre_over:
    video``), else the mean of the window's frames with a face.

    Why: a window shows one subject, so the mean carries who it is (and the lighting, the
    pose), and the difference carries what changes: the expression. A frame model that has
    learned its training people confuses identity with expression on new people; the
    difference is the same for everyone.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                centre: torch.Tensor | None = None) -> torch.Tensor:
        weight = mask[..., None].to(x.dtype)
        if centre is None:
            mean = (x * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1.0)
        else:
            mean = centre[:, None, :].to(x.dtype)
        return self.net(torch.cat([x, (x - mean) * weight], dim=-1), mask)


class FrameResidual(nn.Module):
    """The frame model's own logits plus the sequence network's correction, which starts at 0.

    The frame classifier (weights copied from the run, frozen, saved with the temporal model)
    maps each embedding to the logits the frame model gives; the network adds what the
    neighbouring frames say. Why: the frame model has fitted the train frames, so a sequence
    model trained from scratch on their embeddings learns to trust each frame's clean
    embedding and overfits the train people; anchored at the frame prediction, it starts as
    good as the frame model on new people and has only the correction to learn.
    """

    def __init__(self, net: nn.Module, dim_in: int, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("frame_weight", torch.zeros(num_classes, dim_in))
        self.register_buffer("frame_bias", torch.zeros(num_classes))
        output = output_layer(net)
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)

    def set_frame_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.frame_weight.copy_(weight)
        self.frame_bias.copy_(bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                centre: torch.Tensor | None = None) -> torch.Tensor:
        frame = nn.functional.linear(x, self.frame_weight.to(x.dtype), self.frame_bias.to(x.dtype))
        inner = self.net(x, mask) if centre is None else self.net(x, mask, centre)
        return frame + inner


def output_layer(net: nn.Module) -> nn.Linear:
    """The last linear layer of a network here (its ``head``), through ``WindowCentred``."""
    inner = net.net if isinstance(net, WindowCentred) else net
    head = inner.head[-1] if isinstance(inner.head, nn.Sequential) else inner.head
    assert isinstance(head, nn.Linear)
    return head


def build_temporal_model(t: TemporalConfig, dim_in: int, window: int) -> nn.Module:
    """The network the ``temporal`` config section describes, for ``dim_in``-d embeddings and
    windows of ``window`` frames (``FrameResidual`` around it with ``temporal.residual``; its
    frame head is set by the trainer, or loaded with the weights)."""
    net = make_temporal_model(t.model, dim_in, width=t.width, depth=t.depth, heads=t.heads,
                              dropout=t.dropout, max_len=window, positional=t.positional,
                              centre=t.centre)
    return FrameResidual(net, dim_in) if t.residual else net


def make_temporal_model(architecture: str, dim_in: int, *, width: int, depth: int, heads: int,
                        dropout: float, max_len: int, positional: str,
                        centre: bool = False) -> nn.Module:
    """The ``architecture`` network ("transformer" or "tcn") for ``dim_in``-d embeddings;
    ``centre`` adds each frame's offset from the window mean as input (``WindowCentred``)."""
    width_in = 2 * dim_in if centre else dim_in
    if architecture == "transformer":
        net: nn.Module = TemporalTransformer(width_in, width=width, depth=depth, heads=heads,
                                             dropout=dropout, max_len=max_len,
                                             positional=positional)
    elif architecture == "tcn":
        net = TemporalTCN(width_in, width=width, depth=depth, dropout=dropout)
    else:
        raise ValueError(f"unknown temporal model {architecture!r}: choose one of "
                         f"{TEMPORAL_MODELS}")
    return WindowCentred(net) if centre else net
