"""Extension points: a topology is one descriptor (`Topology`) given to
`register_topology`, the call the built-in ones use; plugins register through the
entry-point group `stcnnt_dsl.plugins`. The example plugin (`examples/plugin/`, a
cascade of two U-Nets) is loaded here through a real entry point, as pip would install
it, and then works everywhere a built-in topology does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import stcnnt_dsl
from stcnnt_dsl import DSLSyntaxError, SpecError, STCNNTError, registry
from stcnnt_dsl.graph import estimate
from stcnnt_dsl.language.spec import spec_json_schema

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"
CASCADE = PLUGIN / "cascade.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def _install(tmp_path: Path, monkeypatch, entry_points: str) -> None:
    """A distribution with `entry_points` on sys.path (what `pip install` leaves), and
    the registry's plugins not yet loaded."""
    dist = tmp_path / "stcnnt_example_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: stcnnt-example-plugin\nVersion: 0.1.0\n"
    )
    (dist / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    _install(
        tmp_path, monkeypatch,
        "[stcnnt_dsl.plugins]\nexample = stcnnt_example_plugin:register\n",
    )  # fmt: skip
    yield
    for name in ("cascade", "mlp", "convnext"):
        registry.unregister(name)


def test_builtins_are_registered_through_the_public_call():
    kinds = stcnnt_dsl.list_kinds()
    assert set(kinds) == {"cells", "heads", "topologies", "norms", "activations"}
    assert kinds["topologies"][:3] == ["unet", "hrnet", "llm"]
    assert all(isinstance(t, stcnnt_dsl.Topology) for t in registry.TOPOLOGIES.values())
    with pytest.raises(SpecError, match="built-in topology"):
        stcnnt_dsl.register_topology(registry.TOPOLOGIES["unet"])
    with pytest.raises(SpecError, match="not a top-level spec key"):
        stcnnt_dsl.register_topology(registry.Topology("heads", dict, print, "no"))


def test_plugin_topology_loads_lazily_and_works_everywhere(plugin):
    assert "cascade" not in registry.TOPOLOGIES  # nothing loaded at import
    assert "cascade" in stcnnt_dsl.list_kinds()["topologies"]
    shape = (1, 2, 1, 16, 16)
    shapes = stcnnt_dsl.infer_shapes(CASCADE, shape)
    model = stcnnt_dsl.build(CASCADE, seed=0)
    y = model(torch.randn(shape))
    assert tuple(y.shape) == shapes["output"] == (1, 2, 8, 16, 16)
    assert estimate(CASCADE).params == sum(p.numel() for p in model.parameters())
    # the second U-Net reads the input and the first's output
    assert model.refine.encoder[0].in_channels == 1 + 8
    assert [f["module"] for f in model.feature_info] == ["refine.decoder.0", "refine.decoder.1"]
    # the same model as an expression, and canonical YAML round trips
    expr = stcnnt_dsl.load_spec("cascade(channels=[8, 16], blocks=T1L1G1, window=4, patch=2)")
    assert expr.topology == "cascade"
    spec = stcnnt_dsl.load_spec(CASCADE)
    assert stcnnt_dsl.load_spec(stcnnt_dsl.dump_spec(spec)) == spec
    # schema, explain, diagram
    schema = spec_json_schema()
    assert "cascade" in schema["properties"] and {"required": ["cascade"]} in schema["oneOf"]
    assert "refine.decoder.0" in str(stcnnt_dsl.explain(CASCADE))
    assert '"refine.decoder.0"' in stcnnt_dsl.to_dot(CASCADE)


def test_plugin_spec_errors_point_into_its_section(plugin):
    with pytest.raises(SpecError) as err:
        stcnnt_dsl.build_graph("cascade:\n  channels: [8, 16]\n  blocks: L1\n  grid: 2\n")
    assert err.value.path == "cascade.grid" and err.value.line == 4
    with pytest.raises(DSLSyntaxError, match='did you mean "cascade"'):
        stcnnt_dsl.load_spec("cascad(channels=[8], blocks=L1)")


def test_a_broken_plugin_is_one_error_naming_it(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, "[stcnnt_dsl.plugins]\nbroken = no_such_module_xyz:go\n")
    with pytest.raises(STCNNTError, match=r"plugin 'broken'.*stcnnt-example-plugin.*failed"):
        stcnnt_dsl.list_kinds()
    stcnnt_dsl.list_kinds()  # reported once, not on every call


def test_removing_a_topology_removes_its_key(plugin):
    stcnnt_dsl.list_kinds()
    registry.unregister("cascade")
    with pytest.raises(SpecError, match="unknown key 'cascade'"):
        stcnnt_dsl.load_spec(CASCADE)
    assert "cascade" not in spec_json_schema()["properties"]


HEADED = PLUGIN / "cascade_mlp_head.yaml"


def test_plugin_head_decoder_works_everywhere(plugin):
    shape = (2, 2, 1, 16, 16)
    model = stcnnt_dsl.build(HEADED, seed=0)
    out = model(torch.randn(shape))
    assert tuple(out["seg"].shape) == (2, 2, 3, 16, 16)
    graph = stcnnt_dsl.build_graph(HEADED)
    head = graph.heads[0]
    assert head.decoder == "mlp" and head.module == "MLPHead"
    assert head.params()[""] == sum(p.numel() for p in model.heads["seg"].parameters())
    assert estimate(HEADED).params == sum(p.numel() for p in model.parameters())
    # its key is checked by its type and described in the schema
    with pytest.raises(SpecError, match="width") as err:
        stcnnt_dsl.load_spec(HEADED.read_text().replace("width: 16", "width: -1"))
    assert err.value.path == "heads.seg.width"
    with pytest.raises(SpecError, match="width is not a key of classification heads"):
        stcnnt_dsl.load_spec(
            HEADED.read_text().replace(
                "segmentation, classes: 3, decoder: mlp", "classification, classes: 3"
            )
        )
    props = spec_json_schema()["$defs"]["HeadSpec"]["properties"]
    assert props["width"]["type"] == "integer" and "mlp" in props["decoder"]["enum"]
    assert "mlp" in stcnnt_dsl.list_kinds()["heads"]
    assert "MLPHead" in str(stcnnt_dsl.explain(HEADED))


def test_plugin_cell_kind_joins_the_grammar(plugin):
    with pytest.raises(DSLSyntaxError, match="unknown cell letter 'N'"):
        stcnnt_dsl.parse_block("N1")  # plugins load on first use of a registry:
    stcnnt_dsl.list_kinds()  # the parser's letters come from the registry
    block = stcnnt_dsl.parse_block("N1[mixer_ratio=2] N0 T1")
    assert [c.kind for c in block.cells] == ["convnext", "convnext", "temporal"]
    assert stcnnt_dsl.format_block(block) == "N1[mixer_ratio=2.0] N0 T1"
    with pytest.raises(DSLSyntaxError, match="N0 does not read option 'mixer_ratio'"):
        stcnnt_dsl.parse_block("N0[mixer_ratio=2]")
    with pytest.raises(DSLSyntaxError, match="does not apply to convnext cells"):
        stcnnt_dsl.parse_block("N1[window=4]")
    spec = PLUGIN / "convnext_unet.yaml"
    model = stcnnt_dsl.build(spec, seed=0)
    assert estimate(spec).params == sum(p.numel() for p in model.parameters())
    assert model(torch.randn(1, 2, 1, 16, 16)).shape == (1, 2, 8, 16, 16)
    taken = registry.CellKind("mine", "L", "x", print, print)
    with pytest.raises(SpecError, match="letter 'L' is taken by local"):
        stcnnt_dsl.register_cell(taken)
    registry.unregister("convnext")
    with pytest.raises(DSLSyntaxError, match="unknown cell letter 'N'"):
        stcnnt_dsl.parse_block("N1")
