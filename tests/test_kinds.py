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
    registry.unregister("cascade")


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
