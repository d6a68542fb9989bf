"""Losses and validation metrics by task, MONAI's where it has them.

segment: Dice + cross-entropy (`DiceCELoss`; with an ignore label, `MaskedDiceLoss` +
cross-entropy that skips it), or either alone; class weights weigh the cross-entropy.
classify: cross-entropy. enhance / pretrain: L1, MSE or SSIM (`SSIMLoss` per frame)
between the output and the clean target; the masked objective scores hidden pixels only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SpecError
from .recipe import LossSpec

__all__ = ["DEFAULT_LOSS", "make_loss"]

DEFAULT_LOSS = {"segment": "dice_ce", "classify": "ce", "enhance": "l1", "pretrain": "l1"}
_FITS = {
    "segment": ("dice_ce", "dice", "ce"),
    "classify": ("ce",),
    "enhance": ("l1", "mse", "ssim"),
    "pretrain": ("l1", "mse", "ssim"),
}

Loss = Callable[[Tensor, dict[str, Tensor]], Tensor]


def make_loss(task: str, spec: LossSpec, classes: int | None) -> Loss:
    """loss(output, batch) for the task; `output` is the trained head's tensor,
    `batch` holds `y` (labels) or `target` and `mask` (self-supervised)."""
    name = spec.name or DEFAULT_LOSS[task]
    if name not in _FITS[task]:
        raise SpecError(f"loss {name} does not fit task {task}; use one of "
                        f"{', '.join(_FITS[task])}", "loss.name")  # fmt: skip
    weight = None
    if spec.class_weights is not None:
        if classes is not None and len(spec.class_weights) != classes:
            raise SpecError(f"class_weights has {len(spec.class_weights)} values for "
                            f"{classes} classes", "loss.class_weights")  # fmt: skip
        weight = torch.tensor(spec.class_weights, dtype=torch.float32)
    if task == "segment":
        return _segmentation(name, weight, spec.ignore_label)
    if task == "classify":
        ignore = -100 if spec.ignore_label is None else spec.ignore_label

        def classify(out: Tensor, batch: dict[str, Tensor]) -> Tensor:
            w = None if weight is None else weight.to(out.device)
            return F.cross_entropy(out.float(), batch["y"], weight=w, ignore_index=ignore)

        return classify
    return _image(name)


def _segmentation(name: str, weight: Tensor | None, ignore: int | None) -> Loss:
    from monai.losses import DiceCELoss, DiceLoss, MaskedDiceLoss

    if ignore is None:
        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, weight=weight)
        dice = DiceLoss(to_onehot_y=True, softmax=True)
    else:
        masked = MaskedDiceLoss(to_onehot_y=True, softmax=True)

    def loss(out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        logits = out.float().transpose(1, 2)  # [B, K, T, H, W]
        y = batch["y"].transpose(1, 2)  # [B, 1, T, H, W]
        w = None if weight is None else weight.to(out.device)
        if ignore is None:
            if name == "dice_ce":
                if w is not None:
                    dice_ce.cross_entropy.weight = w
                return dice_ce(logits, y)
            if name == "dice":
                return dice(logits, y)
            return F.cross_entropy(logits, y[:, 0], weight=w)
        keep = y != ignore
        ce = F.cross_entropy(logits, y[:, 0], weight=w, ignore_index=ignore)
        if name == "ce":
            return ce
        d = masked(logits, torch.where(keep, y, 0), mask=keep.float())
        return d if name == "dice" else d + ce

    return loss


def _image(name: str) -> Loss:
    if name == "ssim":
        from monai.losses import SSIMLoss

        ssim = SSIMLoss(spatial_dims=2)

    def loss(out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        out, target = out.float(), batch["target"]
        mask = batch.get("mask")
        if name == "ssim":
            flat = out.flatten(0, 1), target.flatten(0, 1)  # frames: [B*T, C, H, W]
            span = (target.max() - target.min()).clamp(min=1e-6)
            return ssim(flat[0], flat[1], data_range=span)
        diff = (out - target).abs() if name == "l1" else (out - target).square()
        if mask is None:
            return diff.mean()
        return (diff * mask).sum() / mask.sum().clamp(min=1)

    return loss
