"""The architecture spec: pydantic models of a whole backbone, and how to load and write them.

An `ArchSpec` holds a name, the input channels, optional `input_size`, cascading option
`defaults`, and exactly one topology (`unet`, `hrnet` or `llm`). Cell options cascade:
library default < `defaults` < topology < stage < inline (in the block string).

Values are stored as written (a single block string stays one string; per-stage lists
stay lists); the compiler broadcasts them (`stcnnt_dsl.plan`). Every model forbids
unknown keys, and every error is an `STCNNTError` naming the spec path and, for text,
the line and column.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import PydanticJsonSchemaWarning
from pydantic_core import PydanticCustomError

from ..errors import (
    DSLSyntaxError,
    SpecError,
    STCNNTError,
    _join_path,
    caret_excerpt,
    did_you_mean,
)
from .blockspec import BlockSpec
from .heads import HEAD_KEYS, HEAD_KINDS
from .options import OPTIONS, Int, OptionValueError, format_value
from .parser import format_block, parse_block, parse_expression
from .yamlio import MAX_YAML_BYTES, Positions, dump_yaml, load_yaml

__all__ = [
    "TOPOLOGIES",
    "UNSET",
    "ArchSpec",
    "DefaultsSpec",
    "HRNetSpec",
    "HeadSpec",
    "LLMSpec",
    "PreSpec",
    "SpecSource",
    "StageSpec",
    "UNetSpec",
    "bundled_text",
    "dump_spec",
    "list_architectures",
    "load_source",
    "load_spec",
    "spec_json_schema",
]

TOPOLOGIES = ("unet", "hrnet", "llm")
# Options that only make sense for the whole spec (set at its top level).
_SPEC_LEVEL = ("input_size",)


# --------------------------------------------------------------------------- field types


def _error(message: str, field: str = "") -> PydanticCustomError:
    """A validation error; `field` names the key inside the model it concerns."""
    return PydanticCustomError("stcnnt", "{message}", {"message": message, "field": field})


def _to_block(value: Any) -> BlockSpec:
    if isinstance(value, BlockSpec):
        return value
    if not isinstance(value, str):
        raise _error(f"a block string (like T1L1G1) is expected, got {value!r}")
    return parse_block(value)  # DSLSyntaxError passes through pydantic as ctx.error


def _to_blocks(value: Any) -> BlockSpec | list[BlockSpec]:
    """One block string or a list of them (a syntax error remembers its list index)."""
    if not isinstance(value, list):
        return _to_block(value)
    if not value:
        raise _error("a list of block strings needs at least one entry")
    blocks = []
    for i, item in enumerate(value):
        try:
            blocks.append(_to_block(item))
        except DSLSyntaxError as err:
            err.index = i
            raise
        except PydanticCustomError as err:
            raise _error(f"entry {i}: {err.context['message']}") from None
    return blocks


def _format_blocks(value: BlockSpec | list[BlockSpec]) -> str | list[str]:
    if isinstance(value, list):
        return [format_block(b) for b in value]
    return format_block(value)


# What the schema can say about a block string: not empty, and it starts with a cell
# (after spaces and brackets). The grammar checks the rest (stcnnt_dsl/language/parser.py).
_BLOCK_SCHEMA = {
    "type": "string",
    "pattern": r"^[\s(]*([LGTV][01]|C[23])",
    "description": "a block string, e.g. T1L1G1 (cells: L, G, T, V followed by 0/1; C2, C3)",
}
Block = Annotated[
    Any,
    BeforeValidator(_to_block),
    PlainSerializer(_format_blocks),
    WithJsonSchema(_BLOCK_SCHEMA),
]
Blocks = Annotated[
    Any,
    BeforeValidator(_to_blocks),
    PlainSerializer(_format_blocks),
    WithJsonSchema({"oneOf": [_BLOCK_SCHEMA, {"type": "array", "items": _BLOCK_SCHEMA}]}),
]


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _error(f"expected true or false, got {value!r}")
    return value


Bool = Annotated[Any, BeforeValidator(_strict_bool), WithJsonSchema({"type": "boolean"})]


_COUNT = Int()


def _positive(name: str, value: Any) -> int:
    """A positive integer (an integral float such as 8.0 too, as for options)."""
    try:
        return _COUNT.check(value)
    except OptionValueError:
        raise _error(f"{name} must be a positive integer, got {value!r}") from None


def _to_channels(value: Any) -> int | list[int]:
    if isinstance(value, list):
        if not value:
            raise _error("channels must be a positive integer or a non-empty list of them")
        return [_positive("channels", v) for v in value]
    return _positive("channels", value)


Channels = Annotated[
    Any,
    BeforeValidator(_to_channels),
    WithJsonSchema({
        "oneOf": [
            _COUNT.schema(),
            {"type": "array", "items": _COUNT.schema(), "minItems": 1},
        ]
    }),
]  # fmt: skip
PositiveInt = Annotated[
    Any,
    BeforeValidator(lambda v, info: _positive(info.field_name or "value", v)),
    WithJsonSchema(_COUNT.schema()),
]


class _Unset:
    """The value of an option field that the spec does not set (None is a value of its
    own for nullable options: `grid: null` switches a grid off)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def _option_field(name: str) -> Any:
    opt = OPTIONS[name]

    def check(value: Any) -> Any:
        if value is None:
            try:
                return opt.type.check(None)  # null is a value of nullable options only
            except OptionValueError:
                raise _error(
                    f"{name} cannot be null; remove the key to keep the value of the "
                    f"weaker layers (library default: {format_value(opt.default)})"
                ) from None
        try:
            return opt.check(value, name)
        except SpecError as err:
            raise _error(err.reason) from None

    annotated = Annotated[
        Any,
        BeforeValidator(check),
        PlainSerializer(lambda v: None if v is UNSET else v),
        WithJsonSchema(opt.schema),  # refreshed per call in spec_json_schema()
    ]
    return (annotated, Field(default=UNSET))


class _Strict(BaseModel):
    """Base of every spec model: frozen, no unknown keys (with a did-you-mean)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, BaseModel):
            return data
        if not isinstance(data, Mapping):
            raise _error(f"expected a mapping of keys to values, got {data!r}")
        for key in data:
            if not isinstance(key, str) or key not in cls.model_fields:
                keys = ", ".join(cls.model_fields)
                raise _error(
                    f"unknown key {key!r}{did_you_mean(str(key), cls.model_fields)}"
                    f"{cls._where_instead(key)}; valid keys here: {keys}",
                    str(key),
                )
        return data

    @classmethod
    def _where_instead(cls, key: Any) -> str:
        """A hint for a key that is valid elsewhere."""
        return ""

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> Any:
        """Options the spec does not set are left out of dumps (`grid: null` stays)."""
        data = handler(self)
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if getattr(self, k, None) is not UNSET}
        return data

    def __repr_args__(self) -> Any:
        # Unset options would drown the few values that are set.
        return [(k, v) for k, v in super().__repr_args__() if v is not UNSET and v is not None]

    def options(self) -> dict[str, Any]:
        """The cell/block options set on this model (canonical values; `grid: None`
        when a spec switches the grid off)."""
        fields = type(self).model_fields
        return {
            name: getattr(self, name)
            for name in OPTIONS
            if name in fields and getattr(self, name) is not UNSET
        }


_OptionFields: type[_Strict] = create_model(  # type: ignore[call-overload]
    "_OptionFields",
    __base__=_Strict,
    **{name: _option_field(name) for name in OPTIONS if name not in _SPEC_LEVEL},
)


class DefaultsSpec(_OptionFields):  # type: ignore[misc, valid-type]
    """Options for every cell of the model (weakest layer of the cascade)."""


class StageSpec(_OptionFields):  # type: ignore[misc, valid-type]
    """Overrides for one stage: its block string and options."""

    blocks: Block | None = None


class PreSpec(_OptionFields):  # type: ignore[misc, valid-type]
    """An optional stem before the backbone: a block at full resolution from the input's
    channels to `channels` (the backbone then starts from those)."""

    blocks: Block = Field(description="the stem's block string, e.g. C2 or L1")
    channels: Annotated[
        Any,
        BeforeValidator(lambda v: _positive("channels", v)),
        WithJsonSchema(_COUNT.schema()),
    ] = Field(description="channels of the stem's output")


def _head_value(name: str, value: Any) -> Any:
    """A head key's value, checked by what it is (the kind decides which keys apply)."""
    if name in ("classes", "out_channels", "hidden", "depth"):
        return _positive(name, value)
    if name in ("per_frame", "residual"):
        return _strict_bool(value)
    if name == "bins":
        if not isinstance(value, list) or not value:
            raise _error(f"bins must be a non-empty list of pooling sizes, got {value!r}")
        return tuple(_positive("bins", v) for v in value)
    if name == "dropout":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise _error(f"dropout must be a number in [0, 1), got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise _error(f"{name} must be a word, got {value!r}")
    return value


def _head_schema(name: str) -> dict[str, Any]:
    if name in ("classes", "out_channels", "hidden", "depth"):
        return _COUNT.schema()
    if name in ("per_frame", "residual"):
        return {"type": "boolean"}
    if name == "bins":
        return {"type": "array", "items": _COUNT.schema(), "minItems": 1}
    if name == "dropout":
        return {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
    words = {
        "kind": list(HEAD_KINDS),
        "decoder": sorted({c for k in HEAD_KINDS.values() if k.choice == "decoder"
                           for c in k.choices}),
        "pooling": sorted(HEAD_KINDS["classification"].choices),
        "mode": ["2d", "3d"],
    }  # fmt: skip
    return {"enum": words[name]}


class HeadSpec(_Strict):
    """A task head: `kind` (segmentation, classification, enhancement) and its keys
    (see `stcnnt_dsl.language.heads`)."""

    kind: Annotated[Any, WithJsonSchema(_head_schema("kind"))] = Field(
        description="segmentation, classification or enhancement"
    )

    @model_validator(mode="after")
    def _fits_its_kind(self) -> HeadSpec:
        kind = HEAD_KINDS.get(self.kind) if isinstance(self.kind, str) else None
        if kind is None:
            raise _error(
                f"unknown head kind {self.kind!r}{did_you_mean(str(self.kind), HEAD_KINDS)}; "
                f"kinds: {', '.join(HEAD_KINDS)}",
                "kind",
            )
        given = self.keys()
        for name in given:
            if name not in kind.keys:
                where = [k for k, v in HEAD_KINDS.items() if name in v.keys]
                raise _error(
                    f"{name} is not a key of {self.kind} heads (keys: "
                    f"{', '.join(kind.keys)}); it belongs to {' and '.join(where)} heads",
                    name,
                )
        if kind.size not in given:
            raise _error(f"a {self.kind} head needs {kind.size}", kind.size)
        choice = given.get(kind.choice, kind.keys[kind.choice].default)
        if choice not in kind.choices:
            raise _error(
                f"unknown {kind.choice} {choice!r} for {self.kind} heads"
                f"{did_you_mean(str(choice), kind.choices)}; choose from "
                + "; ".join(f"{k} ({v})" for k, v in kind.choices.items()),
                kind.choice,
            )
        for name in given:
            used_by = kind.keys[name].used_by
            if used_by and choice not in used_by:
                raise _error(
                    f"{name} is read by the {' and '.join(used_by)} {kind.choice} only, and "
                    f"this head's {kind.choice} is {choice}",
                    name,
                )
        if given.get("mode") not in (None, "2d", "3d"):
            raise _error(f"mode must be 2d or 3d, got {given['mode']!r}", "mode")
        return self

    def keys(self) -> dict[str, Any]:
        """The keys this head sets (besides kind)."""
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name != "kind" and getattr(self, name) is not UNSET
        }


def _head_field(name: str) -> Any:
    annotated = Annotated[
        Any,
        BeforeValidator(lambda v, n=name: _head_value(n, v)),
        PlainSerializer(lambda v: None if v is UNSET else list(v) if isinstance(v, tuple) else v),
        WithJsonSchema(_head_schema(name)),
    ]
    return (annotated, Field(default=UNSET))


HeadSpec = create_model(  # type: ignore[misc]  # one field per head key
    "HeadSpec",
    __base__=HeadSpec,
    **{name: _head_field(name) for name in HEAD_KEYS if name != "kind"},
)


MAX_LEVELS = 16
"""Most resolution levels of a U-Net or HR-Net (level l runs at 1/2^l of the input)."""
MAX_STAGES = 64
"""Most HR-Net stages."""
MAX_BLOCKS = 1024
"""Most blocks of an LLM stack."""


def _at_most(count: int, most: int, noun: str, field: str, why: str) -> None:
    """Refuse absurd counts in the spec, before a plan of that size is made."""
    if count > most:
        raise _error(f"{count:,} {noun} is more than the {most} allowed ({why})", field)


_LEVELS_WHY = "level l runs at 1/2^l resolution"


def _overrides_field() -> Any:
    return Field(
        None,
        description="options (and `blocks`) for single stages by name, the most specific "
        "layer below inline options: e.g. {decoder.0: {window: 4}} or, for an HR-Net, "
        "{level1.stage2: {window: 4}, level1.output: {...}}; the names are the stages' "
        "module names, as `stcnnt explain` and error messages show them",
    )


def _check_len(values: Any, expected: tuple[int, ...], what: str, why: str) -> None:
    if isinstance(values, list) and len(values) not in expected:
        options = " or ".join(map(str, expected))
        raise _error(f"{what} has {len(values)} entries but needs {options} ({why})", what)


def _levels(channels: Any, levels: int | None, default: int | None = None) -> int:
    """Number of levels from `levels` and/or a channels list; they must agree."""
    if isinstance(channels, list):
        if levels is not None and levels != len(channels):
            raise _error(
                f"levels={levels} but channels lists {len(channels)} values; give one "
                "channel count per level (or drop levels)",
                "levels",
            )
        return len(channels)
    if levels is None:
        if default is None:
            raise _error("give channels as a list (one per level) or set levels")
        return default
    return levels


WindowSizing = Literal["fixed", "keep_size", "keep_count", "mixed"]
_WINDOW_SIZING_HELP = (
    "how window and patch change per resolution level (needs input_size): fixed; "
    "keep_size (pixels, shrunk where a level is too small); keep_count (number of "
    "windows and of patches per window); mixed (alternate by level, as the reference "
    "implementation); see stcnnt_dsl.window_sizing"
)


class UNetSpec(_OptionFields):  # type: ignore[misc, valid-type]
    """ST-CNNT U-Net: encoder levels, a bridge, decoder levels with gated skips."""

    channels: Channels
    levels: PositiveInt | None = None
    blocks: Blocks = Field(
        description="one block string for every stage, or one per level (the bridge "
        "uses the last), or one per level plus one for the bridge"
    )
    gate: Bool = Field(True, description="attention-gate the skip connections")
    down: Literal["merge", "interpolate"] = Field(
        "merge",
        description="down-sampling: patch merging (2x2 space-to-depth + 1x1 conv) "
        "or bilinear interpolation",
    )
    up: Literal["conv", "interpolate"] = Field(
        "conv", description="up-sampling: bilinear x2 then a 3x3 conv, or bilinear only"
    )
    window_sizing: WindowSizing = Field("fixed", description=_WINDOW_SIZING_HELP)
    encoder: list[StageSpec] | None = None
    bridge: StageSpec | None = None
    decoder: list[StageSpec] | None = None
    overrides: dict[str, StageSpec] | None = _overrides_field()

    @model_validator(mode="after")
    def _lengths(self) -> UNetSpec:
        n = self.num_levels
        _at_most(n, MAX_LEVELS, "levels", "levels" if self.levels else "channels", _LEVELS_WHY)
        _check_len(
            self.blocks,
            (n, n + 1),
            "blocks",
            f"one per level, {n} levels, optionally one more for the bridge",
        )
        _check_len(self.encoder, (n,), "encoder", f"one entry per level, {n} levels")
        _check_len(self.decoder, (n,), "decoder", f"one entry per level, {n} levels")
        return self

    @property
    def num_levels(self) -> int:
        return _levels(self.channels, self.levels)


class HRNetSpec(_OptionFields):  # type: ignore[misc, valid-type]
    """ST-CNNT HR-Net: parallel resolution branches exchanging information each stage."""

    channels: Channels
    levels: PositiveInt | None = None
    blocks: Blocks = Field(description="one block string, or one per level")
    stages: PositiveInt | None = Field(
        None, description="number of stages (default: levels; level l joins at stage l)"
    )
    resample: Literal["conv", "block"] = Field(
        "conv",
        description="modules between levels: conv (patch merging down, bilinear + "
        "3x3 conv up) or block (bilinear resampling then a block of the target level)",
    )
    window_sizing: WindowSizing = Field("fixed", description=_WINDOW_SIZING_HELP)
    branches: list[StageSpec] | None = None
    overrides: dict[str, StageSpec] | None = _overrides_field()

    @model_validator(mode="after")
    def _lengths(self) -> HRNetSpec:
        n = self.num_levels
        _at_most(n, MAX_LEVELS, "levels", "levels" if self.levels else "channels", _LEVELS_WHY)
        _at_most(self.num_stages, MAX_STAGES, "stages", "stages", "each stage runs every level")
        _check_len(self.blocks, (n,), "blocks", f"one per level, {n} levels")
        _check_len(self.branches, (n,), "branches", f"one entry per level, {n} levels")
        if self.stages is not None and self.stages < n:
            raise _error(
                f"stages={self.stages} must be >= levels={n} (level l joins at stage l)", "stages"
            )
        return self

    @property
    def num_levels(self) -> int:
        return _levels(self.channels, self.levels)

    @property
    def num_stages(self) -> int:
        return self.stages or self.num_levels


class LLMSpec(_OptionFields):  # type: ignore[misc, valid-type]
    """A stack of blocks at constant resolution with dense skips between blocks."""

    channels: Channels
    blocks: Blocks
    depth: PositiveInt | None = Field(
        None, description="number of blocks when blocks and channels are single values"
    )
    dense_skips: Bool = Field(
        True, description="block k takes the sum of the outputs of all earlier blocks"
    )
    stages: list[StageSpec] | None = None
    overrides: dict[str, StageSpec] | None = _overrides_field()

    @model_validator(mode="after")
    def _lengths(self) -> LLMSpec:
        n = self.num_blocks
        lists = [f for f in ("blocks", "channels", "stages") if isinstance(getattr(self, f), list)]
        field = lists[0] if lists and self.depth is None else "depth"
        _at_most(n, MAX_BLOCKS, "blocks", field, "one block after another at full resolution")
        _check_len(self.blocks, (n,), "blocks", f"one per block, {n} blocks")
        _check_len(self.channels, (n,), "channels", f"one per block, {n} blocks")
        _check_len(self.stages, (n,), "stages", f"one entry per block, {n} blocks")
        return self

    @property
    def num_blocks(self) -> int:
        for value in (self.blocks, self.channels, self.stages):
            if isinstance(value, list):
                if self.depth is not None and self.depth != len(value):
                    raise _error(
                        f"depth={self.depth} but a per-block list has {len(value)} entries; "
                        "drop depth or give one entry per block",
                        "depth",
                    )
                return len(value)
        return self.depth or 1


def _input_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        return OPTIONS["input_size"].check(value)
    except SpecError as err:
        raise _error(err.reason) from None


class ArchSpec(_Strict):
    """A whole backbone. Exactly one of `unet`, `hrnet`, `llm` is set."""

    name: str = ""
    description: str = ""
    in_channels: PositiveInt = 1
    input_size: Annotated[
        Any,
        BeforeValidator(_input_size),
        PlainSerializer(lambda v: None if v is None else list(v)),
        WithJsonSchema(OPTIONS["input_size"].schema),
    ] = None
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec)
    pre: PreSpec | None = None
    unet: UNetSpec | None = None
    hrnet: HRNetSpec | None = None
    llm: LLMSpec | None = None
    heads: dict[str, HeadSpec] | None = Field(
        None,
        description="task heads by name: {kind: segmentation|classification|enhancement, "
        "...}; with heads, build() returns a Model whose forward gives one output per head",
    )

    @model_validator(mode="after")
    def _head_names(self) -> ArchSpec:
        for name in self.heads or {}:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                raise _error(
                    f"a head's name is a lower-case identifier (letters, digits, _): it "
                    f"becomes the module heads.{name} and the key of its output, got {name!r}",
                    f"heads.{name}",
                )
        if self.heads is not None and not self.heads:
            raise _error("heads: {} has no head; remove it or add one", "heads")
        return self

    @classmethod
    def _where_instead(cls, key: Any) -> str:
        if key == "overrides":
            return " (overrides go under the topology key: unet: {overrides: {decoder.0: {...}}})"
        if key in OPTIONS:
            return f" ({key} is an option: put it under defaults: or the topology key)"
        return ""

    @model_validator(mode="after")
    def _one_topology(self) -> ArchSpec:
        given = [t for t in TOPOLOGIES if getattr(self, t) is not None]
        if len(given) != 1:
            raise _error(
                "a spec needs exactly one topology: unet, hrnet or llm"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if not self.name:
            object.__setattr__(self, "name", given[0])
        return self

    @property
    def topology(self) -> str:
        """`unet`, `hrnet` or `llm`."""
        return next(t for t in TOPOLOGIES if getattr(self, t) is not None)

    @property
    def body(self) -> UNetSpec | HRNetSpec | LLMSpec:
        """The topology's own spec."""
        return getattr(self, self.topology)


@dataclass(frozen=True)
class SpecSource:
    """A spec with where it came from: the positions of its keys and values in the
    text it was read from (empty for a dict or an `ArchSpec`), so that errors found
    later (building the model graph) still name file, line and column."""

    spec: ArchSpec
    positions: Positions = field(default_factory=Positions)
    text: str | None = None
    file: str | None = None

    def locate(self, err: SpecError, *, key: bool = False) -> SpecError:
        """`err` with the file position of its path filled in (where known)."""
        if err.line is not None or not err.path:
            return err
        where = self.positions.find(err.path, key=key)
        if where is None:
            return err
        err.located(file=self.file or "<text>", line=where[0], column=where[1])
        if self.file == "<expression>" and self.text is not None:
            err.args = (f"{err}\n{caret_excerpt(self.text, where[0], where[1])}",)
        return err


# --------------------------------------------------------------------------- errors


def _loc_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _is_union_tag(part):
            continue
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _from_validation_error(
    err: ValidationError, positions: Positions, text: str | None, file: str | None
) -> STCNNTError:
    first = err.errors(include_url=False)[0]
    path = _loc_path(first["loc"])
    ctx = first.get("ctx") or {}
    if ctx.get("field"):
        path = _join_path(path, ctx["field"])
    cause = ctx.get("error")
    if isinstance(cause, DSLSyntaxError):
        if getattr(cause, "index", None) is not None:
            path = f"{path}[{cause.index}]"
        return _relocate_syntax_error(cause, path, positions, text, file)
    if isinstance(cause, SpecError):
        return cause.located(path_prefix=path)
    message = first["msg"]
    if first["type"] == "missing":
        message = f"required key {path.rsplit('.', 1)[-1]!r} is missing"
        path = path.rsplit(".", 1)[0] if "." in path else ""
    elif first["type"] != "stcnnt":  # pydantic's own wording: say what was given
        given = repr(first.get("input"))
        message += f", got {given if len(given) <= 60 else given[:57] + '...'}"
    spec_error = SpecError(message, path)
    key = message.startswith("unknown key")
    line_col = positions.find(path, key=key)
    if line_col:
        spec_error.located(file=file or "<yaml>", line=line_col[0], column=line_col[1])
    return spec_error


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the union member's type to the loc ("list[...]", "function-before...")
    return isinstance(part, str) and (
        part.startswith("function-") or part.startswith("list[") or part in ("str", "int")
    )


def _relocate_syntax_error(
    err: DSLSyntaxError, path: str, positions: Positions, text: str | None, file: str | None
) -> DSLSyntaxError:
    """A syntax error inside a block string, moved to file coordinates when known."""
    start = positions.get(path)
    if start is None or text is None:
        err.args = (f"{path}: {err.args[0]}",)
        return err
    line0, col0 = start
    lines = text.splitlines()
    # Quoted scalars start one character before their text.
    if line0 <= len(lines) and lines[line0 - 1][col0 - 1 : col0] in ("'", '"'):
        col0 += 1
    line = line0 + err.line - 1
    column = col0 + err.column - 1 if err.line == 1 else err.column
    return DSLSyntaxError(
        f"{path}: {err.reason}", text=text, line=line, column=column, source=file or "<yaml>"
    )


# --------------------------------------------------------------------------- loading


def _validate(
    data: Any, positions: Positions | None = None, text: str | None = None,
    file: str | None = None,
) -> SpecSource:  # fmt: skip
    positions = positions if positions is not None else Positions()
    if data is None:
        raise SpecError(
            "the architecture is empty (or only comments); write a topology, e.g. "
            "unet: {channels: [32, 64], blocks: T1L1G1}",
            file=file,
        )
    if not isinstance(data, Mapping):
        raise SpecError(
            f"an architecture is a mapping with a topology key (unet, hrnet or llm), got "
            f"{type(data).__name__}"
            + (
                f" {data!r}" if isinstance(data, (str, int, float)) and len(repr(data)) < 60 else ""
            ),
            file=file,
        )
    try:
        spec = ArchSpec.model_validate(data)
    except ValidationError as err:
        raise _from_validation_error(err, positions, text, file) from None
    return SpecSource(spec, positions, text, file)


_EXPRESSION = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*\(")
_TOP_LEVEL_KEYS = ("name", "description", "in_channels", "input_size", "defaults", "pre", "heads")


def _from_expression(text: str) -> SpecSource:
    name = text.strip().split("(", 1)[0].strip()
    if name not in TOPOLOGIES:
        column = text.index(name) + 1
        case = (
            f"; topology names are lower case: {name.lower()}(...)"
            if (name.lower() in TOPOLOGIES)
            else "; use unet(...), hrnet(...) or llm(...)"
        )
        raise DSLSyntaxError(
            f"unknown topology {name!r}{did_you_mean(name.lower(), TOPOLOGIES)}{case}",
            text=text, line=1, column=column,
        )  # fmt: skip
    expr = parse_expression(text)
    args = dict(expr.args)
    # `heads={seg={...}}` names task heads; `heads=4` stays the attention heads option
    lifted = {
        k for k in _TOP_LEVEL_KEYS if k in args and (k != "heads" or isinstance(args[k], dict))
    }
    data: dict[str, Any] = {k: args.pop(k) for k in _TOP_LEVEL_KEYS if k in lifted}
    data[expr.topology] = args

    def spec_path(path: str) -> str:
        """`unet.defaults.window` -> `defaults.window`: top-level keys may be given
        inside the expression."""
        head, _, rest = path.partition(".")
        first = rest.split(".")[0].split("[")[0]
        return rest if head == expr.topology and rest and first in lifted else path

    positions = Positions(
        {spec_path(p): pos for p, pos in expr.positions.items()},
        {spec_path(p): pos for p, pos in expr.key_positions.items()},
    )
    try:
        return _validate(data, positions, text, "<expression>")
    except SpecError as err:
        if err.line is not None:
            err.args = (f"{err}\n{caret_excerpt(text, err.line, err.column or 1)}",)
        raise


def _bundled_dir() -> Any:
    return resources.files("stcnnt_dsl.architectures")


def list_architectures() -> list[str]:
    """Names of the bundled architectures (`stcnnt list`)."""
    return sorted(
        p.name[: -len(".yaml")] for p in _bundled_dir().iterdir() if p.name.endswith(".yaml")
    )


def bundled_text(name: str) -> str:
    """The text of a bundled architecture file."""
    return (_bundled_dir() / f"{name}.yaml").read_text(encoding="utf-8")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _decode(data: bytes, file: str) -> str:
    """UTF-8 text, or an error at the first byte that is not UTF-8 (a Latin-1 or
    UTF-16 file would otherwise be read with replacement characters)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise SpecError(
            f"the file is not UTF-8 text (byte 0x{data[err.start]:02x} at line {line}, "
            f"column {column}); save it as UTF-8",
            file=file, line=line, column=column,
        ) from None  # fmt: skip


def _check_json(text: str, file: str) -> None:
    """A .json file must be JSON (YAML would also accept trailing commas, comments, ...)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise DSLSyntaxError(
            f"invalid JSON: {err.msg}", text=text, line=err.lineno, column=err.colno, source=file
        ) from None


def _load_file(path: Path) -> SpecSource:
    if not _is_file(path):
        if path.is_dir():
            raise SpecError(f"{path} is a folder; give an architecture file", file=str(path))
        raise SpecError(f"file not found: {path}", file=str(path))
    too_big = (
        f"architecture files are limited to {MAX_YAML_BYTES // 1000} kB (a spec is a few "
        "hundred bytes)"
    )
    if path.stat().st_size > MAX_YAML_BYTES:  # refused before reading anything
        raise SpecError(f"the file is {path.stat().st_size} bytes; {too_big}", file=str(path))
    try:
        with path.open("rb") as handle:  # never more than the limit, even if it grows
            data = handle.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise SpecError(f"cannot read {path}: {err.strerror or err}", file=str(path)) from None
    if len(data) > MAX_YAML_BYTES:
        raise SpecError(f"the file is larger than the limit; {too_big}", file=str(path))
    text = _decode(data, str(path))
    if path.suffix.lower() == ".json":
        _check_json(text, str(path))
    return _load_text(text, str(path))


def _load_text(text: str, file: str | None) -> SpecSource:
    data, positions = load_yaml(text, file=file)
    if isinstance(data, str) and _EXPRESSION.match(data):
        return _from_expression(data)
    return _validate(data, positions, text, file)


def load_source(source: Any, *, read_files: bool = True) -> SpecSource:
    """Like `load_spec`, keeping the positions of the text (see `SpecSource`).
    `read_files=False`: `source` is never read as a path (text from a web page, say)."""
    if isinstance(source, SpecSource):
        return source
    if isinstance(source, ArchSpec):
        return SpecSource(source)
    if isinstance(source, Mapping):
        return _validate(dict(source))
    if isinstance(source, Path):
        if not read_files:
            raise SpecError("a path was given where only text is accepted")
        return _load_file(source)
    if not isinstance(source, str):
        raise SpecError(
            f"cannot load an architecture from {type(source).__name__}; pass a path, a "
            "dict, YAML text, an expression or a bundled name"
        )
    text = source.strip()
    if text in list_architectures():
        return _load_text(bundled_text(text), f"<bundled {text}.yaml>")
    if _EXPRESSION.match(text):
        return _from_expression(text)
    one_line = "\n" not in text
    if one_line and text.endswith((".yaml", ".yml", ".json")) and not read_files:
        raise SpecError(
            f"{text!r} looks like a file name; here an architecture is given as text "
            "(YAML, an expression or a bundled name), never read from a path"
        )
    if one_line and read_files and (text.endswith((".yaml", ".yml", ".json"))
                                    or _is_file(Path(text))):  # fmt: skip
        return _load_file(Path(text))
    if not one_line or ":" in text or text.startswith("#"):
        return _load_text(source, None)
    hint = did_you_mean(text, list_architectures())
    raise SpecError(
        f"{text!r} is not a file, a bundled architecture{hint}, an expression like "
        "unet(channels=[32,64], blocks=T1L1G1), or YAML text; bundled: "
        + ", ".join(list_architectures())
    )


def load_spec(source: Any) -> ArchSpec:
    """An `ArchSpec` from a path (.yaml/.yml/.json), a dict, YAML text, a one-line
    topology expression (`unet(channels=[32,64], blocks=T1L1G1)`) or a bundled name
    (`unet`, `hrnet`, `llm`, see `list_architectures()`)."""
    return load_source(source).spec


# --------------------------------------------------------------------------- writing

_FIELD_ORDER = (
    "name", "description", "in_channels", "input_size", "defaults", "pre", *TOPOLOGIES,
    "heads",
)  # fmt: skip


def _plain(model: BaseModel) -> dict[str, Any]:
    """Plain data of `model` without values equal to their defaults, in field order:
    equal specs give equal text however they were written. Options are written when
    set (an explicit `grid: null` too)."""
    data = model.model_dump(mode="json")
    out: dict[str, Any] = {}
    fields = type(model).model_fields
    # A topology's own keys (channels, blocks, ...) first, then its options.
    order = [n for n in fields if n not in OPTIONS] + [n for n in fields if n in OPTIONS]
    for name in order:
        field_info = fields[name]
        value = getattr(model, name)
        if value is UNSET:
            continue
        if isinstance(value, BaseModel):
            nested = _plain(value)
            if nested or name in TOPOLOGIES:
                out[name] = nested
            continue
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            out[name] = [_plain(v) for v in value]
            continue
        if isinstance(value, dict) and value and isinstance(next(iter(value.values())), BaseModel):
            out[name] = {k: _plain(v) for k, v in value.items()}
            continue
        if field_info.default is UNSET:  # an option field that the spec sets
            out[name] = data[name]
            continue
        if value is None or (
            not field_info.is_required() and data[name] == _json_default(field_info)
        ):
            continue
        out[name] = data[name]
    return out


def _json_default(field_info: Any) -> Any:
    default = field_info.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return default.model_dump(mode="json", exclude_none=True)
    return json.loads(json.dumps(default, default=str))


def dump_spec(spec: Any) -> str:
    """Canonical YAML of a spec (anything `load_spec` accepts); round-trips exactly."""
    spec = load_spec(spec)
    data = _plain(spec)
    ordered = {k: data[k] for k in _FIELD_ORDER if k in data}
    return dump_yaml(ordered)


def _refresh_options(node: Any) -> None:
    """Replace every option's schema by the option's current one (registered norms and
    activations join the enumerations) and drop pydantic's defaults of option fields."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for name in list(props):
                if name in OPTIONS:
                    props[name] = OPTIONS[name].schema
        for value in node.values():
            _refresh_options(value)
    elif isinstance(node, list):
        for value in node:
            _refresh_options(value)


def spec_json_schema() -> dict[str, Any]:
    """JSON Schema of the YAML architecture format (for editors: `stcnnt schema`),
    generated from the same types that validate specs."""
    with warnings.catch_warnings():  # option fields default to UNSET, which has no JSON
        warnings.simplefilter("ignore", PydanticJsonSchemaWarning)  # form; refreshed below
        schema = ArchSpec.model_json_schema(mode="validation")
    _refresh_options(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "stcnnt-dsl architecture"
    schema["oneOf"] = [{"required": [t]} for t in TOPOLOGIES]
    return schema
