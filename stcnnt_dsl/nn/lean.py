"""Training without keeping what is cheap to recompute: convolutions and mixers whose
autograd saves each tensor once.

Plain autograd keeps, for a convolution with reflect (or any non-zero) padding, both the
unpadded input (the padding op's backward wants its shape, and saves the tensor) and
the padded copy (the convolution's backward); for a mixer conv -> activation -> conv,
both the activation's input and its output. Here:

- `conv2d`: a padded convolution saves only its unpadded input (usually the output of a
  norm, which the norm keeps anyway, so nothing new is stored); the padding is redone
  in the backward, a copy that costs a fraction of the convolution;
- `mixer`: conv -> activation -> conv saves the mixer's input and one hidden map: a
  leaky ReLU (PReLU, ReLU) with a slope >= 0 runs in place and its output is kept (its
  sign is the input's); any other activation's input is kept and the activation is
  recomputed in the backward (an element-wise pass); the paddings are redone;
- `attention`: Q/K/V convolution -> attention -> reassembled feature map -> output
  projection saves only its input (the norm's output, which the norm keeps anyway); the
  backward recomputes q, k and v (the Q/K/V convolution: about 4% of a reference cell's
  training FLOPs) and the attention (about 1%: its scores, probabilities and output),
  instead of keeping q, k, v, the probabilities, the output in two layouts and v in the
  layout of the bias product;
- `attend_project`: the same from given q, k and v (a Q/K/V layer that cannot be
  recomputed: an adapter with dropout, a hook), saving q, k and v.

The results are the plain ops' (the same kernels run on the same values; only a
PReLU's slope gradient is summed in another order, from output / slope), and the
backwards are written with differentiable ops, so double backward works. The lean
path runs where autograd records in eager mode; under torch.compile (whose partitioner
makes its own recompute choices), autocast, FLOP counters and tracers the plain modules
run instead (`use_lean`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import bypassable, plain_ops

__all__ = ["LEAN_TRAINING", "attend_project", "attention", "conv2d", "mixer", "use_lean"]

# Set to False to always use plain autograd (e.g. to compare memory).
LEAN_TRAINING = True


def use_lean(x: Tensor, *modules: nn.Module) -> bool:
    """Whether autograd will record this call in eager mode (and the lean path is on)."""
    if not (LEAN_TRAINING and torch.is_grad_enabled()):
        return False
    if not (x.requires_grad or any(p.requires_grad for m in modules for p in m.parameters())):
        return False
    return not (
        torch.compiler.is_compiling() or _autocast(x) or plain_ops() or torch.jit.is_tracing()
    )


def _autocast(x: Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device without autocast (meta)
        return False


def _padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    ph, pw = conv.padding  # type: ignore[misc]
    return (pw, pw, ph, ph)


def _pad(x: Tensor, conv: nn.Conv2d) -> Tensor:
    if conv.padding_mode == "zeros":
        return x
    return F.pad(x, _padding(conv), mode=conv.padding_mode)


def _conv(x: Tensor, weight: Tensor, bias: Tensor | None, conv: nn.Conv2d) -> Tensor:
    """conv(pad(x)) with the module's geometry (padding inside the op when zeros)."""
    padding = conv.padding if conv.padding_mode == "zeros" else (0, 0)
    return F.conv2d(_pad(x, conv), weight, bias, conv.stride, padding, conv.dilation, conv.groups)


def _pad_backward(grad: Tensor, x: Tensor, conv: nn.Conv2d) -> Tensor:
    """The gradient of x from that of `_pad(x, conv)` (x gives only its shape: the pad is
    linear); the pad's own backward, differentiable for double backward."""
    padding = list(_padding(conv))
    if conv.padding_mode == "reflect":
        return torch.ops.aten.reflection_pad2d_backward(grad, x, padding)
    if conv.padding_mode == "replicate":
        return torch.ops.aten.replication_pad2d_backward(grad, x, padding)
    with torch.enable_grad():  # circular: a composite, through autograd
        source = x.detach().requires_grad_()
        padded = _pad(source, conv)
    return torch.autograd.grad(padded, source, grad, create_graph=torch.is_grad_enabled())[0]


def _conv_backward(
    grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, conv: nn.Conv2d, needs_x: bool
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """(grad x, grad weight, grad bias) of `_conv`, with differentiable ops only (under
    double backward grad mode is on, and the padding is recorded); the padded copy is
    freed before the pad's backward allocates its gradient."""
    zeros = conv.padding_mode == "zeros"
    padded = _pad(x, conv)
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad,
        padded,
        weight,
        None if bias is None else [bias.shape[0]],
        list(conv.stride),
        list(conv.padding) if zeros else [0, 0],
        list(conv.dilation),
        False,
        [0, 0],
        conv.groups,
        [needs_x, True, bias is not None],
    )
    del padded
    if needs_x and not zeros:
        gx = _pad_backward(gx, x, conv)
    return gx, gw, gb


class _LeanConv(torch.autograd.Function):
    """A padded convolution that saves its unpadded input."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv):  # type: ignore[override]
        ctx.conv = conv
        ctx.save_for_backward(x, weight, bias)
        return _conv(x, weight, bias, conv)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors
        gx, gw, gb = _conv_backward(grad, x, weight, bias, ctx.conv, ctx.needs_input_grad[0])
        return gx, gw, gb, None


def conv2d(
    conv: nn.Conv2d, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
) -> Tensor:
    """`conv(x)` for [N, C, H, W] (with `weight` / `bias`: those instead of the
    module's, e.g. a slice of its output channels); in training with non-zero padding,
    lean (see above)."""
    if weight is None:
        if not bypassable(conv) or conv.padding_mode == "zeros" or not use_lean(x, conv):
            return conv(x)
        weight, bias = conv.weight, conv.bias
    elif conv.padding_mode == "zeros" or not use_lean(x, conv):
        return _conv(x, weight, bias, conv)
    return _LeanConv.apply(x, weight, bias, conv)


def _one_slope(act: nn.Module) -> float | None:
    """The slope of a one-parameter PReLU (which is a leaky ReLU with that slope: the
    vectorised leaky ReLU kernels are 3x faster than PReLU's, forward and backward), a
    leaky ReLU's or a ReLU's (0)."""
    if isinstance(act, nn.PReLU) and act.num_parameters == 1 and not act.weight.is_meta:
        return float(act.weight.detach())  # (a meta tensor has no value: PReLU runs)
    if type(act) is nn.LeakyReLU:
        return act.negative_slope
    if type(act) is nn.ReLU:
        return 0.0
    return None


def _keeps_output(act: nn.Module, slope: float | None) -> bool:
    """Whether the mixer may keep the activation's output instead of its input: a leaky
    ReLU whose output has its input's sign (slope >= 0) tells the backward all it needs,
    except a PReLU slope's own gradient, which is recovered as output / slope (so not
    for slope 0)."""
    if slope is None or slope < 0:
        return False
    return slope > 0 or not any(p.requires_grad for p in act.parameters())


class _LeanMixer(torch.autograd.Function):
    """conv0 -> activation -> conv2, saving the input and the activation's output (a
    leaky ReLU with slope >= 0, computed in place: no second hidden map, and none
    recomputed in the backward) or its input (any other activation)."""

    @staticmethod
    def forward(ctx, x, w0, b0, w2, b2, act, conv0, conv2, *act_params):  # type: ignore[override]
        hidden = _conv(x, w0, b0, conv0)
        slope = _one_slope(act)
        ctx.keeps_output = _keeps_output(act, slope)
        with torch.no_grad():
            if ctx.keeps_output:  # in place: hidden becomes the activation's output
                a = F.leaky_relu_(hidden, slope)
            else:
                a = act(hidden) if slope is None else F.leaky_relu(hidden, slope)
            out = _conv(a, w2, b2, conv2)
        ctx.modules = (act, conv0, conv2)
        ctx.slope = slope
        ctx.save_for_backward(x, hidden, w0, b0, w2, b2)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, hidden, w0, b0, w2, b2 = ctx.saved_tensors
        act, conv0, conv2 = ctx.modules
        create = torch.is_grad_enabled()
        params = [p for p in act.parameters() if p.requires_grad]
        slope = ctx.slope
        if ctx.keeps_output and not create:
            a = hidden  # the activation's output
            ga, gw2, gb2 = _conv_backward(grad, a, w2, b2, conv2, True)
            # d out / d slope = sum(ga * min(h, 0)) with h = a / slope where a < 0
            gparams = [_dot_negative(ga, a).div_(slope).reshape(1)] if params else []
            # in place: the gradient of the activation's input overwrites ga's
            gh = torch.ops.aten.leaky_relu_backward.grad_input(ga, a, slope, True, grad_input=ga)
            gx, gw0, gb0 = _conv_backward(gh, x, w0, b0, conv0, ctx.needs_input_grad[0])
            return (gx, gw0, gb0, gw2, gb2, None, None, None, *gparams)
        if slope is not None and not create:
            a = F.leaky_relu(hidden, slope)
            ga, gw2, gb2 = _conv_backward(grad, a, w2, b2, conv2, True)
            del a
            gh = torch.ops.aten.leaky_relu_backward(ga, hidden, slope, False)
            gparams = [_dot_negative(ga, hidden).reshape(1)] if params else []
            del ga
            gx, gw0, gb0 = _conv_backward(gh, x, w0, b0, conv0, ctx.needs_input_grad[0])
            return (gx, gw0, gb0, gw2, gb2, None, None, None, *gparams)
        with torch.enable_grad():
            # double backward: the hidden map again, as a function of the inputs (the
            # saved one is a constant to autograd)
            h = _conv(x, w0, b0, conv0) if create else hidden.detach().requires_grad_()
            a = act(h)
        ga, gw2, gb2 = _conv_backward(grad, a if create else a.detach(), w2, b2, conv2, True)
        if create:  # through conv0 and the activation at once
            wanted = [t for t in (x, w0, b0, *params) if t is not None and t.requires_grad]
            found = iter(torch.autograd.grad(a, wanted, ga, create_graph=True))
            gx, gw0, gb0, *gparams = (
                next(found) if t is not None and t.requires_grad else None
                for t in (x, w0, b0, *params)
            )
            return (gx, gw0, gb0, gw2, gb2, None, None, None, *gparams)
        gh, *gparams = torch.autograd.grad(a, [h, *params], ga)
        gx, gw0, gb0 = _conv_backward(gh, x, w0, b0, conv0, ctx.needs_input_grad[0])
        return (gx, gw0, gb0, gw2, gb2, None, None, None, *gparams)


def _dot_negative(g: Tensor, h: Tensor) -> Tensor:
    """sum(g * min(h, 0)) a frame at a time (a temporary of one frame, not of all)."""
    total = g.new_zeros(())
    for g_frame, h_frame in zip(g, h, strict=True):
        total += (g_frame * h_frame.clamp(max=0)).sum()
    return total


def mixer(conv0: nn.Conv2d, act: nn.Module, conv2: nn.Conv2d, x: Tensor) -> Tensor:
    """conv2(act(conv0(x))) for [N, C, H, W]; in training, lean (see above)."""
    if not (bypassable(conv0, conv2) and use_lean(x, conv0, act, conv2)):
        return conv2(act(conv0(x)))
    params = [p for p in act.parameters() if p.requires_grad]
    return _LeanMixer.apply(
        x, conv0.weight, conv0.bias, conv2.weight, conv2.bias, act, conv0, conv2, *params
    )


class _LeanAttendProject(torch.autograd.Function):
    """proj(core(q, k, v)) saving q, k, v (and the weights) only."""

    @staticmethod
    def forward(ctx, q, k, v, weight, bias, core, proj, *params):  # type: ignore[override]
        with torch.no_grad():
            y = core(q, k, v)
        ctx.modules = (core, proj)
        ctx.save_for_backward(q, k, v, weight, bias, *params)
        return _conv(y, weight, bias, proj)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v, weight, bias, *params = ctx.saved_tensors
        core, proj = ctx.modules
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            inputs = [t if create else t.detach().requires_grad_() for t in (q, k, v)]
            y = core(*inputs)
        gy, gw, gb = _conv_backward(grad, y if create else y.detach(), weight, bias, proj, True)
        wanted = [t for t in (*inputs, *params) if t.requires_grad]
        found = iter(torch.autograd.grad(y, wanted, gy, create_graph=create))
        gq, gk, gv, *gparams = (next(found) if t.requires_grad else None
                                for t in (*inputs, *params))  # fmt: skip
        return (gq, gk, gv, gw, gb, None, None, *gparams)


def attend_project(
    core: Callable[[Tensor, Tensor, Tensor], Tensor],
    proj: nn.Conv2d | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    params: Sequence[Tensor] = (),
) -> Tensor:
    """proj(core(q, k, v)): `core` maps q, k, v to an [N, C, H, W] feature map (attention
    and reassembly; deterministic, no dropout), reading `params` (e.g. a relative
    position table) besides; in training, lean (see above)."""
    params = [p for p in params if p.requires_grad]
    if (
        proj is None
        or not bypassable(proj)
        or not use_lean(q, proj)
        or not (q.requires_grad or k.requires_grad or v.requires_grad or params)
    ):
        y = core(q, k, v)
        return y if proj is None else conv2d(proj, y)
    return _LeanAttendProject.apply(q, k, v, proj.weight, proj.bias, core, proj, *params)


class _LeanAttention(torch.autograd.Function):
    """proj(core(*qkv(x))) saving x (and the weights) only."""

    @staticmethod
    def forward(ctx, x, weight, bias, qkv, core, proj, *params):  # type: ignore[override]
        with torch.no_grad():
            y = core(*qkv(x))
        ctx.modules = (qkv, core, proj)
        ctx.save_for_backward(x, weight, bias, *params)
        return _conv(y, weight, bias, proj)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, bias, *params = ctx.saved_tensors
        qkv, core, proj = ctx.modules
        create = torch.is_grad_enabled()
        needs_x = ctx.needs_input_grad[0]
        with torch.enable_grad():
            source = x if create else x.detach().requires_grad_(needs_x)
            y = core(*qkv(source))
        gy, gw, gb = _conv_backward(grad, y if create else y.detach(), weight, bias, proj, True)
        inputs = (source if needs_x else None, *params)
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        found = iter(torch.autograd.grad(y, wanted, gy, create_graph=create) if wanted else ())
        gx, *gparams = (next(found) if t is not None and t.requires_grad else None
                        for t in inputs)  # fmt: skip
        return (gx, gw, gb, None, None, None, *gparams)


def attention(
    qkv: Callable[[Tensor], Sequence[Tensor]],
    core: Callable[[Tensor, Tensor, Tensor], Tensor],
    proj: nn.Conv2d,
    x: Tensor,
    params: Sequence[Tensor],
) -> Tensor:
    """proj(core(*qkv(x))) for [N, C, H, W] `x`: `qkv` maps x to q, k, v and `core` maps
    those to an [N, C, H, W] feature map; both deterministic (no dropout, no hooks) and
    functions of x and `params` only (every weight they read, e.g. the Q/K/V
    convolution's and a relative position table); in training, lean (see above)."""
    params = [p for p in params if p.requires_grad]
    if not (bypassable(proj) and use_lean(x, proj)):
        return conv2d(proj, core(*qkv(x)))
    return _LeanAttention.apply(x, proj.weight, proj.bias, qkv, core, proj, *params)
