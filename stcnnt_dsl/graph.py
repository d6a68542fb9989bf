"""Diagrams of architectures: Graphviz DOT source (`to_dot`) and rendered files
(`render_graph`).

Two levels of detail: `stage` draws one box per block (its block string, channels and
resolution) with the topology's wiring (down/up-sampling, gated skips, sums, fusion);
`cell` opens every block into its cells (kind, key options, mixer, dense connections).
The diagram is drawn from the plan, so it shows exactly what `build` compiles.
"""

from __future__ import annotations

import itertools
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import graphviz

from .errors import STCNNTError
from .explain import effective_heads
from .options import as_pair
from .plan import Plan, StagePlan, make_plan

__all__ = ["GRAPH_FORMATS", "GraphvizMissingWarning", "render_graph", "to_dot"]

GRAPH_FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_HINT = (
    "install Graphviz to render it (Debian/Ubuntu: apt-get install graphviz; macOS: brew "
    "install graphviz; conda: conda install -c conda-forge graphviz)"
)

_STAGE_STYLE = {"shape": "box", "style": "rounded,filled", "fillcolor": "#dbe9f6"}
_BRIDGE_COLOR = "#f6e3c6"
_CELL_COLORS = {
    "local": "#d6efd6",
    "global": "#e4dcf3",
    "temporal": "#fde2cf",
    "vit": "#f3d9e6",
    "conv2d": "#e8e8e8",
    "conv3d": "#e0e0e0",
}
_OP_STYLE = {"shape": "box", "style": "filled", "fillcolor": "#f2f2f2", "fontsize": "10"}


class GraphvizMissingWarning(UserWarning):
    """Graphviz's `dot` program is not installed: DOT source was written instead."""


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(attrs: dict[str, Any]) -> str:
    if not attrs:
        return ""
    return " [" + ", ".join(f"{k}={_quote(str(v))}" for k, v in attrs.items()) + "]"


class _Dot:
    """A tiny DOT writer that knows how to enter and leave a stage at either detail."""

    def __init__(self, plan: Plan, detail: str, shape: tuple[int, ...] | None) -> None:
        self.plan, self.detail, self.shape = plan, detail, shape
        self.lines: list[str] = []
        self.ends: dict[str, tuple[str, str, str | None]] = {}  # key -> (in, out, cluster)

    def node(self, name: str, label: str, **attrs: Any) -> str:
        self.lines.append(f"  {_quote(name)}{_attrs({'label': label, **attrs})};")
        return name

    def edge(self, src: str, dst: str, *, back: bool = False, **attrs: Any) -> None:
        """An edge from `src` to `dst` (stage keys or node names); `back` draws it
        against the layout's direction (the U-Net's decoder climbs back up)."""
        a_out, b_in = src, dst
        tail_cluster = head_cluster = None
        if src in self.ends:
            _, a_out, tail_cluster = self.ends[src]
        if dst in self.ends:
            b_in, _, head_cluster = self.ends[dst]
        extra: dict[str, Any] = {}
        if back:
            a_out, b_in = b_in, a_out
            tail_cluster, head_cluster = head_cluster, tail_cluster
            extra["dir"] = "back"
        if tail_cluster:
            extra["ltail"] = tail_cluster
        if head_cluster:
            extra["lhead"] = head_cluster
        self.lines.append(f"  {_quote(a_out)} -> {_quote(b_in)}{_attrs({**extra, **attrs})};")

    def same_rank(self, *keys: str) -> None:
        names = [self.ends[key][0] if key in self.ends else key for key in keys]
        if len(names) > 1:
            self.lines.append("  { rank=same; " + "; ".join(_quote(n) for n in names) + "; }")

    def stack(self, *keys: str) -> None:
        """Keep `keys` in one rank, in this order (invisible edges fix the order)."""
        self.same_rank(*keys)
        names = [self.ends[key][0] if key in self.ends else key for key in keys]
        for a, b in itertools.pairwise(names):
            self.lines.append(f"  {_quote(a)} -> {_quote(b)} [style=invis];")

    def where(self, scale: int, channels: int) -> str:
        if self.shape is None:
            return f"{channels} ch, 1/{scale} res" if scale > 1 else f"{channels} ch, full res"
        _, t, _, h, w = self.shape
        return f"{channels} x {h // scale} x {w // scale} (T={t})"

    def stage(self, stage: StagePlan, *, fill: str | None = None) -> str:
        size = self.where(stage.scale, stage.out_channels)
        title = f"{stage.key}\n{stage.block}\n{stage.in_channels} -> {size}"
        color = fill or _STAGE_STYLE["fillcolor"]
        if self.detail == "stage" or not stage.block.cells:
            self.node(stage.key, title, **{**_STAGE_STYLE, "fillcolor": color})
            self.ends[stage.key] = (stage.key, stage.key, None)
            return stage.key
        cluster = "cluster_" + stage.key.replace(".", "_")
        self.lines.append(f"  subgraph {_quote(cluster)} {{")
        self.lines.append(
            f'    label={_quote(title)}; style="rounded,filled"; fillcolor={_quote(color)};'
        )
        names = []
        dense = False
        for i, (cell, opts) in enumerate(zip(stage.block.cells, stage.cell_options(), strict=True)):
            name = f"{stage.key}.cells.{i}"
            cin = stage.in_channels if i == 0 else stage.out_channels
            label = _cell_label(cell, opts, cin, stage.out_channels)
            style = {"shape": "box", "style": "filled", "fontsize": "10"}
            attrs = _attrs({"label": label, **style, "fillcolor": _CELL_COLORS[cell.kind]})
            self.lines.append(f"    {_quote(name)}{attrs};")
            names.append(name)
            dense = bool(opts.get("dense"))
        for a, b in itertools.pairwise(names):
            self.lines.append(f"    {_quote(a)} -> {_quote(b)};")
        if dense:  # cell k takes the sum of the outputs of cells 0..k-1
            for k in range(2, len(names)):
                for j in range(k - 1):
                    edge = f"{_quote(names[j])} -> {_quote(names[k])}"
                    self.lines.append(f"    {edge} [style=dashed, color=gray40];")
        self.lines.append("  }")
        self.ends[stage.key] = (names[0], names[-1], cluster)
        return stage.key

    def source(self, title: str) -> str:
        head = [
            "digraph stcnnt {",
            f"  label={_quote(title)}; labelloc=t; fontsize=14; fontname=Helvetica;",
            "  compound=true; newrank=true; nodesep=0.35; ranksep=0.4;",
            "  node [fontname=Helvetica, fontsize=11]; edge [fontname=Helvetica, fontsize=9];",
        ]
        return "\n".join([*head, *self.lines, "}"]) + "\n"


def _cell_label(cell: Any, opts: dict[str, Any], cin: int, cout: int) -> str:
    kind = cell.kind
    lines = [f"{cell.token}  {kind}" + (" + mixer" if cell.mixer else "")]
    if kind in ("local", "global", "vit"):
        if kind != "local" and opts.get("grid") is not None:
            size = f"grid {_size(opts['grid'])}"
        else:
            size = f"window {_size(opts['window'])}"
        if kind != "vit":
            size += f", patch {_size(opts['patch'])}"
        lines.append(size)
    if kind == "temporal":
        extra = [f"qk_stride {opts['qk_stride']}"] if opts.get("qk_stride", 1) > 1 else []
        if opts.get("causal"):
            extra.append("causal")
        if extra:
            lines.append(", ".join(extra))
    if "heads" in opts:
        lines.append(
            f"heads {effective_heads(kind, opts, cout)}, qkv {opts['qkv']}, {opts['cell']}"
        )
    lines.append(f"{opts['norm']}" + (f", {cin}->{cout} ch" if cin != cout else ""))
    return "\n".join(lines)


def _size(value: Any) -> str:
    h, w = as_pair(value)
    return f"{h}" if h == w else f"{h}x{w}"


# --------------------------------------------------------------------------- topologies


def _io(d: _Dot, name: str, label: str) -> str:
    return d.node(name, label, shape="oval", style="filled", fillcolor="#ffffff")


def _input_label(d: _Dot) -> str:
    c = d.plan.spec.in_channels
    if d.shape is None:
        return f"input\n[B, T, {c}, H, W]"
    return "input\n" + "x".join(map(str, d.shape))


def _output_label(d: _Dot, channels: int) -> str:
    if d.shape is None:
        return f"output\n[B, T, {channels}, H, W]"
    b, t, _, h, w = d.shape
    return f"output\n{b}x{t}x{channels}x{h}x{w}"


def _unet(d: _Dot) -> None:
    plan = d.plan
    body = plan.spec.unet
    n = body.num_levels
    down = "patch merge" if body.down == "merge" else "2x2 mean"
    up = "bilinear + 3x3 conv" if body.up == "conv" else "bilinear"
    _io(d, "input", _input_label(d))
    for i in range(n):
        d.stage(plan.stage(f"encoder.{i}"))
    d.stage(plan.stage("bridge"), fill=_BRIDGE_COLOR)
    for i in range(n):
        d.stage(plan.stage(f"decoder.{i}"))
        d.node(f"up.{i}", f"up x2\n{up}", **_OP_STYLE)
        if body.gate:
            d.node(f"gate.{i}", "attention\ngate", shape="diamond", style="filled",
                   fillcolor="#fff3b0", fontsize="9")  # fmt: skip
        d.node(f"cat.{i}", "concat", shape="circle", fontsize="9", width="0.5", fixedsize="true")
    _io(d, "output", _output_label(d, plan.out_channels))
    d.edge("input", "encoder.0")
    for i in range(n):
        nxt = f"encoder.{i + 1}" if i + 1 < n else "bridge"
        d.edge(f"encoder.{i}", nxt, label=f" down x2\n {down}")
    # Level i's encoder, gate, concat and decoder share a row: the diagram is a U.
    for i in reversed(range(n)):
        src = "bridge" if i == n - 1 else f"decoder.{i + 1}"
        d.edge(src, f"up.{i}", back=True)
        if body.gate:
            d.edge(f"encoder.{i}", f"gate.{i}", label="skip", style="dashed")
            d.edge(f"up.{i}", f"gate.{i}", back=True, label="g", fontsize="8")
            d.edge(f"gate.{i}", f"cat.{i}")
        else:
            d.edge(f"encoder.{i}", f"cat.{i}", label="skip", style="dashed")
        d.edge(f"up.{i}", f"cat.{i}", back=True)
        d.edge(f"cat.{i}", f"decoder.{i}")
        row = [f"encoder.{i}", *([f"gate.{i}"] if body.gate else []), f"cat.{i}", f"decoder.{i}"]
        d.same_rank(*row, *(["output"] if i == 0 else []))
    d.edge("decoder.0", "output")


def _hrnet(d: _Dot) -> None:
    plan = d.plan
    body = plan.spec.hrnet
    n, s = body.num_levels, plan.extras["stages"]
    _io(d, "input", _input_label(d))
    columns: list[list[str]] = []
    for j in range(s):
        column = []
        for i in range(min(j, n - 1) + 1):
            column.append(d.stage(plan.stage(f"level{i}.stage{j}")))
        columns.append(column)
    d.edge("input", "level0.stage0")
    resample = "block" if body.resample == "block" else None
    for j in range(1, s):
        for i in range(min(j, n - 1) + 1):
            for k in range(j):
                if i <= min(k, n - 1):
                    style = {} if k == j - 1 else {"style": "dashed", "color": "gray50"}
                    d.edge(f"level{i}.stage{k}", f"level{i}.stage{j}", **style)
            for a in range(i):
                steps = i - a
                label = f"down x{2**steps}" + (" (block)" if resample else "")
                d.edge(f"level{a}.stage{j - 1}", f"level{i}.stage{j}", label=label,
                       color="#2b6cb0", fontcolor="#2b6cb0")  # fmt: skip
    last = [f"level{i}.stage{s - 1}" if s - 1 >= i else f"level{i}.stage{i}" for i in range(n)]
    for k in range(n):
        d.node(f"fuse.{k}", f"fuse\nlevel {k}", shape="circle", fontsize="9", width="0.6",
               fixedsize="true", style="filled", fillcolor="#fff3b0")  # fmt: skip
        for i in range(n):
            if i == k:
                d.edge(last[i], f"fuse.{k}")
            else:
                what = f"down x{2 ** (k - i)}" if i < k else f"up x{2 ** (i - k)}"
                d.edge(last[i], f"fuse.{k}", label=what, color="gray40", fontsize="8")
        d.stage(plan.stage(f"output{k}"), fill=_BRIDGE_COLOR)
        d.edge(f"fuse.{k}", f"output{k}")
    d.node("concat", "up to full res\n+ concat", shape="circle", fontsize="9", width="0.9",
           fixedsize="true")  # fmt: skip
    for k in range(n):
        label = "" if k == 0 else f"up x{2**k}\n(bilinear + conv)"
        d.edge(f"output{k}", "concat", label=label)
    _io(d, "output", _output_label(d, plan.out_channels))
    d.edge("concat", "output")
    for column in columns:
        d.stack(*column)
    d.stack(*[f"fuse.{k}" for k in range(n)])
    d.stack(*[f"output{k}" for k in range(n)])


def _llm(d: _Dot) -> None:
    plan = d.plan
    dense = plan.spec.llm.dense_skips
    _io(d, "input", _input_label(d))
    keys = [d.stage(stage) for stage in plan.stages]
    d.edge("input", keys[0])
    for k in range(1, len(keys)):
        if dense and k >= 2:
            d.node(f"sum.{k}", "+", shape="circle", width="0.3", fixedsize="true")
            for j in range(k):
                style = {} if j == k - 1 else {"style": "dashed", "color": "gray50"}
                d.edge(keys[j], f"sum.{k}", **style)
            d.edge(f"sum.{k}", keys[k])
        else:
            d.edge(keys[k - 1], keys[k])
    _io(d, "output", _output_label(d, plan.out_channels))
    d.edge(keys[-1], "output")


_DRAW = {"unet": _unet, "hrnet": _hrnet, "llm": _llm}


def _title(plan: Plan) -> str:
    spec = plan.spec
    return f"{spec.name}" + (f": {spec.description}" if spec.description else "")


def to_dot(
    source: Any, *, detail: str = "stage", input_shape: Sequence[int] | str | None = None
) -> str:
    """Graphviz DOT source of an architecture (anything `load_spec` accepts, or a
    built `Backbone`). `detail`: "stage" (one box per block) or "cell" (every cell).
    With `input_shape` (B, T, C, H, W) boxes show tensor sizes instead of scales."""
    from .backbones import Backbone
    from .shapes import check, parse_shape

    if detail not in ("stage", "cell"):
        raise STCNNTError(f"detail must be 'stage' or 'cell', got {detail!r}")
    plan = source.plan if isinstance(source, Backbone) else make_plan(source)
    shape = None
    if input_shape is not None:
        shape = parse_shape(input_shape)
        check(plan, shape)
    d = _Dot(plan, detail, shape)
    d.lines.append(f"  rankdir={'LR' if plan.spec.topology == 'hrnet' else 'TB'};")
    _DRAW[plan.spec.topology](d)
    return d.source(_title(plan))


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
    if not path.parent.exists():
        raise STCNNTError(f"cannot write {path}: the folder {path.parent} does not exist")
    dot_source = to_dot(source, detail=detail, input_shape=input_shape)
    if fmt == "dot":
        path.write_text(dot_source, encoding="utf-8")
        return path
    program = shutil.which("dot")
    if program is None:
        fallback = path.with_suffix(".dot")
        fallback.write_text(dot_source, encoding="utf-8")
        warnings.warn(
            f"Graphviz's `dot` program was not found, so {path.name} was not rendered; the "
            f"DOT source is in {fallback}. To render: {INSTALL_HINT}, then run "
            f"`dot -T{fmt} {fallback} -o {path}`",
            GraphvizMissingWarning,
            stacklevel=2,
        )
        return fallback
    try:
        data = graphviz.Source(dot_source).pipe(format=fmt, quiet=True)
    except graphviz.CalledProcessError as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else ""
        raise RuntimeError(f"dot failed (exit {err.returncode}): {stderr.strip()}") from None
    path.write_bytes(data)
    return path
