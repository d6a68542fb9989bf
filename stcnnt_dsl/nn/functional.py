"""Tensor plumbing of the attention layers: partitions, the attention kernel, biases.

Everything here is pure view/permute/reshape plus one attention call: no Python loops
over windows or pixels, so it traces cleanly under `torch.compile` and `torch.export`.

Feature maps are handled as [N, C, H, W] (N = B*T) in any memory format; the partition
functions read them through an [N, H, W, C] view, so a channels-last tensor is split
into windows with a single gather of contiguous (patch_w * C) runs.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from ..machine import SDPA_MIN_TOKENS_CPU
from .explicit_attention import attend_explicit, bias_times_v
from .short_attention import MAX_HEAD_DIM as SHORT_MAX_HEAD_DIM
from .short_attention import MIN_HEAD_DIM as SHORT_MIN_HEAD_DIM
from .short_attention import attend_short
from .tuning import choices

__all__ = [
    "FUSED_CPU_INFERENCE",
    "LONG_SEQUENCE_CHUNK",
    "SDPA_MIN_TOKENS_CPU",
    "attend",
    "bypassable",
    "can_fuse",
    "frame_tokens",
    "frames_from_tokens",
    "fused_conv2d",
    "is_exporting",
    "partition",
    "partition_heads",
    "partition_qkv",
    "plain_ops",
    "relative_position_index",
    "unpartition",
    "unpartition_heads",
]

# A relative position bias is a [heads, S, S] matrix; past this many tokens attention
# runs over chunks of this many queries, each with its own rows of the bias, so memory
# stays linear in S (SDPA itself never materialises S x S).
LONG_SEQUENCE_CHUNK = 256

# Below SDPA_MIN_TOKENS_CPU tokens, CPU SDPA was 1.2-3.9x slower than matmul + softmax
# on this class of machine (2 cores, torch 2.13); from 256 tokens it won 1.6x with 17x
# less memory. The rule; the machine's own threshold: `tuning.choices().sdpa_min_tokens`.


def partition(x: Tensor, window: tuple[int, int], patch: tuple[int, int], mode: str) -> Tensor:
    """Split [N, C, H, W] (or [N, G, C, H, W] for G stacked maps) into token sequences.

    mode "local": a sequence is the patches of one window  -> [N*nWin, nPatch, ph*pw*C]
    mode "global": a sequence is the same in-window patch
                   across all windows                       -> [N*nPatch, nWin, ph*pw*C]
    A token vector is ordered (patch_h, patch_w, C), C fastest, as in the reference
    implementation, so heads split it into contiguous chunks.
    With a stacked input [N, G, C, H, W] the output is [G, ...] (one gather for Q, K, V).
    """
    stacked = x.dim() == 5
    if not stacked:
        x = x.unsqueeze(1)
    n, g, c, h, w = x.shape
    wh, ww = window
    ph, pw = patch
    nh, nw = h // wh, w // ww
    qh, qw = wh // ph, ww // pw
    # [N, G, C, H, W] -> [N, H, W, G, C] view (free for channels-last storage)
    t = x.permute(0, 3, 4, 1, 2)
    t = t.reshape(n, nh, qh, ph, nw, qw, pw, g, c)
    if mode == "local":
        # -> [G, N, nh, nw, qh, qw, ph, pw, C]
        t = t.permute(7, 0, 1, 4, 2, 5, 3, 6, 8)
        t = t.reshape(g, n * nh * nw, qh * qw, ph * pw * c)
    else:
        # -> [G, N, qh, qw, nh, nw, ph, pw, C]
        t = t.permute(7, 0, 2, 5, 1, 4, 3, 6, 8)
        t = t.reshape(g, n * qh * qw, nh * nw, ph * pw * c)
    return t if stacked else t[0]


def unpartition(
    t: Tensor, size: tuple[int, int], window: tuple[int, int], patch: tuple[int, int], mode: str
) -> Tensor:
    """Inverse of `partition` for one tensor: tokens -> [N, C, H, W] (channels-last)."""
    h, w = size
    wh, ww = window
    ph, pw = patch
    nh, nw = h // wh, w // ww
    qh, qw = wh // ph, ww // pw
    c = t.shape[-1] // (ph * pw)
    if mode == "local":
        n = t.shape[0] // (nh * nw)
        t = t.reshape(n, nh, nw, qh, qw, ph, pw, c)
        t = t.permute(0, 1, 3, 5, 2, 4, 6, 7)  # [N, nh, qh, ph, nw, qw, pw, C]
    else:
        n = t.shape[0] // (qh * qw)
        t = t.reshape(n, qh, qw, nh, nw, ph, pw, c)
        t = t.permute(0, 3, 1, 5, 4, 2, 6, 7)  # [N, nh, qh, ph, nw, qw, pw, C]
    t = t.reshape(n, h, w, c)
    return t.permute(0, 3, 1, 2)  # [N, C, H, W] view of NHWC storage


# True while torch.export traces (torch >= 2.7 has the flag; stcnnt_dsl.export needs it).
is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def plain_ops() -> bool:
    """True while torch.jit traces or scripts (e.g. fvcore's FLOP counter, the TorchScript
    ONNX exporter), torch.export exports (e.g. the dynamo ONNX exporter), or a Python
    dispatch mode (e.g. FlopCounterMode) watches the ops: the layers then use plain aten
    ops only, no custom autograd Functions and no fused oneDNN kernels, which those
    tools cannot follow, count or represent."""
    if is_exporting():  # a portable graph: plain ops only
        return True
    if torch.compiler.is_compiling():  # dynamo traces the Functions itself
        return False
    return (
        torch.jit.is_tracing() or torch.jit.is_scripting() or _current_dispatch_mode() is not None
    )


def _sizes(shape) -> tuple:
    """`shape` as Python ints (under torch.jit.trace sizes are tensors), except symbolic
    sizes (torch.export with dynamic shapes), which stay symbolic: int() would fix them
    to the example input's values."""
    return tuple(s if isinstance(s, torch.SymInt) else int(s) for s in shape)


def _head_split(token: tuple[int, int, int], head_dim: int) -> tuple[int, int, int] | None:
    """How heads of `head_dim` features cut a (patch_h, patch_w, C) token, as the inner
    size of each axis: the head index runs over the outer parts (axis // inner) and the
    per-head feature over the inner parts. None when a head boundary does not fall on an
    axis boundary (e.g. C=6 with 4 features per head)."""
    inner = [1, 1, 1]
    rest = int(head_dim)  # a plain int (under torch.jit.trace sizes are tensors)
    for axis in (2, 1, 0):  # C fastest, then patch_w, then patch_h
        size = int(token[axis])
        if rest <= size and size % rest == 0:
            inner[axis] = rest
            return inner[0], inner[1], inner[2]
        if rest % size:
            return None
        inner[axis] = size
        rest //= size
    return None  # pragma: no cover - head_dim divides the token size


class _Regroup(torch.autograd.Function):
    """Copy G groups out of a permuted view of `x` in one pass each, as G contiguous
    tensors. The backward writes the G gradients back through the same view into one
    buffer laid out like `x` (channels-last for a channels-last `x`): no stacking of
    the gradients and no layout conversion before the convolution's backward."""

    @staticmethod
    def forward(ctx, x, pre_perm, split_shape, perm, out_shape):  # type: ignore[override]
        base = x.permute(pre_perm)
        if not base.is_contiguous():
            base = base.contiguous()
        fine = base.view(split_shape).permute(perm)
        outs = []
        for group in fine.unbind(0):
            out = x.new_empty(out_shape)
            out.view(group.shape).copy_(group)
            outs.append(out)
        ctx.recipe = (pre_perm, tuple(base.shape), split_shape, perm)
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        pre_perm, base_shape, split_shape, perm = ctx.recipe
        like = next((g for g in grads if g is not None), None)
        if like is None:
            return None, None, None, None, None
        gbase = like.new_empty(base_shape)
        fine = gbase.view(split_shape).permute(perm)
        for group, grad in zip(fine.unbind(0), grads, strict=True):
            if grad is None:
                group.zero_()
            else:
                group.copy_(grad.reshape(group.shape))
        inverse = tuple(sorted(range(len(pre_perm)), key=pre_perm.__getitem__))
        return gbase.permute(inverse), None, None, None, None


_NHWC_AXES = ("n", "nh", "qh", "pho", "phi", "nw", "qw", "pwo", "pwi", "g", "co", "ci")
_NCHW_AXES = ("n", "g", "co", "ci", "nh", "qh", "pho", "phi", "nw", "qw", "pwo", "pwi")


def _stored_channels_last(x: Tensor) -> bool:
    """Whether [N, G, C, H, W] (a view of [N, G*C, H, W] frames) is stored with the
    channels fastest; NCHW storage otherwise (either when both hold)."""
    return not x.is_contiguous() and x.permute(0, 3, 4, 1, 2).is_contiguous()


def _partition_recipe(
    x: Tensor,
    window: tuple[int, int],
    patch: tuple[int, int],
    mode: str,
    heads: int,
    channels_last: bool,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(pre_perm, split_shape, perm, out_shape) that take [N, G, C, H, W] to G tensors
    [Nb, heads, S, d], or None when heads do not fall on axis boundaries. `pre_perm`
    puts the axes in their storage order (`channels_last` or NCHW), so the split is a
    view and the gather reads memory in one pass."""
    n, g, c, h, w = _sizes(x.shape)
    wh, ww = window
    ph, pw = patch
    d = ph * pw * c // heads
    split = _head_split((ph, pw, c), d)
    if split is None:
        return None
    ih, iw, ic = split
    nh, nw, qh, qw = h // wh, w // ww, wh // ph, ww // pw
    sizes = dict(n=n, nh=nh, qh=qh, pho=ph // ih, phi=ih, nw=nw, qw=qw, pwo=pw // iw, pwi=iw,
                 g=g, co=c // ic, ci=ic)  # fmt: skip
    if mode == "local":  # [G, (N, nh, nw), heads, (qh, qw), d]
        order = ("g", "n", "nh", "nw", "pho", "pwo", "co", "qh", "qw", "phi", "pwi", "ci")
        out_shape = (n * nh * nw, heads, qh * qw, d)
    else:  # [G, (N, qh, qw), heads, (nh, nw), d]
        order = ("g", "n", "qh", "qw", "pho", "pwo", "co", "nh", "nw", "phi", "pwi", "ci")
        out_shape = (n * qh * qw, heads, nh * nw, d)
    if channels_last:  # [N, G, C, H, W] -> [N, H, W, G, C], every axis split
        pre_perm, axes = (0, 3, 4, 1, 2), _NHWC_AXES
    else:
        pre_perm, axes = (0, 1, 2, 3, 4), _NCHW_AXES
    split_shape = tuple(sizes[a] for a in axes)
    perm = tuple(axes.index(a) for a in order)
    return pre_perm, split_shape, perm, out_shape


def partition_heads(
    x: Tensor, window: tuple[int, int], patch: tuple[int, int], mode: str, heads: int
) -> Tensor:
    """`partition` with the heads split out, in one copy: [N, C, H, W] (or [N, G, C, H, W])
    -> [Nb, heads, S, d] (or [G, Nb, heads, S, d]), contiguous, so that q, k and v go to
    the attention kernel without further copies. Head h holds features h*d..(h+1)*d-1 of
    the (patch_h, patch_w, C) token vector, exactly as splitting `partition`'s output."""
    stacked = x.dim() == 5
    if not stacked:
        x = x.unsqueeze(1)
    recipe = _partition_recipe(x, window, patch, mode, heads, _stored_channels_last(x))
    if recipe is None:
        t = partition(x, window, patch, mode)
        t = t.unflatten(-1, (heads, -1)).transpose(-3, -2).contiguous()
    else:
        pre_perm, split_shape, perm, out_shape = recipe
        t = x.permute(pre_perm).reshape(split_shape).permute(perm)
        t = t.reshape(x.shape[1], *out_shape)
    return t if stacked else t[0]


def partition_qkv(
    x: Tensor, window: tuple[int, int], patch: tuple[int, int], mode: str, heads: int
) -> tuple[Tensor, ...]:
    """`partition_heads` of stacked maps [N, G, C, H, W] (or one map [N, C, H, W]) as G
    separate contiguous tensors [Nb, heads, S, d] (q, k, v), with a backward that writes
    straight into the gradient of `x` (see `_Regroup`).

    Under plain ops the maps go channels-last first, whatever their storage: in an ONNX
    graph that is a [N, C, H, W] -> [N, H, W, C] transpose, which ONNX Runtime folds into
    the convolution's output reorder, and the partition's transpose then moves runs of C
    floats."""
    plain = plain_ops()
    stacked = x if x.dim() == 5 else x.unsqueeze(1)
    recipe = _partition_recipe(
        stacked, window, patch, mode, heads, plain or _stored_channels_last(stacked)
    )
    if recipe is None:
        return partition_heads(stacked, window, patch, mode, heads).unbind(0)
    if plain:
        _, split_shape, perm, out_shape = recipe
        nhwc = (x if x.dim() == 4 else x.flatten(1, 2)).permute(0, 2, 3, 1)
        return _plain_groups(nhwc, split_shape, perm, out_shape, stacked.shape[1])
    return _Regroup.apply(stacked, *recipe)


def _permute(x: Tensor, perm: tuple[int, ...]) -> Tensor:
    """x.permute(perm); under plain ops without the axes of static size 1, for which an
    exported Transpose would still copy (ONNX Runtime copies a transpose that only moves
    unit axes, e.g. one head): reshapes around a smaller permute, or no permute."""
    if not plain_ops():
        return x.permute(perm)
    shape = _sizes(x.shape)
    keep = [i for i, size in enumerate(shape) if not (isinstance(size, int) and size == 1)]
    if len(keep) == len(shape):
        return x.permute(perm)
    rank = {axis: j for j, axis in enumerate(keep)}
    inner = [rank[axis] for axis in perm if axis in rank]
    t = x.reshape([shape[i] for i in keep])
    if inner != sorted(inner):
        t = t.permute(inner)
    return t.reshape([shape[axis] for axis in perm])


def _plain_groups(
    base: Tensor,
    split_shape: tuple[int, ...],
    perm: tuple[int, ...],
    out_shape: tuple[int, ...],
    groups: int,
) -> tuple[Tensor, ...]:
    """`_Regroup` in plain ops: `groups` tensors of `out_shape` from the storage-ordered
    `base`. One group is a reshape (unbind would be a copying Slice in ONNX)."""
    t = _permute(base.reshape(split_shape), perm)
    if groups == 1:
        return (t.reshape(out_shape),)
    return t.reshape(groups, *out_shape).unbind(0)


def frame_tokens(
    y: Tensor, batch: int, groups: int, heads: int, channels_last: bool = True
) -> tuple[Tensor, ...]:
    """[B*T, G*C, h, w] -> G tensors [B, heads, T, h*w*C/heads] (temporal attention: a
    token is a whole frame of one head's channels). The order of features within a
    token is free (q.k sums over it) as long as the output follows it: (h, w, c) with
    `channels_last` (a run of channels-last memory), else (c, h, w) (NCHW memory)."""
    n, gc, h, w = _sizes(y.shape)
    c = gc // groups
    out_shape = (batch, heads, n // batch, h * w * c // heads)
    if channels_last:
        pre_perm = (0, 2, 3, 1)
        split_shape = (batch, n // batch, h, w, groups, heads, c // heads)
        perm = (4, 0, 5, 1, 2, 3, 6)  # [G, B, heads, T, h, w, c/heads]
    else:
        pre_perm = (0, 1, 2, 3)
        split_shape = (batch, n // batch, groups, heads, c // heads, h, w)
        perm = (2, 0, 3, 1, 4, 5, 6)  # [G, B, heads, T, c/heads, h, w]
    if plain_ops():
        return _plain_groups(y.permute(pre_perm), split_shape, perm, out_shape, groups)
    return _Regroup.apply(y, pre_perm, split_shape, perm, out_shape)


def frames_from_tokens(
    out: Tensor, batch: int, size: tuple[int, int], channels_last: bool = True
) -> Tensor:
    """Inverse of `frame_tokens` for one tensor: [B, heads, T, h*w*C/heads] ->
    [B*T, C, h, w], stored channels-last or NCHW as the token order says, in one copy."""
    b, heads, t, _ = _sizes(out.shape)
    h, w = size
    if channels_last:
        out = _permute(out.view(b, heads, t, h, w, -1), (0, 2, 3, 4, 1, 5))
        return out.reshape(b * t, h, w, -1).permute(0, 3, 1, 2)
    out = out.view(b, heads, t, -1, h, w).transpose(1, 2)
    return out.reshape(b * t, -1, h, w)


def unpartition_heads(
    t: Tensor,
    size: tuple[int, int],
    window: tuple[int, int],
    patch: tuple[int, int],
    mode: str,
    channels_last: bool = True,
) -> Tensor:
    """Inverse of `partition_heads` for one tensor: [Nb, heads, S, d] (any strides) ->
    [N, C, H, W] with channels-last (else NCHW) storage, in one copy."""
    nb, heads, s, d = _sizes(t.shape)
    h, w = size
    wh, ww = window
    ph, pw = patch
    c = heads * d // (ph * pw)
    split = _head_split((ph, pw, c), d)
    if split is None:
        y = unpartition(t.transpose(1, 2).reshape(nb, s, heads * d), size, window, patch, mode)
        return y if channels_last else y.contiguous()
    ih, iw, ic = split
    nh, nw, qh, qw = h // wh, w // ww, wh // ph, ww // pw
    ho, wo, co = ph // ih, pw // iw, c // ic
    if mode == "local":
        n = nb // (nh * nw)
        t = t.reshape(n, nh, nw, ho, wo, co, qh, qw, ih, iw, ic)
        # -> [N, nh, qh, pho, phi, nw, qw, pwo, pwi, co, ci]
        t = _permute(t, (0, 1, 6, 3, 8, 2, 7, 4, 9, 5, 10))
    else:
        n = nb // (qh * qw)
        t = t.reshape(n, qh, qw, ho, wo, co, nh, nw, ih, iw, ic)
        t = _permute(t, (0, 6, 1, 3, 8, 7, 2, 4, 9, 5, 10))
    if not channels_last:  # -> [N, co, ci, nh, qh, pho, phi, nw, qw, pwo, pwi]
        return t.permute(0, 9, 10, 1, 2, 3, 4, 5, 6, 7, 8).reshape(n, c, h, w)
    return t.reshape(n, h, w, c).permute(0, 3, 1, 2)  # [N, C, H, W] view of NHWC storage


def relative_position_index(
    grid: tuple[int, int],
    extent: tuple[int, int] | None = None,
    rows: tuple[int, int] | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Index into a ((2Eh-1)*(2Ew-1)) bias table for every pair of tokens on a grid.

    Tokens are laid out row-major on `grid` = (gh, gw). `extent` (Eh, Ew) >= 1 sizes the
    table; offsets beyond +-(E-1) share the edge entry (clipped relative positions,
    Shaw et al. 2018), so a table learned on one grid serves any grid. With extent ==
    grid this is exactly Swin's relative position index. `rows` = (start, stop) gives
    only those query rows ([stop - start, gh*gw]), for long sequences.
    """
    gh, gw = grid
    eh, ew = extent or grid
    # row and column of every token, without // or % by gw (a symbolic size under
    # torch.export, which ONNX takes only as a tensor)
    ys = torch.arange(gh, device=device)[:, None].expand(gh, gw).reshape(-1)
    xs = torch.arange(gw, device=device)[None, :].expand(gh, gw).reshape(-1)
    qy, qx = (ys, xs) if rows is None else (ys[rows[0] : rows[1]], xs[rows[0] : rows[1]])
    dy = (qy[:, None] - ys[None, :]).clamp(-(eh - 1), eh - 1) + (eh - 1)
    dx = (qx[:, None] - xs[None, :]).clamp(-(ew - 1), ew - 1) + (ew - 1)
    return dy * (2 * ew - 1) + dx


def _standardise(x: Tensor) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the last dim, unbiased variance and the dtype's
    machine epsilon: the reference's `normalize_Q_K`, no affine parameters."""
    correction = 1 if x.shape[-1] > 1 else 0
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=correction)
    return (x - mean) * torch.rsqrt(var + torch.finfo(x.dtype).eps)


def _inverse_sqrt(d: int) -> float | Tensor:
    """1/sqrt(d); for a symbolic d (torch.export: temporal attention, where d = H*W*C/heads)
    a symbolic float that exporters compute from the shape (math.sqrt would fix d)."""
    if isinstance(d, torch.SymInt):
        if is_exporting():  # a 0-d tensor (explicit matmuls): ONNX takes no symbolic float
            return torch.scalar_tensor(d, dtype=torch.float32).rsqrt()
        return 1.0 / torch.sym_float(d) ** 0.5
    return 1.0 / math.sqrt(d)


def _use_sdpa(q: Tensor, k: Tensor) -> bool:
    """Fused SDPA off the CPU (and on meta tensors as on CPU), on CPU for long sequences
    and under torch.compile (inductor's code for a short explicit softmax next to the
    q/k/v copies was 1.3x slower than its SDPA kernel); never for huge heads (temporal
    attention), which have no fused kernel."""
    if is_exporting():
        # One kernel for every size (a choice by size would fix the symbolic sizes);
        # explicit matmuls, which ONNX Runtime fuses with the transpose and the scale.
        return False
    s, d = max(q.shape[-2], k.shape[-2]), q.shape[-1]
    on_cpu = q.device.type in ("cpu", "meta")
    if not on_cpu or torch.compiler.is_compiling():
        return d <= 512
    short = s < choices(q.device).sdpa_min_tokens
    return not short and d <= 512


def _use_short(q: Tensor, v: Tensor, dropout: float) -> bool:
    """The cache-chunked kernel (`short_attention`) for short CPU sequences with small
    heads in eager float32/float64 without dropout; not under tracers, dispatch modes or
    autocast (which expect the plain ops), nor for large heads (matmul work)."""
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64)
        and v.dtype == q.dtype
        and not dropout
        and SHORT_MIN_HEAD_DIM <= q.shape[-1]
        and max(q.shape[-1], v.shape[-1]) <= SHORT_MAX_HEAD_DIM
        and not plain_ops()
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
    )


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    cosine: bool = False,
    qk_norm: bool = False,
    bias: Tensor | None = None,
    bias_after_softmax: bool = False,
    causal: bool = False,
    dropout: float = 0.0,
) -> Tensor:
    """Multi-head attention on [..., heads, S, d] tensors (v may have its own d).

    Picks the kernel per shape: fused SDPA where it wins (GPUs; long sequences on CPU,
    where it also never materialises the S x S scores), the cache-chunked kernel of
    `short_attention` for short CPU sequences with heads of 4-64 features, and explicit
    matmul + softmax for the rest (huge head dims: temporal attention; dropout;
    autocast), where SDPA's fused kernels are slower or unavailable. `bias` is
    [heads, S, S]; added to the logits, or (reference behaviour) to the probabilities
    when `bias_after_softmax`.
    """
    if qk_norm:
        q, k = _standardise(q), _standardise(k)
    if cosine:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        scale = 1.0
    else:
        scale = _inverse_sqrt(q.shape[-1])
    logit_bias = None if bias_after_softmax else bias
    prob_bias = bias if bias_after_softmax else None
    if not _use_sdpa(q, k):
        if _use_short(q, v, dropout):
            out = attend_short(q, k, v, scale, logit_bias, causal)
            return out if prob_bias is None else out + bias_times_v(prob_bias, v)
        return attend_explicit(
            q, k, v, scale, logit_bias, prob_bias, causal, dropout, plain=plain_ops()
        )
    out = F.scaled_dot_product_attention(
        q, k, v,
        # A 4-D mask keeps CPU SDPA on its fused kernel (3-D falls back to math).
        attn_mask=None if logit_bias is None else logit_bias.to(q.dtype).unsqueeze(0),
        dropout_p=dropout,
        is_causal=causal,
        scale=scale,
    )  # fmt: skip
    if prob_bias is not None:
        # (P + B) V = P V + B V: keeps the fused kernel for P V.
        out = out + bias_times_v(prob_bias, v)
    return out


# ------------------------------------------------------------ fused CPU inference convs

# Eager CPU inference runs a convolution and the element-wise op after it (the mixer's
# activation, a residual add) as one oneDNN primitive: the activation costs nothing
# and the sum needs no extra pass over memory. Set to False to always use plain ops.
FUSED_CPU_INFERENCE = True


@functools.lru_cache(maxsize=1)
def _onednn_fusion_works() -> bool:
    """Whether this torch has the fused oneDNN convolutions and they agree with the
    plain ops (checked once on a tiny input)."""
    ops = getattr(torch.ops, "mkldnn", None)
    if ops is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
        other = torch.randn(2, 3, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(3, 4, 3, 3, generator=gen), torch.randn(3, generator=gen)
        plain = F.conv2d(x, w, b, padding=1)
        args = ([1, 1], [1, 1], [1, 1], 1)
        fused = torch.ops.mkldnn._convolution_pointwise(x, w, b, *args, "gelu", [], "none")
        summed = torch.ops.mkldnn._convolution_pointwise_.binary(
            other.clone(), x, w, b, *args, "add", None, None, [], None
        )
        return bool(
            torch.allclose(fused, F.gelu(plain), atol=1e-5)
            and torch.allclose(summed, plain + other, atol=1e-5)
        )
    except (RuntimeError, TypeError, AttributeError):
        return False


def bypassable(*convs: torch.nn.Module) -> bool:
    """Whether the layers may compute these convolutions from their weights rather than
    call them (fused inference, lean training, one Q/K/V conv run as three): only plain
    `nn.Conv2d`s without hooks. A wrapper (PEFT's LoRA layer adds its adapter in its own
    forward) or a hook would otherwise be skipped without a word."""
    return all(
        type(conv) is torch.nn.Conv2d and not (conv._forward_hooks or conv._forward_pre_hooks)
        for conv in convs
    )


def can_fuse(conv: torch.nn.Conv2d, x: Tensor) -> bool:
    """True where `fused_conv2d` may replace conv + element-wise ops: eager, no autograd,
    float32 on CPU (any padding mode: a non-zero one is applied first)."""
    return (
        FUSED_CPU_INFERENCE
        and bypassable(conv)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")  # the fused op has no autocast rule
        and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
        and not isinstance(conv.padding, str)
        and not torch.compiler.is_compiling()
        and not plain_ops()
        and _onednn_fusion_works()
    )


def fused_conv2d(
    conv: torch.nn.Conv2d,
    x: Tensor,
    *,
    unary: tuple[str, list[float], str | None] | None = None,
    add: Tensor | None = None,
    add_inplace: bool = False,
) -> Tensor:
    """act(conv(x)) or conv(x) + add (into `add` itself with `add_inplace`), in one
    oneDNN primitive. Only where `can_fuse(conv, x)`."""
    padding = list(conv.padding)
    if conv.padding_mode != "zeros":  # reflect & co: pad first, then no padding
        ph, pw = padding
        x = F.pad(x, (pw, pw, ph, ph), mode=conv.padding_mode)
        padding = [0, 0]
    args = (conv.weight, conv.bias, padding, list(conv.stride), list(conv.dilation), conv.groups)
    if add is None:
        attr, scalars, algorithm = unary or ("none", [], None)
        return torch.ops.mkldnn._convolution_pointwise(x, *args, attr, scalars, algorithm)
    if add_inplace:
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            add, x, *args, "add", None, None, [], None
        )
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, add, *args, "add", None, None, [], None
    )
