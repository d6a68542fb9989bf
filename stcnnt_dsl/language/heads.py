"""What a task head can be: the kinds, their decoders, and every head key with its one
default (the spec validates against this table; the model graph resolves from it).

    heads:
      seg: {kind: segmentation, classes: 3}                      # decoder: conv
      seg2: {kind: segmentation, classes: 3, decoder: upernet}
      label: {kind: classification, classes: 5, pooling: conv_avg}
      clean: {kind: enhancement, out_channels: 1, residual: true}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["HEAD_KEYS", "HEAD_KINDS", "HeadKey", "HeadKind"]


@dataclass(frozen=True)
class HeadKey:
    """A key of a head: its default (None: required or derived), what it means, and the
    decoders (or poolings) that read it (empty: every one of the kind)."""

    default: Any
    help: str
    used_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeadKind:
    """`choice`: the key that picks the module (`decoder` or `pooling`) and its values;
    `size`: the required key that sets the output size (`classes` or `out_channels`)."""

    size: str
    choice: str
    choices: dict[str, str]
    keys: dict[str, HeadKey]
    help: str


HEAD_KINDS: dict[str, HeadKind] = {
    "segmentation": HeadKind(
        size="classes",
        choice="decoder",
        choices={
            "conv": "a 1x1 convolution per frame on the backbone's output (the reference's "
            "SimpleConv)",
            "upernet": "pyramid pooling on the deepest feature and an FPN over all features "
            "(UperNet), per frame (mode 2d) or over T, H, W (mode 3d)",
        },
        keys={
            "classes": HeadKey(None, "number of classes: output [B, T, classes, H, W]"),
            "decoder": HeadKey("conv", "conv or upernet"),
            "hidden": HeadKey(
                None, "FPN width (default: the finest feature's channels)", ("upernet",)
            ),
            "bins": HeadKey((1, 2, 4, 6), "pyramid pooling sizes", ("upernet",)),
            "mode": HeadKey("2d", "2d: per frame; 3d: over (T, H, W)", ("upernet",)),
            "dropout": HeadKey(0.1, "channel dropout after the pyramid pooling", ("upernet",)),
            "reads": HeadKey(
                "features",
                "features: the backbone's per-level features; output: its output only (what "
                "the reference's heads get)",
                ("upernet",),
            ),
            "bottleneck_padding": HeadKey(
                0,
                "zero padding of the pyramid pooling's 1x1 convolution (the reference pads "
                "it by 1: one pixel more on every side)",
                ("upernet",),
            ),
            "shared_smooth": HeadKey(
                False,
                "one FPN smoothing convolution for every level (the reference's)",
                ("upernet",),
            ),
            "top_down": HeadKey(
                "pairwise",
                "pairwise: level i = smooth(up(lateral i+1) + lateral i) (the reference's); "
                "cumulative: the sum carries down (the FPN paper's)",
                ("upernet",),
            ),
            "frames": HeadKey(
                "all",
                "all; first: frame 0 only, output [B, 1, classes, H, W] (the reference's "
                "UperNet2D); mode 2d",
                ("upernet",),
            ),
            "size": HeadKey(
                None,
                "resize the output to [H, W] (mode 2d) or [T, H, W] (mode 3d) instead of the "
                "input's size (the reference resizes to its configured size)",
                ("upernet",),
            ),
        },
        help="per-pixel classes",
    ),
    "classification": HeadKind(
        size="classes",
        choice="pooling",
        choices={
            "norm_avg": "layer norm over channels, mean, linear (the reference's NormPoolLinear)",
            "conv_avg": "1x1 convolution to `hidden` channels, mean, linear (the "
            "reference's ConvPoolLinear)",
        },
        keys={
            "classes": HeadKey(None, "number of classes: output [B, classes]"),
            "pooling": HeadKey("norm_avg", "norm_avg or conv_avg"),
            "hidden": HeadKey(2048, "channels of the 1x1 convolution", ("conv_avg",)),
            "per_frame": HeadKey(False, "one prediction per frame: [B, T, classes]"),
        },
        help="one label per sample (or per frame)",
    ),
    "enhancement": HeadKind(
        size="out_channels",
        choice="decoder",
        choices={
            "conv": "a 1x1 convolution per frame on the backbone's output (the reference's "
            "SimpleConv)",
            "multidepth": "1x1 convolutions on the deepest features, resized and summed "
            "(the reference's SimpleMultidepthConv)",
            "unetr": "a UNETR-style decoder over the features, coarsest first",
        },
        keys={
            "out_channels": HeadKey(None, "output channels: [B, T, out_channels, H, W]"),
            "decoder": HeadKey("conv", "conv, multidepth or unetr"),
            "residual": HeadKey(
                False, "add the input to the output (out_channels must equal the input channels)"
            ),
            "depth": HeadKey(4, "how many of the deepest features", ("multidepth",)),
            "mode": HeadKey("2d", "2d: per frame; 3d: over (T, H, W)", ("unetr",)),
        },
        help="an image out (denoising, super-resolution, reconstruction)",
    ),
}

HEAD_KEYS = ("kind", *sorted({k for kind in HEAD_KINDS.values() for k in kind.keys}))
"""Every key a head may have (each kind accepts a subset)."""
