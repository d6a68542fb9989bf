"""One imaging file (or DICOM series) as a float32 `[T, C, H, W]` array with its geometry.

The readers are nibabel (NIfTI), pydicom (DICOM, in `dicom.py`), Pillow (PNG, JPEG),
tifffile (TIFF) and numpy (`.npy`); what is written here is only the mapping of each
format's axes to `[T, C, H, W]` and back (docs/data.md has the table):

- NIfTI `(i, j, k)`: H = i, W = j, T = k (slices), as MONAI's `BCHWD` keeps them;
  4D `(i, j, k, t)`: T = t (time) when k = 1, else T = k and the volumes are channels
  (as nnU-Net and MONAI read a 4D NIfTI); 5D `(i, j, k, t, c)`: c are the channels.
- DICOM: rows = H, columns = W; the frames of a multi-frame file or the files of a
  series are T, ordered by position (slices) or by time (cine).
- PNG / JPEG: T = 1; TIFF: the pages (`Z`, `T`, `Q`, `I` axes) are T.
- `.npy`: `[H, W]`, `[T, H, W]` or `[T, C, H, W]`.

`Image.affine` maps a voxel index `(h, w, t)` to world millimetres in RAS (NIfTI's and
MONAI's convention; DICOM's LPS is turned into RAS as nibabel and MONAI do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ._deps import need
from ._files import atomic_file, suffix_of
from ._image import Image, reader_failed
from .dicom import read_dicom, write_dicom

__all__ = ["FORMATS", "Image", "format_of", "read_image", "write_image"]

T_AXES = ("time", "slices", "none")
FORMATS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".png": "png",
    ".jpg": "png",
    ".jpeg": "png",
    ".bmp": "png",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
}


def format_of(path: Path) -> str:
    """The format name of a path: its suffix, or `dicom` for a folder or a file whose
    bytes say DICOM."""
    if path.is_dir():
        return "dicom"
    fmt = FORMATS.get(suffix_of(path))
    if fmt is None and path.is_file() and _is_dicom(path):
        return "dicom"
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        raise DataError(
            f"cannot tell the image format from the name; use one of {known}, a DICOM file "
            "or a folder holding one DICOM series",
            path,
        )
    return fmt


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(132)
    return head[128:132] == b"DICM"


def read_image(path: str | Path, *, t_axis: str | None = None) -> Image:
    """Read a NIfTI, DICOM (file, multi-frame file or series folder), PNG / JPEG, TIFF or
    `.npy` file as float32 `[T, C, H, W]` with its geometry.

    `t_axis` says what T holds when the file does not ("time" or "slices"), or picks it
    for a 4D NIfTI ("time": the 4th axis, needs one slice; "slices": the 3rd axis, the
    volumes as channels); by default each format's rule in the module docstring.
    """
    path = Path(path)
    if t_axis is not None and t_axis not in T_AXES:
        raise DataError(f"t_axis must be one of {', '.join(T_AXES)} or None, got {t_axis!r}")
    if not path.exists():
        raise DataError("no such file or folder", path)
    fmt = format_of(path)
    if fmt == "dicom":
        image = read_dicom(path, t_axis)
    else:
        image = _READERS[fmt](path, t_axis)
    _check_frames(image, t_axis)
    return image


def _check_frames(image: Image, t_axis: str | None) -> None:
    if t_axis == "none" and image.array.shape[0] > 1:
        raise DataError(
            f"t_axis='none' but the file holds {image.array.shape[0]} frames or slices; "
            "read it with t_axis='time' or 'slices'",
            image.path,
        )


def _float32(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(data, dtype=np.float32)


# --------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path, t_axis: str | None) -> Image:
    nib = need("nibabel")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # the library's reasons vary: header, gzip, size
        raise reader_failed(path, "NIfTI", err) from None
    stored = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    zooms = [float(z) for z in img.header.get_zooms()] + [1.0] * 5
    zi, zj, zk, zt = zooms[:4]
    if data.ndim == 2:
        layout, array, spacing, axis = "2d", data[None, None], 1.0, "none"
    elif data.ndim == 3:
        layout, array, spacing = "3d", data.transpose(2, 0, 1)[:, None], zk
        axis = t_axis or "slices"
    elif data.ndim == 4 and data.shape[2] == 1 and t_axis in (None, "time"):
        layout, array, spacing = "4d-time", data[:, :, 0].transpose(2, 0, 1)[:, None], zt
        axis = "time"
    elif data.ndim == 4 and t_axis != "time":
        layout, array, spacing, axis = "4d-channels", data.transpose(2, 3, 0, 1), zk, "slices"
    elif data.ndim == 5 and data.shape[2] == 1:
        layout, array, spacing = "5d-time", data[:, :, 0].transpose(2, 3, 0, 1), zt
        axis = "time"
    elif data.ndim == 5 and data.shape[3] == 1 and t_axis != "time":
        layout, array, spacing = "5d-channels", data[:, :, :, 0].transpose(2, 3, 0, 1), zk
        axis = "slices"
    else:
        raise DataError(
            f"a NIfTI of shape {stored} holds {data.shape[2]} slices and {data.shape[3]} time "
            "points, but [T, C, H, W] holds one of them as T; read it with "
            "t_axis='slices' (the time points become channels) or split it into one file "
            "per slice",
            path,
        )
    return Image(
        array=_float32(array),
        spacing=(spacing, zi, zj),
        affine=np.asarray(img.affine, dtype=np.float64),
        meta={
            "format": "nifti",
            "t_axis": axis,
            "dtype": str(img.get_data_dtype()),
            "shape": list(stored),
            "layout": layout,
            "header": img.header.copy(),
        },
        path=path,
    )


def _write_nifti(like: Image, array: np.ndarray, path: Path) -> None:
    nib = need("nibabel")
    c = array.shape[1]
    layout = like.meta.get("layout", "3d") if like.meta.get("format") == "nifti" else None
    if layout is None:
        layout = "4d-time" if like.meta.get("t_axis") == "time" else "3d"
    if layout == "4d-channels":
        data = array.transpose(2, 3, 0, 1)
    elif layout in ("4d-time", "5d-time"):
        data = array.transpose(2, 3, 0, 1)[:, :, None]  # (H, W, 1, T, C)
        data = data[..., 0] if c == 1 else data
    else:  # 2d, 3d, 5d-channels: slices on the third axis, channels (if any) fifth
        data = array.transpose(2, 3, 0, 1)[:, :, :, None]  # (H, W, T, 1, C)
        data = data[:, :, :, 0, 0] if c == 1 else data
        if layout == "2d" and c == 1:
            data = data[:, :, 0]
    header = like.meta.get("header") if like.meta.get("format") == "nifti" else None
    header = header.copy() if header is not None else nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(None, None)
    img = nib.Nifti1Image(data, like.affine, header=header)
    zooms = list(img.header.get_zooms())
    if len(zooms) >= 3 and like.meta.get("format") != "nifti":
        zooms[:3] = [like.spacing[1], like.spacing[2], like.spacing[0]]
        img.header.set_zooms(zooms)
    img.set_qform(like.affine, code=int(header["qform_code"]) or 1)
    img.set_sform(like.affine, code=int(header["sform_code"]) or 1)
    nib.save(img, str(path))


# --------------------------------------------------------------------------- PNG / JPEG

_GREY = {"1", "L", "I", "I;16", "I;16B", "I;16L", "F"}


def _read_pil(path: Path, t_axis: str | None) -> Image:
    pil = need("PIL.Image")
    try:
        with pil.open(path) as img:
            mode = img.mode
            if mode not in _GREY:
                img = img.convert("L" if mode == "LA" else "RGB")
            data = np.asarray(img)
    except Exception as err:
        raise reader_failed(path, "an image (Pillow)", err) from None
    array = data[None, None] if data.ndim == 2 else data.transpose(2, 0, 1)[None]
    return Image(
        array=_float32(array),
        meta={"format": "png", "t_axis": "none", "dtype": str(data.dtype),
              "shape": list(data.shape), "mode": mode},
        path=path,
    )  # fmt: skip


def _write_png(like: Image, array: np.ndarray, path: Path) -> None:
    pil = need("PIL.Image")
    t, c = array.shape[:2]
    if t != 1 or c not in (1, 3):
        raise DataError(
            f"PNG holds one 2D image with 1 or 3 channels, not T={t}, C={c}; write it as "
            ".tif, .nii.gz or .npy",
            path,
        )
    data = array[0, 0] if c == 1 else array[0].transpose(1, 2, 0)
    if data.dtype not in (np.uint8, np.uint16):
        data = data.astype(np.uint8 if data.max(initial=0) < 256 else np.uint16)
    if c == 3 and data.dtype != np.uint8:
        raise DataError("an RGB PNG holds 8-bit values; write it as .tif or .npy", path)
    pil.fromarray(data).save(path, format="PNG")


# --------------------------------------------------------------------------- TIFF

_FRAME_AXES = {"T": "time", "Z": "slices", "Q": "slices", "I": "slices"}


def _read_tiff(path: Path, t_axis: str | None) -> Image:
    tifffile = need("tifffile")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data, axes = series.asarray(), series.axes
    except Exception as err:
        raise reader_failed(path, "TIFF", err) from None
    keep = [i for i, a in enumerate(axes) if data.shape[i] > 1 or a in "YX"]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    frames = [a for a in axes if a not in "YXCS"]
    channels = [a for a in axes if a in "CS"]
    if len(frames) > 1 or len(channels) > 1 or set(axes) - set("YXCS" + "".join(_FRAME_AXES)):
        raise DataError(
            f"a TIFF with axes {axes!r} (shape {data.shape}) has more than one frame or channel "
            "axis; [T, C, H, W] holds one of each: save one stack per file",
            path,
        )
    order = [axes.index(a) for a in (*frames, *channels, "Y", "X")]
    data = data.transpose(order)
    if not frames:
        data = data[None]
    if not channels:
        data = data[:, None]
    axis = t_axis or (_FRAME_AXES[frames[0]] if frames else "none")
    return Image(
        array=_float32(data),
        meta={"format": "tiff", "t_axis": axis, "dtype": str(series.dtype),
              "shape": list(series.shape), "axes": series.axes},
        path=path,
    )  # fmt: skip


def _write_tiff(like: Image, array: np.ndarray, path: Path) -> None:
    tifffile = need("tifffile")
    frame = "T" if like.meta.get("t_axis") == "time" else "Z"
    tifffile.imwrite(path, array, metadata={"axes": f"{frame}CYX"}, photometric="minisblack")


# --------------------------------------------------------------------------- numpy


def _read_npy(path: Path, t_axis: str | None) -> Image:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:
        raise reader_failed(path, "a .npy array", err) from None
    if data.ndim not in (2, 3, 4) or not np.issubdtype(data.dtype, np.number):
        raise DataError(
            f"a .npy image must be a numeric [H, W], [T, H, W] or [T, C, H, W] array, got "
            f"shape {data.shape} of {data.dtype}",
            path,
        )
    array = data[None, None] if data.ndim == 2 else data[:, None] if data.ndim == 3 else data
    axis = t_axis or ("slices" if array.shape[0] > 1 else "none")
    return Image(
        array=_float32(array),
        meta={"format": "npy", "t_axis": axis, "dtype": str(data.dtype), "shape": list(data.shape)},
        path=path,
    )


def _write_npy(like: Image, array: np.ndarray, path: Path) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


_READERS = {"nifti": _read_nifti, "png": _read_pil, "tiff": _read_tiff, "npy": _read_npy}
_WRITERS = {"nifti": _write_nifti, "png": _write_png, "tiff": _write_tiff, "npy": _write_npy}


# --------------------------------------------------------------------------- writing


def stored_values(array: np.ndarray, like: Image, keep_float: bool = False) -> np.ndarray:
    """`array` in a dtype the file can hold: integers (label maps) as the smallest
    integer type that holds them; floats rounded into the input's integer type when it
    had one (an enhanced uint16 image stays uint16), else (or with `keep_float`: e.g.
    probabilities) float32."""
    if keep_float:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.bool_):
        array = array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min(initial=0)), int(array.max(initial=0))
        for dtype in (np.uint8, np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return array.astype(dtype)
        return array.astype(np.int64)
    stored = np.dtype(like.meta.get("dtype", "float32"))
    if np.issubdtype(stored, np.integer) and like.meta.get("format") != "nifti":
        info = np.iinfo(stored)
        return np.clip(np.rint(array), info.min, info.max).astype(stored)
    return array.astype(np.float32)


def write_image(like: Image, array: Any, path: str | Path, *, keep_float: bool = False) -> Path:
    """Write `array` (`[T, C, H, W]`, or `[T, H, W]` for one channel) with the geometry of
    `like`, in the format of `path`'s suffix (for a DICOM series read from a folder,
    `path` is a new folder). The write is atomic: a failure leaves no file behind.

    NIfTI keeps `like`'s affine and header; DICOM writes a derived series from `like`'s
    own files (new UIDs, same positions and spacing); PNG holds one 2D image; TIFF and
    `.npy` keep the array as is. Float arrays are rounded into the input's integer type
    when it had one (an enhanced image), unless `keep_float` (probabilities).
    """
    path = Path(path)
    array = np.asarray(array.detach().cpu() if hasattr(array, "detach") else array)
    if array.ndim == 3:
        array = array[:, None]
    t, _, h, w = like.array.shape
    if array.ndim != 4 or (array.shape[0], array.shape[2], array.shape[3]) != (t, h, w):
        raise DataError(
            f"cannot write an array of shape {tuple(array.shape)} with the geometry of an image "
            f"of [T, C, H, W] = {tuple(like.array.shape)}: T, H and W must match (crop the "
            "prediction back to the input's size)",
            path,
        )
    fmt = "dicom" if path.suffix == "" and like.meta.get("format") == "dicom" else None
    fmt = fmt or FORMATS.get(suffix_of(path))
    if fmt is None:
        raise DataError(f"unknown output format; end the name in one of {', '.join(FORMATS)}", path)
    values = stored_values(array, like, keep_float)
    if fmt == "dicom":
        return write_dicom(like, values, path)
    return atomic_file(path, lambda tmp: _WRITERS[fmt](like, values, tmp))
