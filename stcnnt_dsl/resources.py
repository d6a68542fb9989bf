"""The resource guard: parameters and memory of a model, estimated before it exists.

`build` (and `check` for a given input) call `guard` first: it counts the parameters from
the plan with closed formulas (no module, no tensor; exact for every cell, resampling
module and topology of this library) and, when an input shape is known, estimates the
activation memory of one training forward. A request over the limits is refused with a
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

import functools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ResourceError, SpecError
from .options import LOCAL, TEMPORAL, VIT, as_pair

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "DEFAULT_MAX_PARAMS",
    "ENV_MAX_MEMORY",
    "ENV_MAX_PARAMS",
    "MAX_MODEL_CELLS",
    "ResourceEstimate",
    "block_params",
    "estimate",
    "guard",
    "guard_block",
    "limits",
]

DEFAULT_MAX_PARAMS = 2_000_000_000
DEFAULT_MAX_MEMORY = 256 * 2**30
ENV_MAX_PARAMS = "STCNNT_MAX_PARAMS"
ENV_MAX_MEMORY = "STCNNT_MAX_MEMORY"
MAX_MODEL_CELLS = 16_384
"""Most cells in one model (every cell is a few modules: far more would exhaust memory
with Python objects alone, even on the meta device)."""

_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_OFF = ("none", "off", "inf", "unlimited")
# Beyond this many features per token the exact "auto" head count is not computed (the
# divisor search would take long); 1 head is used, a lower bound of the bias table.
_EXACT_HEADS_LIMIT = 2**32


# --------------------------------------------------------------------------- limits


def _parse_limit(text: str, name: str, *, units: bool) -> float:
    raw = text.strip().lower().replace("_", "")
    if raw in _OFF:
        return math.inf
    match = re.fullmatch(r"([0-9.]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", raw)
    if match is None or (match.group(2) and not units) or match.group(2) not in _UNITS:
        hint = " (a number of bytes, or with a unit: 64GiB, 500GB)" if units else ""
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


# --------------------------------------------------------------------------- parameters


@functools.lru_cache(maxsize=1024)
def _auto_heads(features: int, target: int = 32) -> int:
    """`stcnnt_dsl.nn.functional.auto_heads` by a divisor search in O(sqrt(features))."""
    if features > _EXACT_HEADS_LIMIT:
        return 1
    best, i = 1, 1
    while i * i <= features:
        if features % i == 0:
            for heads in (i, features // i):
                if heads > best and features // heads >= target:
                    best = heads
        i += 1
    return best


def _heads(value: Any, features: int) -> int:
    return _auto_heads(features) if value == "auto" else int(value)


def _hidden(ratio: float, channels: int) -> int:
    """The mixer's hidden channels, as `nn.cells.Mixer` computes them (astronomical
    channel counts, beyond float range, are bounded from below instead)."""
    try:
        return max(1, int(ratio * channels))
    except OverflowError:
        return channels * max(1, int(ratio))


def _conv(cin: int, cout: int, kernel: int, *, bias: bool) -> int:
    return cin * cout * kernel * kernel + (cout if bias else 0)


def _norm(kind: str, channels: int, input_size: tuple[int, int] | None) -> int:
    if kind == "layer":
        h, w = input_size or (0, 0)
        return 2 * channels * h * w
    if kind in ("batch2d", "batch3d"):
        return 2 * channels
    return 0


def _activation(name: str) -> int:
    return 1 if name == "prelu" else 0


def _spatial_attention(kind: str, cin: int, cout: int, o: Mapping[str, Any]) -> int:
    grid = as_pair(o["grid"]) if kind != LOCAL and o.get("grid") is not None else None
    window = None if grid else as_pair(o["window"])
    patch = None if kind == VIT else as_pair(o.get("patch", o["window"]))
    patch_px = patch or window
    if patch_px is None:  # V with a grid: heads split the channels
        heads = _heads(o["heads"], cout)
        qkv = _conv(cin, 3 * cout, o["qkv_kernel"], bias=False)
    else:
        token = cout * patch_px[0] * patch_px[1]
        heads = _heads(o["heads"], token)
        if o["qkv"] == "conv":
            qkv = _conv(cin, 3 * cout, o["qkv_kernel"], bias=False)
        else:
            qkv = cin * patch_px[0] * patch_px[1] * 3 * token
    total = qkv
    if o["rel_pos_bias"]:
        if kind == LOCAL:
            (wh, ww), (ph, pw) = window, patch
            eh, ew = max(1, wh // ph), max(1, ww // pw)
        elif grid is not None:
            eh, ew = grid
        elif o.get("input_size") is not None:
            (h, w), (wh, ww) = o["input_size"], window
            eh, ew = max(1, h // wh), max(1, w // ww)
        else:
            from .nn.attention import GLOBAL_BIAS_EXTENT

            eh = ew = GLOBAL_BIAS_EXTENT
        total += (2 * eh - 1) * (2 * ew - 1) * heads
    if o["out_proj"]:
        total += _conv(cout, cout, 3, bias=True)
    return total


def cell_params(kind: str, mixer: bool, cin: int, cout: int, o: Mapping[str, Any]) -> int:
    """Parameters of one cell from its resolved options (see `nn.cells`)."""
    size = o.get("input_size")
    total = 0 if cin == cout else _conv(cin, cout, o["proj_kernel"], bias=True)
    total += _norm(o["norm"], cin, size)
    if kind in ("conv2d", "conv3d"):
        kernel = 3 * 3 * (3 if kind == "conv3d" else 1)
        return (
            total
            + cin * cout * kernel
            + _norm(o["norm"], cout, size)
            + _activation(o["activation"])
        )
    if kind == TEMPORAL:
        total += _conv(cin, 3 * cout, o["qkv_kernel"], bias=False)
        total += _conv(cout, cout, 3, bias=True) if o["out_proj"] else 0
    else:
        total += _spatial_attention(kind, cin, cout, o)
    if mixer:
        parallel = o["cell"] == "parallel"
        if not parallel:
            total += _norm(o["norm"], cout, size)
        hidden = _hidden(o["mixer_ratio"], cout)
        k = o["mixer_kernel"]
        total += _conv(cin if parallel else cout, hidden, k, bias=True)
        total += _activation(o["activation"]) + _conv(hidden, cout, k, bias=True)
    return total


def block_params(cells: Sequence[Any], in_channels: int, out_channels: int,
                 options: Sequence[Mapping[str, Any]]) -> int:  # fmt: skip
    """Parameters of a block: `cells` (CellSpec) with their resolved `options`."""
    return sum(
        cell_params(c.kind, c.mixer, in_channels if i == 0 else out_channels, out_channels, o)
        for i, (c, o) in enumerate(zip(cells, options, strict=True))
    )


def _stage_params(stage: Any, in_channels: int | None = None) -> int:
    cin = stage.in_channels if in_channels is None else in_channels
    return block_params(stage.block.cells, cin, stage.out_channels, stage.cell_options())


def _merge(cin: int, cout: int, steps: int) -> int:
    return sum(4 * (cin if k == 0 else cout) * cout for k in range(steps))


def _upconv(cin: int, cout: int, steps: int) -> int:
    return sum(_conv(cin if k == 0 else cout, cout, 3, bias=False) for k in range(steps))


def _resampling_params(plan: Any) -> int:
    """Parameters outside the blocks: down/up-sampling, gates, HR-Net exchanges."""
    spec, ch = plan.spec, plan.extras["channels"]
    if spec.topology == "unet":
        body = spec.unet
        total = 0
        for c in ch:
            total += _merge(c, c, 1) if body.down == "merge" else 0
            total += _upconv(c, c, 1) if body.up == "conv" else 0
            total += 2 * c * c + c if body.gate else 0
        return total
    if spec.topology == "hrnet":
        body, n, s = spec.hrnet, len(ch), plan.extras["stages"]

        def move(a: int, b: int) -> int:
            if body.resample == "block":
                return _stage_params(plan.stage(f"output{b}"), in_channels=ch[a])
            return _merge(ch[a], ch[b], b - a) if b > a else _upconv(ch[a], ch[b], a - b)

        total = sum(
            move(a, i)
            for j in range(1, s)
            for i in range(min(j, n - 1) + 1)
            for a in range(min(i, j))
            if a <= min(j - 1, n - 1)
        )
        total += sum(move(i, k) for k in range(n) for i in range(n) if i != k)
        return total + sum(_upconv(ch[k], ch[k], k) for k in range(1, n))
    return 0


# --------------------------------------------------------------------------- activations


def _cell_activations(kind: str, mixer: bool, cin: int, cout: int, o: Mapping[str, Any],
                      frames: int, t: int, h: int, w: int) -> int:  # fmt: skip
    """Elements autograd keeps for backward in a training forward of one cell (an
    estimate: norm inputs and outputs, Q/K/V, attention probabilities, projections,
    mixer hidden maps)."""
    pixels = frames * h * w
    total = 3 * cin * pixels  # norm1 input, centred copy, output
    if kind in ("conv2d", "conv3d"):
        return total + 4 * cout * pixels
    total += 3 * cout * pixels + 2 * cout * pixels  # q, k, v; attention output, out_proj input
    if kind == TEMPORAL:
        heads = _heads(o["heads"], cout)
        total += (frames // max(t, 1)) * heads * t * t
    else:
        total += _score_elements(kind, cout, o, frames, h, w)
    hidden = _hidden(o["mixer_ratio"], cout) if mixer else 0
    if mixer:
        total += (3 * cout + 2 * hidden) * pixels
    if o["padding"] == "reflect":  # padded copies of every conv input
        total += (cin + cout + (cout + hidden if mixer else 0)) * pixels
    if o["drop_path"]:  # the branch outputs, kept for the mask multiply
        total += (2 if mixer else 1) * cout * pixels
    return total


def _score_elements(kind: str, cout: int, o: Mapping[str, Any], frames: int, h: int,
                    w: int) -> int:  # fmt: skip
    """Attention probabilities of a spatial cell: sequences x heads x S x S."""
    if kind != LOCAL and o.get("grid") is not None:
        gh, gw = as_pair(o["grid"])
        window = (max(1, h // gh), max(1, w // gw))
    else:
        window = as_pair(o["window"])
    patch = window if kind == VIT else as_pair(o.get("patch", o["window"]))
    windows = max(1, h // window[0]) * max(1, w // window[1])
    per_window = max(1, window[0] // patch[0]) * max(1, window[1] // patch[1])
    heads = _heads(o["heads"], cout * patch[0] * patch[1])
    if kind == LOCAL:
        return frames * windows * heads * per_window * per_window
    return frames * per_window * heads * windows * windows


def _stage_activations(stage: Any, b: int, t: int, h: int, w: int) -> int:
    sh, sw = max(1, h // stage.scale), max(1, w // stage.scale)
    return sum(
        _cell_activations(
            c.kind, c.mixer, stage.in_channels if i == 0 else stage.out_channels,
            stage.out_channels, o, b * t, t, sh, sw,
        )
        for i, (c, o) in enumerate(zip(stage.block.cells, stage.cell_options(), strict=True))
    )  # fmt: skip


def _resampling_activations(plan: Any, b: int, t: int, h: int, w: int) -> int:
    """Down/up-sampling inputs, gates and HR-Net exchanges: about four maps per level."""
    ch = plan.extras["channels"]
    frames = b * t
    per_level = [4 * c * frames * max(1, h // 2**i) * max(1, w // 2**i) for i, c in enumerate(ch)]
    if plan.spec.topology == "hrnet":
        return sum(per_level) * (len(ch) + plan.extras["stages"])
    if plan.spec.topology == "unet":
        return sum(per_level) * 2
    return 0


# --------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class ResourceEstimate:
    """What a model costs before it is built.

    `params`: exact parameter count; `per_stage`: parameters by spec path (blocks) plus
    `resampling`; `param_bytes` at `dtype`; with an input shape, `activation_bytes`
    (estimated bytes one training forward keeps for backward) and `memory_bytes`
    (weights + activations).
    """

    params: int
    per_stage: dict[str, int]
    dtype: torch.dtype
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
            "dtype": str(self.dtype).replace("torch.", ""),
            "param_bytes": self.param_bytes,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "activation_bytes": self.activation_bytes,
            "memory_bytes": self.memory_bytes,
        }


def _dtype_size(dtype: torch.dtype | None) -> tuple[torch.dtype, int]:
    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise SpecError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    return dtype, dtype.itemsize


def estimate(
    source: Any, input_shape: Sequence[int] | str | None = None, *,
    dtype: torch.dtype | None = None,
) -> ResourceEstimate:  # fmt: skip
    """Parameters (exact) and, for an input (B, T, C, H, W), activation memory
    (estimated) of anything `load_spec` accepts, or of a `Plan`, without building it."""
    from .plan import Plan, make_plan

    plan = source if isinstance(source, Plan) else make_plan(source)
    dtype, size = _dtype_size(dtype)
    _check_cell_count(plan)
    per_stage: dict[str, int] = {}
    for stage in plan.stages:
        per_stage[stage.path] = per_stage.get(stage.path, 0) + _stage_params(stage)
    resampling = _resampling_params(plan)
    if resampling:
        per_stage["resampling"] = resampling
    params = sum(per_stage.values())
    if input_shape is None:
        return ResourceEstimate(params, per_stage, dtype, params * size)
    from .shapes import parse_shape

    b, t, _, h, w = shape = parse_shape(input_shape)
    acts: dict[str, int] = {}
    for stage in plan.stages:
        acts[stage.path] = acts.get(stage.path, 0) + _stage_activations(stage, b, t, h, w) * size
    extra = _resampling_activations(plan, b, t, h, w) * size
    if extra:
        acts["resampling"] = extra
    return ResourceEstimate(
        params, per_stage, dtype, params * size, shape, sum(acts.values()), acts
    )


def _check_cell_count(plan: Any) -> None:
    cells = sum(len(stage.block.cells) for stage in plan.stages)
    body = plan.spec.body
    if plan.spec.topology == "hrnet" and body.resample == "block":  # a block per exchange
        n, s = len(plan.extras["channels"]), plan.extras["stages"]
        exchanges = n * (n - 1) + s * n * n
        cells += exchanges * max(len(stage.block.cells) for stage in plan.stages)
    if cells > MAX_MODEL_CELLS:
        raise ResourceError(
            f"the {plan.spec.name} model would have {_count(cells)} cells, more than the "
            f"{MAX_MODEL_CELLS:,} allowed; use fewer blocks, levels or repetitions",
            plan.spec.topology,
        )


def _count(n: int) -> str:
    """1,234,567; astronomically large counts as a power of ten (str() of an int with
    thousands of digits is refused by Python)."""
    if n < 10**15:
        return f"{n:,}"
    if n < 10**300:
        return f"{float(n):.3g}"
    return f"about 10^{int(n.bit_length() * math.log10(2))}"


def _human(n: float) -> str:
    if n >= 2**50:
        return f"{_count(int(n) // 2**40)} TiB"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _limit_text(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "no limit"


def guard(
    source: Any,
    input_shape: Sequence[int] | str | None = None,
    *,
    max_params: float | None = None,
    max_memory: float | None = None,
    dtype: torch.dtype | None = None,
) -> ResourceEstimate:
    """Refuse (with a `ResourceError` carrying the estimate) a model whose parameters or
    memory exceed the limits (see `limits`); return the estimate otherwise.
    Runs from the plan alone: nothing is allocated."""
    from .plan import Plan, make_plan

    params_limit, memory_limit = limits(max_params, max_memory)
    plan = source if isinstance(source, Plan) else make_plan(source)
    est = estimate(plan, input_shape, dtype=dtype)
    name = plan.spec.name
    if est.params > params_limit:
        path, biggest = max(est.per_stage.items(), key=lambda kv: kv[1])
        raise ResourceError(
            f"the {name} model would have {_count(est.params)} parameters "
            f"({_human(est.param_bytes)} as {_dtype_name(est.dtype)}), over the limit of "
            f"{_limit_text(params_limit)} parameters (max_params); {_part(path)} alone has "
            f"{_count(biggest)}. Check the channel counts and the window and patch sizes, or "
            f"raise the limit: max_params=... (build, check) or the {ENV_MAX_PARAMS} "
            "environment variable",
            _path(path),
        )
    if est.memory_bytes > memory_limit:
        where = f" for input {tuple(est.input_shape)}" if est.input_shape else ""
        parts = f"weights {_human(est.param_bytes)}"
        if est.activation_bytes is not None:
            parts += f" + activations kept for backward {_human(est.activation_bytes)}"
        table = est.per_stage_activation_bytes or {"": 0}
        path, value = max(table.items(), key=lambda kv: kv[1])
        biggest = f"; {_part(path)} alone needs {_human(value)}" if path else ""
        raise ResourceError(
            f"the {name} model's estimated memory{where} is {_human(est.memory_bytes)} "
            f"({parts}), over the limit of {_human(memory_limit)} (max_memory){biggest}. "
            "Use a smaller input (batch, frames, H, W) or model, or raise the limit: "
            f"max_memory=... in bytes (build, check) or the {ENV_MAX_MEMORY} environment "
            "variable (e.g. 512GiB)",
            _path(path),
        )
    return est


def guard_block(cells: Sequence[Any], in_channels: int, out_channels: int,
                options: Sequence[Mapping[str, Any]], name: str) -> None:  # fmt: skip
    """The parameter guard for one `Block` built on its own (default limits)."""
    params_limit, _ = limits()
    params = block_params(cells, in_channels, out_channels, options)
    if params > params_limit:
        raise ResourceError(
            f"the block would have {_count(params)} parameters, over the limit of "
            f"{_limit_text(params_limit)}; check in_channels/out_channels and the window "
            f"and patch sizes, or raise the limit with the {ENV_MAX_PARAMS} environment "
            "variable",
            name,
        )


def _part(path: str) -> str:
    return "the resampling modules" if path == "resampling" else "this stage"


def _path(path: str) -> str:
    return "" if path == "resampling" else path


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
