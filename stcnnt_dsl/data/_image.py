"""The `Image` record and the reader error every format shares (image.py reads and writes
the formats, dicom.py the DICOM ones; both build these)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError


@dataclass(frozen=True, eq=False)
class Image:
    """An image as the models see it, with what is needed to write a result back.

    `array` float32 `[T, C, H, W]`; `spacing` `(t, h, w)` in mm (t: slice spacing, or the
    frame interval in the file's unit for time; 1.0 when the file does not say);
    `affine` 4x4 float64, voxel `(h, w, t)` -> world (RAS mm); `meta`: `format`,
    `t_axis` ("time" | "slices" | "none"), `dtype` and `shape` as stored, and what the
    writer of that format needs; `path` the file or folder read.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """`(T, C, H, W)`."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> Image:
        """The same geometry holding another array (a prediction)."""
        return replace(self, array=array)


def reader_failed(path: Path, what: str, err: Exception) -> DataError:
    """The error for a file its library cannot read (unreadable, truncated, not that
    format): names the file, the library's reason and the fix."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DataError(
        f"cannot read it as {what} ({reason}); the file may be truncated or not {what}: "
        "check it opens in a viewer, or export it again",
        path,
    )
