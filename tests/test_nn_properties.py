"""Property tests of `stcnnt_dsl.nn.Block` over random block strings, sizes and options.

For every generated block: the output is [B, T, C_out, H, W] and finite, backward gives
finite gradients for the input and every parameter that takes part, and the same module
runs on a second valid (H, W). Covers 2D (T=1), 2D+T and 3D (T=2..4) inputs, non-square
windows, patches and images, sequential/parallel cells, dense blocks and every norm but
`layer` (which fixes the size; it is tested in test_nn_semantics.py).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from stcnnt_dsl.language.parser import parse_block
from stcnnt_dsl.nn import Block

TOKENS = ["L0", "L1", "G0", "G1", "T0", "T1", "V0", "V1", "C2", "C3"]
NORMS = ["batch2d", "batch3d", "instance2d", "instance3d"]
BASES = [1, 2, 3, 4, 6, 8]  # every window along an axis divides the axis' base
MAX_SIZE = 32

# More examples for a longer hunt: STCNNT_PROPERTY_EXAMPLES=500 pytest tests/test_nn_properties.py
EXAMPLES = int(os.environ.get("STCNNT_PROPERTY_EXAMPLES", "30"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return f"[{v[0]}, {v[1]}]"
    return str(v)


@st.composite
def block_cases(draw):
    """(text, kwargs, in/out channels, B, T, (H, W), (H2, W2), description)."""
    tokens = draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4))
    base_h, base_w = draw(st.sampled_from(BASES)), draw(st.sampled_from(BASES))
    cells = []
    for token in tokens:
        inline: dict[str, object] = {}
        letter = token[0]
        if letter in "GV" and draw(st.booleans()):
            # a fixed grid of windows (the window size follows the input): grid x patch
            # must divide the axis' base
            gh = draw(st.sampled_from(_divisors(base_h)))
            gw = draw(st.sampled_from(_divisors(base_w)))
            inline["grid"] = gh if gh == gw else (gh, gw)
            wh, ww = base_h // gh, base_w // gw  # the window at the smallest size
        elif letter in "LGV":
            wh = draw(st.sampled_from(_divisors(base_h)))
            ww = draw(st.sampled_from(_divisors(base_w)))
            inline["window"] = wh if wh == ww else (wh, ww)
        if letter in "LG":
            ph = draw(st.sampled_from(_divisors(wh)))
            pw = draw(st.sampled_from(_divisors(ww)))
            inline["patch"] = ph if ph == pw else (ph, pw)
        if letter in "LGV":
            if not (letter == "V" and "grid" in inline):  # V+grid: token size not fixed
                inline["qkv"] = draw(st.sampled_from(["conv", "linear"]))
            inline["rel_pos_bias"] = draw(st.sampled_from([True, False, "after_softmax"]))
        if letter == "T":
            inline["causal"] = draw(st.booleans())
            inline["qk_stride"] = draw(st.sampled_from([1, 2]))
        if letter in "LGVT" and draw(st.booleans()):
            inline[draw(st.sampled_from(["cosine", "qk_norm"]))] = True
        text = token
        if inline:
            text += "[" + ", ".join(f"{k}={_value(v)}" for k, v in inline.items()) + "]"
        cells.append(text)
    text = " ".join(cells)

    kwargs: dict[str, object] = {
        "norm": draw(st.sampled_from(NORMS)),
        "dense": draw(st.booleans()),
    }
    if any(t[0] in "LGVT" and t[1] == "1" for t in tokens):  # `cell` needs a mixer
        kwargs["cell"] = draw(st.sampled_from(["sequential", "parallel"]))
    if kwargs["norm"] != "instance2d" or "C3" in tokens:  # they mix frames: no causal cells
        text = text.replace("causal=true", "causal=false")

    cin = draw(st.integers(4, 16))
    cout = draw(st.integers(4, 16))
    mode = draw(st.sampled_from(["2d", "2d+t", "3d"]))
    frames = 1 if mode == "2d" else draw(st.integers(2, 4))
    batch = draw(st.integers(1, 2))
    sizes_h = [base_h * n for n in range(1, MAX_SIZE // base_h + 1)]
    sizes_w = [base_w * n for n in range(1, MAX_SIZE // base_w + 1)]
    h1, h2 = draw(st.lists(st.sampled_from(sizes_h), min_size=2, max_size=2, unique=True))
    w1, w2 = draw(st.sampled_from(sizes_w)), draw(st.sampled_from(sizes_w))
    return text, kwargs, cin, cout, batch, frames, (h1, w1), (h2, w2), mode


def _block_reading(text: str, cin: int, cout: int, kwargs: dict) -> Block:
    """Block(text, ...) with the keywords no cell reads dropped (a Block refuses them):
    e.g. `padding` when every convolution is 1x1, `proj_kernel` when C_in == C_out."""
    from stcnnt_dsl.errors import SpecError

    while True:
        try:
            return Block(text, cin, cout, **kwargs)
        except SpecError as err:
            name = err.path.rsplit(".", 1)[-1]
            if "is not read" not in str(err) or name not in kwargs:
                raise
            del kwargs[name]


def _check_backward(block: Block, x: torch.Tensor) -> None:
    x = x.clone().requires_grad_(True)
    out = block(x)
    (out.square().mean() + out.mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


@SETTINGS
@given(case=block_cases(), train=st.booleans())
def test_random_blocks_run(case, train):
    text, kwargs, cin, cout, batch, frames, size, size2, mode = case
    note(f"Block({text!r}, {cin}, {cout}, **{kwargs}); {mode} B={batch} T={frames} "
         f"sizes {size}, {size2}; train={train}")  # fmt: skip
    torch.manual_seed(0)
    block = Block(text, cin, cout, **kwargs)
    assert len(block.cells) == len(parse_block(text).cells)
    block.train(train)
    if train and batch == 1 and kwargs["norm"] in ("batch2d", "batch3d"):
        batch = 2  # batch norm in training needs more than one value per channel
    for h, w in (size, size2):
        x = torch.randn(batch, frames, cin, h, w)
        with torch.no_grad():
            out = block(x)
        assert out.shape == (batch, frames, cout, h, w)
        assert torch.isfinite(out).all()
    _check_backward(block, torch.randn(batch, frames, cin, *size))


@settings(SETTINGS, max_examples=max(1, EXAMPLES * 2 // 3))
@given(case=block_cases())
def test_random_blocks_are_deterministic_in_eval_and_batch_independent(case):
    """Eval mode: running a batch equals running each sample alone (no cell mixes
    samples), up to float32 rounding."""
    text, kwargs, cin, cout, _, frames, size, _, _ = case
    torch.manual_seed(0)
    block = Block(text, cin, cout, **kwargs).eval()
    x = torch.randn(2, frames, cin, *size)
    with torch.no_grad():
        whole = block(x)
        alone = torch.cat([block(x[i : i + 1]) for i in range(2)])
    scale = max(1.0, whole.abs().max().item())
    torch.testing.assert_close(whole, alone, rtol=1e-4, atol=1e-4 * scale)


@settings(max_examples=max(1, EXAMPLES * 5 // 6), deadline=None)
@given(
    window=st.tuples(st.sampled_from([2, 4, 8]), st.sampled_from([2, 4, 8])),
    n=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    kind=st.sampled_from(["L", "G", "V"]),
)
def test_size_rule_matches_forward(window, n, kind):
    """A block accepts exactly the sizes its rule accepts: multiples of the window run,
    one pixel more is a ShapeError naming the cell (never a raw torch error)."""
    from stcnnt_dsl.errors import ShapeError

    wh, ww = window
    inline = f"window=[{wh}, {ww}]" + ("" if kind == "V" else ", patch=1")
    block = Block(f"T1 {kind}1[{inline}]", 4, 4).eval()
    h, w = wh * n[0], ww * n[1]
    with torch.no_grad():
        assert block(torch.randn(1, 2, 4, h, w)).shape == (1, 2, 4, h, w)
        with pytest.raises(ShapeError, match="cell 1") as err:
            block(torch.randn(1, 2, 4, h + 1, w))
    if wh > 1:
        assert all(v % wh == 0 for v in err.value.nearest["H"])
        assert math.gcd(h + 1, wh) != wh


@SETTINGS
@given(
    case=block_cases(),
    padding=st.sampled_from(["zeros", "reflect"]),
    kernels=st.tuples(*[st.sampled_from([1, 3, 5])] * 3),
    size=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    frames=st.integers(1, 3),
)
def test_any_size_runs_or_is_a_shape_error(case, padding, kernels, size, frames):
    """On an arbitrary (T, H, W) a block either runs, with the right shape, or raises a
    ShapeError (from its size rule) before any torch error can happen; and the rule
    agrees with `check_input`."""
    from stcnnt_dsl.errors import ShapeError

    text, kwargs, cin, cout, _, _, _, _, _ = case
    mixer_kernel, qkv_kernel, proj_kernel = kernels
    kwargs = dict(kwargs, padding=padding, mixer_kernel=mixer_kernel, proj_kernel=proj_kernel)
    if any(c.kind in ("local", "global", "vit", "temporal") for c in parse_block(text).cells):
        kwargs["qkv_kernel"] = qkv_kernel
    block = _block_reading(text, cin, cout, kwargs).eval()
    note(f"Block({text!r}, {cin}, {cout}, **{kwargs}) on T={frames}, size {size}")
    x = torch.randn(1, frames, cin, *size)
    try:
        block.check_input(x)
    except ShapeError as err:
        event(f"rejected: {err.rule.split(':')[0]}")
        with pytest.raises(ShapeError):
            block(x)
        return
    event("runs")
    with torch.no_grad():
        out = block(x)
    assert out.shape == (1, frames, cout, *size)
    assert torch.isfinite(out).all()
