"""Whole reference models (backbone + task head) built by the reference code beside ours.

For each case, the reference implementation (a checkout of
github.com/Imaging-and-AI/FMImaging, `--reference-src`) builds its backbone and head from
one configuration, every parameter and batch-norm statistic is perturbed (so each one
matters), and `stcnnt_dsl.compat.import_reference` imports the whole state dict; both run
one random input in eval mode and the largest difference is printed:

    python tools/compare_reference_models.py --reference-src /work/research/fmimaging-25

Cases: the mixed U-Netr (`STCNNT_mUNET`) and the U-Net with `UperNet2D`, `UperNet3D` and
`SimpleConv` heads, and the mixed U-Netr's variants (2-D convolutions, no skip units, no
gates, up-sampling convs, 3 levels, T halved by `min_T`, the transformer decoder, the
window partition). Exit
status 1 when a difference exceeds 1e-4. `unused` counts the reference's parameters that
it builds but never runs (ours leave them out).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import sys
import types
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reference import ToolError, _namespace, _stub_training_imports

from stcnnt_dsl.compat import import_reference
from stcnnt_dsl.compat.weights import unused_reference_modules

AGREEMENT = 1e-4

BASE: dict[str, Any] = {
    "no_in_channel": 1, "no_out_channel": 3, "height": 32, "width": 32, "time": 4,
    "a_type": "conv", "mixer_type": "conv", "cell_type": "sequential",
    "window_size": [8, 8], "patch_size": [2, 2], "window_sizing_method": "mixed",
    "n_head": 8, "kernel_size": 3, "stride": 1, "padding": 1, "stride_s": 1, "stride_t": 1,
    "separable_conv": False, "mixer_kernel_size": 5, "mixer_stride": 1, "mixer_padding": 2,
    "normalize_Q_K": False, "cosine_att": 0, "att_with_relative_postion_bias": 1,
    "att_dropout_p": 0.0, "dropout_p": 0.1, "att_with_output_proj": 1,
    "scale_ratio_in_mixer": 4.0, "norm_mode": "instance2d", "shuffle_in_window": 0,
    "is_causal": False, "interp_align_c": False, "use_einsum": False,
    "temporal_flash_attention": False, "activation_func": "prelu",
    "upsample_method": "linear", "block_dense_connection": 1, "with_timer": False,
    "use_patches": False, "pre_model": "Identity",
}  # fmt: skip
MIXED = {
    "C": 8, "num_resolution_levels": 2, "block_str": ["T1L1G1", "T1L1G1"],
    "use_unet_attention": 1, "use_interpolation": 1, "with_conv": 0, "min_T": 16,
    "encoder_on_skip_connection": 1, "encoder_on_input": 1, "transformer_for_upsampling": 0,
    "n_heads": [8, 8, 8, 8], "use_conv_3d": 1, "use_window_partition": 0,
}  # fmt: skip
UNET = {
    "C": 8, "num_resolution_levels": 2, "block_str": ["T1L1G1"], "use_unet_attention": 1,
    "use_interpolation": 1, "with_conv": 1,
}  # fmt: skip


def cases() -> dict[str, dict[str, Any]]:
    """Name -> the reference configuration of a whole model."""

    def config(backbone: str, post: str, **section: Any) -> dict[str, Any]:
        key, body = ("backbone_mixed_unetr", MIXED) if backbone == "STCNNT_mUNET" else (
            "backbone_unet", UNET)  # fmt: skip
        out = copy.deepcopy(BASE)
        out.update(backbone_model=backbone, post_model=post)
        out[key] = {**body, **section}
        return out

    def halving(post: str, time: int, min_t: int, **section: Any) -> dict[str, Any]:
        out = config("STCNNT_mUNET", post, min_T=min_t, **section)
        out["time"] = time
        return out

    def partition(post: str, time: int, **section: Any) -> dict[str, Any]:
        out = config("STCNNT_mUNET", post, use_window_partition=1, num_resolution_levels=3,
                     **section)  # fmt: skip
        out.update(time=time, height=64, width=64)
        return out

    deep = config("STCNNT_mUNET", "Identity", num_resolution_levels=4, with_conv=1, C=4,
                  n_heads=[4, 4, 4, 4, 2])  # fmt: skip
    deep.update(height=64, width=64)
    transformer = copy.deepcopy(deep)  # the decoder's blocks: each level's block string
    transformer.update(time=8)
    transformer["backbone_mixed_unetr"].update(
        transformer_for_upsampling=1, min_T=2, block_str=["T1L1G1", "T1V1", "L1G1", "T1", "G1"]
    )
    return {
        "mixed_unetr+UperNet2D": config("STCNNT_mUNET", "UperNet2D"),
        "mixed_unetr+UperNet3D": config("STCNNT_mUNET", "UperNet3D"),
        "mixed_unetr+SimpleConv": config("STCNNT_mUNET", "SimpleConv"),
        "mixed_unetr(conv 2d, up conv)+UperNet3D": config(
            "STCNNT_mUNET", "UperNet3D", use_conv_3d=0, with_conv=1
        ),
        "mixed_unetr(no skip units)+UperNet2D": config(
            "STCNNT_mUNET", "UperNet2D", encoder_on_skip_connection=0
        ),
        # its whole models with other than 2 levels do not run (see docs/compat.md)
        "mixed_unetr(no gates, 3 levels), backbone": config(
            "STCNNT_mUNET",
            "Identity",
            use_unet_attention=0,
            num_resolution_levels=3,
            n_heads=[8, 4, 8, 2],
        ),
        "mixed_unetr(4 levels, up conv, 64x64), backbone": deep,
        # time // 2^(i+1) >= min_T: levels 0 and 1 halve T (3-D patch merging, trilinear)
        "mixed_unetr(T=8, min_T=2, 3 levels), backbone": halving(
            "Identity", 8, 2, num_resolution_levels=3
        ),
        "mixed_unetr(T=16, min_T=4, up conv)+UperNet3D": halving("UperNet3D", 16, 4, with_conv=1),
        "mixed_unetr(transformer decoder)+UperNet3D": config(
            "STCNNT_mUNET", "UperNet3D", transformer_for_upsampling=1
        ),
        "mixed_unetr(transformer decoder, 4 levels, T=8, min_T=2), backbone": transformer,
        # time // 2 <= min_T: its 2-D partition (the reference's reshuffle), input unit
        "mixed_unetr(2-D window partition, 3 levels), backbone": partition(
            "Identity", 4, use_unet_attention=0
        ),
        # time // 2 > min_T: its 3-D partition halves T, then levels 0 and 1 halve it
        "mixed_unetr(3-D window partition, T=16, min_T=2), backbone": partition(
            "Identity", 16, min_T=2
        ),
        # 4C without the input unit: a whole model of 3 levels runs
        "mixed_unetr(3-D partition, 2d convs, no units)+UperNet3D": partition(
            "UperNet3D",
            8,
            min_T=2,
            encoder_on_input=0,
            encoder_on_skip_connection=0,
            use_conv_3d=0,
        ),
        "mixed_unetr(2-D partition, transformer decoder, up conv), backbone": partition(
            "Identity", 4, encoder_on_input=0, with_conv=1, transformer_for_upsampling=1
        ),
        "unet+UperNet2D": config("STCNNT_UNET", "UperNet2D"),
        "unet+UperNet3D": config("STCNNT_UNET", "UperNet3D"),
    }


class _Permute(torch.nn.Module):
    """torchvision.ops.misc.Permute, for machines without torchvision."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def load_reference(src: str) -> dict[str, Any]:
    """The reference's backbone factories and heads from a checkout."""
    root = Path(src).expanduser()
    needed = ["model/backbone/backbone_mixed_unetr.py", "model/task_heads/seg_heads.py"]
    missing = [n for n in needed if not (root / n).is_file()]
    if missing:
        raise ToolError(
            f"--reference-src {src}: not a checkout of the reference implementation (missing "
            f"{', '.join(missing)}); git clone https://github.com/Imaging-and-AI/FMImaging"
        )
    if "torchvision" in _stub_training_imports():  # the heads' module also needs Permute
        misc = types.ModuleType("torchvision.ops.misc")
        misc.Permute = _Permute
        sys.modules["torchvision.ops.misc"] = sys.modules["torchvision.ops"].misc = misc
    sys.path[:0] = [str(root / "model" / "backbone"), str(root / "model"), str(root)]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import backbone_mixed_unetr  # type: ignore[import-not-found]
            import backbone_unet  # type: ignore[import-not-found]
            from task_heads import seg_heads  # type: ignore[import-not-found]
    except ModuleNotFoundError as err:
        raise ToolError(
            f"--reference-src {src}: its model code does not import: it needs {err.name!r}"
        ) from None
    return {
        "STCNNT_mUNET": backbone_mixed_unetr.STCNNT_Mixed_Unetr_model,
        "STCNNT_UNET": backbone_unet.STCNNT_Unet_model,
        "UperNet2D": seg_heads.UperNet2D,
        "UperNet3D": seg_heads.UperNet3D,
        "SimpleConv": seg_heads.SimpleConv,
    }


def reference_model(classes: dict[str, Any], config: dict[str, Any], seed: int):
    """(backbone, head) built and perturbed as the reference's `ModelManager` would hold."""
    torch.manual_seed(seed)
    space = _namespace(config)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its window sizes
        backbone, channels = classes[config["backbone_model"]](space, [config["no_in_channel"]])
        post = config["post_model"]
        head = torch.nn.Identity() if post == "Identity" else classes[post](space, channels)
    with torch.no_grad():
        for module in (backbone, head):
            for p in module.parameters():
                p.add_(0.02 * torch.randn_like(p))
            for name, b in module.named_buffers():
                if name.endswith("running_mean"):
                    b.copy_(0.1 * torch.randn_like(b))
                elif name.endswith("running_var"):
                    b.copy_(0.5 + torch.rand_like(b))
    return backbone.eval(), head.eval()


def compare(classes: dict[str, Any], config: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Import the reference model built from `config` and run both on one input."""
    backbone, head = reference_model(classes, config, seed)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"post.{k}": v for k, v in head.state_dict().items()})
    if config["post_model"] == "Identity":  # a backbone checkpoint: the reference's own keys
        state = backbone.state_dict()
    ours = import_reference(state, config).eval()
    shape = (2, config["no_in_channel"], config["time"], config["height"], config["width"])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = head(backbone(x))[-1]
        out = ours(x.transpose(1, 2))
        out = (next(iter(out.values())) if isinstance(out, dict) else out).transpose(1, 2)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    mixed = config["backbone_model"] == "STCNNT_mUNET"
    unused = set(unused_reference_modules()) if mixed else set()
    return {
        "shape": tuple(out.shape),
        "reference_shape": tuple(ref.shape),
        "max_diff": (out - ref).abs().max().item() if out.shape == ref.shape else float("inf"),
        "params": count(ours),
        "reference_params": count(backbone) + count(head),
        "reference_unused": sum(p.numel() for n, p in backbone.named_parameters() if n in unused),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference-src", required=True, help="a checkout of github.com/Imaging-and-AI/FMImaging"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--case", action="append", choices=list(cases()), help="only this case (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        classes = load_reference(args.reference_src)
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    worst = 0.0
    for name, config in cases().items():
        if args.case and name not in args.case:
            continue
        r = compare(classes, config, args.seed)
        worst = max(worst, r["max_diff"])
        print(
            f"{name:60s} out {r['shape']}  max |ours - reference| {r['max_diff']:.2e}  "
            f"params {r['params']:,} (reference {r['reference_params']:,}, "
            f"unused {r['reference_unused']:,})"
        )
    return 0 if worst <= AGREEMENT else 1


if __name__ == "__main__":
    sys.exit(main())
