"""The JSON Schema that editors use and the library's validators agree, both ways: a spec
the schema accepts loads, and a spec it rejects is refused, over the bundled files and
generated valid and invalid specs. Both come from the same option types
(`stcnnt_dsl.language.options`), so they cannot drift apart.

What a JSON Schema cannot express is left to the library, and stays out of the
generated cases: the grammar of block strings beyond their first cell, list lengths
that must match the number of levels, and sizes that must divide each other.
"""

from __future__ import annotations

import copy
import itertools

import jsonschema
import pytest

import stcnnt_dsl
from stcnnt_dsl import STCNNTError
from stcnnt_dsl.language.spec import bundled_text, spec_json_schema
from stcnnt_dsl.language.yamlio import load_yaml

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


VALID = _bundled() + _cases(VALID_CHANGES)
INVALID = [
    *_cases(INVALID_CHANGES),
    {},
    {"unet": {"channels": [8], "blocks": "L1"}, "llm": {"channels": 8, "blocks": "L1"}},
    {"unet": {"blocks": "L1"}},  # channels missing
    {"unet": {"channels": [8]}},  # blocks missing
]


def test_enough_cases():
    assert len(VALID) >= 50 and len(INVALID) >= 50


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
