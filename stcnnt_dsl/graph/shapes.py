"""`check` and `infer_shapes`: what an input does to a model, without tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ShapeError, SpecError, did_you_mean
from .build import build_graph
from .guard import guard
from .model import ModelGraph, Shape, describe_rule, parse_shape

__all__ = ["LAYOUT_AXES", "Accepts", "accepts", "check", "checked", "infer_shapes", "to_btchw"]

# The axes of each layout of a model's input (`build(layout=...)`, `nn.axes.LAYOUTS`);
# MONAI's slices D are our frames T.
LAYOUT_AXES = {"BTCHW": "BTCHW", "BCTHW": "BCTHW", "BCHW": "BCHW", "BCHWD": "BCHWT"}


def layout_axes(layout: object) -> str:
    """The axes of `layout` (a name of LAYOUT_AXES, any case), or a `SpecError`."""
    if isinstance(layout, str) and layout.upper() in LAYOUT_AXES:
        return LAYOUT_AXES[layout.upper()]
    hint = did_you_mean(str(layout).upper(), LAYOUT_AXES) if isinstance(layout, str) else ""
    raise SpecError(f"unknown layout {layout!r}{hint}; layouts: {', '.join(LAYOUT_AXES)}", "layout")


def frames_word(axes: str) -> str | None:
    """How the layout names the frame axis: T, D for volumes, None for 2D images."""
    return None if "T" not in axes else "D" if axes == LAYOUT_AXES["BCHWD"] else "T"


def shape_values(input_shape: Sequence[int] | str, axes: str, whose: str) -> tuple[int, ...]:
    """An input shape (ints or "1,16,1,64,64") as one int per axis of `axes`; `whose`
    names the layout in the error (e.g. "layout BCHWD")."""
    values = input_shape
    if isinstance(values, str):
        try:
            values = [int(p) for p in values.replace("x", ",").split(",") if p.strip()]
        except ValueError:
            values = None
    values = tuple(values) if values is not None else ()
    if len(values) != len(axes):
        order = ",".join(axes).replace("T", "D") if axes == "BCHWT" else ",".join(axes)
        raise ShapeError(
            f"input shape must be {len(axes)} integers {order} ({whose}), got {input_shape!r}",
            rule="input shape",
        )
    return values


def to_btchw(input_shape: Sequence[int] | str, layout: str = "BTCHW") -> Shape:
    """An input shape written in `layout`'s axis order, as (B, T, C, H, W)."""
    axes = layout_axes(layout)
    values = shape_values(input_shape, axes, f"layout {layout.upper()}")
    size = dict(zip(axes, values, strict=True))
    return parse_shape(tuple(size.get(axis, 1) for axis in "BTCHW"))


def checked(
    source: Any,
    input_shape: Sequence[int] | str,
    *,
    memory: bool = False,
    layout: str = "BTCHW",
    **limits: Any,
) -> tuple[ModelGraph, Shape]:
    """The graph of `source` and the input shape as (B, T, C, H, W), after every check:
    parameters (before anything else), the input's channels and sizes (in the words of
    `layout`), and with `memory` the memory estimate for that input."""
    axes = layout_axes(layout)
    graph = build_graph(source)
    guard(graph, **limits)
    shape = to_btchw(input_shape, layout) if axes != "BTCHW" else parse_shape(input_shape)
    b, t, c, h, w = shape
    if c != graph.in_channels:
        hint = ""
        values = parse_shape(input_shape) if axes == "BTCHW" else ()
        if values and values[1] == graph.in_channels:  # C second: another layout's order
            hint = (
                " (for a shape in [B, C, H, W, D] order pass layout='BCHWD', for "
                "[B, C, T, H, W] layout='BCTHW')"
            )
        raise ShapeError(
            f"{graph.name} takes {graph.in_channels} input channel(s), the input shape has "
            f"C={c}{hint}",
            "in_channels",
            rule="input channels",
        )
    graph.check(t, h, w, batch=b, frames=frames_word(axes))
    if memory:
        guard(graph, shape, **limits)
    return graph, shape


def check(
    source: Any,
    input_shape: Sequence[int] | str,
    *,
    max_params: float | None = None,
    max_memory: float | None = None,
    layout: str = "BTCHW",
) -> None:
    """Raise a `ShapeError` (or `SpecError`) if the architecture cannot run on an input
    of `input_shape` = (B, T, C, H, W) (for training: batch norms need more than one
    value per channel), or a `ResourceError` if its estimated parameters or memory for
    that input exceed the limits (see `stcnnt_dsl.graph.guard`); return None if it can.
    `layout` is the order of `input_shape`'s axes, as in `build(layout=...)`:
    (B, C, H, W) for "BCHW", (B, C, H, W, D) for "BCHWD", ..."""
    checked(
        source,
        input_shape,
        memory=True,
        layout=layout,
        max_params=max_params,
        max_memory=max_memory,
    )


def infer_shapes(
    source: Any, input_shape: Sequence[int] | str, *, layout: str = "BTCHW"
) -> dict[str, Any]:
    """{"output": (B, T, C, H, W), "stages": {stage name: shape}, "nodes": {every
    node: shape}, "features": [...], "heads": {head name: shape}}, from the model graph,
    without running tensors. `layout` is the order of `input_shape`'s axes (as in
    `check`); the shapes returned are (B, T, C, H, W) inside the model."""
    graph, shape = checked(source, input_shape, layout=layout)
    b, t, _, h, w = shape
    nodes = graph.shapes(shape)
    return {
        "output": nodes[graph.output],
        "stages": {s.name: nodes[s.name] for s in graph.stages},
        "nodes": nodes,
        "features": [
            (b, t // graph.node(f.name).time_scale, f.channels, h // f.reduction, w // f.reduction)
            for f in graph.features
        ],
        "heads": {head.head_name: nodes[head.name] for head in graph.heads},
    }


@dataclass(frozen=True)
class Accepts:
    """The input sizes an architecture runs on, in the words of a layout: H and W
    multiples of `multiples` (at least `minimum`), or exactly `exact`; at least
    `min_frames` frames (T, or D for volumes; none in 2D), a multiple of
    `frames_multiple` (a model that halves T); `in_channels` channels."""

    layout: str
    in_channels: int
    multiples: tuple[int, int]
    minimum: int
    min_frames: int
    exact: tuple[int, int] | None
    text: str  # e.g. "H and W multiples of 32, any T"
    frames_multiple: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "in_channels": self.in_channels,
            "multiples": list(self.multiples),
            "minimum": self.minimum,
            "min_frames": self.min_frames,
            "frames_multiple": self.frames_multiple,
            "exact": None if self.exact is None else list(self.exact),
            "text": self.text,
        }

    def __str__(self) -> str:
        return self.text


def accepts(source: Any, *, layout: str = "BTCHW") -> Accepts:
    """Which input sizes `source` (anything `load_spec` accepts) runs on, without
    building it: `accepts("unet").text == "H and W multiples of 32, any T"`."""
    axes = layout_axes(layout)
    graph = build_graph(source)
    rule = graph.rule()
    return Accepts(
        layout=layout.upper(),
        in_channels=graph.in_channels,
        multiples=tuple(rule.multiple),
        minimum=rule.minimum,
        min_frames=rule.min_frames,
        exact=None if rule.exact is None else tuple(rule.exact),
        text=describe_rule(rule, frames_word(axes)),
        frames_multiple=rule.frames_multiple,
    )
