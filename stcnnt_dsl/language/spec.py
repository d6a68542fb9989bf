"""The architecture spec: pydantic models of a whole backbone, and how to load and write them.

An `ArchSpec` holds a name, the input channels, optional `input_size`, cascading option
`defaults`, and exactly one topology (`unet`, `hrnet` or `llm`). Cell options cascade:
library default < `defaults` < topology < stage < inline (in the block string).

Values are stored as written (a single block string stays one string; per-stage lists
stay lists); the compiler broadcasts them (`stcnnt_dsl.plan`). Every model forbids
unknown keys, and every error is an `STCNNTError` naming the spec path and, for text,
the line and column.

The pieces live in modules by responsibility: `fields` (field types and the strict base
model), `stage_spec`, `head_spec`, `topology_specs`, `arch_spec` (the models),
`spec_errors` (validation errors to `STCNNTError`), `loading`, `dumping` and `schema`.
This module gathers their public names.
"""

from __future__ import annotations

from ..registry import TOPOLOGIES
from .arch_spec import ArchSpec, SpecSource
from .dumping import dump_spec
from .fields import UNSET
from .head_spec import HeadSpec
from .loading import bundled_text, list_architectures, load_source, load_spec
from .schema import spec_json_schema
from .stage_spec import DefaultsSpec, PreSpec, StageSpec
from .topology_specs import HRNetSpec, LLMSpec, MixedUNetrSpec, UNetSpec

__all__ = [
    "TOPOLOGIES",
    "UNSET",
    "ArchSpec",
    "DefaultsSpec",
    "HRNetSpec",
    "HeadSpec",
    "LLMSpec",
    "MixedUNetrSpec",
    "PreSpec",
    "SpecSource",
    "StageSpec",
    "UNetSpec",
    "bundled_text",
    "dump_spec",
    "list_architectures",
    "load_source",
    "load_spec",
    "spec_json_schema",
]
