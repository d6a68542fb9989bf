"""The field types of the spec models: block strings, strict booleans, positive
counts, option fields (unset until a spec sets them) and the strict base model with
its did-you-mean for unknown keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..errors import DSLSyntaxError, SpecError, did_you_mean
from .blockspec import BlockSpec
from .options import OPTIONS, Int, OptionValueError, format_value
from .parser import _letters, format_block, parse_block

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


def block_schema() -> dict[str, Any]:
    """`_BLOCK_SCHEMA` with the cell letters registered now."""
    letters = _letters()
    cell = "|".join([f"[{letters.mixer}][01]", *letters.fixed])
    return {
        "type": "string",
        "pattern": rf"^[\s(]*({cell})",
        "description": f"a block string, e.g. T1L1G1 (cells: {', '.join(letters.mixer)} "
        f"followed by 0/1; {', '.join(letters.fixed)})",
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
