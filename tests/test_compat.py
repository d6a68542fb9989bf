"""Compatibility with the reference implementation: configurations, weights, fixtures.

The fixtures (weights, input and outputs of the reference run on two small
configurations) live in ../shared/reference; STCNNT_REFERENCE_DIR overrides the place.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

import stcnnt_dsl
from stcnnt_dsl.compat import import_reference, read_reference, reference_spec
from stcnnt_dsl.compat.weights import _reference_names
from stcnnt_dsl.errors import SpecError, WeightsError
from stcnnt_dsl.graph import build_graph
from stcnnt_dsl.graph.window_sizing import level_sizes

REFERENCE_DIR = Path(
    os.environ.get(
        "STCNNT_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"
    )
)
needs_fixtures = pytest.mark.skipif(
    not (REFERENCE_DIR / "reference-unet.safetensors").is_file(),
    reason=f"reference fixtures not found in {REFERENCE_DIR} (set STCNNT_REFERENCE_DIR)",
)


def _fixture(name: str) -> Path:
    return REFERENCE_DIR / f"reference-{name}.safetensors"


def _tensors(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(_fixture(name)))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _close(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest difference, after checking it is within 1e-4 x max(1, max |ref|)."""
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-4 * max(1.0, ref.abs().max().item()), diff
    return diff


# --------------------------------------------------------------------------- the fixtures


@needs_fixtures
@pytest.mark.parametrize("name", ["unet", "hrnet"])
def test_fixture_outputs_and_parameter_count(name):
    from safetensors import safe_open

    model = import_reference(_fixture(name)).eval()
    stored = _tensors(name)
    with safe_open(str(_fixture(name)), "pt") as handle:
        params = int(handle.metadata()["params"])
    assert _params(model) == params
    x = stored["input"].transpose(1, 2)  # reference [B, C, T, H, W] -> ours [B, T, C, H, W]
    with torch.no_grad():
        _close(model(x), stored["out::output"].transpose(1, 2))
        levels = model.forward_features(x)
    level_keys = sorted(k for k in stored if k.startswith("out::level_"))
    assert len(level_keys) == (2 if name == "hrnet" else 0)
    for i, key in enumerate(level_keys):
        _close(levels[i], stored[key].transpose(1, 2))


@needs_fixtures
def test_state_dict_input_with_explicit_config():
    weights, config = read_reference(_fixture("unet"))
    assert config["backbone_unet"]["C"] == 8
    model = import_reference(dict(weights), config).eval()
    stored = _tensors("unet")
    with torch.no_grad():
        _close(model(stored["input"].transpose(1, 2)), stored["out::output"].transpose(1, 2))
    # a wrapper prefix (a whole reference model, DDP) is recognised and dropped
    wrapped = {f"backbone.{k}": v for k, v in weights.items()}
    assert _params(import_reference(wrapped, config)) == _params(model)
    with pytest.raises(WeightsError, match="config"):
        import_reference(weights)


@needs_fixtures
def test_config_argument_overrides_the_stored_one():
    _, config = read_reference(_fixture("unet"))
    changed = copy.deepcopy(config)
    changed["n_head"] = 4  # bias tables become [N, 4]: the stored [N, 8] ones do not fit
    with pytest.raises(WeightsError, match=r"relative_position_bias_table.*\(225, 8\).*\(225, 4\)"):
        import_reference(_fixture("unet"), changed)


@needs_fixtures
def test_missing_unexpected_and_misshapen_weights_are_named():
    weights, config = read_reference(_fixture("unet"))
    key = "D1.block.cell_2.mlp.0.conv.weight"
    broken = {k: v for k, v in weights.items() if k != key}
    with pytest.raises(WeightsError, match=f"missing reference weight '{key}'"):
        import_reference(broken, config)
    extra = {**weights, "D1.block.cell_9.attn.key.conv.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match=r"unexpected reference weight 'D1\.block\.cell_9"):
        import_reference(extra, config)
    key = "bridge.block.cell_1.attn.query.conv.weight"
    wrong = {**weights, key: torch.zeros(16, 16, 5, 5)}
    with pytest.raises(WeightsError, match=f"shape mismatch for reference weight '{key}'"):
        import_reference(wrong, config)


@needs_fixtures
def test_reference_buffers_are_checked():
    weights, config = read_reference(_fixture("unet"))
    key = "D0.block.cell_1.attn.relative_position_index"
    index = weights[key].clone()
    index[:2] = index[:2].flip(0)
    with pytest.raises(WeightsError, match=f"'{key}'.*relative position index"):
        import_reference({**weights, key: index}, config)
    key = "D0.block.cell_0.attn.mask"
    with pytest.raises(WeightsError, match=f"'{key}'.*causal mask"):
        import_reference({**weights, key: torch.ones_like(weights[key])}, config)
    # buffers are not needed: a state_dict without them loads (flash temporal path)
    lean = {k: v for k, v in weights.items() if not k.endswith((".mask", "_index"))}
    import_reference(lean, config)


def test_unreadable_weights():
    with pytest.raises(WeightsError, match="not found"):
        import_reference("no/such/file.safetensors")
    with pytest.raises(WeightsError, match=r"only \.safetensors"):
        import_reference(__file__)


# --------------------------------------------------------------------------- bundled


@pytest.mark.parametrize(
    "name, backbone, params",
    [
        ("reference-unet", "STCNNT_UNET", 31_985_749),
        ("reference-hrnet", "STCNNT_HRNET", 35_580_027),
    ],
)
def test_bundled_reference_architectures(name, backbone, params):
    assert name in stcnnt_dsl.list_architectures()
    spec = stcnnt_dsl.load_spec(name)
    section = "backbone_unet" if backbone == "STCNNT_UNET" else "backbone_hrnet"
    default = reference_spec(
        {"backbone_model": backbone, "height": 64, "width": 64, section: {
            "C": 32, "num_resolution_levels": 3, "block_str": ["T1L1G1"]}}
    )  # fmt: skip
    assert (spec.body, spec.defaults, spec.input_size) == (
        default.body,
        default.defaults,
        default.input_size,
    )
    assert _params(stcnnt_dsl.build(spec)) == params


# --------------------------------------------------------------------------- reference_spec

_SMALL = {
    "backbone_model": "STCNNT_UNET", "height": 32, "width": 32, "n_head": 8,
    "backbone_unet": {"C": 8, "num_resolution_levels": 2, "block_str": ["T1L1G1"]},
}  # fmt: skip


def _with(**changes):
    config = copy.deepcopy(_SMALL)
    for key, value in changes.items():
        if key.startswith("backbone_unet."):
            config["backbone_unet"][key.split(".", 1)[1]] = value
        else:
            config[key] = value
    return config


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"mixer_type": "lin"}, "mixer_type"),
        ({"shuffle_in_window": 1}, "shuffle_in_window"),
        ({"stride_s": 2}, "stride_s"),
        ({"kernel_size": 5, "padding": 2}, "kernel_size"),
        ({"mixer_kernel_size": 4}, "mixer_kernel_size"),
        ({"upsample_method": "NN"}, "upsample_method"),
        ({"activation_func": "swish"}, "activation_func"),
        ({"norm_mode": "group"}, "norm_mode"),
        ({"window_sizing_method": "adaptive"}, "window_sizing_method"),
        ({"backbone_model": "omnivore"}, "backbone_model"),
        ({"n_head": 16}, "n_head"),  # 8 channels: temporal heads would straddle channels
        ({"height": 40, "width": 40}, "patch_size"),  # a 20-pixel window, 8 patches
        ({"backbone_unet.num_resolution_levels": 6}, "backbone_unet.num_resolution_levels"),
        ({"backbone_unet.block_str": ["T1X1"]}, "backbone_unet.block_str"),
        ({"no_in_channel": 16}, "backbone_unet.C"),
    ],
)
def test_inexpressible_keys_are_named(changes, key):
    with pytest.raises(SpecError) as err:
        reference_spec(_with(**changes))
    assert err.value.path == key
    assert key.split(".")[-1] in str(err.value)


def test_hrnet_levels_with_diverging_window_sizes_become_overrides():
    # At 64x64 with window 32, B11 halves the shared level-0 list after B01 was built,
    # so B02 gets other windows than B00/B01: expressed as a per-stage override.
    config = {"backbone_model": "STCNNT_HRNET", "height": 64, "width": 64, "n_head": 8,
              "window_size": [32, 32], "patch_size": [4, 4],
              "backbone_hrnet": {"C": 8, "num_resolution_levels": 3}}  # fmt: skip
    spec = reference_spec(config)
    assert set(spec.hrnet.overrides) == {"level0.stage2"}
    assert spec.hrnet.overrides["level0.stage2"].grid != spec.hrnet.branches[0].grid
    model = stcnnt_dsl.build(spec)
    # 2,232,947: the reference's own count for this configuration, from an independent
    # parameter counter that replays its construction (see docs/compat.md).
    assert sum(p.numel() for p in model.parameters()) == 2_232_947


def test_training_only_and_no_op_keys_are_ignored():
    noise = {
        "batch_size": 16, "global_lr": 1e-4, "use_amp": True, "seed": 3, "time": 12,
        "separable_conv": True, "use_einsum": True, "interp_align_c": True,
        "channel_first": True, "num_epochs": 30, "backbone_hrnet": {"C": 64},
        "backbone_unet": {**_SMALL["backbone_unet"], "use_interpolation": 0},
    }  # fmt: skip
    assert reference_spec({**_SMALL, **noise}) == reference_spec(_SMALL)
    dotted = {k: v for k, v in _SMALL.items() if k != "backbone_unet"}
    dotted.update({f"backbone_unet.{k}": v for k, v in _SMALL["backbone_unet"].items()})
    assert reference_spec(dotted) == reference_spec(_SMALL)


def test_reference_geometry_is_replayed_with_its_list_aliasing():
    # The reference's decoder sees the lists its encoder and bridge shrank in place.
    spec = reference_spec(_SMALL)
    decoder = [(s.window, s.patch, s.grid) for s in spec.unet.decoder]
    assert decoder == [(4, 2, 8), (4, 2, 4)]
    assert [(s.window, s.grid) for s in spec.unet.encoder] == [(16, 2), (8, 2)]
    assert spec.unet.bridge.window == 4


# --------------------------------------------------------------------------- round trips

_VARIANTS = [  # the parser defaults are covered by the fixtures
    {"a_type": "lin", "cell_type": "parallel", "norm_mode": "batch2d"},
    {"norm_mode": "layer", "stride_t": 2, "is_causal": True, "activation_func": "gelu"},
    {"backbone_unet.block_str": ["C2L0", "C2G1", "V1T0"], "norm_mode": "batch3d",
     "backbone_unet.use_unet_attention": 0, "backbone_unet.with_conv": 0},
    {"backbone_unet.block_str": ["L1V1", "T1G0V0", "C2"], "cell_type": "parallel", "a_type": "lin",
     "cosine_att": 1, "att_with_relative_postion_bias": 0, "block_dense_connection": 0},
]  # fmt: skip


@pytest.mark.parametrize("changes", _VARIANTS)
def test_reference_state_dicts_round_trip(changes):
    """Our model, written under the reference's names and imported again, computes the
    same: every key maps one to one, whatever the cell kinds and options."""
    config = _with(**changes)
    spec = reference_spec(config)
    assert stcnnt_dsl.load_spec(stcnnt_dsl.dump_spec(spec)) == spec
    source = stcnnt_dsl.build(spec, seed=0).eval()
    with torch.no_grad():
        for name, buffer in source.named_buffers():
            if "running_" in name:
                buffer.uniform_(0.5, 1.5)
    names, _ = _reference_names(source)
    state = source.state_dict()
    exported = {}
    for key, refs in names.items():
        parts = state[key].chunk(len(refs)) if len(refs) > 1 else [state[key]]
        exported.update(zip(refs, parts, strict=True))
    model = import_reference(exported, config).eval()
    x = torch.randn(1, 2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_hrnet_round_trip_with_five_levels():
    config = {
        "backbone_model": "STCNNT_HRNET", "height": 32, "width": 32, "n_head": 4,
        "backbone_hrnet": {"C": 4, "num_resolution_levels": 5, "block_str": ["C2"]},
    }  # fmt: skip
    source = stcnnt_dsl.build(reference_spec(config), seed=1).eval()
    names, _ = _reference_names(source)
    refs = {r for rs in names.values() for r in rs}
    assert {
        "down_03_44.block.D2_3.conv.conv.weight",
        "up_4_0.block.U2_3.conv.conv.weight",
        "up_4.block.U2_3.conv.conv.weight",
        "down_3_4.block.D2_0.conv.conv.weight",
    } <= refs
    state = source.state_dict()
    exported = {names[k][0]: v for k, v in state.items()}
    model = import_reference(exported, config).eval()
    x = torch.randn(1, 2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


# --------------------------------------------------------------------------- window_sizing


def test_window_sizing_rules():
    sizes = [level_sizes("mixed", 16, 2, (64, 64), level) for level in range(4)]
    assert sizes == [
        {"window": 16, "patch": 2}, {"window": 16, "patch": 2},
        {"window": 8, "patch": 1}, {"window": 4, "patch": 1},
    ]  # fmt: skip
    assert level_sizes("keep_size", 16, 2, (64, 64), 2) == {"window": 8, "patch": 2}
    assert level_sizes("keep_count", 16, 2, (64, 64), 1) == {"window": 8, "patch": 1}
    assert level_sizes("keep_count", (16, 8), 2, (64, 32), 1) == {"window": (8, 4), "patch": 1}
    assert level_sizes("fixed", 8, 2, (64, 64), 3) == {"window": 8, "patch": 2}


def test_window_sizing_is_an_option_layer_below_the_stage():
    spec = {
        "input_size": [64, 64], "defaults": {"window": 16, "patch": 2},
        "unet": {"channels": [8, 16, 32], "blocks": "L1G1", "window_sizing": "keep_size",
                 "decoder": [{}, {}, {"window": 2}]},
    }  # fmt: skip
    plan = build_graph(spec)
    windows = {s.name: s.plan.cell_values()[0]["window"] for s in plan.stages}
    assert windows == {"encoder.0": 16, "encoder.1": 16, "encoder.2": 8, "bridge": 4,
                       "decoder.2": 2, "decoder.1": 16, "decoder.0": 16}  # fmt: skip
    sources = {layer.source: layer.values for layer in plan.node("encoder.2").plan.layers}
    assert sources["window_sizing"] == {"window": 8, "patch": 2}
    assert stcnnt_dsl.load_spec(stcnnt_dsl.dump_spec(spec)) == stcnnt_dsl.load_spec(spec)
    del spec["input_size"]
    with pytest.raises(SpecError, match="input_size") as err:
        build_graph(spec)
    assert err.value.path == "unet.window_sizing"
