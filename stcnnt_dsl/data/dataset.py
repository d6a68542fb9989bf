"""Data sets in the field's layouts, case by case, and their fingerprint.

Layouts: nnU-Net v2 raw (`dataset.json` with `channel_names`, `labels`, `file_ending`;
`imagesTr/CASE_0000<ending>` per channel, `labelsTr/CASE<ending>`), the Medical
Segmentation Decathlon / MONAI datalist (`dataset.json` with `training: [{image,
label}]`), and a plain folder (one sub-folder per class, or `labels.csv` with
`file,label`, or just images: unlabelled).

Every check a case can fail (shapes, label values, NaN, constant images, channel
counts) raises one `DataError` naming the file and the fix, when the case is loaded.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ._files import suffix_of
from .image import FORMATS, Image, read_image

__all__ = ["Case", "Dataset", "check_values", "open_dataset", "progress"]

LAYOUTS = ("nnunet", "decathlon", "folder")
_SAMPLES_PER_CASE = 10_000  # intensity samples per case and channel, as nnU-Net takes


@dataclass(frozen=True)
class Case:
    """One case: its image files (one per channel, or one file holding all channels)
    and its label (a segmentation file, a class index, or None)."""

    name: str
    images: tuple[Path, ...]
    label: Path | int | None = None


def progress(items: Any, *, desc: str, quiet: bool = False, total: int | None = None) -> Any:
    """`items` with a tqdm bar on stderr, shown only when stderr is a terminal and not
    `quiet`."""
    import sys

    from ._deps import need

    tqdm = need("tqdm").tqdm
    disable = quiet or not sys.stderr.isatty()
    return tqdm(items, desc=desc, total=total, disable=disable, leave=False, unit="case")


def check_values(image: Image, where: Path | None = None) -> None:
    """Refuse images a model cannot learn from or be normalised with: NaN / infinite
    values, or one constant value."""
    where = where or image.path
    array = image.array
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise DataError(
            f"the image holds {bad} NaN or infinite values; fix or mask them in the file "
            "(e.g. set them to the background value) before training or prediction",
            where,
        )
    flat = array.reshape(array.shape[0], array.shape[1], -1)
    for c in range(array.shape[1]):
        if float(flat[:, c].min()) == float(flat[:, c].max()):
            raise DataError(
                f"channel {c} of the image is constant ({float(flat[:, c].min()):g} everywhere): "
                "it carries no information and cannot be normalised; remove the case or "
                "export the image again",
                where,
            )


class Dataset:
    """Cases of one data set. `task`: "segment", "classify" or "unlabelled";
    `channels`: names; `classes`: label value (or class index) -> name."""

    def __init__(
        self,
        root: Path,
        layout: str,
        task: str,
        channels: list[str],
        classes: dict[int, str],
        cases: list[Case],
        *,
        t_axis: str | None = None,
    ) -> None:
        self.root = root
        self.layout = layout
        self.task = task
        self.channels = channels
        self.classes = classes
        self.cases = cases
        self.t_axis = t_axis

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __repr__(self) -> str:
        return (
            f"Dataset({str(self.root)!r}, layout={self.layout!r}, task={self.task!r}, "
            f"cases={len(self)}, channels={self.channels}, classes={self.classes})"
        )

    def load(self, i: int) -> tuple[Image, np.ndarray | int | None]:
        """Case `i` as (image float32 [T, C, H, W] with all channels, label): the label
        is int64 [T, 1, H, W] for segmentation, an int for classification, None when
        unlabelled. Raises a `DataError` naming the file for every bad input."""
        case = self.cases[i]
        parts = [read_image(p, t_axis=self.t_axis) for p in case.images]
        first = parts[0]
        for path, part in zip(case.images[1:], parts[1:], strict=True):
            if _thw(part) != _thw(first):
                raise DataError(
                    f"channel file of [T, H, W] {_thw(part)} but the case's first channel "
                    f"{case.images[0].name} is {_thw(first)}; all channels of a case must be "
                    "resampled onto one grid",
                    path,
                )
        array = np.concatenate([p.array for p in parts], axis=1) if len(parts) > 1 else first.array
        image = first.with_array(array)
        if self.channels and array.shape[1] != len(self.channels):
            raise DataError(
                f"case {case.name} has {array.shape[1]} channels but the data set's others "
                f"have {len(self.channels)} ({', '.join(self.channels)}); give every case the "
                "same channels",
                case.images[0],
            )
        for path, part in zip(case.images, parts, strict=True):
            check_values(part, path)
        if self.task != "segment" or case.label is None:
            return image, case.label
        return image, self._label(case, image)

    def _label(self, case: Case, image: Image) -> np.ndarray:
        path = case.label
        assert isinstance(path, Path)
        label = read_image(path, t_axis=self.t_axis)
        if _thw(label) != _thw(image) or label.array.shape[1] != 1:
            raise DataError(
                f"the label's [T, C, H, W] is {label.shape} but its image "
                f"{case.images[0].name} is {image.shape}: a label map has one channel and the "
                "image's T, H and W (resample the label onto the image's grid, nearest "
                "neighbour)",
                path,
            )
        values = label.array
        if not np.array_equal(values, np.rint(values)):
            raise DataError(
                "the label map holds non-integer values; a segmentation label holds class "
                "values (0 = background)",
                path,
            )
        values = values.astype(np.int64)
        if self.classes:
            found = np.unique(values)
            unknown = sorted(int(v) for v in found if int(v) not in self.classes)
            if unknown:
                known = ", ".join(f"{v} ({n})" for v, n in sorted(self.classes.items()))
                raise DataError(
                    f"label values {unknown} are not in dataset.json's labels ({known}); add "
                    "them to dataset.json's labels or fix the label map",
                    path,
                )
        return values

    def fingerprint(self, *, quiet: bool = True) -> dict[str, Any]:
        """What a plan needs to know of the data (JSON-able): `cases`, `channels`,
        `classes` (name -> voxel frequency, or case count for classification), `task`,
        `layout`, `shape` and `spacing` (`median`, `min`, `max` of [T, H, W]), and
        `intensity` per channel (`p00_5`, `p99_5`, `mean`, `std`, `median` of voxels
        inside the labels for segmentation, as nnU-Net collects them, else of all)."""
        rng = np.random.default_rng(0)
        shapes, spacings = [], []
        samples: list[list[np.ndarray]] = [[] for _ in self.channels]
        counts: dict[int, int] = {}
        for i in progress(range(len(self)), desc="fingerprint", quiet=quiet):
            image, label = self.load(i)
            shapes.append(_thw(image))
            spacings.append(image.spacing)
            mask = None
            if isinstance(label, np.ndarray):
                values, n = np.unique(label, return_counts=True)
                for v, k in zip(values.tolist(), n.tolist(), strict=True):
                    counts[v] = counts.get(v, 0) + k
                if (label > 0).any():
                    mask = label[:, 0] > 0
            elif isinstance(label, int):
                counts[label] = counts.get(label, 0) + 1
            for c in range(image.array.shape[1]):
                voxels = image.array[:, c][mask] if mask is not None else image.array[:, c]
                voxels = voxels.ravel()
                if voxels.size > _SAMPLES_PER_CASE:
                    voxels = rng.choice(voxels, _SAMPLES_PER_CASE, replace=False)
                samples[c].append(voxels)
        total = sum(counts.values()) or 1
        classes: dict[str, float | int] = {}
        for value in sorted(set(self.classes) | set(counts)):
            name = self.classes.get(value, str(value))
            n = counts.get(value, 0)
            classes[name] = n if self.task == "classify" else round(n / total, 6)
        return {
            "layout": self.layout,
            "task": self.task,
            "cases": len(self),
            "channels": list(self.channels),
            "classes": classes,
            "labels": {name: value for value, name in sorted(self.classes.items())},
            "shape": _summary(shapes, integer=True),
            "spacing": _summary(spacings),
            "intensity": [
                {"channel": name, **_intensity(np.concatenate(s))}
                for name, s in zip(self.channels, samples, strict=True)
            ],
        }


def _thw(image: Image) -> tuple[int, int, int]:
    t, _, h, w = image.array.shape
    return t, h, w


def _summary(rows: list[Any], integer: bool = False) -> dict[str, list[float]]:
    data = np.asarray(rows, dtype=np.float64)
    fix = (lambda v: round(float(v))) if integer else (lambda v: round(float(v), 6))
    return {
        "median": [fix(v) for v in np.median(data, axis=0)],
        "min": [fix(v) for v in data.min(axis=0)],
        "max": [fix(v) for v in data.max(axis=0)],
    }


def _intensity(voxels: np.ndarray) -> dict[str, float]:
    p00_5, median, p99_5 = np.percentile(voxels, [0.5, 50, 99.5])
    return {
        "p00_5": round(float(p00_5), 6),
        "p99_5": round(float(p99_5), 6),
        "mean": round(float(voxels.mean()), 6),
        "std": round(float(voxels.std()), 6),
        "median": round(float(median), 6),
    }


# --------------------------------------------------------------------------- opening


def open_dataset(path: str | Path, *, t_axis: str | None = None) -> Dataset:
    """Open a data set folder (or its `dataset.json`): nnU-Net v2 raw, Decathlon / MONAI
    datalist, or a plain folder (see the module docstring). Files are listed and checked
    for completeness here; each case's contents are checked when it is loaded."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such data set folder", path)
    root = path.parent if path.is_file() and path.name == "dataset.json" else path
    if not root.is_dir():
        raise DataError("a data set is a folder (or its dataset.json); got a file", path)
    manifest = root / "dataset.json"
    if manifest.is_file():
        doc = _read_json(manifest)
        if "channel_names" in doc or "file_ending" in doc:
            return _open_nnunet(root, doc, t_axis)
        if "training" in doc:
            return _open_datalist(root, doc, t_axis)
        raise DataError(
            "dataset.json has neither nnU-Net v2's keys (channel_names, labels, file_ending) "
            "nor a datalist's training list; write one of the two",
            manifest,
        )
    return _open_folder(root, t_axis)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{err.lineno}:{err.colno}: not valid JSON: {err.msg}", path) from None
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text; save it as UTF-8", path) from None
    if not isinstance(doc, dict):
        raise DataError("dataset.json must hold a JSON object", path)
    return doc


def _labels(doc: dict[str, Any], manifest: Path, name_to_value: bool) -> dict[int, str]:
    """dataset.json's labels as value -> name (nnU-Net writes name: value, the
    Decathlon value: name)."""
    labels = doc.get("labels") or {}
    out: dict[int, str] = {}
    for key, value in labels.items():
        number, name = (value, key) if name_to_value else (key, value)
        try:
            out[int(number)] = str(name)
        except (TypeError, ValueError):
            raise DataError(
                f"labels entry {key!r}: {value!r} is not a class value (a whole number; "
                "region-based labels are not supported)",
                manifest,
            ) from None
    return out


def _channel_names(doc: dict[str, Any]) -> list[str]:
    names = doc.get("channel_names") or doc.get("modality") or {}
    return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]


def _open_nnunet(root: Path, doc: dict[str, Any], t_axis: str | None) -> Dataset:
    manifest = root / "dataset.json"
    ending = str(doc.get("file_ending", ".nii.gz"))
    channels = _channel_names(doc)
    images = root / "imagesTr"
    if not images.is_dir():
        raise DataError("an nnU-Net data set keeps its images in imagesTr/; it is missing", root)
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    found: dict[str, dict[int, Path]] = {}
    for file in sorted(images.iterdir()):
        match = pattern.match(file.name)
        if match:
            found.setdefault(match[1], {})[int(match[2])] = file
    if not found:
        raise DataError(
            f"imagesTr/ holds no CASE_0000{ending} files; name each channel's file "
            f"CASE_XXXX{ending} (XXXX = channel number)",
            images,
        )
    want = list(range(len(channels) or max(len(v) for v in found.values())))
    cases = []
    for name, files in found.items():
        if sorted(files) != want:
            have = ", ".join(f"{c:04d}" for c in sorted(files))
            raise DataError(
                f"case {name} has channel files {have} but dataset.json's channel_names "
                f"asks for {len(want)} ({', '.join(f'{c:04d}' for c in want)}); give every "
                "case one file per channel",
                images,
            )
        label = root / "labelsTr" / f"{name}{ending}"
        if not label.is_file():
            raise DataError(
                f"case {name} has no label labelsTr/{label.name}; add it or move the case's "
                "images to imagesTs/",
                root / "labelsTr",
            )
        cases.append(Case(name, tuple(files[c] for c in want), label))
    count = doc.get("numTraining")
    if count is not None and int(count) != len(cases):
        raise DataError(
            f"numTraining says {count} but imagesTr/ holds {len(cases)} cases; correct numTraining",
            manifest,
        )
    classes = _labels(doc, manifest, name_to_value=True)
    channels = channels or [str(c) for c in want]
    return Dataset(root, "nnunet", "segment", channels, classes, cases, t_axis=t_axis)


def _resolve(root: Path, entry: Any, manifest: Path) -> Path:
    path = (root / str(entry)).resolve() if not Path(str(entry)).is_absolute() else Path(entry)
    if not path.exists():
        raise DataError(f"the datalist names {entry}, which does not exist", manifest)
    return path


def _open_datalist(root: Path, doc: dict[str, Any], t_axis: str | None) -> Dataset:
    manifest = root / "dataset.json"
    entries = doc.get("training") or []
    if not isinstance(entries, list) or not entries:
        raise DataError("dataset.json's training list is empty; list the cases", manifest)
    cases, kinds = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(f"training[{i}] needs an image: {{image: ..., label: ...}}", manifest)
        files = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        images = tuple(_resolve(root, f, manifest) for f in files)
        label = entry.get("label")
        if isinstance(label, bool) or isinstance(label, float):
            raise DataError(f"training[{i}].label must be a file or a class index", manifest)
        if isinstance(label, int):
            kinds.add("classify")
        elif label is not None:
            label = _resolve(root, label, manifest)
            kinds.add("segment")
        else:
            kinds.add("unlabelled")
        name = suffix_of(images[0]) and images[0].name[: -len(suffix_of(images[0]))]
        cases.append(Case(name or images[0].name, images, label))
    if len(kinds) > 1:
        raise DataError(
            f"the training list mixes {' and '.join(sorted(kinds))} cases; give every case the "
            "same kind of label",
            manifest,
        )
    task = kinds.pop()
    classes = _labels(doc, manifest, name_to_value=False)
    if task == "classify" and not classes:
        classes = {v: str(v) for v in sorted({c.label for c in cases})}
    channels = _channel_names(doc) or _first_channels(cases, t_axis)
    return Dataset(root, "decathlon", task, channels, classes, cases, t_axis=t_axis)


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and suffix_of(path) in FORMATS


def _open_folder(root: Path, t_axis: str | None) -> Dataset:
    table = root / "labels.csv"
    if table.is_file():
        return _open_csv(root, table, t_axis)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = sorted(p for p in root.iterdir() if _is_image(p))
    if folders and not files:
        classes = {i: f.name for i, f in enumerate(folders)}
        cases = [
            Case(f"{folder.name}/{p.name}", (p,), i)
            for i, folder in enumerate(folders)
            for p in sorted(folder.iterdir())
            if _is_image(p)
        ]
        task = "classify"
    else:
        classes, task = {}, "unlabelled"
        cases = [Case(p.name, (p,), None) for p in files]
    if not cases:
        raise DataError(
            "the folder holds no images (.nii.gz, .dcm, .png, .tif, .npy ...); give a folder "
            "with dataset.json (nnU-Net or Decathlon), one sub-folder of images per class, "
            "or images with a labels.csv",
            root,
        )
    return Dataset(root, "folder", task, _first_channels(cases, t_axis), classes, cases,
                   t_axis=t_axis)  # fmt: skip


def _first_channels(cases: list[Case], t_axis: str | None) -> list[str]:
    """Channel names of a layout that has none: the first image's channel numbers (every
    other case must match them when it is loaded)."""
    channels = sum(read_image(p, t_axis=t_axis).array.shape[1] for p in cases[0].images)
    return [str(c) for c in range(channels)]


def _open_csv(root: Path, table: Path, t_axis: str | None) -> Dataset:
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DataError("labels.csv needs a header line 'file,label' and one row per image", table)
    names = sorted(
        {r["label"] for r in rows}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s)
    )
    classes = {i: name for i, name in enumerate(names)}
    index = {name: i for i, name in classes.items()}
    cases = []
    for line, row in enumerate(rows, start=2):
        file = root / row["file"]
        if not file.exists():
            raise DataError(f"line {line} names {row['file']}, which does not exist", table)
        cases.append(Case(row["file"], (file,), index[row["label"]]))
    channels = _first_channels(cases, t_axis)
    return Dataset(root, "folder", "classify", channels, classes, cases, t_axis=t_axis)
