"""A head decoder: a per-pixel two-layer MLP (1x1 conv, GELU, 1x1 conv) on the
backbone's output, for segmentation and enhancement heads (`decoder: mlp`, key
`width`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stcnnt_dsl import HeadContext, HeadDecoder, HeadKey
from stcnnt_dsl.language.options import Int

__all__ = ["DECODER"]


@dataclass(frozen=True)
class Cost:
    params: int
    by_module: dict[str, int] = field(default_factory=dict)


def _args(ctx: HeadContext) -> dict[str, Any]:
    v = ctx.values
    size = v["classes"] if ctx.task == "segmentation" else v["out_channels"]
    return {"in_channels": ctx.out_channels, "out_channels": size, "width": v["width"]}


def _cost(a: Mapping[str, Any], features: Sequence[Any], t: int, h: int, w: int) -> Cost:
    cin, width, cout = a["in_channels"], a["width"], a["out_channels"]
    positions = t * h * w
    return Cost(
        cin * width + width + width * cout + cout,
        {"conv1": 2 * cin * width * positions, "conv2": 2 * width * cout * positions},
    )


DECODER = HeadDecoder(
    "mlp", ("segmentation", "enhancement"),
    "a per-pixel MLP: 1x1 conv to `width` channels, GELU, 1x1 conv (plugin example)",
    "stcnnt_example_plugin.mlp_module:MLPHead", _args, _cost,
    keys={"width": HeadKey(64, "hidden channels of the MLP", type=Int())},
    example={"kind": "enhancement", "out_channels": 1, "decoder": "mlp", "width": 8},
)  # fmt: skip
