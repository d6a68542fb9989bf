"""stcnnt-dsl: ST-CNNT imaging backbones from a declarative architecture language.

Tensors are [B, T, C, H, W] everywhere (T = time for 2D+T, slices for 3D, 1 for 2D).

The pipeline, one way: `language` (grammar, options, spec) -> `graph` (the model graph:
nodes, cell geometry, sizes, costs; no torch) -> `nn` (torch layers) -> `models` (modules
built from graphs) -> `tools` (profile, diagram, explain, save/load), beside `compat`
(the reference implementation), `studio` and the `stcnnt` command.

The names that need torch (`build`, `profile`, `save_model`, `export`, ...) are loaded on first
use, so `import stcnnt_dsl` and everything that reads only the model graph (`check`,
`infer_shapes`, `explain`, `to_dot`, the studio, `stcnnt check`) start without
importing torch.
"""

from typing import Any

from ._lazy import load
from ._version import __version__
from .errors import (
    DataError,
    DSLSyntaxError,
    ResourceError,
    ShapeError,
    SpecError,
    STCNNTError,
    TrainError,
    WeightsError,
)
from .graph import Accepts, accepts, build_graph, check, infer_shapes
from .language import (
    ArchSpec,
    dump_spec,
    format_block,
    list_architectures,
    load_spec,
    parse_block,
)
from .registry import (
    CellKind,
    HeadContext,
    HeadDecoder,
    HeadKey,
    Topology,
    list_kinds,
    register_activation,
    register_cell,
    register_head,
    register_norm,
    register_topology,
)
from .tools.diagram import render_graph, to_dot
from .tools.explain import explain


def __getattr__(name: str) -> Any:
    return load(__name__, name, globals())  # the names that need torch (see _lazy)


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Accepts",
    "ArchSpec",
    "Backbone",
    "CellKind",
    "DSLSyntaxError",
    "DataError",
    "ExportResult",
    "HeadContext",
    "HeadDecoder",
    "HeadKey",
    "Model",
    "ProfileReport",
    "ResourceError",
    "STCNNTError",
    "ShapeError",
    "SpecError",
    "Topology",
    "TrainError",
    "WeightsError",
    "__version__",
    "accepts",
    "apply_lora",
    "build",
    "build_graph",
    "check",
    "dump_spec",
    "explain",
    "export",
    "format_block",
    "freeze",
    "infer_shapes",
    "list_architectures",
    "list_kinds",
    "load_model",
    "load_spec",
    "load_weights",
    "lora_targets",
    "param_groups",
    "parse_block",
    "profile",
    "register_activation",
    "register_cell",
    "register_head",
    "register_norm",
    "register_topology",
    "render_graph",
    "save_model",
    "to_dot",
    "train",
]
