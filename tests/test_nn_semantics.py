"""Behaviour of the layer library (stcnnt_dsl.nn): what each attention attends to, that it
computes the method's attention exactly, the norms' axes, the cell and block wiring, and
the errors users see.

Influence sets are measured with autograd (gradient of one output pixel w.r.t. the
input) in float64, eval mode, with `norm="batch2d"` (per-pixel affine in eval) and no
mixer, and compared with the set computed from the window geometry.
"""

from __future__ import annotations

import math
import re
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import stcnnt_dsl.nn.functional as nnf
from stcnnt_dsl.errors import ShapeError, SpecError, STCNNTError
from stcnnt_dsl.graph.geometry import cell_geometry
from stcnnt_dsl.language.options import OPTIONS
from stcnnt_dsl.models.cells import make_cell
from stcnnt_dsl.nn import tuning
from stcnnt_dsl.nn.cells import DropPath
from stcnnt_dsl.nn.checks import check_input_tensor
from stcnnt_dsl.nn.norms import Norm5d

KIND = {"L": "local", "G": "global", "T": "temporal", "V": "vit", "C2": "conv2d", "C3": "conv3d"}
DT = torch.float64


# --------------------------------------------------------------------------- helpers


def options(**values):
    """Fully resolved options: every library default, updated with `values`."""
    out = {name: opt.default for name, opt in OPTIONS.items()}
    out.update(values)
    return out


def cell(kind, cin=4, cout=4, *, mixer=False, input_size=None, seed=0, **values):
    """A float64 cell in eval mode (kind: a letter L/G/T/V/C2/C3 or a kind name)."""
    torch.manual_seed(seed)
    geometry = cell_geometry(KIND.get(kind, kind), mixer, cin, cout, options(**values), input_size)
    module = make_cell(geometry)
    return module.to(DT).eval()


def randn(*shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT)


def influence(module, x, b, t, y, xx):
    """Boolean [B, T, H, W]: the input pixels that the output pixel (b, t, :, y, xx)
    depends on (non-zero gradient in any channel)."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    weights = randn(out.shape[2], seed=7)  # a random mix of channels: no cancellation
    (out[b, t, :, y, xx] * weights).sum().backward()
    return x.grad.abs().sum(dim=2) > 0


def dilate(mask, r):
    """Square dilation of a bool [H, W] mask by r pixels (clipped at the border)."""
    if r == 0:
        return mask.clone()
    m = mask[None, None].double()
    return F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)[0, 0] > 0


def window_cover(mask, window):
    """Every pixel of every window that contains a pixel of `mask` (L's reach)."""
    wh, ww = window
    h, w = mask.shape
    hit = mask.view(h // wh, wh, w // ww, ww).any(dim=3).any(dim=1)  # [nh, nw]
    return hit.repeat_interleave(wh, 0).repeat_interleave(ww, 1)


def grid_cover(mask, window, patch):
    """Every pixel whose in-window patch position is that of a pixel of `mask` (G's
    reach: the same patch position in every window)."""
    wh, ww = window
    ph, pw = patch
    h, w = mask.shape
    ys = (torch.arange(h) % wh) // ph
    xs = (torch.arange(w) % ww) // pw
    cls = ys[:, None] * (ww // pw) + xs[None, :]  # [H, W]: patch position in its window
    hit = torch.zeros((wh // ph) * (ww // pw), dtype=torch.bool)
    hit[cls[mask]] = True
    return hit[cls]


def frame_mask(shape, b, t, frame):
    """[B, T, H, W] bool, `frame` ([H, W]) at (b, t) and False elsewhere."""
    out = torch.zeros(shape, dtype=torch.bool)
    out[b, t] = frame
    return out


def point(h, w, y, x):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y, x] = True
    return m


# ------------------------------------------------- reference attention (the method)


def ref_attend(q, k, v, *, cosine=False, qk_norm=False, bias=None, after=False, causal=False):
    """softmax(q k^T / sqrt(d) [+ bias]) [+ bias] v on [..., heads, S, d] tensors."""
    if qk_norm:  # standardise over the per-head features, no affine
        q = (q - q.mean(-1, keepdim=True)) / q.std(-1, keepdim=True)
        k = (k - k.mean(-1, keepdim=True)) / k.std(-1, keepdim=True)
    if cosine:  # normalised q.k, no temperature
        q = q / q.norm(dim=-1, keepdim=True)
        k = k / k.norm(dim=-1, keepdim=True)
        scale = 1.0
    else:
        scale = 1.0 / math.sqrt(q.shape[-1])
    logits = torch.einsum("...id,...jd->...ij", q, k) * scale
    if bias is not None and not after:
        logits = logits + bias
    if causal:
        s = logits.shape[-1]
        later = torch.ones(s, s, dtype=torch.bool).triu(1)
        logits = logits.masked_fill(later, float("-inf"))
    probs = logits.softmax(dim=-1)
    if bias is not None and after:
        probs = probs + bias
    return torch.einsum("...ij,...jd->...id", probs, v)


def patch_origins(h, w, window, patch, mode):
    """Token sequences of one frame as lists of patch top-left corners.

    local: one sequence per window, its patches row-major; global: one sequence per
    in-window patch position, the windows row-major."""
    (wh, ww), (ph, pw) = window, patch
    nh, nw, qh, qw = h // wh, w // ww, wh // ph, ww // pw
    if mode == "local":
        return [
            [(iy * wh + py * ph, ix * ww + px * pw) for py in range(qh) for px in range(qw)]
            for iy in range(nh)
            for ix in range(nw)
        ]
    return [
        [(iy * wh + py * ph, ix * ww + px * pw) for iy in range(nh) for ix in range(nw)]
        for py in range(qh)
        for px in range(qw)
    ]


def to_tokens(fmap, seqs, patch):
    """[N, C, H, W] -> [N, nseq, S, ph*pw*C], token vector ordered (ph, pw, C), C fastest."""
    ph, pw = patch
    n = fmap.shape[0]
    return torch.stack(
        [
            torch.stack(
                [fmap[:, :, y : y + ph, x : x + pw].permute(0, 2, 3, 1).reshape(n, -1)
                 for (y, x) in seq],
                dim=1,
            )
            for seq in seqs
        ],
        dim=1,
    )  # fmt: skip


def from_tokens(tokens, seqs, patch, c, h, w):
    ph, pw = patch
    n = tokens.shape[0]
    out = tokens.new_zeros(n, c, h, w)
    for i, seq in enumerate(seqs):
        for j, (y, x) in enumerate(seq):
            out[:, :, y : y + ph, x : x + pw] = (
                tokens[:, i, j].view(n, ph, pw, c).permute(0, 3, 1, 2)
            )
    return out


def ref_bias_index(grid, extent):
    """Swin relative position index (offset i - j), clipped at +-(extent - 1)."""
    gh, gw = grid
    eh, ew = extent
    n = gh * gw
    idx = torch.zeros(n, n, dtype=torch.long)
    for i in range(n):
        for j in range(n):
            (yi, xi), (yj, xj) = divmod(i, gw), divmod(j, gw)
            dy = max(-(eh - 1), min(eh - 1, yi - yj)) + eh - 1
            dx = max(-(ew - 1), min(ew - 1, xi - xj)) + ew - 1
            idx[i, j] = dy * (2 * ew - 1) + dx
    return idx


def split_heads(t, heads):
    """[..., S, D] -> [..., heads, S, D/heads]: heads are contiguous chunks of the token."""
    return t.unflatten(-1, (heads, -1)).transpose(-2, -3)


def ref_spatial(attn, x, *, rel_pos_bias=False):
    """The L / G / V attention of the method, from the module's own parameters."""
    b, t, cin, h, w = x.shape
    f = x.reshape(b * t, cin, h, w)
    c = attn.out_channels
    grid = getattr(attn, "grid", None)  # G/V with a fixed number of windows
    window = (h // grid[0], w // grid[1]) if grid else tuple(attn.window)
    patch = window if attn.kind == "vit" else tuple(attn.patch)
    mode = "local" if attn.kind == "local" else "global"
    seqs = patch_origins(h, w, window, patch, mode)
    if isinstance(attn.qkv, torch.nn.Conv2d):
        kernel = attn.qkv.kernel_size[0]
        maps = F.conv2d(f, attn.qkv.weight, padding=kernel // 2)
        q, k, v = (to_tokens(maps[:, i * c : (i + 1) * c], seqs, patch) for i in range(3))
    else:  # linear maps of the flattened patch vectors
        d = c * patch[0] * patch[1]
        qkv = to_tokens(f, seqs, patch) @ attn.qkv.weight.T
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    bias = None
    if rel_pos_bias:
        if mode == "local":
            grid = (window[0] // patch[0], window[1] // patch[1])
        else:
            grid = (h // window[0], w // window[1])
        index = ref_bias_index(grid, attn.bias_extent)
        bias = attn.bias_table[index].permute(2, 0, 1)  # [heads, S, S]
    heads = attn.heads
    out = ref_attend(
        split_heads(q, heads), split_heads(k, heads), split_heads(v, heads),
        cosine=attn.cosine, qk_norm=attn.qk_norm, bias=bias,
        after=rel_pos_bias == "after_softmax",
    )  # fmt: skip
    out = out.transpose(-2, -3).flatten(-2)
    y = from_tokens(out, seqs, patch, c, h, w)
    if attn.proj is not None:
        y = F.conv2d(y, attn.proj.weight, attn.proj.bias, padding=1)
    return y.reshape(b, t, c, h, w)


def ref_temporal(attn, x, *, causal=False, qk_stride=1):
    """The T attention of the method: a token is a whole frame; heads are groups of
    channels; the token vector is flattened (C/heads, H, W), W fastest."""
    b, t, cin, h, w = x.shape
    f = x.reshape(b * t, cin, h, w)
    c, heads = attn.out_channels, attn.heads
    if qk_stride == 1:
        kernel = attn.qkv.kernel_size[0]
        maps = F.conv2d(f, attn.qkv.weight, padding=kernel // 2)
        qm, km, vm = maps[:, :c], maps[:, c : 2 * c], maps[:, 2 * c :]
    else:
        kernel = attn.qk.kernel_size[0]
        maps = F.conv2d(f, attn.qk.weight, stride=qk_stride, padding=kernel // 2)
        qm, km = maps[:, :c], maps[:, c:]
        vm = F.conv2d(f, attn.v.weight, padding=kernel // 2)

    def tokens(m):  # [B*T, C, h, w] -> [B, heads, T, C/heads*h*w]
        return m.reshape(b, t, heads, -1).transpose(1, 2)

    out = ref_attend(
        tokens(qm), tokens(km), tokens(vm), cosine=attn.cosine, qk_norm=attn.qk_norm,
        causal=causal,
    )  # fmt: skip
    y = out.transpose(1, 2).reshape(b * t, c, h, w)
    if attn.proj is not None:
        y = F.conv2d(y, attn.proj.weight, attn.proj.bias, padding=1)
    return y.reshape(b, t, c, h, w)


class SdpaSpy:
    """Counts calls of F.scaled_dot_product_attention (the fused path of `attend`)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = F.scaled_dot_product_attention

        def spy(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", spy)


# --------------------------------------------------------------- L: local windows


LOCAL_GEOMETRY = [
    # (H, W, window, patch, probe pixels)
    (16, 16, (8, 8), (2, 2), [(0, 0), (5, 9), (8, 7), (15, 15)]),
    (8, 16, (4, 8), (2, 4), [(0, 0), (3, 8), (4, 7), (6, 12)]),  # non-square everything
    (12, 24, (4, 8), (2, 4), [(5, 9), (11, 23), (4, 16)]),
]


@pytest.mark.parametrize("h, w, window, patch, probes", LOCAL_GEOMETRY)
@pytest.mark.parametrize("halo", [False, True], ids=["exact", "conv-halo"])
def test_local_influence_is_the_window(h, w, window, patch, probes, halo):
    """L: an output pixel depends exactly on its window; with the 3x3 Q/K/V conv and the
    3x3 output projection, on the windows within 1 pixel, dilated by 1 pixel."""
    kw = {} if halo else {"qkv_kernel": 1, "out_proj": False}
    m = cell("L", window=window, patch=patch, norm="batch2d", **kw)
    x = randn(2, 2, 4, h, w)
    for y, xx in probes:
        got = influence(m, x, 1, 0, y, xx)
        p = point(h, w, y, xx)
        if halo:
            frame = dilate(window_cover(dilate(p, 1), window), 1)
        else:
            frame = window_cover(p, window)
        assert torch.equal(got, frame_mask(got.shape, 1, 0, frame)), (y, xx)


def test_local_perturbation_outside_window_has_no_effect():
    """Changing a pixel outside the (halo-extended) window leaves the output pixel as it
    is; changing one inside the window changes it."""
    m = cell("L", window=(4, 8), patch=(2, 4), norm="batch2d")
    x = randn(1, 1, 4, 12, 24)
    y0, x0 = 5, 10  # window rows 4..7, cols 8..15; its halo region rows 3..8, cols 7..16
    base = m(x)[0, 0, :, y0, x0]
    for (y, xx), inside in [((4, 15), True), ((7, 8), True), ((0, 0), False),
                            ((10, 12), False), ((5, 20), False), ((5, 3), False)]:  # fmt: skip
        x2 = x.clone()
        x2[0, 0, :, y, xx] += 3.0
        changed = not torch.allclose(m(x2)[0, 0, :, y0, x0], base, rtol=0, atol=1e-12)
        assert changed == inside, (y, xx)


# --------------------------------------------------------------- G: global grid


GLOBAL_GEOMETRY = [
    (16, 16, (4, 4), (2, 2), [(0, 0), (5, 6), (15, 15)]),
    (8, 16, (4, 8), (2, 4), [(0, 0), (3, 8), (6, 13)]),
    (12, 16, (4, 8), (2, 4), [(5, 9), (11, 15), (2, 1)]),
]


@pytest.mark.parametrize("h, w, window, patch, probes", GLOBAL_GEOMETRY)
@pytest.mark.parametrize("halo", [False, True], ids=["exact", "conv-halo"])
def test_global_influence_is_the_grid(h, w, window, patch, probes, halo):
    """G: an output pixel depends on the patch at the same in-window position in every
    window (a strided grid), and on nothing else (modulo the conv halos)."""
    kw = {} if halo else {"qkv_kernel": 1, "out_proj": False}
    m = cell("G", window=window, patch=patch, norm="batch2d", **kw)
    x = randn(2, 3, 4, h, w)
    for y, xx in probes:
        got = influence(m, x, 0, 2, y, xx)
        p = point(h, w, y, xx)
        if halo:
            frame = dilate(grid_cover(dilate(p, 1), window, patch), 1)
        else:
            frame = grid_cover(p, window, patch)
            # spell it out: same in-window patch position, every window
            ys = (torch.arange(h) % window[0]) // patch[0] == (y % window[0]) // patch[0]
            xs = (torch.arange(w) % window[1]) // patch[1] == (xx % window[1]) // patch[1]
            assert torch.equal(frame, ys[:, None] & xs[None, :])
        assert torch.equal(got, frame_mask(got.shape, 0, 2, frame)), (y, xx)


def test_global_grid_keeps_the_number_of_windows():
    """G with `grid`: the image is split into a fixed grid of windows, whose size follows
    the input; an output pixel sees the same in-window patch position in every window.
    One module, two input sizes."""
    m = cell("G", grid=(3, 2), patch=(2, 4), norm="batch2d", qkv_kernel=1, out_proj=False)
    for h, w in [(12, 16), (18, 32)]:
        window = (h // 3, w // 2)
        x = randn(1, 2, 4, h, w)
        for y, xx in [(0, 0), (h - 1, w - 1), (h // 2, 5)]:
            got = influence(m, x, 0, 1, y, xx)
            frame = grid_cover(point(h, w, y, xx), window, (2, 4))
            assert frame.sum() == 3 * 2 * 2 * 4  # one 2x4 patch in each of the 6 windows
            assert torch.equal(got, frame_mask(got.shape, 0, 1, frame)), (h, w, y, xx)


def test_grid_bias_table_is_sized_by_the_grid():
    g = cell("G", grid=(3, 2), patch=1, rel_pos_bias=True).attn
    assert g.bias_extent == (3, 2) and g.bias_table.shape == (5 * 3, g.heads)
    v = cell("V", grid=4, rel_pos_bias=True).attn
    assert v.bias_extent == (4, 4) and v.bias_table.shape == (7 * 7, v.heads)


def test_vit_grid_rejects_linear_qkv():
    with pytest.raises(SpecError, match="qkv=linear"):
        cell("V", grid=4, qkv="linear")


# --------------------------------------------------------------- V: whole frame


@pytest.mark.parametrize("halo", [False, True], ids=["exact", "conv-halo"])
def test_vit_influence_is_the_frame(halo):
    """V (one head): every pixel of the frame, nothing in other frames."""
    kw = {} if halo else {"qkv_kernel": 1, "out_proj": False}
    m = cell("V", window=(4, 8), norm="batch2d", heads=1, **kw)
    x = randn(2, 3, 4, 8, 16)
    for y, xx in [(0, 0), (6, 11)]:
        got = influence(m, x, 1, 1, y, xx)
        frame = torch.ones(8, 16, dtype=torch.bool)
        assert torch.equal(got, frame_mask(got.shape, 1, 1, frame))


def test_vit_heads_are_contiguous_chunks_of_the_token():
    """V with 4 heads, window 4x8, 4 channels: the token (4, 8, C) has 128 features and
    a head holds 32 contiguous ones, i.e. one window row (8 pixels x 4 channels, C
    fastest). So an output pixel sees only its own in-window row, in every window."""
    m = cell("V", window=(4, 8), norm="batch2d", heads=4, qkv_kernel=1, out_proj=False)
    assert m.attn.heads == 4
    x = randn(1, 1, 4, 8, 16)
    for y, xx in [(0, 0), (6, 11), (1, 15)]:
        got = influence(m, x, 0, 0, y, xx)[0, 0]
        rows = torch.arange(8) % 4 == y % 4
        assert torch.equal(got, rows[:, None].expand(8, 16)), (y, xx)


# --------------------------------------------------------------- T: frames


def test_temporal_is_equivariant_to_frame_permutation():
    m = cell("T", mixer=True, norm="batch2d")
    x = randn(2, 5, 4, 6, 8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(m(x[:, perm]), m(x)[:, perm], rtol=1e-10, atol=1e-12)


def test_temporal_causal_depends_on_past_only():
    m = cell("T", norm="instance2d", causal=True)  # a norm without statistics over frames
    x = randn(2, 5, 4, 6, 8)
    for t in range(5):
        got = influence(m, x, 1, t, 3, 4)  # [B, T, H, W]
        per_frame = got[1].any(dim=(1, 2))
        assert per_frame[: t + 1].all(), t  # itself and every earlier frame
        assert not per_frame[t + 1 :].any(), t  # never a later one
        assert not got[0].any()
        # a frame token is the whole frame: every pixel of an earlier frame matters
        if t > 0:
            assert got[1, 0].all()


def test_temporal_non_causal_sees_all_frames():
    m = cell("T", norm="batch2d")
    got = influence(m, randn(1, 4, 4, 6, 8), 0, 0, 2, 2)
    assert got[0].all()


@pytest.mark.parametrize("kind", ["L", "G", "T", "V", "C2", "C3"])
def test_no_influence_across_batch(kind):
    kw = {"mixer": True} if kind not in ("C2", "C3") else {}
    m = cell(kind, 4, 6, window=4, patch=2, norm="batch2d", **kw)
    got = influence(m, randn(3, 3, 4, 8, 8), 1, 1, 3, 5)
    assert got[1].any()
    assert not got[0].any() and not got[2].any()


# ------------------------------------------------- attention == the method's maths


SPATIAL_VARIANTS = [
    {},
    {"cosine": True},
    {"qk_norm": True},
    {"rel_pos_bias": True},
    {"rel_pos_bias": "after_softmax"},
    {"qkv": "linear"},
    {"qkv": "linear", "rel_pos_bias": "after_softmax", "cosine": True},
    {"heads": 4, "qk_norm": True, "rel_pos_bias": True},
]


def _ids(values):
    return ",".join(f"{k}={v}" for k, v in values.items()) or "plain"


# (kind, H, W, geometry, sdpa?) -- sequences of >= 32 tokens use the SDPA kernel
SPATIAL_SHAPES = [
    ("L", 8, 16, {"window": (4, 8), "patch": (2, 4)}, False),  # 4 patches per window
    ("L", 16, 32, {"window": 16, "patch": 2}, True),  # 64 patches per window
    ("G", 12, 16, {"window": (4, 8), "patch": (2, 4)}, False),  # 3x2 windows
    ("G", 32, 32, {"window": 4, "patch": 2}, True),  # 64 windows
    ("G", 12, 16, {"grid": (3, 2), "patch": (2, 4)}, False),  # grid: windows 4x8
    ("G", 32, 32, {"grid": 8, "patch": 2}, True),
    ("V", 8, 16, {"window": (4, 8)}, False),
    ("V", 32, 32, {"window": 4}, True),
    ("V", 8, 16, {"grid": 2}, False),  # windows 4x8
    ("V", 32, 32, {"grid": 8}, True),
]


def _geometry_id(g):
    return ",".join(f"{k}={v}" for k, v in g.items()).replace(" ", "")


@pytest.mark.parametrize(
    "kind, h, w, geometry, sdpa, values",
    [
        pytest.param(
            *case, values,
            id=f"{case[0]}-{case[1]}x{case[2]}-{_geometry_id(case[3])}-{_ids(values)}",
        )
        for case in SPATIAL_SHAPES
        for values in SPATIAL_VARIANTS
        # V on a grid has no fixed token size for qkv=linear (tested as an error below)
        if not (case[0] == "V" and "grid" in case[3] and values.get("qkv") == "linear")
    ],
)  # fmt: skip
def test_spatial_attention_matches_reference(kind, h, w, geometry, sdpa, values, monkeypatch):
    values = {"rel_pos_bias": False, **values}
    attn = cell(kind, 4, 8, norm="batch2d", **geometry, **values).attn
    if values["rel_pos_bias"]:
        assert attn.bias_table is not None
        with torch.no_grad():  # a bias large enough to matter
            attn.bias_table.normal_(0, 0.5)
    x = randn(2, 2, 4, h, w)
    spy = SdpaSpy(monkeypatch)
    with torch.no_grad():
        got = attn(x)
        want = ref_spatial(attn, x, rel_pos_bias=values["rel_pos_bias"])
    assert (spy.calls > 0) == sdpa
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


TEMPORAL_VARIANTS = [
    {},
    {"cosine": True},
    {"qk_norm": True},
    {"causal": True},
    {"qk_stride": 2},
    {"qk_stride": 2, "causal": True, "cosine": True},
    {"heads": 2, "qk_norm": True, "causal": True},
]


@pytest.mark.parametrize("values", TEMPORAL_VARIANTS, ids=_ids)
@pytest.mark.parametrize("frames, sdpa", [(5, False), (32, True)])
def test_temporal_attention_matches_reference(frames, sdpa, values, monkeypatch):
    # 8 channels, heads 1 or 2, 4x6 frames: per-head dim <= 192 (SDPA is used only up
    # to 512 features per head)
    attn = cell("T", 4, 8, norm="instance2d", heads=values.pop("heads", 1), **values).attn
    x = randn(1, frames, 4, 4, 6)
    spy = SdpaSpy(monkeypatch)
    with torch.no_grad():
        got = attn(x)
        want = ref_temporal(
            attn, x, causal=values.get("causal", False), qk_stride=values.get("qk_stride", 1)
        )
    assert (spy.calls > 0) == sdpa
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    "kind, values",
    [
        ("L", {"window": 8, "patch": 2, "rel_pos_bias": True}),
        ("L", {"window": (4, 8), "patch": (2, 2), "rel_pos_bias": "after_softmax",
               "cosine": True}),
        ("G", {"window": 4, "patch": 2, "rel_pos_bias": True, "qkv": "linear"}),
        ("G", {"window": (2, 4), "patch": (1, 2), "rel_pos_bias": "after_softmax",
               "qk_norm": True}),
        ("V", {"window": 4, "rel_pos_bias": True}),
        ("V", {"grid": (2, 4), "rel_pos_bias": "after_softmax"}),
        ("G", {"grid": 4, "patch": 2, "rel_pos_bias": True, "cosine": True}),
        ("T", {"causal": True, "heads": 2}),
        ("T", {"qk_stride": 2, "cosine": True}),
    ],
)  # fmt: skip
def test_both_kernel_paths_agree(kind, values, monkeypatch):
    """The same input through SDPA (threshold 1) and matmul + softmax (threshold
    infinite) gives the same output, and both match the reference."""
    values = {"rel_pos_bias": False, **values}
    m = cell(kind, 4, 8, norm="instance2d", **values)
    attn = m.attn
    if getattr(attn, "bias_table", None) is not None:
        with torch.no_grad():
            attn.bias_table.normal_(0, 0.5)
    # T: 4x8 frames keep the per-head dim <= 512 (larger heads always use matmul)
    x = randn(2, 6, 4, 4, 8) if kind == "T" else randn(2, 6, 4, 16, 16)
    outs = {}
    for name, threshold in (("sdpa", 1), ("matmul", 10**9)):
        monkeypatch.setattr(tuning, "_active", tuning.Choices(sdpa_min_tokens=threshold))
        spy = SdpaSpy(monkeypatch)
        with torch.no_grad():
            outs[name] = attn(x)
        assert (spy.calls > 0) == (name == "sdpa")
    torch.testing.assert_close(outs["sdpa"], outs["matmul"], rtol=1e-10, atol=1e-11)
    with torch.no_grad():
        if kind == "T":
            want = ref_temporal(attn, x, causal=values.get("causal", False),
                                qk_stride=values.get("qk_stride", 1))  # fmt: skip
        else:
            want = ref_spatial(attn, x, rel_pos_bias=values.get("rel_pos_bias", False))
    torch.testing.assert_close(outs["matmul"], want, rtol=1e-9, atol=1e-10)


def test_global_bias_is_clipped_beyond_its_extent():
    """Without input_size, G's table covers offsets up to +-7 windows; farther windows
    share the edge entry. 20 windows along W exceed it."""
    attn = cell("G", 4, 4, window=(2, 2), patch=1, rel_pos_bias=True).attn
    assert attn.bias_extent == (8, 8)
    assert attn.bias_table.shape == (15 * 15, attn.heads)
    with torch.no_grad():
        attn.bias_table.normal_(0, 0.5)
        x = randn(1, 1, 4, 4, 40)
        torch.testing.assert_close(
            attn(x), ref_spatial(attn, x, rel_pos_bias=True), rtol=1e-9, atol=1e-10
        )


def test_global_bias_extent_follows_input_size():
    attn = cell("G", 4, 4, window=(4, 8), patch=2, input_size=(12, 32)).attn
    assert attn.bias_extent == (3, 4)
    assert attn.bias_table.shape == (5 * 7, attn.heads)


def test_local_bias_table_size():
    attn = cell("L", 4, 4, window=(4, 8), patch=(2, 2)).attn  # 2x4 patches per window
    assert attn.bias_table.shape == (3 * 7, attn.heads)


def _cpu_sdpa_kernels(fn):
    """Names of the aten SDPA kernels `fn` dispatches (a fused one, e.g.
    `_scaled_dot_product_flash_attention_for_cpu`; the math fallback decomposes into
    matmuls and shows no SDPA kernel at all)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        ops: set[str]

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    recorder = Recorder()
    recorder.ops = set()
    with recorder:
        fn()
    return {op for op in recorder.ops if "scaled_dot_product" in op} or {"math fallback"}


def test_sdpa_with_relative_position_bias_uses_the_fused_cpu_kernel():
    """The relative position bias (on by default) must not push CPU SDPA onto its
    unfused math fallback: with a [heads, S, S] (3-D) attn_mask torch 2.13 runs
    `_scaled_dot_product_attention_math` (2-6x slower than the fused kernel here, and
    slower than the library's own matmul path); a [1, heads, S, S] mask keeps the fused
    kernel."""
    q = torch.randn(64, 4, 64, 32)
    bias = torch.randn(4, 64, 64)
    plain = _cpu_sdpa_kernels(lambda: nnf.attend(q, q, q))
    fused = {k for k in plain if "flash" in k}
    if not fused:
        pytest.skip(f"this torch has no fused CPU SDPA kernel (ran {plain})")
    assert q.shape[-2] >= tuning.choices().sdpa_min_tokens  # attend takes its SDPA path
    with_bias = _cpu_sdpa_kernels(lambda: nnf.attend(q, q, q, bias=bias))
    assert fused <= with_bias, f"bias made SDPA run {with_bias} instead of {fused}"


def test_bias_after_softmax_rows_do_not_sum_to_one():
    """after_softmax adds the bias to the probabilities (the reference): with v = 1 the
    output is 1 + row sums of the bias, not 1."""
    q = randn(1, 2, 5, 3, seed=2)
    k = randn(1, 2, 5, 3, seed=3)
    v = torch.ones(1, 2, 5, 1, dtype=DT)
    bias = randn(2, 5, 5, seed=4)
    out = nnf.attend(q, k, v, bias=bias, bias_after_softmax=True)
    torch.testing.assert_close(out[0, ..., 0], 1 + bias.sum(-1))
    out = nnf.attend(q, k, v, bias=bias)  # added to the logits: rows still sum to 1
    torch.testing.assert_close(out, v)


# --------------------------------------------------------------------------- norms


def _moments(y, dims):
    var, mean = torch.var_mean(y, dim=dims, correction=0)
    return mean, var


NORM_AXES = {  # the axes of [B, T, C, H, W] each norm normalises over
    "layer": (2, 3, 4),
    "batch2d": (0, 1, 3, 4),
    "batch3d": (0, 1, 3, 4),
    "instance2d": (3, 4),
    "instance3d": (1, 3, 4),
}


@pytest.mark.parametrize("kind", list(NORM_AXES))
def test_norm_axes(kind):
    norm = Norm5d(kind, 3, input_size=(6, 10) if kind == "layer" else None).to(DT).train()
    x = randn(4, 3, 3, 6, 10) * 3 + randn(4, 3, 3, 1, 1, seed=5) * 5  # per-frame offsets
    y = norm(x)
    mean, var = _moments(y, NORM_AXES[kind])
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-6, rtol=0)
    torch.testing.assert_close(var, torch.ones_like(var), atol=1e-3, rtol=0)  # eps 1e-5
    if kind in ("instance3d", "batch2d", "batch3d", "layer"):
        # not normalised per (b, t, c) frame: the per-frame offsets survive
        mean2d, _ = _moments(y, (3, 4))
        assert mean2d.abs().max() > 0.1


@pytest.mark.parametrize("kind", ["instance2d", "instance3d"])
def test_instance_norms_keep_float64_precision(kind):
    """A float64 input is normalised in float64 (like torch's instance norm), not
    rounded through float32."""
    x = randn(2, 3, 4, 16, 16) * 10 + 3
    y = Norm5d(kind, 4)(x)
    assert y.dtype == DT
    if kind == "instance2d":
        want = F.instance_norm(x.flatten(0, 1), eps=1e-5).unflatten(0, (2, 3))
    else:
        want = F.instance_norm(x.transpose(1, 2), eps=1e-5).transpose(1, 2)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["batch2d", "batch3d"])
def test_batch_norms_track_running_stats_and_are_per_pixel_affine_in_eval(kind):
    norm = Norm5d(kind, 3).to(DT).train()
    x = randn(4, 3, 3, 6, 10) * 2 + 1
    norm(x)
    bn = norm.norm
    flat = x.transpose(0, 2).reshape(3, -1)  # per channel, over B, T, H, W
    torch.testing.assert_close(bn.running_mean, 0.1 * flat.mean(1))
    norm.eval()
    y = norm(x)
    scale = 1 / torch.sqrt(bn.running_var + bn.eps)
    want = (x - bn.running_mean.view(1, 1, 3, 1, 1)) * scale.view(1, 1, 3, 1, 1)
    torch.testing.assert_close(y, want)


@pytest.mark.parametrize("kind", ["batch2d", "batch3d", "instance2d", "instance3d"])
def test_norms_accept_variable_sizes(kind):
    norm = Norm5d(kind, 3).to(DT)
    for size in [(6, 10), (16, 4), (7, 9)]:
        assert norm(randn(2, 2, 3, *size)).shape == (2, 2, 3, *size)


def test_layer_norm_needs_input_size():
    with pytest.raises(STCNNTError, match="input_size"):
        Norm5d("layer", 3)
    with pytest.raises(SpecError, match="input_size"):
        cell("L", 4, 4, norm="layer")
    norm = Norm5d("layer", 3, input_size=(6, 10))
    assert norm.norm.weight.shape == (3, 6, 10)  # per-element affine


def test_unknown_norm_is_a_spec_error():
    with pytest.raises(SpecError, match="norm"):
        Norm5d("group", 3)


# --------------------------------------------------------------------------- cells


def _zero_attention_output(m):
    with torch.no_grad():
        m.attn.proj.weight.zero_()
        m.attn.proj.bias.zero_()


@pytest.mark.parametrize("kind", ["L", "G", "T", "V"])
def test_residual_projection_when_channels_change(kind):
    """C_in != C_out: the residual path is a 1x1 conv with bias (proj_kernel=1);
    C_in == C_out: the identity. Checked with the attention branch zeroed."""
    m = cell(kind, 3, 5, window=4, patch=2)
    assert m.proj is not None and m.proj.kernel_size == (1, 1) and m.proj.bias is not None
    _zero_attention_output(m)
    x = randn(2, 2, 3, 8, 8)
    want = F.conv2d(x.flatten(0, 1), m.proj.weight, m.proj.bias).unflatten(0, (2, 2))
    torch.testing.assert_close(m(x), want)
    same = cell(kind, 5, 5, window=4, patch=2)
    assert same.proj is None
    _zero_attention_output(same)
    x = randn(2, 2, 5, 8, 8)
    torch.testing.assert_close(same(x), x)


def test_residual_projection_kernel_option():
    m = cell("L", 3, 5, window=4, patch=2, proj_kernel=3)
    assert m.proj.kernel_size == (3, 3)


@pytest.mark.parametrize("kind", ["L", "G", "T", "V"])
@pytest.mark.parametrize("channels", [(4, 4), (3, 6)])
def test_sequential_and_parallel_cell_formulas(kind, channels):
    cin, cout = channels
    x = randn(2, 3, cin, 8, 8)
    seq = cell(kind, cin, cout, mixer=True, window=4, patch=2, norm="instance2d")
    par = cell(kind, cin, cout, mixer=True, window=4, patch=2, norm="instance2d",
               cell="parallel")  # fmt: skip

    def res(m, x):
        if m.proj is None:
            return x
        return F.conv2d(x.flatten(0, 1), m.proj.weight, m.proj.bias).unflatten(0, x.shape[:2])

    with torch.no_grad():
        y = res(seq, x) + seq.attn(seq.norm1(x))
        torch.testing.assert_close(seq(x), y + seq.mixer(seq.norm2(y)))
        h = par.norm1(x)
        assert par.norm2 is None and par.mixer[0].in_channels == cin
        torch.testing.assert_close(par(x), res(par, x) + par.attn(h) + par.mixer(h))
        # same weights where they exist: the two forms still compute different things
        par.load_state_dict(
            {k: v for k, v in seq.state_dict().items() if k in par.state_dict()
             and par.state_dict()[k].shape == v.shape}, strict=False)  # fmt: skip
        assert not torch.allclose(seq(x), par(x))


def test_mixer_digit_controls_mixer():
    assert cell("L", window=4, patch=2, mixer=False).mixer is None
    m = cell("L", 4, 6, window=4, patch=2, mixer=True, mixer_ratio=2.0, mixer_kernel=5)
    assert m.mixer[0].out_channels == 12 and m.mixer[0].kernel_size == (5, 5)
    assert m.mixer[2].out_channels == 6


@pytest.mark.parametrize("kind", ["C2", "C3"])
def test_conv_cell_formula(kind):
    """h = norm1(x); y = proj(x) + act(norm2(conv(h))) [+ h when C_in == C_out]."""
    for cin, cout in [(4, 4), (3, 5)]:
        m = cell(kind, cin, cout, norm="instance2d")
        x = randn(2, 3, cin, 6, 8)
        with torch.no_grad():
            h = m.norm1(x)
            if kind == "C2":
                conv = F.conv2d(h.flatten(0, 1), m.conv.weight, padding=1).unflatten(0, (2, 3))
            else:
                conv = F.conv3d(h.transpose(1, 2), m.conv.weight, padding=1).transpose(1, 2)
            branch = m.act(m.norm2(conv))
            if cin == cout:
                want = x + branch + h
            else:
                want = F.conv2d(x.flatten(0, 1), m.proj.weight, m.proj.bias).unflatten(
                    0, (2, 3)) + branch  # fmt: skip
            torch.testing.assert_close(m(x), want)


def test_conv3d_cell_mixes_frames_conv2d_does_not():
    x = randn(1, 4, 4, 6, 6)
    c2 = cell("C2", norm="batch2d")
    c3 = cell("C3", norm="batch2d")
    assert influence(c2, x, 0, 2, 3, 3)[0].any(dim=(1, 2)).tolist() == [False, False, True, False]
    assert influence(c3, x, 0, 2, 3, 3)[0].any(dim=(1, 2)).tolist() == [False, True, True, True]


def test_drop_path_module():
    dp = DropPath(0.5)
    x = randn(64, 3, 2, 4, 4) + 5
    dp.eval()
    assert dp(x) is x
    dp.train()
    torch.manual_seed(0)
    y = dp(x)
    kept = (y == x * 2).flatten(1).all(1)
    dropped = (y == 0).flatten(1).all(1)
    assert (kept | dropped).all()  # whole samples (all frames) together
    assert kept.any() and dropped.any()


@pytest.mark.parametrize("kind", ["L", "T", "C2"])
def test_drop_path_in_cells(kind):
    """eval: identity (deterministic); train: each sample gets residual only, or
    residual + branch / keep, for all its frames together."""
    p = 0.5
    m = cell(kind, window=4, patch=2, norm="instance2d", drop_path=p)
    x = randn(32, 2, 4, 8, 8)
    with torch.no_grad():
        no_drop = cell(kind, window=4, patch=2, norm="instance2d")(x)
        torch.testing.assert_close(m(x), no_drop)  # eval: no drop, no rescale
        if kind == "C2":
            h = m.norm1(x)
            branch = m.act(m.norm2(F.conv2d(h.flatten(0, 1), m.conv.weight, padding=1)
                                   .unflatten(0, (32, 2)))) + h  # fmt: skip
        else:
            branch = m.attn(m.norm1(x))
        m.train()
        torch.manual_seed(3)
        y = m(x)
    kept = torch.isclose(y, x + branch / (1 - p), rtol=1e-9, atol=1e-9).flatten(1).all(1)
    dropped = torch.isclose(y, x, rtol=1e-9, atol=1e-9).flatten(1).all(1)
    assert (kept ^ dropped).all()
    assert kept.any() and dropped.any()


# --------------------------------------------------------------------------- errors


def test_heads_must_divide_the_token_size():
    with pytest.raises(SpecError, match=r"heads=3 must divide the token size 16") as err:
        cell("L", 4, 4, window=4, patch=2, heads=3)
    assert err.value.path == "heads"
    with pytest.raises(SpecError, match=r"heads=3 must divide the out channels 8"):
        cell("T", 4, 8, heads=3)
    with pytest.raises(SpecError, match="patch 3x3 must divide window"):
        cell("G", window=8, patch=3)


def test_temporal_rejects_linear_qkv():
    with pytest.raises(SpecError, match="qkv=linear"):
        cell("T", qkv="linear")


@pytest.mark.parametrize(
    "x, pattern",
    [
        (torch.zeros(2, 4, 8, 8), r"5-D tensor.*got 4-D.*unsqueeze\(1\)"),
        (torch.zeros(2, 1, 3, 8, 8), r"expected 4 input channels.*\(2, 1, 3, 8, 8\)"),
        (torch.zeros(2, 4, 3, 8, 8), r"expected 4 input channels.*transpose\(1, 2\)"),
        (torch.zeros(2, 1, 4, 8, 8, dtype=torch.int64), r"floating-point.*torch.int64"),
        ([1, 2], r"expected a torch.Tensor"),
    ],
)
def test_input_tensor_checks(x, pattern):
    with pytest.raises(ShapeError, match=pattern):
        check_input_tensor(x, 4, "Block")


# ------------------------------------------------------------------------- blocks


@pytest.fixture
def Block():
    from stcnnt_dsl.nn import Block

    return Block


def _block(Block, text, cin=4, cout=4, **values):
    torch.manual_seed(0)
    return Block(text, cin, cout, **values).to(DT).eval()


def test_block_first_cell_maps_channels(Block):
    b = _block(Block, "L1G0T1C2", 3, 8, window=4, patch=2)
    assert [(c.in_channels, c.out_channels) for c in b.cells] == [(3, 8)] + [(8, 8)] * 3
    assert [c.kind for c in b.cells] == ["local", "global", "temporal", "conv2d"]
    assert b.cells[0].mixer is not None and b.cells[1].mixer is None
    assert b(randn(1, 2, 3, 8, 8)).shape == (1, 2, 8, 8, 8)


@pytest.mark.parametrize("dense", [True, False])
def test_block_dense_connections(Block, dense):
    """dense: cell k gets the sum of the outputs of cells 0..k-1 (not the block input);
    otherwise the cells are chained. Checked with forward hooks."""
    b = _block(Block, "L1 G0 T1 C2", 3, 4, window=4, patch=2, dense=dense)
    inputs, outputs = [], []

    def hook(module, args, out):
        inputs.append(args[0])
        outputs.append(out)

    handles = [c.register_forward_hook(hook) for c in b.cells]
    x = randn(2, 2, 3, 8, 8)
    with torch.no_grad():
        y = b(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(inputs[0], x)
    for k in range(1, 4):
        want = sum(outputs[1:k], outputs[0]) if dense else outputs[k - 1]
        torch.testing.assert_close(inputs[k], want)
    torch.testing.assert_close(y, outputs[-1])


def test_block_dense_differs_from_chain(Block):
    x = randn(1, 2, 4, 8, 8)
    with torch.no_grad():
        a = _block(Block, "L1G1T1", window=4, patch=2, dense=True)(x)
        b = _block(Block, "L1G1T1", window=4, patch=2, dense=False)(x)
    assert not torch.allclose(a, b)


def test_block_window_not_dividing_h_is_a_shape_error_at_forward(Block):
    b = _block(Block, "L1 G1", 4, 8, window=8, patch=2)  # construction is fine
    with pytest.raises(ShapeError) as err:
        b(randn(1, 2, 4, 36, 32))
    text = str(err.value)
    assert "cell 0" in text and "L1" in text, text
    assert "36" in text and re.search(r"8\b", text), text
    assert err.value.nearest.get("H") == [32, 40]
    assert not isinstance(err.value.__cause__, RuntimeError)
    # a non-square window: W is checked against its own size
    b = _block(Block, "G0", 4, 4, window=(4, 8), patch=2)
    with pytest.raises(ShapeError, match=r"W=12") as err:
        b(randn(1, 1, 4, 8, 12))
    assert err.value.nearest.get("W") == [8, 16]
    assert "H" not in err.value.nearest


def test_block_names_the_failing_cell(Block):
    b = _block(Block, "T1 L1[window=4] G1[window=6]", 4, 4, patch=2)
    with pytest.raises(ShapeError, match=r"cell 2.*6 must divide H=16"):
        b(randn(1, 2, 4, 16, 12))


def test_block_grid_size_rule(Block):
    """G with grid 3x2 of windows made of 2x4 patches: H must be a multiple of 6 and W
    of 8."""
    b = _block(Block, "G1[grid=[3, 2], patch=[2, 4]]", 4, 4)
    assert b(randn(1, 1, 4, 12, 16)).shape == (1, 1, 4, 12, 16)
    assert b(randn(1, 1, 4, 6, 24)).shape == (1, 1, 4, 6, 24)
    with pytest.raises(ShapeError, match=r"grid 3x2.*6 must divide H=8") as err:
        b(randn(1, 1, 4, 8, 16))
    assert err.value.nearest["H"] == [6, 12]


def test_block_heads_not_dividing_is_a_spec_error_at_construction(Block):
    with pytest.raises(SpecError, match="heads") as err:
        Block("T1 L1", 4, 4, heads=3, window=4, patch=2)
    assert err.value.path == "Block.heads"  # the keyword that set it
    assert "cell 0 (T1)" in str(err.value)


@pytest.mark.parametrize(
    "x, pattern",
    [
        (torch.zeros(2, 4, 8, 8), r"5-D.*4-D"),
        (torch.zeros(2, 1, 3, 8, 8), r"4 input channels"),
        (torch.zeros(2, 1, 4, 8, 8, dtype=torch.int32), r"floating-point"),
        (torch.zeros(2, 1, 4, 8, 8, dtype=torch.bool), r"floating-point"),
    ],
)
def test_block_input_errors(Block, x, pattern):
    b = Block("L1G1T1", 4, 4, window=4, patch=2)
    with pytest.raises(ShapeError, match=pattern):
        b(x)


def test_block_layer_norm_size(Block):
    with pytest.raises(STCNNTError, match="input_size"):
        Block("L1", 4, 4, norm="layer", window=4, patch=2)
    b = Block("L1 T1", 4, 4, norm="layer", window=4, patch=2, input_size=(8, 12))
    assert b(torch.zeros(1, 2, 4, 8, 12)).shape == (1, 2, 4, 8, 12)
    with pytest.raises(ShapeError, match=r"input_size 8x12.*H=8, W=16"):
        b(torch.zeros(1, 2, 4, 8, 16))
    with pytest.raises(ShapeError, match="window 4x4"):
        Block("L1", 4, 4, norm="layer", window=4, patch=2, input_size=(8, 10))


@pytest.mark.parametrize("norm", ["batch2d", "batch3d", "instance2d", "instance3d"])
def test_block_accepts_variable_sizes(Block, norm):
    b = _block(Block, "L1 G1 T1 V1 C2 C3", 3, 8, window=4, patch=2, norm=norm)
    for size in [(8, 8), (16, 12), (4, 20)]:
        assert b(randn(1, 2, 3, *size)).shape == (1, 2, 8, *size)


BAD_BLOCK_USES = {
    "patch not dividing window": lambda B: B("L1", 4, 4, window=8, patch=3),
    "heads not dividing token": lambda B: B("L1", 4, 4, heads=5),
    "linear qkv on T": lambda B: B("T1", 4, 4, qkv="linear"),
    "zero channels": lambda B: B("L1", 0, 4),
    "zero window": lambda B: B("L1", 4, 4, window=0),
    "option no cell reads": lambda B: B("L1", 4, 4, causal=True),
    "misspelt option": lambda B: B("L1", 4, 4, windw=8),
    "window not dividing H": lambda B: B("L1", 4, 4, window=4)(torch.zeros(1, 1, 4, 6, 8)),
    "3-D input": lambda B: B("L1", 4, 4, window=4)(torch.zeros(1, 4, 8)),
    "reflect C3 on T=1": lambda B: B("C3", 4, 4, padding="reflect")(
        torch.zeros(1, 1, 4, 8, 8)),
    "reflect on 1x1": lambda B: B("L1", 4, 4, padding="reflect", window=1, patch=1)(
        torch.zeros(1, 1, 4, 1, 1)),
    "bad block string": lambda B: B("L1X", 4, 4),
    "L2 is not a cell": lambda B: B("L2", 4, 4),
}  # fmt: skip


@pytest.mark.parametrize("use", list(BAD_BLOCK_USES))
def test_block_errors_are_never_raw_torch_errors(Block, use):
    """Every mistake a user can make with a Block surfaces as an STCNNTError."""
    with pytest.raises(STCNNTError):
        BAD_BLOCK_USES[use](Block)


# ------------------------------------------------------- plain ops (export) regrouping


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.sampled_from([1, 1, 2, 3]), min_size=1, max_size=6),
    data=st.data(),
)
def test_plain_permute_without_unit_axes_is_the_permute(shape, data):
    """`_permute` drops static unit axes under plain ops (an exported Transpose would
    copy for them) and must still be exactly x.permute."""
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    x = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    with mock.patch.object(nnf, "plain_ops", lambda: True):
        got = nnf._permute(x, perm)
    assert got.shape == x.permute(perm).shape
    assert torch.equal(got, x.permute(perm))


@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("heads", [1, 2, 8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_plain_partition_equals_the_eager_regroup(mode, heads, channels_last, monkeypatch):
    """partition_qkv under plain ops (always through channels-last, one group by
    reshape) gives the tensors of the eager path, for stacked and single maps, and
    frame_tokens likewise."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, 12, generator=gen)
    single = torch.randn(2, 8, 8, 12, generator=gen)
    if channels_last:
        x = x.flatten(1, 2).contiguous(memory_format=torch.channels_last).unflatten(1, (3, 8))
        single = single.contiguous(memory_format=torch.channels_last)
    args = ((4, 4), (2, 2), mode, heads)
    eager = nnf.partition_qkv(x, *args), nnf.partition_qkv(single, *args)
    frames = nnf.frame_tokens(x.flatten(1, 2), 1, 3, heads, channels_last)
    monkeypatch.setattr(nnf, "plain_ops", lambda: True)
    plain = nnf.partition_qkv(x, *args), nnf.partition_qkv(single, *args)
    for want, got in zip(eager, plain, strict=True):
        assert len(want) == len(got)
        for a, b in zip(want, got, strict=True):
            assert torch.equal(a, b)
    for a, b in zip(
        frames, nnf.frame_tokens(x.flatten(1, 2), 1, 3, heads, channels_last), strict=True
    ):
        assert torch.equal(a, b)
