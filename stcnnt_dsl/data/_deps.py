"""The data extra's libraries, imported on first use with one clear error when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import DataError

_PACKAGES = {
    "nibabel": "nibabel",
    "pydicom": "pydicom",
    "PIL": "pillow",
    "tifffile": "tifffile",
    "monai": "monai",
    "tqdm": "tqdm",
    "scipy": "scipy",
}


def need(module: str) -> ModuleType:
    """Import `module` (a library of the `[data]` extra) or raise a `DataError` saying
    how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = _PACKAGES.get(module.split(".")[0], module)
        raise DataError(
            f"reading and writing imaging data needs {package}, which is not installed; "
            'install the data extra: pip install "stcnnt-dsl[data]"'
        ) from None
