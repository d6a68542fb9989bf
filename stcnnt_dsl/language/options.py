"""The option registry: every option of the language, in one place.

An option has one name everywhere (YAML, inline `L1[window=8]`, `Block(**options)`), one
default, one *type* and a set of cell kinds it applies to. A type both validates what a
user wrote (turning it into a canonical value) and describes itself as JSON Schema, so
the validators and the schema editors use cannot disagree. The grammar, the spec, the
model graph, `explain`, the JSON Schema and the README's option table all read this
table; nothing else defines an option or its default.

Canonical values are plain and hashable: sizes are an int when square and an (h, w) tuple
otherwise, booleans are `bool`, enumerations are `str`, ratios are `float`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import SpecError, did_you_mean
from ..registry import (
    ACTIVATIONS,
    ATTENTION_KINDS,
    CELL_KINDS,
    CONV2D,
    CONV3D,
    CONV_KINDS,
    GLOBAL,
    KIND_TO_LETTER,
    LETTER_TO_KIND,
    LOCAL,
    NORMS,
    SPATIAL_KINDS,
    TEMPORAL,
    VIT,
    cell_kinds,
    on_register,
)

__all__ = [
    "ATTENTION_KINDS",
    "BLOCK_OPTION_NAMES",
    "CELL_KINDS",
    "CELL_OPTION_NAMES",
    "CONV2D",
    "CONV3D",
    "CONV_KINDS",
    "GLOBAL",
    "KIND_TO_LETTER",
    "LETTER_TO_KIND",
    "LOCAL",
    "OPTIONS",
    "SPATIAL_KINDS",
    "TEMPORAL",
    "VIT",
    "Bool",
    "Enum",
    "Float",
    "Int",
    "Option",
    "OptionType",
    "OptionValueError",
    "Size",
    "as_pair",
    "cell_option_names",
    "format_value",
    "option",
    "options_for_kind",
    "reads",
    "validate_option",
    "validate_options",
]

ALL_KINDS = frozenset(CELL_KINDS)


class OptionValueError(Exception):
    """Raised by a type's check; turned into a `SpecError` carrying the option's path."""


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


# --------------------------------------------------------------------------- types


class OptionType:
    """What values an option takes: `check` validates and canonicalises, `schema`
    describes the same set as JSON Schema."""

    def check(self, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Bool(OptionType):
    def check(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        raise OptionValueError(f"expected true or false, got {_describe(value)}")

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


def _integer(value: Any) -> int:
    """An int from an int or an integral float (YAML `8.0`, which JSON Schema's
    "integer" also accepts)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionValueError(f"expected an integer, got {_describe(value)}")
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise OptionValueError(f"expected an integer, got {_describe(value)}")
        value = int(value)
    return value


@dataclass(frozen=True)
class Int(OptionType):
    minimum: int = 1
    odd: bool = False

    def check(self, value: Any) -> int:
        value = _integer(value)
        if value < self.minimum:
            raise OptionValueError(f"must be >= {self.minimum}, got {value}")
        if self.odd and value % 2 == 0:
            raise OptionValueError(f"must be odd (so the output keeps its size), got {value}")
        return value

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer", "minimum": self.minimum}
        if self.odd:
            out["not"] = {"multipleOf": 2}
        return out


@dataclass(frozen=True)
class Float(OptionType):
    low: float
    high: float
    high_open: bool = True

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionValueError(f"expected a number, got {_describe(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise OptionValueError(f"must be a finite number, got {value}")
        too_high = value >= self.high if self.high_open else value > self.high
        if value < self.low or too_high:
            bracket = ")" if self.high_open else "]"
            raise OptionValueError(
                f"must be in [{self.low:g}, {self.high:g}{bracket}, got {value:g}"
            )
        return value

    def schema(self) -> dict[str, Any]:
        top = "exclusiveMaximum" if self.high_open else "maximum"
        return {"type": "number", "minimum": self.low, top: self.high}


@dataclass(frozen=True)
class Enum(OptionType):
    """One of a fixed set of words, or of a registry's names (read at check time, so
    registered norms and activations are valid as soon as they are registered)."""

    choices: tuple[str, ...] = ()
    registry: Mapping[str, Any] | None = None

    def names(self) -> tuple[str, ...]:
        return tuple(self.registry) if self.registry is not None else self.choices

    def check(self, value: Any) -> str:
        names = self.names()
        if not isinstance(value, str) or value not in names:
            hint = did_you_mean(value, names) if isinstance(value, str) else ""
            raise OptionValueError(f"expected one of {', '.join(names)}; got {value!r}{hint}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.names())}


_POSITIVE = Int()


@dataclass(frozen=True)
class Size(OptionType):
    """An int (square) or [h, w]; canonical: an int when h == w (`pair=True`: always a
    (h, w) tuple). `nullable`: null is a value of its own (e.g. `grid: null`)."""

    nullable: bool = False
    pair: bool = False

    def check(self, value: Any) -> int | tuple[int, int] | None:
        if value is None and self.nullable:
            return None
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise OptionValueError(
                    f"expected an int or a pair [h, w], got a list of {len(value)} items"
                )
            h, w = (_POSITIVE.check(v) for v in value)
        else:
            h = w = _POSITIVE.check(value)
        if self.pair:
            return (h, w)
        return h if h == w else (h, w)

    def schema(self) -> dict[str, Any]:
        pair = {"type": "array", "items": _POSITIVE.schema(), "minItems": 2, "maxItems": 2}
        options = [_POSITIVE.schema(), pair]
        if self.nullable:
            options.insert(0, {"type": "null"})
        return {"oneOf": options}


@dataclass(frozen=True)
class OneOf(OptionType):
    """The first of several types that accepts the value (error: all their messages)."""

    types: tuple[OptionType, ...]
    expected: str

    def check(self, value: Any) -> Any:
        for kind in self.types:
            try:
                return kind.check(value)
            except OptionValueError:
                continue
        hint = ""
        if isinstance(value, str):
            words = [c for t in self.types if isinstance(t, Enum) for c in t.names()]
            hint = did_you_mean(value, words)
        raise OptionValueError(f"expected {self.expected}, got {_describe(value)}{hint}")

    def schema(self) -> dict[str, Any]:
        return {"oneOf": [t.schema() for t in self.types]}


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Option:
    """One option of the language."""

    name: str
    default: Any
    applies_to: frozenset[str]
    type: OptionType
    help: str
    level: str = "cell"  # "cell": per cell; "block": per block (not inline on one cell)
    mixer_only: bool = False  # attention cells read it only with a mixer (digit 1)

    def check(self, value: Any, path: str = "") -> Any:
        """The canonical form of `value`, or a `SpecError` at `path`."""
        try:
            return self.type.check(value)
        except OptionValueError as err:
            raise SpecError(f"{self.name} {err}", path or self.name) from None

    @property
    def schema(self) -> dict[str, Any]:
        """JSON Schema of the values (with the help text as description)."""
        schema = self.type.schema()
        schema["description"] = f"{self.help} (default: {format_value(self.default)})"
        return schema


_ATT = ATTENTION_KINDS
_SPATIAL = SPATIAL_KINDS
_HEADS = OneOf((Int(), Enum(("auto",))), 'a positive integer or "auto"')
_REL_POS_BIAS = OneOf((Bool(), Enum(("after_softmax",))), "true, false or after_softmax")
_FRACTION = Float(0.0, 1.0)
_ODD = Int(odd=True)

_TABLE: tuple[Option, ...] = (
    Option("heads", "auto", _ATT, _HEADS,
           'attention heads; "auto" picks heads so each head has 32 features '
           "(per-head dim = channels*patch_h*patch_w/heads for L/G/V)"),
    Option("window", 8, _SPATIAL, Size(),
           "window size in pixels, int or [h, w]: L attends within a window; G across "
           "windows (grid spacing = window); V: one token per window"),
    Option("grid", None, frozenset({GLOBAL, VIT}), Size(nullable=True),
           "G and V only: split the image into a fixed grid of windows, int or [h, w] "
           "(MaxViT grid / the reference's fixed number of windows); the window size then "
           "follows the input (H/grid) and the sequence length stays fixed. null: use "
           "`window`"),
    Option("patch", 2, _SPATIAL - {VIT}, Size(),
           "patch size in pixels, int or [h, w]: a token is one patch (patch pixels x "
           "channels); must divide the window"),
    Option("qkv", "conv", _ATT, Enum(("conv", "linear")),
           "how Q/K/V are computed: a convolution over the feature map (qkv_kernel), or "
           "linear maps of the flattened patch vectors"),
    Option("cosine", False, _ATT, Bool(),
           "cosine attention: L2-normalised q and k (scores in [-1, 1], no temperature)"),
    Option("qk_norm", False, _ATT, Bool(),
           "standardise q and k over the per-head features before the dot product"),
    Option("rel_pos_bias", True, _SPATIAL, _REL_POS_BIAS,
           "relative position bias per head (L: patches in a window; G and V: windows on "
           "the grid): true adds it to the logits (Swin); after_softmax adds it to the "
           "probabilities (the reference implementation). G/V without a grid size the "
           "table from input_size (offsets up to H/window - 1 windows; without input_size "
           "up to 7); farther windows share the table's edge entry (clipped positions)"),
    Option("att_dropout", 0.0, _ATT, _FRACTION,
           "dropout on the attention probabilities (training only)"),
    Option("causal", False, frozenset({TEMPORAL}), Bool(),
           "temporal attention only: frame t attends to frames <= t"),
    Option("qk_stride", 1, frozenset({TEMPORAL}), Int(),
           "temporal attention only: stride of the Q and K convolutions (cheaper scores)"),
    Option("out_proj", True, _ATT, Bool(),
           "a 3x3 convolution (with bias) after the attention"),
    Option("qkv_kernel", 3, _ATT, _ODD,
           "kernel size of the Q/K/V convolutions (qkv=conv; odd)"),
    Option("cell", "sequential", _ATT, Enum(("sequential", "parallel")),
           "with a mixer: sequential: x += att(norm1(x)); x += mixer(norm2(x)).  parallel "
           "(ViT-22B): x += att(norm(x)) + mixer(norm(x))", mixer_only=True),
    Option("norm", "instance2d", ALL_KINDS, Enum(registry=NORMS),
           "layer (over C,H,W; needs input_size), batch2d (over H,W; B*T batch), batch3d "
           "(over T,H,W), instance2d (over H,W), instance3d (over T,H,W), or a name given "
           "to register_norm"),
    Option("mixer_ratio", 4.0, _ATT, Float(0.25, 64.0, high_open=False),
           "hidden channels of the mixer (digit 1) as a multiple of the cell's channels",
           mixer_only=True),
    Option("mixer_kernel", 3, _ATT, _ODD,
           "kernel size of the mixer's two convolutions (odd)", mixer_only=True),
    Option("activation", "gelu", ALL_KINDS, Enum(registry=ACTIVATIONS),
           "activation in the mixer and in conv cells (gelu is exact, gelu_tanh the tanh "
           "approximation; prelu has one learned slope; leaky_relu has slope 0.1), or a "
           "name given to register_activation", mixer_only=True),
    Option("dropout", 0.0, _ATT, _FRACTION,
           "dropout at the end of the mixer (training only)", mixer_only=True),
    Option("drop_path", 0.0, ALL_KINDS, _FRACTION,
           "stochastic depth: probability of dropping a residual branch per sample "
           "(training only)"),
    Option("padding", "zeros", ALL_KINDS, Enum(("zeros", "reflect")),
           "padding mode of the spatial convolutions"),
    Option("proj_kernel", 1, ALL_KINDS, _ODD,
           "kernel of the residual projection used when a cell changes the channels"),
    Option("dense", False, ALL_KINDS, Bool(),
           "dense connections inside a block: cell k takes the sum of the outputs of "
           "cells 0..k-1", level="block"),
    Option("checkpoint", False, ALL_KINDS, Bool(),
           "activation checkpointing of the whole block (recompute in backward; saves "
           "training memory)", level="block"),
    Option("input_size", None, ALL_KINDS, Size(nullable=True, pair=True),
           "[H, W] of the input: norm=layer needs it (per-element affine); G/V without a "
           "grid size their relative position table from it (see rel_pos_bias)",
           level="block"),
)  # fmt: skip

OPTIONS: dict[str, Option] = {opt.name: opt for opt in _TABLE}
CELL_OPTION_NAMES = tuple(o.name for o in _TABLE if o.level == "cell")
BLOCK_OPTION_NAMES = tuple(o.name for o in _TABLE if o.level == "block")


def option(name: str, path: str = "") -> Option:
    """The option called `name`, or a `SpecError` with a did-you-mean."""
    try:
        return OPTIONS[name]
    except (KeyError, TypeError):
        raise SpecError(
            f"unknown option {name!r}{did_you_mean(str(name), OPTIONS)}; "
            f"options are: {', '.join(OPTIONS)}",
            path or str(name),
        ) from None


def validate_option(name: str, value: Any, path: str = "") -> Any:
    """Canonical value of one option, or a `SpecError` naming `path`."""
    return option(name, path).check(value, path or name)


def validate_options(
    options: Mapping[str, Any],
    path: str = "",
    *,
    kind: str | None = None,
    allow_block_level: bool = True,
) -> dict[str, Any]:
    """Validate a mapping of options; with `kind`, each must apply to that cell kind."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        here = f"{path}.{name}" if path else str(name)
        opt = option(name, here)
        if kind is not None and kind not in opt.applies_to:
            users = ", ".join(k for k in cell_kinds() if k in opt.applies_to)
            raise SpecError(
                f"option {name!r} does not apply to {kind} cells (it applies to: {users})",
                here,
            )
        if not allow_block_level and opt.level != "cell":
            raise SpecError(
                f"option {name!r} belongs to a whole block and cannot be set on one cell; "
                "set it on the stage, topology or defaults",
                here,
            )
        out[name] = opt.check(value, here)
    return out


def reads(option: Option, kind: str, mixer: bool | None) -> bool:
    """Whether a cell of `kind` (with the mixer digit `mixer`; None: either) can read
    `option`. Which options a cell really reads also depends on values (e.g.
    `qkv_kernel` only with `qkv=conv`): see `stcnnt_dsl.graph.geometry`."""
    if option.level != "cell" or kind not in option.applies_to:
        return False
    return not option.mixer_only or mixer is not False or kind in CONV_KINDS


@functools.cache
def options_for_kind(kind: str, mixer: bool | None = None) -> tuple[str, ...]:
    """Names of the cell-level options that a cell of `kind` (and mixer digit) may read
    (one table per kind, rebuilt when a cell kind is registered or removed)."""
    return tuple(o.name for o in OPTIONS.values() if reads(o, kind, mixer))


@functools.cache
def cell_option_names() -> tuple[str, ...]:
    """Names of the cell-level options that some cell kind may read."""
    names: dict[str, None] = {}
    for kind in cell_kinds():
        names.update(dict.fromkeys(options_for_kind(kind)))
    return tuple(names)


def _sync_cell(kind: str, cell: Any) -> None:
    """A registered cell kind reads the options every cell reads and those it names;
    a removed one reads none. (The table above names the built-in kinds' options.)"""
    options_for_kind.cache_clear()
    cell_option_names.cache_clear()
    if kind in CELL_KINDS:
        return
    for name, opt in list(OPTIONS.items()):
        kinds = opt.applies_to - {kind}
        if cell is not None and (name in cell.options or ALL_KINDS <= opt.applies_to):
            kinds |= {kind}
        OPTIONS[name] = replace(opt, applies_to=frozenset(kinds))


on_register("cell", _sync_cell)


def as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(h, w) of a canonical size."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


_WORD = re.compile(r"[a-z_][a-z0-9_]*")
_ESCAPE = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def format_value(value: Any) -> str:
    """The canonical text of an option value, as written in block strings: words bare,
    other strings in double quotes (so the text parses back to the same value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, str) and (
        not _WORD.fullmatch(value) or value in ("true", "false", "null")
    ):
        return '"' + "".join(_ESCAPE.get(ch, ch) for ch in value) + '"'
    return str(value)
