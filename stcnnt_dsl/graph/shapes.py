"""`check` and `infer_shapes`: what an input does to a model, without tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ShapeError
from .build import build_graph
from .guard import guard
from .model import ModelGraph, Shape, parse_shape

__all__ = ["check", "checked", "infer_shapes"]


def checked(
    source: Any, input_shape: Sequence[int] | str, *, memory: bool = False, **limits: Any
) -> tuple[ModelGraph, Shape]:
    """The graph of `source` and the parsed input shape, after every check: parameters
    (before anything else), the input's channels and sizes, and with `memory` the
    memory estimate for that input."""
    graph = build_graph(source)
    guard(graph, **limits)
    shape = parse_shape(input_shape)
    b, t, c, h, w = shape
    if c != graph.in_channels:
        raise ShapeError(
            f"{graph.name} takes {graph.in_channels} input channel(s), the input shape has C={c}",
            "in_channels",
            rule="input channels",
        )
    graph.check(t, h, w, batch=b)
    if memory:
        guard(graph, shape, **limits)
    return graph, shape


def check(
    source: Any,
    input_shape: Sequence[int] | str,
    *,
    max_params: float | None = None,
    max_memory: float | None = None,
) -> None:
    """Raise a `ShapeError` (or `SpecError`) if the architecture cannot run on an input
    of `input_shape` = (B, T, C, H, W) (for training: batch norms need more than one
    value per channel), or a `ResourceError` if its estimated parameters or memory for
    that input exceed the limits (see `stcnnt_dsl.graph.guard`); return None if it can."""
    checked(source, input_shape, memory=True, max_params=max_params, max_memory=max_memory)


def infer_shapes(source: Any, input_shape: Sequence[int] | str) -> dict[str, Any]:
    """{"output": (B, T, C, H, W), "stages": {stage name: shape}, "nodes": {every
    node: shape}, "features": [...], "heads": {head name: shape}}, from the model graph,
    without running tensors."""
    graph, shape = checked(source, input_shape)
    b, t, _, h, w = shape
    nodes = graph.shapes(shape)
    return {
        "output": nodes[graph.output],
        "stages": {s.name: nodes[s.name] for s in graph.stages},
        "nodes": nodes,
        "features": [
            (b, t, f.channels, h // f.reduction, w // f.reduction) for f in graph.features
        ],
        "heads": {head.head_name: nodes[head.name] for head in graph.heads},
    }
