"""DICOM through pydicom: one file, a multi-frame file, or a folder holding one series.

T is the frames of a multi-frame file or the files of a series, ordered by position
along the slice normal (slices) or, where every frame sits at one position, by trigger
time and instance number (a cine: time). A prediction is written as a derived series
from the input's own files: same positions, orientation and spacing; new UIDs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ._deps import need
from ._files import atomic_file, atomic_folder
from ._image import Image, reader_failed

__all__ = ["read_dicom", "write_dicom"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_TIME_POINTERS = {0x00181063, 0x00181065}  # FrameTime, FrameTimeVector
_GRID_OFFSETS = 0x3004000C  # GridFrameOffsetVector (RT dose)


def _read(path: Path, pixels: bool = True) -> Any:
    pydicom = need("pydicom")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
        if pixels:
            ds.pixel_array  # noqa: B018 - decode now, so a broken file fails here, named
    except Exception as err:
        raise reader_failed(path, "DICOM", err) from None
    return ds


def _find(ds: Any, keyword: str, frame: int | None = None) -> Any:
    """An attribute at the top level, else in the shared or per-frame functional groups
    of an enhanced multi-frame file."""
    if keyword in ds:
        return ds[keyword].value
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds:
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        for item in group:
            if item.VR == "SQ" and item.value and keyword in item.value[0]:
                return item.value[0][keyword].value
    return None


def _pixels(ds: Any) -> np.ndarray:
    """`[F, C, H, W]` in the file's units (rescale and dose scaling applied)."""
    data = np.asarray(ds.pixel_array)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        data = data[None]
    data = data[..., None] if samples == 1 else data
    data = data.transpose(0, 3, 1, 2).astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    scaling = float(ds.get("DoseGridScaling", 1) or 1)
    if (slope, intercept, scaling) != (1.0, 0.0, 1.0) and samples == 1:
        data = (data * slope + intercept) * scaling
    return data


def read_dicom(path: Path, t_axis: str | None) -> Image:
    """Read a DICOM file or series folder (see the module docstring)."""
    if path.is_dir():
        return _read_series(path, t_axis)
    ds = _read(path)
    data = _pixels(ds)
    frames = data.shape[0]
    positions = [_find(ds, "ImagePositionPatient", f) for f in range(frames)]
    axis = "none"
    if frames > 1:
        pointer = ds.get("FrameIncrementPointer")
        pointers = {int(p) for p in (pointer if isinstance(pointer, list | tuple) else [pointer])
                    if p is not None}  # fmt: skip
        if _GRID_OFFSETS in pointers and "GridFrameOffsetVector" in ds and positions[0]:
            normal = _orientation(ds)[2]
            offsets = [float(o) for o in ds.GridFrameOffsetVector]
            positions = [np.asarray(positions[0], float) + o * normal for o in offsets]
            axis = "slices"
        elif not pointers & _TIME_POINTERS and _distinct(positions) == frames:
            axis = "slices"
        else:
            axis = "time"
    frame_time = float(ds.get("FrameTime", 0) or 0) or None
    return _image(path, [ds], data, positions, t_axis or axis, frame_time, [str(path)], "file")


def _read_series(folder: Path, t_axis: str | None) -> Image:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(
            "the folder holds no files; point at a folder holding one DICOM series", folder
        )
    headers = [(p, _read(p, pixels=False)) for p in files]
    series: dict[str, list[tuple[Path, Any]]] = {}
    for p, ds in headers:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    if len(series) > 1:
        listed = "; ".join(
            f"{uid or '(no UID)'}: {len(items)} file{'s' if len(items) > 1 else ''} such as "
            f"{items[0][0].name}"
            + (f" ({items[0][1].SeriesDescription})" if "SeriesDescription" in items[0][1] else "")
            for uid, items in series.items()
        )
        raise DataError(
            f"the folder holds {len(series)} DICOM series ({listed}); move each series into "
            "its own folder and read one folder at a time",
            folder,
        )
    positions = [_find(ds, "ImagePositionPatient", 0) for _, ds in headers]
    distinct = _distinct(positions)
    if distinct == len(headers) and distinct > 1:
        normal = _orientation(headers[0][1])[2]
        order = sorted(range(len(headers)), key=lambda i: float(np.dot(positions[i], normal)))
        axis = "slices"
    elif distinct <= 1:
        order = sorted(range(len(headers)), key=lambda i: _time_key(headers[i][1]))
        axis = "time" if len(headers) > 1 else "none"
    else:
        raise DataError(
            f"the series has {len(headers)} images at {distinct} positions (slices and time "
            "together); [T, C, H, W] holds one of them as T: put each slice position's images "
            "(or each time point's) into a folder of its own",
            folder,
        )
    ordered = [headers[i] for i in order]
    datasets = [_read(p) for p, _ in ordered]
    shapes = {(int(ds.get("SamplesPerPixel", 1)), int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(shapes) > 1:
        raise DataError(
            f"the series' images differ in size ({sorted(shapes)}); a series must hold images "
            "of one size",
            folder,
        )
    data = np.concatenate([_pixels(ds) for ds in datasets])
    trigger = [float(ds.get("TriggerTime", 0) or 0) for ds in datasets]
    frame_time = (trigger[-1] - trigger[0]) / (len(trigger) - 1) if len(trigger) > 1 else None
    return _image(
        folder, datasets, data, [positions[i] for i in order], t_axis or axis,
        frame_time or None, [str(p) for p, _ in ordered], "series",
    )  # fmt: skip


def _time_key(ds: Any) -> tuple[float, int]:
    return float(ds.get("TriggerTime", 0) or 0), int(ds.get("InstanceNumber", 0) or 0)


def _distinct(positions: list[Any]) -> int:
    if any(p is None for p in positions):
        return 0
    return len({tuple(round(float(v), 3) for v in p) for p in positions})


def _orientation(ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, slice normal) in LPS."""
    iop = _find(ds, "ImageOrientationPatient", 0)
    if iop is None:
        iop = [1, 0, 0, 0, 1, 0]
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    return row, col, np.cross(row, col)


def _image(
    path: Path,
    datasets: list[Any],
    data: np.ndarray,
    positions: list[Any],
    axis: str,
    frame_time: float | None,
    files: list[str],
    kind: str,
) -> Image:
    ds = datasets[0]
    row, col, normal = _orientation(ds)
    spacing = _find(ds, "PixelSpacing", 0) or [1.0, 1.0]
    dr, dc = float(spacing[0]), float(spacing[1])
    t = data.shape[0]
    if axis == "slices" and t > 1 and _distinct(positions) == t:
        step = (np.asarray(positions[-1], float) - np.asarray(positions[0], float)) / (t - 1)
        dt = float(np.linalg.norm(step))
    else:
        thickness = _find(ds, "SpacingBetweenSlices", 0) or _find(ds, "SliceThickness", 0)
        dt = float(thickness or 1.0)
        step = normal * dt
        if axis == "time":
            dt = frame_time or 1.0
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = col * dr, row * dc, step
    if positions and positions[0] is not None:
        affine[:3, 3] = np.asarray(positions[0], float)
    return Image(
        array=np.ascontiguousarray(data, dtype=np.float32),
        spacing=(dt, dr, dc),
        affine=LPS_TO_RAS @ affine,
        meta={
            "format": "dicom",
            "t_axis": axis,
            "dtype": str(ds.pixel_array.dtype),
            "shape": [t, int(ds.Rows), int(ds.Columns)],
            "dicom": kind,
            "files": files,
            "modality": str(ds.get("Modality", "")),
            "series_uid": str(ds.get("SeriesInstanceUID", "")),
        },
        path=path,
    )


# --------------------------------------------------------------------------- writing


def _as_pixels(values: np.ndarray, where: Path) -> tuple[np.ndarray, float, float]:
    """16-bit pixels and (slope, intercept) that give `values` back."""
    if np.issubdtype(values.dtype, np.integer):
        low, high = int(values.min(initial=0)), int(values.max(initial=0))
        if 0 <= low and high <= 65535:
            return values.astype(np.uint16), 1.0, 0.0
        if -32768 <= low and high <= 32767:
            return values.astype(np.int16), 1.0, 0.0
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError("the prediction holds NaN or infinite values; nothing written", where)
    low, high = float(values.min()), float(values.max())
    slope = (high - low) / 65535 if high > low else 1.0
    return np.rint((values - low) / slope).astype(np.uint16), slope, low


def _derived(source: str, pixels: np.ndarray, slope: float, intercept: float, series: str) -> Any:
    """`source`'s dataset holding `pixels` ([F, C, H, W]) as a derived image."""
    pydicom = need("pydicom")
    ds = pydicom.dcmread(source)
    for keyword in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue",
                    "LargestImagePixelValue", "DoseGridScaling", "RescaleType",
                    "VOILUTSequence", "ModalityLUTSequence", "LossyImageCompression"):  # fmt: skip
        if keyword in ds:
            delattr(ds, keyword)
    frames, channels = pixels.shape[:2]
    arr = pixels.transpose(0, 2, 3, 1)
    arr = arr[..., 0] if channels == 1 else arr
    arr = arr[0] if frames == 1 and "NumberOfFrames" not in ds else arr
    photometric = "MONOCHROME2" if channels == 1 else "RGB"
    bits = 8 * arr.dtype.itemsize
    ds.set_pixel_data(arr, photometric, bits)
    if (slope, intercept) != (1.0, 0.0) or "RescaleSlope" in ds:
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
    ds.SeriesInstanceUID = series
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SeriesDescription = f"{ds.get('SeriesDescription', '')} stcnnt prediction".strip()[:64]
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def write_dicom(like: Image, values: np.ndarray, path: Path) -> Path:
    """Write `values` ([T, C, H, W]) as a derived series of `like`'s files: one file for a
    file read, a folder of files for a series folder read."""
    pydicom = need("pydicom")
    if like.meta.get("format") != "dicom":
        raise DataError(
            "a DICOM output needs a DICOM input to take its patient and geometry from; write "
            ".nii.gz (or the input's format) instead",
            path,
        )
    channels = values.shape[1]
    if channels not in (1, 3) or (channels == 3 and values.dtype != np.uint8):
        raise DataError(
            f"DICOM holds 1 channel (or 3 of 8-bit RGB), the prediction has {channels}: write "
            "probabilities and other many-channel outputs as .nii.gz",
            path,
        )
    pixels, slope, intercept = _as_pixels(values, path) if channels == 1 else (values, 1.0, 0.0)
    series = pydicom.uid.generate_uid()
    files = like.meta["files"]
    if like.meta.get("dicom") == "series":
        if path.suffix:
            raise DataError(
                "a series read from a folder is written as a folder of files: give a name "
                "without a suffix (or .nii.gz for one NIfTI file)",
                path,
            )

        def write_folder(tmp: Path) -> None:
            for i, source in enumerate(files):
                ds = _derived(source, pixels[i : i + 1], slope, intercept, series)
                ds.save_as(tmp / Path(source).name, enforce_file_format=True)

        return atomic_folder(path, write_folder)
    ds = _derived(files[0], pixels, slope, intercept, series)
    return atomic_file(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))
