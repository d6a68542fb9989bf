"""FLOP counting, three independent ways.

Convention (the same in all three): **FLOPs = 2 x multiply-adds** of the convolutions,
linear layers, matrix products and attention (Q·Kᵀ and P·V, SDPA included). Norms,
activations, softmax, interpolation, pooling, additions and the residual sums are not
counted; conv biases are not counted; causal masks do not halve the count.

- `count_flops_fvcore`: fvcore's JIT-trace counter with explicit handles for
  `scaled_dot_product_attention` (which fvcore does not count) and a broadcasting
  `matmul` (fvcore's own miscounts `[h, S, S] @ [B, h, S, d]`). Needs real tensors.
- `count_flops_torch`: torch's `FlopCounterMode` at the dispatcher (works on the meta
  device, so it costs no memory or compute whatever the input size).
- `count_flops_analytic`: closed formulas per cell and per node, from the model graph
  alone (no module, no tensor; `stcnnt_dsl.graph.geometry`).

All return a `FlopCount` whose `by_module` uses the model's module names (`encoder.0`,
`encoder.0.cells.2`, `encoder.0.cells.2.attn`, `down.0`, ...), with every ancestor
holding the sum of its descendants and `""` the total.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ..graph.model import ModelGraph

__all__ = [
    "CPU_SDPA_FORMULAS",
    "FLOP_CONVENTION",
    "FlopCount",
    "count_flops_analytic",
    "count_flops_fvcore",
    "count_flops_torch",
    "relative_difference",
    "roll_up",
]

FLOP_CONVENTION = (
    "FLOPs = 2 x multiply-adds of convolutions, linear layers, matmuls and attention "
    "(QK^T and PV); norms, activations, softmax, interpolation and additions not counted"
)


def _cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _cpu_sdpa_backward(grad, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad, q, k, v)


# `custom_mapping` for FlopCounterMode when SDPA runs eagerly on CPU: torch has no
# formula for its fused CPU kernels and would count 0 (under a dispatch mode on the
# meta device SDPA decomposes into matmuls instead, which `count_flops_torch` relies on).
_ATEN = torch.ops.aten
CPU_SDPA_FORMULAS: dict[Any, Any] = {
    getattr(_ATEN, name): formula
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward),
    )
    if hasattr(_ATEN, name)
}


@dataclass
class FlopCount:
    """FLOPs in total, per module (hierarchical sums; "" is the total) and per
    operator category (`conv`, `linear`, `matmul`, `attention`)."""

    total: int
    by_module: dict[str, int]
    by_operator: dict[str, int]
    counter: str  # "fvcore", "torch" (FlopCounterMode) or "analytic"
    unsupported_ops: dict[str, int] = field(default_factory=dict)


def roll_up(leaves: Mapping[str, int]) -> dict[str, int]:
    """Every prefix of every dotted name gets the sum of its descendants."""
    out: Counter[str] = Counter()
    for name, value in leaves.items():
        parts = name.split(".") if name else []
        for k in range(len(parts) + 1):
            out[".".join(parts[:k])] += value
    return dict(out)


# --------------------------------------------------------------------------- analytic


def count_flops_analytic(graph: ModelGraph, input_shape: Sequence[int]) -> FlopCount:
    """FLOPs of the model of `graph` on `input_shape` (B, T, C, H, W), from the cell
    geometry's formulas (no module, no tensor)."""
    by_operator: Counter[str] = Counter()
    by_leaf: dict[str, int] = {}
    for name, value in graph.flops(input_shape).items():
        name, _, category = name.partition(":")
        if name.endswith("attn.attention"):
            category = "attention"
        by_operator[category or "conv"] += value
        by_leaf[name] = by_leaf.get(name, 0) + value
    rolled = roll_up(by_leaf)
    return FlopCount(rolled.get("", 0), rolled, dict(by_operator), "analytic")


# --------------------------------------------------------------------------- fvcore


def _shape(value: Any) -> list[int] | None:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def _matmul_handle(inputs: list, outputs: list) -> Counter:
    """`a @ b` with broadcasting batch dimensions (fvcore's own handle assumes none)."""
    inner = _shape(inputs[0])[-1]
    out = _shape(outputs[0])
    # The output holds one dot product of length `inner` per element.
    return Counter({"matmul": 2 * math.prod(out) * inner})


def _sdpa_handle(inputs: list, outputs: list) -> Counter:
    """`scaled_dot_product_attention(q, k, v, ...)`: Q·Kᵀ and P·V."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    s_q, d_q, s_k, d_v = q[-2], q[-1], k[-2], v[-1]
    return Counter({"attention": 2 * batch * s_q * s_k * (d_q + d_v)})


def _doubled(handle, category: str):
    """An fvcore handle (multiply-adds) turned into FLOPs under our category name."""

    def count(inputs: list, outputs: list) -> Counter:
        value = handle(inputs, outputs)
        total = sum(value.values()) if isinstance(value, Counter) else value
        return Counter({category: 2 * int(total)})

    return count


def _fvcore_handles() -> dict[str, Any]:
    from fvcore.nn import jit_handles as jh

    return {
        "aten::_convolution": _doubled(jh.conv_flop_jit, "conv"),
        "aten::linear": _doubled(jh.linear_flop_jit, "linear"),
        "aten::addmm": _doubled(jh.addmm_flop_jit, "linear"),
        "aten::bmm": _doubled(jh.bmm_flop_jit, "matmul"),
        "aten::einsum": _doubled(jh.einsum_flop_jit, "matmul"),
        "aten::matmul": _matmul_handle,
        "aten::mm": _matmul_handle,
        "aten::scaled_dot_product_attention": _sdpa_handle,
    }


def count_flops_fvcore(model: nn.Module, x: torch.Tensor) -> FlopCount:
    """FLOPs of `model(x)` by tracing with fvcore (runs one real forward)."""
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():  # fvcore's import scripts a function (deprecated)
            warnings.simplefilter("ignore")
            from fvcore.nn.jit_analysis import JitModelAnalysis
        analysis = JitModelAnalysis(model, (x,)).set_op_handle(**_fvcore_handles())
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            by_module = {k: int(v) for k, v in analysis.by_module().items()}
            by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
            unsupported = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    return FlopCount(by_module.get("", 0), by_module, by_operator, "fvcore", unsupported)


# --------------------------------------------------------------------------- torch


_TORCH_CATEGORIES = {
    "convolution": "conv",
    "mm": "matmul",
    "bmm": "matmul",
    "addmm": "linear",
    "baddbmm": "matmul",
}


def count_flops_torch(model: nn.Module, x: torch.Tensor) -> FlopCount:
    """FLOPs of `model(x)` with torch's `FlopCounterMode`; use meta tensors (model and
    input) to count without computing. Attention appears as `attention` when a fused
    SDPA kernel runs (CUDA, and CPU's flash kernel: see `CPU_SDPA_FORMULAS`) and as
    batched matmuls otherwise."""
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FORMULAS)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    called: dict[str, int] = {}
    for name, ops in counts.items():
        if name == root:
            called[""] = int(sum(ops.values()))
        elif name.startswith(root + "."):
            called[name[len(root) + 1 :]] = int(sum(ops.values()))
    by_operator: Counter[str] = Counter()
    for op, value in counts.get("Global", {}).items():
        op_name = str(op).split(".")[-1] if "." in str(op) else str(op)
        op_name = op_name.removeprefix("aten.")
        category = _TORCH_CATEGORIES.get(
            op_name, "attention" if "attention" in op_name else op_name
        )
        by_operator[category] += int(value)
    total = int(counter.get_total_flops())
    called[""] = total
    return FlopCount(total, roll_up(_self_counts(called)), dict(by_operator), "torch")


def _self_counts(called: Mapping[str, int]) -> dict[str, int]:
    """FLOPs of each called module minus its called descendants. FlopCounterMode only
    sees modules that run (not the ModuleLists between them); rolling the self counts
    up again gives every ancestor its sum."""
    own = dict(called)
    for name, value in called.items():
        if not name:
            continue
        parent = name.rpartition(".")[0]
        while parent not in called:
            parent = parent.rpartition(".")[0]
        own[parent] -= value
    return own


def relative_difference(a: int, b: int) -> float:
    """|a - b| / max(|a|, |b|) (0 when both are 0)."""
    top = max(abs(a), abs(b))
    return 0.0 if top == 0 else abs(a - b) / top
