"""The recipe a click on "Train" runs: `stcnnt_dsl.plan`'s choice for the data set, or
the spec in the editor with the plan's patch and batch (`plan(..., base=spec)`), for a
few minutes on this machine.

The plan fits patch and batch to the memory budget the user typed (default: half the
free memory) and its predicted training-step peak is the memory check before the run
starts; a spec that does not fit is refused with the plan's message. The held-out cases
are written into the recipe by name, so the predictions view shows exactly those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import STCNNTError
from . import analysis
from .runs import available_memory

__all__ = ["DEFAULT_STEPS", "Choice", "compose", "held_out_names"]

DEFAULT_STEPS = 300  # a few minutes of the plan's model on two CPU cores
_TASKS = {"segment": "segment", "classify": "classify", "unlabelled": "pretrain"}


@dataclass
class Choice:
    recipe: dict[str, Any]
    need_bytes: int
    info: dict[str, Any] = field(default_factory=dict)


def budget(memory: str | None) -> int:
    """Bytes of the memory budget the page typed (the plan's units); blank: half the
    machine's free memory."""
    from ..planner.memory import parse_memory

    if memory is None or not str(memory).strip():
        return available_memory() // 2
    return parse_memory(str(memory))


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
    """The recipe for one studio training of `dataset`: the plan's for the budget (with
    the editor's spec as its base when given), `steps` long (default: a few minutes),
    evaluated and saved about 20 times (the curve's points)."""
    from ..planner import plan

    base = None
    if spec_text is not None and spec_text.strip():
        analysis.load_text(spec_text)  # the page's text only: never read as a path
        base = yaml.safe_load(analysis.canonical(spec_text))
    # the fingerprint the data view computed once (the plan reads no file again)
    chosen = plan(fingerprint, memory=budget(memory), device="cpu", base=base)
    recipe = yaml.safe_load(yaml.safe_dump(chosen.recipe))  # a plain copy
    data = recipe.setdefault("data", {})
    data["path"] = str(dataset.root)
    data["val"] = held_out_names(dataset, data.get("val"))
    recipe["steps"] = int(steps) if steps else DEFAULT_STEPS
    every = max(2, recipe["steps"] // 20)  # about 20 points on the curve
    recipe["eval_every"] = recipe["checkpoint_every"] = every
    if isinstance(recipe.get("schedule"), dict) and "warmup" in recipe["schedule"]:
        recipe["schedule"]["warmup"] = recipe["steps"] // 20
    if init is not None:
        if adapt not in ("full", "lora", "frozen"):
            raise STCNNTError(f"adapt must be full, lora or frozen, got {adapt!r}")
        recipe["init"] = str(init)
        recipe["adapt"] = {"method": adapt}
    name = chosen.spec.name if base is not None else "plan"
    task = recipe.get("task") or _TASKS.get(fingerprint.get("task"), "segment")
    info = {
        "spec": name or "spec",
        "task": task,
        "patch": list(chosen.patch),
        "batch": chosen.batch,
    }
    return Choice(recipe, int(chosen.predicted_bytes), info)
