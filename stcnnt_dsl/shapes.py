"""Shape checking without tensors: `check` and `infer_shapes`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import ShapeError
from .plan import Plan, make_plan

__all__ = ["check", "infer_shapes", "parse_shape"]


def parse_shape(shape: Sequence[int] | str) -> tuple[int, int, int, int, int]:
    """(B, T, C, H, W) from a sequence or a "B,T,C,H,W" string."""
    if isinstance(shape, str):
        try:
            shape = [int(p) for p in shape.replace("x", ",").split(",") if p.strip()]
        except ValueError:
            raise ShapeError(
                f"input shape must be B,T,C,H,W integers, got {shape!r}", rule="input shape"
            ) from None
    values = tuple(shape)
    if len(values) != 5 or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ShapeError(
            f"input shape must be 5 integers [B, T, C, H, W] (T = frames or slices, 1 for "
            f"2D), got {values!r}",
            rule="input shape",
        )
    if min(values) < 1:
        raise ShapeError(
            f"every dimension of [B, T, C, H, W] must be >= 1, got {values}", rule="input shape"
        )
    if max(values) >= 2**63:  # beyond any tensor dimension (and Python's int printing)
        raise ShapeError("a dimension of the input shape is beyond 2^63", rule="input shape")
    return values  # type: ignore[return-value]


def _validated_plan(
    source: Any, shape: Sequence[int] | str, *, memory: bool = False, **limits: Any
) -> tuple[Plan, tuple]:
    from .backbones import BACKBONES
    from .resources import guard

    plan = source if isinstance(source, Plan) else make_plan(source)
    guard(plan, **limits)  # parameters: before anything is constructed
    b, t, c, h, w = parse_shape(shape)
    if c != plan.spec.in_channels:
        raise ShapeError(
            f"{plan.spec.name} takes {plan.spec.in_channels} input channel(s), the input "
            f"shape has C={c}",
            "in_channels",
            rule="input channels",
        )
    # Constructing on the meta device runs every construction-time check (heads,
    # patches, norms) without allocating memory.
    with torch.device("meta"):
        BACKBONES[plan.spec.topology](plan)
    plan.check(t, h, w)
    if memory:
        guard(plan, (b, t, c, h, w), **limits)  # weights + activations for this input
    return plan, (b, t, c, h, w)


def check(
    source: Any,
    input_shape: Sequence[int] | str,
    *,
    max_params: float | None = None,
    max_memory: float | None = None,
) -> None:
    """Raise a `ShapeError` (or `SpecError`) if the architecture cannot run on an input
    of `input_shape` = (B, T, C, H, W), or a `ResourceError` if its estimated parameters
    or memory for that input exceed the limits (see `stcnnt_dsl.resources`); return
    None if it can."""
    _validated_plan(source, input_shape, memory=True, max_params=max_params, max_memory=max_memory)


def infer_shapes(source: Any, input_shape: Sequence[int] | str) -> dict[str, Any]:
    """{"output": (B, T, C, H, W), "stages": {spec path or key: shape}, "features": [...]}
    computed from the plan, without running tensors."""
    plan, (b, t, _, h, w) = _validated_plan(source, input_shape)
    stages = {
        stage.key: (b, t, stage.out_channels, h // stage.scale, w // stage.scale)
        for stage in plan.stages
    }
    features = [
        (b, t, f["channels"], h // f["reduction"], w // f["reduction"]) for f in plan.feature_info
    ]
    return {"output": (b, t, plan.out_channels, h, w), "stages": stages, "features": features}
