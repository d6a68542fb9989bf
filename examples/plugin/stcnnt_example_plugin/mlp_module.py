"""The torch module of the MLP head (imported on first build, so that checking a spec
needs no torch)."""

from __future__ import annotations

from torch import Tensor, nn


class MLPHead(nn.Module):
    """[B, T, in_channels, H, W] -> [B, T, out_channels, H, W], per pixel."""

    def __init__(self, in_channels: int, out_channels: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: Tensor, output: Tensor, features: list[Tensor]) -> Tensor:
        y = self.conv2(self.act(self.conv1(output.flatten(0, 1))))
        return y.unflatten(0, output.shape[:2])
