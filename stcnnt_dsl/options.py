"""The option registry: every option of the language, in one place.

An option has one name everywhere (YAML, inline `L1[window=8]`, `Block(**options)`), one
default, one validator that turns what a user wrote into a canonical value, and a set of
cell kinds it applies to. The grammar, the spec, the compiler, `explain`, the JSON Schema
and the README's option table all read this table; nothing else defines an option.

Canonical values are plain and hashable: sizes are an int when square and an (h, w) tuple
otherwise, booleans are `bool`, enumerations are `str`, ratios are `float`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import SpecError, did_you_mean

__all__ = [
    "ATTENTION_KINDS",
    "BLOCK_OPTION_NAMES",
    "CELL_KINDS",
    "CELL_OPTION_NAMES",
    "KIND_TO_LETTER",
    "LETTER_TO_KIND",
    "OPTIONS",
    "SPATIAL_KINDS",
    "Option",
    "Resolved",
    "as_pair",
    "format_value",
    "option",
    "options_for_kind",
    "resolve_options",
    "validate_option",
    "validate_options",
]

LOCAL, GLOBAL, TEMPORAL, VIT, CONV2D, CONV3D = (
    "local",
    "global",
    "temporal",
    "vit",
    "conv2d",
    "conv3d",
)
CELL_KINDS: tuple[str, ...] = (LOCAL, GLOBAL, TEMPORAL, VIT, CONV2D, CONV3D)
SPATIAL_KINDS = frozenset({LOCAL, GLOBAL, VIT})
ATTENTION_KINDS = frozenset({LOCAL, GLOBAL, TEMPORAL, VIT})
CONV_KINDS = frozenset({CONV2D, CONV3D})
ALL_KINDS = frozenset(CELL_KINDS)

LETTER_TO_KIND = {"L": LOCAL, "G": GLOBAL, "T": TEMPORAL, "V": VIT, "C2": CONV2D, "C3": CONV3D}
KIND_TO_LETTER = {kind: letter for letter, kind in LETTER_TO_KIND.items()}


class OptionValueError(Exception):
    """Raised by a validator; turned into a `SpecError` carrying the option's path."""


# --------------------------------------------------------------------------- validators


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise OptionValueError(f"expected true or false, got {_describe(value)}")


def _int(value: Any, *, minimum: int = 1, odd: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        else:
            raise OptionValueError(f"expected an integer, got {_describe(value)}")
    if value < minimum:
        raise OptionValueError(f"must be >= {minimum}, got {value}")
    if odd and value % 2 == 0:
        raise OptionValueError(f"must be odd (so the output keeps its size), got {value}")
    return value


def _float(value: Any, *, low: float, high: float, high_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionValueError(f"expected a number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise OptionValueError(f"must be a finite number, got {value}")
    too_high = value >= high if high_open else value > high
    if value < low or too_high:
        bracket = ")" if high_open else "]"
        raise OptionValueError(f"must be in [{low:g}, {high:g}{bracket}, got {value:g}")
    return value


def _size(value: Any) -> int | tuple[int, int]:
    """An int (square) or [h, w]; canonical form is an int when h == w."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise OptionValueError(
                f"expected an int or a pair [h, w], got a list of {len(value)} items"
            )
        h, w = (_int(v) for v in value)
        return h if h == w else (h, w)
    return _int(value)


def _enum(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            raise OptionValueError(f"expected one of {', '.join(choices)}; got {value!r}{hint}")
        return value

    return check


def _heads(value: Any) -> int | str:
    if value == "auto" and isinstance(value, str):
        return value
    try:
        return _int(value)
    except OptionValueError:
        raise OptionValueError(
            f'expected a positive integer or "auto", got {_describe(value)}'
        ) from None


def _rel_pos_bias(value: Any) -> bool | str:
    if isinstance(value, bool) or value == "after_softmax":
        return value
    raise OptionValueError(
        f"expected true, false or after_softmax, got {_describe(value)}"
        + (did_you_mean(value, ["after_softmax"]) if isinstance(value, str) else "")
    )


def _optional_size(value: Any) -> int | tuple[int, int] | None:
    return None if value is None else _size(value)


def _input_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    size = _size(value)
    return size if isinstance(size, tuple) else (size, size)


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Option:
    """One option of the language."""

    name: str
    default: Any
    applies_to: frozenset[str]
    validate: Callable[[Any], Any]
    help: str
    schema: Mapping[str, Any]
    level: str = "cell"  # "cell": per cell; "block": per block (not inline on one cell)

    def check(self, value: Any, path: str = "") -> Any:
        """The canonical form of `value`, or a `SpecError` at `path`."""
        try:
            return self.validate(value)
        except OptionValueError as err:
            raise SpecError(f"{self.name} {err}", path or self.name) from None


_SIZE_SCHEMA = {
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
    ]
}
_BOOL = {"type": "boolean"}


def _enum_schema(*choices: str) -> dict:
    return {"enum": list(choices)}


def _float_schema(low: float, high: float) -> dict:
    return {"type": "number", "minimum": low, "exclusiveMaximum": high}


_ACTIVATIONS = (
    "gelu", "gelu_tanh", "prelu", "relu", "relu6", "leaky_relu", "silu", "elu", "selu", "celu",
    "tanh", "identity",
)  # fmt: skip
_NORMS = ("layer", "batch2d", "batch3d", "instance2d", "instance3d")

_ATT = ATTENTION_KINDS
_SPATIAL = SPATIAL_KINDS

_TABLE: tuple[Option, ...] = (
    Option("heads", "auto", _ATT, _heads,
           'attention heads; "auto" picks heads so each head has 32 features '
           "(per-head dim = channels*patch_h*patch_w/heads for L/G/V)",
           {"oneOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]}),
    Option("window", 8, _SPATIAL, _size,
           "window size in pixels, int or [h, w]: L attends within a window; G across "
           "windows (grid spacing = window); V: one token per window", _SIZE_SCHEMA),
    Option("grid", None, frozenset({GLOBAL, VIT}), _optional_size,
           "G and V only: split the image into a fixed grid of windows, int or [h, w] "
           "(MaxViT grid / the reference's fixed number of windows); the window size then "
           "follows the input (H/grid) and the sequence length stays fixed. null: use "
           "`window`",
           {"oneOf": [{"type": "null"}, *_SIZE_SCHEMA["oneOf"]]}),
    Option("patch", 2, _SPATIAL - {VIT}, _size,
           "patch size in pixels, int or [h, w]: a token is one patch (patch pixels x "
           "channels); must divide the window", _SIZE_SCHEMA),
    Option("qkv", "conv", _ATT, _enum("conv", "linear"),
           "how Q/K/V are computed: 3x3 convolution over the feature map, or linear maps "
           "of the flattened patch vectors", _enum_schema("conv", "linear")),
    Option("cosine", False, _ATT, _bool,
           "cosine attention: L2-normalised q and k (scores in [-1, 1], no temperature)",
           _BOOL),
    Option("qk_norm", False, _ATT, _bool,
           "standardise q and k over the per-head features before the dot product", _BOOL),
    Option("rel_pos_bias", True, _SPATIAL, _rel_pos_bias,
           "relative position bias per head (L: patches in a window; G and V: windows on "
           "the grid): true adds it to the logits (Swin); after_softmax adds it to the "
           "probabilities (the reference implementation)",
           {"oneOf": [_BOOL, {"const": "after_softmax"}]}),
    Option("att_dropout", 0.0, _ATT, lambda v: _float(v, low=0.0, high=1.0),
           "dropout on the attention probabilities (training only)", _float_schema(0, 1)),
    Option("causal", False, frozenset({TEMPORAL}), _bool,
           "temporal attention only: frame t attends to frames <= t", _BOOL),
    Option("qk_stride", 1, frozenset({TEMPORAL}), _int,
           "temporal attention only: stride of the Q and K convolutions (cheaper scores)",
           {"type": "integer", "minimum": 1}),
    Option("out_proj", True, _ATT, _bool,
           "a 3x3 convolution (with bias) after the attention", _BOOL),
    Option("qkv_kernel", 3, _ATT, lambda v: _int(v, odd=True),
           "kernel size of the Q/K/V convolutions (qkv=conv)",
           {"type": "integer", "minimum": 1}),
    Option("cell", "sequential", _ATT, _enum("sequential", "parallel"),
           "sequential: x += att(norm1(x)); x += mixer(norm2(x)).  parallel (ViT-22B): "
           "x += att(norm(x)) + mixer(norm(x))", _enum_schema("sequential", "parallel")),
    Option("norm", "instance2d", ALL_KINDS, _enum(*_NORMS),
           "layer (over C,H,W; needs input_size), batch2d (over H,W; B*T batch), batch3d "
           "(over T,H,W), instance2d (over H,W), instance3d (over T,H,W)",
           _enum_schema(*_NORMS)),
    Option("mixer_ratio", 4.0, ALL_KINDS, lambda v: _float(v, low=0.25, high=64.0, high_open=False),
           "hidden channels of the mixer as a multiple of the cell's channels",
           {"type": "number", "minimum": 0.25, "maximum": 64}),
    Option("mixer_kernel", 3, ALL_KINDS, lambda v: _int(v, odd=True),
           "kernel size of the mixer's two convolutions (odd)", {"type": "integer", "minimum": 1}),
    Option("activation", "gelu", ALL_KINDS, _enum(*_ACTIVATIONS),
           "activation in the mixer and in conv cells (gelu is exact, gelu_tanh the tanh "
           "approximation; prelu has one learned slope; leaky_relu has slope 0.1)",
           _enum_schema(*_ACTIVATIONS)),
    Option("dropout", 0.0, ALL_KINDS, lambda v: _float(v, low=0.0, high=1.0),
           "dropout at the end of the mixer (training only)", _float_schema(0, 1)),
    Option("drop_path", 0.0, ALL_KINDS, lambda v: _float(v, low=0.0, high=1.0),
           "stochastic depth: probability of dropping a residual branch per sample "
           "(training only)", _float_schema(0, 1)),
    Option("padding", "zeros", ALL_KINDS, _enum("zeros", "reflect"),
           "padding mode of the spatial convolutions", _enum_schema("zeros", "reflect")),
    Option("proj_kernel", 1, ALL_KINDS, lambda v: _int(v, odd=True),
           "kernel of the residual projection used when a cell changes the channels",
           {"type": "integer", "minimum": 1}),
    Option("dense", False, ALL_KINDS, _bool,
           "dense connections inside a block: cell k takes the sum of the outputs of "
           "cells 0..k-1", _BOOL, level="block"),
    Option("checkpoint", False, ALL_KINDS, _bool,
           "activation checkpointing of the whole block (recompute in backward; saves "
           "training memory)", _BOOL, level="block"),
    Option("input_size", None, ALL_KINDS, _input_size,
           "[H, W] of the input: norm=layer needs it (per-element affine); G/V without a "
           "grid size their relative position table from it",
           {"oneOf": [{"type": "null"}, _SIZE_SCHEMA["oneOf"][0], _SIZE_SCHEMA["oneOf"][1]]},
           level="block"),
)  # fmt: skip

OPTIONS: dict[str, Option] = {opt.name: opt for opt in _TABLE}
CELL_OPTION_NAMES = tuple(o.name for o in _TABLE if o.level == "cell")
BLOCK_OPTION_NAMES = tuple(o.name for o in _TABLE if o.level == "block")


def option(name: str, path: str = "") -> Option:
    """The option called `name`, or a `SpecError` with a did-you-mean."""
    try:
        return OPTIONS[name]
    except KeyError:
        raise SpecError(
            f"unknown option {name!r}{did_you_mean(name, OPTIONS)}; "
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
            users = ", ".join(k for k in CELL_KINDS if k in opt.applies_to)
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


def options_for_kind(kind: str) -> tuple[str, ...]:
    """Names of the cell-level options that a cell of `kind` reads."""
    return tuple(o.name for o in _TABLE if o.level == "cell" and kind in o.applies_to)


@dataclass(frozen=True)
class Resolved:
    """A fully resolved option value and the layer it came from."""

    value: Any
    source: str  # "default" (the library's), or the name of the layer that set it


def resolve_options(
    names: Iterable[str], layers: Sequence[tuple[str, Mapping[str, Any]]]
) -> dict[str, Resolved]:
    """Cascade: later layers win; the library default fills what no layer sets.

    `layers` are (source name, validated options) pairs from weakest to strongest,
    e.g. [("defaults", ...), ("topology", ...), ("stage", ...), ("inline", ...)].
    """
    out: dict[str, Resolved] = {}
    for name in names:
        resolved = Resolved(OPTIONS[name].default, "default")
        for source, values in layers:
            if name in values:
                resolved = Resolved(values[name], source)
        out[name] = resolved
    return out


def as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(h, w) of a canonical size."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def format_value(value: Any) -> str:
    """The canonical text of an option value, as written in block strings and YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        text = repr(value)
        return text
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)
