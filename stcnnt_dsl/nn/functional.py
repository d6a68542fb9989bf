"""Tensor plumbing of the attention layers: partitions, the attention kernel, biases.

Everything here is pure view/permute/reshape plus one attention call: no Python loops
over windows or pixels, so it traces cleanly under `torch.compile` and `torch.export`.

Feature maps are handled as [N, C, H, W] (N = B*T) in any memory format; the partition
functions read them through an [N, H, W, C] view, so a channels-last tensor is split
into windows with a single gather of contiguous (patch_w * C) runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SDPA_MIN_TOKENS_CPU",
    "attend",
    "auto_heads",
    "partition",
    "relative_position_index",
    "unpartition",
]

# Below this many tokens, CPU SDPA was 1.2-3.9x slower than matmul + softmax on this
# class of machine (2 cores, torch 2.13); from 256 tokens it won 1.6x with 17x less memory.
SDPA_MIN_TOKENS_CPU = 32


def auto_heads(features: int, target: int = 32) -> int:
    """The most heads that keep >= `target` features per head and divide `features`."""
    best = 1
    for heads in range(1, features // target + 1):
        if features % heads == 0:
            best = heads
    return best


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


def relative_position_index(grid: tuple[int, int], extent: tuple[int, int] | None = None) -> Tensor:
    """Index into a ((2Eh-1)*(2Ew-1)) bias table for every pair of tokens on a grid.

    Tokens are laid out row-major on `grid` = (gh, gw). `extent` (Eh, Ew) >= 1 sizes the
    table; offsets beyond +-(E-1) share the edge entry (clipped relative positions,
    Shaw et al. 2018), so a table learned on one grid serves any grid. With extent ==
    grid this is exactly Swin's relative position index.
    """
    gh, gw = grid
    eh, ew = extent or grid
    ys = torch.arange(gh).repeat_interleave(gw)
    xs = torch.arange(gw).repeat(gh)
    dy = (ys[:, None] - ys[None, :]).clamp(-(eh - 1), eh - 1) + (eh - 1)
    dx = (xs[:, None] - xs[None, :]).clamp(-(ew - 1), ew - 1) + (ew - 1)
    return dy * (2 * ew - 1) + dx


def _standardise(x: Tensor) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the last dim, unbiased variance and the dtype's
    machine epsilon: the reference's `normalize_Q_K`, no affine parameters."""
    correction = 1 if x.shape[-1] > 1 else 0
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=correction)
    return (x - mean) * torch.rsqrt(var + torch.finfo(x.dtype).eps)


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

    Picks the kernel per shape: fused SDPA where it wins (GPUs; long sequences on CPU),
    explicit matmul + softmax for short sequences on CPU and for huge head dims
    (temporal attention), where SDPA's fused kernels are slower or unavailable.
    `bias` is [heads, S, S]; added to the logits, or (reference behaviour) to the
    probabilities when `bias_after_softmax`.
    """
    if qk_norm:
        q, k = _standardise(q), _standardise(k)
    if cosine:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        scale = 1.0
    else:
        scale = 1.0 / math.sqrt(q.shape[-1])
    s, d = q.shape[-2], q.shape[-1]
    use_sdpa = (q.is_cuda or s >= SDPA_MIN_TOKENS_CPU) and d <= 512
    logit_bias = None if bias_after_softmax else bias
    if use_sdpa:
        out = F.scaled_dot_product_attention(
            q, k, v,
            # A 4-D mask keeps CPU SDPA on its fused kernel (3-D falls back to math).
            attn_mask=None if logit_bias is None else logit_bias.to(q.dtype).unsqueeze(0),
            dropout_p=dropout,
            is_causal=causal,
            scale=scale,
        )  # fmt: skip
    else:
        # Scale whichever is smaller: q (S*d) or the scores (S*S).
        if s * d <= s * k.shape[-2]:
            scores = (q * scale) @ k.transpose(-2, -1)
        else:
            scores = (q @ k.transpose(-2, -1)) * scale
        if logit_bias is not None:
            scores = scores + logit_bias
        if causal:
            keep = torch.ones(s, k.shape[-2], dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        probs = scores.softmax(dim=-1)
        if dropout:
            probs = F.dropout(probs, dropout)
        out = probs @ v
    if bias is not None and bias_after_softmax:
        # (P + B) V = P V + B V: keeps the fused kernel for P V.
        out = out + bias.to(v.dtype) @ v
    return out
