"""The spec model of a task head (`heads:`), checked against its kind's keys
(`stcnnt_dsl.language.heads`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.fields import FieldInfo

from ..errors import did_you_mean
from ..registry import HeadDecoder, on_register
from .fields import (
    _COUNT,
    UNSET,
    _error,
    _positive,
    _Strict,
    _strict_bool,
)
from .heads import HEAD_KINDS, HeadKind, head_keys
from .options import OptionValueError


def _key_type(name: str) -> Any:
    """The option type of a key a plugin's decoder declares (None for built-in keys)."""
    for kind in HEAD_KINDS.values():
        key = kind.keys.get(name)
        if key is not None and key.type is not None:
            return key.type
    return None


_HEAD_WORDS = {
    "top_down": ("pairwise", "cumulative"),
    "frames": ("all", "first"),
    "reads": ("features", "output"),
}


def _head_value(name: str, value: Any) -> Any:
    """A head key's value, checked by what it is (the kind decides which keys apply)."""
    typed = _key_type(name)
    if typed is not None:
        try:
            return typed.check(value)
        except OptionValueError as err:
            raise _error(f"{name} {err}") from None
    if name in ("classes", "out_channels", "hidden", "depth"):
        return _positive(name, value)
    if name in ("per_frame", "residual", "shared_smooth"):
        return _strict_bool(value)
    if name == "bottleneck_padding":
        if value not in (0, 1) or isinstance(value, bool):
            raise _error(f"bottleneck_padding must be 0 or 1, got {value!r}")
        return value
    if name == "size":
        if value is None:
            return None
        if not isinstance(value, list) or len(value) not in (2, 3):
            raise _error(f"size must be [H, W] (mode 2d) or [T, H, W] (mode 3d), got {value!r}")
        return tuple(_positive("size", v) for v in value)
    if name in _HEAD_WORDS and value not in _HEAD_WORDS[name]:
        raise _error(f"{name} must be one of {', '.join(_HEAD_WORDS[name])}, got {value!r}")
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
    typed = _key_type(name)
    if typed is not None:
        return typed.schema()
    if name in ("classes", "out_channels", "hidden", "depth"):
        return _COUNT.schema()
    if name in ("per_frame", "residual", "shared_smooth"):
        return {"type": "boolean"}
    if name == "bottleneck_padding":
        return {"enum": [0, 1]}
    if name == "size":
        return {"anyOf": [{"type": "null"}, {"type": "array", "items": _COUNT.schema(),
                                               "minItems": 2, "maxItems": 3}]}  # fmt: skip
    if name in _HEAD_WORDS:
        return {"enum": list(_HEAD_WORDS[name])}
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
    if name not in words:
        return {"type": "string"}
    return {"enum": words[name]}


def _key_help(kind: HeadKind, key: str) -> str:
    """What a key of a head of `kind` means, with its default."""
    info = kind.keys[key]
    if key == kind.choice:
        text = "; ".join(f"{name}: {help}" for name, help in kind.choices.items())
    else:
        text = info.help
    if info.used_by:
        text += f" (read by {kind.choice} {' and '.join(info.used_by)})"
    if info.default is not None:
        default = list(info.default) if isinstance(info.default, tuple) else info.default
        text += f" (default: {json.dumps(default)})"
    return text


def _kind_schema(name: str) -> dict[str, Any]:
    """What a head of kind `name` may hold: its size key (required), its keys and
    decoders, and the keys a decoder alone reads (the decoder named, or its default)."""
    kind = HEAD_KINDS[name]
    rules = []
    for key, info in kind.keys.items():
        if info.used_by:
            rule: dict[str, Any] = {"properties": {kind.choice: {"enum": list(info.used_by)}}}
            if kind.default not in info.used_by:
                rule["required"] = [kind.choice]
            rules.append({"if": {"required": [key]}, "then": rule})
    return {
        "if": {"properties": {"kind": {"const": name}}, "required": ["kind"]},
        "then": {
            "required": [kind.size],
            "propertyNames": {"enum": ["kind", *kind.keys]},
            "properties": {
                key: {"description": _key_help(kind, key)}
                | ({"enum": list(kind.choices)} if key == kind.choice else {})
                for key in kind.keys
            },
            "allOf": rules,
        },
    }


def _per_kind(schema: dict[str, Any]) -> None:
    """The JSON Schema of a head says what each kind accepts, as `_fits_its_kind` checks,
    and what each key means."""
    props = schema["properties"]
    props["kind"]["description"] = "; ".join(f"{n}: {k.help}" for n, k in HEAD_KINDS.items())
    for key, prop in props.items():
        prop.pop("title", None)
        if key != "kind":
            helps = [f"{n} heads: {_key_help(k, key)}" for n, k in HEAD_KINDS.items()
                     if key in k.keys]  # fmt: skip
            prop["description"] = "; ".join(helps)
    schema["allOf"] = [_kind_schema(name) for name in HEAD_KINDS]


class HeadSpec(_Strict):
    """A task head: `kind` (segmentation, classification, enhancement) and its keys
    (see `stcnnt_dsl.language.heads`)."""

    model_config = ConfigDict(json_schema_extra=_per_kind)

    kind: Annotated[Any, WithJsonSchema(_head_schema("kind"))]  # described by _per_kind

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


def _head_field(name: str) -> FieldInfo:
    annotated = Annotated[
        Any,
        BeforeValidator(lambda v, n=name: _head_value(n, v)),
        PlainSerializer(lambda v: None if v is UNSET else list(v) if isinstance(v, tuple) else v),
        WithJsonSchema(_head_schema(name)),
    ]
    return FieldInfo.from_annotated_attribute(annotated, Field(default=UNSET))


def _sync_keys(name: str, decoder: HeadDecoder | None) -> None:
    """One field per head key of the registered decoders (their schemas and the enums
    of decoder names made anew), in `head_keys()` order."""
    fields = HeadSpec.__pydantic_fields__
    kind = fields["kind"]
    fields.clear()
    fields["kind"] = kind
    fields.update((key, _head_field(key)) for key in head_keys() if key != "kind")
    HeadSpec.model_rebuild(force=True)


on_register("head", _sync_keys)
