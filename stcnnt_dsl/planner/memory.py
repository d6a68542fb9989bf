"""The training step's peak memory, predicted from the model graph, and memory budgets.

One AdamW training step in float32 holds, at its highest:

- the weights (4 bytes per parameter, resident before the step);
- then either the *activation phase*: what autograd keeps for backward in the forward
  (the graph's saved elements per cell, `ModelGraph.saved`) times the device's eager
  factor (the kernels' own copies: padded inputs, attention layouts, the backward's
  gradient maps of the largest stage), the gradients, and a fixed workspace;
- or the *optimizer phase*: gradients, AdamW's two moments and the foreach kernels'
  temporary (one more copy of the parameters).

`EAGER_FACTOR` and `WORKSPACE` are measured, per device, by `tools/bench_plan.py`
(see docs/plan.md for the table of predicted against measured peaks).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import STCNNTError
from ..graph.model import ModelGraph

__all__ = ["DEVICES", "MemoryEstimate", "format_bytes", "parse_memory", "step_memory"]

DEVICES = ("cuda", "cpu")
BYTES = 4  # float32 weights, gradients, moments and activations

# Bytes the eager kernels hold per byte of the graph's saved elements, and a fixed
# workspace (bytes): fitted on this library's bundled architectures with
# tools/bench_plan.py (CPU: resident-set growth of one step).
EAGER_FACTOR = {"cpu": 1.45, "cuda": 1.45}
WORKSPACE = {"cpu": 8 * 2**20, "cuda": 8 * 2**20}

_UNITS = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip
FORMS = "8GiB, 8GB, 8 GiB, 512MiB, 1.5TiB or a plain number of bytes"


def parse_memory(value: str | int | float) -> int:
    """Bytes from `8GiB`, `8GB` (10^9), `512MiB`, `8 GiB` or a number of bytes."""
    if isinstance(value, bool):
        raise STCNNTError(f"memory {value!r} is not a budget; write one like {FORMS}")
    if isinstance(value, (int, float)):
        number, unit = float(value), "B"
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s?([A-Za-z]*)\s*", str(value))
        unit = match.group(2).upper() if match else ""
        if match is None or (unit or "B") not in _UNITS:
            raise STCNNTError(
                f"memory {value!r} is not a budget: write a number and one unit, such as "
                f"{FORMS} (units: {', '.join(sorted(_UNITS, key=_UNITS.get))}; "
                "KiB/MiB/GiB are powers of 2, kB/MB/GB of 10)"
            )
        number = float(match.group(1))
        unit = unit or "B"
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise STCNNTError(f"memory {value!r} must be more than 0 bytes; write one like {FORMS}")
    return size


def format_bytes(n: float) -> str:
    """1288490188 -> '1.20 GiB'."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of one training step's peak (bytes). `step_bytes` is what the step adds
    to the resident weights; `peak_bytes` = weights + step."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    workspace: int
    phase: str  # "activations" or "optimizer": which phase holds the peak

    @property
    def step_bytes(self) -> int:
        backward = self.activations + self.gradients + self.workspace
        update = self.gradients + self.optimizer
        return max(backward, update)

    @property
    def peak_bytes(self) -> int:
        return self.weights + self.step_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "step_bytes": self.step_bytes, "peak_bytes": self.peak_bytes}


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise STCNNTError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return device


def step_memory(graph: ModelGraph, shape: Sequence[int], device: str = "cuda") -> MemoryEstimate:
    """The predicted peak of one AdamW training step of `graph` on input (B, T, C, H, W)
    (float32), from the graph alone (milliseconds)."""
    device = check_device(device)
    params = sum(graph.params().values()) * BYTES
    saved = sum(graph.saved(tuple(shape)).values()) * BYTES
    activations = int(EAGER_FACTOR[device] * saved)
    optimizer = 3 * params  # AdamW's two moments + the foreach temporary
    backward = activations + params + WORKSPACE[device]
    phase = "activations" if backward >= params + optimizer else "optimizer"
    return MemoryEstimate(params, params, optimizer, activations, WORKSPACE[device], phase)
