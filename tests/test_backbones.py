"""Compiled backbones: every bundled architecture builds, runs forward and backward,
has the documented resolutions, and behaves as its topology says."""

from __future__ import annotations

import pytest
import torch

import stcnnt_dsl
from stcnnt_dsl import ShapeError, SpecError, build, infer_shapes, list_architectures

SMALL = {"unet-2d-small", "unet-3d-small", "llm"}


def _input(model, t=2, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, t, model.in_channels, h, w, generator=g)


@pytest.mark.parametrize("name", sorted(list_architectures()))
def test_bundled_builds_and_runs_forward_backward(name):
    model = build(name, seed=0)
    x = _input(model).requires_grad_()
    y = model(x)
    expected = infer_shapes(name, tuple(x.shape))
    assert tuple(y.shape) == expected["output"]
    assert y.shape[2] == model.out_channels
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_hrnet_levels_have_documented_resolutions():
    model = build("hrnet", seed=0).eval()
    x = _input(model, t=1, h=64, w=96)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    info = model.feature_info
    assert [f["reduction"] for f in info] == [1, 2, 4]
    for feat, f in zip(feats, info, strict=True):
        assert feat.shape == (1, 1, f["channels"], 64 // f["reduction"], 96 // f["reduction"])
    assert out.shape == (1, 1, sum(f["channels"] for f in info), 64, 96)


def test_unet_features_and_output():
    model = build("unet-2d-small", seed=0).eval()
    x = _input(model, t=1, h=48, w=32)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    assert torch.equal(out, feats[0])
    shapes = infer_shapes("unet-2d-small", tuple(x.shape))["features"]
    assert [tuple(f.shape) for f in feats] == shapes


def test_unet_is_equivariant_to_permuting_frames():
    """T1 (non-causal) and instance2d have no temporal order: permuting the input frames
    permutes the output frames."""
    model = build("unet", seed=0).eval()
    x = _input(model, t=4)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        y = model(x)
        y_perm = model(x[:, perm])
    torch.testing.assert_close(y_perm, y[:, perm], rtol=1e-4, atol=1e-5)


def test_causal_unet_is_not_equivariant_but_respects_time():
    spec = "unet(channels=[8, 16], blocks=T1[causal=true]L1, window=4)"
    model = build(spec, seed=0).eval()
    x = _input(model, t=3, h=16, w=16)
    x2 = x.clone()
    x2[:, 2] += 1.0  # change the last frame only
    with torch.no_grad():
        y, y2 = model(x), model(x2)
    torch.testing.assert_close(y[:, :2], y2[:, :2])
    assert not torch.allclose(y[:, 2], y2[:, 2])


def test_llm_dense_skips_change_the_result():
    base = "llm(channels=8, blocks=[L1, L1, L1], window=4, dense_skips={})"
    x = torch.randn(1, 1, 1, 8, 8)
    dense = build(base.format("true"), seed=1).eval()
    plain = build(base.format("false"), seed=1).eval()
    with torch.no_grad():
        assert not torch.allclose(dense(x), plain(x))
        feats = dense.forward_features(x)
    assert len(feats) == 3


def test_seed_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build("llm", seed=7)
    after = torch.rand(1)
    b = build("llm", seed=7)
    c = build("llm", seed=8)
    assert torch.equal(before, after)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na
    assert any(
        not torch.equal(pa, pc)
        for pa, pc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_backbone_attributes_follow_the_contract():
    model = build("unet")
    assert isinstance(model, torch.nn.Module)
    assert model.out_channels == 32
    assert model.spec == stcnnt_dsl.load_spec("unet")
    assert all({"channels", "reduction"} <= set(f) for f in model.feature_info)
    other = build("unet", in_channels=3)
    assert other.in_channels == 3 and other.spec.in_channels == 3


@pytest.mark.parametrize("arch", ["unet", "hrnet", "llm"])
def test_feature_info_uses_timm_keys_and_real_module_names(arch):
    model = build(arch, seed=0)
    x = torch.randn(1, 2, 1, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
    assert len(features) == len(model.feature_info)
    for info, feat in zip(model.feature_info, features, strict=True):
        assert info["num_chs"] == info["channels"] == feat.shape[2]
        assert feat.shape[-1] == 64 // info["reduction"]
        module = model.get_submodule(info["module"])  # a real module of the model
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, i, o, seen=captured: seen.append(o))
        with torch.no_grad():
            model.forward_features(x)
        handle.remove()
        torch.testing.assert_close(captured[-1], feat)


def test_no_weight_decay_names_bias_tables_norms_and_biases():
    model = build("llm(channels=8, blocks=L1 G1 T1, norm=batch2d, activation=prelu)", seed=0)
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names <= set(params)
    assert any(n.endswith("attn.bias_table") for n in names)
    assert any(".norm1.norm.weight" in n for n in names)
    assert all(n in names for n in params if n.endswith(".bias"))
    assert any(n.endswith("mixer.1.weight") for n in names)  # the PReLU slope
    decayed = set(params) - names
    assert decayed and all(params[n].ndim >= 2 for n in decayed)
    assert all("attn.qkv" in n or "proj" in n or "mixer" in n for n in decayed)


def test_modules_sit_at_the_graph_names():
    model = build("hrnet(channels=[8, 16], blocks=L1, resample=block)", seed=0)
    for node in model.graph.nodes:
        if node.has_module:
            model.get_submodule(node.name)
    assert {k.split(".")[0] for k in model.state_dict()} == {
        "level0",
        "level1",
        "exchange",
        "fuse",
        "upsample",
    }
    assert model.level0.stage0 is model.get_submodule("level0.stage0")


@pytest.mark.parametrize(
    ("x", "words"),
    [
        (torch.randn(1, 1, 32, 32), ["5-D", "[B, T, C, H, W]", "unsqueeze(1)"]),
        (torch.randn(1, 2, 3, 32, 32), ["1 input channels", "got shape"]),
        (torch.randn(1, 1, 2, 32, 32), ["transpose(1, 2)"]),
        (torch.zeros(1, 2, 1, 32, 32, dtype=torch.long), ["floating-point", "x.float()"]),
        (torch.randn(1, 2, 1, 40, 32), ["encoder", "must divide H=", "nearest valid H: 32 or 64"]),
    ],
)
def test_bad_inputs_get_one_clear_message(x, words):
    model = build("unet-2d-small" if x.shape[-1] != 40 else "unet")
    if x.shape[-2] == 40:
        model = build("unet")
    with pytest.raises(ShapeError) as info:
        model(x)
    for word in words:
        assert word in str(info.value)


def test_the_same_model_runs_on_several_sizes():
    model = build("unet-2d-small", seed=0).eval()
    with torch.no_grad():
        for h, w in [(16, 16), (32, 48), (64, 16)]:
            assert model(torch.randn(2, 1, 1, h, w)).shape == (2, 1, 16, h, w)


def test_layer_norm_needs_input_size_and_fixes_it():
    spec = {
        "input_size": [16, 16],
        "defaults": {"norm": "layer", "window": 4, "grid": 2},
        "unet": {"channels": [8], "blocks": "L1G1"},
    }
    model = build(spec, seed=0)
    assert model(torch.randn(1, 1, 1, 16, 16)).shape == (1, 1, 8, 16, 16)
    with pytest.raises(ShapeError, match="input_size 16x16"):
        model(torch.randn(1, 1, 1, 32, 32))
    with pytest.raises(stcnnt_dsl.SpecError, match="input_size"):
        build({"defaults": {"norm": "layer"}, "unet": {"channels": [8], "blocks": "L1"}})


@pytest.mark.parametrize(
    ("layout", "shape", "to_ours"),
    [
        ("BCTHW", (2, 1, 3, 32, 32), lambda x: x.transpose(1, 2)),
        ("BCHW", (2, 1, 32, 32), lambda x: x.unsqueeze(1)),
        ("BCHWD", (2, 1, 32, 32, 3), lambda x: x.permute(0, 4, 1, 2, 3)),
    ],
)
def test_layouts_permute_at_the_boundary_only(layout, shape, to_ours, tmp_path):
    model = build("unet-2d-small", seed=0, layout=layout).eval()
    ours = build("unet-2d-small", seed=0).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        got, want = model(x), ours(to_ours(x))
        feats = model.forward_features(x)
    assert got.dim() == len(shape)
    torch.testing.assert_close(to_ours(got), want)
    assert [to_ours(f).shape[2] for f in feats] == [i["num_chs"] for i in model.feature_info]
    loaded = stcnnt_dsl.load_model(stcnnt_dsl.save_model(model, tmp_path / "m.safetensors"))
    assert loaded.layout == layout


def test_layout_mistakes_are_clear():
    with pytest.raises(SpecError, match='did you mean "BCHW"'):
        build("llm", layout="BCHDW")
    model = build("unet-2d-small", layout="BCHW")
    with pytest.raises(ShapeError, match=r"layout BCHW takes .*4-D.*layout='BTCHW'"):
        model(torch.randn(1, 1, 1, 32, 32))


def test_a_child_replaced_after_building_is_the_one_that_runs():
    """torch's apply_activation_checkpointing (and any `model.encoder[0] = wrapper`)
    replaces children in place; the forward must call the replacement."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
    )

    model = build("unet(channels=[2, 4], blocks=L1G1, heads=1, defaults={window=4})", seed=0)
    first = model.encoder[0]
    calls = []
    first.register_forward_pre_hook(lambda *_: calls.append(1))
    apply_activation_checkpointing(model, check_fn=lambda m: m is first)
    assert model.encoder[0] is not first
    model(torch.randn(1, 1, 1, 16, 16)).sum().backward()
    assert len(calls) == 2  # the forward, and its recomputation in the backward
