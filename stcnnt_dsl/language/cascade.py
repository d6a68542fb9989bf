"""The option cascade: from layers of options to the resolved options of every cell.

A `Layer` is one place of the spec that sets options (`defaults:`, the topology section,
a stage entry, an override, window sizing, the block string's inline options, a
`Block`'s keywords), with the spec path where it sets them. Resolving walks the layers
weakest first, the library defaults below all, and keeps for every value the layer
it came from and its spec path, so that every error can name the place that caused it.

The graph asks once per block (`resolve_cells`): the options each cell kind may read
come from a per-kind table, and the whole cascade stays on this side of the boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .blockspec import BlockSpec
from .options import BLOCK_OPTION_NAMES, OPTIONS, cell_option_names, options_for_kind

__all__ = ["BlockCascade", "Layer", "Resolved", "resolve_cells", "resolve_options"]

# Layers whose options may be read by only some cells, or by none: the spec's
# `defaults:` (a shared baseline) and the values the library derives per level.
_LENIENT = frozenset({"defaults", "window_sizing", "input_size"})


@dataclass(frozen=True)
class Layer:
    """Options set in one place. `source` names the kind of place (`defaults`,
    `topology`, `stage`, `overrides`, `window_sizing`, `input_size`, `options`,
    `inline`); `path` is the spec path of the place (`unet.encoder[1]`), and an option
    set there lives at `path.name` (inline options: at the block string itself)."""

    source: str
    values: Mapping[str, Any]
    path: str = ""
    inline: bool = False

    def where(self, name: str) -> str:
        if self.inline or not self.path:
            return self.path or name
        return f"{self.path}.{name}"

    @property
    def strict(self) -> bool:
        """Whether every option here must be read by a cell of its scope."""
        return self.source not in _LENIENT


@dataclass(frozen=True)
class Resolved:
    """A fully resolved option value, the layer it came from (`library` for the
    library's default, `defaults`, `topology`, a stage, `inline`, ...) and the spec path
    where that layer set it ("" for the library default)."""

    value: Any
    source: str
    path: str = ""


def resolve_options(names: Iterable[str], layers: Sequence[Layer]) -> dict[str, Resolved]:
    """Cascade: later layers win; the library default fills what no layer sets.
    `layers` are weakest first."""
    out = {name: Resolved(OPTIONS[name].default, "library") for name in names}
    for layer in layers:
        for name, value in layer.values.items():
            if name in out:
                out[name] = Resolved(value, layer.source, layer.where(name))
    return out


@dataclass(frozen=True)
class BlockCascade:
    """The resolved options of a block: `stage`, every cell and block option through the
    stage's layers (no inline options); `block`, the block-level ones (dense,
    checkpoint, input_size); `cells`, per cell the options its kind may read, with the
    cell's inline options on top."""

    stage: dict[str, Resolved]
    block: dict[str, Resolved]
    cells: tuple[dict[str, Resolved], ...]


def resolve_cells(block: BlockSpec, layers: Sequence[Layer], block_path: str) -> BlockCascade:
    """Resolve every cell of `block` through `layers` (weakest first); inline options
    are reported at `block_path`, the spec path of the block string."""
    stage = resolve_options((*cell_option_names(), *BLOCK_OPTION_NAMES), layers)
    cells = []
    for cell in block.cells:
        options = {name: stage[name] for name in options_for_kind(cell.kind)}
        for name, value in cell.options.items():
            if name in options:
                options[name] = Resolved(value, "inline", block_path or name)
        cells.append(options)
    return BlockCascade(stage, {name: stage[name] for name in BLOCK_OPTION_NAMES}, tuple(cells))
