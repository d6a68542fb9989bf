"""User components by name: `register_norm` and `register_activation`. A registered name
works everywhere a built-in one does: YAML, inline options, `Block`, explain, the JSON
Schema, did-you-mean, parameter counts, save and load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import stcnnt_dsl
from stcnnt_dsl import SpecError, WeightsError
from stcnnt_dsl.graph import estimate
from stcnnt_dsl.language.spec import spec_json_schema
from stcnnt_dsl.nn import Block
from stcnnt_dsl.registry import unregister

pytestmark = pytest.mark.usefixtures("one_thread")


class ScaledTanh(nn.Module):
    """tanh with a learned scale per model."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * self.scale.mean()


@pytest.fixture
def components():
    stcnnt_dsl.register_norm("group2", lambda channels: nn.GroupNorm(2, channels),
                             mixes_frames=False)  # fmt: skip
    stcnnt_dsl.register_activation("scaled_tanh", ScaledTanh)
    yield
    unregister("group2")
    unregister("scaled_tanh")


SPEC = """
in_channels: 2
defaults: {norm: group2, activation: scaled_tanh, window: 4}
unet:
  channels: [8, 16]
  blocks: "L1 T1[causal=true] C2"
"""


def test_registered_names_build_and_run_from_yaml(components):
    model = stcnnt_dsl.build(SPEC, seed=0)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    acts = [m for m in model.modules() if isinstance(m, ScaledTanh)]
    assert norms and acts
    y = model(torch.randn(2, 3, 2, 16, 16))
    assert y.shape == (2, 3, 8, 16, 16) and torch.isfinite(y).all()
    # exact parameter counts, registered modules included
    assert estimate(SPEC).params == sum(p.numel() for p in model.parameters())
    # a norm that does not mix frames may sit next to causal temporal attention
    assert stcnnt_dsl.explain(SPEC).stages[0].cells[0].options["norm"].value == "group2"


def test_inline_block_schema_and_did_you_mean(components):
    block = Block("L1[norm=group2] T1", 8, 8, activation="scaled_tanh", window=4)
    assert isinstance(block.cells[0].norm1.norm, nn.GroupNorm)
    assert block(torch.randn(1, 2, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
    schema = spec_json_schema()
    norms = schema["$defs"]["DefaultsSpec"]["properties"]["norm"]["enum"]
    assert "group2" in norms and "instance2d" in norms
    with pytest.raises(SpecError, match='did you mean "group2"'):
        Block("L1", 8, 8, norm="group3")
    text = str(stcnnt_dsl.explain("L1[norm=group2]"))
    assert "group2 (inline)" in text


def test_a_norm_that_mixes_frames_is_refused_next_to_causal_attention():
    stcnnt_dsl.register_norm("bn_like", lambda c: nn.BatchNorm2d(c))  # mixes_frames default
    try:
        with pytest.raises(SpecError, match="norm=bn_like"):
            Block("T1[causal=true]", 8, 8, norm="bn_like")
    finally:
        unregister("bn_like")


def test_saved_models_need_their_components_registered(components, tmp_path):
    path = stcnnt_dsl.save_model(stcnnt_dsl.build(SPEC, seed=0), tmp_path / "m.safetensors")
    loaded = stcnnt_dsl.load_model(path)
    assert isinstance(loaded, nn.Module)
    unregister("group2")
    with pytest.raises(WeightsError, match="norm"):
        stcnnt_dsl.load_model(path)


@pytest.mark.parametrize(
    ("name", "factory", "words"),
    [("layer", nn.LayerNorm, "built-in"), ("Group", nn.GroupNorm, "lower-case"),
     ("g", 42, "callable")],
)  # fmt: skip
def test_bad_registrations(name, factory, words):
    with pytest.raises(SpecError, match=words):
        stcnnt_dsl.register_norm(name, factory)


def test_unknown_names_list_the_registered_ones(components):
    with pytest.raises(SpecError) as err:
        stcnnt_dsl.load_spec({"defaults": {"activation": "mish"}, "llm": {"channels": 8,
                              "blocks": "L1"}})  # fmt: skip
    assert "scaled_tanh" in str(err.value)


def test_a_failing_factory_is_a_located_spec_error(components):
    with pytest.raises(SpecError, match="registered norm 'group2' failed when called with 1 "
                       "channels") as err:  # fmt: skip
        stcnnt_dsl.build(SPEC.replace("in_channels: 2", "in_channels: 1"))
    assert err.value.path == "defaults.norm" and err.value.line == 3
