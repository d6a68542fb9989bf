"""stcnnt-dsl: ST-CNNT imaging backbones from a declarative architecture language.

Tensors are [B, T, C, H, W] everywhere (T = time for 2D+T, slices for 3D, 1 for 2D).
"""

from .compiler import build
from .errors import (
    DSLSyntaxError,
    ResourceError,
    ShapeError,
    SpecError,
    STCNNTError,
    WeightsError,
)
from .explain import explain
from .graph import render_graph, to_dot
from .io import load_model, save_model
from .language import format_block, parse_block
from .profiling import ProfileReport, profile
from .shapes import check, infer_shapes
from .spec import ArchSpec, dump_spec, list_architectures, load_spec

__version__ = "0.1.0"

__all__ = [
    "ArchSpec",
    "DSLSyntaxError",
    "ProfileReport",
    "ResourceError",
    "STCNNTError",
    "ShapeError",
    "SpecError",
    "WeightsError",
    "build",
    "check",
    "dump_spec",
    "explain",
    "format_block",
    "infer_shapes",
    "list_architectures",
    "load_model",
    "load_spec",
    "parse_block",
    "profile",
    "render_graph",
    "save_model",
    "to_dot",
]
