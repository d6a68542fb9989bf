"""`explain`: every cell of a block string or architecture with all of its options
resolved, and where each value came from.

The cascade (weakest first): the library default < the spec's `defaults:` < the
topology section (`unet:`, `hrnet:`, `llm:`) < the stage's own entry (`unet.bridge`,
`unet.encoder[1]`, ...) < `input_size` derived per level < options written inline on the
cell (`L1[window=4]`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blockspec import BlockSpec
from .options import (
    BLOCK_OPTION_NAMES,
    OPTIONS,
    Resolved,
    format_value,
    options_for_kind,
    resolve_options,
    validate_options,
)
from .plan import StagePlan, make_plan

__all__ = ["CellExplanation", "Explanation", "StageExplanation", "effective_heads", "explain"]

_SOURCES = {
    "default": "the library's default",
    "defaults": "the spec's `defaults:` section",
    "topology": "the topology's section (unet:, hrnet:, llm:)",
    "stage": "the stage's own entry (its path is shown)",
    "input_size": "derived from the top-level input_size for this level",
    "inline": "written on the cell in the block string",
    "options": "given as keyword options",
}


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
class Explanation:
    """What `explain` found: `kind` is "block" or "architecture"."""

    kind: str
    name: str
    topology: str | None
    stages: list[StageExplanation]
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sources:
            skip = {"options"} if self.kind == "architecture" else {
                "defaults", "topology", "stage", "input_size"}  # fmt: skip
            self.sources = {k: v for k, v in _SOURCES.items() if k not in skip}

    def to_dict(self) -> dict[str, Any]:
        def opts(values: Mapping[str, Resolved], where: str) -> dict[str, Any]:
            return {
                name: {
                    "value": _plain(r.value),
                    "source": r.source,
                    **({"where": where} if r.source == "stage" else {}),
                }
                for name, r in values.items()
            }

        return {
            "kind": self.kind,
            "name": self.name,
            "topology": self.topology,
            "sources": self.sources,
            "stages": [
                {
                    "key": s.key,
                    "path": s.path,
                    "label": s.label,
                    "block": s.block,
                    "in_channels": s.in_channels,
                    "out_channels": s.out_channels,
                    "scale": s.scale,
                    "block_options": opts(s.block_options, s.path),
                    "cells": [
                        {
                            "index": c.index,
                            "token": c.token,
                            "kind": c.kind,
                            "mixer": c.mixer,
                            "in_channels": c.in_channels,
                            "out_channels": c.out_channels,
                            "options": opts(c.options, s.path),
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
        lines += ["", "where values come from (weakest first):"]
        for source, meaning in self.sources.items():
            lines.append(f"  {_SOURCE_LABEL.get(source, source):<11} {meaning}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


_SOURCE_LABEL = {"default": "library", "topology": "topology"}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _label(r: Resolved, stage_path: str, topology: str | None) -> str:
    source = r.source
    if source == "default":
        source = "library"
    elif source == "stage":
        source = stage_path
    elif source == "topology" and topology:
        source = topology
    return f"{format_value(r.value)} ({source})"


def _cell_value(cell: CellExplanation, name: str, path: str, topology: str | None) -> str:
    if name not in cell.options:
        return "-"
    text = _label(cell.options[name], path, topology)
    if name == "heads" and cell.options[name].value == "auto" and cell.heads is not None:
        text = text.replace("auto", f"auto={cell.heads}", 1)
    return text


def effective_heads(kind: str, options: Mapping[str, Any], channels: int) -> int | None:
    """The head count an attention cell with `channels` output channels uses ("auto":
    32 features per head, as the layers resolve it); None for conv cells."""
    from .nn.functional import auto_heads
    from .options import as_pair

    if "heads" not in options:
        return None
    if options["heads"] != "auto":
        return int(options["heads"])
    if kind == "temporal" or (kind == "vit" and options.get("grid") is not None):
        return auto_heads(channels)
    h, w = as_pair(options["window"] if kind == "vit" else options["patch"])
    return auto_heads(channels * h * w)


def _stage_lines(stage: StageExplanation, topology: str | None, columns: int) -> list[str]:
    head = stage.label
    if stage.in_channels is not None:
        head += f": {stage.block}, {stage.in_channels} -> {stage.out_channels} channels"
        head += f" at 1/{stage.scale} resolution" if stage.scale > 1 else " at full resolution"
        head += f"   [{stage.path}]"
    else:
        head += f": {stage.block}"
    lines = [head]
    blocks = ", ".join(
        f"{name}={_label(r, stage.path, topology)}" for name, r in stage.block_options.items()
    )
    lines.append(f"  block options: {blocks}")
    for start in range(0, len(stage.cells), columns):
        group = stage.cells[start : start + columns]
        names = [n for n in OPTIONS if any(n in c.options for c in group)]
        header = ["option"] + [f"cell {c.index}: {c.token}" for c in group]
        rows = [header]
        for name in names:
            rows.append([name] + [_cell_value(c, name, stage.path, topology) for c in group])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for k, row in enumerate(rows):
            lines.append("  " + "  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip())
            if k == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


# --------------------------------------------------------------------------- building


def _cells(
    block: BlockSpec, layers: list, cin: int | None, cout: int | None
) -> tuple[dict[str, Resolved], list[CellExplanation]]:
    cells = []
    block_options: dict[str, Resolved] = {}
    for i, cell in enumerate(block.cells):
        resolved = resolve_options(options_for_kind(cell.kind), [*layers, ("inline", cell.options)])
        if i == 0:
            block_options = resolve_options(BLOCK_OPTION_NAMES, [*layers, ("inline", cell.options)])
        cells.append(
            CellExplanation(
                index=i,
                token=str(cell),
                kind=cell.kind,
                mixer=cell.mixer,
                in_channels=(cin if i == 0 else cout) if cin is not None else None,
                out_channels=cout,
                options=resolved,
                heads=None
                if cout is None
                else effective_heads(cell.kind, {k: r.value for k, r in resolved.items()}, cout),
            )
        )
    return block_options, cells


def _stage(stage: StagePlan) -> StageExplanation:
    block_options, cells = _cells(
        stage.block, list(stage.layers), stage.in_channels, stage.out_channels
    )
    return StageExplanation(
        key=stage.key,
        path=stage.path,
        label=stage.key + (f" ({stage.label})" if stage.label != stage.key else ""),
        block=str(stage.block),
        in_channels=stage.in_channels,
        out_channels=stage.out_channels,
        scale=stage.scale,
        block_options=block_options,
        cells=cells,
    )


_EXPRESSION = re.compile(r"^\s*[a-z_][a-z0-9_]*\s*\(")


def _is_architecture(text: str) -> bool:
    from .spec import _is_file, list_architectures

    stripped = text.strip()
    return (
        stripped in list_architectures()
        or bool(_EXPRESSION.match(stripped))
        or "\n" in stripped
        or ":" in stripped
        or stripped.endswith((".yaml", ".yml", ".json"))
        or _is_file(Path(stripped))  # False for names too long to be files
    )


def explain(source: Any, *, stage: str | None = None, **options: Any) -> Explanation:
    """Resolve every option of every cell of `source`: a block string (`L1G1T1`,
    resolved against the library defaults and keyword `options`), or anything
    `load_spec` accepts (every stage of the architecture). `stage` keeps one stage
    (its key, like `encoder.1` or `bridge`)."""
    from .errors import SpecError, did_you_mean
    from .language import parse_block

    if isinstance(source, (str, BlockSpec)) and not (
        isinstance(source, str) and _is_architecture(source)
    ):
        block = source if isinstance(source, BlockSpec) else parse_block(source)
        layers = [("options", validate_options(options, "options"))] if options else []
        block_options, cells = _cells(block, layers, None, None)
        one = StageExplanation("block", "block", "block", str(block), None, None, 1,
                               block_options, cells)  # fmt: skip
        return Explanation("block", str(block), None, [one])
    if options:
        raise SpecError(
            "keyword options apply to block strings only; set them in the architecture "
            "(defaults:, the topology, a stage, or inline)",
            "options",
        )
    plan = make_plan(source)
    stages = list(plan.stages)
    if stage is not None:
        keys = [s.key for s in stages]
        if stage not in keys:
            raise SpecError(
                f"no stage {stage!r}{did_you_mean(stage, keys)}; stages: {', '.join(keys)}",
                "stage",
            )
        stages = [s for s in stages if s.key == stage]
    return Explanation(
        "architecture", plan.spec.name, plan.spec.topology, [_stage(s) for s in stages]
    )
