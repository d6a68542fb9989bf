"""The recipe a click on "Train" runs: the plan's choice for the data set, or the spec
in the editor, for a few minutes on this machine.

With no spec, `stcnnt_dsl.plan` chooses the architecture, patch and batch for the memory
budget the user typed (default: half the free memory) and its predicted bytes are the
memory check. With the editor's spec, the plan's patch and batch are kept and the
library's own estimate (`graph.guard.estimate`, training weights, gradients, Adam's two
moments and saved activations) is the check; a spec over the budget is refused with the
numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import STCNNTError
from . import analysis
from .runs import available_memory

__all__ = ["DEFAULT_STEPS", "Choice", "compose"]

DEFAULT_STEPS = 300  # a few minutes of a small model on two CPU cores
DEFAULT_MODEL = "unet(channels=[8, 16], blocks=T1L1G1, window=4, patch=2)"
_TASKS = {"segment": "segment", "classify": "classify", "unlabelled": "pretrain"}


@dataclass
class Choice:
    recipe: dict[str, Any]
    need_bytes: int | None
    info: dict[str, Any] = field(default_factory=dict)


def _budget(memory: str | None) -> int:
    if memory is None or not str(memory).strip():
        return available_memory() // 2
    from ..graph.guard import _UNITS

    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", str(memory).strip().lower())
    if match is None or match.group(2) not in _UNITS or not float(match.group(1)) > 0:
        raise STCNNTError(
            f"memory budget {memory!r} is not an amount of memory; write it like 4GiB or 512MiB"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _training_bytes(spec: Any, patch: list[int], batch: int, channels: int) -> int:
    from ..graph.guard import estimate

    shape = (batch, patch[0], channels, patch[1], patch[2])
    cost = estimate(spec, shape)
    return cost.memory_bytes + 3 * cost.param_bytes  # + gradients and Adam's two moments


def held_out_names(dataset: Any, val: Any = None) -> list[str]:
    """The held-out cases by name (the page predicts exactly these): the recipe's list,
    else a fraction (default 0.2, at least one case) chosen with a fixed seed."""
    names = [case.name for case in dataset.cases]
    if isinstance(val, list):
        return [str(v) for v in val]
    fraction = float(val) if isinstance(val, float) else 0.2
    count = int(val) if isinstance(val, int) else round(fraction * len(names))
    count = min(max(count, 1), max(len(names) - 1, 1))
    order = np.random.default_rng(0).permutation(len(names))
    return [names[i] for i in sorted(order[:count])]


def _default(dataset: Any, fingerprint: dict) -> tuple[dict[str, Any], str]:
    """A small recipe for the data set when the plan is not installed: the default
    model at the data's median size (at most 8 x 64 x 64, multiples of 16)."""
    median = (fingerprint.get("shape") or {}).get("median") or [1, 64, 64]
    t = max(1, min(int(median[0]), 8))
    h, w = (max(16, min(int(v), 64)) // 16 * 16 for v in median[1:3])
    task = _TASKS.get(fingerprint.get("task") or dataset.task, "segment")
    recipe = {
        "model": DEFAULT_MODEL,
        "task": task,
        "data": {"path": str(dataset.root), "patch": [t, h, w], "batch": 4, "val": 0.2},
        "steps": DEFAULT_STEPS,
        "optimizer": {"name": "adamw", "lr": 0.003},
    }
    if task == "pretrain":
        recipe["objective"] = "denoise"
    return recipe, "default (no plan installed)"


def compose(
    dataset: Any,
    fingerprint: dict,
    *,
    spec_text: str | None,
    memory: str | None,
    steps: int | None,
    init: Path | None = None,
    adapt: str = "full",
) -> Choice:
    """The recipe for one studio training of `dataset`: the plan's (or, without the plan,
    a small default), with the editor's spec when given, for `steps` (default: a few
    minutes), refused when it needs more than the memory budget."""
    budget = _budget(memory)
    try:
        from .. import plan as plan_function
    except ImportError:
        plan_function = None
    channels = len(fingerprint.get("channels") or [1])
    if plan_function is not None:
        plan = plan_function(dataset, memory=budget, device="cpu")
        recipe = yaml.safe_load(plan.recipe) if isinstance(plan.recipe, str) else dict(plan.recipe)
        need: int | None = int(plan.predicted_bytes)
        spec_name = "plan"
    else:
        recipe, spec_name = _default(dataset, fingerprint)
        need = None
    recipe.setdefault("data", {})["path"] = str(dataset.root)
    recipe["data"]["val"] = held_out_names(dataset, recipe["data"].get("val"))
    patch, batch = list(recipe["data"]["patch"]), int(recipe["data"]["batch"])
    recipe["steps"] = (
        int(steps) if steps else min(int(recipe.get("steps") or 0) or DEFAULT_STEPS, DEFAULT_STEPS)
    )
    every = max(2, recipe["steps"] // 20)  # about 20 points on the curve
    recipe["eval_every"] = every
    recipe["checkpoint_every"] = every
    if spec_text is not None and spec_text.strip():
        source = analysis.load_text(spec_text)  # never a path: the page's text only
        recipe["model"] = yaml.safe_load(analysis.canonical(spec_text))
        if "heads" in recipe["model"]:
            recipe.pop("heads", None)
        spec_name = source.spec.name
        need = None
    if need is None:
        model = recipe["model"]
        need = _training_bytes(model, patch, batch, channels)
    if need > budget:
        raise STCNNTError(
            f"the model ({spec_name}) needs about {need / 2**30:.2f} GiB to train at patch "
            f"{patch} and batch {batch}, over the memory budget of {budget / 2**30:.2f} GiB; "
            "make the spec smaller, or raise the budget"
        )
    if init is not None:
        if adapt not in ("full", "lora", "frozen"):
            raise STCNNTError(f"adapt must be full, lora or frozen, got {adapt!r}")
        recipe["init"] = str(init)
        recipe["adapt"] = {"method": adapt}
    task = recipe.get("task") or _TASKS.get(fingerprint.get("task"), "segment")
    info = {"spec": spec_name, "task": task, "patch": patch, "batch": batch}
    return Choice(recipe, need, info)
