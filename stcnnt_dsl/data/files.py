"""`stcnnt predict`'s work: many input files through one model into an output folder.

Every input is read and checked, and every output name planned, before the model runs
on the first one: a bad file or an output folder that already holds predictions stops
the command before anything is written. Each output is written atomically.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from ._files import atomic_file, suffix_of
from .dataset import check_values, progress
from .image import Image, read_image, write_image
from .predict import check_input, head_tasks, load_checkpoint, predict_image, read_checkpoint

__all__ = ["predict_files"]

_MANY_CHANNELS = {"nifti", "tiff", "npy"}  # formats that hold K float channels


def _stem(path: Path) -> str:
    suffix = suffix_of(path)
    return path.name[: -len(suffix)] if suffix and path.is_file() else path.name


def _outputs(image: Image, out: Path, heads: dict[str, str], probabilities: bool) -> dict:
    """(head, kind) -> output path for one input, in the input's format."""
    path = image.path
    assert path is not None
    stem, suffix = _stem(path), ("" if path.is_dir() else suffix_of(path))
    spatial = [n for n, t in heads.items() if t != "classification"]
    names: dict[tuple[str, str], Path] = {}
    for name in spatial:
        base = stem if len(spatial) == 1 else f"{stem}_{name}"
        names[(name, "map")] = out / f"{base}{suffix}"
        if probabilities and heads[name] == "segmentation":
            fmt = image.meta.get("format")
            ending = suffix if fmt in _MANY_CHANNELS else ".nii.gz"
            names[(name, "probabilities")] = out / f"{base}_probabilities{ending}"
    return names


def predict_files(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    overlap: float = 0.5,
    batch: int = 1,
    patch: Sequence[int] | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
    t_axis: str | None = None,
    device: str = "cpu",
    quiet: bool = True,
) -> dict[str, Any]:
    """Predict every input with the model in `checkpoint` and write one output per input
    and head into `out` (same name stem, format and geometry): label maps for
    segmentation (and probabilities with `probabilities`), images for enhancement, one
    `predictions.csv` for classification. Returns what was written, per input."""
    graph, _ = read_checkpoint(checkpoint)  # the checks first, the weights after them
    heads = head_tasks(graph)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError("the output must be a folder; it is a file", out)
    if not inputs:
        raise DataError("no input files given; name one or more images or DICOM folders")
    images: list[Image] = []
    planned: dict[Path, Path] = {}
    for given in inputs:
        image = read_image(given, t_axis=t_axis)
        check_input(graph, image)
        check_values(image)
        images.append(image)
        for target in _outputs(image, out, heads, probabilities).values():
            if target in planned:
                raise DataError(
                    f"{given} and {planned[target]} would both write {target.name}; give "
                    "inputs with different names (or predict them into different folders)",
                    target,
                )
            planned[target] = Path(given)
    if "classification" in heads.values():
        planned[out / "predictions.csv"] = Path(inputs[0])
    existing = sorted(p.name for p in planned if p.exists())
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (
            f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        )
        raise DataError(
            f"the folder already holds predictions ({shown}); choose another --out, or pass "
            "--overwrite to replace them",
            out,
        )
    model, info = load_checkpoint(checkpoint, device=device)
    out.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    single = len(images) == 1 and not quiet
    for image in progress(images, desc="predict", quiet=quiet):
        outputs = predict_image(
            model, image, patch=patch or info.get("patch"), overlap=overlap, batch=batch,
            normalization=info["normalize"], device=device, progress=single,
        )  # fmt: skip
        names = _outputs(image, out, heads, probabilities)
        files = []
        for (name, kind), target in names.items():
            result = outputs[name]
            array = result.probabilities if kind == "probabilities" else result.array
            if target.is_dir():  # a DICOM series written before: --overwrite was given
                shutil.rmtree(target)
            files.append(str(write_image(image, array, target)))
        for name, task in heads.items():
            if task == "classification":
                probs = outputs[name].array.reshape(-1, outputs[name].array.shape[-1]).mean(0)
                rows.append([str(image.path), name, int(probs.argmax()),
                             *(f"{p:.6f}" for p in probs)])  # fmt: skip
        written.append({"input": str(image.path), "outputs": files})
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "out": str(out), "files": written}
    if rows:
        result["csv"] = str(_write_csv(out / "predictions.csv", rows))
    return result


def _write_csv(path: Path, rows: list[list[Any]]) -> Path:
    classes = max(len(r) for r in rows) - 3
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", "head", "class", *(f"p{k}" for k in range(classes))])
    writer.writerows(rows)
    data = text.getvalue()
    return atomic_file(path, lambda tmp: tmp.write_text(data, encoding="utf-8"))
