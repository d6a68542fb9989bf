"""The memory layout the layers share: [B, T, C, H, W] tensors stored channels-last.

Convolutions and the window partitions both run fastest when each frame is stored
[H, W, C]; converting once where a tensor enters a block or a backbone (a no-op when it
already is) keeps every later layer on that layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["channels_last_frames"]


def channels_last_frames(x: Tensor) -> Tensor:
    """`x` [B, T, C, H, W] with every frame stored channels-last (same values)."""
    frames = x.flatten(0, 1)
    if frames.is_contiguous(memory_format=torch.channels_last):
        return x
    return frames.contiguous(memory_format=torch.channels_last).unflatten(0, x.shape[:2])
