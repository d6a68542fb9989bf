"""The whole spec (`ArchSpec`: one topology, defaults, stem, heads) and `SpecSource`,
a spec with the positions of the text it was read from."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.fields import FieldInfo

from ..errors import SpecError, caret_excerpt, either
from ..registry import TOPOLOGIES, Topology, on_register, topology_names
from .cascade import Layer
from .fields import (
    PositiveInt,
    _error,
    _Strict,
)
from .head_spec import HeadSpec
from .options import OPTIONS
from .stage_spec import DefaultsSpec, PreSpec
from .yamlio import Positions

HEAD_NAME = r"[a-z_][a-z0-9_]*"  # a head's name: the module heads.NAME, its output's key


def _heads_schema(schema: dict[str, Any]) -> None:
    """`heads:` in the JSON Schema: one head or more, named as `_head_names` checks."""
    mapping = next(s for s in schema["anyOf"] if s.get("type") == "object")
    mapping.update(minProperties=1, propertyNames={"pattern": f"^{HEAD_NAME}$"})


def _input_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        return OPTIONS["input_size"].check(value)
    except SpecError as err:
        raise _error(err.reason) from None


class ArchSpec(_Strict):
    """A whole backbone. Exactly one topology key is set (`unet`, `hrnet`, `llm` or a
    registered one: each registered topology adds its key, see `_add_topology`)."""

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
    heads: dict[str, HeadSpec] | None = Field(
        None,
        description="task heads by name: {kind: segmentation|classification|enhancement, "
        "...}; with heads, build() returns a Model whose forward gives one output per head",
        json_schema_extra=_heads_schema,
    )

    @model_validator(mode="after")
    def _head_names(self) -> ArchSpec:
        for name in self.heads or {}:
            if not re.fullmatch(HEAD_NAME, name):
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
        given = [t for t in TOPOLOGIES if getattr(self, t, None) is not None]
        if len(given) != 1:
            raise _error(
                f"a spec needs exactly one topology: {either(topology_names())}"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if not self.name:
            object.__setattr__(self, "name", given[0])
        return self

    @property
    def topology(self) -> str:
        """The topology's name: `unet`, `hrnet`, `llm` or a registered one."""
        return next(t for t in TOPOLOGIES if getattr(self, t, None) is not None)

    @property
    def body(self) -> BaseModel:
        """The topology's own spec."""
        return getattr(self, self.topology)


def _sync_topology(name: str, topology: Topology | None) -> None:
    """Give `ArchSpec` the key of a registered topology (optional, its section's model),
    or take it away when the topology is removed."""
    fields = ArchSpec.__pydantic_fields__
    if topology is None:
        fields.pop(name, None)
    else:
        fields[name] = FieldInfo(
            annotation=topology.spec | None, default=None, description=topology.description
        )
    fields["heads"] = fields.pop("heads")  # the topologies before the heads, as in dumps
    ArchSpec.model_rebuild(force=True)


on_register("topology", _sync_topology)
# a new head decoder changes HeadSpec's fields (language.head_spec): rebuild what holds it
on_register("head", lambda name, decoder: ArchSpec.model_rebuild(force=True))


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

    @functools.cached_property
    def base_layers(self) -> tuple[Layer, ...]:
        """The option layers every stage starts from (`defaults:` < the topology
        section), made once per spec rather than once per stage."""
        spec = self.spec
        return (
            Layer("defaults", spec.defaults.options(), "defaults"),
            Layer("topology", spec.body.options(), spec.topology),
        )
