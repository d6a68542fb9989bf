"""`build`: from anything `load_spec` accepts to a PyTorch module."""

from __future__ import annotations

from typing import Any

import torch

from .backbones import BACKBONES, Backbone
from .errors import SpecError
from .plan import make_plan
from .resources import guard
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


def _check_arguments(device: Any, dtype: Any, seed: Any) -> None:
    """build's own arguments: one clear message instead of a torch error after building."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise SpecError(
            f"dtype must be a floating-point torch.dtype (torch.float32, torch.bfloat16, "
            f"torch.float16 or torch.float64), got {dtype!r}",
            "dtype",
        )
    if device is not None:
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError, ValueError):
            raise SpecError(
                f"device {device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'",
                "device",
            ) from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise SpecError(
                f"device {device!r} was requested but CUDA is not available here; use device='cpu'",
                "device",
            )
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64
    ):
        raise SpecError(f"seed must be an integer in [0, 2**64), got {seed!r}", "seed")


def build(
    source: Any,
    *,
    in_channels: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = None,
    max_params: float | None = None,
    max_memory: float | None = None,
) -> Backbone:
    """Compile an architecture into a `Backbone` (a `torch.nn.Module`).

    `source` is anything `load_spec` accepts. `in_channels` overrides the spec's;
    `seed` makes the initial weights deterministic (the global RNG is left untouched).
    Before any memory is allocated, the resource guard refuses a model with more than
    `max_params` parameters or whose weights need more than `max_memory` bytes
    (defaults: 2e9 and 256 GiB, or the STCNNT_MAX_PARAMS / STCNNT_MAX_MEMORY environment
    variables; see `stcnnt_dsl.resources`), and the model is first constructed on the
    meta device, so every construction-time check runs before real tensors exist.
    """
    _check_arguments(device, dtype, seed)
    spec = load_spec(source)
    if in_channels is not None and (
        isinstance(in_channels, bool) or in_channels != spec.in_channels
    ):
        spec = _with_in_channels(spec, in_channels)
    plan = make_plan(spec)
    guard(plan, max_params=max_params, max_memory=max_memory, dtype=dtype)
    cls = BACKBONES[spec.topology]
    with torch.device("meta"):
        cls(plan)  # construction-time checks (heads, patches, norms) without memory
    if seed is None:
        model = cls(plan)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(plan)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model
