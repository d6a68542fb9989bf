"""Diagrams of architectures: Graphviz DOT source (`to_dot`) and rendered files
(`render_graph`), drawn from the model graph, so they show exactly what `build` compiles.

Two levels of detail: `stage` draws one box per block (its block string, channels and
resolution) with the wiring (resampling, gates, sums, concatenations); `cell` opens every
block into its cells (kind, key options, mixer, dense connections). The topology only
gives layout hints (`ModelGraph.layout`): which nodes share a row, which edges climb
back, which one-in one-out nodes are drawn as labelled edges.
"""

from __future__ import annotations

import itertools
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import graphviz

from ..errors import STCNNTError
from ..graph.build import build_graph
from ..graph.model import ModelGraph
from ..graph.nodes import INPUT, BlockNode, ConvUnitNode, GateNode, MergeNode, Node, ResampleNode
from ..graph.shapes import checked
from ..language.options import as_pair
from ..registry import CELLS

__all__ = ["GRAPH_FORMATS", "GraphvizMissingWarning", "render_graph", "to_dot"]

GRAPH_FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_HINT = (
    "install Graphviz to render it (Debian/Ubuntu: apt-get install graphviz; macOS: brew "
    "install graphviz; conda: conda install -c conda-forge graphviz)"
)

_STAGE_STYLE = {"shape": "box", "style": "rounded,filled", "fillcolor": "#dbe9f6"}
_DEEPEST_COLOR = "#f6e3c6"
_OP_STYLE = {"shape": "box", "style": "filled", "fillcolor": "#f2f2f2", "fontsize": "10"}
_UNIT_STYLE = {"shape": "box", "style": "filled", "fillcolor": "#e3ecfa", "fontsize": "10"}
_GATE_STYLE = {"shape": "diamond", "style": "filled", "fillcolor": "#fff3b0", "fontsize": "9"}
_MERGE_STYLE = {"shape": "circle", "fontsize": "9", "fixedsize": "true"}
_IO_STYLE = {"shape": "oval", "style": "filled", "fillcolor": "#ffffff"}
_HEAD_STYLE = {"shape": "box", "style": "rounded,filled", "fillcolor": "#d9f2e6"}
OUTPUT = "output"


class GraphvizMissingWarning(UserWarning):
    """Graphviz's `dot` program is not installed: DOT source was written instead."""


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(attrs: dict[str, Any]) -> str:
    if not attrs:
        return ""
    return " [" + ", ".join(f"{k}={_quote(str(v))}" for k, v in attrs.items()) + "]"


def _size(value: Any) -> str:
    h, w = as_pair(value)
    return f"{h}" if h == w else f"{h}x{w}"


def _cell_label(cell: Any, cin: int, cout: int) -> str:
    geom, opts = cell.geometry, {k: r.value for k, r in cell.options.items()}
    kind = geom.kind
    lines = [f"{cell.spec.token}  {kind}" + (" + mixer" if geom.mixer else "")]
    if geom.family == "spatial":
        size = (
            f"grid {_size(geom.grid)}" if geom.grid is not None else f"window {_size(geom.window)}"
        )
        if geom.patch is not None:
            size += f", patch {_size(geom.patch)}"
        lines.append(size)
    if kind == "temporal":
        extra = [f"qk_stride {opts['qk_stride']}"] if opts["qk_stride"] > 1 else []
        if opts["causal"]:
            extra.append("causal")
        if extra:
            lines.append(", ".join(extra))
    if geom.family in ("spatial", "temporal"):
        lines.append(
            f"heads {geom.heads}, qkv {opts['qkv']}" + (f", {opts['cell']}" if geom.mixer else "")
        )
    lines.append(f"{opts['norm']}" + (f", {cin}->{cout} ch" if cin != cout else ""))
    return "\n".join(lines)


class _Dot:
    """DOT lines for one graph; knows where each node is entered and left (a cell
    cluster is entered at its first cell and left at its last)."""

    def __init__(self, graph: ModelGraph, detail: str, shape: tuple[int, ...] | None) -> None:
        self.graph, self.detail, self.shape = graph, detail, shape
        self.lines: list[str] = []
        self.ends: dict[str, tuple[str, str, str | None]] = {}  # name -> (in, out, cluster)
        self.deepest = max((n.scale for n in graph.stages), default=1)

    def node(self, name: str, label: str, **attrs: Any) -> None:
        self.lines.append(f"  {_quote(name)}{_attrs({'label': label, **attrs})};")
        self.ends[name] = (name, name, None)

    def where(self, scale: int, channels: int) -> str:
        if self.shape is None:
            return f"{channels} ch, 1/{scale} res" if scale > 1 else f"{channels} ch, full res"
        _, t, _, h, w = self.shape
        return f"{channels} x {h // scale} x {w // scale} (T={t})"

    def block(self, node: BlockNode) -> None:
        plan = node.plan
        size = self.where(node.scale, node.out_channels)
        title = f"{node.name}\n{plan.block}\n{plan.in_channels} -> {size}"
        color = (
            _DEEPEST_COLOR
            if node.scale == self.deepest and node.scale > 1
            else _STAGE_STYLE["fillcolor"]
        )
        if node.meta.get("stage") is None and node.name.endswith(".output"):
            color = _DEEPEST_COLOR
        if self.detail == "stage":
            self.node(node.name, title, **{**_STAGE_STYLE, "fillcolor": color})
            return
        cluster = "cluster_" + node.name.replace(".", "_")
        self.lines.append(f"  subgraph {_quote(cluster)} {{")
        self.lines.append(
            f'    label={_quote(title)}; style="rounded,filled"; fillcolor={_quote(color)};'
        )
        names = []
        for cell in plan.cells:
            name = f"{node.name}.cells.{cell.index}"
            cin = plan.in_channels if cell.index == 0 else plan.out_channels
            attrs = {"label": _cell_label(cell, cin, plan.out_channels), "shape": "box",
                     "style": "filled", "fontsize": "10",
                     "fillcolor": CELLS[cell.spec.kind].color}  # fmt: skip
            self.lines.append(f"    {_quote(name)}{_attrs(attrs)};")
            names.append(name)
        for a, b in itertools.pairwise(names):
            self.lines.append(f"    {_quote(a)} -> {_quote(b)};")
        if plan.dense:  # cell k takes the sum of the outputs of cells 0..k-1
            for k in range(2, len(names)):
                for j in range(k - 1):
                    edge = f"{_quote(names[j])} -> {_quote(names[k])}"
                    self.lines.append(f"    {edge} [style=dashed, color=gray40];")
        self.lines.append("  }")
        self.ends[node.name] = (names[0], names[-1], cluster)

    def other(self, node: Node) -> None:
        if isinstance(node, GateNode):
            self.node(node.name, "attention\ngate", **_GATE_STYLE)
        elif isinstance(node, MergeNode):
            label = "concat" if node.op == "cat" else "+"
            width = "0.6" if node.op == "cat" else "0.35"
            self.node(node.name, label, **_MERGE_STYLE, width=width)
        elif isinstance(node, ConvUnitNode):
            kernel = "3x3x3" if node.temporal else "3x3"
            text = f"{node.name}\n{node.label}: 2 x {kernel} conv\n{node.out_channels} ch"
            self.node(node.name, text, **_UNIT_STYLE)
        elif isinstance(node, ResampleNode):
            direction = "down" if node.down else "up"
            text = f"{direction} x{2**node.steps}\n{node.label}"
            if node.op in ("merge", "pool", "upconv", "upsample") and node.label.startswith(
                direction
            ):
                text = node.label
            self.node(node.name, text, **_OP_STYLE)

    def edge(self, src: str, dst: str, *, back: bool = False, **attrs: Any) -> None:
        a_out, b_in = self.ends[src][1], self.ends[dst][0]
        tail, head = self.ends[src][2], self.ends[dst][2]
        extra: dict[str, Any] = {}
        if back:
            a_out, b_in, tail, head = b_in, a_out, head, tail
            extra["dir"] = "back"
        if tail:
            extra["ltail"] = tail
        if head:
            extra["lhead"] = head
        self.lines.append(f"  {_quote(a_out)} -> {_quote(b_in)}{_attrs({**extra, **attrs})};")

    def row(self, names: Sequence[str]) -> None:
        """Keep `names` in one rank, in this order."""
        firsts = [self.ends[n][0] for n in names if n in self.ends]
        if len(firsts) > 1:
            self.lines.append("  { rank=same; " + "; ".join(_quote(n) for n in firsts) + "; }")
            for a, b in itertools.pairwise(firsts):
                self.lines.append(f"  {_quote(a)} -> {_quote(b)} [style=invis];")

    def source(self, title: str) -> str:
        head = [
            "digraph stcnnt {",
            f"  label={_quote(title)}; labelloc=t; fontsize=14; fontname=Helvetica;",
            "  compound=true; newrank=true; nodesep=0.35; ranksep=0.4;",
            "  node [fontname=Helvetica, fontsize=11]; edge [fontname=Helvetica, fontsize=9];",
        ]
        return "\n".join([*head, *self.lines, "}"]) + "\n"


def _draw(graph: ModelGraph, d: _Dot) -> None:
    layout = graph.layout
    d.lines.append(f"  rankdir={layout.rankdir};")
    c = graph.in_channels
    size = "x".join(map(str, d.shape)) if d.shape else f"[B, T, {c}, H, W]"
    d.node(INPUT, f"input\n{size}", **_IO_STYLE)
    for node in graph.nodes:
        if node.name in layout.as_edges:
            continue
        if isinstance(node, BlockNode):
            d.block(node)
        else:
            d.other(node)
    if d.shape is None:
        out = f"[B, T, {graph.out_channels}, H, W]"
    else:
        b, t, _, h, w = d.shape
        out = f"{b}x{t}x{graph.out_channels}x{h}x{w}"
    d.node(OUTPUT, f"output\n{out}", **_IO_STYLE)

    def start(name: str) -> tuple[str, str]:
        """The drawn node an edge from `name` leaves, and its label."""
        if name in layout.as_edges:
            node = graph.node(name)
            src, label = start(node.inputs[0])
            return src, node.label if not label else f"{label}, {node.label}"
        return name, ""

    for node in graph.nodes:
        if node.name in layout.as_edges:
            continue
        for i, name in enumerate(node.inputs):
            src, label = start(name)
            attrs: dict[str, Any] = {}
            if label:
                attrs.update(label=f" {label}", fontsize="8", color="#2b6cb0", fontcolor="#2b6cb0")
            if isinstance(node, GateNode) and i == 1:
                attrs.update(label="skip", style="dashed")
            elif (
                isinstance(node, MergeNode)
                and node.op == "cat"
                and graph.topology in ("unet", "mixed_unetr")
                and i == 0
            ):
                attrs.setdefault("style", "solid")
            back = node.name in layout.back or src in layout.back
            d.edge(src, node.name, back=back, **attrs)
    src, label = start(graph.output)
    d.edge(src, OUTPUT, **({"label": f" {label}"} if label else {}))
    for head in graph.heads:  # a head reads the output, or the features
        if d.shape is not None:
            size = "x".join(map(str, head.output_shape(d.shape)))
        elif head.task == "classification":
            frames = "T, " if head.args.get("per_frame") else ""
            size = f"[B, {frames}{head.out_channels}]"
        else:
            size = f"[B, T, {head.out_channels}, H, W]"
        d.node(head.name, f"{head.name}\n{head.label}\n-> {size}", **_HEAD_STYLE)
        if head.reads == "output":
            d.edge(OUTPUT, head.name)
        else:
            for feature in head.features:
                d.edge(feature.name, head.name, style="dashed", color="gray40")
    for row in layout.rows:
        names = list(row)
        if graph.output in names:
            names.append(OUTPUT)
        d.row(names)


def _title(graph: ModelGraph) -> str:
    spec = graph.spec
    return f"{spec.name}" + (f": {spec.description}" if spec.description else "")


def to_dot(
    source: Any, *, detail: str = "stage", input_shape: Sequence[int] | str | None = None
) -> str:
    """Graphviz DOT source of an architecture (anything `load_spec` accepts, a
    `ModelGraph`, or a built model). `detail`: "stage" (one box per block) or "cell"
    (every cell). With `input_shape` (B, T, C, H, W) boxes show tensor sizes."""
    if detail not in ("stage", "cell"):
        raise STCNNTError(f"detail must be 'stage' or 'cell', got {detail!r}")
    graph = getattr(source, "graph", None)
    graph = graph if isinstance(graph, ModelGraph) else build_graph(source)
    shape = None
    if input_shape is not None:
        graph, shape = checked(graph, input_shape)
    d = _Dot(graph, detail, shape)
    _draw(graph, d)
    return d.source(_title(graph))


def render_dot(dot_source: str, fmt: str) -> bytes:
    """Run Graphviz's `dot` on DOT source; raises `FileNotFoundError` without it."""
    if shutil.which("dot") is None:
        raise FileNotFoundError("dot")
    try:
        return graphviz.Source(dot_source).pipe(format=fmt, quiet=True)
    except graphviz.CalledProcessError as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else ""
        raise RuntimeError(f"dot failed (exit {err.returncode}): {stderr.strip()}") from None


def render_graph(
    source: Any,
    path: str | Path,
    *,
    detail: str = "stage",
    input_shape: Sequence[int] | str | None = None,
) -> Path:
    """Draw an architecture to `path`; the format follows the suffix (.svg, .png, .pdf,
    or .dot/.gv for the source). Returns the path written. Without Graphviz's `dot`
    program, writes the DOT source next to `path` (suffix .dot), warns with
    `GraphvizMissingWarning` saying how to install it, and returns that path."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt == "gv":
        fmt = "dot"
    if fmt not in GRAPH_FORMATS:
        raise STCNNTError(
            f"cannot tell the diagram format from {path.name!r}; end the file name with "
            + ", ".join(f".{f}" for f in GRAPH_FORMATS)
        )
    _check_writable(path)
    dot_source = to_dot(source, detail=detail, input_shape=input_shape)
    if fmt == "dot":
        _write(path, dot_source.encode("utf-8"))
        return path
    try:
        data = render_dot(dot_source, fmt)
    except FileNotFoundError:
        fallback = path.with_suffix(".dot")
        _write(fallback, dot_source.encode("utf-8"))
        warnings.warn(
            f"Graphviz's `dot` program was not found, so {path.name} was not rendered; the "
            f"DOT source is in {fallback}. To render: {INSTALL_HINT}, then run "
            f"`dot -T{fmt} {fallback} -o {path}`",
            GraphvizMissingWarning,
            stacklevel=2,
        )
        return fallback
    _write(path, data)
    return path


def _check_writable(path: Path) -> None:
    """A clear error before any work for a path that cannot be written."""
    if path.is_dir():
        raise STCNNTError(f"cannot write {path}: it is a folder; give a file name")
    if not path.parent.exists():
        raise STCNNTError(f"cannot write {path}: the folder {path.parent} does not exist")


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as err:
        raise STCNNTError(f"cannot write {path}: {err.strerror or err}") from None
