"""The JSON Schema that editors use and the library's validators agree, both ways: a spec
the schema accepts loads, and a spec it rejects is refused, over the bundled files and
generated valid and invalid specs. Both come from the same option types
(`stcnnt_dsl.language.options`), so they cannot drift apart.

The same holds for every documented and bundled spec: README.md, docs/*.md and the
example plugin's files. The top-level `heads:` is the task heads (their kinds and keys);
attention heads are an option, so they appear only where options are set.

What a JSON Schema cannot express is left to the library, and stays out of the
generated cases: the grammar of block strings beyond their first cell, list lengths
that must match the number of levels, and sizes that must divide each other.
"""

from __future__ import annotations

import copy
import itertools
import re
import sys
from pathlib import Path

import jsonschema
import pytest

import stcnnt_dsl
from stcnnt_dsl import STCNNTError, registry
from stcnnt_dsl.language.spec import bundled_text, spec_json_schema
from stcnnt_dsl.language.yamlio import load_yaml

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"
SCHEMA = spec_json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _schema_ok(data) -> bool:
    return VALIDATOR.is_valid(data)


def _library_ok(data) -> bool:
    try:
        stcnnt_dsl.load_spec(copy.deepcopy(data))
    except STCNNTError:
        return False
    return True


def _bundled() -> list[dict]:
    return [load_yaml(bundled_text(name))[0] for name in stcnnt_dsl.list_architectures()]


def _documented() -> list[dict]:
    """Every YAML block of README.md and docs/*.md that is a whole spec (some show a
    fragment, like `defaults: {checkpoint: true}`)."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for text in re.findall(r"```ya?ml\n(.*?)```", doc.read_text(), re.S):
            data = load_yaml(text)[0]
            if _library_ok(data):
                found.append(data)
    return found


DOCUMENTED = _documented()

BASES = [
    {"unet": {"channels": [16, 32], "blocks": "L1G1"}},
    {"hrnet": {"channels": [8, 16], "blocks": "T1L1G1"}},
    {"llm": {"channels": 8, "blocks": ["L1", "G1 T1"]}},
]
# (where, key, value): each alone makes a valid spec from every base
VALID_CHANGES = [
    ("defaults", "window", 4), ("defaults", "window", [4, 8]), ("defaults", "window", 8.0),
    ("defaults", "patch", 1), ("defaults", "grid", None), ("defaults", "grid", [2, 4]),
    ("defaults", "heads", "auto"), ("defaults", "heads", 2), ("defaults", "qkv", "linear"),
    ("defaults", "cosine", True), ("defaults", "qk_norm", True),
    ("defaults", "rel_pos_bias", "after_softmax"), ("defaults", "rel_pos_bias", False),
    ("defaults", "att_dropout", 0.1), ("defaults", "causal", True),
    ("defaults", "qk_stride", 2), ("defaults", "out_proj", False),
    ("defaults", "qkv_kernel", 5), ("defaults", "cell", "parallel"),
    ("defaults", "norm", "batch2d"), ("defaults", "mixer_ratio", 64),
    ("defaults", "mixer_kernel", 1), ("defaults", "activation", "prelu"),
    ("defaults", "dropout", 0.5), ("defaults", "drop_path", 0.2),
    ("defaults", "padding", "reflect"), ("defaults", "proj_kernel", 3),
    ("defaults", "dense", True), ("defaults", "checkpoint", True),
    ("top", "in_channels", 3), ("top", "in_channels", 2.0), ("top", "name", "x"),
    ("top", "description", "a model"), ("top", "input_size", [64, 64]),
    ("top", "input_size", 64), ("body", "channels", float),  # 8.0 is an integer to both
]  # fmt: skip
INVALID_CHANGES = [
    ("defaults", "window", 0), ("defaults", "window", -4), ("defaults", "window", 2.5),
    ("defaults", "window", True), ("defaults", "window", "8"), ("defaults", "window", [4]),
    ("defaults", "window", [4, 4, 4]), ("defaults", "window", None),
    ("defaults", "heads", 0), ("defaults", "heads", "many"), ("defaults", "heads", None),
    ("defaults", "qkv", "dense"), ("defaults", "cosine", "yes"), ("defaults", "cosine", 1),
    ("defaults", "causal", None), ("defaults", "rel_pos_bias", "before_softmax"),
    ("defaults", "att_dropout", 1.0), ("defaults", "att_dropout", -0.1),
    ("defaults", "qk_stride", 0), ("defaults", "qkv_kernel", 2), ("defaults", "qkv_kernel", 4),
    ("defaults", "proj_kernel", 2), ("defaults", "mixer_kernel", 0),
    ("defaults", "cell", "serial"), ("defaults", "norm", "group"),
    ("defaults", "mixer_ratio", 0.1), ("defaults", "mixer_ratio", 65),
    ("defaults", "activation", "swish"), ("defaults", "dropout", 2),
    ("defaults", "padding", "circular"), ("defaults", "dense", "true"),
    ("defaults", "windw", 4), ("defaults", "grid", 0),
    ("top", "in_channels", 0), ("top", "in_channels", 1.5), ("top", "in_channels", True),
    ("top", "overrides", {}), ("top", "colour", "red"), ("top", "input_size", [0, 4]),
    ("top", "name", 3), ("body", "channels", 0), ("body", "channels", [8, 0]),
    ("body", "channels", []), ("body", "channels", [8.5, 16]), ("body", "blocks", ""),
    ("body", "blocks", "l1g1"), ("body", "blocks", "X1"), ("body", "blocks", 5),
    ("body", "chanels", 8), ("body", "window", -1),
]  # fmt: skip


def _apply(base: dict, where: str, key: str, value) -> dict:
    spec = copy.deepcopy(base)
    topology = next(iter(spec))
    target = {"top": spec, "body": spec[topology]}.get(where)
    if target is None:
        target = spec.setdefault("defaults", {})
    if value is float:
        old = target[key]
        value = [float(c) for c in old] if isinstance(old, list) else float(old)
    target[key] = value
    return spec


def _cases(changes) -> list[dict]:
    return [_apply(base, *change) for base, change in itertools.product(BASES, changes)]


HEADED = {"unet": {"channels": [8, 16], "blocks": "L1G1"}}
# each a valid `heads:` mapping
VALID_HEADS = [
    {"seg": {"kind": "segmentation", "classes": 3}},
    {"seg": {"kind": "segmentation", "classes": 3, "decoder": "upernet", "hidden": 16,
             "bins": [1, 2], "mode": "3d", "dropout": 0.2}},
    {"label": {"kind": "classification", "classes": 5, "pooling": "conv_avg", "hidden": 8},
     "frames": {"kind": "classification", "classes": 2, "per_frame": True}},
    {"clean": {"kind": "enhancement", "out_channels": 1, "residual": True}},
    {"clean": {"kind": "enhancement", "out_channels": 1, "decoder": "multidepth", "depth": 2}},
    {"out_2": {"kind": "enhancement", "out_channels": 2, "decoder": "unetr", "mode": "2d"}},
    None,
]  # fmt: skip
# each an invalid `heads:` value, refused by the parser
INVALID_HEADS = [
    "auto", 4, {}, {"seg": {"classes": 3}},  # attention heads; no head; no kind
    {"seg": {"kind": "segmentaton", "classes": 3}}, {"seg": {"kind": 3, "classes": 3}},
    {"seg": {"kind": "segmentation", "classes": 3, "windw": 4}},
    {"seg": {"kind": "segmentation", "classes": 3, "heads": 4}},
    {"seg": {"kind": "segmentation"}}, {"clean": {"kind": "enhancement", "classes": 1}},
    {"label": {"kind": "classification", "out_channels": 1}},
    {"seg": {"kind": "segmentation", "classes": 3, "decoder": "unetr"}},
    {"seg": {"kind": "segmentation", "classes": 3, "pooling": "norm_avg"}},
    {"seg": {"kind": "segmentation", "classes": 3, "hidden": 16}},  # upernet only
    {"seg": {"kind": "segmentation", "classes": 3, "decoder": "conv", "mode": "2d"}},
    {"seg": {"kind": "segmentation", "classes": 3, "decoder": "upernet", "mode": "4d"}},
    {"seg": {"kind": "segmentation", "classes": 0}},
    {"label": {"kind": "classification", "classes": 5, "hidden": 8}},  # conv_avg only
    {"label": {"kind": "classification", "classes": 5, "pooling": "max"}},
    {"clean": {"kind": "enhancement", "out_channels": 1, "depth": 2}},  # multidepth only
    {"clean": {"kind": "enhancement", "out_channels": 1, "residual": "yes"}},
    {"Seg": {"kind": "segmentation", "classes": 3}}, {"seg": None}, {"seg": 3},
]  # fmt: skip

VALID = (
    _bundled()
    + DOCUMENTED
    + _cases(VALID_CHANGES)
    + [{**HEADED, "heads": heads} for heads in VALID_HEADS]
)
INVALID = [
    *_cases(INVALID_CHANGES),
    *({**HEADED, "heads": heads} for heads in INVALID_HEADS),
    {**HEADED, "defaults": {"heads": "x"}},
    {"unet": {**HEADED["unet"], "heads": "x"}},
    {"unet": {**HEADED["unet"], "encoder": [{"heads": "x"}, {}]}},
    {},
    {"unet": {"channels": [8], "blocks": "L1"}, "llm": {"channels": 8, "blocks": "L1"}},
    {"unet": {"blocks": "L1"}},  # channels missing
    {"unet": {"channels": [8]}},  # blocks missing
]


def test_enough_cases():
    assert len(VALID) >= 50 and len(INVALID) >= 50
    # the models.md example with three task heads is among the documented specs
    assert any(len(data.get("heads") or {}) == 3 for data in DOCUMENTED), DOCUMENTED
    assert len(DOCUMENTED) >= 4


def test_heads_are_task_heads_and_attention_heads_an_option():
    heads = SCHEMA["properties"]["heads"]
    assert {"$ref": "#/$defs/HeadSpec"} in [s.get("additionalProperties") for s in heads["anyOf"]]
    head = SCHEMA["$defs"]["HeadSpec"]
    assert head["properties"]["kind"]["enum"] == list(stcnnt_dsl.language.heads.HEAD_KINDS)
    assert "upernet" in head["properties"]["decoder"]["description"]  # whole descriptions
    assert "dropout after the pyramid pooling" in head["properties"]["dropout"]["description"]
    for model in ("DefaultsSpec", "StageSpec", "UNetSpec", "HRNetSpec", "LLMSpec"):
        assert {"enum": ["auto"]} in SCHEMA["$defs"][model]["properties"]["heads"]["oneOf"]


@pytest.mark.parametrize("data", VALID, ids=range(len(VALID)))
def test_valid_specs_pass_both(data):
    assert _library_ok(data), data
    assert _schema_ok(data), [e.message for e in VALIDATOR.iter_errors(data)]


@pytest.mark.parametrize("data", INVALID, ids=range(len(INVALID)))
def test_invalid_specs_fail_both(data):
    assert not _library_ok(data), data
    assert not _schema_ok(data), data


def test_registered_norms_join_the_schema():
    from stcnnt_dsl.registry import unregister

    stcnnt_dsl.register_norm("group4", lambda c: __import__("torch").nn.GroupNorm(4, c))
    try:
        data = {"defaults": {"norm": "group4"}, "unet": {"channels": [8], "blocks": "L1"}}
        assert _library_ok(data)
        assert jsonschema.Draft202012Validator(spec_json_schema()).is_valid(data)
    finally:
        unregister("group4")
    assert not _library_ok(data) and not _schema_ok(data)


@pytest.fixture
def plugin():
    sys.path.insert(0, str(PLUGIN))
    import stcnnt_example_plugin

    stcnnt_example_plugin.register()
    yield
    for name in ("cascade", "mlp", "convnext"):
        registry.unregister(name)
    sys.path.remove(str(PLUGIN))


def test_the_plugins_specs_and_head_keys_agree_both_ways(plugin):
    validator = jsonschema.Draft202012Validator(spec_json_schema())
    files = sorted(PLUGIN.glob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        data = load_yaml(path.read_text())[0]
        assert _library_ok(data), path
        assert validator.is_valid(data), [e.message for e in validator.iter_errors(data)]
    seg = {"kind": "segmentation", "classes": 3}
    for head, ok in (
        ({**seg, "decoder": "mlp", "width": 16}, True),
        ({**seg, "width": 16}, False),  # read by mlp only, the default decoder is conv
        ({**seg, "decoder": "mlp", "width": 0}, False),
        ({"kind": "classification", "classes": 3, "width": 16}, False),
    ):
        data = {**HEADED, "heads": {"seg": head}}
        assert _library_ok(data) is ok and validator.is_valid(data) is ok, head
