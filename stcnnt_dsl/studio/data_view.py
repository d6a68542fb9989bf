"""What the page's data view shows: the data set's fingerprint, its cases, and a case's
frames (or slices) as PNG images, rendered here with numpy and Pillow.

The data set is read with `stcnnt_dsl.data` (its messages reach the page as they are).
A case is loaded once and its rendered images are cached, so moving the T slider or
changing the window asks for an image that usually exists already. The label is its own
transparent PNG (one colour per class), laid over the image by the page, so the opacity
control costs nothing here.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import STCNNTError
from .folders import Folder

__all__ = ["DataView", "label_colours", "png_gray", "png_label"]

CACHED_CASES = 4
CACHED_IMAGES = 2048

# one colour per class value (1, 2, ...); 0 (background) stays transparent
_PALETTE = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
    ],
    dtype=np.uint8,
)


def label_colours(values: int) -> list[str]:
    """The CSS colours of label values 1..values (the page's legend)."""
    rgb = [_PALETTE[(v - 1) % len(_PALETTE)] for v in range(1, values + 1)]
    return ["#" + "".join(f"{int(x):02x}" for x in colour) for colour in rgb]


def _png(array: np.ndarray, mode: str) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(array, mode).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def png_gray(frame: np.ndarray, low: float, high: float) -> bytes:
    """A 2D float frame as an 8-bit grey PNG, `low` black and `high` white."""
    scale = 255.0 / max(float(high - low), 1e-12)
    grey = np.clip((frame.astype(np.float32) - low) * scale, 0, 255).astype(np.uint8)
    return _png(np.ascontiguousarray(grey), "L")


def png_label(label: np.ndarray) -> bytes:
    """A 2D integer label map as an RGBA PNG: class colours, background transparent."""
    values = label.astype(np.int64)
    rgba = np.zeros((*values.shape, 4), dtype=np.uint8)
    fg = values > 0
    rgba[fg, :3] = _PALETTE[(values[fg] - 1) % len(_PALETTE)]
    rgba[fg, 3] = 255
    return _png(rgba, "RGBA")


class DataView:
    """The data set under `--data`, opened once, with a small cache of loaded cases and
    rendered images. Thread-safe (the server answers requests in threads)."""

    def __init__(self, folder: Folder | None) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._dataset: Any = None
        self._error: dict | None = None
        self._cases: OrderedDict[int, tuple[np.ndarray, np.ndarray | None, dict]] = OrderedDict()
        self._images: OrderedDict[tuple, bytes] = OrderedDict()

    # ------------------------------------------------------------------ the data set

    @property
    def dataset(self) -> Any:
        """The opened data set; an `STCNNTError` (the data layer's message) otherwise."""
        with self._lock:
            if self._dataset is None and self._error is None:
                self._open()
        if self._error is not None:
            raise STCNNTError(self._error["message"])
        return self._dataset

    def _open(self) -> None:
        if self.folder is None:
            self._error = {
                "message": "no data set: start the studio with --data DIR (a folder in nnU-Net "
                "or Decathlon layout, or a plain folder of images) to look at it and train"
            }
            return
        try:
            from .. import data
        except ImportError as err:
            self._error = {
                "message": f'the data layer needs its extra ({err}): pip install "stcnnt-dsl[data]"'
            }
            return
        try:
            dataset = data.open_dataset(self.folder.root)
            for case in dataset.cases:  # a data set's own list must stay inside --data too
                for path in (*case.images, case.label):
                    if path is not None and not isinstance(path, int):
                        self.folder.inside(path)
            self.fingerprint = dataset.fingerprint()
        except STCNNTError as err:
            self._error = {"message": str(err)}
            return
        self._dataset = dataset

    def summary(self) -> dict[str, Any]:
        """The page's first look: the fingerprint and the cases, or the error."""
        try:
            dataset = self.dataset
        except STCNNTError as err:
            return {"ok": False, "error": {"message": str(err)}, "root": self._root()}
        cases = [
            {"index": i, "name": case.name, "labelled": case.label is not None}
            for i, case in enumerate(dataset.cases)
        ]
        classes = {str(k): v for k, v in getattr(dataset, "classes", {}).items()}
        return {
            "ok": True,
            "error": None,
            "root": self._root(),
            "task": dataset.task,
            "channels": list(dataset.channels),
            "classes": classes,
            "colours": label_colours(max([int(k) for k in classes if k.isdigit()] or [0])),
            "fingerprint": self.fingerprint,
            "cases": cases,
        }

    def _root(self) -> str | None:
        return None if self.folder is None else str(self.folder.given)

    # ------------------------------------------------------------------ one case

    def _case(self, index: int) -> tuple[np.ndarray, np.ndarray | None, dict]:
        dataset = self.dataset
        if not isinstance(index, int) or not 0 <= index < len(dataset.cases):
            raise STCNNTError(
                f"no case {index!r}: the data set has {len(dataset.cases)} cases "
                f"(0..{len(dataset.cases) - 1})"
            )
        with self._lock:
            if index in self._cases:
                self._cases.move_to_end(index)
                return self._cases[index]
        image, label = dataset.load(index)
        array = np.asarray(image.array, dtype=np.float32)  # [T, C, H, W]
        seg = label if isinstance(label, np.ndarray) else None
        finite = array[np.isfinite(array)]
        windows = []
        for c in range(array.shape[1]):
            channel = array[:, c][np.isfinite(array[:, c])] if finite.size else finite
            low, high = np.percentile(channel, [0.5, 99.5]) if channel.size else (0.0, 1.0)
            lo, hi = (float(channel.min()), float(channel.max())) if channel.size else (0.0, 1.0)
            windows.append({"low": float(low), "high": float(high), "min": lo, "max": hi})
        meta = {
            "index": index,
            "name": dataset.cases[index].name,
            "shape": list(array.shape),
            "spacing": [float(s) for s in image.spacing],
            "t_axis": image.meta.get("t_axis", "none") if isinstance(image.meta, dict) else "none",
            "windows": windows,
            "label": None if seg is None else "map",
            "class_index": int(label) if isinstance(label, (int, np.integer)) else None,
            "values": [] if seg is None else sorted(int(v) for v in np.unique(seg) if v > 0),
        }
        with self._lock:
            self._cases[index] = (array, seg, meta)
            while len(self._cases) > CACHED_CASES:
                self._cases.popitem(last=False)
        return array, seg, meta

    def case(self, index: int) -> dict[str, Any]:
        """A case's shape, spacing, default windows and label values."""
        return self._case(index)[2]

    def frame(
        self,
        index: int,
        t: int,
        channel: int = 0,
        low: float | None = None,
        high: float | None = None,
    ) -> bytes:
        """Frame (or slice) `t` of `channel` as a grey PNG windowed to [low, high]
        (default: the case's 0.5th-99.5th percentile)."""
        array, _, meta = self._case(index)
        t, channel = self._check(array, t, channel)
        window = meta["windows"][channel]
        low = window["low"] if low is None else float(low)
        high = window["high"] if high is None else float(high)
        key = ("image", index, t, channel, round(low, 4), round(high, 4))
        return self._cached(key, lambda: png_gray(array[t, channel], low, high))

    def label(self, index: int, t: int) -> bytes:
        """Frame (or slice) `t` of the case's label map as a transparent colour PNG."""
        array, seg, _ = self._case(index)
        if seg is None:
            raise STCNNTError(f"case {index} has no label map")
        t, _ = self._check(array, t, 0)
        return self._cached(("label", index, t), lambda: png_label(seg[t, 0]))

    @staticmethod
    def _check(array: np.ndarray, t: int, channel: int) -> tuple[int, int]:
        frames, channels = array.shape[:2]
        if not 0 <= t < frames:
            raise STCNNTError(f"no frame {t}: the case has T={frames} (0..{frames - 1})")
        if not 0 <= channel < channels:
            raise STCNNTError(f"no channel {channel}: the case has C={channels}")
        return t, channel

    def _cached(self, key: tuple, render: Any) -> bytes:
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        png = render()
        with self._lock:
            self._images[key] = png
            while len(self._images) > CACHED_IMAGES:
                self._images.popitem(last=False)
        return png
