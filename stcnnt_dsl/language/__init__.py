"""The language: block strings and topology expressions (a Lark grammar), the option
registry, strict YAML, and the pydantic spec models with their loading and writing.

Nothing here needs torch; the model graph (`stcnnt_dsl.graph`) is built from these."""

from .blockspec import BlockSpec, CellSpec
from .cascade import Resolved
from .options import OPTIONS, Option, validate_option, validate_options
from .parser import (
    Expression,
    format_block,
    format_expression,
    parse_block,
    parse_expression,
)
from .spec import (
    TOPOLOGIES,
    ArchSpec,
    SpecSource,
    StageSpec,
    dump_spec,
    list_architectures,
    load_source,
    load_spec,
    spec_json_schema,
)

__all__ = [
    "OPTIONS",
    "TOPOLOGIES",
    "ArchSpec",
    "BlockSpec",
    "CellSpec",
    "Expression",
    "Option",
    "Resolved",
    "SpecSource",
    "StageSpec",
    "dump_spec",
    "format_block",
    "format_expression",
    "list_architectures",
    "load_source",
    "load_spec",
    "parse_block",
    "parse_expression",
    "spec_json_schema",
    "validate_option",
    "validate_options",
]
