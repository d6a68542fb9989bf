"""Normalisations over [B, T, C, H, W] tensors, as the method defines them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SpecError

__all__ = ["Norm5d"]

_EPS = 1e-5


class Norm5d(nn.Module):
    """One of the method's norms on [B, T, C, H, W]:

    - `layer`: over (C, H, W) per frame, per-element affine (needs `input_size`);
    - `batch2d`: over (H, W) with B*T as the batch; `batch3d`: over (T, H, W);
    - `instance2d`: over (H, W) per frame and channel; `instance3d`: over (T, H, W).
    Instance norms have no affine parameters (as torch's and the reference's default).
    """

    def __init__(self, kind: str, channels: int, input_size: tuple[int, int] | None = None):
        super().__init__()
        self.kind = kind
        if kind == "layer":
            if input_size is None:
                raise SpecError(
                    "norm=layer normalises over [C, H, W] with per-element affine parameters, "
                    "so it needs the input size: pass input_size=(H, W) (or set input_size "
                    "at the top of the spec), or use instance2d/batch2d which accept any size",
                    "norm",
                )
            self.norm = nn.LayerNorm([channels, *input_size], eps=_EPS)
        elif kind == "batch2d":
            self.norm = nn.BatchNorm2d(channels, eps=_EPS)
        elif kind == "batch3d":
            self.norm = nn.BatchNorm3d(channels, eps=_EPS)
        elif kind not in ("instance2d", "instance3d"):
            raise SpecError(f"unknown norm {kind!r}", "norm")

    def forward(self, x: Tensor) -> Tensor:
        kind = self.kind
        if kind in ("instance2d", "instance3d"):
            dims = (-2, -1) if kind == "instance2d" else (1, -2, -1)
            # Statistics in float32 even under autocast: a bf16 variance over 65k pixels
            # loses most of its digits.
            xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            var, mean = torch.var_mean(xf, dim=dims, keepdim=True, correction=0)
            return ((xf - mean) * torch.rsqrt(var + _EPS)).to(x.dtype)
        if kind == "batch3d":
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        if kind == "layer":
            norm = self.norm
            return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return self.norm(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # batch2d
