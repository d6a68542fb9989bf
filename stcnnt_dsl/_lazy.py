"""The package's names that need torch (or an optional extra), loaded on first use, so
that `import stcnnt_dsl` and everything that reads only the model graph (check,
infer_shapes, explain, to_dot, the studio, `stcnnt check`) start without importing torch.

The only dynamic import of the package: a closed table of literal module names, never
a name that comes from a spec or a file (tests/test_hostile.py checks that)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TORCH_NAMES", "load"]

TORCH_NAMES: dict[str, str] = {
    "Backbone": "stcnnt_dsl.models",
    "Model": "stcnnt_dsl.models",
    "build": "stcnnt_dsl.models",
    "ProfileReport": "stcnnt_dsl.tools.profile",
    "profile": "stcnnt_dsl.tools.profile",
    "load_model": "stcnnt_dsl.tools.io",
    "save_model": "stcnnt_dsl.tools.io",
    "load_weights": "stcnnt_dsl.tools.weights",
    "apply_lora": "stcnnt_dsl.tools.adapt",
    "lora_targets": "stcnnt_dsl.tools.adapt",
    "param_groups": "stcnnt_dsl.tools.adapt",
    "freeze": "stcnnt_dsl.tools.adapt",
    "export": "stcnnt_dsl.tools.export",
    "ExportResult": "stcnnt_dsl.tools.export",
    "import_reference": "stcnnt_dsl.compat.weights",
    "read_reference": "stcnnt_dsl.compat.weights",
    "train": "stcnnt_dsl.train",  # the [train] extra: MONAI, PEFT, tqdm
    "create_app": "stcnnt_dsl.studio.app",  # FastAPI: the [studio] extra
}


def load(package: str, name: str, namespace: dict[str, Any]) -> Any:
    """The torch-based `name` of `package` (cached in its `namespace`)."""
    module = TORCH_NAMES.get(name)
    if module is None or not module.startswith(package):
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value
    return value
