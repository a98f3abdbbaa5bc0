"""Sequence networks that label every frame of a window of per-frame embeddings.

Both take ``x`` [B, L, D] and ``mask`` [B, L] (True: the frame has a face) and return logits
[B, L, classes]. Masked frames are zero inputs and never attended to (Transformer) or are
flagged by an extra input channel (TCN, whose convolutions cannot skip them); their outputs
are ignored by the loss and by stitching.

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

ARCHITECTURES = ("transformer", "tcn")
POSITIONAL = ("sinusoidal", "learned", "none")


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
        if positional not in POSITIONAL:
            raise ValueError(f"positional must be one of {POSITIONAL}, got {positional!r}")
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


def make_temporal_model(architecture: str, dim_in: int, *, width: int, depth: int, heads: int,
                        dropout: float, max_len: int, positional: str) -> nn.Module:
    """The ``architecture`` network ("transformer" or "tcn") for ``dim_in``-d embeddings."""
    if architecture == "transformer":
        return TemporalTransformer(dim_in, width=width, depth=depth, heads=heads,
                                   dropout=dropout, max_len=max_len, positional=positional)
    if architecture == "tcn":
        return TemporalTCN(dim_in, width=width, depth=depth, dropout=dropout)
    raise ValueError(f"unknown temporal model {architecture!r}: choose one of {ARCHITECTURES}")
