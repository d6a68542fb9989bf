"""The memory layout the layers share: [B, T, C, H, W] tensors whose frames are stored
channels-last ([H, W, C]) or NCHW, as `tuning.choices()` says for this machine and for
inference or training.

Converting once where a tensor enters a block or a backbone (a no-op when it already
is) keeps every later layer on that layout; the layers that write new feature maps
(attention outputs) write them in it (`frames_channels_last`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import is_exporting
from .tuning import choices

__all__ = [
    "channels_last_frames",
    "frames_channels_last",
    "frames_in_layout",
    "weights_in_layout",
]


def frames_channels_last(x: Tensor) -> bool:
    """Whether feature maps like `x` are kept channels-last here (else NCHW): the
    machine's choice for training where autograd records, for inference elsewhere. An
    export is not run here: its graph is shaped for ONNX Runtime's CPU kernels, which
    want channels-last maps before the partitions on every machine (docs/export.md)."""
    if is_exporting():
        return True
    return choices(x.device).channels_last(training=torch.is_grad_enabled())


def frames_in_layout(x: Tensor) -> Tensor:
    """`x` [B, T, C, H, W] with every frame in the layout of `frames_channels_last`."""
    if frames_channels_last(x):
        return channels_last_frames(x)
    frames = x.flatten(0, 1)
    if frames.is_contiguous():
        return x
    return frames.contiguous().unflatten(0, x.shape[:2])


def channels_last_frames(x: Tensor) -> Tensor:
    """`x` [B, T, C, H, W] with every frame stored channels-last (same values)."""
    frames = x.flatten(0, 1)
    if frames.is_contiguous(memory_format=torch.channels_last):
        return x
    return frames.contiguous(memory_format=torch.channels_last).unflatten(0, x.shape[:2])


def weights_in_layout(module: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """Store `module`'s 2D convolution weights (in place) channels-last where the layers
    run channels-last for training and inference alike on `device` (`tuning.choices`),
    else NCHW. A convolution whose weight is not in its input's layout reorders the
    weight on every call, forward and backward: the reference U-Net's training step at
    1x8x1x64x64 is 4% faster with its weights stored channels-last. NCHW where either
    layout is NCHW: a channels-last weight makes a convolution's output channels-last,
    whatever its input's layout.

    `stcnnt train` calls this before training (not under FSDP2, which shards contiguous
    parameters only); `build` does not, so that a built model's parameters stay
    contiguous for whatever wraps them."""
    chosen = choices(device)
    both = chosen.channels_last(training=True) and chosen.channels_last(training=False)
    layout = torch.channels_last if both else torch.contiguous_format
    with torch.no_grad():
        for conv in module.modules():
            if isinstance(conv, nn.Conv2d) and not conv.weight.is_contiguous(memory_format=layout):
                conv.weight.data = conv.weight.data.contiguous(memory_format=layout)
    return module
