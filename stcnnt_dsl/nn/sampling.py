"""Resolution changes between levels and the U-Net's attention gate.

The modules work frame by frame on [B, T, C, H, W], except with `temporal` (the mixed
U-Netr's `halve_time`), where down- and up-sampling halve and double T as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import lean
from .cells import frames

__all__ = [
    "AttentionGate",
    "BlockResample",
    "Downsample",
    "PatchMerge",
    "Upsample",
    "WindowPartition",
    "partition",
    "space_to_depth",
]


def space_to_depth(x: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, 4C, H/2, W/2]; channel groups are the 2x2 offsets (row, col)
    in the order (0,0), (1,0), (0,1), (1,1), each holding all C channels (as the
    reference's patch merging)."""
    return torch.cat(
        [x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]], dim=1
    )


class PatchMerge(nn.Module):
    """2x down-sampling by patch merging: 2x2 space-to-depth, then a 1x1 conv. With
    `temporal`, T is halved too: the 2x2 groups of even frames, then of odd frames
    (8C channels, the reference's 3-D patch merging order)."""

    def __init__(self, in_channels: int, out_channels: int, *, temporal: bool = False) -> None:
        super().__init__()
        self.temporal = temporal
        depth = 8 if temporal else 4
        self.conv = nn.Conv2d(depth * in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.temporal:
            return frames(lambda f: self.conv(space_to_depth(f)), x)
        even, odd = x[:, 0::2].flatten(0, 1), x[:, 1::2].flatten(0, 1)
        merged = torch.cat([space_to_depth(even), space_to_depth(odd)], dim=1)
        return self.conv(merged).unflatten(0, (x.shape[0], -1))


class Downsample(nn.Module):
    """`steps` x 2x down-sampling: patch merging (learned) or interpolation (2x2 mean,
    which is what bilinear interpolation to half size computes)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        steps: int = 1,
        mode: str = "merge",
        *,
        temporal: bool = False,
    ) -> None:
        super().__init__()
        self.mode = mode
        if mode == "merge":
            self.merges = nn.ModuleList(
                PatchMerge(in_channels if k == 0 else out_channels, out_channels, temporal=temporal)
                for k in range(steps)
            )
        else:
            if in_channels != out_channels:
                raise ValueError("interpolation cannot change the channels")
            self.steps = steps

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "merge":
            for merge in self.merges:
                x = merge(x)
            return x
        k = 2**self.steps
        return frames(lambda f: F.avg_pool2d(f, k), x)


class Upsample(nn.Module):
    """`steps` x (bilinear 2x up-sampling [+ 3x3 conv without bias]); with `temporal`,
    trilinear over (T, H, W) [+ 3x3x3 conv]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        steps: int = 1,
        *,
        conv: bool = True,
        padding: str = "zeros",
        temporal: bool = False,
    ) -> None:
        super().__init__()
        self.steps = steps
        self.temporal = temporal
        self.convs = None
        if conv:
            kind = nn.Conv3d if temporal else nn.Conv2d
            self.convs = nn.ModuleList(
                kind(
                    in_channels if k == 0 else out_channels,
                    out_channels,
                    3,
                    padding=1,
                    padding_mode=padding,
                    bias=False,
                )
                for k in range(steps)
            )
        elif in_channels != out_channels:
            raise ValueError("up-sampling without a conv cannot change the channels")

    def forward(self, x: Tensor) -> Tensor:
        if self.temporal:
            y = x.transpose(1, 2)  # [B, C, T, H, W]
            for k in range(self.steps):
                y = F.interpolate(y, scale_factor=2.0, mode="trilinear", align_corners=False)
                if self.convs is not None:
                    y = self.convs[k](y)
            return y.transpose(1, 2)

        def run(f: Tensor) -> Tensor:
            for k in range(self.steps):
                f = F.interpolate(f, scale_factor=2.0, mode="bilinear", align_corners=False)
                if self.convs is not None:
                    f = lean.conv2d(self.convs[k], f)
            return f

        return frames(run, x)


class AttentionGate(nn.Module):
    """Attention gate (Oktay et al. 2018): the coarser decoder feature `g` gates the
    encoder skip `x` with a learned [B, T, 1, H, W] sigmoid map:
    x * sigmoid(psi(relu(W_g g + W_x x)))."""

    def __init__(self, gate_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(gate_channels, skip_channels, 1, bias=False)
        self.key = nn.Conv2d(skip_channels, skip_channels, 1, bias=False)
        self.psi = nn.Conv2d(skip_channels, 1, 1, bias=False)

    def forward(self, g: Tensor, x: Tensor) -> Tensor:
        gf, xf = g.flatten(0, 1), x.flatten(0, 1)
        mask = torch.sigmoid(self.psi(F.relu(self.query(gf) + self.key(xf))))
        return x * mask.unflatten(0, x.shape[:2])


class BlockResample(nn.Module):
    """Bilinear resampling by 2^steps (down for steps < 0, up for steps > 0), then a
    block of the target level (HR-Net's `resample: block`)."""

    def __init__(self, block: nn.Module, steps: int) -> None:
        super().__init__()
        self.block, self.factor = block, 2.0**steps

    def forward(self, x: Tensor) -> Tensor:
        x = frames(
            lambda f: F.interpolate(
                f, scale_factor=self.factor, mode="bilinear", align_corners=False
            ),
            x,
        )
        return self.block(x)


def partition(x: Tensor, *, temporal: bool = False, order: str = "space_to_depth") -> Tensor:
    """[B, T, C, H, W] -> [B, T, 4C, H/2, W/2] (temporal: [B, T/2, 8C, H/2, W/2]): 2x2
    (x2 frames) space-to-depth, channel-major (c*4 + dh*2 + dw; c*8 + dt*4 + dh*2 + dw).
    `order="reference"` (2-D only) is the reference's `WindowPartition2D`, which views
    the [C, H/2, W/2, 2, 2] layout as [4C, H/2, W/2]: each new channel holds a quarter of
    the rows' 2x2 blocks, not one offset (a fixed reshuffle of the pixels)."""
    b, t, c, h, w = x.shape
    if temporal:
        y = x.reshape(b, t // 2, 2, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 2, 5, 7, 4, 6)
        return y.reshape(b, t // 2, 8 * c, h // 2, w // 2)
    y = x.reshape(b, t, c, h // 2, 2, w // 2, 2)
    y = y.permute(0, 1, 2, 3, 5, 4, 6) if order == "reference" else y.permute(0, 1, 2, 4, 6, 3, 5)
    return y.reshape(b, t, 4 * c, h // 2, w // 2)


class WindowPartition(nn.Module):
    """The mixed U-Netr's input stage: `partition`, then a 3x3x3 (`conv_temporal`) or
    3x3 conv without bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        temporal: bool,
        conv_temporal: bool,
        order: str = "space_to_depth",
        padding: str = "zeros",
    ) -> None:
        super().__init__()
        self.temporal, self.order, self.conv_temporal = temporal, order, conv_temporal
        depth = 8 if temporal else 4
        kind = nn.Conv3d if conv_temporal else nn.Conv2d
        self.conv = kind(
            depth * in_channels, out_channels, 3, padding=1, padding_mode=padding, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        y = partition(x, temporal=self.temporal, order=self.order)
        if self.conv_temporal:
            return self.conv(y.transpose(1, 2)).transpose(1, 2)
        return frames(self.conv, y)
