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

import yaml

from ..errors import STCNNTError
from . import analysis
from .runs import available_memory

__all__ = ["DEFAULT_STEPS", "Choice", "compose"]

DEFAULT_STEPS = 300  # a few minutes of a small model on two CPU cores
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
    """The recipe for one studio training of `dataset`."""
    from .. import plan as plan_function

    budget = _budget(memory)
    plan = plan_function(dataset, memory=budget, device="cpu")
    recipe = yaml.safe_load(plan.recipe) if isinstance(plan.recipe, str) else dict(plan.recipe)
    recipe.setdefault("data", {})
    recipe["data"]["path"] = str(dataset.root)
    recipe["steps"] = (
        int(steps) if steps else min(int(recipe.get("steps", DEFAULT_STEPS)), DEFAULT_STEPS)
    )
    every = max(1, recipe["steps"] // 20)
    recipe["eval_every"] = every
    recipe["checkpoint_every"] = every
    need = int(plan.predicted_bytes)
    spec_name = "plan"
    if spec_text is not None and spec_text.strip():
        source = analysis.load_text(spec_text)  # never a path: the page's text only
        spec = yaml.safe_load(analysis.canonical(spec_text))
        if "heads" not in spec and "heads" in recipe:
            spec["heads"] = recipe["heads"]
        recipe["model"] = spec
        recipe.pop("heads", None) if "heads" in spec else None
        channels = len(fingerprint.get("channels") or [1])
        need = _training_bytes(source.spec, list(plan.patch), int(plan.batch), channels)
        spec_name = source.spec.name
        if need > budget:
            raise STCNNTError(
                f"the spec {spec_name!r} needs about {need / 2**30:.2f} GiB to train at patch "
                f"{list(plan.patch)} and batch {plan.batch}, over the memory budget of "
                f"{budget / 2**30:.2f} GiB; make it smaller, or raise the budget"
            )
    if init is not None:
        recipe["init"] = str(init)
        if adapt not in ("full", "lora", "frozen"):
            raise STCNNTError(f"adapt must be full, lora or frozen, got {adapt!r}")
        recipe["adapt"] = {"method": adapt}
    task = recipe.get("task") or _TASKS.get(fingerprint.get("task"), "segment")
    info = {"spec": spec_name, "task": task, "patch": list(plan.patch), "batch": plan.batch}
    return Choice(recipe, need, info)
