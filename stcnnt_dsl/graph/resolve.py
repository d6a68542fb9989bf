"""Resolved blocks: the language's option cascade (`stcnnt_dsl.language.cascade`)
turned into cells with geometry, and the checks that need the whole model: every option
set is read by some cell, causal attention stays causal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from ..language.blockspec import BlockSpec, CellSpec
from ..language.cascade import Layer, Resolved, resolve_cells
from ..language.options import BLOCK_OPTION_NAMES, OPTIONS, validate_options
from ..language.parser import parse_block
from ..machine import SDPA_MIN_TOKENS_CPU
from ..registry import CONV3D, NORMS, TEMPORAL, cell_kinds
from .geometry import CellGeometry, cell_geometry
from .rules import SizeRule, check_size

__all__ = [
    "BlockPlan",
    "Layer",
    "ResolvedCell",
    "check_causal",
    "check_options_read",
    "resolve_block",
    "standalone_block",
]


@dataclass(frozen=True)
class ResolvedCell:
    """A cell of a block: as written (`spec`), its geometry, and every option it may
    read with its value and source (`options`)."""

    index: int
    spec: CellSpec
    geometry: CellGeometry
    options: dict[str, Resolved]

    @property
    def reads(self) -> frozenset[str]:
        return self.geometry.reads()


@dataclass(frozen=True)
class BlockPlan:
    """A block with its cells resolved: what `nn.Block` is built from, and what the
    counters, `explain` and the diagram read."""

    block: BlockSpec
    in_channels: int
    out_channels: int
    cells: tuple[ResolvedCell, ...]
    options: dict[str, Resolved]  # block-level: dense, checkpoint, input_size
    stage_options: dict[str, Resolved]  # the stage's own cascade (no inline), for resamplers
    layers: tuple[Layer, ...] = field(default=(), compare=False)
    where: str = ""  # how messages name it: "encoder.1"
    block_path: str = ""  # the spec path of its block string: "unet.blocks"

    @property
    def dense(self) -> bool:
        return bool(self.options["dense"].value)

    @property
    def checkpoint(self) -> bool:
        return bool(self.options["checkpoint"].value)

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self.options["input_size"].value

    def cell_values(self) -> list[dict[str, Any]]:
        """The resolved option values of every cell (block options included)."""
        block = {name: r.value for name, r in self.options.items()}
        return [{**block, **{k: r.value for k, r in c.options.items()}} for c in self.cells]

    def cell_label(self, i: int) -> str:
        return f"{self.where} cell {i} ({self.cells[i].spec.text})"

    def size_rules(self) -> list[tuple[str, SizeRule]]:
        """(where, rule) of every cell, at the block's own resolution."""
        return [(self.cell_label(c.index), c.geometry.size_rule()) for c in self.cells]

    def params(self) -> dict[str, int]:
        """Parameters by module path inside the block (`cells.1.attn.qkv`)."""
        return {
            f"cells.{c.index}.{part}": value
            for c in self.cells
            for part, value in c.geometry.params().items()
        }

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        """FLOPs of one sample of `t` frames at h x w, by module path inside the block."""
        return {
            f"cells.{c.index}.{part}": value
            for c in self.cells
            for part, value in c.geometry.flops(t, h, w).items()
        }

    def saved(self, frames: int, t: int, h: int, w: int) -> dict[str, int]:
        """Saved elements per cell (`cells.1`)."""
        return {f"cells.{c.index}": c.geometry.saved(frames, t, h, w) for c in self.cells}

    def workspace(
        self, frames: int, t: int, h: int, w: int, sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU
    ) -> dict[str, tuple[int, int]]:
        """(forward, backward) working elements per cell (`cells.1`), see
        `CellGeometry.workspace`."""
        return {
            f"cells.{c.index}": c.geometry.workspace(frames, t, h, w, sdpa_min_tokens)
            for c in self.cells
        }


def _values(resolved: Mapping[str, Resolved]) -> dict[str, Any]:
    return {name: r.value for name, r in resolved.items()}


def resolve_block(
    block: BlockSpec,
    in_channels: int,
    out_channels: int,
    layers: Sequence[Layer],
    *,
    where: str,
    block_path: str,
) -> BlockPlan:
    """Resolve every cell of `block` through `layers` (weakest first). `where` names
    the block in messages (`encoder.1`); `block_path` is the spec path of its block
    string (inline options are reported there). Raises a `SpecError` whose path is the
    place that set the offending option."""
    layers = tuple(layers)
    cascade = resolve_cells(block, layers, block_path)
    block_options = cascade.block
    cells = []
    for i, (cell, options) in enumerate(zip(block.cells, cascade.cells, strict=True)):
        cin = in_channels if i == 0 else out_channels
        try:
            geometry = cell_geometry(
                cell.kind, cell.mixer, cin, out_channels, _values(options),
                block_options["input_size"].value,
            )  # fmt: skip
        except SpecError as err:
            raise _blame(err, f"{where} cell {i} ({cell})", options, block_path) from None
        unread = [name for name in cell.options if name not in geometry.reads()]
        if unread:
            raise SpecError(
                f"{where} cell {i} ({cell}): inline option {unread[0]!r} is read by nothing: "
                f"{_why_unread(unread[0])}; remove it",
                block_path,
            )
        cells.append(ResolvedCell(i, cell, geometry, options))
    return BlockPlan(
        block,
        in_channels,
        out_channels,
        tuple(cells),
        block_options,
        cascade.stage,
        layers,
        where,
        block_path,
    )


def _blame(err: SpecError, cell: str, options: Mapping[str, Resolved], fallback: str) -> SpecError:
    """`err` (path: an option's name) re-pointed at the place that set that option."""
    resolved = options.get(err.path)
    path = resolved.path if resolved is not None and resolved.path else fallback
    return SpecError(f"{cell}: {err.reason}", path)


def check_options_read(blocks: Iterable[BlockPlan]) -> None:
    """An option set explicitly (not in `defaults:`) that no cell of its scope reads is
    a mistake, not a no-op: raise a `SpecError` at the place that set it, naming the
    cells that do not read it. A layer's scope is every block that uses it."""
    scope: dict[tuple[str, str], tuple[Layer, list[BlockPlan]]] = {}
    for plan in blocks:
        for layer in plan.layers:
            if layer.strict:
                scope.setdefault((layer.source, layer.path), (layer, []))[1].append(plan)
    for layer, plans in scope.values():
        for name in layer.values:
            if name in BLOCK_OPTION_NAMES or name == "input_size":
                continue
            if any(name in cell.reads for plan in plans for cell in plan.cells):
                continue
            raise SpecError(_not_read(name, plans, layer), layer.where(name))


def _not_read(name: str, plans: Sequence[BlockPlan], layer: Layer) -> str:
    cells = sorted({c.geometry.describe() for p in plans for c in p.cells})
    where = ", ".join(dict.fromkeys(p.where for p in plans))
    fix = (
        "remove it, or add a cell that reads it"
        if layer.source == "options"
        else "remove it, or set it under defaults: if it is meant for some cells only"
    )
    return (
        f"option {name!r} is not read by any cell of {where} ({', '.join(cells)}): "
        f"{_why_unread(name)}; {fix}"
    )


def _why_unread(name: str) -> str:
    """Which cells read option `name`, for messages about an option read by nothing."""
    option = OPTIONS[name]
    kinds = ", ".join(k for k in cell_kinds() if k in option.applies_to)
    why = f"{name} is read by {kinds} cells"
    if option.mixer_only:
        why += " with a mixer (digit 1)"
    if name == "qkv_kernel":
        why = "qkv_kernel is read only with qkv=conv"
    elif name == "patch":
        why = "patch is read by L and G cells"
    elif name == "window":
        why = "window is read by L cells, and by G and V cells without a grid"
    elif name == "padding":
        why = "padding is read only by cells with convolutions larger than 1x1"
    elif name == "proj_kernel":
        why = "proj_kernel is read only by a cell that changes the channels"
    return why


def check_causal(blocks: Iterable[BlockPlan]) -> None:
    """A model whose temporal cells are all causal must not mix frames elsewhere: a C3
    cell or a norm whose statistics span frames would let later frames change earlier
    outputs. (A model with non-causal temporal cells is not causal anyway.)"""
    blocks = list(blocks)
    cells = [(plan, c) for plan in blocks for c in plan.cells]
    temporal = [c for _, c in cells if c.spec.kind == TEMPORAL]
    if not temporal or not all(c.geometry.options.causal for c in temporal):
        return
    causal = next(p.cell_label(c.index) for p, c in cells if c.spec.kind == TEMPORAL)
    for plan, cell in cells:
        problem = None
        norm = NORMS[cell.geometry.options.norm]
        if cell.spec.kind == CONV3D:
            problem = "a C3 cell convolves over T (3x3x3), reaching the next frame"
        elif norm.mixes_frames:
            problem = f"norm={norm.name} has statistics over frames"
        if problem is not None:
            resolved = cell.options["norm"] if cell.spec.kind != CONV3D else None
            path = resolved.path if resolved is not None and resolved.path else ""
            raise SpecError(
                f"{plan.cell_label(cell.index)}: the temporal attention is causal ({causal} "
                f"and every other T cell), but {problem}, so later frames would change "
                "earlier outputs; use C2 and instance2d or layer norms, or drop causal",
                path or plan.block_path,
            )


def standalone_block(
    text: str | BlockSpec, in_channels: int, out_channels: int, options: Mapping[str, Any],
    name: str = "Block",
) -> BlockPlan:  # fmt: skip
    """The resolved plan of a standalone block: `options` (keywords, validated) over
    the library defaults, inline options over both. Every keyword must be read by
    some cell, and causal attention must stay causal."""
    for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{label} must be a positive integer, got {value!r}", f"{name}.{label}")
    spec = text if isinstance(text, BlockSpec) else parse_block(text)
    given = validate_options(options, name)
    layer = Layer("options", given, name)
    plan = resolve_block(spec, in_channels, out_channels, [layer], where=name, block_path=name)
    check_options_read([plan])
    check_causal([plan])
    if plan.input_size is not None:  # T is unknown when building: spatial rules only
        for where, rule in plan.size_rules():
            check_size(
                rule, *plan.input_size, where=f"{where} with input_size {plan.input_size}",
                path=name, t=rule.min_frames,
            )  # fmt: skip
    return plan
