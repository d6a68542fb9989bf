"""Classify which way a shape moves (right, left, down, up) with a small ST-CNNT U-Net.

    python examples/classify_motion.py            # the full run (1-2 minutes)
    python examples/classify_motion.py --quick    # a smoke run (seconds)

One frame alone does not tell the direction: the model has to compare frames, which its
temporal attention (the T cells) does. As a check that it reads the order of the frames,
the held-out clips are also played backwards, where the opposite direction is right.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as `python examples/x.py`

from synthetic import (
    DIRECTIONS,
    Timer,
    accuracy,
    batches,
    fit,
    machine,
    moving_shapes,
    predict,
    print_table,
    set_threads,
    trainable,
)

import stcnnt_dsl

# Causal temporal attention: frame t attends to frames <= t. Plain temporal attention has
# no notion of frame order (no position encoding), so a clip played backwards would give
# the same pooled features and the direction could not be told from them.
SPEC = (
    'unet(channels=[8, 16], blocks="T1[causal=true] L1 G1", window=4, patch=2,'
    f" heads={{motion={{kind=classification, classes={len(DIRECTIONS)}}}}})"
)
BATCH = 8
SIZE, RADIUS = 16, (2.0, 4.0)  # small images: the motion is more of the pooled features


def classification_loss(outputs: dict, labels):
    return F.cross_entropy(outputs["motion"], labels)


def run(steps: int, *, seed: int = 0, frames: int = 4, test_clips: int = 256) -> dict:
    """Build, train on `steps` batches of fresh one-shape clips, evaluate on held-out ones."""
    timer = Timer()
    model = stcnnt_dsl.build(SPEC, seed=seed)
    shape = {"frames": frames, "size": SIZE, "radius": RADIUS, "shapes": 1}
    train = moving_shapes(BATCH * steps, **shape, seed=seed)
    test = moving_shapes(test_clips, **shape, seed=10_000 + seed)
    losses = fit(model, batches(train.noisy, train.direction, BATCH, seed),
                 classification_loss, steps, lr=3e-3)  # fmt: skip
    backwards = test.noisy.flip(1)  # the frames in reverse order
    opposite = test.direction ^ 1  # right <-> left, down <-> up
    return {
        "steps": steps,
        "trainable params": trainable(model),
        "loss first 10": round(sum(losses[:10]) / len(losses[:10]), 3),
        "loss last 10": round(sum(losses[-10:]) / len(losses[-10:]), 3),
        "chance": 1 / len(DIRECTIONS),
        "accuracy held-out": round(accuracy(predict(model, test.noisy, "motion"),
                                            test.direction), 3),
        "accuracy reversed clips": round(accuracy(predict(model, backwards, "motion"),
                                                  opposite), 3),
        "wall s": round(timer(), 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=160, help=f"batches of {BATCH} clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=4, help="frames per clip (T)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 steps")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    timer = Timer()
    print(f"model: {SPEC}\ndata: {SIZE}x{SIZE} clips of {args.frames} frames, one shape, "
          f"noise 0.35, 256 held-out clips\non: {machine()}\n")  # fmt: skip
    result = run(40 if args.quick else args.steps, seed=args.seed, frames=args.frames)
    print_table([result])
    print(f"\ntotal wall time {timer():.1f} s")
    return result


if __name__ == "__main__":
    main()
