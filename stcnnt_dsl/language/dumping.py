"""Canonical YAML of a spec: equal specs give equal text."""

from __future__ import annotations

import json
from typing import Any

from pydantic import (
    BaseModel,
)

from ..registry import TOPOLOGIES
from .fields import (
    UNSET,
)
from .loading import load_spec
from .options import OPTIONS
from .yamlio import dump_yaml

_HEAD_FIELDS = ("name", "description", "in_channels", "input_size", "defaults", "pre")


def _plain(model: BaseModel) -> dict[str, Any]:
    """Plain data of `model` without values equal to their defaults, in field order:
    equal specs give equal text however they were written. Options are written when
    set (an explicit `grid: null` too)."""
    data = model.model_dump(mode="json")
    out: dict[str, Any] = {}
    fields = type(model).model_fields
    # A topology's own keys (channels, blocks, ...) first, then its options.
    order = [n for n in fields if n not in OPTIONS] + [n for n in fields if n in OPTIONS]
    for name in order:
        field_info = fields[name]
        value = getattr(model, name)
        if value is UNSET:
            continue
        if isinstance(value, BaseModel):
            nested = _plain(value)
            if nested or name in TOPOLOGIES:
                out[name] = nested
            continue
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            out[name] = [_plain(v) for v in value]
            continue
        if isinstance(value, dict) and value and isinstance(next(iter(value.values())), BaseModel):
            out[name] = {k: _plain(v) for k, v in value.items()}
            continue
        if field_info.default is UNSET:  # an option field that the spec sets
            out[name] = data[name]
            continue
        if value is None or (
            not field_info.is_required() and data[name] == _json_default(field_info)
        ):
            continue
        out[name] = data[name]
    return out


def _json_default(field_info: Any) -> Any:
    default = field_info.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return default.model_dump(mode="json", exclude_none=True)
    return json.loads(json.dumps(default, default=str))


def dump_spec(spec: Any) -> str:
    """Canonical YAML of a spec (anything `load_spec` accepts); round-trips exactly."""
    spec = load_spec(spec)
    data = _plain(spec)
    order = (*_HEAD_FIELDS, *TOPOLOGIES, "heads")
    ordered = {k: data[k] for k in order if k in data}
    return dump_yaml(ordered)
