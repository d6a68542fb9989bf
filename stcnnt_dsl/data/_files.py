"""Atomic writes of files and folders: never a half-written output."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError

__all__ = ["atomic_file", "atomic_folder", "suffix_of"]


def suffix_of(path: Path) -> str:
    """The format suffix, lower case, with `.nii.gz` as one suffix."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _parent(path: Path) -> Path:
    if not path.parent.is_dir():
        raise DataError(f"the folder {path.parent} does not exist; create it first", path)
    return path.parent


def atomic_file(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(temporary)` with a file name in `path`'s folder ending like `path`
    (readers pick the format from the suffix), then rename it onto `path`."""
    handle, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix_of(path) or ".tmp", dir=_parent(path)
    )
    os.close(handle)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as err:
        raise DataError(f"cannot write it: {err.strerror or err}", path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_folder(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(temporary_folder)`, then rename the folder onto `path` (which must not
    hold files already)."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DataError("it already exists and is not an empty folder; remove it first", path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=_parent(path)))
    try:
        write(tmp)
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    except OSError as err:
        raise DataError(f"cannot write it: {err.strerror or err}", path) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path
