"""Compatibility with the reference implementation of ST-CNNT (Imaging-and-AI/FMImaging).

- `reference_spec(config)`: a reference configuration (its parser's keys) as an
  `ArchSpec` of this library;
- `import_reference(weights, config=None)`: a compiled `Backbone` carrying a reference
  checkpoint's weights, with the same outputs (in our layout [B, T, C, H, W]);
- `read_reference(path)`: the state_dict and stored configuration of a safetensors file.

See docs/compat.md for the key-by-key mapping and what is not supported.
"""

from typing import Any

from .._lazy import load
from .config import REFERENCE_DEFAULTS, reference_spec


def __getattr__(name: str) -> Any:
    return load(__name__, name, globals())  # import_reference, read_reference need torch


__all__ = ["REFERENCE_DEFAULTS", "import_reference", "read_reference", "reference_spec"]
