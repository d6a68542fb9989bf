"""A whole model (`Model` with `heads:`) on images of any size.

The model graph's size rule (`ModelGraph.rule()`: H and W multiples, minimum, frames)
gives the valid patch; MONAI's `sliding_window_inference` runs the patch over the image
with overlap and Gaussian blending, pads images smaller than the patch and crops the
result back to the input's size. Segmentation and enhancement heads are windowed;
classification heads see the whole image, padded to a valid size.

Intensities are normalised per case and channel before the model sees them (`normalize`,
the same function training uses); an enhancement output is mapped back to the input's
intensities.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, ShapeError
from ._deps import need
from .image import Image

__all__ = [
    "DEFAULT_LIMIT",
    "NORMALIZE",
    "HeadOutput",
    "check_input",
    "load_checkpoint",
    "normalize",
    "predict_image",
    "read_checkpoint",
    "sliding_window",
    "valid_patch",
]

NORMALIZE = ("zscore", "percentile", "none")
DEFAULT_LIMIT = (32, 128, 128)  # the largest default window (T, H, W): memory stays bounded
_TEMPORAL = {"temporal", "conv3d"}  # cells that mix along T


def _stats(array: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per channel (shift, scale, clip range or None): normalised = (x - shift) / scale."""
    if how not in NORMALIZE:
        raise DataError(f"normalize must be one of {', '.join(NORMALIZE)}, got {how!r}")
    channels = array.shape[1]
    if how == "none":
        return np.zeros(channels), np.ones(channels), None
    per = array.transpose(1, 0, 2, 3).reshape(channels, -1)
    if how == "zscore":
        return per.mean(1), np.maximum(per.std(1), 1e-6), None
    low, high = np.percentile(per, [0.5, 99.5], axis=1)
    return low, np.maximum(high - low, 1e-6), np.stack([low, high])


def normalize(array: np.ndarray, how: str = "zscore") -> np.ndarray:
    """One case `[T, C, H, W]` normalised per channel: `zscore` (mean 0, std 1),
    `percentile` (clipped to the 0.5 and 99.5 percentiles, then scaled to [0, 1]) or
    `none`. Training and prediction both call this, so a model sees the same values."""
    shift, scale, clip = _stats(array, how)
    out = array.astype(np.float32, copy=True)
    if clip is not None:
        out = np.clip(out, clip[0][None, :, None, None], clip[1][None, :, None, None])
    out -= shift.astype(np.float32)[None, :, None, None]
    out /= scale.astype(np.float32)[None, :, None, None]
    return out


# --------------------------------------------------------------------------- the model


def read_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The model graph in a whole-model file (no weights read, no torch modules built)
    and what its metadata says about the data: `normalize` and `patch` when training
    wrote them. Lets commands check their inputs before the model is loaded."""
    from ..graph import build_graph
    from ..language.spec import load_source
    from ..tools.io import read_metadata

    metadata = read_metadata(path)
    graph = build_graph(load_source(metadata["spec"], read_files=False), read_files=False)
    if not graph.heads:
        raise DataError(
            "the file holds a backbone without heads; prediction and evaluation need a "
            "whole model: add `heads:` to the spec (segmentation, classification or "
            "enhancement) and train it, or save the trained Model",
            path,
        )
    info: dict[str, Any] = {"normalize": metadata.get("normalize", "zscore")}
    if "patch" in metadata:
        info["patch"] = [int(v) for v in json.loads(metadata["patch"])]
    return graph, info


def load_checkpoint(path: str | Path, *, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A whole model saved by `save_model` (or `stcnnt train`), in eval mode, with the
    data facts of `read_checkpoint`."""
    from ..tools.io import load_model

    _, info = read_checkpoint(path)
    return load_model(path, device=device), info


def _graph(model: Any) -> Any:
    return getattr(model, "graph", model)


def head_tasks(model: Any) -> dict[str, str]:
    """Head name -> segmentation | classification | enhancement (of a model or graph)."""
    return {node.head_name: node.task for node in _graph(model).heads}


def mixes_time(model: Any) -> bool:
    """Whether the model (or graph) has cells that mix along T (conv3d, temporal)."""
    blocks = _graph(model).block_plans()
    return any(cell.spec.kind in _TEMPORAL for plan in blocks for cell in plan.cells)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def valid_patch(
    model: Any,
    shape: Sequence[int],
    *,
    limit: Sequence[int] | None = None,
) -> tuple[int, int, int]:
    """The window `(T, H, W)` for an image of `shape` `(T, H, W)`: the image's size
    rounded up to the multiples the model's graph accepts (its `SizeRule`), at most
    `limit` (default `DEFAULT_LIMIT`) rounded down to them, never below the smallest
    valid size. Larger images are tiled with it; smaller ones are padded to it."""
    graph = getattr(model, "graph", model)
    rule = graph.rule()
    limit = tuple(limit or DEFAULT_LIMIT)
    t, h, w = (int(v) for v in shape)
    if rule.exact is not None:
        size = tuple(rule.exact)
    else:
        size = []
        for value, multiple, cap in zip((h, w), rule.multiple, limit[1:], strict=True):
            smallest = _round_up(max(rule.minimum, 1), multiple)
            size.append(max(smallest, min(_round_up(value, multiple), cap // multiple * multiple)))
    m = rule.frames_multiple  # a model that halves T (mixed_unetr's halve_time)
    frames = max(rule.min_frames, min(_round_up(t, m), max(m, limit[0] // m * m)))
    if getattr(model, "layout", "BTCHW") == "BCHW":
        frames = 1
    patch = (frames, int(size[0]), int(size[1]))
    graph.check(*patch)
    return patch


def check_input(model: Any, image: Image) -> None:
    """Refuse an image the model (or its graph) cannot take: other channel counts, or a
    2D image for a model that mixes along T."""
    graph = _graph(model)
    t, c, _, _ = image.array.shape
    name = image.path or "the image"
    if c != graph.in_channels:
        raise DataError(
            f"the model takes {graph.in_channels} channel(s) but the image has {c}; give "
            f"images with {graph.in_channels} channel(s) (for RGB files, a model built with "
            "in_channels: 3)",
            name,
        )
    if t == 1 and mixes_time(graph):
        raise DataError(
            f"the image is 2D (T=1) but the model {graph.name} mixes along T (its "
            "temporal or 3D convolution cells); give it a 2D+T clip or a 3D volume, or use "
            "a 2D model",
            name,
        )


# --------------------------------------------------------------------------- windows


def _to_model(model: Any, x: Any) -> Any:
    from ..nn.axes import from_btchw

    return from_btchw(x, getattr(model, "layout", "BTCHW"))


def _from_model(model: Any, y: Any) -> Any:
    from ..nn.axes import to_btchw

    layout = getattr(model, "layout", "BTCHW")
    if y.dim() < 4 or layout == "BTCHW":
        return y
    return to_btchw(y, layout, "output")


def sliding_window(
    model: Any,
    array: np.ndarray,
    patch: Sequence[int],
    *,
    heads: Sequence[str],
    overlap: float = 0.5,
    batch: int = 1,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """The named spatial heads' outputs for one normalised case `[T, C, H, W]`, by MONAI's
    `sliding_window_inference` (Gaussian blending): a tensor `[K, T, H, W]` per head, on
    the CPU, the size of the input."""
    torch = need("torch")
    inferers = need("monai.inferers")
    if not 0 <= overlap < 1:
        raise DataError(f"overlap must be in [0, 1), got {overlap}")
    if batch < 1:
        raise DataError(f"batch must be >= 1, got {batch}")
    x = torch.from_numpy(np.ascontiguousarray(array.transpose(1, 0, 2, 3)))[None]  # [1,C,T,H,W]

    def predictor(window: Any) -> dict[str, Any]:
        out = model(_to_model(model, window.permute(0, 2, 1, 3, 4)))
        return {h: _from_model(model, out[h]).permute(0, 2, 1, 3, 4) for h in heads}

    with torch.inference_mode():
        result = inferers.sliding_window_inference(
            x, roi_size=tuple(patch), sw_batch_size=batch, predictor=predictor,
            overlap=overlap, mode="gaussian", sw_device=device, device="cpu",
            progress=progress,
        )  # fmt: skip
    return {h: result[h][0] for h in heads}


def _whole(model: Any, array: np.ndarray, device: str) -> dict[str, Any]:
    """Every head on the whole case, zero-padded (the normalised mean) up to the nearest
    valid size: for classification heads, which answer for the image as a whole."""
    torch = need("torch")
    rule = model.graph.rule()
    t, _, h, w = array.shape
    smallest = [_round_up(max(rule.minimum, 1), m) for m in rule.multiple]
    size = [
        max(s, _round_up(v, m)) for v, m, s in zip((h, w), rule.multiple, smallest, strict=True)
    ]
    if rule.exact is not None:
        size = list(rule.exact)
        if h > size[0] or w > size[1]:
            raise DataError(
                f"the model takes exactly H x W = {size[0]} x {size[1]} (norm=layer) but the "
                f"image is {h} x {w}; resample it to that size first"
            )
    frames = max(_round_up(t, rule.frames_multiple), rule.min_frames)
    padded = np.pad(array, [(0, frames - t), (0, 0), (0, size[0] - h), (0, size[1] - w)])
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(padded))[None].to(device)
        return {k: v.cpu() for k, v in model(_to_model(model, x)).items()}


@dataclass
class HeadOutput:
    """One head's prediction for one image: `task`; `array` a label map int64
    [T, 1, H, W] (segmentation), the image [T, K, H, W] (enhancement) or class
    probabilities [K] (classification, [T, K] per frame); `probabilities` float32
    [T, K, H, W] for segmentation."""

    task: str
    array: np.ndarray
    probabilities: np.ndarray | None = None


def predict_image(
    model: Any,
    image: Image,
    *,
    patch: Sequence[int] | None = None,
    overlap: float = 0.5,
    batch: int = 1,
    normalization: str = "zscore",
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, HeadOutput]:
    """Every head of `model` on `image` (any size): name -> `HeadOutput`, at the image's
    size. `patch` (T, H, W) must be valid for the model; by default `valid_patch`."""
    torch = need("torch")
    from .dataset import check_values

    check_input(model, image)
    check_values(image)
    t, _, h, w = image.array.shape
    if patch is None:
        patch = valid_patch(model, (t, h, w))
    else:
        patch = tuple(int(v) for v in patch)
        try:
            model.graph.check(*patch)
        except ShapeError as err:
            raise DataError(f"patch {list(patch)} is not valid for the model: {err}") from None
    shift, scale, _ = _stats(image.array, normalization)
    array = normalize(image.array, normalization)
    tasks = head_tasks(model)
    spatial = [n for n, task in tasks.items() if task != "classification"]
    outputs: dict[str, HeadOutput] = {}
    if spatial:
        maps = sliding_window(model, array, patch, heads=spatial, overlap=overlap, batch=batch,
                              device=device, progress=progress)  # fmt: skip
        for name in spatial:
            out = maps[name].permute(1, 0, 2, 3)  # [T, K, H, W]
            if tasks[name] == "segmentation":
                probs = torch.softmax(out, dim=1)
                label = probs.argmax(1, keepdim=True).to(torch.int64)
                outputs[name] = HeadOutput("segmentation", label.numpy(), probs.numpy())
            else:
                values = out.numpy().astype(np.float32)
                if values.shape[1] == image.array.shape[1]:  # back to the input's intensities
                    values = values * scale[None, :, None, None] + shift[None, :, None, None]
                outputs[name] = HeadOutput("enhancement", values.astype(np.float32))
    classify = [n for n, task in tasks.items() if task == "classification"]
    if classify:
        whole = _whole(model, array, device)
        for name in classify:
            probs = torch.softmax(whole[name][0].float(), dim=-1)
            outputs[name] = HeadOutput("classification", probs.numpy())
    return outputs
