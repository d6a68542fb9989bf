"""The cache-chunked CPU kernel for short sequences (`nn.short_attention`): the same
values and gradients as the explicit computation, whatever the chunking; nothing S x S
kept for the backward; used exactly where `attend` should use it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stcnnt_dsl.nn import functional, short_attention, tuning
from stcnnt_dsl.nn.short_attention import attend_short


def _inputs(shape, sk=None, dv=None, bias=False, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    *lead, heads, s, d = shape
    sk, dv = sk or s, dv or d
    q = torch.randn(*lead, heads, s, d, generator=gen, dtype=dtype)
    k = torch.randn(*lead, heads, sk, d, generator=gen, dtype=dtype)
    v = torch.randn(*lead, heads, sk, dv, generator=gen, dtype=dtype)
    b = torch.randn(heads, s, sk, generator=gen, dtype=dtype) if bias else None
    return [t.requires_grad_() if t is not None else None for t in (q, k, v, b)]


def _explicit(q, k, v, scale, bias, causal):
    """The textbook formula, written independently of the library."""
    scores = torch.einsum("...sd,...td->...st", q, k) * scale
    if bias is not None:
        scores = scores + bias
    if causal:
        s, sk = scores.shape[-2:]
        later = torch.arange(sk) > torch.arange(s)[:, None]
        scores = scores.masked_fill(later, float("-inf"))
    return torch.einsum("...st,...td->...sd", scores.softmax(-1), v)


@pytest.mark.parametrize("chunk_bytes", [1, 3000, 1 << 20])  # one sequence, ragged, one chunk
@pytest.mark.parametrize(
    "bias, causal", [(False, False), (True, False), (False, True), (True, True)]
)
def test_values_and_gradients_equal_the_explicit_computation(
    chunk_bytes, bias, causal, monkeypatch
):
    monkeypatch.setattr(short_attention, "CHUNK_BYTES", chunk_bytes)
    q, k, v, b = _inputs((5, 3, 4, 9, 6), dv=7, bias=bias)
    inputs = [t for t in (q, k, v, b) if t is not None]
    grad = torch.randn(5, 3, 4, 9, 7, dtype=torch.float64)
    got = attend_short(q, k, v, 0.37, b, causal)
    want = _explicit(q, k, v, 0.37, b, causal)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(got, inputs, grad)
    for g, w in zip(grads, torch.autograd.grad(want, inputs, grad), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-11, atol=1e-11)


def test_causal_queries_never_see_later_keys():
    q, k, v, _ = _inputs((2, 2, 6, 4))
    out = attend_short(q, k, v, 0.5, None, True)
    (gk,) = torch.autograd.grad(out[..., 2, :].sum(), (k,))
    assert gk[..., 3:, :].abs().max() == 0 and gk[..., :3, :].abs().max() > 0


def test_double_backward_and_gradcheck():
    q, k, v, b = _inputs((2, 2, 5, 4), bias=True)

    def fn(q, k, v, b):
        return attend_short(q, k, v, 0.5, b, True)

    assert torch.autograd.gradcheck(fn, (q, k, v, b))
    assert torch.autograd.gradgradcheck(fn, (q, k, v, b))


def test_backward_keeps_only_the_inputs():
    """Only q, k, v (and the bias) are saved: no probabilities, no output."""
    q, k, v, b = _inputs((8, 4, 16, 4), bias=True, dtype=torch.float32)
    out = attend_short(q, k, v, 0.5, b, False)
    node = (
        out.grad_fn.next_functions[0][0]
        if out.grad_fn.name() != "_ShortAttentionBackward"
        else out.grad_fn
    )
    saved = [t.shape for t in node.saved_tensors if t is not None]
    assert sorted(saved) == sorted([q.shape, k.shape, v.shape, b.shape])


@settings(max_examples=25, deadline=None)
@given(
    frames=st.sampled_from([1, 3]),  # 2D, 2D+T / 3D lead dims
    windows=st.integers(1, 5),
    heads=st.integers(1, 4),
    s=st.integers(1, 20),
    d=st.integers(4, 12),
    chunk=st.sampled_from([1, 700, 1 << 20]),
)
def test_property_agrees_with_explicit(frames, windows, heads, s, d, chunk):
    old = short_attention.CHUNK_BYTES
    short_attention.CHUNK_BYTES = chunk
    try:
        q, k, v, _ = _inputs((frames, windows, heads, s, d), seed=s * 31 + d)
        got = attend_short(q, k, v, d**-0.5, None, False)
        torch.testing.assert_close(got, _explicit(q, k, v, d**-0.5, None, False),
                                   rtol=1e-12, atol=1e-12)  # fmt: skip
    finally:
        short_attention.CHUNK_BYTES = old


class _Spy:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = short_attention._ShortAttention.apply

        def apply(*args):
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(short_attention._ShortAttention, "apply", apply)


@pytest.mark.parametrize(
    "d, dropout, dtype, used",
    [
        (4, 0.0, torch.float32, True),
        (64, 0.0, torch.float32, True),
        (2, 0.0, torch.float32, False),  # tiny heads: degenerate matmuls
        (65, 0.0, torch.float32, False),  # large heads (temporal attention): matmul work
        (8, 0.1, torch.float32, False),  # dropout: the explicit kernel
        (8, 0.0, torch.bfloat16, False),  # half precision: softmax in float32 elsewhere
    ],
)
def test_attend_routes_short_cpu_sequences_here(d, dropout, dtype, used, forced, monkeypatch):
    forced(sdpa_min_tokens=32)
    spy = _Spy(monkeypatch)
    q, k, v = (torch.randn(3, 2, 16, d, dtype=dtype) for _ in range(3))
    functional.attend(q, k, v, dropout=dropout)
    assert (spy.calls > 0) == used


def test_long_sequences_and_autocast_keep_their_kernels(forced, monkeypatch):
    forced(sdpa_min_tokens=32)
    spy = _Spy(monkeypatch)
    q, k, v = (torch.randn(2, 2, 40, 8) for _ in range(3))
    functional.attend(q, k, v)  # 40 >= 32 tokens: SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):
        functional.attend(*(t[..., :16, :] for t in (q, k, v)))
    assert spy.calls == 0


def test_threshold_is_where_sdpa_stops_winning(monkeypatch):
    """`stcnnt tune` measures from long to short sequences; the first length where the
    short kernel wins clearly ends the search."""
    from stcnnt_dsl.tools import tune

    wins = {128: "sdpa", 64: "sdpa", 32: "short", 16: "short"}
    tokens_of = {}

    def problem(tokens, sdpa, pixels, gen):
        fn = lambda: None  # noqa: E731
        tokens_of[fn] = (tokens, sdpa)
        return fn

    def times(fns, repeats):
        out = {}
        for name, fn in fns.items():
            tokens, sdpa = tokens_of[fn]
            fast = wins[tokens] == ("sdpa" if sdpa else "short")
            out[name] = [1.0 if fast else 2.0] * repeats
        return out

    monkeypatch.setattr(tune, "_attention_problem", problem)
    monkeypatch.setattr(tuning, "interleaved_times", times)
    measured = {}
    assert tune._attention_threshold(32, 3, 4096, measured, []) == 64
    assert "attention_16_tokens_train" not in measured  # stopped at 32
    wins.update({128: "short"})
    assert tune._attention_threshold(32, 3, 4096, {}, []) == 256
