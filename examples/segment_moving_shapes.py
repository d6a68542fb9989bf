"""Segment moving shapes in noisy 2D+T clips with a small ST-CNNT U-Net, trained on CPU.

    python examples/segment_moving_shapes.py            # the full run (1-2 minutes)
    python examples/segment_moving_shapes.py --quick    # a smoke run (seconds)

The model is one line of the language: a two-level U-Net of T1L1G1 blocks (temporal,
local and global attention, each with a conv mixer) with a segmentation head. It trains
on freshly generated clips (each seen once) and reports the Dice of the shapes on
held-out clips.
"""

from __future__ import annotations

import argparse
import sys
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

SPEC = (
    "unet(channels=[8, 16], blocks=T1L1G1, window=4, patch=2,"
    " heads={seg={kind=segmentation, classes=2}})"
)
BATCH = 8


def segmentation_loss(outputs: dict, masks) -> object:
    """Cross-entropy of the `seg` head's [B, T, 2, H, W] logits against [B, T, H, W]."""
    return F.cross_entropy(outputs["seg"].transpose(1, 2), masks)


def run(steps: int, *, seed: int = 0, frames: int = 4, test_clips: int = 256) -> dict:
    """Build, train on `steps` batches of fresh clips, evaluate on held-out clips."""
    timer = Timer()
    model = stcnnt_dsl.build(SPEC, seed=seed)
    train = moving_shapes(BATCH * steps, frames=frames, seed=seed)
    test = moving_shapes(test_clips, frames=frames, seed=10_000 + seed)  # held out
    untrained = dice(predict(model, test.noisy, "seg"), test.masks)
    losses = fit(model, batches(train.noisy, train.masks, BATCH, seed), segmentation_loss,
                 steps, lr=3e-3)  # fmt: skip
    return {
        "steps": steps,
        "trainable params": trainable(model),
        "loss first 10": round(sum(losses[:10]) / len(losses[:10]), 3),
        "loss last 10": round(sum(losses[-10:]) / len(losses[-10:]), 3),
        "dice untrained": round(untrained, 3),
        "dice held-out": round(dice(predict(model, test.noisy, "seg"), test.masks), 3),
        "wall s": round(timer(), 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help=f"batches of {BATCH} clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=4, help="frames per clip (T)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 steps")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    timer = Timer()
    print(f"model: {SPEC}\ndata: 32x32 clips of {args.frames} frames, noise 0.35, "
          f"256 held-out clips\non: {machine()}\n")  # fmt: skip
    result = run(20 if args.quick else args.steps, seed=args.seed, frames=args.frames)
    print_table([result])
    print(f"\ntotal wall time {timer():.1f} s")
    return result


if __name__ == "__main__":
    main()
