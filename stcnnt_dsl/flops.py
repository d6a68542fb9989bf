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
- `count_flops_analytic`: closed formulas per cell and per resampling module, from the
  plan alone (no module, no tensor).

All return a `FlopCount` whose `by_module` uses the backbone's module names
(`encoder.0`, `encoder.0.cells.2`, `encoder.0.cells.2.attn`, `down.0`, ...), with every
ancestor holding the sum of its descendants and `""` the total.
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

from .options import GLOBAL, LOCAL, TEMPORAL, VIT, as_pair
from .plan import Plan, StagePlan

__all__ = [
    "FLOP_CONVENTION",
    "FlopCount",
    "count_flops_analytic",
    "count_flops_fvcore",
    "count_flops_torch",
    "relative_difference",
    "roll_up",
    "stage_module_name",
]

FLOP_CONVENTION = (
    "FLOPs = 2 x multiply-adds of convolutions, linear layers, matmuls and attention "
    "(QK^T and PV); norms, activations, softmax, interpolation and additions not counted"
)


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


# --------------------------------------------------------------------------- module names


def stage_module_name(plan: Plan, stage: StagePlan) -> str:
    """The name of `stage`'s block inside the compiled backbone."""
    if plan.spec.topology == "hrnet":
        if stage.key.startswith("output"):
            return f"outputs.{stage.key[len('output') :]}"
        return "blocks." + stage.key.replace(".", "_")
    return stage.key  # unet: encoder.0 / bridge / decoder.1; llm: blocks.0


# --------------------------------------------------------------------------- analytic


def _conv(cin: int, cout: int, kernel: int | Sequence[int], positions: int) -> int:
    taps = math.prod(kernel) if isinstance(kernel, Sequence) else kernel * kernel
    return 2 * cin * cout * taps * positions


def _spatial_attention(kind: str, cin: int, c: int, h: int, w: int, o: Mapping) -> dict:
    grid = o.get("grid") if kind != LOCAL else None
    if grid is not None:
        gh, gw = as_pair(grid)
        wh, ww = h // gh, w // gw
    else:
        wh, ww = as_pair(o["window"])
    ph, pw = (wh, ww) if kind == VIT else as_pair(o["patch"])
    nh, nw, qh, qw = h // wh, w // ww, wh // ph, ww // pw
    d = c * ph * pw  # token size
    seqs, s = (nh * nw, qh * qw) if kind == LOCAL else (qh * qw, nh * nw)
    if o["qkv"] == "conv":
        parts = {"attn.qkv": _conv(cin, 3 * c, o["qkv_kernel"], h * w)}
    else:  # linear maps of (patch pixels x channels) token vectors
        parts = {"attn.qkv:linear": 2 * (h * w // (ph * pw)) * (cin * ph * pw) * (3 * d)}
    products = 2 if o["rel_pos_bias"] != "after_softmax" else 3  # QK^T, PV (+ bias·V)
    parts["attn.attention"] = products * 2 * s * s * d * seqs
    if o["out_proj"]:
        parts["attn.proj"] = _conv(c, c, 3, h * w)
    return parts


def _temporal_attention(cin: int, c: int, t: int, h: int, w: int, o: Mapping) -> dict:
    """Per *sample* (all T frames): a T x T attention over whole frames."""
    k, stride = o["qkv_kernel"], o["qk_stride"]
    if stride == 1:
        parts = {"attn.qkv": t * _conv(cin, 3 * c, k, h * w)}
        hq, wq = h, w
    else:
        hq = (h + 2 * (k // 2) - k) // stride + 1
        wq = (w + 2 * (k // 2) - k) // stride + 1
        parts = {
            "attn.qk": t * _conv(cin, 2 * c, k, hq * wq),
            "attn.v": t * _conv(cin, c, k, h * w),
        }
    parts["attn.attention"] = 2 * t * t * c * hq * wq + 2 * t * t * c * h * w
    if o["out_proj"]:
        parts["attn.proj"] = t * _conv(c, c, 3, h * w)
    return parts


def _cell(kind: str, mixer: bool, cin: int, c: int, t: int, h: int, w: int, o: Mapping) -> dict:
    """FLOPs of one cell on one sample of T frames at h x w, by sub-module."""
    frame_parts: dict[str, int] = {}
    if cin != c:
        frame_parts["proj"] = _conv(cin, c, o["proj_kernel"], h * w)
    if kind in ("conv2d", "conv3d"):
        taps = 9 if kind == "conv2d" else 27
        frame_parts["conv"] = 2 * cin * c * taps * h * w
        return {k: v * t for k, v in frame_parts.items()}
    if mixer:
        hidden = max(1, int(o["mixer_ratio"] * c))
        mixer_in = cin if o["cell"] == "parallel" else c
        frame_parts["mixer.0"] = _conv(mixer_in, hidden, o["mixer_kernel"], h * w)
        frame_parts["mixer.2"] = _conv(hidden, c, o["mixer_kernel"], h * w)
    parts = {k: v * t for k, v in frame_parts.items()}
    if kind == TEMPORAL:
        parts.update(_temporal_attention(cin, c, t, h, w, o))
    elif kind in (LOCAL, GLOBAL, VIT):
        parts.update({k: v * t for k, v in _spatial_attention(kind, cin, c, h, w, o).items()})
    return parts


def _block(prefix: str, block, cin: int, cout: int, layers, t: int, h: int, w: int) -> dict:
    from .nn.block import resolve_cell

    out: dict[str, int] = {}
    for i, cell in enumerate(block.cells):
        opts = resolve_cell(cell, layers)
        c_in = cin if i == 0 else cout
        for part, value in _cell(cell.kind, cell.mixer, c_in, cout, t, h, w, opts).items():
            out[f"{prefix}.cells.{i}.{part}"] = value
    return out


def _merges(prefix: str, cin: int, cout: int, level: int, steps: int, hw: int) -> dict:
    """Patch merging `steps` times from `level`: 1x1 conv of 4*C -> C' per step."""
    out = {}
    for k in range(steps):
        c = cin if k == 0 else cout
        out[f"{prefix}.merges.{k}.conv"] = _conv(4 * c, cout, 1, hw // 4 ** (level + k + 1))
    return out


def _ups(prefix: str, cin: int, cout: int, level: int, steps: int, hw: int) -> dict:
    """Bilinear x2 + 3x3 conv `steps` times, from `level` towards full resolution."""
    return {
        f"{prefix}.convs.{k}": _conv(cin if k == 0 else cout, cout, 3, hw // 4 ** (level - k - 1))
        for k in range(steps)
    }


def _unet_extras(plan: Plan, t: int, h: int, w: int) -> dict:
    body, ch = plan.spec.unet, plan.extras["channels"]
    out: dict[str, int] = {}
    for i in range(body.num_levels):
        if body.down == "merge":
            out.update(_merges(f"down.{i}", ch[i], ch[i], i, 1, h * w))
        if body.up == "conv":
            out.update(_ups(f"up.{i}", ch[i], ch[i], i + 1, 1, h * w))
        if body.gate:
            hw = h * w // 4**i
            out[f"gates.{i}.query"] = _conv(ch[i], ch[i], 1, hw)
            out[f"gates.{i}.key"] = _conv(ch[i], ch[i], 1, hw)
            out[f"gates.{i}.psi"] = _conv(ch[i], 1, 1, hw)
    return {k: v * t for k, v in out.items()}


def _hrnet_extras(plan: Plan, t: int, h: int, w: int) -> dict:
    body, ch = plan.spec.hrnet, plan.extras["channels"]
    n, s = body.num_levels, plan.extras["stages"]
    out: dict[str, int] = {}

    def resample(name: str, a: int, b: int) -> dict:
        if body.resample == "block":
            target = plan.stage(f"output{b}")
            return _block(
                f"{name}.block", target.block, ch[a], ch[b], target.layers, t,
                h // 2**b, w // 2**b,
            )  # fmt: skip
        if b > a:
            return {k: v * t for k, v in _merges(name, ch[a], ch[b], a, b - a, h * w).items()}
        return {k: v * t for k, v in _ups(name, ch[a], ch[b], a, a - b, h * w).items()}

    for j in range(1, s):
        for i in range(min(j, n - 1) + 1):
            for a in range(i):
                out.update(resample(f"transitions.stage{j}_{a}to{i}", a, i))
    for k in range(n):
        for i in range(n):
            if i != k:
                out.update(resample(f"fuse.{i}to{k}", i, k))
    for k in range(1, n):
        ups = _ups(f"output_up.{k - 1}", ch[k], ch[k], k, k, h * w)
        out.update({name: v * t for name, v in ups.items()})
    return out


def count_flops_analytic(plan: Plan, input_shape: Sequence[int]) -> FlopCount:
    """FLOPs of `plan`'s backbone on `input_shape` (B, T, C, H, W), from formulas."""
    b, t, _, h, w = input_shape
    leaves: dict[str, int] = {}
    for stage in plan.stages:
        name = stage_module_name(plan, stage)
        hs, ws = h // stage.scale, w // stage.scale
        leaves.update(
            _block(name, stage.block, stage.in_channels, stage.out_channels, stage.layers,
                   t, hs, ws)
        )  # fmt: skip
    topology = plan.spec.topology
    if topology == "unet":
        leaves.update(_unet_extras(plan, t, h, w))
    elif topology == "hrnet":
        leaves.update(_hrnet_extras(plan, t, h, w))
    # Leaf names may carry the operator category after a colon (default: conv).
    by_operator: Counter[str] = Counter()
    by_leaf: dict[str, int] = {}
    for name, value in leaves.items():
        name, _, category = name.partition(":")
        if name.endswith("attn.attention"):
            category = "attention"
        by_operator[category or "conv"] += value * b
        by_leaf[name] = value * b
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
    SDPA kernel runs (CUDA) and as batched matmuls otherwise."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
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
