"""The spec models of the topologies (U-Net, HR-Net, LLM stack) and their size limits."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    WithJsonSchema,
    model_validator,
)

from .fields import (
    Blocks,
    Bool,
    Channels,
    PositiveInt,
    _error,
    _OptionFields,
)
from .options import Int, OptionValueError
from .stage_spec import StageSpec

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


_LEVEL_COUNT = Int(minimum=0)


def _level_count(name: str, value: Any) -> int:
    try:
        return _LEVEL_COUNT.check(value)
    except OptionValueError:
        raise _error(f"{name} must be an integer >= 0, got {value!r}") from None


LevelCount = Annotated[
    Any,
    BeforeValidator(lambda v, info: _level_count(info.field_name or "value", v)),
    WithJsonSchema(_LEVEL_COUNT.schema()),
]


class MixedUNetrSpec(_OptionFields):  # type: ignore[misc, valid-type]
    """Mixed U-Netr (the reference's `STCNNT_Mixed_Unetr`): ST-CNNT blocks for the encoder
    levels and the bridge, convolution units on the skips and for the decoder (or
    ST-CNNT blocks there too, `decoder_blocks`)."""

    channels: Channels
    levels: PositiveInt | None = None
    blocks: Blocks = Field(
        description="one block string for the encoder levels and the bridge, or one per "
        "level (the bridge uses the last), or one per level plus one for the bridge"
    )
    gate: Bool = Field(
        True,
        description="attention-gate the skips of levels 1 and deeper (level 0's skip has "
        "half the channels of its up-sampled input, so the reference never gates it)",
    )
    skip_units: Bool = Field(True, description="a residual convolution unit on every skip")
    conv: Literal["3d", "2d"] = Field(
        "3d", description="convolution units: 3x3x3 over (T, H, W) or 3x3 per frame"
    )
    up: Literal["conv", "interpolate"] = Field(
        "interpolate", description="up-sampling: bilinear x2, or bilinear x2 then a 3x3 conv"
    )
    halve_time: LevelCount = Field(
        0,
        description="how many levels, from the finest, also halve T when they down-sample "
        "(2x2x2 patch merging; the way back is trilinear x2, with a 3x3x3 conv for "
        "up: conv): the reference's min_T. T must then be a multiple of 2^halve_time",
    )
    partition: Literal["none", "2d", "3d"] = Field(
        "none",
        description="a window-partition input stage (the reference's use_window_partition): "
        "2x2 space-to-depth (3d: 2x2x2, halving T) and a 3x3x3 (conv: 2d, 3x3) conv to "
        "channels[0]; the levels then run at half size, and a decoder unit and an "
        "up-sampling bring 4 x channels[0] back to full size",
    )
    partition_order: Literal["space_to_depth", "reference"] = Field(
        "space_to_depth",
        description="the channel order of partition: 2d; reference: the reference's "
        "WindowPartition2D reshuffle (its view of [C, H/2, W/2, 2, 2] as [4C, H/2, W/2])",
    )
    input_unit: Bool = Field(
        False,
        description="with partition: a convolution unit on the full-size input, "
        "concatenated before the output (channels[0] more channels; the reference's "
        "encoder_on_input)",
    )
    decoder_blocks: Bool = Field(
        False,
        description="decoder levels are ST-CNNT blocks of their level's block string (the "
        "reference's transformer_for_upsampling) instead of convolution units",
    )
    window_sizing: WindowSizing = Field("fixed", description=_WINDOW_SIZING_HELP)
    encoder: list[StageSpec] | None = None
    bridge: StageSpec | None = None
    decoder: list[StageSpec] | None = Field(
        None, description="per-level options of the decoder blocks (with decoder_blocks)"
    )
    overrides: dict[str, StageSpec] | None = _overrides_field()

    @model_validator(mode="after")
    def _lengths(self) -> MixedUNetrSpec:
        n = self.num_levels
        field = "levels" if self.levels else "channels"
        _at_most(n, MAX_LEVELS, "levels", field, _LEVELS_WHY)
        if self.halve_time > n:
            raise _error(
                f"halve_time={self.halve_time} is more than the {n} levels that down-sample; "
                f"use 0 to {n}",
                "halve_time",
            )
        if n < 2:
            raise _error(
                "the mixed U-Netr needs at least 2 levels (the reference's one-level variant "
                "does not run: its decoder expects 3C channels and gets 2C)",
                field,
            )
        _check_len(
            self.blocks,
            (n, n + 1),
            "blocks",
            f"one per level, {n} levels, optionally one more for the bridge",
        )
        _check_len(self.encoder, (n,), "encoder", f"one entry per level, {n} levels")
        if self.input_unit and self.partition == "none":
            raise _error(
                "input_unit needs a partition stage (the reference builds its input unit "
                "only with the window partition); set partition: 2d or 3d, or drop input_unit",
                "input_unit",
            )
        if self.decoder is not None and not self.decoder_blocks:
            raise _error(
                "decoder sets options of decoder blocks, but the decoder levels are "
                "convolution units; add decoder_blocks: true, or drop decoder",
                "decoder",
            )
        _check_len(self.decoder, (n,), "decoder", f"one entry per level, {n} levels")
        return self

    @property
    def num_levels(self) -> int:
        return _levels(self.channels, self.levels)
