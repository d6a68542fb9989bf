"""`explain`: every option of every cell, resolved, with where it came from."""

from __future__ import annotations

import json

import pytest

import stcnnt_dsl
from stcnnt_dsl.errors import DSLSyntaxError, SpecError
from stcnnt_dsl.explain import explain
from stcnnt_dsl.nn.attention import SpatialAttention, TemporalAttention
from stcnnt_dsl.options import BLOCK_OPTION_NAMES, OPTIONS, options_for_kind


def test_block_string_against_library_defaults():
    result = explain("L1[window=4] G0 T1[causal=true]")
    assert result.kind == "block"
    (block,) = result.stages
    local, glob, temporal = block.cells
    assert [c.token for c in block.cells] == ["L1[window=4]", "G0", "T1[causal=true]"]
    assert local.options["window"].value == 4 and local.options["window"].source == "inline"
    assert glob.options["window"].source == "default"
    assert not glob.mixer
    assert temporal.options["causal"].value is True
    for cell in block.cells:  # every option of the cell's kind, nothing else
        assert set(cell.options) == set(options_for_kind(cell.kind))
    assert set(block.block_options) == set(BLOCK_OPTION_NAMES)


def test_block_string_with_keyword_options():
    result = explain("L1G1", window=4, norm="batch2d")
    local = result.stages[0].cells[0]
    assert local.options["window"].source == "options"
    assert local.options["norm"].value == "batch2d"
    with pytest.raises(SpecError, match="unknown option"):
        explain("L1", windw=4)


def test_architecture_sources_follow_the_cascade():
    text = """
name: cascade
input_size: [64, 64]
defaults: {window: 8, norm: instance2d}
unet:
  channels: [16, 32]
  blocks: "L1 G1[patch=4]"
  patch: 1
  bridge: {window: 4}
"""
    result = explain(text)
    by_key = {s.key: s for s in result.stages}
    enc = by_key["encoder.0"].cells
    assert enc[0].options["window"].source == "defaults"
    assert enc[0].options["patch"].source == "topology"
    assert enc[1].options["patch"].source == "inline"
    assert by_key["bridge"].cells[0].options["window"].source == "stage"
    assert by_key["bridge"].block_options["input_size"].value == (16, 16)
    assert by_key["bridge"].block_options["input_size"].source == "input_size"
    assert enc[0].options["qkv"].source == "default"
    text_out = str(result)
    assert "4 (unet.bridge)" in text_out and "1 (unet)" in text_out and "(library)" in text_out


def test_every_stage_of_bundled_architectures_and_json():
    for arch in stcnnt_dsl.list_architectures():
        result = explain(arch)
        data = json.loads(json.dumps(result.to_dict()))
        assert data["kind"] == "architecture" and data["name"] == arch
        assert len(data["stages"]) == len(stcnnt_dsl.build(arch).plan.stages)
        cell = data["stages"][0]["cells"][0]
        assert set(cell["options"]) <= set(OPTIONS)
        assert {"value", "source"} <= set(next(iter(cell["options"].values())))


def test_effective_heads_match_the_built_layers():
    model = stcnnt_dsl.build("unet")
    result = explain("unet")
    layers = [m for m in model.modules() if isinstance(m, (SpatialAttention, TemporalAttention))]
    explained = [c.heads for s in result.stages for c in s.cells]
    by_name = {}
    for stage in result.stages:
        for cell in stage.cells:
            by_name[f"{stage.key}.cells.{cell.index}.attn"] = cell.heads
    for name, module in model.named_modules():
        if name in by_name:
            assert module.heads == by_name[name], name
    assert len(layers) == len(explained)


def test_one_stage_and_errors():
    result = explain("unet", stage="bridge")
    assert [s.key for s in result.stages] == ["bridge"]
    with pytest.raises(SpecError, match='did you mean "bridge"'):
        explain("unet", stage="bridg")
    with pytest.raises(DSLSyntaxError):
        explain("L1X1")
    with pytest.raises(SpecError, match="block strings only"):
        explain("unet", window=4)
