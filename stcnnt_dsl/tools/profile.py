"""`profile`: FLOPs, parameters, shapes, activation memory, latency and peak memory.

What each number means (also printed under the table):

- FLOPs: 2 per multiply-add of convolutions, linear layers, matmuls and attention
  (Q·Kᵀ and P·V); see `stcnnt_dsl.tools.flops`. Counted from the model graph's cell
  geometry (no tensors), and on request also by torch's `FlopCounterMode` on the meta
  device or by fvcore on real tensors as cross-checks.
- Parameters and per-module output shapes: from the model graph (exact); torchinfo's
  layer table on request (`layers=True`).
- Activation memory (training): bytes autograd keeps for the backward pass in one
  training forward, parameters and the input excluded: measured on the meta device
  (nothing is computed) when the model is built anyway (runs > 0 or a torch counter),
  else the graph's estimate (a few milliseconds; within about 1.5x).
- Latency: median wall time of `runs` inference forwards (`torch.inference_mode`,
  after `warmup` forwards), with autocast when `dtype` is bfloat16/float16.
- Peak memory: how much the memory in use grew during a timed forward, at its highest.
  CUDA: `torch.cuda.max_memory_allocated()` minus the allocation before the forward
  (tensor memory). CPU (Linux): the process's resident-set high-water mark (VmHWM, reset
  through /proc/self/clear_refs, after `malloc_trim`) minus the resident set before
  the forward: every byte the forward touched, kernels' scratch included.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import platform
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import STCNNTError
from ..graph.build import build_graph
from ..graph.model import ModelGraph, parse_shape
from ..graph.nodes import BlockNode, MergeNode, Node
from ..graph.shapes import checked
from ..machine import cpu
from ..models.build import build
from ..models.model import model_of
from ..units import human, human_bytes
from .flops import (
    FLOP_CONVENTION,
    FlopCount,
    count_flops_analytic,
    count_flops_fvcore,
    count_flops_torch,
    roll_up,
)

__all__ = ["ModuleRow", "ProfileReport", "human", "profile"]

# With runs=None, time as many forwards as fit in this many seconds (1 to 10).
LATENCY_BUDGET_S = 20.0
MAX_AUTO_RUNS = 10

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_COUNTERS = ("auto", "analytic", "torch", "fvcore")

Progress = Callable[[str], None]


@dataclass
class ModuleRow:
    """One row of the per-module table.

    `kind`: "stage" (a block of the topology), "cell" (a cell of that block), or
    "module" (resampling, gates, fusion: everything between the stages).
    `flops_analytic` is None where the analytic count has no entry (generic modules).
    """

    name: str
    kind: str
    label: str
    params: int
    output_shape: tuple[int, ...] | None
    flops: int
    flops_analytic: int | None
    activation_bytes: int


@dataclass
class ProfileReport:
    """The result of `profile`; `str(report)` is the table `stcnnt profile` prints."""

    arch: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] | None
    device: str
    dtype: str
    params: int
    flops: int
    flop_counter: str
    flop_counts: dict[str, int]
    flops_by_operator: dict[str, int]
    activation_bytes: int | None
    activation_method: str
    latency_ms: float | None
    latency_runs_ms: list[float]
    warmup: int
    peak_memory_bytes: int | None
    peak_memory_method: str
    per_module: list[ModuleRow]
    layer_table: str = ""
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (tuples become lists)."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["output_shape"] = None if self.output_shape is None else list(self.output_shape)
        for row in data["per_module"]:
            if row["output_shape"] is not None:
                row["output_shape"] = list(row["output_shape"])
        return data

    def format(self, detail: str = "cell") -> str:
        """The report as text; `detail="stage"` leaves out the cell rows."""
        return _format(self, detail)

    def __str__(self) -> str:
        return self.format()


# --------------------------------------------------------------------------- arguments


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise STCNNTError(f"unknown device {device!r}; use cpu or cuda (cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise STCNNTError(f"profile runs on cpu or cuda, got device {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise STCNNTError(
            "device cuda was requested but this torch has no usable CUDA device "
            f"(torch {torch.__version__}); use --device cpu"
        )
    return dev


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """None for float32 (no autocast), else the autocast dtype."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise STCNNTError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        dtype = _DTYPES[dtype]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise STCNNTError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return None if dtype == torch.float32 else dtype


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- meta runs


def _meta_model(model: nn.Module | None, graph: ModelGraph | None) -> nn.Module:
    if graph is not None:
        with torch.device("meta"):
            return model_of(graph)
    return copy.deepcopy(model).to("meta")


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def _short_method(method: str) -> str:
    """The activation-memory method in a few words: the meta-device measure (what a
    profile with runs reports) and the graph's estimate (runs=0: no model is built) are
    different numbers and are named so."""
    return method.split(" (")[0]


def _activation_bytes(meta: nn.Module, x: torch.Tensor) -> tuple[dict[str, int], list[str]]:
    """Bytes autograd saves for backward, per innermost running module (training-mode
    forward on meta tensors), and the modules in the order they first ran."""
    names = _module_names(meta)
    stack: list[str] = [""]
    order: list[str] = []
    saved: Counter[str] = Counter()
    excluded = {p.untyped_storage()._cdata for p in meta.parameters()}
    excluded |= {b.untyped_storage()._cdata for b in meta.buffers()}
    excluded.add(x.untyped_storage()._cdata)
    seen: dict[int, Any] = {}  # keeps the storages alive so their ids stay unique

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in excluded and key not in seen:
            seen[key] = storage
            saved[stack[-1]] += storage.nbytes()
        return t

    def enter(module: nn.Module, _args: Any) -> None:
        name = names.get(id(module), "")
        if name not in order:
            order.append(name)
        stack.append(name)

    def leave(_module: nn.Module, _args: Any, _out: Any) -> None:
        stack.pop()

    handles = []
    for module in meta.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    was_training = meta.training
    meta.train()
    for p in meta.parameters():  # a private meta copy: frozen weights count as trained
        p.requires_grad_(True)
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            meta(x)
    finally:
        for handle in handles:
            handle.remove()
        meta.train(was_training)
    return dict(saved), order


def _shapes_and_params(meta: nn.Module, x: torch.Tensor) -> tuple[dict, dict, str]:
    """Output shape and parameter count of every module (torchinfo), and its table."""
    import torchinfo

    names = _module_names(meta)
    summary = torchinfo.summary(
        meta,
        input_data=[x],
        depth=3,
        col_names=("output_size", "num_params"),
        row_settings=("var_names",),
        verbose=0,
        device="meta",
        mode="eval",
    )
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in summary.summary_list:
        name = names.get(id(layer.module))
        size = layer.output_size
        if name is not None and size and all(isinstance(v, int) for v in size):
            shapes.setdefault(name, tuple(size))
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in meta.named_modules()}
    return shapes, params, str(summary)


# --------------------------------------------------------------------------- rows


def _graph_rows(graph: ModelGraph, shape: tuple[int, ...], flops: FlopCount,
                analytic: FlopCount, acts: dict[str, int]) -> list[ModuleRow]:  # fmt: skip
    """Rows from the model graph: one per node with a module, one per cell."""
    params = roll_up(graph.params())
    shapes = graph.shapes(shape)
    act = roll_up(acts)
    rows = []

    def row(name: str, kind: str, label: str, out: tuple[int, ...] | None) -> ModuleRow:
        return ModuleRow(
            name=name, kind=kind, label=label, params=params.get(name, 0), output_shape=out,
            flops=flops.by_module.get(name, 0), flops_analytic=analytic.by_module.get(name, 0),
            activation_bytes=act.get(name, 0),
        )  # fmt: skip

    for node in graph.all_nodes:
        if isinstance(node, MergeNode):
            continue
        out = shapes[node.name]
        path = graph.module_path(node)
        if isinstance(node, BlockNode):
            plan = node.plan
            channels = f"{plan.in_channels}->{plan.out_channels} ch"
            label = f"{node.label}: {plan.block} ({channels}, 1/{node.scale})"
            rows.append(row(path, "stage", label, out))
            for cell in plan.cells:
                rows.append(row(f"{path}.cells.{cell.index}", "cell", str(cell.spec), out))
        elif node in graph.heads:
            rows.append(row(path, "head", f"{node.head_name}: {node.label}", out))
        else:
            rows.append(row(path, "module", _node_label(node), out))
    return rows


def _node_label(node: Node) -> str:
    return f"{type(node).__name__.removesuffix('Node')} ({node.label})"


def _units(model: nn.Module) -> list[str]:
    """Top-level pieces of a model: children, or the items of container children."""
    units = []
    for name, child in model.named_children():
        if isinstance(child, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
            units += [f"{name}.{key}" for key, _ in child.named_children()]
        else:
            units.append(name)
    return units


def _module_rows(meta: nn.Module, flops: FlopCount, shapes: dict, params: dict,
                 activations: dict[str, int], order: list[str]) -> list[ModuleRow]:  # fmt: skip
    """Rows of a model this library did not build: its top-level pieces."""
    act = roll_up(activations)
    modules = dict(meta.named_modules())
    rank = {name: i for i, name in enumerate(order)}
    return [
        ModuleRow(
            name=unit,
            kind="module",
            label=_module_label(modules[unit]),
            params=params.get(unit, 0),
            output_shape=shapes.get(unit),
            flops=flops.by_module.get(unit, 0),
            flops_analytic=None,
            activation_bytes=act.get(unit, 0),
        )
        for unit in sorted(_units(meta), key=lambda n: rank.get(n, len(rank)))
    ]


def _module_label(module: nn.Module) -> str:
    kind = type(module).__name__
    mode = getattr(module, "mode", None)
    steps = getattr(module, "steps", None) or len(getattr(module, "merges", ()) or ())
    extra = []
    if isinstance(mode, str):
        extra.append(mode)
    if steps:
        extra.append(f"{steps} step{'s' if steps > 1 else ''}")
    return f"{kind} ({', '.join(extra)})" if extra else kind


# --------------------------------------------------------------------------- measuring


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            match = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


class _PeakMemory:
    """Peak memory growth during one forward (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.libc = _libc() if device.type == "cpu" else None
        self.method = self._method()
        self.base = 0

    def _method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated minus the allocation before the forward"
        if platform.system() == "Linux" and os.access("/proc/self/clear_refs", os.W_OK):
            return "process resident-set high-water mark (VmHWM) minus the resident set before"
        return "not measured (needs Linux /proc/self/clear_refs, or CUDA)"

    @property
    def available(self) -> bool:
        return not self.method.startswith("not measured")

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        if not self.available:
            return
        if self.libc is not None and hasattr(self.libc, "malloc_trim"):
            self.libc.malloc_trim(0)  # freed heap pages back to the OS: an honest base
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")  # resets VmHWM to the current resident set
        except OSError:  # some sandboxes refuse it although the file looks writable
            self.method = "not measured (/proc/self/clear_refs is not writable here)"
            return
        self.base = _status_bytes("VmRSS") or 0

    def stop(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        if not self.available:
            return None
        peak = _status_bytes("VmHWM")
        return None if peak is None else max(0, peak - self.base)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(
    model: nn.Module,
    shape: tuple[int, ...],
    device: torch.device,
    autocast: torch.dtype | None,
    runs: int | None,
    warmup: int,
    progress: Progress,
) -> tuple[list[float], int | None, str, int]:
    """(per-run milliseconds, peak memory bytes, memory method, warm-up forwards)."""
    x = torch.randn(shape, device=device)
    memory = _PeakMemory(device)
    context = (
        torch.autocast(device_type=device.type, dtype=autocast)
        if autocast is not None
        else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    times: list[float] = []
    peaks: list[int] = []
    try:
        with torch.inference_mode(), context:
            first = None
            for i in range(max(warmup, 0)):
                progress(f"warm-up forward {i + 1}/{warmup}")
                start = time.perf_counter()
                model(x)
                _sync(device)
                first = time.perf_counter() - start
            if runs is None:
                if first is None:  # no warm-up to size the run count by
                    runs = 3
                else:
                    runs = int(min(MAX_AUTO_RUNS, max(1, LATENCY_BUDGET_S // max(first, 1e-6))))
            for i in range(runs):
                progress(f"timed forward {i + 1}/{runs}")
                memory.start()
                start = time.perf_counter()
                model(x)
                _sync(device)
                times.append((time.perf_counter() - start) * 1000.0)
                peak = memory.stop()
                if peak is not None:
                    peaks.append(peak)
    finally:
        model.train(was_training)
    return times, (max(peaks) if peaks else None), memory.method, max(warmup, 0)


# --------------------------------------------------------------------------- profile


def _resolve(source: Any) -> tuple[nn.Module | None, ModelGraph | None, str]:
    graph = getattr(source, "graph", None)
    if isinstance(source, nn.Module):
        if isinstance(graph, ModelGraph):
            return source, graph, graph.name
        return source, None, type(source).__name__
    graph = source if isinstance(source, ModelGraph) else None
    if graph is None:
        graph = build_graph(source)
    return None, graph, graph.name


def profile(
    source_or_model: Any = "unet",
    input_shape: Sequence[int] | str = (1, 1, 1, 64, 64),
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    runs: int | None = None,
    warmup: int = 1,
    flop_counter: str = "auto",
    layers: bool = False,
    progress: Progress | None = None,
) -> ProfileReport:
    """Profile an architecture (anything `load_spec` accepts) or a built model on an
    input of `input_shape` = (B, T, C, H, W).

    `runs`: timed forwards (None: as many as fit in ~20 s after the warm-up, 1 to 10;
    0: skip latency and peak memory, and then nothing is built or computed: every
    number comes from the model graph in milliseconds). `dtype`: bfloat16/float16 run
    under autocast. `flop_counter`: "analytic" (the graph's formulas), "torch"
    (FlopCounterMode on the meta device), "fvcore" (traced on real tensors), or "auto"
    (analytic, cross-checked by FlopCounterMode when the model is built anyway).
    `layers`: also torchinfo's layer table. `progress` receives a short message
    before each long step.
    """
    say = progress or (lambda _message: None)
    if flop_counter not in _COUNTERS:
        raise STCNNTError(
            f"flop_counter must be one of {', '.join(_COUNTERS)}, got {flop_counter!r}"
        )
    if runs is not None and (isinstance(runs, bool) or not isinstance(runs, int) or runs < 0):
        raise STCNNTError(f"runs must be a non-negative integer (0: no timing), got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise STCNNTError(f"warmup must be a non-negative integer, got {warmup!r}")
    dev = _device(device)
    autocast = _dtype(dtype)
    model, graph, name = _resolve(source_or_model)
    if graph is not None:
        # Real tensors of this size are made only to time (or fvcore): then the memory
        # guard refuses an input that would not fit, before anything is allocated.
        allocates = runs != 0 or flop_counter == "fvcore"
        graph, shape = checked(graph, input_shape, memory=allocates)
    else:
        shape = parse_shape(input_shape)
    if model is not None and _model_device(model).type != dev.type:
        raise STCNNTError(
            f"the model is on {_model_device(model)} but device={str(dev)!r}; move the "
            "model or pass the device it is on"
        )
    itemsize = (autocast or torch.float32).itemsize
    counts: dict[str, FlopCount] = {}
    analytic = None
    if graph is not None:
        analytic = counts["analytic"] = count_flops_analytic(graph, shape)
    torch_count = flop_counter == "torch" or graph is None or (flop_counter == "auto" and runs != 0)
    meta = None
    activations: dict[str, int] | None = None
    order: list[str] = []
    method = "estimated from the model graph"
    if torch_count or layers or graph is None or runs != 0:
        say("counting FLOPs and memory on the meta device")
        meta = _meta_model(model, graph)
        x_meta = torch.empty(shape, device="meta")
        if torch_count:
            counts["torch"] = count_flops_torch(meta, x_meta)
        # Activations in the autocast dtype (approximately: autocast keeps a few ops in
        # float32); `.to` converts the meta model in place, so this comes after counting.
        meta_dtype = autocast or torch.float32
        activations, order = _activation_bytes(meta.to(meta_dtype), x_meta.to(meta_dtype))
        method = "measured on the meta device (saved-tensor hooks)"
    if activations is None:
        activations = {k: v * itemsize for k, v in graph.saved(shape).items()}
    real = model
    if flop_counter == "fvcore" or runs != 0:
        if real is None:
            say("building the model")
            real = build(graph.source, device=dev)
    if flop_counter == "fvcore":
        say("counting FLOPs with fvcore (one traced forward)")
        counts["fvcore"] = count_flops_fvcore(real, torch.randn(shape, device=_model_device(real)))
    primary_name = {"auto": "analytic", "analytic": "analytic"}.get(flop_counter, flop_counter)
    if graph is None:
        primary_name = "torch"
    primary = counts[primary_name]
    table = ""
    if layers or graph is None:
        shapes, params, table = _shapes_and_params(meta, torch.empty(shape, device="meta"))
    if graph is not None:
        rows = _graph_rows(graph, shape, primary, analytic, activations)
        total_params = sum(graph.params().values())
        output = graph.shapes(shape)[graph.output]  # the backbone's (heads have rows)
    else:
        rows = _module_rows(meta, primary, shapes, params, activations, order)
        total_params = params.get("", 0)
        output = shapes.get("")
    if not layers:
        table = ""

    times: list[float] = []
    peak: int | None = None
    peak_method = "not measured (runs=0)"
    used_warmup = 0
    if runs != 0 and real is not None:
        times, peak, peak_method, used_warmup = _measure(
            real, shape, dev, autocast, runs, warmup, say
        )
    notes = [
        FLOP_CONVENTION,
        f"activation memory: bytes autograd saves for backward in one training forward "
        f"({method}; weights and input excluded)",
        f"peak memory: {peak_method}",
    ]
    notes += _dtype_notes(dev, autocast)
    return ProfileReport(
        arch=name,
        input_shape=shape,
        output_shape=output,
        device=str(dev),
        dtype="float32"
        if autocast is None
        else f"{str(autocast).removeprefix('torch.')} (autocast)",
        params=total_params,
        flops=primary.total,
        flop_counter=primary_name,
        flop_counts={k: v.total for k, v in counts.items()},
        flops_by_operator=dict(primary.by_operator),
        activation_bytes=sum(activations.values()),
        activation_method=method,
        latency_ms=statistics.median(times) if times else None,
        latency_runs_ms=times,
        warmup=used_warmup,
        peak_memory_bytes=peak,
        peak_memory_method=peak_method,
        per_module=rows,
        layer_table=table,
        notes=notes,
        environment=_environment(dev),
    )


def native_bf16() -> bool | None:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); None: unknown."""
    return cpu().native_bf16


def _dtype_notes(dev: torch.device, autocast: torch.dtype | None) -> list[str]:
    """Say when reduced precision will be slower than float32 on this machine, and why."""
    if dev.type != "cpu" or autocast is None:
        return []
    if autocast == torch.float16:
        return ["float16 on CPU: most kernels convert to float32 and back; expect it to be "
                "slower than float32 (use bfloat16 on CPUs with AVX512-BF16 or AMX)"]  # fmt: skip
    native = native_bf16()
    if native is False:
        return ["bfloat16 on this CPU has no native support (no AVX512-BF16 or AMX): "
                "convolutions and matmuls emulate it; a training step ran 19x slower than "
                "float32 on an AVX2 EPYC; profile with float32 here"]  # fmt: skip
    if native and "amx_bf16" not in cpu().flags:
        return ["bfloat16 on this CPU: AVX512-BF16 without AMX; on an AMD EPYC of this kind "
                "it made training steps 1.2-1.4x faster than float32 but inference only "
                "0.9-1.1x as fast (the reference U-Net's forward was slower); measure both "
                "(AMX CPUs: about 3x faster)"]  # fmt: skip
    return []


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _shape_text(shape: Sequence[int] | None) -> str:
    return "-" if shape is None else "x".join(map(str, shape))


def _format(report: ProfileReport, detail: str) -> str:
    env = report.environment
    where = report.device + (f" ({env['threads']} threads)" if report.device == "cpu" else "")
    if "gpu" in env:
        where += f" ({env['gpu']})"
    others = {k: v for k, v in report.flop_counts.items() if k != report.flop_counter}
    agree = ", ".join(
        f"{k} {human(v, 'FLOPs')}"
        + (
            ""
            if v == report.flops
            else f" ({100 * (v - report.flops) / max(report.flops, 1):+.2f}%)"
        )
        for k, v in others.items()
    )
    counter = {"torch": "torch FlopCounterMode, meta device", "fvcore": "fvcore"}.get(
        report.flop_counter, report.flop_counter
    )
    operators = ", ".join(f"{k} {human(v)}" for k, v in sorted(report.flops_by_operator.items()))
    lines = [
        f"{report.arch}: input {_shape_text(report.input_shape)} -> output "
        f"{_shape_text(report.output_shape)} on {where}, {report.dtype}",
        "",
        f"  parameters         {report.params:,} ({human(report.params)})",
        f"  FLOPs              {human(report.flops, 'FLOPs')} per forward, 2 per multiply-add "
        f"[{counter}]",
    ]
    if agree:
        lines.append(f"    cross-check      {agree}")
    if operators:
        lines.append(f"    by operator      {operators}")
    if report.activation_bytes is not None:
        lines.append(
            f"  activation memory  {human_bytes(report.activation_bytes)} "
            f"(saved for backward in training; {_short_method(report.activation_method)})"
        )
    if report.latency_ms is not None:
        n = len(report.latency_runs_ms)
        lines.append(
            f"  latency            {_ms(report.latency_ms)} (median of {n} run{'s' * (n > 1)} "
            f"after {report.warmup} warm-up)"
        )
    else:
        lines.append("  latency            not measured (runs=0)")
    memory = (
        f"{human_bytes(report.peak_memory_bytes)} (growth during one forward)"
        if report.peak_memory_bytes is not None
        else "not measured"
    )
    lines.append(f"  peak memory        {memory}")
    lines += ["", *_table(report, detail), ""]
    lines += [f"  * {note}" for note in report.notes]
    return "\n".join(lines)


def _ms(value: float) -> str:
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f} ms"


def _table(report: ProfileReport, detail: str) -> list[str]:
    header = ("module", "block / cell", "params", "output", "FLOPs", "%", "act. mem")
    body = []
    for row in report.per_module:
        if row.kind == "cell" and detail != "cell":
            continue
        indent = "  " if row.kind == "cell" else ""
        share = 100 * row.flops / report.flops if report.flops else 0.0
        body.append((
            indent + row.name, indent + row.label, human(row.params), _shape_text(row.output_shape),
            human(row.flops), f"{share:.1f}", human_bytes(row.activation_bytes),
        ))  # fmt: skip
    rows = [header, *body]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {2, 4, 5, 6}
    out = []
    for k, r in enumerate(rows):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        out.append("  " + "  ".join(cells).rstrip())
        if k == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return out
