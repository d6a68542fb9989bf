"""Normalisations over [B, T, C, H, W] tensors, as the method defines them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SpecError, STCNNTError
from ..registry import NORMS
from .functional import is_exporting, plain_ops

__all__ = ["Norm5d", "instance_norm"]

_EPS = 1e-5
_HALF = (torch.float16, torch.bfloat16)
_SYNC_DEVICES = ("cuda", "hpu", "xpu")  # where torch's SyncBatchNorm synchronises


class _InstanceNorm(torch.autograd.Function):
    """(x - mean) / sqrt(var + eps) over `dims` (biased variance), without affine.

    Why a Function: `torch.var_mean` runs a scalar Welford loop (6x slower than the two
    vectorised passes used here on CPU), and autograd through the composite would keep
    x - mean alive for the backward. This keeps only the output (which the next conv
    keeps anyway) and the [.., 1, 1] reciprocal std, and the backward is one fused
    expression. Returns (y, rstd): rstd is an output so that double backward is exact.
    Statistics are in float32 for half-precision inputs.
    """

    @staticmethod
    def forward(ctx, x: Tensor, dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor]:
        xf = x.float() if x.dtype in _HALF else x
        mean = xf.mean(dims, keepdim=True)
        centred = xf - mean
        var = centred.square().mean(dims, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        y = centred.mul_(rstd).to(x.dtype)
        ctx.dims = dims
        ctx.count = centred.numel() // rstd.numel()
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(y, rstd)
        return y, rstd

    @staticmethod
    def backward(ctx, grad: Tensor | None, grad_rstd: Tensor | None):
        y, rstd = ctx.saved_tensors
        dims = ctx.dims
        yf = y.float() if y.dtype in _HALF else y
        gx = None
        if grad is not None:
            g = grad.float() if grad.dtype in _HALF else grad
            # dx = rstd * (g - mean(g) - y * mean(g * y))
            g_mean = g.mean(dims, keepdim=True)
            gy_mean = (g * yf).mean(dims, keepdim=True)
            gx = torch.addcmul(-g_mean * rstd, g, rstd)
            if torch.is_grad_enabled():  # double backward: no in-place ops
                gx = gx - yf * (gy_mean * rstd)
            else:
                gx = gx.addcmul_(yf, gy_mean * rstd, value=-1.0)
        if grad_rstd is not None:  # d rstd / dx = -rstd^2 * y / count
            term = yf * (grad_rstd * rstd.square() / -ctx.count)
            gx = term if gx is None else gx + term
        if gx is not None:
            gx = gx.to(grad.dtype if grad is not None else y.dtype)
        return gx, None, None


def instance_norm(x: Tensor, dims: tuple[int, ...], eps: float = _EPS) -> Tensor:
    """Normalise `x` over `dims` per remaining index (no affine), any memory format."""
    if is_exporting() and x.dim() == 5 and tuple(dims) == (-2, -1):
        # One ONNX InstanceNormalization per frame: ONNX Runtime's kernel took 4.3 ms
        # for [16, 32, 128, 128] where the ops below took 7.0 (one pass per op).
        return F.instance_norm(x.flatten(0, 1), eps=eps).unflatten(0, x.shape[:2])
    if plain_ops():  # the same two passes as plain ops, for tracers and dispatch modes
        xf = x.float() if x.dtype in _HALF else x
        centred = xf - xf.mean(dims, keepdim=True)
        var = centred.square().mean(dims, keepdim=True)
        return (centred * torch.rsqrt(var + eps)).to(x.dtype)
    return _InstanceNorm.apply(x, dims, eps)[0]


class Norm5d(nn.Module):
    """One of the method's norms on [B, T, C, H, W]:

    - `layer`: over (C, H, W) per frame, per-element affine (needs `input_size`);
    - `batch2d`: over (H, W) with B*T as the batch; `batch3d`: over (T, H, W);
    - `instance2d`: over (H, W) per frame and channel; `instance3d`: over (T, H, W).
    Instance norms have no affine parameters (as torch's and the reference's default).
    A norm registered with `stcnnt_dsl.register_norm` runs like batch2d, on [B*T, C, H, W].
    """

    def __init__(self, kind: str, channels: int, input_size: tuple[int, int] | None = None):
        super().__init__()
        self.kind = kind
        component = NORMS.get(kind)
        if component is not None and component.factory is not None:
            self.norm = component.factory(channels)
            self.kind = "registered"
        elif kind == "layer":
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
            raise SpecError(
                f"unknown norm {kind!r}; norms: {', '.join(NORMS)} (or register one with "
                "stcnnt_dsl.register_norm)",
                "norm",
            )

    def forward(self, x: Tensor) -> Tensor:
        kind = self.kind
        if kind in ("instance2d", "instance3d"):
            return instance_norm(x, (-2, -1) if kind == "instance2d" else (1, -2, -1))
        if isinstance(self.norm, nn.SyncBatchNorm):
            _check_sync_device(self.norm, x, kind)
        if kind == "batch3d":
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        if kind == "layer":
            norm = self.norm
            return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return self.norm(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # batch2d, registered


def _check_sync_device(norm: nn.SyncBatchNorm, x: Tensor, kind: str) -> None:
    """`torch.nn.SyncBatchNorm.convert_sync_batchnorm` replaces `.norm`; torch then
    synchronises batch statistics only on accelerators and fails deep inside on CPU
    (training in a process group). Say so here, with the fix."""
    if not (norm.training and torch.distributed.is_available()):
        return
    if torch.distributed.is_initialized() and x.device.type not in (
        *_SYNC_DEVICES,
        torch._C._get_privateuse1_backend_name(),
    ):
        raise STCNNTError(
            f"{kind} norm: this model was converted with "
            "torch.nn.SyncBatchNorm.convert_sync_batchnorm, but torch synchronises batch "
            f"statistics on GPUs only and the input is on {x.device.type}; to train on CPU "
            "use norm: instance2d (or instance3d), whose per-sample statistics need no "
            "synchronisation, or do not convert the model (each process then normalises "
            "over its own batch)"
        )
