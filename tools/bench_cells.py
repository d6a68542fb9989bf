#!/usr/bin/env python
"""Micro-benchmark of single ST-CNNT cells: latency, FLOPs and achieved GFLOP/s.

For each cell (L1, G1, T1, V1, C2, C3, L1 with qkv=linear, G1 with cosine) and each
shape, it builds a one-cell `stcnnt_dsl.nn.Block` (C -> C channels) and:

- times the forward pass (eval, no grad) and forward + backward (train mode, input and
  parameters requiring grad, backward of a fixed random output gradient): warm-up
  runs, then the median of N runs;
- counts FLOPs with `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add;
  convolutions, matmuls and scaled-dot-product attention; softmax, norms and other
  element-wise work are not counted);
- prints achieved GFLOP/s for both, and each as a fraction of the machine's matmul roof
  (GFLOP/s of a 2048 x 2048 float32 matmul, measured here).

SDPA on CPU: FlopCounterMode counts `_scaled_dot_product_{flash,efficient,cudnn}_attention`
but (torch 2.4 - 2.13 at least) has no formula for the CPU kernel
`aten._scaled_dot_product_flash_attention_for_cpu` or its backward, so stock counts miss
all attention FLOPs of cells whose sequences take the SDPA path (>= SDPA_MIN_TOKENS_CPU
tokens, see stcnnt_dsl/nn/functional.py). This script adds torch's own flash formulas for
those two ops and reports, per cell, how many FLOPs stock FlopCounterMode would have
missed (column "SDPA miss"). Like torch's, the formulas count the full S x S product
also for causal attention. Sequences below the threshold use matmul + softmax, whose
matmuls are counted normally.

Usage:
    python tools/bench_cells.py                                # B=1 T=16 C=32 H=W=64
    python tools/bench_cells.py --shape 1,16,32,64,64 --shape 2,4,64,128,128 --runs 20
    python tools/bench_cells.py --threads 2 --dtype bfloat16 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from stcnnt_dsl.errors import STCNNTError
from stcnnt_dsl.language.options import OPTIONS, validate_option
from stcnnt_dsl.language.parser import parse_block
from stcnnt_dsl.nn import Block
from stcnnt_dsl.nn import functional as nnf
from stcnnt_dsl.tools.flops import CPU_SDPA_FORMULAS

# name -> block text (one cell)
CELLS: dict[str, str] = {
    "L1": "L1",
    "G1": "G1",
    "T1": "T1",
    "V1": "V1",
    "C2": "C2",
    "C3": "C3",
    "L1 qkv=linear": "L1[qkv=linear]",
    "G1 cosine": "G1[cosine=true]",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


# ----------------------------------------------------------------- FLOP counting


class SdpaCalls:
    """Counts calls of F.scaled_dot_product_attention while active, and which aten
    kernel each ran: a fused one (`_scaled_dot_product_flash_attention_for_cpu`, ...) or
    the unfused math fallback (which decomposes into matmul/bmm/softmax)."""

    def __init__(self) -> None:
        self.calls = 0
        self.kernels: set[str] = set()
        self._original = F.scaled_dot_product_attention

    def __enter__(self) -> SdpaCalls:
        def spy(*args, **kwargs):
            self.calls += 1
            out, seen = _run_recording_ops(lambda: self._original(*args, **kwargs))
            fused = {op for op in seen if "_scaled_dot_product" in op}
            self.kernels |= fused or {"math (unfused)"}
            return out

        F.scaled_dot_product_attention = spy
        return self

    def __exit__(self, *exc) -> None:
        F.scaled_dot_product_attention = self._original


def _run_recording_ops(fn: Callable[[], Any]) -> tuple[Any, set[str]]:
    """Run `fn` once; return its result and the names of the aten ops it dispatched
    (below autograd; outer modes such as FlopCounterMode still see every op once)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    with Recorder() as rec:
        out = fn()
    return out, rec.ops


def count_flops(fn: Callable[[], None], *, with_cpu_sdpa: bool) -> tuple[int, dict[str, int]]:
    mapping = CPU_SDPA_FORMULAS if with_cpu_sdpa else {}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        fn()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


# ----------------------------------------------------------------------- timing


def median_seconds(fn: Callable[[], None], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_roof(n: int = 2048, runs: int = 5, warmup: int = 2) -> float:
    """GFLOP/s of an n x n float32 matmul (2 n^3 FLOPs)."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    seconds = median_seconds(lambda: torch.mm(a, b), runs, warmup)
    return 2 * n**3 / seconds / 1e9


# -------------------------------------------------------------------- one cell


def block_options(text: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The options of `extra` that the cell reads (Block rejects options no cell uses)."""
    kind = parse_block(text).cells[0].kind
    return {k: v for k, v in extra.items() if kind in OPTIONS[k].applies_to}


def bench_cell(
    name: str,
    text: str,
    shape: tuple[int, int, int, int, int],
    *,
    dtype: torch.dtype,
    runs: int,
    warmup: int,
    options: dict[str, Any],
    backward: bool,
) -> dict[str, Any]:
    b, t, c, h, w = shape
    row: dict[str, Any] = {"cell": name, "block": text, "shape": list(shape)}
    torch.manual_seed(0)
    try:
        block = Block(text, c, c, **block_options(text, options)).to(dtype)
        x = torch.randn(b, t, c, h, w, dtype=dtype)
        block.check_input(x)
    except STCNNTError as err:
        row["skipped"] = str(err)
        return row
    row["params"] = sum(p.numel() for p in block.parameters())

    def forward() -> None:
        with torch.no_grad():
            block(x)

    xg = x.clone().requires_grad_(True)
    grad = torch.randn(b, t, c, h, w, dtype=dtype)

    def forward_backward() -> None:
        block.zero_grad(set_to_none=True)
        xg.grad = None
        block(xg).backward(grad)

    block.eval()
    with SdpaCalls() as spy:
        row["fwd_flops"], fwd_ops = count_flops(forward, with_cpu_sdpa=True)
    stock_fwd, _ = count_flops(forward, with_cpu_sdpa=False)
    row["sdpa_calls"] = spy.calls
    row["sdpa_kernels"] = sorted(spy.kernels)
    if text[0] == "C":
        row["attention_path"] = "none"
    elif not spy.calls:
        row["attention_path"] = "matmul+softmax"
    else:
        row["attention_path"] = "sdpa-math" if "math (unfused)" in spy.kernels else "sdpa"
    row["fwd_sdpa_uncounted_by_stock"] = row["fwd_flops"] - stock_fwd
    row["fwd_ms"] = 1e3 * median_seconds(forward, runs, warmup)
    row["fwd_gflops_per_s"] = row["fwd_flops"] / (row["fwd_ms"] / 1e3) / 1e9
    row["fwd_ops"] = fwd_ops
    if backward:
        block.train()
        row["fwdbwd_flops"], _ = count_flops(forward_backward, with_cpu_sdpa=True)
        stock_fb, _ = count_flops(forward_backward, with_cpu_sdpa=False)
        row["fwdbwd_sdpa_uncounted_by_stock"] = row["fwdbwd_flops"] - stock_fb
        row["fwdbwd_ms"] = 1e3 * median_seconds(forward_backward, runs, warmup)
        row["fwdbwd_gflops_per_s"] = row["fwdbwd_flops"] / (row["fwdbwd_ms"] / 1e3) / 1e9
    return row


# ----------------------------------------------------------------------- output


def _shape(text: str) -> tuple[int, int, int, int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",")]
    if len(parts) != 5 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected B,T,C,H,W (5 positive ints), got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def _fmt_flops(n: float) -> str:
    return f"{n / 1e9:8.3f}"


def print_table(env: dict[str, Any], rows: list[dict[str, Any]], notes: list[str]) -> None:
    print("stcnnt-dsl cell benchmark")
    for key in ("torch", "python", "machine", "threads", "interop_threads", "dtype",
                "glibc_tunables", "sdpa_min_tokens_cpu", "options",
                "load_average_at_start"):  # fmt: skip
        print(f"  {key:20s} {env[key]}")
    roof = env["matmul_roof_gflops_per_s"]
    print(f"  {'matmul roof':20s} {roof:.1f} GFLOP/s (2048x2048 float32 mm, median)")
    print(f"  {'timing':20s} median of {env['runs']} runs after {env['warmup']} warm-up")
    print()
    head = (
        f"{'cell':15s} {'shape B,T,C,H,W':17s} {'path':8s} "
        f"{'fwd ms':>9s} {'fwd GF':>8s} {'GF/s':>7s} {'roof':>6s} "
        f"{'f+b ms':>9s} {'f+b GF':>8s} {'GF/s':>7s} {'roof':>6s} {'SDPA miss':>9s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = ",".join(map(str, r["shape"]))
        if "skipped" in r:
            print(f"{r['cell']:15s} {shape:17s} skipped: {r['skipped']}")
            continue
        path = {"sdpa": "sdpa", "sdpa-math": "sdpa-mth", "matmul+softmax": "matmul",
                "none": "-"}[r["attention_path"]]  # fmt: skip
        line = (
            f"{r['cell']:15s} {shape:17s} {path:8s} "
            f"{r['fwd_ms']:9.2f} {_fmt_flops(r['fwd_flops'])} {r['fwd_gflops_per_s']:7.1f} "
            f"{r['fwd_gflops_per_s'] / roof:6.1%} "
        )
        if "fwdbwd_ms" in r:
            line += (
                f"{r['fwdbwd_ms']:9.2f} {_fmt_flops(r['fwdbwd_flops'])} "
                f"{r['fwdbwd_gflops_per_s']:7.1f} {r['fwdbwd_gflops_per_s'] / roof:6.1%} "
            )
            miss, total = r["fwdbwd_sdpa_uncounted_by_stock"], r["fwdbwd_flops"]
        else:
            line += " " * 42
            miss, total = r["fwd_sdpa_uncounted_by_stock"], r["fwd_flops"]
        line += f"{miss / total:9.1%}" if total else f"{'-':>9s}"
        print(line)
    print()
    print(
        "GF = GFLOP (2 per multiply-add); roof = achieved / matmul roof; f+b = forward + backward;"
    )
    print(
        "SDPA miss = share of the FLOPs that stock FlopCounterMode does not count (CPU SDPA "
        "kernel), added here."
    )
    for note in notes:
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape",
        action="append",
        type=_shape,
        help="B,T,C,H,W (repeatable; default 1,16,32,64,64)",
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        choices=list(CELLS),
        default=list(CELLS),
        help="cells to run (default: all)",
    )
    parser.add_argument("--runs", type=int, default=10, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a block option for every cell that reads it, e.g. --set window=16 "
        "--set rel_pos_bias=false (values as in block strings: ints, [h, w], true/false)",
    )
    parser.add_argument("--no-backward", action="store_true", help="time the forward only")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)  # fmt: skip

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shapes = args.shape or [(1, 16, 32, 64, 64)]
    options = {}
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep:
            parser.error(f"--set expects OPTION=VALUE, got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        try:
            options[name] = validate_option(name, value)
        except STCNNTError as err:
            parser.error(str(err))
    dtype = DTYPES[args.dtype]
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "dtype": args.dtype,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "(unset: glibc malloc defaults)"),
        "sdpa_min_tokens_cpu": nnf.SDPA_MIN_TOKENS_CPU,
        "options": options or "(library defaults)",
        "load_average_at_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "runs": args.runs,
        "warmup": args.warmup,
        "matmul_roof_gflops_per_s": matmul_roof(),
    }
    rows = [
        bench_cell(
            name, CELLS[name], shape, dtype=dtype, runs=args.runs, warmup=args.warmup,
            options=options, backward=not args.no_backward,
        )
        for shape in shapes
        for name in args.cells
    ]  # fmt: skip
    notes = []
    if not CPU_SDPA_FORMULAS:
        notes.append("this torch has no CPU flash SDPA op; SDPA FLOPs are the stock count")
    missed = [r["cell"] for r in rows if r.get("fwd_sdpa_uncounted_by_stock")]
    if missed:
        notes.append(
            "stock FlopCounterMode counted 0 FLOPs for SDPA on CPU in: "
            + ", ".join(dict.fromkeys(missed))
            + " (aten._scaled_dot_product_flash_attention_for_cpu[_backward] have no "
            "formula); the totals include them via torch's flash formulas"
        )
    math = [r["cell"] for r in rows if r.get("attention_path") == "sdpa-math"]
    if math:
        notes.append(
            "path sdpa-mth: F.scaled_dot_product_attention ran its unfused math fallback "
            "(matmul + softmax inside torch) in: "
            + ", ".join(dict.fromkeys(math))
            + "; its FLOPs are counted through those matmuls (on torch 2.13 CPU a 3-D "
            "[heads, S, S] attn_mask, i.e. the relative position bias, causes this)"
        )
    notes.append(
        "causal attention is counted as full S x S (as torch's formulas do); "
        "softmax, norms, activations and other element-wise work are not counted"
    )
    if args.json:
        for r in rows:
            r.pop("fwd_ops", None)
        json.dump({"env": env, "results": rows, "notes": notes}, sys.stdout, indent=2)
        print()
    else:
        print_table(env, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
