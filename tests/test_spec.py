"""The spec: loading from every source, strict validation with paths and positions,
canonical dumps that round-trip, and expression <-> YAML equivalence."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stcnnt_dsl
from stcnnt_dsl import (
    ArchSpec,
    DSLSyntaxError,
    SpecError,
    STCNNTError,
    dump_spec,
    list_architectures,
    load_spec,
)
from stcnnt_dsl.graph import build_graph

UNET_YAML = textwrap.dedent(
    """\
    name: unet-2dt-small
    in_channels: 1
    defaults: {heads: 4, window: 8, patch: 2, norm: instance2d, cell: sequential}
    unet:
      channels: [32, 64, 128]          # one per level; the bridge follows the last
      blocks: [T1L1G1, T1L1G1, "L1G1 T1[causal=true]"]
      gate: true
      down: merge
    """
)


def test_bundled_architectures_listed_and_loadable():
    names = list_architectures()
    assert {"unet", "hrnet", "llm"} <= set(names)
    for name in names:
        spec = load_spec(name)
        assert isinstance(spec, ArchSpec)
        assert spec.name == name


def test_load_from_every_source(tmp_path: Path):
    from_text = load_spec(UNET_YAML)
    path = tmp_path / "arch.yaml"
    path.write_text(UNET_YAML)
    assert load_spec(path) == from_text
    assert load_spec(str(path)) == from_text
    assert load_spec(from_text) is from_text
    as_dict = {
        "name": "unet-2dt-small",
        "defaults": {
            "heads": 4,
            "window": 8,
            "patch": 2,
            "norm": "instance2d",
            "cell": "sequential",
        },
        "unet": {
            "channels": [32, 64, 128],
            "blocks": ["T1L1G1", "T1L1G1", "L1G1 T1[causal=true]"],
            "down": "merge",
        },
    }
    assert load_spec(as_dict) == from_text
    json_path = tmp_path / "arch.json"
    json_path.write_text('{"unet": {"channels": [8], "blocks": "L1"}}')
    assert load_spec(json_path).unet.channels == [8]


def test_expression_equals_yaml():
    expr = load_spec("unet(channels=[32,64,128], blocks=T1L1G1)")
    yaml = load_spec("unet:\n  channels: [32, 64, 128]\n  blocks: T1L1G1\n")
    assert expr == yaml
    with_top = load_spec(
        'hrnet(channels=32, levels=2, blocks=[T1L1G1, "L1G1"], in_channels=2, '
        "defaults={window=4, patch=2})"
    )
    assert with_top.in_channels == 2
    assert with_top.defaults.window == 4
    assert with_top.hrnet.levels == 2
    llm = load_spec("llm(channels=32, blocks=[T1L1G1, T1L1G1])")
    assert llm.llm.num_blocks == 2


def test_cascade_layers_reach_the_cells():
    spec = load_spec(
        {
            "defaults": {"window": 8, "heads": 2},
            "unet": {
                "channels": [8, 16],
                "blocks": "L1 G1[heads=1]",
                "window": 4,
                "encoder": [{"patch": 1}, {}],
            },
        }
    )
    plan = build_graph(spec)
    enc0 = plan.node("encoder.0").plan.cell_values()
    assert enc0[0]["window"] == 4  # topology beats defaults
    assert enc0[0]["patch"] == 1  # stage beats topology
    assert enc0[0]["heads"] == 2  # defaults beat the library default
    assert enc0[1]["heads"] == 1  # inline beats everything
    dec0 = plan.node("decoder.0").plan.cell_values()
    assert dec0[0]["patch"] == 1  # decoder levels inherit their encoder's overrides


@pytest.mark.parametrize(
    ("source", "path", "words"),
    [
        ({"unet": {"chanels": [8], "blocks": "L1"}}, "unet.chanels", ["did you mean", "channels"]),
        ({"unett": {}}, "unett", ["did you mean", "unet"]),
        ({"unet": {"channels": [8], "blocks": "L1", "window": 0}}, "unet.window", [">= 1"]),
        (
            {"unet": {"channels": [8, 16], "blocks": ["L1", "L1", "L1", "L1"]}},
            "unet.blocks",
            ["4 entries", "2 or 3"],
        ),
        (
            {"unet": {"channels": [8, 16], "blocks": "L1", "encoder": [{}]}},
            "unet.encoder",
            ["1 entries", "2"],
        ),
        (
            {"unet": {"channels": [8, 16], "blocks": "L1", "encoder": [{}, {"windw": 4}]}},
            "unet.encoder[1].windw",
            ["did you mean", "window"],
        ),
        (
            {"unet": {"channels": [8], "blocks": "L1"}, "llm": {"channels": 8, "blocks": "L1"}},
            "",
            ["exactly one topology"],
        ),
        ({"name": "x"}, "", ["exactly one topology"]),
        ({"unet": {"channels": 8, "blocks": "L1"}}, "unet", ["levels"]),
        ({"unet": {"channels": [8, 0], "blocks": "L1"}}, "unet.channels", ["positive"]),
        (
            {"unet": {"channels": [8], "blocks": "L1", "gate": "yes"}},
            "unet.gate",
            ["true or false"],
        ),
        (
            {"hrnet": {"channels": [8, 16], "blocks": "L1", "stages": 1}},
            "hrnet.stages",
            [">= levels"],
        ),
        ({"llm": {"channels": [8, 16], "blocks": "L1"}}, "llm.channels", ["same channels"]),
        (
            {"unet": {"channels": [8], "blocks": "L1", "norm": "layer_norm"}},
            "unet.norm",
            ["did you mean", "layer"],
        ),
        ({"unet": {"channels": [8], "blocks": 5}}, "unet.blocks", ["block string"]),
        (
            {"in_channels": 0, "unet": {"channels": [8], "blocks": "L1"}},
            "in_channels",
            ["positive"],
        ),
    ],
)
def test_spec_errors_name_the_path(source, path, words):
    with pytest.raises(SpecError) as info:
        build_graph(source)
    err = info.value
    assert err.path == path
    for word in words:
        assert word in str(err)


def test_yaml_errors_point_at_line_and_column(tmp_path: Path):
    text = "unet:\n  channels: [8, 16]\n  blocks: L1\n  windw: 4\n"
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert (err.line, err.path) == (4, "unet.windw")
    assert str(path) in str(err)
    assert "did you mean" in str(err)


def test_block_syntax_error_inside_yaml_is_in_file_coordinates(tmp_path: Path):
    text = "unet:\n  channels: [8]\n  blocks: L1G2\n"
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DSLSyntaxError) as info:
        load_spec(path)
    err = info.value
    assert (err.line, err.column) == (3, 14)  # the "2" of "L1G2"
    assert "^" in str(err)
    quoted = "unet:\n  channels: [8]\n  blocks: ['L1', 'T1X1']\n"
    with pytest.raises(DSLSyntaxError) as info:
        load_spec(quoted)
    assert (info.value.line, info.value.column) == (3, 21)  # the X


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("unet:\n  channels: [8]\n  channels: [16]\n  blocks: L1\n", ["duplicate key"]),
        ("unet: !!python/object/apply:os.system [ls]\n", ["tags are not allowed"]),
        ("a: &x {channels: [8], blocks: L1}\nunet: *x\n", ["aliases"]),
        ("unet: {channels: [8], blocks: L1, gate: yes}\n", ["true or false", "yes"]),
        ("unet:\n  channels: [8\n", ["invalid YAML"]),
        ("- just\n- a list\n", ["mapping"]),
    ],
)
def test_strict_yaml(text, words):
    with pytest.raises(STCNNTError) as info:
        load_spec(text)
    for word in words:
        assert word in str(info.value)


def test_unknown_source_is_explained():
    with pytest.raises(SpecError, match="bundled"):
        load_spec("unte")
    with pytest.raises(SpecError, match="did you mean"):
        load_spec("unte")
    with pytest.raises(SpecError, match="not found"):
        load_spec("missing.yaml")
    with pytest.raises(SpecError):
        load_spec(42)
    with pytest.raises(DSLSyntaxError, match="unknown topology"):
        load_spec("unat(channels=[8], blocks=L1)")


def test_dump_is_canonical_and_round_trips():
    for name in list_architectures():
        spec = load_spec(name)
        text = dump_spec(spec)
        assert load_spec(text) == spec
        assert dump_spec(load_spec(text)) == text
    # Defaults written out or left implicit give the same text.
    a = dump_spec({"unet": {"channels": [8], "blocks": "L1", "gate": True}})
    b = dump_spec({"unet": {"channels": [8], "blocks": "L1"}})
    assert a == b


def test_strings_that_look_like_other_types_round_trip():
    spec = load_spec({"description": "yes", "name": "1e3", "llm": {"channels": 8, "blocks": "L1"}})
    again = load_spec(dump_spec(spec))
    assert again.description == "yes"
    assert again.name == "1e3"


# --------------------------------------------------------------------------- properties

_cells = st.sampled_from(["L1", "L0", "G1", "G0", "T1", "T0", "V1", "C2", "C3"])
_blocks = st.lists(_cells, min_size=1, max_size=4).map("".join)
_options = st.fixed_dictionaries(
    {},
    optional={
        "window": st.sampled_from([2, 4, [2, 4]]),
        "patch": st.sampled_from([1, 2]),
        "heads": st.sampled_from([1, 2, "auto"]),
        "norm": st.sampled_from(["batch2d", "instance2d", "instance3d", "batch3d"]),
        "cell": st.sampled_from(["sequential", "parallel"]),
        "cosine": st.booleans(),
        "mixer_ratio": st.sampled_from([1, 2.5]),
        "rel_pos_bias": st.sampled_from([True, False, "after_softmax"]),
        "padding": st.sampled_from(["zeros", "reflect"]),
    },
)


@st.composite
def specs(draw) -> dict:
    topology = draw(st.sampled_from(["unet", "hrnet", "llm"]))
    levels = draw(st.integers(1, 3))
    channels = draw(st.lists(st.sampled_from([4, 8]), min_size=levels, max_size=levels))
    body: dict = {"channels": channels, **draw(_options)}
    if topology == "llm":
        body["channels"] = channels[0]
        body["blocks"] = draw(st.lists(_blocks, min_size=1, max_size=3))
    elif draw(st.booleans()):
        body["blocks"] = draw(_blocks)
    else:
        body["blocks"] = draw(st.lists(_blocks, min_size=levels, max_size=levels))
    if topology == "unet" and draw(st.booleans()):
        body["bridge"] = {"window": 2}
    top = {topology: body, "in_channels": draw(st.integers(1, 3))}
    if draw(st.booleans()):
        top["defaults"] = draw(_options)
    if draw(st.booleans()):
        top["name"] = draw(st.text("abc-_ 0123", min_size=1, max_size=8))
    return top


@settings(max_examples=60)
@given(specs())
def test_dump_load_round_trip_property(data):
    spec = load_spec(data)
    text = dump_spec(spec)
    assert load_spec(text) == spec
    assert dump_spec(text) == text


@settings(max_examples=40)
@given(specs())
def test_expression_and_yaml_agree_property(data):
    from stcnnt_dsl.language.parser import format_expression

    spec = load_spec(data)
    body = spec.body.model_dump(mode="json", exclude_none=True)
    args = {**body, "in_channels": spec.in_channels}
    if spec.name != spec.topology:
        args["name"] = spec.name
    defaults = spec.defaults.options()
    if defaults:
        args["defaults"] = spec.defaults.model_dump(mode="json", exclude_none=True)
    expression = format_expression(spec.topology, args)
    assert load_spec(expression) == spec


def test_public_api_names():
    for name in (
        "parse_block",
        "format_block",
        "load_spec",
        "dump_spec",
        "list_architectures",
        "check",
        "infer_shapes",
        "build",
    ):
        assert callable(getattr(stcnnt_dsl, name))
    assert issubclass(stcnnt_dsl.STCNNTError, ValueError)
    assert issubclass(stcnnt_dsl.ShapeError, stcnnt_dsl.SpecError)


def test_overrides_address_single_stages_by_name():
    spec = {
        "hrnet": {
            "channels": [8, 16],
            "blocks": "L1G1",
            "window": 4,
            "branches": [{"window": 8}, {}],
            "overrides": {"level0.stage1": {"window": 2}, "level1.output": {"blocks": "C2"}},
        }
    }
    graph = build_graph(spec)
    assert graph.node("level0.stage0").plan.cell_values()[0]["window"] == 8  # branch
    assert graph.node("level0.stage1").plan.cell_values()[0]["window"] == 2  # override wins
    assert graph.node("level1.output").plan.block == stcnnt_dsl.parse_block("C2")
    assert load_spec(dump_spec(spec)) == load_spec(spec)
    with pytest.raises(SpecError) as info:
        build_graph({"unet": {"channels": [8], "blocks": "L1", "overrides": {"decoder.1": {}}}})
    assert info.value.path == "unet.overrides.decoder.1"
    assert 'did you mean "decoder.0"' in str(info.value)


def test_a_file_name_with_parentheses_is_read_as_a_file(tmp_path, monkeypatch):
    """`unet (1).yaml` (a browser's second download) is a file name, not an expression."""
    monkeypatch.chdir(tmp_path)
    Path("unet (1).yaml").write_text(stcnnt_dsl.dump_spec("unet-2d-small"))
    assert stcnnt_dsl.load_spec("unet (1).yaml") == stcnnt_dsl.load_spec("unet-2d-small")
