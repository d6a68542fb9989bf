"""What a parsed block string is: a list of cells, each with its kind, mixer flag and
the options written inline on it.

Repetition and group options are expanded by the parser, so a `BlockSpec` is flat:
`(L1G1)[heads=4]*2` and `L1[heads=4] G1[heads=4] L1[heads=4] G1[heads=4]` are equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..registry import has_mixer_digit
from .options import KIND_TO_LETTER, OPTIONS, format_value, options_for_kind

__all__ = ["BlockSpec", "CellSpec"]


@dataclass(frozen=True)
class CellSpec:
    """One cell of a block: `kind` (local, global, temporal, vit, conv2d, conv3d),
    `mixer` (the digit: 1 = with the conv mixer), and `options` set inline on it
    (canonical values, see `stcnnt_dsl.options`).

    Reading an option name as an attribute (`cell.window`) gives the inline value, or
    the library default when the cell does not set it; use the spec's cascade
    (`stcnnt explain`) for the value a compiled model really uses.
    """

    kind: str
    mixer: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # C2/C3 have no mixer digit: one canonical value keeps text round trips exact.
        # The registry is asked once, here; messages and labels read the token.
        digit = has_mixer_digit(self.kind)
        if not digit and self.mixer:
            object.__setattr__(self, "mixer", False)
        letter = KIND_TO_LETTER.get(self.kind)
        if letter is None:  # an unknown kind has no text
            return
        token = f"{letter}{int(self.mixer)}" if digit else letter
        object.__setattr__(self, "token", token)
        inner = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(self.options.items()))
        object.__setattr__(self, "text", f"{token}[{inner}]" if inner else token)

    token: str = field(init=False, repr=False, compare=False)
    """The cell as written in a block string, without options (`L1`, `C2`)."""
    text: str = field(init=False, repr=False, compare=False)
    """The cell as written in a block string (`L1[window=4]`), computed once: messages
    and labels of every cell read it."""

    @property
    def letter(self) -> str:
        """`L`, `G`, `T`, `V`, `C2` or `C3`."""
        return KIND_TO_LETTER[self.kind]

    def __getattr__(self, name: str) -> Any:
        # Called only for names that are not real attributes: option look-ups.
        if name.startswith("_") or name not in OPTIONS:
            raise AttributeError(name)
        if name in self.options:
            return self.options[name]
        if name not in options_for_kind(self.kind) and OPTIONS[name].level == "cell":
            raise AttributeError(f"option {name!r} does not apply to {self.kind} cells")
        return OPTIONS[name].default

    def __hash__(self) -> int:
        return hash((self.kind, self.mixer, tuple(sorted(self.options.items()))))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class BlockSpec:
    """A parsed block string: `cells` in order (first maps C_in -> C_out)."""

    cells: list[CellSpec]

    def __len__(self) -> int:
        return len(self.cells)

    def __iter__(self):
        return iter(self.cells)

    def __getitem__(self, index: int) -> CellSpec:
        return self.cells[index]

    def __hash__(self) -> int:
        return hash(tuple(self.cells))

    def __str__(self) -> str:
        """Canonical text: `L1G1T1` when no cell has options (the upstream form), else
        cells separated by spaces with options sorted by name."""
        if not self.cells:
            raise ValueError("an empty block has no text form (a block needs at least one cell)")
        if not any(cell.options for cell in self.cells):
            return "".join(cell.token for cell in self.cells)
        return " ".join(str(cell) for cell in self.cells)

    def __repr__(self) -> str:
        return f"BlockSpec({str(self)!r})"
