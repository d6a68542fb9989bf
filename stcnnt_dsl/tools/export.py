"""`export`: a compiled backbone or whole model for deployment, as ONNX for ONNX Runtime.

`export(source_or_model, path, input_shape)` writes one `.onnx` file whose input
`input` has dynamic B, T, H and W, within the sizes the architecture accepts (static
H, W for an architecture with a fixed size, e.g. norm=layer). A tensor output is named
`output`; a model whose forward returns a dict (a `Model` with heads) gets one output
per key. The file is run in ONNX Runtime and compared with PyTorch on `input_shape`
before `export` returns.

How the dynamic sizes are traced: torch's ONNX exporter runs `torch.export`, which
gives each dynamic size a symbol and simplifies every shape expression in the network.
With H itself as the symbol, the window partitions' `H // window` arithmetic does not
simplify (nothing tells it that H is a multiple of 32) and tracing the bundled U-Net
took over 20 minutes. So the traced graph takes H and W as blocks x multiple: its input
has each of H and W split in two axes, (H/m, m), whose first is the symbol; every size
inside is then a clean multiple of it, and a whole export of unet-2d-small takes about
30-50 CPU s (docs/export.md "Export time"). One Reshape prepended to the ONNX graph gives
the file its plain input (it accepts exactly the valid sizes: H, W multiples of m).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._version import __version__
from ..errors import STCNNTError
from ..graph.model import ModelGraph, describe_rule, parse_shape
from ..graph.shapes import LAYOUT_AXES, check, frames_word, shape_values
from ..models.build import build
from .io import unwrap

__all__ = ["FORMATS", "INSTALL_HINT", "ExportResult", "export"]

FORMATS = ("onnx",)
INSTALL_HINT = 'pip install "stcnnt-dsl[export]"'
INPUT_NAME = "input"
_BLOCKS_INPUT = "input_blocks"  # the traced graph's input, internal to the file
_AXES = LAYOUT_AXES  # the axes of each layout (`build(layout=...)`)
_DIM_NAMES = {"B": "batch", "T": "frames", "H": "height", "W": "width"}
# Weights beyond this go to a side file (`FILE.data`): protobuf cannot hold 2 GiB.
_EXTERNAL_DATA_BYTES = 1 << 30


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote: the file, its input and outputs (each dim an int when static,
    else a name: "batch", "frames", "height", "width"), the sizes the file accepts in
    words, and the largest difference of ONNX Runtime from PyTorch on the export shape
    (max |ort - torch| / max |torch|, over all outputs)."""

    path: Path
    format: str
    input_shape: tuple[int, ...]
    inputs: dict[str, tuple[int | str, ...]]
    outputs: dict[str, tuple[int | str, ...]]
    valid_sizes: str
    relative_error: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "input_shape": list(self.input_shape),
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "outputs": {k: list(v) for k, v in self.outputs.items()},
            "valid_sizes": self.valid_sizes,
            "relative_error": self.relative_error,
        }


def export(
    source_or_model: Any,
    path: str | Path,
    input_shape: Sequence[int] | str | None = None,
    *,
    format: str = "onnx",
) -> ExportResult:
    """Write `source_or_model` to `path` in `format` ("onnx").

    `source_or_model`: anything `load_spec` accepts (built as `build` does, with fresh
    weights) or a model built by this library (a `Backbone`, or a `Model` with heads),
    exported in eval mode with its weights. `input_shape` is the shape of the model's
    input in its layout ((B, T, C, H, W) unless built with another `layout`) and must
    be one the architecture can run (a `ShapeError` otherwise; default: the smallest it
    accepts); the file keeps B, T, H and W dynamic within the architecture's valid sizes.
    Needs `pip install "stcnnt-dsl[export]"` (onnx, onnxscript, onnxruntime).
    """
    if format not in FORMATS:
        raise STCNNTError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if not hasattr(torch.compiler, "is_exporting"):  # the layers read it (nn.functional)
        raise STCNNTError(f"export needs torch >= 2.7, this is torch {torch.__version__}")
    target = _writable(path)
    model = _resolve(source_or_model)  # the user's mistakes first: before the slow imports
    onnx, ort = _onnx_packages()
    graph: ModelGraph = model.graph
    axes = _AXES[getattr(model, "layout", "BTCHW")]
    if input_shape is None:
        input_shape = _default_input(model)
    shape = _shape_in_layout(input_shape, axes)
    check(graph, shape, layout=getattr(model, "layout", "BTCHW"))
    rule = graph.rule()
    with _eval_mode(model):
        device, dtype = _placement(model)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        x = x.to(device=device, dtype=dtype)
        with torch.no_grad():
            expected = _named_outputs(model(x))
        cache = torch._dynamo.config.patch(fake_tensor_cache_enabled=FAKE_TENSOR_CACHE)
        with _quiet_torch(), cache:
            program = _trace(model, shape, axes, rule, tuple(expected), graph.name)
            proto = _to_onnx(program, tuple(expected))
    if rule.exact is None:
        _accept_full_sizes(proto, onnx, axes, rule.multiple)
    else:
        _name_input(proto, onnx, axes)
    layout = getattr(model, "layout", "BTCHW")
    _describe(proto, onnx, graph.name, layout, rule, _valid_sizes(rule, axes))
    _save(proto, onnx, target)
    error = _verify(ort, target, x, expected)
    return ExportResult(
        path=target,
        format=format,
        input_shape=shape,
        inputs=_dims(proto.graph.input),
        outputs=_dims(proto.graph.output),
        valid_sizes=_valid_sizes(rule, axes),
        relative_error=error,
    )


# ---------------------------------------------------------------- checks before work


def _writable(path: str | Path) -> Path:
    target = Path(path).expanduser()
    if target.is_dir():
        raise STCNNTError(
            f"cannot write {target}: it is a folder; give a file name, e.g. {target / 'model.onnx'}"
        )
    folder = target.parent
    if not folder.is_dir():
        raise STCNNTError(
            f"cannot write {target}: the folder {folder} does not exist; create it first "
            f"(mkdir -p {folder}) or choose another path"
        )
    return target


def _onnx_packages() -> tuple[Any, Any]:
    """onnx and onnxruntime, after checking that torch's exporter has what it needs
    (onnxscript). Plain imports: the package imports no module by a computed name."""
    missing = []
    onnx = ort = None
    try:
        import onnx
    except ImportError:
        missing.append("onnx")
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter runs on it)
    except ImportError:
        missing.append("onnxscript")
    try:
        import onnxruntime as ort
    except ImportError:
        missing.append("onnxruntime")
    if missing:
        raise STCNNTError(
            f"exporting to ONNX needs the packages onnx, onnxscript and onnxruntime "
            f"({', '.join(missing)} not installed): {INSTALL_HINT}"
        )
    return onnx, ort


def _resolve(source_or_model: Any) -> nn.Module:
    """Build a source, or take a model built by this library (unwrapped from
    torch.compile or DDP)."""
    if not isinstance(source_or_model, nn.Module):
        return build(source_or_model)
    model = unwrap(source_or_model)
    if not isinstance(getattr(model, "graph", None), ModelGraph):
        raise STCNNTError(
            f"export takes a model built by stcnnt_dsl.build (a Backbone or a Model), or "
            f"anything load_spec accepts; got a {type(model).__name__}. For other modules "
            f"use torch.onnx.export directly"
        )
    return model


def _shape_in_layout(input_shape: Sequence[int] | str, axes: str) -> tuple[int, ...]:
    """The input shape as ints, one per axis of the model's layout."""
    values = shape_values(input_shape, axes, "the model's layout")
    parse_shape(_to_btchw(values, axes))  # the same validation as everywhere else
    return values


def _valid_sizes(rule: Any, axes: str) -> str:
    """The rule in the words of the model's layout: no T for 2D, D for volumes."""
    return f"any B, {describe_rule(rule, frames_word(axes))}"


def _default_input(model: nn.Module) -> tuple[int, ...]:
    """The smallest input `model` accepts, in the model's layout."""
    btchw = dict(zip("BTCHW", model.graph.default_input(), strict=True))
    return tuple(btchw[axis] for axis in _AXES[getattr(model, "layout", "BTCHW")])


def _to_btchw(shape: Sequence[int], axes: str) -> tuple[int, ...]:
    size = dict(zip(axes, shape, strict=True))
    return tuple(size.get(axis, 1) for axis in "BTCHW")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Deployment is inference: export in eval mode (no dropout, running norm
    statistics), and give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The model's device and dtype; export takes float32 models (ONNX tools convert a
    file to float16 afterwards, e.g. onnxconverter-common)."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    dtype = params[0].dtype if params else torch.float32
    if dtype != torch.float32:
        raise STCNNTError(
            f"export takes a float32 model, this one is {str(dtype).replace('torch.', '')}: "
            f"export model.float() and convert the ONNX file afterwards"
        )
    return (params[0].device if params else torch.device("cpu")), dtype


def _named_outputs(out: Any) -> dict[str, Tensor]:
    if isinstance(out, Tensor):
        return {"output": out}
    if isinstance(out, Mapping) and out and all(isinstance(v, Tensor) for v in out.values()):
        names = [str(k) for k in out]
        if INPUT_NAME in names:
            raise STCNNTError(
                f"an output named {INPUT_NAME!r} would clash with the input of the ONNX "
                "file; rename that head"
            )
        return dict(zip(names, out.values(), strict=True))
    raise STCNNTError(
        f"export needs a model whose forward returns a tensor or a dict of tensors, got "
        f"{type(out).__name__}"
    )


# ---------------------------------------------------------------------------- tracing


class _Blocks(nn.Module):
    """The model on an input whose H and W axes are each split into (blocks, multiple)
    (see the module docstring); a dict output becomes a tuple in the order of `names`."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], h_axis: int | None) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.h_axis = h_axis

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        if self.h_axis is not None:
            h = self.h_axis
            x = x.flatten(h + 2, h + 3).flatten(h, h + 1)
        out = self.model(x)
        if isinstance(out, Tensor):
            return out
        return tuple(out[name] for name in self.names)


# torch.export's fake tensors cache each op's output by its input metadata. With
# symbolic sizes a hit is not free: the cached output is rebuilt from symbolic sizes and
# strides (empty_strided, set_), each step sympy arithmetic, which costs more than
# running the meta kernel again: the trace takes 20-30 % less CPU without it, torch's
# re-trace for ONNX about the same (tools/bench_export.py --export-only; docs/export.md).
FAKE_TENSOR_CACHE = False


def _trace(
    model: nn.Module,
    shape: tuple[int, ...],
    axes: str,
    rule: Any,
    names: tuple[str, ...],
    name: str,
) -> torch.export.ExportedProgram:
    from torch.export import Dim

    blocked = rule.exact is None
    h = axes.index("H")
    # A size of 1 would be specialised (torch.export's 0/1 rule), also inside the
    # network (e.g. a strided Q/K convolution halves H, W): trace at B, T >= 2 and
    # >= 4 blocks (symbolic shapes, no memory), while the dims' minimums still allow 1.
    example = [max(n, 2) if axis in "BT" else n for axis, n in zip(axes, shape, strict=True)]
    dims: dict[int, Any] = {axes.index("B"): Dim("batch", min=1)}
    if "T" in axes:
        t, m = axes.index("T"), rule.frames_multiple
        if m > 1:  # a model that halves T: T = m x frame blocks (a derived dim)
            example[t] = max(shape[t] // m, 2) * m
            dims[t] = m * Dim("frame_blocks", min=max(1, math.ceil(rule.min_frames / m)))
        else:
            dims[t] = Dim("frames", min=rule.min_frames)
    if blocked:
        mh, mw = rule.multiple
        hb, wb = max(shape[h] // mh, 4), max(shape[h + 1] // mw, 4)
        example[h : h + 2] = [hb, mh, wb, mw]
        for axis in list(dims):
            if axis > h:
                dims[axis + 2] = dims.pop(axis)
        dims[h] = Dim("h_blocks", min=max(1, math.ceil(rule.minimum / mh)))
        dims[h + 2] = Dim("w_blocks", min=max(1, math.ceil(rule.minimum / mw)))
    x = torch.zeros(example, device=_placement(model)[0])
    wrapper = _Blocks(model, names, h if blocked else None)
    try:
        return torch.export.export(wrapper, (x,), dynamic_shapes=(dims,), strict=False)
    except torch._dynamo.exc.UserError as err:  # the graph would depend on the sizes
        if "Constraints violated" not in str(err):
            raise
        raise STCNNTError(
            f"{name} cannot be exported with dynamic sizes yet: its graph depends on "
            f"the input size ({_violated(err)}). Known cases: V cells with a grid, T cells "
            f"with qk_stride > 1 (see docs/export.md); use other options for those cells"
        ) from None


def _violated(err: Exception) -> str:
    """Which dims torch.export had to fix, from its message."""
    found = re.findall(r"You marked (\w+) as dynamic|values of (\w+) =", str(err))
    words = {"h_blocks": "the height", "w_blocks": "the width"}  # the traced dims
    names = sorted({words.get(a or b, a or b) for a, b in found})
    return "it fixes " + " and ".join(names) if names else str(err).splitlines()[0]


# "full": onnxscript's optimizer as torch's exporter runs it (every rewrite rule tried at
# every node); "lean": the same passes with the rewrite rules that fire on our graphs.
# tools/bench_export.py --export-only times both side by side.
OPTIMIZE = "lean"


# torch's exporter re-traces the whole exported program to decompose it (its
# `run_decompositions`), although torch.export's graph of these models holds ops that
# ONNX translates as they are, but for two training-IR spellings (batch_norm, to); that
# re-trace was half of an export's CPU. False: translate the traced graph itself when
# every op has an ONNX translation (else torch's full path): 2.6x less export CPU, but
# the file keeps GELU as five ops and ~400 more shape ops, and ONNX Runtime ran it 1.2-1.3x
# slower (unet-2d-small at 1x8x1x64x64). True (the default: a file runs more often than it
# is exported): torch's path. tools/bench_export.py --variants retrace,one-trace times both.
RETRACE = True


def _to_onnx(program: torch.export.ExportedProgram, names: tuple[str, ...]) -> Any:
    """The ONNX ModelProto of an exported program (torch's dynamo-based exporter)."""
    try:  # torch's private exporter steps (torch 2.13): another torch takes its public path
        from torch.onnx._constants import ONNX_DEFAULT_OPSET
        from torch.onnx._internal._lazy_import import onnxscript_apis
        from torch.onnx._internal.exporter import _core, _fx_passes, _ir_passes, _registration

        registry = _registration.ONNXRegistry.from_torchlib()
    except (ImportError, AttributeError):
        registry = None
    if RETRACE or OPTIMIZE == "full" or registry is None or not _translatable(program, registry):
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            input_names=[_BLOCKS_INPUT],
            output_names=list(names),
            optimize=OPTIMIZE == "full",
            verbose=False,
        )
    else:  # torch's `_prepare_exported_program_for_export`, without the re-trace
        _inference_spellings(program.graph_module)
        _fx_passes.insert_type_promotion_nodes(program.graph_module)
        program._graph_module = _fx_passes.remove_assertion_nodes(program.graph_module)
        onnx_program = _core._exported_program_to_onnx_program(program, registry=registry)
        # torch.onnx.export's opset conversion (torchlib's 18 -> 20), as its path does
        onnx_program.model = onnxscript_apis.convert_version(onnx_program.model, ONNX_DEFAULT_OPSET)
        _ir_passes.rename_inputs(onnx_program.model, [_BLOCKS_INPUT])
        _ir_passes.rename_outputs(onnx_program.model, list(names))
    if OPTIMIZE != "full":
        _optimize(onnx_program.model)
    return onnx_program.model_proto


_ASSERTIONS = ("aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
               "aten.sym_constrain_range_for_size.default")  # fmt: skip


def _translatable(program: torch.export.ExportedProgram, registry: Any) -> bool:
    """Whether every op of the traced graph has an ONNX translation as it is (after
    `_inference_spellings`), so that torch's decomposition re-trace would change nothing
    that matters; a graph with any other op (or a mutation) takes torch's full path."""
    try:
        from torch.onnx._internal.exporter import _decomp

        known = set(_decomp.get_onnx_implemented_overloads(registry))
    except (ImportError, AttributeError):  # another torch: its public path
        return False
    for node in program.graph.nodes:
        if node.op != "call_function" or str(node.target) in _ASSERTIONS:
            continue
        schema = getattr(node.target, "_schema", None)
        if schema is not None and schema.is_mutable:
            return False
        if node.target not in known and _inference_spelling(node) is None:
            return False
    return True


def _inference_spelling(node: torch.fx.Node) -> tuple[Any, tuple, dict] | None:
    """(op, args, kwargs) the decomposition gives a training-IR op of these graphs
    (batch_norm in eval mode, to(dtype)), or None for any other node."""
    aten = torch.ops.aten
    if node.target is aten.batch_norm.default and len(node.args) >= 8 and not node.args[5]:
        x, weight, bias, mean, var, _, momentum, eps = node.args[:8]
        op = aten._native_batch_norm_legit_no_training.default
        return op, (x, weight, bias, mean, var, momentum, eps), {}
    if node.target is aten.to.dtype and len(node.args) == 2 and not node.kwargs:
        return aten._to_copy.default, node.args[:1], {"dtype": node.args[1]}
    return None


def _inference_spellings(module: torch.fx.GraphModule) -> None:
    """Replace the training-IR ops of `_inference_spelling` in place (batch_norm's
    single result is item 0 of the inference op's triple)."""
    import operator

    graph = module.graph
    for node in list(graph.nodes):
        spelling = _inference_spelling(node) if node.op == "call_function" else None
        if spelling is None:
            continue
        op, args, kwargs = spelling
        with graph.inserting_before(node):
            out = graph.call_function(op, args, kwargs)
            out.meta = dict(node.meta)
            if op is torch.ops.aten._native_batch_norm_legit_no_training.default:
                out = graph.call_function(operator.getitem, (out, 0))
                out.meta = dict(node.meta)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
    module.recompile()


def _optimize(model: Any) -> None:
    """onnxscript's optimizer (`optimize_ir`: inline, constant folding, rewrite rules,
    clean-up), with the rewrite rules that change this library's graphs (measured: on
    TINY and bundled U-Nets only these fired). The default set tries some forty rules
    at every node, which took half of an export's time (1020 of 2048 s for
    unet-2d-small on a loaded 2-core machine)."""
    import onnx_ir.passes.common as common
    import onnxscript
    from onnxscript.rewriter import RewritePass
    from onnxscript.rewriter.rules import common as rules

    chosen = [
        rules.squeeze_reshape_1d_rule,
        rules.reshape_reshape_rule,
        rules.materialize_reshape_shape_rule,
        rules.remove_optional_bias_from_conv_rule,
        rules.no_op_transpose_rule,
        rules.transpose_transpose_rule,
        rules.no_op_expand_rule,
        rules.no_op_cast_rule,
    ]
    common.InlinePass()(model)
    for _ in range(2):  # as optimize_ir: fold, rewrite, drop what is unused; twice
        onnxscript.optimizer.fold_constants(model)
        RewritePass(chosen)(model)
        onnxscript.optimizer.remove_unused_nodes(model)
    for cleanup in (
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    ):
        cleanup(model)


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence torch's notices that are not the user's business: torchvision's ops are
    not registered without torchvision (we need none); a deprecation inside torch."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        registration.setLevel(level)


# ------------------------------------------------------------------ the ONNX graph


def _accept_full_sizes(proto: Any, onnx: Any, axes: str, multiple: tuple[int, int]) -> None:
    """Prepend the Reshape that splits H and W of the file's input `input` into
    (H/mh, mh) and (W/mw, mw), the traced graph's input; name the dynamic dims."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    blocks = graph.input[0]
    dims = blocks.type.tensor_type.shape.dim
    h = axes.index("H")
    mh, mw = multiple
    blocked_axes = axes[:h] + "hHwW" + axes[h + 2 :]  # h, w: the blocks; H, W: multiples
    symbols = {
        dims[i].dim_param: {"h": "h_blocks", "w": "w_blocks"}.get(a, _DIM_NAMES.get(a, a))
        for i, a in enumerate(blocked_axes)
        if a in "BThw"
    }
    exact = {f"{mh}*{dims[h].dim_param}": "height", f"{mw}*{dims[h + 2].dim_param}": "width"}
    _rename_dims(graph, exact, symbols)
    const = {
        "stcnnt_mh": np.array([mh], dtype=np.int64),
        "stcnnt_mw": np.array([mw], dtype=np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in const.items())
    # [lead..., H/mh, mh, W/mw, mw, trail...] from the input's own shape: both block counts
    # explicit (floor division), so an H or W that is not a multiple leaves elements over
    # and the Reshape fails, rather than reading the image with another width
    nodes = [
        helper.make_node("Shape", [INPUT_NAME], ["stcnnt_lead"], end=h),
        helper.make_node("Shape", [INPUT_NAME], ["stcnnt_h"], start=h, end=h + 1),
        helper.make_node("Div", ["stcnnt_h", "stcnnt_mh"], ["stcnnt_h_blocks"]),
        helper.make_node("Shape", [INPUT_NAME], ["stcnnt_w"], start=h + 1, end=h + 2),
        helper.make_node("Div", ["stcnnt_w", "stcnnt_mw"], ["stcnnt_w_blocks"]),
        helper.make_node("Shape", [INPUT_NAME], ["stcnnt_trail"], start=h + 2),
        helper.make_node(
            "Concat",
            [
                "stcnnt_lead",
                "stcnnt_h_blocks",
                "stcnnt_mh",
                "stcnnt_w_blocks",
                "stcnnt_mw",
                "stcnnt_trail",
            ],
            ["stcnnt_shape"],
            axis=0,
        ),
        helper.make_node("Reshape", [INPUT_NAME, "stcnnt_shape"], [blocks.name]),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    full: list[int | str] = [d.dim_param or d.dim_value for d in dims]  # renamed above
    full[h : h + 4] = ["height", "width"]
    value = helper.make_tensor_value_info(INPUT_NAME, blocks.type.tensor_type.elem_type, full)
    graph.input.remove(blocks)
    graph.input.insert(0, value)
    onnx.checker.check_model(proto, full_check=False)


def _name_input(proto: Any, onnx: Any, axes: str) -> None:
    """Static H, W: rename the traced input to `input` and name the dynamic dims."""
    graph = proto.graph
    old = graph.input[0].name
    dims = graph.input[0].type.tensor_type.shape.dim
    symbols = {dims[i].dim_param: _DIM_NAMES[a] for i, a in enumerate(axes) if a in "BT"}
    _rename_dims(graph, {}, symbols)
    graph.input[0].name = INPUT_NAME
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = INPUT_NAME
    onnx.checker.check_model(proto, full_check=False)


def _rename_dims(graph: Any, exact: dict[str, str], symbols: dict[str, str]) -> None:
    """Readable names for the exporter's symbols (s35 -> frames, 32*s70 -> height) in
    every shape the graph declares."""
    symbols = {k: v for k, v in symbols.items() if k}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, symbols)) + r")\b") if symbols else None
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if not dim.dim_param:
                continue
            if dim.dim_param in exact:
                dim.dim_param = exact[dim.dim_param]
            elif pattern is not None:
                dim.dim_param = pattern.sub(lambda m: symbols[m.group(0)], dim.dim_param)


def _describe(proto: Any, onnx: Any, name: str, layout: str, rule: Any, sizes: str) -> None:
    """What the file accepts, in its `metadata_props` (read by any ONNX tool, e.g.
    `onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`): an input
    outside these sizes fails inside ONNX Runtime with a reshape error."""
    props = {
        "stcnnt.architecture": name,
        "stcnnt.layout": layout,
        "stcnnt.accepts": sizes,
        "stcnnt.min_frames": str(rule.min_frames),
        "stcnnt.frames_multiple": str(rule.frames_multiple),
        "stcnnt.version": __version__,
    }
    if rule.exact is None:
        props["stcnnt.multiples"] = f"{rule.multiple[0]},{rule.multiple[1]}"
        props["stcnnt.minimum"] = str(rule.minimum)
    else:
        props["stcnnt.exact"] = f"{rule.exact[0]},{rule.exact[1]}"
    onnx.helper.set_model_props(proto, props)


def _save(proto: Any, onnx: Any, target: Path) -> None:
    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    if weights > _EXTERNAL_DATA_BYTES:
        onnx.save_model(proto, target, save_as_external_data=True, location=target.name + ".data")
    else:
        onnx.save_model(proto, target)


def _dims(values: Any) -> dict[str, tuple[int | str, ...]]:
    return {
        v.name: tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
        for v in values
    }


# ------------------------------------------------------------------------ checking


def _verify(ort: Any, target: Path, x: Tensor, expected: dict[str, Tensor]) -> float:
    """Run the file in ONNX Runtime on `x`; the largest relative difference from PyTorch.
    A file that disagrees with PyTorch is a bug of this library, never a user error."""
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    got = session.run(list(expected), {INPUT_NAME: x.detach().cpu().numpy()})
    worst = 0.0
    for (name, want), have in zip(expected.items(), got, strict=True):
        want = want.detach().float().cpu()
        have = torch.from_numpy(have)
        if have.shape != want.shape:
            raise RuntimeError(
                f"ONNX output {name!r} has shape {tuple(have.shape)}, PyTorch "
                f"{tuple(want.shape)}: a bug in stcnnt-dsl's export, please report it"
            )
        scale = want.abs().max().item() or 1.0
        worst = max(worst, (have - want).abs().max().item() / scale)
    tolerance = 1e-4
    if not worst <= tolerance:
        raise RuntimeError(
            f"ONNX Runtime differs from PyTorch by {worst:.2e} (relative; tolerance "
            f"{tolerance:g}) on {tuple(x.shape)}: a bug in stcnnt-dsl's export, please "
            f"report it"
        )
    return worst
