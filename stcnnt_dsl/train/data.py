"""Patches for training, whole cases for validation: the recipe's `data:` section on the
data layer (`stcnnt_dsl.data.open_dataset`).

Every training sample is a pure function of (seed, step, index in the global batch): the
data set (by sampling weight), the case, the crop (a third of them centred on a
foreground voxel, as nnU-Net oversamples) and the augmentations' random numbers all come
from one generator seeded with those three numbers. So a resumed run draws exactly what
the uninterrupted run would have drawn (the data position is the step), and N processes
that each take their slice of the global batch see what one process sees on all of it.

Cases are loaded once, normalised per case and channel (zscore, percentile or none, per
data set), and kept in a MONAI `CacheDataset`. Arrays inside are MONAI's channel-first
[C, T, H, W] (T is the first spatial axis, so `RandFlip(spatial_axis=[1, 2])` flips H
and W); the model gets [T, C, H, W].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SpecError
from .recipe import AUGMENTS, SPATIAL_AUGMENTS_MODULE, DataSpec, LossSpec, RecipeSource

__all__ = ["Batch", "CaseCache", "Source", "TrainData", "open_sources"]

FOREGROUND_FRACTION = 1 / 3


def _open_dataset(path: Path) -> Any:
    """The data layer's reader (a seam the tests replace with in-memory data sets)."""
    from ..data import open_dataset

    return open_dataset(path)


def normalise(image: np.ndarray, how: str) -> np.ndarray:
    """Per channel of one case [T, C, H, W]: zscore, percentile (0.5-99.5 -> [0, 1]), none."""
    image = image.astype(np.float32, copy=True)
    if how == "none":
        return image
    for c in range(image.shape[1]):
        x = image[:, c]
        if how == "zscore":
            x -= x.mean()
            x /= max(float(x.std()), 1e-6)
        else:
            low, high = np.percentile(x, [0.5, 99.5])
            np.clip(x, low, high, out=x)
            x -= low
            x /= max(float(high - low), 1e-6)
    return image


@dataclass
class Source:
    """One data set of the mix: its training and held-out case indices."""

    name: str
    dataset: Any
    weight: float
    normalize: str
    train: list[int]
    val: list[int]


class CaseCache:
    """Loaded, normalised cases of one source as channel-first arrays {image [C,T,H,W],
    label}, in a MONAI CacheDataset (loaded on first use when `cache` is off)."""

    def __init__(self, source: Source, cache: bool) -> None:
        self.source = source
        self._foreground: dict[int, np.ndarray] = {}
        indices = sorted(set(source.train) | set(source.val))
        self._slot = {i: k for k, i in enumerate(indices)}
        items = [{"index": i} for i in indices]
        if cache:
            from monai.data import CacheDataset
            from monai.transforms import Lambda

            # A MONAI Transform (Lambda): CacheDataset caches what transforms return up to
            # the first random one or plain callable, so a bare function here would be
            # cached as nothing and every sample would read its file again.
            self._data: Any = CacheDataset(items, transform=Lambda(self._load), num_workers=0,
                                           progress=False, copy_cache=False)  # fmt: skip
        else:
            self._data = [None] * len(items)
            self._items = items

    def _load(self, item: dict[str, int]) -> dict[str, Any]:
        image, label = self.source.dataset.load(item["index"])
        array = normalise(np.asarray(image.array), self.source.normalize)
        out: dict[str, Any] = {"image": np.ascontiguousarray(array.transpose(1, 0, 2, 3))}
        if isinstance(label, np.ndarray):
            out["label"] = np.ascontiguousarray(label.astype(np.int64).transpose(1, 0, 2, 3))
        elif label is not None:
            out["label"] = int(label)
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        slot = self._slot[index]
        if isinstance(self._data, list):
            if self._data[slot] is None:
                self._data[slot] = self._load(self._items[slot])
            return self._data[slot]
        return self._data[slot]

    def foreground(self, index: int) -> np.ndarray:
        """(t, h, w) coordinates of the case's foreground voxels (label > 0)."""
        if index not in self._foreground:
            label = self[index].get("label")
            if isinstance(label, np.ndarray):
                self._foreground[index] = np.argwhere(label[0] > 0)
            else:
                self._foreground[index] = np.zeros((0, 3), dtype=np.int64)
        return self._foreground[index]


def _pad_to(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Zero-pad the spatial axes [C, T, H, W] up to `size` (nothing if already there)."""
    pads = [(0, 0)] + [(0, max(0, s - d)) for d, s in zip(array.shape[1:], size, strict=True)]
    if all(p == (0, 0) for p in pads):
        return array
    return np.pad(array, pads)


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    array = _pad_to(array, [s + z for s, z in zip(start, size, strict=True)])
    t, h, w = start
    return array[:, t : t + size[0], h : h + size[1], w : w + size[2]]


@dataclass
class Batch:
    """Inputs [B, T, C, H, W] and targets: a label map [B, T, 1, H, W] (segment), class
    indices [B] (classify), or nothing (self-supervised objectives make their own)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    target: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    info: list[tuple[str, int]] = field(default_factory=list)

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.x), move(self.y), move(self.target), move(self.mask), self.info)

    def targets(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in (("y", self.y), ("target", self.target),
                                  ("mask", self.mask)) if v is not None}  # fmt: skip


class TrainData:
    """The recipe's data: sources, the patch sampler and the held-out cases."""

    def __init__(
        self, sources: list[Source], spec: DataSpec, task: str, seed: int,
        objective: str | None = None, loss: LossSpec | None = None,
    ) -> None:  # fmt: skip
        self.sources = sources
        self.spec = spec
        self.task = task
        self.seed = seed
        self.objective = objective
        self.loss = loss or LossSpec()
        self.patch = tuple(spec.patch)
        weights = np.array([s.weight if s.train else 0.0 for s in sources], dtype=np.float64)
        if weights.sum() <= 0:
            raise SpecError("no training cases left after holding out data.val", "data.val")
        self.weights = weights / weights.sum()
        self.caches = [CaseCache(s, spec.cache) for s in sources]
        self.augment = _augments(spec.augment, has_label=task == "segment")

    @property
    def channels(self) -> int:
        return self.caches[0][self.sources[0].train[0]]["image"].shape[0]

    def train_cases(self) -> int:
        return sum(len(s.train) for s in self.sources)

    def sample(self, step: int, index: int) -> dict[str, Any]:
        """Sample `index` of the global batch at `step` (see the module docstring)."""
        rng = np.random.default_rng([self.seed, step, index])
        k = int(rng.choice(len(self.sources), p=self.weights))
        source, cache = self.sources[k], self.caches[k]
        case = source.train[int(rng.integers(len(source.train)))]
        item = cache[case]
        shape = item["image"].shape[1:]
        start = [int(rng.integers(max(d - p, 0) + 1)) for d, p in zip(shape, self.patch,
                                                                        strict=True)]  # fmt: skip
        if self.task == "segment" and rng.random() < FOREGROUND_FRACTION:
            fg = cache.foreground(case)
            if len(fg):
                centre = fg[int(rng.integers(len(fg)))]
                start = [int(min(max(c - p // 2, 0), max(d - p, 0)))
                         for c, p, d in zip(centre, self.patch, shape, strict=True)]  # fmt: skip
        out: dict[str, Any] = {"image": crop(item["image"], start, self.patch)}
        label = item.get("label")
        if isinstance(label, np.ndarray):
            out["label"] = crop(label, start, self.patch)
        if self.augment is not None:
            self.augment.set_random_state(seed=int(rng.integers(2**31)))
            out = self.augment(out)
        sample = {"image": _to_tensor(out["image"]).float(), "where": (source.name, case)}
        if self.objective is not None:
            self._corrupt(sample, rng)
        elif isinstance(out.get("label"), (np.ndarray, torch.Tensor)):
            sample["label"] = _to_tensor(out["label"]).long()
        elif label is not None:
            sample["label"] = torch.tensor(int(label))
        return sample

    def _corrupt(self, sample: dict[str, Any], rng: np.random.Generator) -> None:
        """The self-supervised pair: the clean patch is the target; the input has noise
        added (denoise) or squares of `mask_size` pixels hidden (masked)."""
        clean = sample["image"]
        sample["target"] = clean
        if self.objective == "denoise":
            noise = rng.standard_normal(clean.shape, dtype=np.float32) * self.loss.noise
            sample["image"] = clean + torch.from_numpy(noise)
            return
        _, t, h, w = clean.shape
        k = self.loss.mask_size
        grid = rng.random((t, -(-h // k), -(-w // k))) < self.loss.mask_ratio
        mask = np.repeat(np.repeat(grid, k, axis=1), k, axis=2)[None, :, :h, :w]
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
        sample["mask"] = mask_t
        sample["image"] = clean * (1 - mask_t)

    def batch(self, step: int, indices: Sequence[int]) -> Batch:
        """The samples `indices` of the global batch at `step`, stacked: [B, T, C, H, W]."""
        samples = [self.sample(step, i) for i in indices]
        x = torch.stack([s["image"].transpose(0, 1) for s in samples])
        y = None
        if "label" in samples[0]:
            y = torch.stack([s["label"] for s in samples])
            if y.ndim == 5:  # [B, 1, T, H, W] -> [B, T, 1, H, W]
                y = y.transpose(1, 2)
        frames = lambda key: (  # noqa: E731  [C, T, H, W] -> [B, T, C, H, W]
            torch.stack([s[key].transpose(0, 1) for s in samples]) if key in samples[0] else None
        )
        return Batch(x.contiguous(), y, frames("target"), frames("mask"),
                     [s["where"] for s in samples])  # fmt: skip

    def val_cases(self) -> list[tuple[Source, dict[str, Any]]]:
        return [(s, c[i]) for s, c in zip(self.sources, self.caches, strict=True) for i in s.val]


def _to_tensor(array: Any) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.as_tensor() if hasattr(array, "as_tensor") else array
    return torch.from_numpy(np.ascontiguousarray(array))


def _augments(items: list[tuple[str, dict[str, Any]]], *, has_label: bool) -> Any:
    """MONAI's dictionary transforms for the recipe's augment list (spatial ones move the
    label with the image; intensity ones touch the image only)."""
    if not items:
        return None
    from monai.transforms import Compose

    table = AUGMENTS()
    transforms = []
    for i, (name, args) in enumerate(items):
        cls = table[name]
        spatial = cls.__module__ == SPATIAL_AUGMENTS_MODULE
        keys = ["image", "label"] if spatial and has_label else ["image"]
        args = dict(args)
        if spatial and has_label and "mode" in _params(cls) and "mode" not in args:
            args["mode"] = ["bilinear", "nearest"]  # labels are never interpolated
        try:
            transforms.append(cls(keys=keys, **args))
        except Exception as err:  # MONAI checks its arguments in many ways
            raise SpecError(f"{name}: {err}", f"data.augment[{i}].{name}") from None
    return Compose(transforms).set_random_state(seed=0)


def _params(cls: type) -> list[str]:
    import inspect

    return list(inspect.signature(cls.__init__).parameters)


def _split(dataset: Any, val: Any, labelled: bool, seed: int, where: str) -> tuple[list, list]:
    """(training, held-out) case indices: val is a fraction, a count or case names."""
    names = [c.name for c in dataset.cases]
    n = len(names)
    if isinstance(val, list):
        unknown = [v for v in val if v not in names]
        if unknown:
            from ..errors import did_you_mean

            raise SpecError(f"held-out case {unknown[0]!r} is not in {where}"
                            f"{did_you_mean(unknown[0], names)}", "data.val")  # fmt: skip
        held = [names.index(v) for v in val]
    else:
        count = round(val * n) if isinstance(val, float) else int(val)
        count = min(max(count, 1 if isinstance(val, float) and n > 1 else count), n - 1)
        order = np.random.default_rng([seed, 7]).permutation(n)
        held = sorted(int(i) for i in order[:count])
    train = [i for i in range(n) if i not in set(held)]
    return train, held


def open_sources(source: RecipeSource) -> list[Source]:
    """The recipe's data sets, opened, each split into training and held-out cases."""
    spec = source.recipe.data
    entries = spec.path if isinstance(spec.path, list) else [spec.path]
    out = []
    for k, entry in enumerate(entries):
        raw = entry if isinstance(entry, str) else entry.path
        path = source.resolve(raw)
        where = "data.path" if isinstance(spec.path, str) else f"data.path[{k}]"
        if not path.exists():
            raise SpecError(f"data set not found: {path}", where)
        dataset = _open_dataset(path)
        if len(dataset) < 2:
            raise SpecError(f"{path} has {len(dataset)} case(s); training needs at least 2 "
                            "(one held out)", where)  # fmt: skip
        train, val = _split(dataset, spec.val, True, source.recipe.seed, str(path))
        if spec.cases is not None:
            train = train[: spec.cases]
        out.append(Source(
            name=path.name, dataset=dataset,
            weight=1.0 if isinstance(entry, str) else entry.weight,
            normalize=(spec.normalize if isinstance(entry, str) or entry.normalize is None
                       else entry.normalize),
            train=train, val=val,
        ))  # fmt: skip
    return out
