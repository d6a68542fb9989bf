"""Checks of the tensors users pass in: rank, channels, dtype. One message each."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ShapeError

__all__ = ["check_input_tensor"]


def check_input_tensor(
    x: object, in_channels: int, where: str, *, like: Tensor | None = None
) -> None:
    """Raise a `ShapeError` unless `x` is a floating [B, T, C, H, W] tensor with
    `in_channels` channels, on the device and (outside autocast) in the dtype of the
    module's parameter `like`."""
    if not isinstance(x, Tensor):
        raise ShapeError(
            f"{where}: expected a torch.Tensor [B, T, C, H, W], got {type(x).__name__}",
            rule="input is a tensor",
        )
    if x.dim() != 5:
        hint = ""
        if x.dim() == 4:
            hint = (
                "; a batch of 2D images [B, C, H, W] is x.unsqueeze(1) (T=1), and a "
                "[B, C, T, H, W] volume is x.transpose(1, 2)"
            )
        raise ShapeError(
            f"{where}: expected a 5-D tensor [B, T, C, H, W] (T = time frames, or slices "
            f"of a 3D volume, or 1 for 2D images); got {x.dim()}-D shape {tuple(x.shape)}" + hint,
            rule="input rank is 5",
        )
    if not torch.is_floating_point(x):
        raise ShapeError(
            f"{where}: expected a floating-point tensor (float32, float64, bfloat16 or "
            f"float16), got {x.dtype}; convert with x.float()",
            rule="input is floating point",
        )
    b, t, c, h, w = x.shape
    if c != in_channels:
        transposed = (
            "; it looks like [B, C, T, H, W]: use x.transpose(1, 2)" if t == in_channels else ""
        )
        raise ShapeError(
            f"{where}: expected {in_channels} input channels at dim 2 of [B, T, C, H, W], "
            f"got shape {tuple(x.shape)}" + transposed,
            rule="input channels",
        )
    if like is not None:
        _check_like(x, like, where)
    if min(b, t, h, w) < 1:
        raise ShapeError(
            f"{where}: every dimension of [B, T, C, H, W] must be >= 1, got {tuple(x.shape)}",
            rule="non-empty input",
        )


def _check_like(x: Tensor, like: Tensor, where: str) -> None:
    if like.device.type == "meta":
        return
    if x.device != like.device:
        raise ShapeError(
            f"{where}: the input is on {x.device} but the weights are on {like.device}; "
            f"move one of them: x.to({str(like.device)!r}) or model.to({str(x.device)!r})",
            rule="input device",
        )
    if x.dtype != like.dtype and not torch.is_autocast_enabled(x.device.type):
        name = str(like.dtype).removeprefix("torch.")
        raise ShapeError(
            f"{where}: the input is {str(x.dtype).removeprefix('torch.')} but the weights are "
            f"{name}; convert the input (x.to(torch.{name})), the model "
            f"(model.to(torch.{str(x.dtype).removeprefix('torch.')})), or run under "
            "torch.autocast",
            rule="input dtype",
        )
