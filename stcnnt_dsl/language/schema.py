"""The JSON Schema of the YAML architecture format (`stcnnt schema`)."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic.json_schema import PydanticJsonSchemaWarning

from ..registry import topology_names
from .arch_spec import ArchSpec
from .fields import _BLOCK_SCHEMA, _OptionFields, block_schema
from .options import OPTIONS


def _refresh_options(node: Any) -> None:
    """Replace every option's schema by the option's current one (registered norms and
    activations join the enumerations) and drop pydantic's defaults of option fields;
    block strings start with the current cell letters (registered kinds join)."""
    if isinstance(node, dict):
        if node.get("pattern") == _BLOCK_SCHEMA["pattern"]:
            node.update(block_schema())
        props = node.get("properties")
        if isinstance(props, dict):
            for name in list(props):
                if name in OPTIONS:
                    props[name] = OPTIONS[name].schema
        for value in node.values():
            _refresh_options(value)
    elif isinstance(node, list):
        for value in node:
            _refresh_options(value)


def _option_models() -> set[str]:
    """The `$defs` names of the models that hold cell options (defaults, stages,
    topology sections): only there is `heads` the attention option (a head's
    `dropout` is its own key, the top-level `heads` the task heads)."""
    names, todo = set(), [_OptionFields]
    while todo:
        model = todo.pop()
        names.add(model.__name__)
        todo.extend(model.__subclasses__())
    return names


def spec_json_schema() -> dict[str, Any]:
    """JSON Schema of the YAML architecture format (for editors: `stcnnt schema`),
    generated from the same types that validate specs."""
    with warnings.catch_warnings():  # option fields default to UNSET, which has no JSON
        warnings.simplefilter("ignore", PydanticJsonSchemaWarning)  # form; refreshed below
        schema = ArchSpec.model_json_schema(mode="validation")
    defs = schema["$defs"]
    for name in _option_models() & defs.keys():
        _refresh_options(defs[name])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "stcnnt-dsl architecture"
    schema["oneOf"] = [{"required": [t]} for t in topology_names()]
    return schema
