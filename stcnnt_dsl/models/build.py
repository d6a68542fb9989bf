"""`build`: from anything `load_spec` accepts to a PyTorch module."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import SpecError
from ..graph.build import build_graph
from ..graph.guard import guard
from ..language.spec import ArchSpec, SpecSource, load_source
from ..nn.axes import check_layout
from .backbone import Backbone
from .model import Model, model_of

__all__ = ["build"]


def _with_in_channels(source: SpecSource, in_channels: Any) -> SpecSource:
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise SpecError(
            f"in_channels must be a positive integer, got {in_channels!r}", "in_channels"
        )
    spec = ArchSpec.model_validate({**_data(source.spec), "in_channels": in_channels})
    return SpecSource(spec, source.positions, source.text, source.file)


def _data(spec: ArchSpec) -> dict[str, Any]:
    """The fields of a spec as given (sub-models kept), for a copy with one change."""
    return {name: getattr(spec, name) for name in spec.model_fields_set | {"name"}}


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


def _refuse_frame_cells(graph: Any) -> None:
    """2D images (layout BCHW) have one frame: a T cell would attend over that frame alone
    and a C3 cell convolve over it; both are a mistake, not a no-op."""
    for node in graph.nodes:
        plan = getattr(node, "plan", None)
        for cell in plan.cells if plan is not None else ():
            if cell.spec.kind in ("temporal", "conv3d"):
                letter = "T" if cell.spec.kind == "temporal" else "C3"
                raise SpecError(
                    f"layout='BCHW' takes 2D images (one frame), but {node.name} cell "
                    f"{cell.index} is {letter}, which works across frames: drop the {letter} "
                    "cells (or use C2), or build with layout='BTCHW' / 'BCHWD' for frames "
                    "or slices",
                    "layout",
                )


def build(
    source: Any,
    *,
    in_channels: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = None,
    max_params: float | None = None,
    max_memory: float | None = None,
    layout: str = "BTCHW",
) -> Backbone | Model:
    """Compile an architecture into a `Backbone` (a `torch.nn.Module`), or a `Model` (a
    backbone with task heads) when the spec has `heads:`.

    `source` is anything `load_spec` accepts. `in_channels` overrides the spec's;
    `seed` makes the initial weights deterministic (the global RNG is left untouched).
    Every check runs on the model graph before any memory is allocated: the resource
    guard refuses a model with more than `max_params` parameters or whose weights need
    more than `max_memory` bytes (defaults: 2e9 and 256 GiB, or the STCNNT_MAX_PARAMS /
    STCNNT_MAX_MEMORY environment variables; see `stcnnt_dsl.graph.guard`).
    `layout` is the order of the input's and outputs' axes: `BTCHW` (ours), `BCTHW` (the
    reference, torchvision video), `BCHW` (2D, T=1) or `BCHWD` (MONAI 3D, slices last).
    """
    _check_arguments(device, dtype, seed)
    layout = check_layout(layout)
    located = load_source(source)
    if in_channels is not None and (
        isinstance(in_channels, bool) or in_channels != located.spec.in_channels
    ):
        located = _with_in_channels(located, in_channels)
    graph = build_graph(located)
    if layout == "BCHW":
        _refuse_frame_cells(graph)
    guard(graph, max_params=max_params, max_memory=max_memory, dtype=dtype)
    if seed is None:
        model = model_of(graph, layout)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_of(graph, layout)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model
