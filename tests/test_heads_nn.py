"""Task heads (`stcnnt_dsl.nn.heads`) and their closed-form costs (`stcnnt_dsl.head_costs`).

Each head is compared with a naive float64 version written here from the reference's
description (einsum convolutions over explicit taps, interpolation and pooling as explicit
matrices, loops over frames), checked for per-frame behaviour with autograd and
permutations, and priced by `head_costs` exactly as `numel()` and torch's
`FlopCounterMode` count. The reference fixture checks ConvAvgHead against the published
whole model (U-Net + ConvPoolLinear).
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from stcnnt_dsl.errors import SpecError, STCNNTError
from stcnnt_dsl.graph import head_costs
from stcnnt_dsl.nn.heads import (
    ConvAvgHead,
    ConvHead,
    MultiDepthHead,
    NormAvgHead,
    UNETRHead,
    UperNetHead,
)

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE_DIR = Path(
    os.environ.get(
        "STCNNT_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"
    )
)
F64 = torch.float64


def _data(b=2, t=3, c_in=2, c_out=6, h=16, w=16, channels=(6, 8, 12), reductions=None, seed=0):
    """x, output, features in our layout, float64; feature i at (h, w) / reductions[i]."""
    g = torch.Generator().manual_seed(seed)
    reductions = reductions or [2**i for i in range(len(channels))]
    x = torch.randn(b, t, c_in, h, w, generator=g, dtype=F64)
    output = torch.randn(b, t, c_out, h, w, generator=g, dtype=F64)
    feats = [
        torch.randn(b, t, c, h // r, w // r, generator=g, dtype=F64)
        for c, r in zip(channels, reductions, strict=True)
    ]
    return x, output, feats


def _float(data):
    x, output, feats = data
    return x.float(), output.float(), [f.float() for f in feats]


def _randomise(module: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial values everywhere (biases, norm affines, running statistics)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    return module


# --------------------------------------------------------------------------- naive pieces


def _conv(x, w, b=None):
    """Zero-padded 'same' convolution, x [N, C, *S], w [O, C, *K], by explicit taps."""
    k = w.shape[2:]
    pads = [p for kk in reversed(k) for p in (kk // 2, kk // 2)]
    xp = F.pad(x, pads)
    y = torch.zeros(x.shape[0], w.shape[0], *x.shape[2:], dtype=x.dtype)
    for taps in itertools.product(*(range(kk) for kk in k)):
        window = xp[
            (
                slice(None),
                slice(None),
                *(slice(t, t + s) for t, s in zip(taps, x.shape[2:], strict=True)),
            )
        ]
        y = y + torch.einsum("nc...,oc->no...", window, w[(slice(None), slice(None), *taps)])
    return y if b is None else y + b.view(1, -1, *[1] * len(k))


def _interp_matrix(n_out, n_in, align_corners):
    """Linear interpolation along one axis as an [n_out, n_in] matrix (torch's rules)."""
    m = torch.zeros(n_out, n_in, dtype=F64)
    for o in range(n_out):
        if align_corners:
            src = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(math.floor(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        m[o, i0] += 1 - (src - i0)
        m[o, i1] += src - i0
    return m


def _pool_matrix(n_out, n_in):
    """Adaptive average pooling along one axis: cell o averages [o·n/b, ceil((o+1)·n/b))."""
    m = torch.zeros(n_out, n_in, dtype=F64)
    for o in range(n_out):
        start, end = (o * n_in) // n_out, -((-(o + 1) * n_in) // n_out)
        m[o, start:end] = 1 / (end - start)
    return m


def _along(x, matrices):
    """Apply one matrix per trailing axis (separable resize / pool)."""
    d = len(matrices)
    for k, m in enumerate(matrices):
        axis = x.dim() - d + k
        x = torch.movedim(torch.tensordot(x, m, dims=([axis], [1])), -1, axis)
    return x


def _resize(x, size, align_corners):
    return _along(
        x, [_interp_matrix(o, i, align_corners) for o, i in zip(size, x.shape[2:], strict=True)]
    )


def _bn(norm, x):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return (x - norm.running_mean.view(shape)) * scale.view(shape) + norm.bias.view(shape)


def _instance_norm(x, eps=1e-5):
    dims = tuple(range(2, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _upsample(x, w, factors):
    """Transposed conv with kernel = stride: every input cell paints a k^d block."""
    if len(factors) == 2:
        y = torch.einsum("nchw,coab->nohawb", x, w)
        n, o, h, a, wd, b = y.shape
        return y.reshape(n, o, h * a, wd * b)
    y = torch.einsum("ncthw,coeab->notehawb", x, w)
    n, o, t, e, h, a, wd, b = y.shape
    return y.reshape(n, o, t * e, h * a, wd * b)


# --------------------------------------------------------------------------- naive heads


def naive_conv_head(head, x, output):
    y = torch.einsum("btchw,oc->btohw", output, head.conv.weight[:, :, 0, 0])
    y = y + head.conv.bias.view(1, 1, -1, 1, 1)
    return y + x if head.residual else y


def naive_norm_avg(head, output):
    v = output.permute(0, 1, 3, 4, 2)  # channels last
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    v = (v - mean) / torch.sqrt(var + head.norm.eps) * head.norm.weight + head.norm.bias
    pooled = v.mean((2, 3)) if head.per_frame else v.mean((1, 2, 3))
    return pooled @ head.linear.weight.T + head.linear.bias


def naive_conv_avg(head, output):
    """The reference's order: conv at every pixel, then the mean, then the linear."""
    y = torch.einsum("btchw,oc->btohw", output, head.conv.weight[:, :, 0, 0])
    if head.conv.bias is not None:
        y = y + head.conv.bias.view(1, 1, -1, 1, 1)
    pooled = y.mean((3, 4)) if head.per_frame else y.mean((1, 3, 4))
    return pooled @ head.linear.weight.T + head.linear.bias


def naive_multi_depth(head, x, output, feats):
    _, t, _, h, w = output.shape
    total = 0
    for k in range(head.depth):  # reference: conv2d_{k+1} on x[-(k+1)], trilinear resize
        f = feats[-(k + 1)].transpose(1, 2)  # [B, C, T, h, w]
        conv = head.convs[k]
        y = torch.einsum("bcthw,oc->bothw", f, conv.weight[:, :, 0, 0])
        y = y + conv.bias.view(1, -1, 1, 1, 1)
        total = total + _resize(y, (t, h, w), False)
    total = total.transpose(1, 2)
    return total + x if head.residual else total


def _naive_upernet_work(head, feats):
    """UperNet on working-layout features [N, C, *S] (one frame, or a [T, H, W] volume)."""
    relu = torch.relu
    deep = feats[-1]
    size = deep.shape[2:]
    pyramid = [deep]
    for stage, b in zip(head.psp.stages, head.bins, strict=True):
        p = _along(deep, [_pool_matrix(b, s) for s in size])
        p = relu(_bn(stage.norm, _conv(p, stage.conv.weight)))
        pyramid.append(_resize(p, size, True))
    bottleneck = head.psp.bottleneck
    z = relu(_bn(bottleneck.norm, _conv(torch.cat(pyramid, 1), bottleneck.conv.weight)))
    f = [*feats[:-1], z]
    fpn = head.fpn
    lat = [
        fi if isinstance(conv, nn.Identity) else _conv(fi, conv.weight, conv.bias)
        for fi, conv in zip(f, fpn.lateral, strict=True)
    ]
    levels = []
    for i, smooth in enumerate(fpn.smooth):  # pairwise: level i+1 enlarged onto level i
        up = _resize(lat[i + 1], lat[i].shape[2:], True)
        levels.append(_conv(up + lat[i], smooth.weight, smooth.bias))
    levels.append(lat[-1])
    levels = [levels[0]] + [_resize(p, levels[0].shape[2:], True) for p in levels[1:]]
    y = relu(_bn(fpn.fuse.norm, _conv(torch.cat(levels, 1), fpn.fuse.conv.weight)))
    return _conv(y, head.head.weight, head.head.bias)


def naive_upernet(head, output, feats):
    _, t, _, h, w = output.shape
    if head.mode == "3d":
        y = _naive_upernet_work(head, [f.transpose(1, 2) for f in feats])
        return _resize(y, (t, h, w), False).transpose(1, 2)
    frames = [_naive_upernet_work(head, [f[:, i] for f in feats]) for i in range(t)]
    return torch.stack([_resize(y, (h, w), False) for y in frames], dim=1)


def _naive_res_block(block, x):
    act = lambda v: F.leaky_relu(v, 0.01)  # noqa: E731
    y = act(_instance_norm(_conv(x, block.conv1.weight)))
    y = _instance_norm(_conv(y, block.conv2.weight))
    shortcut = x if block.conv3 is None else _instance_norm(_conv(x, block.conv3.weight))
    return act(y + shortcut)


def naive_unetr(head, x, output, feats):
    """Coarsest first: upsample, concatenate with the next finer feature, res block."""
    three = head.mode == "3d"

    def work(v):
        return v.transpose(1, 2)  # [B, C, T, h, w]; 2d handles frames one by one below

    def run(fs, xin):
        y = fs[-1]
        for i in reversed(range(len(head.ups))):
            f = head.reductions[i + 1] // head.reductions[i]
            factors = (1, f, f) if three else (f, f)
            up = _upsample(y, head.ups[i].weight, factors)
            y = _naive_res_block(head.blocks[i], torch.cat((up, fs[i]), 1))
        if head.stem is not None:
            r = head.reductions[0]
            up = _upsample(y, head.up_input.weight, (1, r, r) if three else (r, r))
            y = _naive_res_block(
                head.block_input, torch.cat((up, _naive_res_block(head.stem, xin)), 1)
            )
        return _conv(y, head.out.weight, head.out.bias)

    if three:
        y = run([work(f) for f in feats], work(x)).transpose(1, 2)
    else:
        y = torch.stack([run([f[:, i] for f in feats], x[:, i]) for i in range(x.shape[1])], 1)
    return y + x if head.residual else y


# --------------------------------------------------------------------------- equal to naive


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("residual", [False, True])
def test_conv_head_equals_naive(residual):
    x, output, feats = _data(c_in=3, c_out=5)
    head = _randomise(ConvHead(5, 3, residual=residual).double())
    _close(head(x, output, feats), naive_conv_head(head, x, output))


@pytest.mark.parametrize("per_frame", [False, True])
def test_norm_avg_head_equals_naive(per_frame):
    x, output, feats = _data()
    head = _randomise(NormAvgHead(6, 4, per_frame=per_frame).double())
    got = head(x, output, feats)
    assert got.shape == ((2, 3, 4) if per_frame else (2, 4))
    _close(got, naive_norm_avg(head, output))


@pytest.mark.parametrize(("per_frame", "bias"), [(False, False), (True, False), (False, True)])
def test_conv_avg_head_equals_the_reference_order(per_frame, bias):
    """Pooling before the 1x1 conv gives the conv-then-pool result of the reference."""
    x, output, feats = _data()
    head = _randomise(ConvAvgHead(6, 3, hidden=10, per_frame=per_frame, bias=bias).double())
    got = head(x, output, feats)
    assert got.shape == ((2, 3, 3) if per_frame else (2, 3))
    _close(got, naive_conv_avg(head, output))


@pytest.mark.parametrize(
    ("depth", "reductions", "residual"), [(3, None, False), (2, [2, 4, 8], False), (1, None, True)]
)
def test_multi_depth_head_equals_naive(depth, reductions, residual):
    x, output, feats = _data(c_in=2, reductions=reductions)
    head = _randomise(MultiDepthHead([6, 8, 12], 2, depth=depth, residual=residual).double())
    _close(head(x, output, feats), naive_multi_depth(head, x, output, feats))


def test_multi_depth_head_reads_the_deepest_features():
    """depth=2 of three features: the finest feature has no influence."""
    x, output, feats = _data()
    head = MultiDepthHead([6, 8, 12], 2, depth=2).double()
    changed = [feats[0] + 1.0, *feats[1:]]
    _close(head(x, output, feats), head(x, output, changed))
    assert [c.in_channels for c in head.convs] == [12, 8]


def test_multi_depth_head_resizes_fewer_frames_over_time():
    x, output, feats = _data(t=4)
    feats = [feats[0], feats[1][:, :2], feats[2][:, :1]]  # coarser in T too
    head = _randomise(MultiDepthHead([6, 8, 12], 2, depth=3).double())
    _close(head(x, output, feats), naive_multi_depth(head, x, output, feats))


UPERNET_CASES = {
    "2d-default": dict(channels=(6, 8, 12), kw=dict(bins=(1, 2, 4, 6)), reductions=None, t=3),
    "2d-hidden-coarse": dict(
        channels=(6, 8, 12), kw=dict(hidden=5, bins=(1, 3)), reductions=[2, 4, 8], t=2
    ),
    "3d": dict(channels=(6, 8, 12), kw=dict(mode="3d", bins=(1, 2, 3)), reductions=None, t=4),
    "single-feature": dict(channels=(8,), kw=dict(bins=(1, 2)), reductions=None, t=2),
}


@pytest.mark.parametrize("case", UPERNET_CASES)
def test_upernet_head_equals_naive(case):
    c = UPERNET_CASES[case]
    x, output, feats = _data(t=c["t"], channels=c["channels"], reductions=c["reductions"])
    head = _randomise(UperNetHead(list(c["channels"]), 3, **c["kw"]).double()).eval()
    got = head(x, output, feats)
    assert got.shape == (2, c["t"], 3, 16, 16)
    _close(got, naive_upernet(head, output, feats))


@pytest.mark.parametrize(
    "kw",
    [
        dict(in_channels=2, residual=True),
        dict(reductions=[2, 4, 8], in_channels=2),
        dict(mode="3d", in_channels=2),
        dict(mode="3d"),
        dict(),
    ],
    ids=["2d-stem-residual", "2d-coarse-finest", "3d-stem", "3d", "2d"],
)
def test_unetr_head_equals_naive(kw):
    x, output, feats = _data(c_in=2, t=2, channels=(2, 4, 6), reductions=kw.get("reductions"))
    head = _randomise(UNETRHead([2, 4, 6], 2, **kw).double())
    got = head(x, output, feats)
    assert got.shape == (2, 2, 2, 16, 16)
    _close(got, naive_unetr(head, x, output, feats))


# --------------------------------------------------------------------------- per-frame behaviour


def _per_frame_heads():
    return {
        "conv": ConvHead(6, 3),
        "multi_depth": MultiDepthHead([6, 8, 12], 3, depth=3),
        "upernet_2d": UperNetHead([6, 8, 12], 3, bins=(1, 2)).eval(),
        "unetr_2d": UNETRHead([6, 8, 12], 2, in_channels=2),
        "norm_avg_per_frame": NormAvgHead(6, 3, per_frame=True),
        "conv_avg_per_frame": ConvAvgHead(6, 3, hidden=8, per_frame=True),
    }


@pytest.mark.parametrize("name", list(_per_frame_heads()))
def test_per_frame_heads_use_only_their_frame(name):
    head = _randomise(_per_frame_heads()[name].double())
    x, output, feats = _data(t=4)
    inputs = [v.requires_grad_() for v in (x, output, *feats)]
    y = head(inputs[0], inputs[1], inputs[2:])
    y[:, 2].sum().backward()
    for v in inputs:
        if v.grad is None:  # an input this head does not read
            continue
        by_frame = v.grad.abs().sum(dim=(0, 2, 3, 4))
        assert by_frame[2] > 0 or v is x
        assert torch.all(by_frame[[0, 1, 3]] == 0), f"{name}: frame 2 depends on other frames"


@pytest.mark.parametrize("name", list(_per_frame_heads()))
def test_per_frame_heads_permute_with_the_frames(name):
    head = _randomise(_per_frame_heads()[name].double())
    x, output, feats = _data(t=4)
    perm = torch.tensor([2, 0, 3, 1])
    y = head(x, output, feats)
    y_perm = head(x[:, perm], output[:, perm], [f[:, perm] for f in feats])
    _close(y_perm, y[:, perm])


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_3d_heads_mix_frames_and_2d_heads_do_not(mode):
    x, output, feats = _data(t=3, channels=(2, 4, 6))
    for head in (
        UperNetHead([2, 4, 6], 2, mode=mode, bins=(1, 2)).eval(),
        UNETRHead([2, 4, 6], 2, mode=mode),
    ):
        fs = [f.clone().requires_grad_() for f in feats]
        head.double()(x, output, fs)[:, 0].sum().backward()
        leak = sum(f.grad[:, 1:].abs().sum() for f in fs)
        assert (leak > 0) == (mode == "3d"), type(head).__name__


@pytest.mark.parametrize(
    "head",
    [NormAvgHead(6, 3), ConvAvgHead(6, 3, hidden=8)],
    ids=["norm_avg", "conv_avg"],
)
def test_clip_pooling_is_invariant_to_any_permutation_of_positions(head):
    head = _randomise(head.double())
    x, output, feats = _data(t=3, h=8, w=8)
    b, t, c, h, w = output.shape
    flat = output.permute(0, 2, 1, 3, 4).reshape(b, c, t * h * w)
    shuffled = flat[:, :, torch.randperm(t * h * w, generator=torch.Generator().manual_seed(3))]
    shuffled = shuffled.reshape(b, c, t, h, w).permute(0, 2, 1, 3, 4)
    _close(head(x, shuffled, feats), head(x, output, feats))
    # ... but not to a change of values
    assert not torch.allclose(head(x, output**3, feats), head(x, output, feats))


def test_per_frame_pooling_is_invariant_to_pixel_permutation_within_frames():
    head = _randomise(ConvAvgHead(6, 3, hidden=8, per_frame=True).double())
    x, output, feats = _data(t=3, h=8, w=8)
    b, t, c, h, w = output.shape
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(4))
    shuffled = output.reshape(b, t, c, h * w)[..., perm].reshape(b, t, c, h, w)
    _close(head(x, shuffled, feats), head(x, output, feats))


def test_channels_last_frames_give_the_same_result():
    x, output, feats = _data()

    def cl(v):
        frames = v.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        return frames.unflatten(0, v.shape[:2])

    for head in (
        ConvHead(6, 2),
        UperNetHead([6, 8, 12], 2, bins=(1, 2)).eval(),
        UNETRHead([6, 8, 12], 2),
    ):
        head = head.double()
        _close(head(cl(x), cl(output), [cl(f) for f in feats]), head(x, output, feats))


def test_heads_run_under_autocast():
    x, output, feats = _float(_data())
    heads = [
        ConvHead(6, 2),
        NormAvgHead(6, 3),
        ConvAvgHead(6, 3, hidden=16),
        MultiDepthHead([6, 8, 12], 2, depth=3),
        UperNetHead([6, 8, 12], 2, bins=(1, 2)).eval(),
        UNETRHead([6, 8, 12], 2, in_channels=2),
    ]
    for head in heads:
        want = head(x, output, feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = head(x, output, feats)
        assert got.shape == want.shape
        scale = want.abs().max().item() + 1
        assert (got.float() - want).abs().max().item() < 0.1 * scale, type(head).__name__


# --------------------------------------------------------------------------- costs


def _flops_by_module(head, args):
    with FlopCounterMode(display=False) as counter:
        head(*args)
    prefix = type(head).__name__
    counts = counter.get_flop_counts()
    total = sum(counts.get("Global", {}).values())
    rows = {
        name.removeprefix(prefix + "."): sum(ops.values())
        for name, ops in counts.items()
        if name.startswith(prefix + ".")
    }
    return total, rows


def _cost_cases():
    """(id, head, head configuration, geometry, extra data arguments)."""
    geo = dict(batch=2, frames=3, height=16, width=16)
    one = dict(batch=2, frames=1, height=16, width=16)
    three = dict(batch=1, frames=4, height=16, width=16)
    ch = [6, 8, 12]
    up3 = dict(feature_channels=ch, classes=3, mode="3d", bins=(1, 2))
    return [
        ("conv", ConvHead(6, 3), dict(in_channels=6, out_channels=3), geo, {}),
        ("norm_avg", NormAvgHead(6, 4), dict(in_channels=6, classes=4), geo, {}),
        (
            "norm_avg_per_frame",
            NormAvgHead(6, 4, per_frame=True),
            dict(in_channels=6, classes=4, per_frame=True),
            geo,
            {},
        ),
        (
            "conv_avg",
            ConvAvgHead(6, 4, hidden=32),
            dict(in_channels=6, classes=4, hidden=32),
            one,
            {},
        ),
        (
            "conv_avg_per_frame_bias",
            ConvAvgHead(6, 4, hidden=32, per_frame=True, bias=True),
            dict(in_channels=6, classes=4, hidden=32, per_frame=True, bias=True),
            geo,
            {},
        ),
        (
            "multi_depth",
            MultiDepthHead(ch, 3, depth=2),
            dict(feature_channels=ch, out_channels=3, depth=2),
            geo,
            {},
        ),
        ("upernet_2d_T1", UperNetHead(ch, 3).eval(), dict(feature_channels=ch, classes=3), one, {}),
        (
            "upernet_2d_hidden",
            UperNetHead(ch, 3, hidden=4, bins=(1, 3)).eval(),
            dict(feature_channels=ch, classes=3, hidden=4, bins=(1, 3)),
            geo,
            {},
        ),
        ("upernet_3d", UperNetHead(ch, 3, mode="3d", bins=(1, 2)).eval(), up3, three, {}),
        ("unetr_2d", UNETRHead(ch, 2), dict(feature_channels=ch, out_channels=2), geo, {}),
        (
            "unetr_2d_stem_coarse",
            UNETRHead(ch, 2, in_channels=3, reductions=[2, 4, 8]),
            dict(feature_channels=ch, out_channels=2, in_channels=3, reductions=[2, 4, 8]),
            one,
            dict(c_in=3, reductions=[2, 4, 8]),
        ),
        (
            "unetr_3d_stem",
            UNETRHead(ch, 2, in_channels=5, mode="3d"),
            dict(feature_channels=ch, out_channels=2, in_channels=5, mode="3d"),
            three,
            dict(c_in=5),
        ),
    ]


COST_CASES = _cost_cases()


@pytest.mark.parametrize("case", COST_CASES, ids=[c[0] for c in COST_CASES])
def test_head_costs_equal_numel_and_flop_counter(case):
    _, head, config, geo, data = case
    fn = head_costs.HEAD_COSTS[type(head).__name__]
    accepted = inspect.signature(fn).parameters
    cost = fn(**config, **{k: v for k, v in geo.items() if k in accepted})
    assert cost.params == sum(p.numel() for p in head.parameters())

    b, t, h, w = geo["batch"], geo["frames"], geo["height"], geo["width"]
    args = _data(b=b, t=t, h=h, w=w, channels=[6, 8, 12], **data)
    total, rows = _flops_by_module(head.double(), args)
    assert cost.flops == total > 0
    assert sum(cost.by_module.values()) == cost.flops
    # our rows are the counter's rows of those modules, and they hold every FLOP it saw
    assert {k: rows.get(k) for k in cost.by_module} == cost.by_module
    names = dict(head.named_modules())
    assert all(path in names for path in cost.by_module)


def test_conv_avg_cost_is_independent_of_the_image_size():
    small = head_costs.conv_avg_head_cost(8, 3, batch=2, frames=4)
    assert small.by_module == {"conv": 2 * 2 * 8 * 2048, "linear": 2 * 2 * 2048 * 3}
    assert small.params == 8 * 2048 + 2048 * 3 + 3


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("make", "path"),
    [
        (lambda: ConvHead(0, 2), "in_channels"),
        (lambda: ConvHead(4, True), "out_channels"),
        (lambda: NormAvgHead(4, 0), "classes"),
        (lambda: ConvAvgHead(4, 2, hidden=0), "hidden"),
        (lambda: ConvAvgHead(4, -1), "classes"),
        (lambda: MultiDepthHead([], 2), "feature_channels"),
        (lambda: MultiDepthHead([4, 8], 2), "depth"),
        (lambda: MultiDepthHead([4, 8], 2, depth=0), "depth"),
        (lambda: MultiDepthHead([4, 0], 2, depth=1), "feature_channels[1]"),
        (lambda: UperNetHead([4, 8], 0), "classes"),
        (lambda: UperNetHead("48", 2), "feature_channels"),
        (lambda: UperNetHead([4, 8], 2, bins=()), "bins"),
        (lambda: UperNetHead([4, 8], 2, bins=(1, 0)), "bins[1]"),
        (lambda: UperNetHead([4, 3], 2), "bins"),
        (lambda: UperNetHead([4, 8], 2, mode="2.5d"), "mode"),
        (lambda: UperNetHead([4, 8], 2, dropout=1.0), "dropout"),
        (lambda: UNETRHead([4, 8], 2, reductions=[2, 3], in_channels=1), "reductions[1]"),
        (lambda: UNETRHead([4, 8], 2, reductions=[1]), "reductions"),
        (lambda: UNETRHead([4, 8], 2, reductions=[2, 4]), "in_channels"),
        (lambda: UNETRHead([4, 8], 2, kernel_size=2), "kernel_size"),
        (lambda: UNETRHead([], 2), "feature_channels"),
    ],
)
def test_bad_constructor_arguments_raise_spec_errors(make, path):
    with pytest.raises(SpecError) as err:
        make()
    assert err.value.path == path
    assert "Head" in str(err.value)


def test_forward_mistakes_name_the_head():
    x, output, feats = _data(c_in=2, c_out=6)
    with pytest.raises(STCNNTError, match=r"ConvHead\(residual=True\).*3 at"):
        ConvHead(6, 3, residual=True).double()(x, output, feats)
    with pytest.raises(STCNNTError, match="MultiDepthHead was built for features with channels"):
        MultiDepthHead([6, 8, 16], 2, depth=2).double()(x, output, feats)
    with pytest.raises(STCNNTError, match="UperNetHead: the batch norm"):
        UperNetHead([6, 8, 12], 2).double().train()(
            x[:1, :1], output[:1, :1], [f[:1, :1] for f in feats]
        )
    with pytest.raises(STCNNTError, match="UNETRHead: upsampling"):
        UNETRHead([6, 8, 12], 2, reductions=[1, 2, 8]).double()(x, output, feats)
    with pytest.raises(STCNNTError, match="in_channels=3"):
        UNETRHead([6, 8, 12], 2, in_channels=3).double()(x, output, feats)


def test_upernet_trains_with_a_batch():
    x, output, feats = _float(_data())
    head = UperNetHead([6, 8, 12], 3).train()
    head(x, output, feats).square().mean().backward()
    assert all(p.grad is not None for p in head.parameters())


# --------------------------------------------------------------------------- compile


def test_compiled_head_matches_eager():
    """Dynamo captures the head in one graph (aot_eager: no code generation)."""
    x, output, feats = _float(_data())
    head = UperNetHead([6, 8, 12], 3, bins=(1, 2)).eval()
    start = time.perf_counter()
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        got, want = compiled(x, output, feats), head(x, output, feats)
    torch._dynamo.reset()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert time.perf_counter() - start < 60


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["conv", "multi_depth", "upernet_2d", "unetr_2d", "conv_avg_per_frame"]
)
def test_inductor_compiles_heads(name):
    head = _per_frame_heads()[name].eval()
    x, output, feats = _float(_data())
    compiled = torch.compile(head, fullgraph=True)
    with torch.no_grad():
        got, want = compiled(x, output, feats), head(x, output, feats)
    torch._dynamo.reset()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- reference fixture

WHOLE_MODEL = REFERENCE_DIR / "reference-unet-convpoollinear.safetensors"
# reference whole-model key -> ConvAvgHead key (the documented rename)
CONV_POOL_LINEAR_KEYS = {
    "post.conv2d.conv.weight": "conv.weight",
    "post.linear.weight": "linear.weight",
    "post.linear.bias": "linear.bias",
}


@pytest.mark.skipif(
    not WHOLE_MODEL.is_file(),
    reason=f"reference fixture not found: {WHOLE_MODEL} (set STCNNT_REFERENCE_DIR)",
)
def test_reference_whole_model_fixture():
    from safetensors import safe_open

    from stcnnt_dsl.compat import import_reference, read_reference

    weights, config = read_reference(WHOLE_MODEL)
    # the file is a whole model: backbone.* and post.* keys, no conv bias in the head
    assert all(k.startswith(("backbone.", "post.")) for k in weights)
    assert {k for k in weights if k.startswith("post.")} == set(CONV_POOL_LINEAR_KEYS)
    assert config["post_model"] == "ConvPoolLinear"

    model = import_reference(WHOLE_MODEL).eval()  # a whole model: backbone + one head
    head = model.heads["classification"]
    assert isinstance(head, ConvAvgHead) and head.hidden == 2048
    for ref, ours in CONV_POOL_LINEAR_KEYS.items():  # the documented rename, key by key
        assert torch.equal(head.state_dict()[ours], weights[ref])
    assert sum(p.numel() for p in model.parameters()) == int(
        safe_open(str(WHOLE_MODEL), "pt").metadata()["params"]
    )

    with safe_open(str(WHOLE_MODEL), "pt") as f:
        x_ref, want = f.get_tensor("input"), f.get_tensor("out::output")
    x = x_ref.transpose(1, 2)  # reference [B, C, T, H, W] -> ours [B, T, C, H, W]
    with torch.no_grad():
        got = model(x)["classification"]
    assert got.shape == want.shape == (2, 3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_head_costs_reject_a_bad_configuration():
    with pytest.raises(SpecError, match="'2d' or '3d'"):
        head_costs.upernet_head_cost([4, 8], 2, batch=1, frames=1, height=8, width=8, mode="2D")
    with pytest.raises(SpecError) as err:
        head_costs.multi_depth_head_cost([4, 8], 2, batch=1, frames=1, height=8, width=8)
    assert err.value.path == "depth"
    with pytest.raises(SpecError) as err:
        head_costs.unetr_head_cost([4, 8], 2, batch=1, frames=1, height=8, width=8, reductions=[1])
    assert err.value.path == "reductions"
