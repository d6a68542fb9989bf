"""The resource guard: parameters and memory of a model, estimated before it exists.

`build` (and `check` for a given input) call `guard` first: it counts the parameters from
the model graph (the cells' geometry: no module, no tensor; exact for every cell,
resampling module and topology of this library) and, when an input shape is known,
estimates the activation memory of one training forward. A request over the limits is refused with a
`ResourceError` that carries the estimate, instead of exhausting memory: a typo such as
`channels: 1000000000` fails in milliseconds.

The limits are explicit options:

- `max_params` (default 2e9; environment variable `STCNNT_MAX_PARAMS`)
- `max_memory` in bytes (default 256 GiB; environment variable `STCNNT_MAX_MEMORY`,
  which also accepts units: `64GiB`, `500GB`, `1e12`).

Pass them to `build(..., max_params=..., max_memory=...)`, `check(...)` or `guard(...)`;
`math.inf` (or `none`/`off` in the environment) switches a limit off.

The activation estimate counts what autograd keeps for backward in a training forward
(norm inputs, Q/K/V, attention probabilities, mixer hidden maps, ...): an upper-side
estimate (within a factor of about 1.5 of the measured count for the bundled
architectures); an inference forward under `torch.no_grad()` needs far less.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ResourceError, SpecError
from ..units import human_bytes
from .build import build_graph
from .model import ModelGraph, parse_shape
from .topologies.common import MAX_MODEL_CELLS

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "DEFAULT_MAX_PARAMS",
    "ENV_MAX_MEMORY",
    "ENV_MAX_PARAMS",
    "MAX_MODEL_CELLS",
    "ResourceEstimate",
    "estimate",
    "guard",
    "guard_params",
    "limits",
]

DEFAULT_MAX_PARAMS = 2_000_000_000
DEFAULT_MAX_MEMORY = 256 * 2**30
ENV_MAX_PARAMS = "STCNNT_MAX_PARAMS"
ENV_MAX_MEMORY = "STCNNT_MAX_MEMORY"

_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_OFF = ("none", "off", "inf", "unlimited")


# --------------------------------------------------------------------------- limits


def _parse_limit(text: str, name: str, *, units: bool) -> float:
    raw = text.strip().lower().replace("_", "")
    if raw in _OFF:
        return math.inf
    match = re.fullmatch(r"([0-9.]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", raw)
    if match is None or (match.group(2) and not units) or match.group(2) not in _UNITS:
        hint = (
            " (a number of bytes, or with a unit: 64GiB, 500GB)"
            if units
            else " (a number of parameters such as 2e9 or 500000000, no units; units are "
            f"for {ENV_MAX_MEMORY})"
        )
        raise SpecError(f"environment variable {name}={text!r} is not a limit{hint}", name)
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if not value > 0:
        raise SpecError(f"environment variable {name}={text!r} must be positive", name)
    return value


def _check_limit(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SpecError(
            f"{name} must be a positive number (or math.inf for no limit), got {value!r}", name
        )
    return float(value)


def limits(max_params: float | None = None, max_memory: float | None = None) -> tuple[float, float]:
    """The limits in force: the arguments, else the environment variables, else the
    defaults (`DEFAULT_MAX_PARAMS`, `DEFAULT_MAX_MEMORY`)."""
    if max_params is None:
        env = os.environ.get(ENV_MAX_PARAMS)
        max_params = (
            DEFAULT_MAX_PARAMS if env is None else _parse_limit(env, ENV_MAX_PARAMS, units=False)
        )
    if max_memory is None:
        env = os.environ.get(ENV_MAX_MEMORY)
        max_memory = (
            DEFAULT_MAX_MEMORY if env is None else _parse_limit(env, ENV_MAX_MEMORY, units=True)
        )
    return _check_limit(max_params, "max_params"), _check_limit(max_memory, "max_memory")


# --------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class ResourceEstimate:
    """What a model costs before it is built.

    `params`: exact parameter count; `per_stage`: parameters by node (stages, and every
    resampler, gate and head); `param_bytes` at `dtype`; with an input shape,
    `activation_bytes` (estimated bytes one training forward keeps for backward, by
    node in `per_stage_activation_bytes`) and `memory_bytes` (weights + activations).
    """

    params: int
    per_stage: dict[str, int]
    dtype: str
    param_bytes: int
    input_shape: tuple[int, ...] | None = None
    activation_bytes: int | None = None
    per_stage_activation_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> int:
        return self.param_bytes + (self.activation_bytes or 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "per_stage": dict(self.per_stage),
            "dtype": self.dtype,
            "param_bytes": self.param_bytes,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "activation_bytes": self.activation_bytes,
            "memory_bytes": self.memory_bytes,
        }


def _dtype(dtype: Any) -> tuple[str, int]:
    """(name, bytes per element) of a torch dtype (or None: float32), read without
    importing torch."""
    if dtype is None:
        return "float32", 4
    size = getattr(dtype, "itemsize", None)
    if not isinstance(size, int) or not str(dtype).startswith("torch."):
        raise SpecError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    return str(dtype).removeprefix("torch."), size


def estimate(
    source: Any, input_shape: Sequence[int] | str | None = None, *, dtype: Any = None
) -> ResourceEstimate:
    """Parameters (exact) and, for an input (B, T, C, H, W), activation memory
    (estimated) of anything `load_spec` accepts, or of a `ModelGraph`, without
    building it."""
    graph = build_graph(source)
    name, size = _dtype(dtype)
    per_node = {k: v for k, v in graph.per_node(graph.params()).items() if v}
    params = sum(per_node.values())
    if input_shape is None:
        return ResourceEstimate(params, per_node, name, params * size)
    shape = parse_shape(input_shape)
    acts = {k: v * size for k, v in graph.per_node(graph.saved(shape)).items() if v}
    return ResourceEstimate(params, per_node, name, params * size, shape, sum(acts.values()), acts)


def _count(n: int) -> str:
    """1,234,567; astronomically large counts as a power of ten (str() of an int with
    thousands of digits is refused by Python)."""
    if n < 10**15:
        return f"{n:,}"
    if n < 10**300:
        return f"{float(n):.3g}"
    return f"about 10^{int(n.bit_length() * math.log10(2))}"


def _human(n: float) -> str:
    if n >= 2**50:  # past the prefixes: the exact count of TiB, or its order
        return f"{_count(int(n) // 2**40)} TiB"
    return human_bytes(n)


def _limit_text(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "no limit"


def guard(
    source: Any,
    input_shape: Sequence[int] | str | None = None,
    *,
    max_params: float | None = None,
    max_memory: float | None = None,
    dtype: Any = None,
) -> ResourceEstimate:
    """Refuse (with a `ResourceError` carrying the estimate) a model whose parameters or
    memory exceed the limits (see `limits`); return the estimate otherwise.
    Runs from the model graph alone: nothing is allocated."""
    params_limit, memory_limit = limits(max_params, max_memory)
    graph = build_graph(source)
    est = estimate(graph, input_shape, dtype=dtype)
    if est.params > params_limit:
        node, biggest = max(est.per_stage.items(), key=lambda kv: kv[1])
        path = _path(graph, node)
        raise ResourceError(
            f"the {graph.name} model would have {_count(est.params)} parameters "
            f"({_human(est.param_bytes)} as {est.dtype}), over the limit of "
            f"{_limit_text(params_limit)} parameters (max_params); {_named(node, path)} alone "
            f"has {_count(biggest)}. Check the channel counts and the window and patch sizes, "
            f"or raise the limit: max_params=... (build, check) or the {ENV_MAX_PARAMS} "
            "environment variable",
            path,
        )
    if est.memory_bytes > memory_limit:
        where = f" for input {tuple(est.input_shape)}" if est.input_shape else ""
        parts = f"weights {_human(est.param_bytes)}"
        if est.activation_bytes is not None:
            parts += f" + activations kept for backward {_human(est.activation_bytes)}"
        table = est.per_stage_activation_bytes or {"": 0}
        node, value = max(table.items(), key=lambda kv: kv[1])
        path = _path(graph, node)
        biggest = f"; {_named(node, path)} alone needs {_human(value)}" if node else ""
        raise ResourceError(
            f"the {graph.name} model's estimated memory{where} is {_human(est.memory_bytes)} "
            f"({parts}), over the limit of {_human(memory_limit)} (max_memory){biggest}. "
            "Use a smaller input (batch, frames, H, W) or model, or raise the limit: "
            f"max_memory=... in bytes (build, check) or the {ENV_MAX_MEMORY} environment "
            "variable (e.g. 512GiB)",
            path,
        )
    return est


def guard_params(params: int, name: str) -> None:
    """The parameter guard for one `Block` built on its own (default limits)."""
    params_limit, _ = limits()
    if params > params_limit:
        raise ResourceError(
            f"the block would have {_count(params)} parameters, over the limit of "
            f"{_limit_text(params_limit)}; check in_channels/out_channels and the window "
            f"and patch sizes, or raise the limit with the {ENV_MAX_PARAMS} environment "
            "variable",
            name,
        )


def _named(node: str, path: str) -> str:
    """A node as a message names it, with the spec path the error carries when the two
    read differently (decoder.0's cells are written at unet.encoder[0])."""
    return f"{node} (spec path {path})" if path else node


def _path(graph: ModelGraph, node: str) -> str:
    """The spec path of a node (for the error's `.path`)."""
    try:
        return graph.node(node).path
    except KeyError:
        return ""
