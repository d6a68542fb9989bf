"""Option layers of a spec: defaults for every cell, one stage's overrides, and the
optional stem (`pre`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    WithJsonSchema,
)

from .fields import (
    _COUNT,
    Block,
    _OptionFields,
    _positive,
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
