"""The training step's peak memory, predicted from the model graph, and memory budgets.

One AdamW training step in float32 holds, besides the resident weights, at its highest
one of:

- the *forward*: the saved elements of the nodes run so far (`ModelGraph.saved`: what
  autograd keeps for backward), the node outputs still to be read (skips), and the
  working memory of the node running (`ModelGraph.workspace`);
- the *backward*, walked in reverse execution order: the saved elements not yet freed
  (autograd frees a node's after its backward), the outputs and their gradient, the
  gradients waiting for their producer (skips), the parameter gradients so far, and the
  working memory of the node running; the loss's backward first (the output's gradient
  and two temporaries of the output's size: a squared error's power and product);
- the *optimizer*: the gradients, AdamW's two moments and its temporary (CPU: one
  parameter at a time, so the largest parameter; CUDA's foreach kernels: all of them).

Nothing here is fitted: each term is a tensor the layers' code allocates, counted from
the graph (docs/plan.md compares it with measured peaks; tests/test_saved.py checks
the saved and working elements against autograd and the allocator).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import STCNNTError
from ..graph.model import ModelGraph
from ..graph.nodes import Node
from ..machine import SDPA_MIN_TOKENS_CPU, agreed_cached_choice, tuning_configured

__all__ = [
    "DEVICES",
    "HEADROOM",
    "MemoryEstimate",
    "attention_threshold",
    "parse_memory",
    "step_memory",
    "within",
]

DEVICES = ("cuda", "cpu")
BYTES = 4  # float32 weights, gradients, moments and activations

# Plans keep the predicted peak within this fraction of the budget: the prediction's
# error, measured (docs/plan.md).
HEADROOM = 0.9

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
                f"{FORMS} (units: B, kB, KiB, MB, MiB, GB, GiB, TB, TiB; "
                "KiB/MiB/GiB are powers of 2, kB/MB/GB of 10)"
            )
        number = float(match.group(1))
        unit = unit or "B"
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise STCNNTError(f"memory {value!r} must be more than 0 bytes; write one like {FORMS}")
    return size


def within(peak: int, budget: int) -> bool:
    """Whether a predicted peak fits a budget, with the headroom (`HEADROOM`)."""
    return peak <= HEADROOM * budget


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of one training step's peak (bytes). `activations` and `workspace`:
    at the forward's or the backward's highest, what is kept (saved elements, outputs,
    gradients so far) and the running node's working memory; `step_bytes` is what the
    step adds to the resident weights; `peak_bytes` = weights + step."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    workspace: int
    phase: str  # "forward", "backward" or "optimizer": which phase holds the peak

    @property
    def step_bytes(self) -> int:
        return max(self.activations + self.workspace, self.gradients + self.optimizer)

    @property
    def peak_bytes(self) -> int:
        return self.weights + self.step_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "step_bytes": self.step_bytes, "peak_bytes": self.peak_bytes}


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise STCNNTError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return device


@dataclass(frozen=True)
class _Step:
    """One module path of a node (a cell, a resampler, a head) in execution order."""

    node: Node
    saved: int
    forward: int
    backward: int
    params: int


def attention_threshold(device: str) -> int:
    """From how many tokens attention runs fused SDPA, which keeps no S x S scores, on
    `device`: always on CUDA (0: `nn.functional.attend`), on CPU from this machine's
    choice (`nn.tuning.choices()`: the rule's 32, `stcnnt tune`'s or STCNNT_TUNING's)."""
    if check_device(device) == "cuda":
        return 0
    if "stcnnt_dsl.nn.tuning" not in sys.modules:  # known without importing torch?
        if not tuning_configured():
            return SDPA_MIN_TOKENS_CPU  # the rules' choice
        agreed = agreed_cached_choice("sdpa_min_tokens")  # every thread count's the same
        if isinstance(agreed, int) and not isinstance(agreed, bool) and agreed >= 0:
            return agreed
    from ..nn.tuning import choices  # imports torch (the cache's key names its threads)

    return choices("cpu").sdpa_min_tokens


def _steps(graph: ModelGraph, shape: Sequence[int], sdpa_min_tokens: int) -> list[_Step]:
    b, t, _, h, w = shape
    params = graph.params()
    steps: list[_Step] = []
    for node in graph.all_nodes:
        saved = node.saved(b * t, t, h, w)
        work = node.workspace(b * t, t, h, w, sdpa_min_tokens)
        paths = {graph._path(node, part): part for part in dict.fromkeys([*saved, *work])}
        for path, part in paths.items():
            own = sum(v for k, v in params.items() if _owner(k, paths) == path)
            steps.append(_Step(node, saved.get(part, 0), *work.get(part, (0, 0)), own))
    return steps


def _owner(param: str, paths: Mapping[str, str]) -> str | None:
    """The step path that owns parameter path `param` (the longest prefix)."""
    best = None
    for path in paths:
        if (param == path or param.startswith(path + ".")) and len(path) > len(best or ""):
            best = path
    return best


def _elements(shape: Sequence[int]) -> int:
    return math.prod(shape)


def activation_peak(
    graph: ModelGraph, shape: Sequence[int], sdpa_min_tokens: int
) -> tuple[int, int, str]:
    """The highest element count of a training forward and backward (parameter
    gradients included, weights not) as (kept, working), and its phase ("forward" or
    "backward"), with attention fused from `sdpa_min_tokens` tokens."""
    shapes = graph.shapes(tuple(shape))
    outputs = [h.name for h in graph.heads] or [graph.output]
    out = {name: _elements(s) for name, s in shapes.items()}
    nodes = graph.all_nodes
    last_use = {}
    for i, node in enumerate(nodes):
        for name in node.inputs:
            last_use[name] = i
    steps = _steps(graph, shape, sdpa_min_tokens)
    by_node: dict[str, list[_Step]] = {}
    for step in steps:
        by_node.setdefault(step.node.name, []).append(step)
    # forward: saved so far + outputs still to be read + the running node's work
    live = 0
    forward = (0, 0)
    held: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for step in by_node.get(node.name, []):
            forward = max(forward, (live + sum(held.values()), step.forward), key=sum)
            live += step.saved
        held[node.name] = out[node.name]
        for name in node.inputs:
            if last_use.get(name) == i and name not in outputs:
                held.pop(name, None)
    kept = sum(out[name] for name in outputs)  # the outputs, read by the loss
    # backward: the loss's (the outputs' gradient and two temporaries), then node by node
    pending = {name: out[name] for name in outputs}
    backward = (live + kept + kept, 2 * kept)
    grads = 0
    for node in reversed(nodes):
        grad = pending.pop(node.name, 0)
        for step in reversed(by_node.get(node.name, [])):
            held_now = live + kept + grads + sum(pending.values()) + grad
            backward = max(backward, (held_now, step.backward), key=sum)
            live -= step.saved
            grads += step.params
        for name in node.inputs:
            if name in out:
                pending[name] = out[name]
    forward = (forward[0] + kept, forward[1])
    if sum(forward) > sum(backward):
        return (*forward, "forward")
    return (*backward, "backward")


def step_memory(
    graph: ModelGraph,
    shape: Sequence[int],
    device: str = "cuda",
    *,
    sdpa_min_tokens: int | None = None,
) -> MemoryEstimate:
    """The predicted peak of one AdamW training step of `graph` on input (B, T, C, H, W)
    (float32), from the graph alone (milliseconds). `sdpa_min_tokens`: from how many
    tokens attention runs fused SDPA (default: the device's, `attention_threshold`)."""
    device = check_device(device)
    if sdpa_min_tokens is None:
        sdpa_min_tokens = attention_threshold(device)
    params = graph.params()
    total = sum(params.values()) * BYTES
    # AdamW's two moments and its temporary: CPU runs it one parameter at a time
    # (torch's default there), CUDA's foreach kernels over all parameters at once
    temporary = total if device == "cuda" else max(params.values(), default=0) * BYTES
    kept, working, phase = activation_peak(graph, shape, sdpa_min_tokens)
    optimizer = 2 * total + temporary
    if total + optimizer > (kept + working) * BYTES:
        phase = "optimizer"
    return MemoryEstimate(total, total, optimizer, kept * BYTES, working * BYTES, phase)
