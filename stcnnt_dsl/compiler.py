"""`build`: from anything `load_spec` accepts to a PyTorch module."""

from __future__ import annotations

from typing import Any

import torch

from .backbones import BACKBONES, Backbone
from .errors import SpecError
from .plan import make_plan
from .spec import ArchSpec, load_spec

__all__ = ["build"]


def _with_in_channels(spec: ArchSpec, in_channels: int) -> ArchSpec:
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise SpecError(
            f"in_channels must be a positive integer, got {in_channels!r}", "in_channels"
        )
    return ArchSpec.model_validate(
        {**spec.model_dump(exclude_none=True, round_trip=True), "in_channels": in_channels}
    )


def build(
    source: Any,
    *,
    in_channels: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = None,
) -> Backbone:
    """Compile an architecture into a `Backbone` (a `torch.nn.Module`).

    `source` is anything `load_spec` accepts. `in_channels` overrides the spec's;
    `seed` makes the initial weights deterministic (the global RNG is left untouched).
    """
    spec = load_spec(source)
    if in_channels is not None and in_channels != spec.in_channels:
        spec = _with_in_channels(spec, in_channels)
    plan = make_plan(spec)
    cls = BACKBONES[spec.topology]
    if seed is None:
        model = cls(plan)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(plan)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model
