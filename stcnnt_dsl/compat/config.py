"""A reference configuration (the keys of the reference implementation's argparse parsers)
translated into an `ArchSpec` that builds the same backbone.

What the reference decides at construction time is reproduced here, in particular its
window sizing per block: two helpers that compute the number of windows and of patches
for each block, one of which changes the window/patch lists it is given *in place*, so
that blocks built later (the U-Net's bridge and decoder, the HR-Net's later stages) see
changed values. The translation replays that sequence and writes the outcome as explicit
per-stage options (`grid` for G/V cells, `window`/`patch` in pixels for L cells).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import SpecError
from ..graph.topologies.mixed_unetr import decoder_channels
from ..language.spec import ArchSpec, load_spec
from .sizing import (
    METHODS,
    Geometry,
    ReferenceSizer,
    hrnet_geometry,
    mixed_unetr_geometry,
    unet_geometry,
)

__all__ = ["POST_MODELS", "REFERENCE_DEFAULTS", "reference_spec"]

# Values used when a key is missing: the reference parser's values as dumped in the
# fixtures' full configurations (shared/reference), which agree with DESIGN section 6.
# Older parser versions default to window_size [64, 64], patch_size [16, 16] and
# stride_t 2: configurations from those versions list the keys explicitly.
REFERENCE_DEFAULTS: dict[str, Any] = {
    "no_in_channel": 1, "height": 256, "width": 256,
    "cell_type": "sequential", "block_dense_connection": 1, "a_type": "conv",
    "mixer_type": "conv", "window_size": [16, 16], "patch_size": [2, 2],
    "window_sizing_method": "mixed", "n_head": 32, "kernel_size": 3, "stride": 1,
    "padding": 1, "stride_s": 1, "stride_t": 1, "mixer_kernel_size": 5, "mixer_stride": 1,
    "mixer_padding": 2, "normalize_Q_K": False, "cosine_att": 0,
    "att_with_relative_postion_bias": 1, "att_dropout_p": 0.0, "dropout_p": 0.1,
    "att_with_output_proj": 1, "scale_ratio_in_mixer": 4.0, "norm_mode": "instance2d",
    "shuffle_in_window": 0, "is_causal": False, "temporal_flash_attention": False,
    "activation_func": "prelu", "upsample_method": "linear",
    "backbone_unet.C": 32, "backbone_unet.num_resolution_levels": 2,
    "backbone_unet.block_str": ["T1L1G1"], "backbone_unet.use_unet_attention": 1,
    "backbone_unet.with_conv": 1,
    "no_out_channel": 2,
    "backbone_hrnet.C": 32, "backbone_hrnet.num_resolution_levels": 2,
    "backbone_hrnet.block_str": ["T1L1G1"],
    "time": 1, "use_patches": False, "patch_height": 32, "patch_width": 32, "patch_time": 1,
    "backbone_mixed_unetr.C": 32, "backbone_mixed_unetr.num_resolution_levels": 2,
    "backbone_mixed_unetr.block_str": ["T1L1G1", "T1L1G1"],
    "backbone_mixed_unetr.use_unet_attention": 1, "backbone_mixed_unetr.with_conv": 0,
    "backbone_mixed_unetr.min_T": 16, "backbone_mixed_unetr.encoder_on_skip_connection": 1,
    "backbone_mixed_unetr.transformer_for_upsampling": 0,
    "backbone_mixed_unetr.n_heads": [32, 32, 32, 32], "backbone_mixed_unetr.use_conv_3d": 1,
    "backbone_mixed_unetr.use_window_partition": 0, "backbone_mixed_unetr.encoder_on_input": 1,
}  # fmt: skip

_ACTIVATIONS = {
    "prelu": "prelu", "gelu": "gelu_tanh", "leakyrelu": "leaky_relu", "relu": "relu",
    "relu6": "relu6", "elu": "elu", "selu": "selu", "celu": "celu",
}  # fmt: skip
_NORMS = ("layer", "batch2d", "instance2d", "batch3d", "instance3d")
_BACKBONES = {"STCNNT_UNET": "unet", "STCNNT_HRNET": "hrnet", "STCNNT_mUNET": "mixed_unetr"}
_KINDS = {"L": "local", "G": "global", "T": "temporal", "V": "vit"}


# --------------------------------------------------------------------------- reading values


def _flatten(config: Any) -> dict[str, Any]:
    """Top-level keys plus `backbone_x.key` for nested backbone sections. Accepts a
    mapping, a JSON string, or a namespace object (argparse / the reference's own)."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as err:
            raise SpecError(f"the reference configuration is not valid JSON: {err}") from None
    if not isinstance(config, Mapping):
        if not hasattr(config, "__dict__"):
            raise SpecError(
                f"a reference configuration is a dict (its parser's keys), got "
                f"{type(config).__name__}"
            )
        config = vars(config)
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) or (
            str(key).startswith("backbone_") and hasattr(value, "__dict__")
        ):
            section = value if isinstance(value, Mapping) else vars(value)
            flat.update({f"{key}.{k}": v for k, v in section.items()})
        else:
            flat[str(key)] = value
    return flat


class _Config:
    """Typed access to a flattened configuration; every error names the key."""

    def __init__(self, flat: Mapping[str, Any]) -> None:
        self.flat = flat

    def raw(self, key: str) -> Any:
        return self.flat[key] if key in self.flat else REFERENCE_DEFAULTS[key]

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise SpecError(f"{key} must be 0/1 or true/false, got {value!r}", key)

    def integer(self, key: str, minimum: int = 0) -> int:
        value = self.raw(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SpecError(f"{key} must be an integer >= {minimum}, got {value!r}", key)
        return value

    def number(self, key: str) -> float:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{key} must be a number, got {value!r}", key)
        return float(value)

    def choice(self, key: str, choices: Any) -> str:
        value = self.raw(key)
        if value not in choices:
            raise SpecError(
                f"{key}={value!r} is not supported; the reference accepts "
                f"{', '.join(map(str, choices))}",
                key,
            )
        return value

    def pair(self, key: str) -> list[int]:
        value = self.raw(key)
        items = value if isinstance(value, (list, tuple)) else [value]
        if len(items) == 1 and not isinstance(value, (list, tuple)):
            items = [value, value]
        if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise SpecError(f"{key} must be an int or a list of two ints, got {value!r}", key)
        if min(items) < 1:
            raise SpecError(f"{key} must be positive, got {value!r}", key)
        return list(items)


def _blocks(cfg: _Config, key: str, count: int, last_is_bridge: bool) -> list[list[tuple]]:
    """Per-stage block strings, parsed as the reference does: (letter, digit) pairs;
    `digit == "1"` means a mixer (so L2 silently means none); C needs 2 or 3."""
    value = cfg.raw(key)
    texts = value if isinstance(value, (list, tuple)) else [value] * count
    if not texts:
        raise SpecError(f"{key} is an empty list", key)
    if len(texts) < count:  # the reference silently uses the first for every stage
        texts = [texts[0]] * count
    elif last_is_bridge:  # U-Net: levels take the first entries, the bridge the last
        texts = [*texts[: count - 1], texts[-1]]
    parsed = []
    for text in texts[:count]:
        if not isinstance(text, str) or not text or len(text) % 2:
            raise SpecError(f"{key}: {text!r} is not a block string like T1L1G1", key)
        cells = []
        for letter, digit in zip(text[::2], text[1::2], strict=True):
            ok = (letter in _KINDS and digit in "0123") or (letter == "C" and digit in "23")
            if not ok:
                raise SpecError(f"{key}: cell {letter}{digit} in {text!r} is not valid", key)
            cells.append((letter, digit))
        parsed.append(cells)
    return parsed


# --------------------------------------------------------------------------- translation


def _canonical(pair: tuple[int, int]) -> int | list[int]:
    return pair[0] if pair[0] == pair[1] else list(pair)


def _stage_options(geom: Geometry, cells: list[tuple], name: str, linear_vit: bool) -> dict:
    """Window options of one block from the reference geometry."""
    letters = {letter for letter, _ in cells}
    if not letters & {"L", "G", "V"}:
        return {}
    (h, w), nw, npch = geom.size, geom.num_wind, geom.num_patch
    window = (h // nw[0], w // nw[1])
    patch = (window[0] // npch[0], window[1] // npch[1])
    if window[0] * nw[0] != h or window[1] * nw[1] != w or 0 in window:
        raise SpecError(
            f"block {name} at {h}x{w} gets {nw[0]}x{nw[1]} windows, which do not divide it "
            "(the reference's own construction asserts here); change height/width or "
            "window_size",
            "window_size",
        )
    if patch[0] * npch[0] != window[0] or patch[1] * npch[1] != window[1] or 0 in patch:
        raise SpecError(
            f"block {name}: a {window[0]}x{window[1]} window cannot hold {npch[0]}x{npch[1]} "
            "patches (the reference's own construction asserts here); change patch_size",
            "patch_size",
        )
    if "G" in letters and nw[0] != nw[1]:
        raise SpecError(
            f"block {name} has {nw[0]}x{nw[1]} windows: the reference's global attention "
            "uses the row count for both axes, which is not reproducible; use a square "
            "grid (height/width and window_size)",
            "window_size",
        )
    opts: dict[str, Any] = {}
    if "L" in letters or ("V" in letters and linear_vit):
        opts["window"] = _canonical(window)
    if letters & {"L", "G"}:
        opts["patch"] = _canonical(patch)
    if letters & {"G", "V"}:
        opts["grid"] = _canonical(nw)
    return opts


def _block_text(cells: list[tuple], *, linear: bool, sequential: bool) -> str:
    tokens = []
    for letter, digit in cells:
        if letter == "C":
            tokens.append(f"C{digit}")
            continue
        inline = {}
        if letter in "LG" and linear:
            inline["qkv"] = "linear"
        if letter == "V" and sequential:  # its sequential cell passes neither n_head nor a_type
            inline["heads"] = "8"
        if letter == "V" and linear and not sequential:
            inline["qkv"] = "linear"
            inline["grid"] = "null"  # a fixed window instead (linear maps need fixed tokens)
        options = "[" + ", ".join(f"{k}={v}" for k, v in inline.items()) + "]" if inline else ""
        tokens.append(f"{letter}{int(digit == '1')}{options}")
    return " ".join(tokens)


def _check_unsupported(cfg: _Config, letters: set[str], spatial_mixers: bool) -> None:
    spatial = bool(letters & {"L", "G", "V"})
    if cfg.choice("mixer_type", ("conv", "lin")) == "lin" and spatial_mixers:
        raise SpecError(
            "mixer_type=lin is not supported: the reference's linear mixer replaces the "
            "cell's residual in sequential cells and reshapes wrongly in parallel cells",
            "mixer_type",
        )
    if cfg.flag("shuffle_in_window") and "G" in letters:
        raise SpecError(
            "shuffle_in_window randomly permutes the patches of every window (even in eval), "
            "so no deterministic model reproduces it",
            "shuffle_in_window",
        )
    if spatial and cfg.integer("stride_s", 1) != 1:
        raise SpecError(
            "stride_s > 1 (strided spatial Q/K, which the reference splits into smaller "
            "patches than V) is not expressible; use stride_s=1",
            "stride_s",
        )
    for key, want in (("kernel_size", 3), ("stride", 1), ("padding", 1)):
        if cfg.integer(key) != want:
            raise SpecError(
                f"{key}={cfg.raw(key)!r} is not expressible: the attention output projection "
                f"is a 3x3 convolution here; only kernel_size=3, stride=1, padding=1 are",
                key,
            )
    kernel = cfg.integer("mixer_kernel_size", 1)
    if kernel % 2 == 0 or cfg.integer("mixer_padding") != kernel // 2:
        raise SpecError(
            f"mixer_kernel_size={kernel} with mixer_padding={cfg.raw('mixer_padding')} changes "
            "the size of the feature map; an odd kernel with padding kernel//2 is needed",
            "mixer_kernel_size",
        )
    if cfg.integer("mixer_stride", 1) != 1:
        raise SpecError("mixer_stride must be 1 (the mixer keeps the size)", "mixer_stride")
    method = cfg.raw("upsample_method")
    if method != "linear":
        raise SpecError(
            f"upsample_method={method!r} is not supported (only bilinear up-sampling, "
            "'linear', is)",
            "upsample_method",
        )


def _defaults(cfg: _Config) -> dict[str, Any]:
    activation = cfg.raw("activation_func")
    if activation not in _ACTIVATIONS:
        raise SpecError(
            f"activation_func={activation!r} is not one of the reference's activations "
            f"({', '.join(_ACTIVATIONS)}); the reference would silently use identity",
            "activation_func",
        )
    cosine = cfg.flag("cosine_att")
    return {
        "heads": cfg.integer("n_head", 1),
        "cell": cfg.choice("cell_type", ("sequential", "parallel")),
        "norm": cfg.choice("norm_mode", _NORMS),
        "activation": _ACTIVATIONS[activation],
        "padding": "reflect",
        "rel_pos_bias": "after_softmax" if cfg.flag("att_with_relative_postion_bias") else False,
        "cosine": cosine,
        "qk_norm": cfg.flag("normalize_Q_K") and not cosine,  # cosine ignores it
        "out_proj": cfg.flag("att_with_output_proj"),
        "qkv_kernel": 3,
        "proj_kernel": 3,
        "mixer_kernel": cfg.integer("mixer_kernel_size", 1),
        "mixer_ratio": cfg.number("scale_ratio_in_mixer"),
        "dense": cfg.flag("block_dense_connection"),
        "causal": cfg.flag("is_causal"),
        "qk_stride": cfg.integer("stride_t", 1),
        "att_dropout": cfg.number("att_dropout_p"),
        "drop_path": cfg.number("dropout_p"),
    }


def _topology(flat: Mapping[str, Any]) -> str:
    if "backbone_model" in flat:
        name = flat["backbone_model"]
        if name not in _BACKBONES:
            other = (
                " (omnivore is a Swin transformer, not an ST-CNNT backbone: out of scope "
                "here; use MONAI's SwinUNETR, or torchvision's swin3d_t for a Swin video "
                "backbone)"
                if "omnivore" in str(name).lower()
                else ""
            )
            raise SpecError(
                f"backbone_model={name!r} is not supported{other}; supported: "
                f"{', '.join(_BACKBONES)}",
                "backbone_model",
            )
        return _BACKBONES[name]
    # The reference parser always adds the HR-Net keys; the U-Net keys only for a U-Net.
    if any(k.startswith("backbone_unet.") for k in flat):
        return "unet"
    if any(k.startswith("backbone_mixed_unetr.") for k in flat):
        return "mixed_unetr"
    if any(k.startswith("backbone_hrnet.") for k in flat):
        return "hrnet"
    raise SpecError(
        "cannot tell the backbone: give backbone_model (STCNNT_UNET, STCNNT_HRNET or "
        "STCNNT_mUNET) or a backbone_unet / backbone_hrnet / backbone_mixed_unetr section",
        "backbone_model",
    )


def _check_mixed_unetr(cfg: _Config, levels: int) -> None:
    """Refuse the mixed U-Netr variants the reference itself cannot run, naming the key."""
    section = "backbone_mixed_unetr"
    if levels == 5 and cfg.flag(f"{section}.encoder_on_skip_connection"):
        raise SpecError(
            "the reference's 5-level mixed U-Netr with skip encoders does not run (its "
            "forward applies E3 to level 4); use 2 to 4 levels",
            f"{section}.num_resolution_levels",
        )


def _mixed_unetr_partition(cfg: _Config) -> str:
    """The reference's window partition: none, or 3-D (halving T) when
    `time // 2 > min_T` (strictly), else 2-D."""
    section = "backbone_mixed_unetr"
    if not cfg.flag(f"{section}.use_window_partition"):
        return "none"
    time, min_t = cfg.integer("time", 1), cfg.integer(f"{section}.min_T", 1)
    return "3d" if time // 2 > min_t else "2d"


def _mixed_unetr_halve_time(cfg: _Config, levels: int, partition: str) -> int:
    """How many levels halve T: the reference's down-sampling of level i is 3-D while
    `T // 2^(i+1) >= min_T`, with T the configured time (halved by a 3-D partition),
    decided once when it builds the model."""
    section = "backbone_mixed_unetr"
    time, min_t = cfg.integer("time", 1), cfg.integer(f"{section}.min_T", 1)
    time //= 2 if partition == "3d" else 1
    return sum(1 for i in range(levels) if time // 2 ** (i + 1) >= min_t)


def _mixed_unetr_heads(cfg: _Config, levels: int, decoder_blocks: bool) -> dict[str, int]:
    """Heads per block: `n_heads[i]` for encoder (and decoder) level i, the list's last
    for the bridge (the reference indexes the configured list itself, so a shorter list
    fails there)."""
    key = "backbone_mixed_unetr.n_heads"
    value = cfg.raw(key)
    if not isinstance(value, (list, tuple)) or len(value) < levels:
        raise SpecError(
            f"{key} must list at least one head count per level ({levels}), got {value!r} "
            "(the reference indexes it per level and fails otherwise)",
            key,
        )
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise SpecError(f"{key} must hold positive integers, got {value!r}", key)
    heads = {f"D{i}": value[i] for i in range(levels)}
    heads["bridge"] = value[-1]
    if decoder_blocks:
        heads.update({f"U{i}": value[i] for i in range(levels)})
    return heads


def _hrnet_stage_name(reference_name: str) -> str:
    """Our stage name for a reference HR-Net block: B12 -> level1.stage2, output_B1 ->
    level1.output."""
    if reference_name.startswith("output_B"):
        return f"level{reference_name[len('output_B') :]}.output"
    return f"level{reference_name[1]}.stage{reference_name[2]}"


def reference_spec(config: Any) -> ArchSpec:
    """The `ArchSpec` of a reference configuration (a dict of its parser's keys, with the
    backbone section nested (`backbone_unet: {C: ...}`) or dotted (`backbone_unet.C`); a
    JSON string or an argparse-style namespace also work).

    Keys that change the architecture in a way this library cannot express raise a
    `SpecError` naming the key; training-only and no-op keys are ignored; missing keys
    take `REFERENCE_DEFAULTS`.
    """
    flat = _flatten(config)
    cfg = _Config(flat)
    topology = _topology(flat)
    section = f"backbone_{topology}"
    levels = cfg.integer(f"{section}.num_resolution_levels", 1)
    low = 1 if topology == "unet" else 2
    if topology == "mixed_unetr":
        _check_mixed_unetr(cfg, levels)
    if not low <= levels <= 5:
        raise SpecError(
            f"the reference {topology} supports {low} to 5 levels, got {levels}",
            f"{section}.num_resolution_levels",
        )
    c = cfg.integer(f"{section}.C", 1)
    in_channels = cfg.integer("no_in_channel", 1)
    if topology != "hrnet" and c < in_channels:
        raise SpecError(f"C={c} must be >= no_in_channel={in_channels}", f"{section}.C")
    channels = [c * 2**i for i in range(levels)]
    stages = levels + 1 if topology != "hrnet" else levels
    blocks = _blocks(cfg, f"{section}.block_str", stages, last_is_bridge=topology != "hrnet")
    letters = {letter for cells in blocks for letter, _ in cells}
    spatial_mixers = any(a in "LGV" and d == "1" for cells in blocks for a, d in cells)
    _check_unsupported(cfg, letters, spatial_mixers)
    defaults = _defaults(cfg)
    linear = cfg.choice("a_type", ("conv", "lin")) == "lin"
    sequential = defaults["cell"] == "sequential"
    linear_vit = linear and not sequential
    texts = [_block_text(cells, linear=linear, sequential=sequential) for cells in blocks]
    partition = _mixed_unetr_partition(cfg) if topology == "mixed_unetr" else "none"
    height, width = cfg.integer("height", 1), cfg.integer("width", 1)
    shrink = 2 if partition != "none" else 1  # the blocks run at half size after it
    sizer = ReferenceSizer(
        cfg.choice("window_sizing_method", METHODS), height // shrink, width // shrink,
        cfg.pair("window_size"), cfg.pair("patch_size"),
    )  # fmt: skip
    stage_heads: dict[str, int] = {}
    decoder_blocks = topology == "mixed_unetr" and cfg.flag(f"{section}.transformer_for_upsampling")
    if topology == "mixed_unetr":
        # its transformer decoder's blocks are sized as the U-Net's decoder blocks
        geometry = (unet_geometry if decoder_blocks else mixed_unetr_geometry)(sizer, levels)
        out_ch = {f"D{i}": channels[i] for i in range(levels)}
        out_ch["bridge"] = channels[-1]
        cells_of = {f"D{i}": blocks[i] for i in range(levels)}
        cells_of["bridge"] = blocks[-1]
        if decoder_blocks:
            out_ch.update({f"U{i}": c for i, c in enumerate(decoder_channels(channels)[1])})
            cells_of.update({f"U{i}": blocks[i] for i in range(levels)})
        stage_heads = _mixed_unetr_heads(cfg, levels, decoder_blocks)
        defaults["heads"] = stage_heads["D0"]
    elif topology == "unet":
        geometry = unet_geometry(sizer, levels)
        out_ch = {f"D{i}": channels[i] for i in range(levels)}
        out_ch.update({f"U{i}": channels[max(i - 1, 0)] for i in range(levels)})
        out_ch["bridge"] = channels[-1]
        cells_of = {f"D{i}": blocks[i] for i in range(levels)}
        cells_of.update({f"U{i}": blocks[i] for i in range(levels)}, bridge=blocks[-1])
    else:
        geometry = hrnet_geometry(sizer, levels)
        out_ch = {n: channels[int(n[-1] if n.startswith("output") else n[1])] for n in geometry}
        cells_of = {n: blocks[int(n[-1] if n.startswith("output") else n[1])] for n in geometry}
    options = {
        name: _stage_options(geom, cells_of[name], name, linear_vit)
        for name, geom in geometry.items()
    }
    for name, count in stage_heads.items():
        if count != defaults["heads"]:
            options[name] = {"heads": count, **options[name]}
    for name, cells in cells_of.items():
        heads = stage_heads.get(name, defaults["heads"])
        if "T" in {letter for letter, _ in cells} and out_ch[name] % heads:
            raise SpecError(
                f"n_head={heads} does not divide the {out_ch[name]} channels of block {name}: "
                "the reference then splits the flattened C*H*W frame into heads across "
                "channel boundaries, which this library's temporal attention (heads = "
                "groups of channels) cannot express",
                f"{section}.n_heads" if stage_heads else "n_head",
            )
    body: dict[str, Any] = {"channels": channels, "blocks": texts}
    if len(set(texts)) == 1:
        body["blocks"] = texts[0]
    if topology == "mixed_unetr":
        body.update(
            gate=cfg.flag(f"{section}.use_unet_attention"),
            skip_units=cfg.flag(f"{section}.encoder_on_skip_connection"),
            conv="3d" if cfg.flag(f"{section}.use_conv_3d") else "2d",
            up="conv" if cfg.flag(f"{section}.with_conv") else "interpolate",
            encoder=[options[f"D{i}"] for i in range(levels)],
            bridge=options["bridge"] or None,
        )
        if halve := _mixed_unetr_halve_time(cfg, levels, partition):
            body["halve_time"] = halve
        if partition != "none":
            body.update(partition=partition, input_unit=cfg.flag(f"{section}.encoder_on_input"))
            if partition == "2d":
                body["partition_order"] = "reference"
        if decoder_blocks:
            body.update(decoder_blocks=True, decoder=[options[f"U{i}"] for i in range(levels)])
    elif topology == "unet":
        body.update(
            gate=cfg.flag(f"{section}.use_unet_attention"),
            down="merge",
            up="conv" if cfg.flag(f"{section}.with_conv") else "interpolate",
            encoder=[options[f"D{i}"] for i in range(levels)],
            bridge=options["bridge"] or None,
            decoder=[options[f"U{i}"] for i in range(levels)],
        )
    else:
        branches, overrides = [], {}
        for i in range(levels):
            names = [n for n in geometry if n == f"output_B{i}" or (n[0] == "B" and n[1] == str(i))]
            # The level's most common geometry goes to `branches`; blocks that the
            # reference's in-place window lists gave another one become overrides.
            texts = [json.dumps(options[n], sort_keys=True) for n in names]
            common = max(set(texts), key=texts.count)
            branches.append(json.loads(common))
            for name, text in zip(names, texts, strict=True):
                if text != common:
                    overrides[_hrnet_stage_name(name)] = options[name]
        if overrides:
            body["overrides"] = overrides
        body.update(resample="conv", branches=branches)
    spec: dict[str, Any] = {
        "name": f"reference-{topology.replace('_', '-')}",
        "description": "translated from a reference implementation configuration",
        "in_channels": in_channels,
        "input_size": [height, width],
        "defaults": defaults,
        topology: body,
    }
    heads = _heads(cfg, flat, topology)
    if heads:
        spec["heads"] = heads
    return load_spec(spec)


# The reference's task heads (`post_model`) as ours: the head's name is its task.
POST_MODELS = {
    "SimpleConv": ("segmentation", {"kind": "segmentation"}),
    "ConvPoolLinear": (
        "classification",
        {"kind": "classification", "pooling": "conv_avg", "hidden": 2048},
    ),
    "NormPoolLinear": ("classification", {"kind": "classification", "pooling": "norm_avg"}),
}
# The reference's UperNet heads: our upernet decoder with its behaviours switched on.
_UPERNET = {
    "kind": "segmentation", "decoder": "upernet", "reads": "output", "bins": [1, 2, 4, 6],
    "dropout": 0.1, "bottleneck_padding": 1, "shared_smooth": True, "top_down": "pairwise",
}  # fmt: skip
_NOT_IMPORTABLE = {
    "SimpleMultidepthConv": "it needs 4 backbone features and the reference's ST-CNNT "
    "backbones give one",
    "UNETR2D": "it needs the omnivore backbone's 5 features (the reference cannot run it "
    "with an ST-CNNT backbone)",
    "UNETR3D": "it needs the omnivore backbone's 5 features (the reference cannot run it "
    "with an ST-CNNT backbone)",
}


def _heads(cfg: _Config, flat: Mapping[str, Any], topology: str) -> dict[str, Any] | None:
    """`heads:` from the reference's `post_model` and `no_out_channel` (None without a
    head: a backbone checkpoint, or `post_model: Identity`)."""
    post = flat.get("post_model")
    if post in (None, "Identity"):
        return None
    if post in _NOT_IMPORTABLE:
        raise SpecError(
            f"post_model={post!r} cannot be imported with its weights: {_NOT_IMPORTABLE[post]}; "
            "import the backbone (load_weights(model, path, part='backbone')) and give the "
            "model a new head under heads:",
            "post_model",
        )
    if post not in POST_MODELS and post not in ("UperNet2D", "UperNet3D"):
        raise SpecError(
            f"post_model={post!r} is not a reference head this library knows; known: "
            + ", ".join([*POST_MODELS, "UperNet2D", "UperNet3D", *_NOT_IMPORTABLE]),
            "post_model",
        )
    if topology == "hrnet":
        raise SpecError(
            "the reference's whole models with an HR-Net backbone do not run (its HR-Net "
            "returns [output, levels] and the heads read the last element, a list); import "
            "the backbone and add a head under heads:",
            "post_model",
        )
    if topology == "mixed_unetr":
        _check_mixed_unetr_whole(cfg)
    if post in ("UperNet2D", "UperNet3D"):
        return {"segmentation": _upernet(cfg, post)}
    name, head = POST_MODELS[post]
    size = "classes" if head["kind"] != "enhancement" else "out_channels"
    return {name: {**head, size: cfg.integer("no_out_channel", 1)}}


def _check_mixed_unetr_whole(cfg: _Config) -> None:
    """The reference's factory tells the head C*(levels+1) channels; its backbone gives
    3C (4C with the window partition, 5C with its input unit too): only whole models where
    they agree run."""
    section = "backbone_mixed_unetr"
    levels, c = cfg.integer(f"{section}.num_resolution_levels", 1), cfg.integer(f"{section}.C", 1)
    gives, what = 3, "3C"
    if cfg.flag(f"{section}.use_window_partition"):
        gives, what = (5, "5C") if cfg.flag(f"{section}.encoder_on_input") else (4, "4C")
    if levels + 1 != gives:
        raise SpecError(
            f"the reference's whole models with a {levels}-level mixed U-Netr do not run: its "
            f"factory tells the head C*(levels+1) = {c * (levels + 1)} channels, but the "
            f"backbone gives {what} = {gives * c} (only {gives - 1} levels agree); import the "
            "backbone (post_model: Identity, or load_weights(model, path, part='backbone')) "
            "and add a head under heads:",
            "post_model",
        )


def _upernet(cfg: _Config, post: str) -> dict[str, Any]:
    """UperNet2D reads frame 0 and resizes to (height, width); UperNet3D resizes to
    (time, height, width); both to the patch size when `use_patches` is set."""
    patches = cfg.flag("use_patches")
    keys = ["height", "width"] if post == "UperNet2D" else ["time", "height", "width"]
    size = [cfg.integer(f"patch_{k}" if patches else k, 1) for k in keys]
    head: dict[str, Any] = {**_UPERNET, "classes": cfg.integer("no_out_channel", 1)}
    head.update(mode="2d" if post == "UperNet2D" else "3d", size=size)
    if post == "UperNet2D":
        head["frames"] = "first"
    return head
