"""Segment synthetic 2D images with an ST-CNNT backbone, MONAI transforms and DiceLoss.

    pip install "stcnnt-dsl[monai]"
    python examples/monai_train.py              # 300 steps: well under a minute on a CPU

The images are made in code (bright discs on a noisy, shaded background; nothing is
downloaded) and go through MONAI dictionary transforms (ScaleIntensityd, RandFlipd,
RandRotate90d). The backbone is built with `layout="BCHW"`, so it takes and returns
MONAI's [B, C, H, W] tensors as they are (`layout="BCHWD"` does the same for 3D volumes,
the slices last). Validation tiles images larger than the training crops with MONAI's
`sliding_window_inference` and prints the Dice score.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from torch import nn

import stcnnt_dsl

try:  # stcnnt-dsl itself does not need MONAI; this example does
    import monai
    from monai.data import DataLoader, Dataset
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceLoss
    from monai.metrics import DiceMetric
    from monai.transforms import Compose, RandFlipd, RandRotate90d, ScaleIntensityd
except ImportError as err:
    sys.exit(
        f'this example needs MONAI ({err}): pip install "stcnnt-dsl[monai]" (stcnnt-dsl '
        'itself does not: a backbone built with layout="BCHW" or "BCHWD" takes MONAI\'s '
        "tensors as they are)"
    )

CLASSES = 2  # background, disc
SPEC = {
    "name": "disc-segmenter",
    "in_channels": 1,
    "defaults": {"window": 8, "patch": 2, "heads": 1, "mixer_ratio": 2.0},
    "unet": {"channels": [8, 16], "blocks": ["C2", "L1G1"]},  # H, W multiples of 16
}


def build_model(classes: int = CLASSES) -> nn.Module:
    """The backbone and a per-frame 1x1 convolution to class logits [B, classes, H, W]."""
    backbone = stcnnt_dsl.build(SPEC, layout="BCHW", seed=0)
    return nn.Sequential(backbone, nn.Conv2d(backbone.out_channels, classes, kernel_size=1))
    # With task heads in the spec, the two lines above become one, and `logits` reads
    # model(x)["seg"]:
    # return stcnnt_dsl.build({**SPEC, "heads": {"seg": {"kind": "segmentation",
    #                          "classes": classes}}}, layout="BCHW", seed=0)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def make_images(count: int, size: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """`count` samples {"image": [1, H, W] float32, "label": [1, H, W] int64}: 1 to 3
    discs brighter than a shaded background, plus noise."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    samples = []
    for _ in range(count):
        label = np.zeros((size, size), dtype=bool)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.15, 0.85, size=2) * size
            radius = rng.uniform(0.08, 0.2) * size
            label |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        shade = rng.uniform(-0.5, 0.5) * (yy + xx) / size  # a gradient across the image
        image = 100 * (label + shade + rng.normal(0, 0.35, (size, size)))  # any scale
        samples.append(
            {"image": image[None].astype(np.float32), "label": label[None].astype(np.int64)}
        )
    return samples


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=32, help="training images are size x size")
    p.add_argument("--val-size", type=int, default=64, help="validation images (tiled)")
    p.add_argument("--val-images", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="a model this small needs no more")
    return p.parse_args(argv)


def validate(model: nn.Module, data: list[dict[str, np.ndarray]], roi: int) -> float:
    """Mean Dice of the disc class over `data`, each image tiled into roi x roi windows."""
    prepare = ScaleIntensityd(keys="image")
    metric = DiceMetric(include_background=False, reduction="mean")
    model.eval()
    with torch.no_grad():
        for sample in data:
            sample = prepare(sample)
            x = torch.as_tensor(sample["image"])[None]
            out = sliding_window_inference(
                x, roi_size=(roi, roi), sw_batch_size=4, overlap=0.25, mode="gaussian",
                predictor=lambda tile: logits(model, tile),
            )  # fmt: skip
            pred = nn.functional.one_hot(out.argmax(1), CLASSES).permute(0, 3, 1, 2)
            label = torch.as_tensor(sample["label"])[None]
            truth = nn.functional.one_hot(label[:, 0], CLASSES).permute(0, 3, 1, 2)
            metric(y_pred=pred, y=truth)
    model.train()
    return metric.aggregate().item()


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Train, print the loss and the validation Dice; return {"losses", "dice"}."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    monai.utils.set_determinism(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    train = make_images(64, args.size, rng)
    val = make_images(args.val_images, args.val_size, rng)
    augment = Compose([
        ScaleIntensityd(keys="image"),                       # to [0, 1]
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        RandRotate90d(keys=["image", "label"], prob=0.5),
    ]).set_random_state(seed=args.seed)  # fmt: skip
    loader = DataLoader(Dataset(train, transform=augment), batch_size=args.batch, shuffle=True)

    model = build_model()
    loss_fn = DiceLoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses: list[float] = []
    while len(losses) < args.steps:
        for batch in loader:
            loss = loss_fn(logits(model, batch["image"]), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step = len(losses)
            if args.log_every and (step % args.log_every == 0 or step == args.steps):
                recent = np.mean(losses[-args.log_every :])
                print(f"step {step}/{args.steps}  Dice loss {recent:.4f}", flush=True)
            if step == args.steps:
                break
    dice = validate(model, val, roi=args.size)
    print(f"validation Dice (discs, {args.val_size}x{args.val_size} images tiled): {dice:.3f}")
    return {"losses": losses, "dice": dice}


if __name__ == "__main__":
    main()
