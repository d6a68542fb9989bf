"""stcnnt-dsl: ST-CNNT imaging backbones from a declarative architecture language.

Tensors are [B, T, C, H, W] everywhere (T = time for 2D+T, slices for 3D, 1 for 2D).
"""

from .compiler import build
from .errors import DSLSyntaxError, ShapeError, SpecError, STCNNTError
from .language import format_block, parse_block
from .shapes import check, infer_shapes
from .spec import ArchSpec, dump_spec, list_architectures, load_spec

__version__ = "0.1.0"

__all__ = [
    "ArchSpec",
    "DSLSyntaxError",
    "STCNNTError",
    "ShapeError",
    "SpecError",
    "build",
    "check",
    "dump_spec",
    "format_block",
    "infer_shapes",
    "list_architectures",
    "load_spec",
    "parse_block",
]
