"""The package's names that need torch (or an optional extra), loaded on first use, so
that `import stcnnt_dsl` and everything that reads only the model graph (check,
infer_shapes, explain, to_dot, the studio, `stcnnt check`) start without importing torch.

The only dynamic import of the package: a closed table of literal module names, never
a name that comes from a spec or a file (tests/test_hostile.py checks that)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["NN_NAMES", "TORCH_NAMES", "load"]

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

# `stcnnt_dsl.nn.Block` reads a block string, so it is built above the layer library
# (which takes plain arguments): the nn package names it, the models layer defines it.
NN_NAMES: dict[str, str] = {"Block": "stcnnt_dsl.models.block"}


def load(package: str, name: str, namespace: dict[str, Any]) -> Any:
    """The torch-based `name` of `package` (cached in its `namespace`): a name of
    `TORCH_NAMES` defined inside `package`, or for `stcnnt_dsl.nn` one of `NN_NAMES`."""
    if package == "stcnnt_dsl.nn":
        module = NN_NAMES.get(name)
    else:
        module = TORCH_NAMES.get(name)
        module = module if module is not None and module.startswith(package) else None
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value
    return value
