"""Shape checking without tensors: `check` accepts exactly the shapes that run, and
`infer_shapes` gives the shapes a forward pass produces."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import stcnnt_dsl
from stcnnt_dsl import ShapeError, SpecError, build, check, infer_shapes
from stcnnt_dsl.graph import parse_shape


def _run_unchecked(model, x):
    """Forward with the library's own input checks switched off, so that only torch
    decides whether the shape runs."""
    original = torch.compiler.is_compiling
    torch.compiler.is_compiling = lambda: True
    try:
        with torch.no_grad():
            return model(x), model.forward_features(x)
    finally:
        torch.compiler.is_compiling = original


_cell = st.sampled_from(["L1", "L0", "G1", "G0", "T1", "V0", "C2", "C3"])


@st.composite
def cases(draw):
    topology = draw(st.sampled_from(["unet", "hrnet", "llm"]))
    levels = draw(st.integers(1, 2))
    block = "".join(draw(st.lists(_cell, min_size=1, max_size=3)))
    opts = {
        "window": draw(st.sampled_from([2, 4, [2, 4], [4, 2]])),
        "patch": draw(st.sampled_from([1, 2])),
        "heads": 1,
        "norm": draw(st.sampled_from(["batch2d", "instance2d", "instance3d"])),
        "padding": draw(st.sampled_from(["zeros", "zeros", "reflect"])),
        "mixer_kernel": draw(st.sampled_from([1, 3, 5])),
        "mixer_ratio": 1,
    }
    if opts["patch"] == 2 and opts["window"] in ([2, 4], [4, 2], 2):
        opts["patch"] = 1
    if draw(st.booleans()):
        opts["grid"] = draw(st.sampled_from([1, 2, [1, 2]]))
    body = {"channels": [4] * levels if topology != "llm" else 4, "blocks": block}
    if topology == "llm":
        body["blocks"] = [block] * levels
    if topology == "hrnet" and levels == 1:
        body["stages"] = 2
    spec = {topology: body, "defaults": opts}
    shape = (1, draw(st.integers(1, 3)), 1, draw(st.integers(1, 20)), draw(st.integers(1, 20)))
    return spec, shape


@settings(max_examples=80)
@given(cases())
def test_check_accepts_exactly_what_runs(case):
    spec, shape = case
    try:
        check(spec, shape)
        accepted = True
    except ShapeError:
        accepted = False
    model = build(spec, seed=0).train()  # check() is about training: batch statistics
    try:
        out, feats = _run_unchecked(model, torch.randn(*shape))
        ran = True
    except (RuntimeError, ValueError, IndexError, ZeroDivisionError):
        ran = False
    if accepted:
        assert ran, f"check accepted {shape} but the forward pass failed"
        shapes = infer_shapes(spec, shape)
        assert tuple(out.shape) == shapes["output"]
        assert [tuple(f.shape) for f in feats] == shapes["features"]
    else:
        # Torch may accept some shapes our rules reject only when it would silently
        # compute something else: patch merging and 2x2 pooling drop odd rows, and the
        # U-Net's skip concatenation then fails; we require that it did not run.
        assert not ran, f"check rejected {shape} but the forward pass ran"


def test_infer_shapes_reports_every_stage():
    shapes = infer_shapes("unet", (2, 3, 1, 64, 96))
    assert shapes["output"] == (2, 3, 32, 64, 96)
    assert shapes["stages"]["encoder.2"] == (2, 3, 128, 16, 24)
    assert shapes["stages"]["bridge"] == (2, 3, 128, 8, 12)
    assert shapes["stages"]["decoder.0"] == (2, 3, 32, 64, 96)
    hr = infer_shapes("hrnet", "1,1,1,64,64")
    assert hr["output"] == (1, 1, 224, 64, 64)
    assert hr["features"] == [(1, 1, 32, 64, 64), (1, 1, 64, 32, 32), (1, 1, 128, 16, 16)]


@pytest.mark.parametrize("name", ["unet", "hrnet", "llm"])
def test_bundled_accept_every_multiple_of_32(name):
    for h in range(32, 513, 32):
        check(name, (1, 1, 1, h, 512 + 32 - h))
    for t in (1, 2, 16, 37):
        check(name, (1, t, 1, 64, 64))


@pytest.mark.parametrize(
    ("source", "shape", "words"),
    [
        (
            "unet",
            (1, 1, 1, 40, 64),
            ["encoder.1 cell 1 (L1)", "window 8x8", "nearest valid H: 32 or 64"],
        ),
        (
            "unet",
            (1, 1, 1, 20, 20),
            ["valid inputs are H and W multiples of 32", "nearest valid H: 32"],
        ),
        ("unet", (1, 1, 2, 64, 64), ["input channel"]),
        ("hrnet", (1, 1, 1, 64, 72), ["level", "W=", "nearest valid W: 64 or 96"]),
        ("unet-3d-small", "1,1,1,16,24", ["nearest valid W: 16 or 32"]),
        ("unet(channels=[8], blocks=C3, padding=reflect)", (1, 1, 1, 8, 8), ["T >= 2"]),
    ],
)
def test_rejections_name_stage_rule_and_nearest_size(source, shape, words):
    with pytest.raises(ShapeError) as info:
        check(source, shape)
    for word in words:
        assert word in str(info.value)


def test_static_errors_surface_in_check():
    with pytest.raises(SpecError, match="heads=3 must divide"):
        check("unet(channels=[8], blocks=L1, heads=3)", (1, 1, 1, 16, 16))
    with pytest.raises(SpecError, match="patch 3x3 must divide window"):
        check("unet(channels=[8], blocks=L1, patch=3)", (1, 1, 1, 16, 16))


@pytest.mark.parametrize(
    "bad", ["1,2,3", "a,b,c,d,e", (1, 2, 3, 4), (1, 0, 1, 8, 8), (1.0, 1, 1, 8, 8)]
)
def test_parse_shape_rejects_bad_shapes(bad):
    with pytest.raises(ShapeError):
        parse_shape(bad)


# --------------------------------------------------------------------------- layouts (issue 23)


def test_check_and_infer_shapes_read_the_shape_in_a_layout():
    """A MONAI volume [B, C, H, W, D] is checked as such, and its errors say D."""
    stcnnt_dsl.check("unet-3d-small", (1, 1, 64, 64, 16), layout="BCHWD")
    shapes = stcnnt_dsl.infer_shapes("unet-3d-small", (2, 1, 64, 32, 16), layout="bchwd")
    assert shapes["output"] == (2, 16, 16, 64, 32)  # [B, T, C, H, W] inside
    with pytest.raises(ShapeError, match=r"input D=16, H=60, W=64 .* any D") as err:
        stcnnt_dsl.check("unet-3d-small", (1, 1, 60, 64, 16), layout="BCHWD")
    assert not re.search(r"\bT\b", str(err.value))
    with pytest.raises(ShapeError, match=r"C=64 \(for a shape in \[B, C, H, W, D\] order pass "):
        stcnnt_dsl.check("unet-3d-small", (1, 1, 64, 64, 16))
    with pytest.raises(ShapeError, match=r"input H=60, W=64 cannot run: .* multiples of 16;"):
        stcnnt_dsl.check("unet-2d-small", (1, 1, 60, 64), layout="BCHW")
    with pytest.raises(ShapeError, match=r"4 integers B,C,H,W \(layout BCHW\)"):
        stcnnt_dsl.check("unet-2d-small", (1, 1, 1, 60, 64), layout="BCHW")
    with pytest.raises(SpecError, match=r"unknown layout 'BHWC'.*BCHWD"):
        stcnnt_dsl.check("unet-2d-small", (1, 1, 64, 64), layout="BHWC")


def test_accepts_says_which_sizes_run():
    got = stcnnt_dsl.accepts("unet")
    assert (got.multiples, got.minimum, got.min_frames, got.exact) == ((32, 32), 1, 1, None)
    assert str(got) == got.text == "H and W multiples of 32, any T"
    assert stcnnt_dsl.accepts("unet-3d-small", layout="BCHWD").text.endswith("any D")
    assert not re.search(r"\bT\b", stcnnt_dsl.accepts("unet-2d-small", layout="BCHW").text)
    fixed = stcnnt_dsl.accepts(
        "llm(channels=4, blocks=[L1], window=4, patch=2, norm=layer, input_size=[16, 16])"
    )
    assert fixed.exact == (16, 16) and fixed.to_dict()["exact"] == [16, 16]
    # what it says is what check does: the sizes it names run, the others do not
    for h in range(32, 129, 16):
        runs = h % got.multiples[0] == 0
        try:
            stcnnt_dsl.check("unet", (1, 1, 1, h, 64))
        except ShapeError:
            assert not runs, h
        else:
            assert runs, h
