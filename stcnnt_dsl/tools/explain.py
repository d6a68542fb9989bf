"""`explain`: every cell of a block string or architecture with all of its options
resolved, and where each value came from.

The cascade (weakest first): the library default < the spec's `defaults:` < the
topology section (`unet:`, `hrnet:`, `llm:`) < per-level window sizing < the stage's own
entry (`unet.bridge`, `unet.encoder[1]`, ...) < `overrides:` by stage name < the
`input_size` derived per level < options written inline on the cell (`L1[window=4]`).
Stages are named as everywhere else (`encoder.1`, `level0.stage2`): the module path in
the compiled model, the `overrides:` key and the `--stage` of `stcnnt explain`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError, did_you_mean
from ..graph.build import build_graph
from ..graph.nodes import Node
from ..graph.resolve import BlockPlan, resolve_block
from ..language.blockspec import BlockSpec
from ..language.cascade import Layer, Resolved, resolve_cells
from ..language.loading import _is_file, list_architectures
from ..language.options import OPTIONS, format_value, validate_options
from ..language.parser import parse_block
from ..registry import KIND_TO_LETTER

__all__ = [
    "SOURCES",
    "CellExplanation",
    "Explanation",
    "HeadExplanation",
    "StageExplanation",
    "explain",
]

SOURCES = {
    "library": "the library's default",
    "defaults": "the spec's `defaults:` section",
    "topology": "the topology's section (unet:, hrnet:, llm:)",
    "window_sizing": "the topology's window_sizing, per resolution level",
    "stage": "the stage's own entry (its path is shown)",
    "overrides": "an entry of `overrides:` by stage name (its path is shown)",
    "input_size": "derived from the top-level input_size for this level",
    "inline": "written on the cell in the block string",
    "options": "given as keyword options",
    "head": "a key of the head under heads:",
}
_SHOW_PATH = ("stage", "overrides", "head")


@dataclass
class CellExplanation:
    index: int
    token: str  # as written, with inline options: L1[window=4]
    kind: str
    mixer: bool
    in_channels: int | None
    out_channels: int | None
    options: dict[str, Resolved]
    heads: int | None = None  # the head count the layer uses ("auto" resolved)

    @property
    def title(self) -> str:
        """`L1 (local)`."""
        letter = KIND_TO_LETTER[self.kind]
        token = letter if self.kind in ("conv2d", "conv3d") else f"{letter}{int(self.mixer)}"
        return f"{token} ({self.kind})"


@dataclass
class StageExplanation:
    key: str
    path: str
    label: str
    block: str
    in_channels: int | None
    out_channels: int | None
    scale: int
    block_options: dict[str, Resolved]
    cells: list[CellExplanation]


@dataclass
class HeadExplanation:
    name: str  # heads.NAME
    task: str
    module: str
    options: dict[str, Resolved]


@dataclass
class Explanation:
    """What `explain` found: `kind` is "block" or "architecture"."""

    kind: str
    name: str
    topology: str | None
    stages: list[StageExplanation]
    sources: dict[str, str] = field(default_factory=dict)
    heads: list[HeadExplanation] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sources:  # every source a value of this kind of input can come from
            block = ("library", "options", "inline")
            self.sources = {
                k: v for k, v in SOURCES.items()
                if ((k in block) == (self.kind == "block") or k in ("library", "inline"))
                and (k != "head" or self.heads)
            }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "topology": self.topology,
            "sources": self.sources,
            "heads": [
                {
                    "name": h.name,
                    "task": h.task,
                    "module": h.module,
                    "options": _options(h.options, None),
                }
                for h in self.heads
            ],
            "stages": [
                {
                    "key": s.key,
                    "path": s.path,
                    "label": s.label,
                    "block": s.block,
                    "in_channels": s.in_channels,
                    "out_channels": s.out_channels,
                    "scale": s.scale,
                    "block_options": _options(s.block_options, None),
                    "cells": [
                        {
                            "index": c.index,
                            "token": c.token,
                            "title": c.title,
                            "kind": c.kind,
                            "mixer": c.mixer,
                            "in_channels": c.in_channels,
                            "out_channels": c.out_channels,
                            "options": _options(c.options, c.heads),
                            "heads": c.heads,
                        }
                        for c in s.cells
                    ],
                }
                for s in self.stages
            ],
        }

    def format(self, *, columns: int = 4) -> str:
        """Text tables: one per stage, options as rows and cells as columns."""
        lines = []
        title = self.name if self.kind == "block" else f"{self.name} ({self.topology})"
        lines.append(f"{title}: every option of every cell, with (where it came from)")
        for stage in self.stages:
            lines += ["", *_stage_lines(stage, self.topology, columns)]
        for head in self.heads:
            opts = ", ".join(f"{k}={_label(r, self.topology)}" for k, r in head.options.items())
            lines += ["", f"{head.name} ({head.task}, {head.module}): {opts}"]
        lines += ["", "where values come from (weakest first):"]
        for source, meaning in self.sources.items():
            lines.append(f"  {source:<13} {meaning}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _options(values: Mapping[str, Resolved], heads: int | None) -> dict[str, Any]:
    out = {}
    for name, r in values.items():
        entry: dict[str, Any] = {"value": _plain(r.value), "source": r.source}
        if r.path:
            entry["where"] = r.path
        if name == "heads" and r.value == "auto" and heads is not None:
            entry["effective"] = heads
        out[name] = entry
    return out


def _label(r: Resolved, topology: str | None) -> str:
    """The source as shown in the text: its path for stages and overrides."""
    if r.source in _SHOW_PATH and r.path:
        where = r.path.rsplit(".", 1)[0]  # the stage's entry, without the option's name
        return f"{format_value(r.value)} ({where})"
    source = topology if r.source == "topology" and topology else r.source
    return f"{format_value(r.value)} ({source})"


def _cell_value(cell: CellExplanation, name: str, topology: str | None) -> str:
    if name not in cell.options:
        return "-"
    text = _label(cell.options[name], topology)
    if name == "heads" and cell.options[name].value == "auto" and cell.heads is not None:
        text = text.replace("auto", f"auto={cell.heads}", 1)
    return text


def _stage_lines(stage: StageExplanation, topology: str | None, columns: int) -> list[str]:
    head = stage.label
    if stage.in_channels is not None:
        head += f": {stage.block}, {stage.in_channels} -> {stage.out_channels} channels"
        head += f" at 1/{stage.scale} resolution" if stage.scale > 1 else " at full resolution"
        head += f"   [{stage.path}]"
    else:
        head += f": {stage.block}"
    lines = [head]
    blocks = ", ".join(f"{name}={_label(r, topology)}" for name, r in stage.block_options.items())
    lines.append(f"  block options: {blocks}")
    for start in range(0, len(stage.cells), columns):
        group = stage.cells[start : start + columns]
        names = [n for n in OPTIONS if any(n in c.options for c in group)]
        header = ["option"] + [f"cell {c.index}: {c.title}" for c in group]
        rows = [header]
        for name in names:
            rows.append([name] + [_cell_value(c, name, topology) for c in group])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for k, row in enumerate(rows):
            lines.append("  " + "  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip())
            if k == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


# --------------------------------------------------------------------------- building


def _stage(name: str, label: str, path: str, scale: int, plan: BlockPlan) -> StageExplanation:
    cells = [
        CellExplanation(
            index=c.index, token=str(c.spec), kind=c.spec.kind, mixer=c.spec.mixer,
            in_channels=c.geometry.in_channels, out_channels=c.geometry.out_channels,
            options=c.options, heads=getattr(c.geometry, "heads", None),
        )
        for c in plan.cells
    ]  # fmt: skip
    return StageExplanation(
        key=name, path=path, label=f"{name} ({label})" if label != name else name,
        block=str(plan.block), in_channels=plan.in_channels, out_channels=plan.out_channels,
        scale=scale, block_options=plan.options, cells=cells,
    )  # fmt: skip


def _node_stage(node: Node) -> StageExplanation:
    return _stage(node.name, node.label, node.path, node.scale, node.plan)


def _block_only(
    block: BlockSpec, options: Mapping[str, Any], channels: tuple | None
) -> Explanation:
    given = validate_options(options, "options") if options else {}
    layers = [Layer("options", given, "")] if given else []
    if channels is not None:
        plan = resolve_block(block, *channels, layers, where="block", block_path="block")
        one = _stage("block", "block", "block", 1, plan)
        return Explanation("block", str(block), None, [one])
    cascade = resolve_cells(block, layers, "")
    cells = [
        CellExplanation(i, str(cell), cell.kind, cell.mixer, None, None, resolved)
        for i, (cell, resolved) in enumerate(zip(block.cells, cascade.cells, strict=True))
    ]
    one = StageExplanation("block", "block", "block", str(block), None, None, 1,
                           cascade.block, cells)  # fmt: skip
    return Explanation("block", str(block), None, [one])


_EXPRESSION = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*\(")


def _is_architecture(text: str) -> bool:
    stripped = text.strip()
    return (
        stripped in list_architectures()
        or bool(_EXPRESSION.match(stripped))
        or "\n" in stripped
        or ":" in stripped
        or stripped.endswith((".yaml", ".yml", ".json"))
        or _is_file(Path(stripped))  # False for names too long to be files
    )


def explain(
    source: Any,
    *,
    stage: str | None = None,
    in_channels: int | None = None,
    out_channels: int | None = None,
    **options: Any,
) -> Explanation:
    """Resolve every option of every cell of `source`: a block string (`L1G1T1`,
    resolved against the library defaults and keyword `options`; with `in_channels` and
    `out_channels` also the head counts), or anything `load_spec` accepts (every stage
    of the architecture). `stage` keeps one stage of an architecture (`encoder.1`)."""
    is_block = isinstance(source, BlockSpec) or (
        isinstance(source, str) and not _is_architecture(source)
    )
    if is_block:
        if stage is not None:
            raise SpecError(
                f"stage={stage!r} selects a stage of an architecture, but {str(source)!r} is a "
                "block string (one block); drop the stage",
                "stage",
            )
        block = source if isinstance(source, BlockSpec) else parse_block(source)
        channels = None
        if in_channels is not None or out_channels is not None:
            channels = (in_channels or out_channels, out_channels or in_channels)
        return _block_only(block, options, channels)
    if options or in_channels is not None or out_channels is not None:
        raise SpecError(
            "keyword options and channels apply to block strings only; set them in the "
            "architecture (defaults:, the topology, a stage, or inline)",
            "options",
        )
    graph = build_graph(source)
    nodes = [n for n in graph.nodes if getattr(n, "plan", None) is not None]
    heads = [HeadExplanation(h.name, h.task, h.module, dict(h.options)) for h in graph.heads]
    if stage is not None:
        names = [n.name for n in nodes] + [h.name for h in heads]
        if stage not in names:
            raise SpecError(
                f"no stage {stage!r}{did_you_mean(stage, names)}; stages: {', '.join(names)}",
                "stage",
            )
        nodes = [n for n in nodes if n.name == stage]
        heads = [h for h in heads if h.name == stage]
    stages = [_node_stage(n) for n in nodes]
    return Explanation("architecture", graph.name, graph.topology, stages, heads=heads)
