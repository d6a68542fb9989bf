"""Pretrain a backbone without labels, then adapt it to segmentation with 16 labelled clips.

    python examples/pretrain_then_adapt.py             # the full run (a few minutes)
    python examples/pretrain_then_adapt.py --quick     # a smoke run
    python examples/pretrain_then_adapt.py --pretrained runs/denoiser.safetensors
        # pretrain once and save there; later runs load it and only adapt

The method's claim in small. Pretraining: the U-Net with an enhancement head learns to
denoise a few thousand unlabelled clips. Adaptation, on 16 labelled clips, the same number
of steps for both:

  (a) the pretrained backbone, frozen, with LoRA adapters on its Q/K/V and mixer
      convolutions (`stcnnt_dsl.lora_targets`, PEFT) and a new segmentation head;
  (b) the same architecture trained from scratch, every parameter;
  (c) with --finetune, also: the pretrained model with every parameter trained.

It prints the held-out Dice and the trainable parameters of each, whichever wins.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as `python examples/x.py`

from synthetic import (
    Timer,
    batches,
    dice,
    fit,
    machine,
    moving_shapes,
    predict,
    print_table,
    set_threads,
    trainable,
)

import stcnnt_dsl
from stcnnt_dsl.tools.adapt import apply_lora

BACKBONE = "channels=[8, 16], blocks=T1L1G1, window=4, patch=2"
DENOISER = f"unet({BACKBONE}, heads={{clean={{kind=enhancement, out_channels=1}}}})"
SEGMENTER = f"unet({BACKBONE}, heads={{seg={{kind=segmentation, classes=2}}}})"
BATCH = 8
LR = 3e-3


def denoising_loss(outputs: dict, clean):
    return F.mse_loss(outputs["clean"], clean)


def segmentation_loss(outputs: dict, masks):
    return F.cross_entropy(outputs["seg"].transpose(1, 2), masks)


def pretrain(steps: int, path: Path, *, noise: float, size: int, seed: int) -> dict:
    """Train the denoiser on BATCH * steps unlabelled clips (each seen once); save it."""
    timer = Timer()
    model = stcnnt_dsl.build(DENOISER, seed=seed)
    clips = moving_shapes(BATCH * steps, size=size, noise=noise, seed=seed + 1)
    losses = fit(model, batches(clips.noisy, clips.clean, BATCH, seed), denoising_loss,
                 steps, lr=LR)  # fmt: skip
    stcnnt_dsl.save_model(model, path)
    return {
        "clips": len(clips),
        "mse first 10": round(sum(losses[:10]) / len(losses[:10]), 4),
        "mse last 10": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "wall s": round(timer(), 1),
    }


def lora_segmenter(pretrained: Path, *, rank: int, seed: int):
    """The segmenter with the pretrained backbone, frozen, LoRA adapters and a new head."""
    import peft  # pip install "stcnnt-dsl[adapt]"

    model = stcnnt_dsl.build(SEGMENTER, seed=seed)
    stcnnt_dsl.load_weights(model, pretrained, part="backbone")
    stcnnt_dsl.freeze(model, "backbone")
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank,
                             target_modules=stcnnt_dsl.lora_targets(model),
                             modules_to_save=["heads.seg"])  # fmt: skip
    return apply_lora(model, config)


def adapt(model, labelled, test, steps: int, seed: int) -> dict:
    """Train `model` on the labelled clips; its held-out Dice and trainable parameters."""
    timer = Timer()
    data = batches(labelled.noisy, labelled.masks, BATCH, seed)
    losses = fit(model, data, segmentation_loss, steps, lr=LR)
    return {
        "trainable params": trainable(model),
        "loss last 10": round(sum(losses[-10:]) / len(losses[-10:]), 3),
        "dice held-out": round(dice(predict(model, test.noisy, "seg"), test.masks), 3),
        "wall s": round(timer(), 1),
    }


def run(
    pretrain_steps: int,
    adapt_steps: int,
    *,
    labelled: int = 16,
    noise: float = 0.5,
    size: int = 32,
    rank: int = 4,
    seed: int = 0,
    test_clips: int = 256,
    pretrained: Path | None = None,
    compare: bool = True,
    finetune: bool = False,
) -> dict:
    """Pretrain (unless `pretrained` exists), then adapt with LoRA and (with `compare`)
    from scratch, and (with `finetune`) fine-tune the whole pretrained model; the results."""
    with tempfile.TemporaryDirectory() as scratch:
        path = pretrained or Path(scratch) / "denoiser.safetensors"
        pre = None
        if not path.is_file():
            pre = pretrain(pretrain_steps, path, noise=noise, size=size, seed=seed)
        train = moving_shapes(labelled, size=size, noise=noise, seed=20_000 + seed)
        test = moving_shapes(test_clips, size=size, noise=noise, seed=10_000 + seed)
        lora = adapt(lora_segmenter(path, rank=rank, seed=seed), train, test, adapt_steps, seed)
        full = None
        if finetune:
            model = stcnnt_dsl.build(SEGMENTER, seed=seed)
            stcnnt_dsl.load_weights(model, path, part="backbone")
            full = adapt(model, train, test, adapt_steps, seed)
    scratch_model = stcnnt_dsl.build(SEGMENTER, seed=seed)
    scratch = adapt(scratch_model, train, test, adapt_steps, seed) if compare else None
    total = sum(p.numel() for p in scratch_model.parameters())
    return {"pretrain": pre, "lora": lora, "scratch": scratch, "finetune": full,
            "total params": total}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        default=250,
        help=f"pretraining batches of {BATCH} fresh unlabelled clips",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=100,
        help=f"adaptation steps (batches of {BATCH} of the labelled clips)",
    )
    parser.add_argument("--labelled", type=int, default=16, help="labelled clips to adapt on")
    parser.add_argument("--noise", type=float, default=0.5, help="noise standard deviation")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="a .safetensors file: loaded if it exists, else written",
    )
    parser.add_argument(
        "--finetune",
        action="store_true",
        help="also (c): fine-tune every parameter of the pretrained model",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 20 pretraining and 20 adaptation steps"
    )
    args = parser.parse_args(argv)
    set_threads(args.threads)
    timer = Timer()
    pre_steps, steps = (20, 20) if args.quick else (args.pretrain_steps, args.steps)
    print(f"backbone: unet({BACKBONE})\ndata: 32x32 clips of 4 frames, noise {args.noise}, "
          f"{args.labelled} labelled clips, 256 held-out clips\non: {machine()}\n")  # fmt: skip
    result = run(pre_steps, steps, labelled=args.labelled, noise=args.noise, rank=args.rank,
                 seed=args.seed, pretrained=args.pretrained, finetune=args.finetune)  # fmt: skip
    if result["pretrain"]:
        print(f"pretraining (denoising, {pre_steps} steps):")
        print_table([result["pretrain"]])
    else:
        print(f"pretrained backbone loaded from {args.pretrained}")
    print(
        f"\nadaptation ({steps} steps on {args.labelled} labelled clips; the backbone and "
        f"head have {result['total params']:,} parameters):"
    )
    rows = [
        {"run": "(a) pretrained, frozen + LoRA + new head", **result["lora"]},
        {"run": "(b) from scratch, all parameters", **result["scratch"]},
    ]
    if result["finetune"]:
        rows.append({"run": "(c) pretrained, all parameters fine-tuned", **result["finetune"]})
    print_table(rows)
    a, b = result["lora"]["dice held-out"], result["scratch"]["dice held-out"]
    winner = "(a) pretrained + LoRA" if a > b else "(b) from scratch" if b > a else "neither"
    print(f"\n(a) vs (b), higher held-out Dice: {winner} ({a} vs {b})")
    print(f"total wall time {timer():.1f} s")
    return result


if __name__ == "__main__":
    main()
