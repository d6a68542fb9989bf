"""Fitting patch and batch to a memory budget with the predicted training-step peak.

`fit_spec` answers for one architecture: does (B, T, C, H, W) fit, what is the largest
batch at that patch and the largest patch (same T, same aspect) at that batch; the
studio calls it through `plan_for_spec`. `shrink` walks a patch down along the rules'
axis order until a batch of `min_batch` fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import STCNNTError
from ..graph.build import build_graph
from ..graph.model import ModelGraph, parse_shape
from ..units import human_bytes
from .memory import (
    MemoryEstimate,
    check_device,
    parse_memory,
    step_memory,
    within,
)
from .rules import ANISOTROPY

__all__ = ["SpecFit", "largest_batch", "plan_for_spec", "shrink_axis"]

MAX_BATCH = 1024
MAX_SIDE = 4096  # the largest patch side `plan_for_spec` looks at


def _fits(graph: ModelGraph, shape: Sequence[int], budget: int, device: str) -> bool:
    return within(step_memory(graph, shape, device).peak_bytes, budget)


def largest_batch(graph: ModelGraph, patch: Sequence[int], budget: int, device: str,
                  cap: int = MAX_BATCH) -> int:  # fmt: skip
    """The largest B <= cap whose step fits `budget` (0: not even one sample). The peak
    grows with B, so a binary search over B."""
    t, h, w = patch
    shape = lambda b: (b, t, graph.in_channels, h, w)  # noqa: E731
    if not _fits(graph, shape(1), budget, device):
        return 0
    lo, hi = 1, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _fits(graph, shape(mid), budget, device) else (lo, mid - 1)
    return lo


def shrink_axis(patch: Sequence[int], spacing: Sequence[float], steps: Sequence[int],
                floor: Sequence[int]) -> int | None:  # fmt: skip
    """Which axis of [T, H, W] to shrink next (None: none can): the largest extent in
    mm, where an anisotropic axis (spacing > ANISOTROPY x the finest) counts only once
    the others are at their floor (it keeps its resolution longest)."""
    finest = min(spacing)
    open_axes = [i for i in range(3) if patch[i] - steps[i] >= floor[i]]
    if not open_axes:
        return None
    fine = [i for i in open_axes if spacing[i] <= ANISOTROPY * finest]
    pool = fine or open_axes
    return max(pool, key=lambda i: (patch[i] * spacing[i], i))


@dataclass
class SpecFit:
    """One architecture against a budget. `fits`: the given input's step fits (with
    the headroom, `memory.HEADROOM`);
    `largest_batch` at the given patch (0: not even one sample); `largest_patch`
    [T, H, W] at the given batch (same T, H and W scaled together on the size rule;
    None if none fits); `memory` the prediction's parts for the given input."""

    shape: tuple[int, int, int, int, int]
    budget: int
    device: str
    predicted_bytes: int
    fits: bool
    largest_batch: int
    largest_patch: list[int] | None
    memory: MemoryEstimate
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape), "budget": self.budget, "device": self.device,
            "predicted_bytes": self.predicted_bytes, "fits": self.fits,
            "largest_batch": self.largest_batch, "largest_patch": self.largest_patch,
            "memory": self.memory.to_dict(), "notes": list(self.notes),
        }  # fmt: skip


def _largest_patch(graph: ModelGraph, shape: Sequence[int], budget: int,
                   device: str) -> list[int] | None:  # fmt: skip
    """H and W grown (or shrunk) together in steps of the size rule's multiples."""
    b, t, c, h, w = shape
    mh, mw = graph.rule().multiple
    aspect = w / h
    best = None
    for k in range(1, MAX_SIDE // mh + 1):
        hh = k * mh
        ww = max(mw, round(hh * aspect / mw) * mw)
        try:
            graph.check(t, hh, ww)
        except STCNNTError:
            continue
        if not _fits(graph, (b, t, c, hh, ww), budget, device):
            break
        best = [t, hh, ww]
    return best


def plan_for_spec(spec: Any, shape: Sequence[int] | str, memory: str | int,
                  device: str = "cuda") -> SpecFit:  # fmt: skip
    """Whether training `spec` (anything `load_spec` accepts) on `shape` (B, T, C, H, W)
    fits `memory` (`8GiB`, `8GB` or bytes) with AdamW in float32, and the largest batch
    and patch that do. Reads the model graph only (milliseconds)."""
    device = check_device(device)
    budget = parse_memory(memory)
    graph = build_graph(spec)
    full = parse_shape(shape)
    graph.check(full[1], full[3], full[4])
    est = step_memory(graph, full, device)
    b, t, _, h, w = full
    notes = []
    batch = largest_batch(graph, (t, h, w), budget, device)
    if batch == 0:
        notes.append(f"one sample of {t}x{h}x{w} needs {human_bytes(est.peak_bytes / b)}"
                     f" or more; the budget is {human_bytes(budget)}")  # fmt: skip
    return SpecFit(
        shape=full, budget=budget, device=device, predicted_bytes=est.peak_bytes,
        fits=within(est.peak_bytes, budget), largest_batch=batch,
        largest_patch=_largest_patch(graph, full, budget, device), memory=est, notes=notes,
    )  # fmt: skip


def ceil_to(value: int, multiple: int) -> int:
    return max(multiple, math.ceil(value / multiple) * multiple)
