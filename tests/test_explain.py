"""`explain`: every option of every cell, resolved, with where it came from."""

from __future__ import annotations

import json

import pytest

import stcnnt_dsl
from stcnnt_dsl.errors import DSLSyntaxError, SpecError
from stcnnt_dsl.language.options import BLOCK_OPTION_NAMES, OPTIONS, options_for_kind
from stcnnt_dsl.nn.attention import SpatialAttention, TemporalAttention
from stcnnt_dsl.tools.explain import explain


def test_block_string_against_library_defaults():
    result = explain("L1[window=4] G0 T1[causal=true]")
    assert result.kind == "block"
    (block,) = result.stages
    local, glob, temporal = block.cells
    assert [c.token for c in block.cells] == ["L1[window=4]", "G0", "T1[causal=true]"]
    assert local.options["window"].value == 4 and local.options["window"].source == "inline"
    assert glob.options["window"].source == "library"
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
    assert enc[0].options["qkv"].source == "library"
    text_out = str(result)
    assert "4 (unet.bridge)" in text_out and "1 (unet)" in text_out and "(library)" in text_out


def test_every_stage_of_bundled_architectures_and_json():
    for arch in stcnnt_dsl.list_architectures():
        result = explain(arch)
        data = json.loads(json.dumps(result.to_dict()))
        assert data["kind"] == "architecture" and data["name"] == arch
        assert len(data["stages"]) == len(stcnnt_dsl.build(arch).graph.stages)
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


def test_headers_name_the_cell_kind_and_the_legend_every_source():
    text = """
input_size: [64, 64]
defaults: {window: 16, patch: 2}
unet:
  channels: [16, 32]
  blocks: "L1 G1 T1"
  window_sizing: keep_size
  overrides: {decoder.0: {heads: 1}}
"""
    result = explain(text)
    out = str(result)
    assert "cell 0: L1 (local)" in out and "cell 2: T1 (temporal)" in out
    decoder = next(s for s in result.stages if s.key == "decoder.0")
    heads = decoder.cells[0].options["heads"]
    assert (heads.source, heads.path) == ("overrides", "unet.overrides.decoder.0.heads")
    assert "1 (unet.overrides.decoder.0)" in out
    level1 = next(s for s in result.stages if s.key == "encoder.1")
    assert level1.cells[0].options["window"].source == "window_sizing"
    for source in ("library", "defaults", "window_sizing", "overrides", "input_size"):
        assert source in result.sources, source
        assert f"  {source}" in out.split("where values come from")[1]


def test_json_and_text_use_the_same_source_names():
    result = explain("unet")
    data = result.to_dict()
    heads = data["stages"][0]["cells"][1]["options"]["heads"]
    assert heads["value"] == "auto" and heads["source"] == "library" and heads["effective"] == 4
    assert "auto=4 (library)" in str(result)
    assert set(data["sources"]) == set(result.sources)


def test_a_stage_of_a_block_string_is_an_error():
    with pytest.raises(SpecError, match="block string"):
        explain("L1G1", stage="encoder.0")


def test_block_string_with_channels_resolves_heads():
    result = explain("L1 T1", in_channels=8, out_channels=16)
    assert [c.heads for c in result.stages[0].cells] == [2, 1]
