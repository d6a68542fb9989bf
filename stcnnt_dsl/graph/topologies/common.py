"""What every topology builder shares: the option layers of a stage (defaults <
topology < window sizing < stage < overrides < input size < inline), stage descriptions
that overrides can still change, and resolving them into block nodes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ...errors import ResourceError, SpecError, did_you_mean
from ...language.blockspec import BlockSpec
from ...language.cascade import resolve_options
from ...language.spec import SpecSource, StageSpec
from ..nodes import BlockNode
from ..resolve import BlockPlan, Layer, resolve_block
from ..window_sizing import level_sizes

__all__ = [
    "MAX_MODEL_CELLS",
    "Entry",
    "Stage",
    "apply_overrides",
    "broadcast",
    "check_cell_count",
    "stage_layers",
]

MAX_MODEL_CELLS = 16_384
"""Most cells in one model (every cell is a few modules: far more would exhaust memory
with Python objects alone, even on the meta device)."""


def check_cell_count(cells: int, source: SpecSource) -> None:
    """Refuse a model with absurdly many cells before any cell is resolved."""
    if cells > MAX_MODEL_CELLS:
        spec = source.spec
        count = f"{cells:,}" if cells < 10**15 else f"{float(cells):.3g}"
        raise ResourceError(
            f"the {spec.name} model would have {count} cells, more than the "
            f"{MAX_MODEL_CELLS:,} allowed; use fewer blocks, levels or repetitions",
            spec.topology,
        )


@dataclass(frozen=True)
class Entry:
    """What the first stage reads: the model input, or the stem (`pre:`) before it."""

    name: str
    channels: int


def broadcast(value: Any, n: int) -> list[Any]:
    """A per-stage list from one value or a list."""
    return list(value) if isinstance(value, list) else [value] * n


def _window_sizing(source: SpecSource, scale: int) -> Layer | None:
    """`window` and `patch` of the level running at 1/scale (topology `window_sizing`)."""
    spec = source.spec
    method = getattr(spec.body, "window_sizing", "fixed")
    if method == "fixed":
        return None
    if spec.input_size is None:
        raise SpecError(
            f"window_sizing: {method} derives each level's window from the nominal input "
            "size; set input_size: [H, W] at the top level (or use window_sizing: fixed)",
            f"{spec.topology}.window_sizing",
        )
    base = resolve_options(("window", "patch"), source.base_layers)
    sizes = level_sizes(
        method, base["window"].value, base["patch"].value, spec.input_size,
        scale.bit_length() - 1,
    )  # fmt: skip
    return Layer("window_sizing", sizes, f"{spec.topology}.window_sizing", inline=True)


def stage_layers(
    source: SpecSource, stage: StageSpec | None, path: str, scale: int
) -> tuple[Layer, ...]:
    """The cascade of a stage at 1/scale whose own entry (if any) is at `path`."""
    layers = list(source.base_layers)
    sizing = _window_sizing(source, scale)
    if sizing is not None:
        layers.append(sizing)
    if stage is not None:
        layers.append(Layer("stage", stage.options(), path))
    return tuple(layers)


def _input_size_layer(source: SpecSource, scale: int) -> Layer | None:
    size = source.spec.input_size
    if size is None:
        return None
    h, w = size
    if h % scale or w % scale:
        raise SpecError(
            f"input_size {h}x{w} is not divisible by {scale} (a stage runs at 1/{scale}); "
            f"use a multiple of {scale}",
            "input_size",
        )
    return Layer("input_size", {"input_size": (h // scale, w // scale)}, "input_size", True)


@dataclass(frozen=True)
class Stage:
    """A block stage before its cells are resolved (overrides may still change it).
    `name` is the node and module name; `path` the spec path of its own entry;
    `block_path` where its block string is written."""

    name: str
    label: str
    path: str
    block: BlockSpec
    block_path: str
    in_channels: int
    out_channels: int
    scale: int
    layers: tuple[Layer, ...]
    meta: dict[str, Any]

    def plan(self, source: SpecSource, in_channels: int | None = None,
             out_channels: int | None = None, where: str | None = None) -> BlockPlan:  # fmt: skip
        """The resolved block (with other channels for a block that reuses this stage's
        options, like HR-Net's block resamplers)."""
        extra = _input_size_layer(source, self.scale)
        layers = (*self.layers, extra) if extra is not None else self.layers
        return resolve_block(
            self.block,
            self.in_channels if in_channels is None else in_channels,
            self.out_channels if out_channels is None else out_channels,
            layers,
            where=where or self.name,
            block_path=self.block_path,
        )

    def node(self, source: SpecSource, inputs: Sequence[str]) -> BlockNode:
        return BlockNode(
            name=self.name, inputs=tuple(inputs), out_channels=self.out_channels,
            scale=self.scale, label=self.label, path=self.path, meta=self.meta,
            plan=self.plan(source), in_channels=self.in_channels,
        )  # fmt: skip

    def option(self, source: SpecSource, name: str) -> Any:
        """A stage-level option (no inline cell options), e.g. the padding of the
        resampling convs that belong to this stage."""
        return resolve_options((name,), self.layers)[name].value


def apply_overrides(source: SpecSource, stages: Sequence[Stage]) -> list[Stage]:
    """Per-stage overrides by name (`overrides: {decoder.0: {...}}`): a layer stronger
    than the stage lists, and optionally another block string."""
    spec = source.spec
    overrides = spec.body.overrides or {}
    blocks = [o.blocks for o in overrides.values() if o.blocks is not None]
    check_cell_count(sum(len(s.block.cells) for s in stages) + sum(map(len, blocks)), source)
    by_name = {stage.name: stage for stage in stages}
    topology = spec.topology
    for name in overrides:
        if name not in by_name:
            raise SpecError(
                f"no stage called {name!r}{did_you_mean(name, by_name)}; stages: "
                + ", ".join(by_name),
                f"{topology}.overrides.{name}",
            )
    out = []
    for stage in stages:
        extra = overrides.get(stage.name)
        if extra is not None:
            path = f"{topology}.overrides.{stage.name}"
            stage = replace(
                stage,
                layers=(*stage.layers, Layer("overrides", extra.options(), path)),
                block=extra.blocks if extra.blocks is not None else stage.block,
                block_path=f"{path}.blocks" if extra.blocks is not None else stage.block_path,
            )
        out.append(stage)
    return out


def block_path(topology: str, blocks: Any, index: int, stage: StageSpec | None,
               stage_path: str) -> str:  # fmt: skip
    """Where the block string of a stage is written."""
    if stage is not None and stage.blocks is not None:
        return f"{stage_path}.blocks"
    if isinstance(blocks, list):
        return f"{topology}.blocks[{min(index, len(blocks) - 1)}]"
    return f"{topology}.blocks"
