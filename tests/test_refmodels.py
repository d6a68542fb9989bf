"""The reference's mixed U-Netr and UperNet heads (issue 25): the topology, its fixture,
the upernet decoder's reference behaviours, and whole reference models built by the
reference code beside ours (a checkout; the test skips without one).

STCNNT_REFERENCE_DIR names the fixtures' folder (default: shared/reference beside the
checkout, then /work/shared/reference); STCNNT_REFERENCE_SRC a checkout of
github.com/Imaging-and-AI/FMImaging (with its requirements, e.g. einops, installed).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import stcnnt_dsl
from stcnnt_dsl.compat import import_reference, read_reference, reference_spec
from stcnnt_dsl.compat.weights import unused_reference_modules
from stcnnt_dsl.errors import SpecError, WeightsError
from stcnnt_dsl.nn.conv_unit import ConvUnit
from stcnnt_dsl.nn.heads import UperNetHead

ROOT = Path(__file__).resolve().parents[1]


def _first_dir(*candidates: object) -> Path | None:
    for c in candidates:
        if c and Path(str(c)).is_dir():
            return Path(str(c))
    return None


REFERENCE_DIR = _first_dir(
    os.environ.get("STCNNT_REFERENCE_DIR"), ROOT.parent / "shared" / "reference",
    "/work/shared/reference",
)  # fmt: skip
FIXTURE = None if REFERENCE_DIR is None else REFERENCE_DIR / "reference-mixed-unetr.safetensors"
REFERENCE_SRC = _first_dir(os.environ.get("STCNNT_REFERENCE_SRC"))
needs_fixture = pytest.mark.skipif(
    FIXTURE is None or not FIXTURE.is_file(),
    reason="reference-mixed-unetr.safetensors not found (set STCNNT_REFERENCE_DIR)",
)
needs_checkout = pytest.mark.skipif(
    REFERENCE_SRC is None,
    reason="no checkout of the reference implementation (set STCNNT_REFERENCE_SRC)",
)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- the fixture


@needs_fixture
def test_mixed_unetr_fixture_outputs_and_parameter_count():
    from safetensors import safe_open

    weights, _ = read_reference(FIXTURE)
    model = import_reference(FIXTURE).eval()
    with safe_open(str(FIXTURE), "pt") as handle:
        params = int(handle.metadata()["params"])
        x, y = handle.get_tensor("input"), handle.get_tensor("out::output")
    # the reference counts two gates it builds but never runs; we build the rest
    unused = sum(weights[k].numel() for k in unused_reference_modules())
    assert (_params(model), unused) == (params - 272, 272)
    with torch.no_grad():
        out = model(x.transpose(1, 2)).transpose(1, 2)
    assert out.shape == y.shape == (1, 24, 3, 64, 64)
    assert (out - y).abs().max().item() <= 1e-4 * max(1.0, y.abs().max().item())
    # the unused gates really are unused: changing them changes nothing
    zeroed = {k: (torch.zeros_like(v) if k.startswith("attention_0.") else v)
              for k, v in weights.items()}  # fmt: skip
    again = import_reference(zeroed, read_reference(FIXTURE)[1]).eval()
    with torch.no_grad():
        assert torch.equal(again(x.transpose(1, 2)), model(x.transpose(1, 2)))


@needs_fixture
def test_backbone_checkpoint_with_a_head_in_its_configuration():
    weights, config = read_reference(FIXTURE)
    config = {**config, "post_model": "NormPoolLinear", "no_out_channel": 2}
    with pytest.raises(WeightsError, match=r"backbone only.*part='backbone'.*post_model: Identity"):
        import_reference(weights, config)
    backbone = import_reference(weights, config, part="backbone")
    assert isinstance(backbone, stcnnt_dsl.Backbone)
    assert backbone.out_channels == 24


def test_whole_checkpoint_backbone_part():
    config = _mixed(post_model="SimpleConv", no_out_channel=2)
    whole = stcnnt_dsl.build(reference_spec(config))
    assert isinstance(whole, stcnnt_dsl.Model)
    backbone = import_reference(_reference_state_of(whole, config), config, part="backbone")
    assert isinstance(backbone, stcnnt_dsl.Backbone)


# --------------------------------------------------------------------------- the topology


def _mixed(**top) -> dict:
    config = {
        "backbone_model": "STCNNT_mUNET", "height": 32, "width": 32, "time": 2,
        "window_size": [8, 8], "backbone_mixed_unetr": {
            "C": 4, "num_resolution_levels": 2, "block_str": ["T1L1G1"], "n_heads": [2, 4]},
    }  # fmt: skip
    config.update(top)
    return config


def _reference_state_of(model: torch.nn.Module, config: dict) -> dict:
    """The reference's state dict for one of our models: the importer's names inverted
    (a round trip through the mapping)."""
    from stcnnt_dsl.compat.weights import _reference_names

    names, _ = _reference_names(model)
    state = model.state_dict()
    out = {}
    for ours, refs in names.items():
        parts = state[ours].chunk(len(refs)) if len(refs) > 1 else [state[ours]]
        for ref, part in zip(refs, parts, strict=True):
            out[ref] = part.clone()
    return out


def test_mixed_unetr_channels_and_outputs():
    spec = stcnnt_dsl.load_spec(
        {"mixed_unetr": {"channels": [4, 8, 16], "blocks": "C2"}, "in_channels": 2}
    )
    model = stcnnt_dsl.build(spec)
    graph = model.graph
    # decoder.i: channels[max(i-1, 1)] for i >= 1; decoder.0: channels[0] + channels[1]
    assert [graph.node(f"decoder.{i}").out_channels for i in range(3)] == [12, 8, 8]
    assert [graph.node(f"up.{i}").out_channels for i in range(3)] == [8, 8, 16]
    assert {n.name for n in graph.nodes if n.kind == "gate"} == {"gates.1", "gates.2"}
    y = model(torch.randn(1, 3, 2, 16, 16))
    assert y.shape == (1, 3, 12, 16, 16)
    assert [f.shape[2] for f in model.forward_features(torch.randn(1, 3, 2, 16, 16))] == [
        12, 8, 8,
    ]  # fmt: skip
    # the graph's parameter count is the module's
    assert sum(sum(n.params().values()) for n in graph.nodes) == _params(model)


def test_mixed_unetr_needs_two_levels():
    with pytest.raises(SpecError, match="at least 2 levels"):
        stcnnt_dsl.load_spec({"mixed_unetr": {"channels": [8], "blocks": "C2"}})


# --------------------------------------------------------------------------- halving T


def _halving(**body) -> dict:
    """A small mixed U-Netr; conv cells (`blocks="C2"`, fast) or T1L1G1 with windows."""
    cells = {} if body.get("blocks") == "C2" else {"blocks": "T1L1G1", "window": 4, "patch": 2}
    return {"mixed_unetr": {"channels": [4, 8, 16], **cells, **body}, "in_channels": 2}


@pytest.mark.parametrize(("body", "frames"), [
    ({"halve_time": 2, "blocks": "C2"}, [8, 4, 2, 2]),
    ({"halve_time": 2, "up": "conv", "blocks": "C2"}, [8, 4, 2, 2]),
    ({"halve_time": 3, "conv": "2d", "blocks": "C2"}, [8, 4, 2, 1]),
    ({"halve_time": 1, "decoder_blocks": True}, [8, 4, 4, 4]),
    ({"partition": "3d", "halve_time": 1, "input_unit": True, "blocks": "C2"}, [4, 2, 2, 2]),
    pytest.param({"partition": "2d", "decoder_blocks": True, "up": "conv", "window": 2,
                  "patch": 1}, [8, 8, 8, 8], marks=pytest.mark.slow),
])  # fmt: skip
def test_halve_time_shapes_and_costs_are_the_modules(body, frames):
    """T per level from infer_shapes is what the modules give (hooks); parameters and
    FLOPs of the graph are the module's numel and FlopCounterMode's count."""
    from stcnnt_dsl.tools.flops import count_flops_analytic, count_flops_torch

    spec = _halving(**body)
    model = stcnnt_dsl.build(spec, seed=0).eval()
    shape = (1, 8, 2, 32, 32)
    inferred = stcnnt_dsl.infer_shapes(spec, shape)
    levels = ["encoder.0", "encoder.1", "encoder.2", "bridge"]
    assert [inferred["nodes"][n][1] for n in levels] == frames
    seen = {}
    for name in inferred["nodes"]:
        if model.graph.node(name).has_module:
            model.get_submodule(name).register_forward_hook(
                lambda m, i, o, n=name: seen.__setitem__(n, tuple(o.shape))
            )
    x = torch.randn(shape)
    with torch.no_grad():
        y = model(x)
    assert seen == {n: s for n, s in inferred["nodes"].items() if n in seen}
    assert tuple(y.shape) == inferred["output"] == (1, 8, model.out_channels, 32, 32)
    with torch.no_grad():
        features = [tuple(f.shape) for f in model.forward_features(x)]
    assert features == inferred["features"]
    assert [f[1] for f in features][-3:] == frames[:3]  # the decoder levels
    assert sum(model.graph.params().values()) == _params(model)
    assert count_flops_analytic(model.graph, shape).total == count_flops_torch(model, x).total


def test_halve_time_needs_a_multiple_of_2_to_the_halve_time():
    spec = _halving(halve_time=2)
    accepts = stcnnt_dsl.accepts(spec)
    assert accepts.text == "H and W multiples of 32, T a multiple of 4"
    assert (accepts.frames_multiple, accepts.min_frames) == (4, 4)
    with pytest.raises(stcnnt_dsl.ShapeError, match=r"down\.1 .*multiple of 2, got T=3") as err:
        stcnnt_dsl.check(spec, (1, 6, 2, 32, 32))
    assert err.value.nearest["T"] == [4, 8]
    # 3x3x3 reflect-padded units need 2 frames at the deepest halved level: T >= 8
    reflect = {**spec, "defaults": {"padding": "reflect"}}
    assert stcnnt_dsl.accepts(reflect).text.endswith("T a multiple of 4 >= 8")
    with pytest.raises(stcnnt_dsl.ShapeError, match="T=4 is 1 frames there"):
        stcnnt_dsl.check(reflect, (1, 4, 2, 32, 32))
    stcnnt_dsl.check(reflect, (1, 8, 2, 32, 32))


def test_decoder_blocks_take_their_level_options():
    spec = _halving(decoder_blocks=True, decoder=[{"window": 8}, {}, {}])
    graph = stcnnt_dsl.build(spec).graph
    decoder = [graph.node(f"decoder.{i}") for i in range(3)]
    assert [n.kind for n in decoder] == ["block"] * 3
    assert [(n.in_channels, n.out_channels) for n in decoder] == [(12, 12), (16, 8), (32, 8)]
    assert decoder[0].plan.cells[1].geometry.window == (8, 8)
    with pytest.raises(SpecError, match="add decoder_blocks: true") as err:
        stcnnt_dsl.load_spec(_halving(decoder=[{}, {}, {}]))
    assert err.value.path == "mixed_unetr.decoder"


def test_partition_channel_orders():
    """space_to_depth: channel c*4 + dh*2 + dw holds x[c, 2i + dh, 2j + dw] (c*8 + dt*4 + ...
    in 3d); reference: the reference's WindowPartition2D, the [C, H/2, W/2, 2, 2] memory
    viewed as [4C, H/2, W/2]."""
    from stcnnt_dsl.nn.sampling import partition

    x = torch.arange(2 * 4 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 4, 3, 4, 6)
    y = partition(x)
    for c, dh, dw in [(0, 0, 0), (1, 1, 0), (2, 0, 1), (2, 1, 1)]:
        assert torch.equal(y[:, :, c * 4 + dh * 2 + dw], x[:, :, c, dh::2, dw::2])
    y3 = partition(x, temporal=True)
    assert torch.equal(y3[:, :, 2 * 8 + 1 * 4 + 0 * 2 + 1], x[:, 1::2, 2, 0::2, 1::2])
    ref = partition(x, order="reference")
    blocks = x.reshape(2, 4, 3, 2, 2, 3, 2).permute(0, 1, 2, 3, 5, 4, 6)  # [C, H', W', 2, 2]
    assert torch.equal(ref, blocks.reshape(2, 4, 12, 2, 3))
    assert not torch.equal(ref, y)


def test_input_unit_needs_a_partition():
    with pytest.raises(SpecError, match="input_unit needs a partition stage") as err:
        stcnnt_dsl.load_spec(_halving(input_unit=True))
    assert err.value.path == "mixed_unetr.input_unit"


@pytest.mark.parametrize(("time", "min_t", "on_input", "part", "halve", "out"), [
    (4, 16, 1, "2d", 0, 20), (16, 2, 1, "3d", 2, 20), (8, 4, 0, "2d", 1, 16),
])  # fmt: skip
def test_reference_window_partition_translates(time, min_t, on_input, part, halve, out):
    """3-D when time // 2 > min_T (strictly), then the levels halve T while
    (time // 2) // 2^(i+1) >= min_T; 5C out with the input unit, else 4C."""
    config = _mixed(time=time, height=64, width=64)
    config["backbone_mixed_unetr"].update(use_window_partition=1, min_T=min_t,
                                          encoder_on_input=on_input)  # fmt: skip
    spec = reference_spec(config)
    body = spec.body
    assert (body.partition, body.halve_time, body.input_unit) == (part, halve, bool(on_input))
    assert body.partition_order == ("reference" if part == "2d" else "space_to_depth")
    assert spec.input_size == (64, 64) or list(spec.input_size) == [64, 64]
    assert stcnnt_dsl.build(spec).out_channels == out


def test_prediction_windows_take_a_multiple_of_the_halved_t():
    """predict_image on a real 15-slice DICOM (pydicom's rtdose.dcm) with a model that
    halves T once: the window has 16 slices (MONAI pads), the labels 15."""
    pydicom = pytest.importorskip("pydicom", reason="the data extra is not installed")
    from stcnnt_dsl.data import read_image
    from stcnnt_dsl.data.predict import predict_image, valid_patch

    image = read_image(pydicom.data.get_testdata_file("rtdose.dcm"))
    spec = {**_halving(halve_time=1, channels=[4, 8], blocks="C2"), "in_channels": 1,
            "heads": {"seg": {"kind": "segmentation", "classes": 3}}}  # fmt: skip
    model = stcnnt_dsl.build(spec, seed=0).eval()
    t, _, h, w = image.shape
    assert t == 15 and valid_patch(model, (t, h, w)) == (16, 12, 12)
    assert valid_patch(model, (100, 12, 12)) == (32, 12, 12)
    assert predict_image(model, image, overlap=0.25)["seg"].array.shape == (15, 1, h, w)


def test_halve_time_at_most_the_levels():
    with pytest.raises(SpecError, match="halve_time=4 is more than the 3 levels"):
        stcnnt_dsl.load_spec(_halving(halve_time=4))
    with pytest.raises(SpecError, match="integer >= 0"):
        stcnnt_dsl.load_spec(_halving(halve_time=-1))


@pytest.mark.parametrize(("time", "min_t", "levels", "halve"), [
    (2, 16, 2, 0), (8, 2, 3, 2), (16, 4, 3, 2), (16, 2, 3, 3), (32, 16, 2, 1),
])  # fmt: skip
def test_reference_min_t_becomes_halve_time(time, min_t, levels, halve):
    """The reference's down-sampling of level i halves T while time // 2^(i+1) >= min_T."""
    config = _mixed(time=time)
    config["backbone_mixed_unetr"].update(min_T=min_t, num_resolution_levels=levels,
                                          n_heads=[2] * (levels + 1))  # fmt: skip
    assert reference_spec(config).body.halve_time == halve


def test_conv_unit_matches_its_formula():
    torch.manual_seed(0)
    unit = ConvUnit(3, 3, residual=True).eval()
    for p in unit.parameters():
        p.data.normal_()
    x = torch.randn(2, 4, 3, 8, 8)  # [B, T, C, H, W]

    def conv(w, t):  # reflect-padded 3x3x3 on [B, C, T, H, W]
        return F.conv3d(F.pad(t, (1,) * 6, mode="reflect"), w)

    def norm(t):  # per frame and channel over (H, W)
        return (t - t.mean((-2, -1), keepdim=True)) / (t.var((-2, -1), unbiased=False,
                                                           keepdim=True) + 1e-5).sqrt()  # fmt: skip

    c = x.transpose(1, 2)
    y = F.prelu(norm(conv(unit.conv1.weight, c)), unit.act1.weight)
    y = F.prelu(norm(conv(unit.conv2.weight, y)) + c, unit.act2.weight)
    with torch.no_grad():
        assert torch.allclose(unit(x), y.transpose(1, 2), atol=1e-4)
    # no residual where the channels change (as the reference)
    assert not ConvUnit(3, 5, residual=True).residual


# --------------------------------------------------------------------------- reference_spec


@pytest.mark.parametrize(
    "section, key, match",
    [
        ({"n_heads": 8}, "backbone_mixed_unetr.n_heads", "one head count per level"),
        ({"n_heads": [8]}, "backbone_mixed_unetr.n_heads", "one head count per level"),
        ({"num_resolution_levels": 5, "n_heads": [1] * 6},
         "backbone_mixed_unetr.num_resolution_levels", "E3"),
    ],
)  # fmt: skip
def test_mixed_unetr_refusals_name_the_key(section, key, match):
    config = _mixed()
    config["backbone_mixed_unetr"].update(section)
    with pytest.raises(SpecError, match=match) as err:
        reference_spec(config)
    assert err.value.path == key


def test_whole_mixed_unetr_models_need_two_levels_and_omnivore_is_out_of_scope():
    config = _mixed(post_model="UperNet3D")
    config["backbone_mixed_unetr"].update(num_resolution_levels=3, n_heads=[2, 2, 2, 2])
    with pytest.raises(SpecError, match=r"C\*\(levels\+1\) = 16.*3C = 12") as err:
        reference_spec(config)
    assert err.value.path == "post_model"
    with pytest.raises(SpecError, match=r"omnivore.*out of scope.*SwinUNETR"):
        reference_spec({**_mixed(), "backbone_model": "omnivore"})


def test_upernet_heads_translate_to_the_reference_behaviours():
    heads = reference_spec(_mixed(post_model="UperNet2D", no_out_channel=3)).heads
    head = heads["segmentation"].keys()
    assert head == {
        "classes": 3, "decoder": "upernet", "reads": "output", "bins": (1, 2, 4, 6),
        "dropout": 0.1, "bottleneck_padding": 1, "shared_smooth": True, "top_down": "pairwise",
        "mode": "2d", "size": (32, 32), "frames": "first",
    }  # fmt: skip
    three = reference_spec(_mixed(post_model="UperNet3D", use_patches=True, patch_time=2,
                                  patch_height=16, patch_width=16)).heads  # fmt: skip
    assert three["segmentation"].keys()["size"] == (2, 16, 16)
    assert "frames" not in three["segmentation"].keys()


# --------------------------------------------------------------------------- upernet options


def _head(**options) -> UperNetHead:
    torch.manual_seed(0)
    head = UperNetHead([8, 16, 32], 3, **options).eval()
    for name, b in head.named_buffers():
        if name.endswith("running_var"):
            b.uniform_(0.5, 1.5)
    return head


def _features(t: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, t, c, 16 // 2**i, 16 // 2**i, generator=g) for i, c in
            enumerate([8, 16, 32])]  # fmt: skip


def test_padded_bottleneck_adds_a_border_and_keeps_the_inside():
    plain, padded = _head(), _head(bottleneck_padding=1)
    padded.load_state_dict(plain.state_dict())
    deepest = _features()[-1].flatten(0, 1)
    with torch.no_grad():
        a, b = plain.psp(deepest), padded.psp(deepest)
    assert b.shape[-2:] == (a.shape[-2] + 2, a.shape[-1] + 2)
    assert torch.allclose(b[..., 1:-1, 1:-1], a, atol=1e-6)


def test_shared_smoothing_conv_is_one_module():
    shared, separate = _head(shared_smooth=True), _head()
    assert shared.fpn.smooth[0] is shared.fpn.smooth[1]
    conv = 8 * 8 * 9 + 8
    assert _params(separate) - _params(shared) == conv
    keys = [k for k in shared.state_dict() if k.startswith("fpn.smooth.")]
    assert keys == [
        "fpn.smooth.0.weight",
        "fpn.smooth.0.bias",
        "fpn.smooth.1.weight",
        "fpn.smooth.1.bias",
    ]  # the reference's state dict lists it per level too


def test_top_down_pairwise_and_cumulative():
    pairwise, cumulative = _head(), _head(top_down="cumulative")
    cumulative.load_state_dict(pairwise.state_dict())
    fpn = pairwise.fpn
    lat = [conv(f.flatten(0, 1)) for conv, f in zip(fpn.lateral, _features(), strict=True)]

    def up(t, like):
        return F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=True)

    with torch.no_grad():
        m2 = up(lat[2], lat[1]) + lat[1]
        want_pairwise = [fpn.smooth[0](up(lat[1], lat[0]) + lat[0]), fpn.smooth[1](m2), lat[2]]
        want_cumulative = [fpn.smooth[0](up(m2, lat[0]) + lat[0]), fpn.smooth[1](m2), lat[2]]
        for head, want in ((pairwise, want_pairwise), (cumulative, want_cumulative)):
            fused = head.fpn.fuse(torch.cat([up(p, want[0]) for p in want], dim=1))
            assert torch.allclose(head.fpn(lat_in := [f.flatten(0, 1) for f in _features()]),
                                  fused, atol=1e-5), lat_in  # fmt: skip


def test_first_frame_and_fixed_size():
    features = _features(t=3)
    x = torch.zeros(2, 3, 1, 16, 16)
    first, every = _head(frames="first"), _head()
    every.load_state_dict(first.state_dict())
    with torch.no_grad():
        y = first(x, features[0], features)
        one = every(x[:, :1], features[0][:, :1], [f[:, :1] for f in features])
    assert y.shape == (2, 1, 3, 16, 16)
    assert torch.allclose(y, one)
    sized = _head(size=(20, 24))
    with torch.no_grad():
        assert sized(x, features[0], features).shape == (2, 3, 3, 20, 24)
    with pytest.raises(SpecError, match="first"):
        _head(frames="first", mode="3d")


def test_head_keys_are_checked_in_the_spec():
    base = {"mixed_unetr": {"channels": [4, 8], "blocks": "C2"}}
    bad = [({"frames": "first", "mode": "3d"}, "heads.seg.frames"),
           ({"size": [8, 8], "mode": "3d"}, "heads.seg.size")]  # fmt: skip
    for extra, path in bad:
        heads = {"seg": {"kind": "segmentation", "classes": 2, "decoder": "upernet", **extra}}
        with pytest.raises(SpecError) as err:
            stcnnt_dsl.build({**base, "heads": heads})
        assert err.value.path == path
    with pytest.raises(SpecError, match="top_down must be one of"):
        stcnnt_dsl.load_spec(
            {
                **base,
                "heads": {
                    "seg": {
                        "kind": "segmentation",
                        "classes": 2,
                        "decoder": "upernet",
                        "top_down": "up",
                    }
                },
            }
        )


# --------------------------------------------------------------------------- beside the reference


def _compare(*cases: str) -> str:
    """Run tools/compare_reference_models.py in a child process (it stubs modules the
    reference imports for training, which must not leak into this one)."""
    import subprocess

    args = [sys.executable, str(ROOT / "tools" / "compare_reference_models.py"),
            "--reference-src", str(REFERENCE_SRC)]  # fmt: skip
    for case in cases:
        args += ["--case", case]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_checkout
def test_whole_reference_models_agree():
    out = _compare("mixed_unetr+UperNet3D")
    # the mixed U-Netr of C=8: ours has the reference's parameters but its 272 unused ones
    assert "params 496,516 (reference 496,788, unused 272)" in out


@needs_checkout
@pytest.mark.slow
def test_every_compared_reference_model_agrees():
    assert len(_compare().splitlines()) == 17


@needs_checkout
def test_reference_transformer_decoders_agree():
    """transformer_for_upsampling: decoder blocks of each level's block string (the
    U-Net's decoder window sizes), in a whole model and a 4-level backbone halving T."""
    out = _compare(
        "mixed_unetr(transformer decoder)+UperNet3D",
        "mixed_unetr(transformer decoder, 4 levels, T=8, min_T=2), backbone",
    )
    lines = out.splitlines()
    assert "out (2, 3, 4, 32, 32)" in lines[0] and "out (2, 12, 8, 64, 64)" in lines[1]
    for line in lines:
        counts = line.split("params ")[1].replace(",", "").strip(")").split()
        assert int(counts[0]) + int(counts[4]) == int(counts[2]), line


@needs_checkout
def test_reference_window_partitions_agree():
    """use_window_partition: the 2-D partition (the reference's reshuffle) with the input
    unit (5C out), and the 3-D one (T halved, then by 2 levels) under a UperNet3D head
    without units (4C out, which its factory's head expects with 3 levels)."""
    out = _compare(
        "mixed_unetr(2-D window partition, 3 levels), backbone",
        "mixed_unetr(3-D partition, 2d convs, no units)+UperNet3D",
    )
    lines = out.splitlines()
    assert "out (2, 40, 4, 64, 64)" in lines[0] and "out (2, 3, 8, 64, 64)" in lines[1]
    for line in lines:
        counts = line.split("params ")[1].replace(",", "").strip(")").split()
        assert int(counts[0]) + int(counts[4]) == int(counts[2]), line


@needs_checkout
def test_reference_models_that_halve_t_agree():
    """The reference's min_T: T=8 with min_T=2 halves T at 2 of 3 levels, T=16 with
    min_T=4 at both levels of a whole model; outputs to 1e-4 (the tool's exit status),
    parameters equal."""
    out = _compare("mixed_unetr(T=8, min_T=2, 3 levels), backbone",
                   "mixed_unetr(T=16, min_T=4, up conv)+UperNet3D")  # fmt: skip
    lines = out.splitlines()
    assert len(lines) == 2
    assert "out (2, 24, 8, 32, 32)" in lines[0] and "out (2, 3, 16, 32, 32)" in lines[1]
    for line in lines:
        counts = line.split("params ")[1].replace(",", "").strip(")").split()
        ours, reference, unused = int(counts[0]), int(counts[2]), int(counts[4])
        assert ours + unused == reference and unused == 272, line


def test_round_trip_of_a_whole_mixed_unetr_with_upernet():
    config = _mixed(post_model="UperNet3D", no_out_channel=2)
    ours = stcnnt_dsl.build(reference_spec(config)).eval()
    for p in ours.parameters():
        p.data.normal_(0, 0.1)
    state = _reference_state_of(ours, config)
    assert "post.FPN.conv_fusion.0.weight" in state and "backbone.E0.conv1.conv.weight" in state
    again = import_reference(copy.deepcopy(state), config).eval()
    x = torch.randn(2, 2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x)["segmentation"], again(x)["segmentation"])


def test_a_model_with_a_shared_smoothing_conv_saves_and_loads(tmp_path):
    heads = {"seg": {"kind": "segmentation", "classes": 2, "decoder": "upernet",
                     "shared_smooth": True}}  # fmt: skip
    model = stcnnt_dsl.build({"unet": {"channels": [4, 8, 16], "blocks": "C2"}, "heads": heads},
                             seed=0)  # fmt: skip
    again = stcnnt_dsl.load_model(stcnnt_dsl.save_model(model, tmp_path / "m.safetensors"))
    smooth = again.heads["seg"].fpn.smooth
    assert smooth[0] is smooth[1]
    assert torch.equal(smooth[1].weight, model.heads["seg"].fpn.smooth[0].weight)
