"""The built-in head decoders, registered through `register_head` like a user's: for
each, the keys only it reads, the arguments of its module (`stcnnt_dsl.nn.heads`) from
the head's values and the backbone, and its costs (`graph.head_costs`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..registry import HeadContext, HeadDecoder, HeadKey, register_head
from . import head_costs

__all__: list[str] = []

_NN = "stcnnt_dsl.nn.heads:"
_CONV_HELP = "a 1x1 convolution per frame on the backbone's output (the reference's SimpleConv)"


def _geometry(t: int, h: int, w: int) -> dict[str, int]:
    return dict(batch=1, frames=t, height=h, width=w)


def _reductions(features: Sequence[Any]) -> list[int]:
    return [f.reduction for f in features]


# --------------------------------------------------------------------------- conv


def _conv_args(ctx: HeadContext) -> dict[str, Any]:
    v = ctx.values
    size = v["classes"] if ctx.task == "segmentation" else v["out_channels"]
    return {"in_channels": ctx.out_channels, "out_channels": size,
            "residual": v.get("residual", False)}  # fmt: skip


def _conv_cost(a: Mapping[str, Any], features: Sequence[Any], t: int, h: int, w: int) -> Any:
    return head_costs.conv_head_cost(a["in_channels"], a["out_channels"], **_geometry(t, h, w))


register_head(
    HeadDecoder("conv", ("segmentation", "enhancement"), _CONV_HELP, _NN + "ConvHead",
                _conv_args, _conv_cost,
                example={"kind": "segmentation", "classes": 3})
)  # fmt: skip


# --------------------------------------------------------------------------- upernet


def _upernet_args(ctx: HeadContext) -> dict[str, Any]:
    v, channels = ctx.values, [f.channels for f in ctx.features]
    if v["reads"] == "output":  # the backbone's output as the only feature
        channels = [ctx.out_channels]
    if v["frames"] == "first" and v["mode"] == "3d":
        raise ctx.fail("frames: first (frame 0 only) is a mode 2d option; drop it or use "
                       "mode 2d", "frames")  # fmt: skip
    size = v["size"]
    if size is not None and len(size) != (2 if v["mode"] == "2d" else 3):
        raise ctx.fail(
            f"size must be [H, W] in mode 2d and [T, H, W] in mode 3d, got {list(size)} with "
            f"mode {v['mode']}",
            "size",
        )
    if len(v["bins"]) > channels[-1]:
        raise ctx.fail(
            f"the deepest feature's {channels[-1]} channels cannot be split among "
            f"{len(v['bins'])} pooling branches; use at most {channels[-1]} bins",
            "bins",
        )
    return {"feature_channels": channels, "classes": v["classes"],
            "hidden": v["hidden"] or channels[0], "bins": tuple(v["bins"]),
            "mode": v["mode"], "dropout": v["dropout"],
            "bottleneck_padding": v["bottleneck_padding"],
            "shared_smooth": v["shared_smooth"], "top_down": v["top_down"],
            "frames": v["frames"], "size": size, "reads": v["reads"]}  # fmt: skip


def _upernet_cost(a: Mapping[str, Any], features: Sequence[Any], t: int, h: int, w: int) -> Any:
    reductions = [1] if a.get("reads") == "output" else _reductions(features)
    frames = 1 if a.get("frames") == "first" else t
    return head_costs.upernet_head_cost(
        a["feature_channels"], a["classes"], hidden=a["hidden"], bins=a["bins"],
        mode=a["mode"], reductions=reductions, shared_smooth=a.get("shared_smooth", False),
        **_geometry(frames, h, w),
    )  # fmt: skip


def _upernet_batch(a: Mapping[str, Any], b: int, t: int) -> str | None:
    """The batch norm after the 1x1 pooling bin needs more than one value."""
    if 1 not in a["bins"] or b * (t if a["mode"] == "2d" else 1) > 1:
        return None
    return (
        f"the upernet decoder's batch norm after the 1x1 pooling bin needs more than one "
        f"sample in training (B*T = {b}*{t} in mode 2d); use a larger batch, drop bin 1, "
        "or mode 3d with B > 1"
    )


register_head(
    HeadDecoder(
        "upernet", ("segmentation",),
        "pyramid pooling on the deepest feature and an FPN over all features (UperNet), per "
        "frame (mode 2d) or over T, H, W (mode 3d)",
        _NN + "UperNetHead", _upernet_args, _upernet_cost, reads="features",
        keys={
            "hidden": HeadKey(None, "FPN width (default: the finest feature's channels)"),
            "bins": HeadKey((1, 2, 4, 6), "pyramid pooling sizes"),
            "mode": HeadKey("2d", "2d: per frame; 3d: over (T, H, W)"),
            "dropout": HeadKey(0.1, "channel dropout after the pyramid pooling"),
            "reads": HeadKey(
                "features",
                "features: the backbone's per-level features; output: its output only (what "
                "the reference's heads get)",
            ),
            "bottleneck_padding": HeadKey(
                0,
                "zero padding of the pyramid pooling's 1x1 convolution (the reference pads "
                "it by 1: one pixel more on every side)",
            ),
            "shared_smooth": HeadKey(
                False, "one FPN smoothing convolution for every level (the reference's)"
            ),
            "top_down": HeadKey(
                "pairwise",
                "pairwise: level i = smooth(up(lateral i+1) + lateral i) (the reference's); "
                "cumulative: the sum carries down (the FPN paper's)",
            ),
            "frames": HeadKey(
                "all",
                "all; first: frame 0 only, output [B, 1, classes, H, W] (the reference's "
                "UperNet2D); mode 2d",
            ),
            "size": HeadKey(
                None,
                "resize the output to [H, W] (mode 2d) or [T, H, W] (mode 3d) instead of the "
                "input's size (the reference resizes to its configured size)",
            ),
        },
        check_batch=_upernet_batch,
        example={"kind": "segmentation", "classes": 3, "decoder": "upernet", "bins": [1, 2]},
    )
)  # fmt: skip


# --------------------------------------------------------------------------- classification


def _norm_avg_args(ctx: HeadContext) -> dict[str, Any]:
    v = ctx.values
    return {"in_channels": ctx.out_channels, "classes": v["classes"], "per_frame": v["per_frame"]}


def _norm_avg_cost(a: Mapping[str, Any], features: Sequence[Any], t: int, h: int, w: int) -> Any:
    return head_costs.norm_avg_head_cost(
        a["in_channels"], a["classes"], batch=1, frames=t, per_frame=a["per_frame"]
    )


def _conv_avg_args(ctx: HeadContext) -> dict[str, Any]:
    v = ctx.values
    return {"in_channels": ctx.out_channels, "classes": v["classes"], "hidden": v["hidden"],
            "per_frame": v["per_frame"]}  # fmt: skip


def _conv_avg_cost(a: Mapping[str, Any], features: Sequence[Any], t: int, h: int, w: int) -> Any:
    return head_costs.conv_avg_head_cost(
        a["in_channels"], a["classes"], batch=1, frames=t, hidden=a["hidden"],
        per_frame=a["per_frame"],
    )  # fmt: skip


register_head(
    HeadDecoder(
        "norm_avg", ("classification",),
        "layer norm over channels, mean, linear (the reference's NormPoolLinear)",
        _NN + "NormAvgHead", _norm_avg_args, _norm_avg_cost,
        example={"kind": "classification", "classes": 3},
    )
)  # fmt: skip
register_head(
    HeadDecoder(
        "conv_avg", ("classification",),
        "1x1 convolution to `hidden` channels, mean, linear (the reference's ConvPoolLinear)",
        _NN + "ConvAvgHead", _conv_avg_args, _conv_avg_cost,
        keys={"hidden": HeadKey(2048, "channels of the 1x1 convolution")},
        example={"kind": "classification", "classes": 3, "pooling": "conv_avg", "hidden": 16},
    )
)  # fmt: skip


# --------------------------------------------------------------------------- enhancement


def _multidepth_args(ctx: HeadContext) -> dict[str, Any]:
    v, channels = ctx.values, [f.channels for f in ctx.features]
    if v["depth"] > len(channels):
        raise ctx.fail(
            f"the multidepth decoder reads the {v['depth']} deepest features but this "
            f"backbone has {len(channels)} ({', '.join(f.name for f in ctx.features)}); set "
            f"depth to at most {len(channels)}",
            "depth",
        )
    return {"feature_channels": channels, "out_channels": v["out_channels"],
            "depth": v["depth"], "residual": v["residual"]}  # fmt: skip


def _multidepth_cost(
    a: Mapping[str, Any], features: Sequence[Any], t: int, h: int, w: int
) -> Any:  # fmt: skip
    return head_costs.multi_depth_head_cost(
        a["feature_channels"], a["out_channels"], depth=a["depth"],
        reductions=_reductions(features), **_geometry(t, h, w),
    )  # fmt: skip


def _unetr_args(ctx: HeadContext) -> dict[str, Any]:
    v = ctx.values
    channels, reductions = [f.channels for f in ctx.features], _reductions(ctx.features)
    for i in range(len(reductions) - 1):
        if reductions[i + 1] % reductions[i]:
            raise ctx.fail(
                f"the unetr decoder needs each feature an integer factor coarser than the one "
                f"before; this backbone's reductions are {reductions}",
                "decoder",
            )
    return {"feature_channels": channels, "out_channels": v["out_channels"],
            "reductions": reductions,
            "in_channels": ctx.in_channels if reductions[0] != 1 else None,
            "mode": v["mode"], "residual": v["residual"]}  # fmt: skip


def _unetr_cost(a: Mapping[str, Any], features: Sequence[Any], t: int, h: int, w: int) -> Any:
    return head_costs.unetr_head_cost(
        a["feature_channels"], a["out_channels"], reductions=a["reductions"],
        in_channels=a["in_channels"], mode=a["mode"], **_geometry(t, h, w),
    )  # fmt: skip


register_head(
    HeadDecoder(
        "multidepth", ("enhancement",),
        "1x1 convolutions on the deepest features, resized and summed (the reference's "
        "SimpleMultidepthConv)",
        _NN + "MultiDepthHead", _multidepth_args, _multidepth_cost, reads="features",
        keys={"depth": HeadKey(4, "how many of the deepest features")},
        example={"kind": "enhancement", "out_channels": 1, "decoder": "multidepth", "depth": 2},
    )
)  # fmt: skip
register_head(
    HeadDecoder(
        "unetr", ("enhancement",), "a UNETR-style decoder over the features, coarsest first",
        _NN + "UNETRHead", _unetr_args, _unetr_cost, reads="features",
        keys={"mode": HeadKey("2d", "2d: per frame; 3d: over (T, H, W)")},
        example={"kind": "enhancement", "out_channels": 1, "decoder": "unetr"},
    )
)  # fmt: skip
