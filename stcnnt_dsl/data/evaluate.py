"""A whole model on a data set's cases, scored with MONAI's metrics.

Segmentation heads: Dice per foreground class and its mean (`compute_dice`, classes
absent from both the label and the prediction left out), 95% Hausdorff distance
(`compute_hausdorff_distance`, in mm over slices, per frame for time series).
Classification heads: accuracy and ROC AUC (`compute_roc_auc`). Enhancement heads are
scored as denoisers: each case with seeded Gaussian noise added (`noise` times each
channel's standard deviation) goes in, the case itself is the target: PSNR and SSIM
(`PSNRMetric`, `SSIMMetric` per frame) with the target's range.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ._deps import need
from .dataset import Dataset, open_dataset, progress
from .predict import head_tasks, load_checkpoint, predict_image

__all__ = ["evaluate"]

_FOR_TASK = {"segment": "segmentation", "classify": "classification"}


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return round(float(np.mean(kept)), 6) if kept else None


def _number(value: Any) -> float | None:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def _segmentation(pred: np.ndarray, label: np.ndarray, classes: int, spacing: Any,
                  t_axis: str, names: dict[int, str]) -> dict[str, Any]:  # fmt: skip
    torch = need("torch")
    metrics = need("monai.metrics")
    one_hot = need("monai.networks.utils").one_hot
    need("scipy")  # MONAI's surface distances
    # [T, 1, H, W] -> [1, K, T, H, W]: the frames or slices are the first spatial axis
    p = one_hot(torch.from_numpy(pred).permute(1, 0, 2, 3)[None], classes)
    y = one_hot(torch.from_numpy(label).permute(1, 0, 2, 3)[None], classes)
    dice = metrics.compute_dice(p, y, include_background=False, ignore_empty=True)[0]
    per_class = {names.get(k, str(k)): _number(dice[k - 1]) for k in range(1, classes)}
    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
    if t_axis == "slices" and pred.shape[0] > 1:
        hd = metrics.compute_hausdorff_distance(
            p, y, include_background=False, percentile=95, spacing=list(spacing)
        )[0]
    else:  # per frame, in-plane (a time axis has no distance)
        hd = metrics.compute_hausdorff_distance(
            p[0].permute(1, 0, 2, 3), y[0].permute(1, 0, 2, 3), include_background=False,
            percentile=95, spacing=list(spacing[1:]),
        )  # fmt: skip
        hd = torch.nanmean(torch.where(torch.isinf(hd), torch.nan, hd), dim=0)
    hd = torch.where(torch.isinf(hd), torch.nan, hd)
    return {
        "dice": _mean(list(per_class.values())),
        "dice_per_class": per_class,
        "hd95": _mean([_number(v) for v in hd]),
    }


def _enhancement(pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    torch = need("torch")
    metrics = need("monai.metrics")
    data_range = float(target.max() - target.min()) or 1.0
    p, y = torch.from_numpy(pred.astype(np.float32)), torch.from_numpy(target.astype(np.float32))
    psnr = metrics.PSNRMetric(max_val=data_range)(p, y)
    ssim = None
    if min(target.shape[2:]) >= 11:  # SSIM's 11x11 Gaussian window
        ssim = _number(metrics.SSIMMetric(spatial_dims=2, data_range=data_range)(p, y).mean())
    return {"psnr": _number(psnr.mean()), "ssim": ssim}


def evaluate(
    checkpoint: str | Path,
    dataset: str | Path | Dataset,
    *,
    overlap: float = 0.5,
    batch: int = 1,
    noise: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    quiet: bool = True,
) -> dict[str, Any]:
    """Score every head of the model in `checkpoint` that the data set can score, case by
    case: `{"heads": {name: {task, means}}, "cases": [...], "dice" | "accuracy" | "psnr",
    "ssim", ...}` (the means of the first head of each kind at the top level)."""
    model, info = load_checkpoint(checkpoint, device=device)
    ds = dataset if isinstance(dataset, Dataset) else open_dataset(dataset)
    tasks = head_tasks(model)
    scored = {n: t for n, t in tasks.items() if t == "enhancement" or t == _FOR_TASK.get(ds.task)}
    if not scored:
        have = ", ".join(f"{n} ({t})" for n, t in tasks.items())
        raise DataError(
            f"the model's heads {have} cannot be scored on a {ds.task} data set; give a data "
            f"set with {' or '.join(sorted({t for t in tasks.values()}))} labels",
            ds.root,
        )
    nodes = {node.head_name: node for node in model.graph.heads}
    for name, task in scored.items():
        classes = nodes[name].args.get("classes") if task != "enhancement" else None
        known = max(ds.classes, default=0) + 1
        if classes is not None and ds.classes and classes < known:
            raise DataError(
                f"head {name} predicts {classes} classes but the data set has {known} "
                f"({', '.join(ds.classes.values())}); evaluate a model trained on it",
                ds.root,
            )
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    scores: dict[str, list[Any]] = {n: [] for n in scored}
    for i in progress(range(len(ds)), desc="evaluate", quiet=quiet):
        image, label = ds.load(i)
        kwargs = dict(overlap=overlap, batch=batch, normalization=info["normalize"],
                      patch=info.get("patch"), device=device)  # fmt: skip
        row: dict[str, Any] = {"case": ds.cases[i].name}
        if any(t != "enhancement" for t in scored.values()):
            outputs = predict_image(model, image, **kwargs)
            for name, task in scored.items():
                out = outputs[name]
                if task == "segmentation":
                    classes = out.probabilities.shape[1]
                    axis = image.meta.get("t_axis", "slices")
                    row[name] = _segmentation(
                        out.array, label, classes, image.spacing, axis, ds.classes
                    )
                    scores[name].append(row[name])
                elif task == "classification":
                    probs = out.array.reshape(-1, out.array.shape[-1]).mean(0)
                    row[name] = {"label": int(label), "predicted": int(probs.argmax()),
                                 "probabilities": [round(float(p), 6) for p in probs]}  # fmt: skip
                    scores[name].append(row[name])
        if "enhancement" in scored.values():
            std = image.array.std(axis=(0, 2, 3), keepdims=True)
            noisy = image.array + rng.standard_normal(image.array.shape).astype(np.float32) * (
                noise * std
            )
            outputs = predict_image(model, image.with_array(noisy.astype(np.float32)), **kwargs)
            for name, task in scored.items():
                if task == "enhancement":
                    row[name] = _enhancement(outputs[name].array, image.array)
                    scores[name].append(row[name])
        rows.append(row)
    heads = {
        name: {"task": task, **_summarise(task, scores[name], ds)} for name, task in scored.items()
    }
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "dataset": str(ds.root),
        "task": ds.task,
        "cases": len(ds),
        "heads": heads,
        "per_case": rows,
    }
    for name in scored:
        for key, value in heads[name].items():
            if key != "task":
                report.setdefault(key, value)
    return report


def _summarise(task: str, rows: list[dict[str, Any]], ds: Dataset) -> dict[str, Any]:
    if task == "segmentation":
        names = list(rows[0]["dice_per_class"]) if rows else []
        return {
            "dice": _mean([r["dice"] for r in rows]),
            "dice_per_class": {n: _mean([r["dice_per_class"][n] for r in rows]) for n in names},
            "hd95": _mean([r["hd95"] for r in rows]),
        }
    if task == "enhancement":
        return {"psnr": _mean([r["psnr"] for r in rows]), "ssim": _mean([r["ssim"] for r in rows])}
    torch = need("torch")
    metrics = need("monai.metrics")
    labels = np.array([r["label"] for r in rows])
    probs = np.array([r["probabilities"] for r in rows])
    accuracy = float((probs.argmax(1) == labels).mean())
    auc = None
    if len(set(labels.tolist())) > 1:
        y = np.eye(probs.shape[1])[labels]
        present = y.sum(0) > 0
        auc = _number(metrics.compute_roc_auc(torch.from_numpy(probs[:, present]),
                                              torch.from_numpy(y[:, present])))  # fmt: skip
    return {"accuracy": round(accuracy, 6), "auc": auc}
