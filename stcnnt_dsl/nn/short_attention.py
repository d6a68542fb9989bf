"""CPU attention for short sequences with small heads, in cache-sized chunks.

A window of a few dozen tokens split into many small heads (the reference's 32 heads of
1-8 features) is little arithmetic on many S x S score matrices, so its time goes to
memory: the explicit kernel (bmm, softmax, bmm) writes every score and probability to
main memory and reads them back, and the CPU flash kernel of SDPA is built for long
heads. Here the scores, probabilities and their gradients exist only for a chunk of
sequences that fits in the cache (`CHUNK_BYTES`), and nothing S x S is kept for the
backward, which recomputes the probabilities chunk by chunk (flash attention's recompute,
over whole sequences instead of tiles).

Measured on a 2-core AMD EPYC (float32, 2 threads), 4096 sequences of 64 tokens, 32
heads of 4 (the reference HR-Net's level 0): forward 19.8 ms against 31.8 (SDPA) and
62.4 (explicit); forward + backward 64.7 against 86.3 and 158.7. Where this beats SDPA
on a machine is part of its calibration (`tuning`).

Exact: the same products and the same softmax as the explicit kernel, row by row.
Double backward (create_graph) runs through `explicit_attention`'s differentiable ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .explicit_attention import attend_explicit, future_mask

__all__ = ["CHUNK_BYTES", "MAX_HEAD_DIM", "MIN_HEAD_DIM", "attend_short"]

# Scores of one chunk (its probabilities and gradients are as large): the fastest of 64 KiB
# to 4 MiB on the machine above (1 MiB per core-pair stays in its L2 + L3 share).
CHUNK_BYTES = 1 << 20
# Heads of 1-3 features make the batched matmuls degenerate (measured 2-5x slower than
# SDPA at 1 feature): those keep the other kernels.
MIN_HEAD_DIM = 4
# Heads larger than this are matmul work, not memory work (temporal attention has heads
# of H*W*C/heads features): those keep the explicit kernel.
MAX_HEAD_DIM = 64


def _chunks(n: int, heads: int, s: int, sk: int, itemsize: int) -> tuple[range, int]:
    """(chunk starts, sequences per chunk): whole sequences, all heads, ~CHUNK_BYTES."""
    per_sequence = heads * s * sk * itemsize
    step = max(1, CHUNK_BYTES // per_sequence)
    return range(0, n, step), step


def _probabilities(
    q3: Tensor, k3: Tensor, scale: float, bias: Tensor | None, mask: Tensor | None, heads: int
) -> Tensor:
    """softmax(scale q k^T + bias, masked) for a chunk of [rows*heads, S, d] sequences."""
    zero = q3.new_zeros(())
    scores = torch.baddbmm(zero, q3, k3.transpose(1, 2), beta=0.0, alpha=scale)
    if bias is not None:
        s, sk = scores.shape[-2:]
        scores.view(-1, heads, s, sk).add_(bias)
    if mask is not None:
        scores.masked_fill_(mask, float("-inf"))
    return scores.softmax(-1)


class _ShortAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, scale, causal):  # type: ignore[override]
        n, heads, s = q.shape[:3]
        sk, dv = k.shape[-2], v.shape[-1]
        mask = future_mask(s, sk, q.device) if causal else None
        out = q.new_empty((n, heads, s, dv))
        starts, step = _chunks(n, heads, s, sk, q.element_size())
        for i in starts:
            rows = slice(i, i + step)
            p = _probabilities(
                q[rows].flatten(0, 1), k[rows].flatten(0, 1), scale, bias, mask, heads
            )
            torch.bmm(p, v[rows].flatten(0, 1), out=out[rows].view(-1, s, dv))
        ctx.save_for_backward(q, k, v, bias)
        ctx.scale, ctx.causal = scale, causal
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v, bias = ctx.saved_tensors
        scale, causal = ctx.scale, ctx.causal
        if torch.is_grad_enabled():  # create_graph: differentiable ops
            inputs = [t for t in (q, k, v, bias) if t is not None and t.requires_grad]
            out = attend_explicit(q, k, v, scale, bias, causal=causal)
            found = iter(torch.autograd.grad(out, inputs, grad, create_graph=True))
            grads = [next(found) if t is not None and t.requires_grad else None
                     for t in (q, k, v, bias)]  # fmt: skip
            return (*grads, None, None)
        n, heads, s = q.shape[:3]
        sk = k.shape[-2]
        grad = grad.contiguous()
        mask = future_mask(s, sk, q.device) if causal else None
        gq, gk, gv = (torch.empty_like(t, memory_format=torch.contiguous_format)
                      for t in (q, k, v))  # fmt: skip
        want_bias = bias is not None and ctx.needs_input_grad[3]
        gbias = torch.zeros_like(bias) if want_bias else None
        zero = q.new_zeros(())
        starts, step = _chunks(n, heads, s, sk, q.element_size())
        for i in starts:
            rows = slice(i, i + step)
            q3, k3, v3, g3 = (t[rows].flatten(0, 1) for t in (q, k, v, grad))
            p = _probabilities(q3, k3, scale, bias, mask, heads)
            torch.bmm(p.transpose(1, 2), g3, out=gv[rows].view(v3.shape))
            dp = torch.bmm(g3, v3.transpose(1, 2))
            # d scores = p * (dp - rowsum(p * dp)); rowsum(p * dp) = rowsum(out * grad)
            dp.sub_((p * dp).sum(-1, keepdim=True)).mul_(p)
            torch.baddbmm(zero, dp, k3, beta=0.0, alpha=scale, out=gq[rows].view(q3.shape))
            torch.baddbmm(zero, dp.transpose(1, 2), q3, beta=0.0, alpha=scale,
                          out=gk[rows].view(k3.shape))  # fmt: skip
            if gbias is not None:
                gbias += dp.view(-1, heads, s, sk).sum(0)
        return gq, gk, gv, gbias, None, None


def attend_short(
    q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None, causal: bool
) -> Tensor:
    """Attention of [..., heads, S, d] q, k, v (v may have its own d) with an optional
    [heads, S, Sk] logit bias, computed in cache-sized chunks (see the module)."""
    lead = q.shape[:-3]
    heads, s = q.shape[-3], q.shape[-2]
    q4, k4, v4 = (t.reshape(-1, *t.shape[-3:]).contiguous() for t in (q, k, v))
    if bias is not None:
        bias = bias.to(q.dtype).contiguous()
    out = _ShortAttention.apply(q4, k4, v4, bias, scale, causal)
    return out.view(*lead, heads, s, v.shape[-1])
