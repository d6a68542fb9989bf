"""Explicit attention (batched matmul, softmax, batched matmul): the one written-out
computation of attention in the library.

`functional.attend` runs it where no fused kernel fits (temporal attention's huge heads,
dropout, autocast, exports and FLOP counters), and `short_attention` runs it for double
backward, which needs differentiable ops. It lives apart from both so that each can
import it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attend_explicit", "bias_times_v", "future_mask"]


def future_mask(s: int, sk: int, device: torch.device) -> Tensor:
    """[s, sk] True where a key comes after its query (causal attention's excluded part)."""
    return torch.ones(s, sk, dtype=torch.bool, device=device).triu(1)


def bias_times_v(bias: Tensor, v: Tensor) -> Tensor:
    """bias @ v for a [heads, S, Sk] bias and [..., heads, Sk, dv] values, without
    broadcasting the bias over the batch (which would materialise S x Sk per sequence)."""
    heads, s, sk = bias.shape
    dv = v.shape[-1]
    lead = v.shape[:-3]
    vt = v.reshape(-1, heads, sk, dv).permute(1, 2, 0, 3).reshape(heads, sk, -1)
    out = torch.bmm(bias.to(v.dtype), vt)  # [heads, S, batch * dv]
    return out.view(heads, s, -1, dv).permute(2, 0, 1, 3).reshape(*lead, heads, s, dv)


def attend_explicit(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    logit_bias: Tensor | None = None,
    prob_bias: Tensor | None = None,
    causal: bool = False,
    dropout: float = 0.0,
    *,
    plain: bool = False,
) -> Tensor:
    """Attention of [..., heads, S, d] q, k, v (v may have its own d) with batched
    matmuls on 3-D views (no copies for contiguous or batch-mergeable inputs).

    The scale rides in the matmul (baddbmm's alpha), so neither q nor the scores take an
    extra pass; `plain` uses bmm and a multiply instead, the ops that tracing FLOP
    counters (fvcore) know. Softmax runs in float32 for half-precision inputs.
    `prob_bias` is added to the probabilities: (P + B) V as P V + B V, the same products
    as the fused path and the FLOP formulas.
    """
    batch = q.shape[:-2]
    s, sk, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    q3, k3, v3 = (
        q.reshape(-1, s, q.shape[-1]),
        k.reshape(-1, sk, k.shape[-1]),
        v.reshape(-1, sk, dv),
    )
    if plain:
        scores = torch.bmm(q3, k3.transpose(1, 2)) * scale
    else:
        zero = torch.zeros((), dtype=q.dtype, device=q.device)
        scores = torch.baddbmm(zero, q3, k3.transpose(1, 2), beta=0.0, alpha=scale)
    scores = scores.view(*batch, s, sk)
    if logit_bias is not None:
        scores = scores + logit_bias.to(scores.dtype)
    if causal:
        scores = scores.masked_fill(future_mask(s, sk, q.device), float("-inf"))
    if scores.dtype in (torch.float16, torch.bfloat16):
        probs = torch.softmax(scores, -1, dtype=torch.float32).to(scores.dtype)
    else:
        probs = scores.softmax(-1)
    if dropout:
        probs = F.dropout(probs, dropout)
    out = torch.bmm(probs.reshape(-1, s, sk), v3).view(*batch, s, dv)
    if prob_bias is not None:
        out = out + bias_times_v(prob_bias, v)
    return out
