#!/usr/bin/env python
"""Benchmark of the bundled ST-CNNT backbones: latency, throughput, memory and FLOP rate.

For every architecture and input it measures, in one process and one run:

- forward latency (eval, no grad) and forward + backward latency (train mode, backward
  of a fixed random output gradient, parameter gradients reset each step): the median
  of `--runs` timed calls after warm-up;
- images/s: frames (B*T images) per second, for inference and for training;
- FLOPs with `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add), counted on
  the meta device; torch has no formula for the CPU flash-attention kernel, so this
  script adds torch's own flash formulas for it;
- achieved GFLOP/s, and each as a fraction of the machine's own roof measured in the
  same run: a large float32 matmul and a 3x3 convolution (best of NCHW and
  channels-last), before and after the models (the larger of the two is used);
- the summed time of the forward's convolutions (from a profiled forward), and the
  forward's ratio to it;
- peak memory (see below) of the forward and of the forward + backward; with
  `--checkpoint` (default on) also of forward + backward with activation checkpointing
  of every block, and the forward's peak at half the H and W (memory scaling);
- the forward of `torch.compile(model)` (compile time and latency), with inductor's
  defaults and with `freezing` (its inference setting); `--compile` picks the modes.

Peak memory: the high-water mark of tensor memory allocated by torch during the step,
above what was allocated before it (so weights and the input are not counted; parameter
gradients are). On CPU it comes from the allocation events of `torch.profiler`
(`profile_memory=True`), which see every allocation of torch's CPU allocator, op
workspaces included; on CUDA from `torch.cuda.max_memory_allocated`. It is the same
quantity on both devices and does not depend on the C allocator or on RSS accounting.

Allocator: glibc malloc returns every freed block >= 32 MiB to the OS and page-faults it
in again on the next allocation, which made a fresh 128 MiB tensor cost 6x a copy on
this class of machine. By default this script re-runs itself with
`GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736` (keep
freed memory in the heap); `--allocator default` keeps the environment as it is. The
setting used is printed and stored in the JSON.

Usage:
    python tools/bench.py                                   # all bundled, default input
    python tools/bench.py --arch unet --input 1,16,1,128,128 --runs 5 --json out.json
    python tools/bench.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

import stcnnt_dsl
from stcnnt_dsl.tools.flops import CPU_SDPA_FORMULAS

TUNED_GLIBC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
DEFAULT_INPUT = {"cpu": (1, 16, 1, 128, 128), "cuda": (1, 16, 1, 256, 256)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Shape = tuple[int, int, int, int, int]
Tensor = torch.Tensor

# Profiler names of convolutions: aten's, and oneDNN's fused conv + activation / + sum
# (eager CPU inference and inductor's frozen graphs). None of them nests another.
CONV_OPS = (
    "aten::convolution",
    "mkldnn::_convolution_pointwise",
    "mkldnn::_convolution_pointwise_",
)


# ------------------------------------------------------------------------- FLOP counting


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per op) of `fn()`."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FORMULAS)
    with counter:
        fn()
    per_op = counter.get_flop_counts().get("Global", {})
    return int(counter.get_total_flops()), {str(op): int(n) for op, n in per_op.items()}


# ------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_times(fn: Callable[[], Any], device: torch.device, runs: int, warmup: int) -> list[float]:
    """Seconds of each of `runs` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], Any], device: torch.device, runs: int, warmup: int) -> float:
    return statistics.median(run_times(fn, device, runs, warmup))


def _timed(row: dict[str, Any], key: str, times: list[float]) -> None:
    """row[key] = median ms, row[key_min] = fastest ms (less sensitive to other load)."""
    row[key] = 1e3 * statistics.median(times)
    row[key.replace("_ms", "_min_ms")] = 1e3 * min(times)


def matmul_roof(device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of a large square matmul (2 n^3 FLOPs)."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_seconds(lambda: torch.mm(a, b), device, runs=7, warmup=2)
    return 2 * n**3 / seconds / 1e9


def conv_roof(device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of a 3x3 convolution, 64 -> 64 channels on 16 frames of 128x128 (CPU) or
    256x256 (CUDA): the best of NCHW and channels-last storage."""
    n, c, size = 16, 64, (128 if device.type == "cpu" else 256)
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(device=device, dtype=dtype)
    flops = 2 * n * c * c * 9 * size * size
    best = 0.0
    with torch.no_grad():
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(n, c, size, size, device=device, dtype=dtype)
            x = x.contiguous(memory_format=fmt)
            conv = conv.to(memory_format=fmt)
            seconds = median_seconds(lambda: conv(x), device, runs=5, warmup=2)  # noqa: B023
            best = max(best, flops / seconds / 1e9)
    return best


# ------------------------------------------------------------------------------- memory


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, int]]:
    """Yields a dict that holds, on exit, `peak`: the high-water mark of tensor memory
    allocated inside the block above what was allocated on entry (bytes), and, on CPU,
    `conv_us`: the summed time of the block's convolutions (profiled), and `wall_us`:
    the wall time of the block (profiled)."""
    result: dict[str, int] = {}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        ) as prof:
            start = time.perf_counter()
            yield result
            synchronize(device)
            result["wall_us"] = int(1e6 * (time.perf_counter() - start))
        result["peak"] = torch.cuda.max_memory_allocated(device) - base
        result["conv_us"] = int(
            sum(e.device_time_total for e in prof.key_averages() if e.key in CONV_OPS)
        )
        return
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        start = time.perf_counter()
        yield result
        result["wall_us"] = int(1e6 * (time.perf_counter() - start))
    # Allocation and free events in time order (the raw events: the aggregated ones
    # attribute allocations made inside an op to that op).
    raw = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for _, _, nbytes in sorted((e.start_ns(), i, e.nbytes()) for i, e in enumerate(raw)):
        level += nbytes
        peak = max(peak, level)
    result["peak"] = peak
    events = prof.events()
    result["conv_us"] = int(sum(e.cpu_time_total for e in events if e.name in CONV_OPS))


# --------------------------------------------------------------------------- one model


def _spec_dict(arch: str, checkpoint: bool) -> dict[str, Any]:
    spec = stcnnt_dsl.load_spec(arch).model_dump(exclude_none=True, round_trip=True)
    if checkpoint:
        spec.setdefault("defaults", {})["checkpoint"] = True
    return spec


def build(arch: str, device: torch.device, dtype: torch.dtype, *, checkpoint: bool = False):
    return stcnnt_dsl.build(_spec_dict(arch, checkpoint), device=device, dtype=dtype, seed=0)


def model_flops(arch: str, shape: Shape, dtype: torch.dtype) -> dict[str, Any]:
    """FLOPs of forward and forward + backward, counted on the meta device."""
    meta = torch.device("meta")
    model = build(arch, meta, dtype)
    x = torch.empty(shape, device=meta, dtype=dtype)
    model.eval()
    with torch.no_grad():
        fwd, per_op = count_flops(lambda: model(x))
    model.train()
    xg = x.clone().requires_grad_(True)

    def step() -> None:
        out = model(xg)
        out.backward(torch.empty_like(out))

    fwdbwd, _ = count_flops(step)
    conv = sum(n for op, n in per_op.items() if "convolution" in op)
    return {"fwd_flops": fwd, "fwdbwd_flops": fwdbwd, "fwd_conv_flop_share": conv / fwd}


def _call_no_grad(fn: Callable[[Tensor], Tensor], x: Tensor) -> None:
    with torch.no_grad():
        fn(x)


def _clear_grads(model: torch.nn.Module, x: Tensor) -> None:
    """Start a measured step from no gradients, so that their memory counts in it."""
    model.zero_grad(set_to_none=True)
    x.grad = None


def _train_step(model: torch.nn.Module, x: Tensor, grad: Tensor | None) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.backward(grad if grad is not None else torch.ones_like(out))

    return step


def bench_model(
    arch: str, shape: Shape, device: torch.device, dtype: torch.dtype, args: argparse.Namespace
) -> dict[str, Any]:
    b, t, _, h, w = shape
    frames = b * t
    row: dict[str, Any] = {"arch": arch, "input": list(shape)}

    def log(msg: str) -> None:
        print(f"  [{arch} {shape}] {msg}", file=sys.stderr, flush=True)

    torch.manual_seed(0)
    model = build(arch, device, dtype)
    row["params"] = sum(p.numel() for p in model.parameters())
    row.update(model_flops(arch, shape, dtype))
    x = torch.randn(shape, device=device, dtype=dtype)

    # forward (eval, no grad): one profiled call (memory, conv time), then timed calls
    model.eval()

    def forward() -> Tensor:
        with torch.no_grad():
            return model(x)

    log("forward")
    forward()  # first call: lazy init outside the measured peak
    with peak_memory(device) as mem:
        out = forward()
    row["fwd_peak_bytes"] = mem["peak"]
    row["fwd_conv_ms"] = mem["conv_us"] / 1e3
    # both from the same (profiled) call, so that other load cannot skew the ratio
    row["fwd_profiled_ms"] = mem["wall_us"] / 1e3
    _timed(row, "fwd_ms", run_times(forward, device, args.runs, args.warmup))
    grad = torch.randn_like(out)
    del out

    if not args.no_backward:
        log("forward + backward")
        model.train()
        xg = x.clone().requires_grad_(True)
        step = _train_step(model, xg, grad)
        step()
        _clear_grads(model, xg)
        with peak_memory(device) as mem:
            step()
        row["fwdbwd_peak_bytes"] = mem["peak"]
        _timed(row, "fwdbwd_ms", run_times(step, device, args.runs, args.warmup))
        model.zero_grad(set_to_none=True)

    if args.checkpoint and not args.no_backward:
        log("forward + backward, checkpointed blocks")
        ckpt = build(arch, device, dtype, checkpoint=True)
        ckpt.load_state_dict(model.state_dict())
        ckpt.train()
        step = _train_step(ckpt, xg, grad)
        step()
        _clear_grads(ckpt, xg)
        with peak_memory(device) as mem:
            step()
        row["ckpt_fwdbwd_peak_bytes"] = mem["peak"]
        _timed(row, "ckpt_fwdbwd_ms", run_times(step, device, args.ckpt_runs, 0))
        del ckpt, step
    half_ok = h % 2 == 0 and w % 2 == 0
    try:
        model.check_input(torch.empty(b, t, shape[2], h // 2, w // 2, device="meta"))
    except stcnnt_dsl.STCNNTError:
        half_ok = False
    if args.checkpoint and half_ok:
        log("forward at half H and W (memory scaling)")
        half = torch.randn(b, t, shape[2], h // 2, w // 2, device=device, dtype=dtype)
        model.eval()
        with torch.no_grad():
            model(half)
            with peak_memory(device) as mem:
                model(half)
        row["fwd_peak_bytes_half_hw"] = mem["peak"]
        row["fwd_peak_ratio_2x_hw"] = row["fwd_peak_bytes"] / mem["peak"]

    for mode in args.compile:
        log(f"torch.compile forward ({mode})")
        model.eval()
        # "freeze": inductor's inference setting (weights folded as constants; on CPU
        # convolutions prepacked and fused with their element-wise neighbours).
        with torch._inductor.config.patch(freezing=mode == "freeze"):
            compiled = torch.compile(model)
            start = time.perf_counter()
            with torch.no_grad():
                compiled(x)
            synchronize(device)
            row[f"compile_{mode}_s"] = time.perf_counter() - start
            times = run_times(functools.partial(_call_no_grad, compiled, x), device, args.runs, 1)
        _timed(row, f"compiled_{mode}_fwd_ms", times)
        ms = row[f"compiled_{mode}_fwd_ms"]
        if ms < row.get("compiled_fwd_ms", float("inf")):
            row["compiled_fwd_ms"], row["compiled_mode"] = ms, mode
        del compiled
        torch._dynamo.reset()

    # derived figures
    row["fwd_images_per_s"] = frames / (row["fwd_ms"] / 1e3)
    row["fwd_gflops_per_s"] = row["fwd_flops"] / (row["fwd_ms"] / 1e3) / 1e9
    row["fwd_over_conv_time"] = (
        row["fwd_profiled_ms"] / row["fwd_conv_ms"] if row["fwd_conv_ms"] else None
    )
    if "fwdbwd_ms" in row:
        row["train_images_per_s"] = frames / (row["fwdbwd_ms"] / 1e3)
        row["fwdbwd_gflops_per_s"] = row["fwdbwd_flops"] / (row["fwdbwd_ms"] / 1e3) / 1e9
        row["fwdbwd_over_fwd_time"] = row["fwdbwd_ms"] / row["fwd_ms"]
    if "ckpt_fwdbwd_peak_bytes" in row:
        row["ckpt_peak_saving"] = 1 - row["ckpt_fwdbwd_peak_bytes"] / row["fwdbwd_peak_bytes"]
    for mode in args.compile:
        row[f"compile_{mode}_fwd_speedup"] = row["fwd_ms"] / row[f"compiled_{mode}_fwd_ms"]
        row[f"compile_{mode}_fwd_speedup_min"] = (
            row["fwd_min_ms"] / row[f"compiled_{mode}_fwd_min_ms"]
        )
    if "compiled_fwd_ms" in row:
        row["compile_fwd_speedup"] = row["fwd_ms"] / row["compiled_fwd_ms"]
    return row


# ------------------------------------------------------------------------------- output


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print("stcnnt-dsl backbone benchmark")
    keys = ("label", "commit", "package", "torch", "python", "machine", "device", "dtype",
            "threads", "allocator", "runs")  # fmt: skip
    for key in keys:
        print(f"  {key:18s} {env[key]}")
    mm, cv = env["matmul_roof_gflops_per_s"], env["conv_roof_gflops_per_s"]
    print(f"  {'matmul roof':18s} {mm:.1f} GFLOP/s (start {env['matmul_roof_start']:.1f}, "
          f"end {env['matmul_roof_end']:.1f})")  # fmt: skip
    print(f"  {'3x3 conv roof':18s} {cv:.1f} GFLOP/s (start {env['conv_roof_start']:.1f}, "
          f"end {env['conv_roof_end']:.1f})")  # fmt: skip
    print()
    head = (
        f"{'arch':14s} {'input':16s} {'params':>7s} {'fwd GF':>8s} {'fwd ms':>9s} "
        f"{'img/s':>7s} {'GF/s':>6s} {'%mm':>5s} {'%conv':>5s} {'fwd/cv':>6s} "
        f"{'f+b ms':>9s} {'f+b/f':>5s} {'%mm':>5s} {'fwdMiB':>6s} {'f+bMiB':>6s} "
        f"{'ckMiB':>6s} {'save':>5s} {'2xHW':>5s} {'cmp ms':>9s} {'cmp x':>5s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = "x".join(map(str, r["input"]))
        fb_roof = r.get("fwdbwd_gflops_per_s")
        print(
            f"{r['arch']:14s} {shape:16s} {r['params'] / 1e6:6.2f}M "
            f"{r['fwd_flops'] / 1e9:8.1f} {r['fwd_ms']:9.1f} {r['fwd_images_per_s']:7.2f} "
            f"{r['fwd_gflops_per_s']:6.1f} {r['fwd_gflops_per_s'] / mm:5.0%} "
            f"{r['fwd_gflops_per_s'] / cv:5.0%} {_num(r['fwd_over_conv_time'], '6.2f')} "
            f"{_num(r.get('fwdbwd_ms'), '9.1f')} {_num(r.get('fwdbwd_over_fwd_time'), '5.2f')} "
            f"{'-' if fb_roof is None else format(fb_roof / mm, '5.0%')} "
            f"{_mib(r['fwd_peak_bytes']):>6s} {_mib(r.get('fwdbwd_peak_bytes')):>6s} "
            f"{_mib(r.get('ckpt_fwdbwd_peak_bytes')):>6s} "
            f"{_num(r.get('ckpt_peak_saving'), '5.0%')} "
            f"{_num(r.get('fwd_peak_ratio_2x_hw'), '5.2f')} "
            f"{_num(r.get('compiled_fwd_ms'), '9.1f')} {_num(r.get('compile_fwd_speedup'), '5.2f')}"
        )
    print()
    print(LEGEND)


LEGEND = """\
GF = GFLOP (2 per multiply-add, FlopCounterMode); img/s = B*T frames per second (forward);
%mm, %conv = achieved GFLOP/s over the same run's matmul / 3x3-conv roof; fwd/cv = forward
time over the summed time of its convolutions (one profiled call); f+b/f = forward+backward
over forward time; MiB = peak tensor memory above the step's start (fwd: eval, no grad;
f+b: a training step; ck: every block checkpointed); save = 1 - ck/f+b; 2xHW = forward
peak at H, W over the peak at H/2, W/2; cmp = torch.compile forward (best mode, see the
JSON); cmp x = eager forward / compiled forward. Times are medians; the JSON also has the
fastest run of each (*_min_ms)."""


def markdown_table(env: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (for docs/performance.md)."""
    mm = env["matmul_roof_gflops_per_s"]
    lines = [
        "| arch | input | fwd ms | img/s | GFLOP/s (% matmul roof) | fwd / conv time "
        "| fwd+bwd ms (x fwd) | peak fwd / fwd+bwd / checkpointed MiB | 2x H,W memory "
        "| compiled fwd ms (x eager) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        compiled = (
            f"{r['compiled_fwd_ms']:.0f} ({r['compile_fwd_speedup']:.2f}x, {r['compiled_mode']})"
            if "compiled_fwd_ms" in r
            else "-"
        )
        fb = f"{r['fwdbwd_ms']:.0f} ({r['fwdbwd_over_fwd_time']:.2f}x)" if "fwdbwd_ms" in r else "-"
        mem = " / ".join(
            _mib(r.get(k))
            for k in ("fwd_peak_bytes", "fwdbwd_peak_bytes", "ckpt_fwdbwd_peak_bytes")
        )
        lines.append(
            f"| {r['arch']} | {'x'.join(map(str, r['input']))} | {r['fwd_ms']:.0f} "
            f"| {r['fwd_images_per_s']:.2f} | {r['fwd_gflops_per_s']:.0f} "
            f"({r['fwd_gflops_per_s'] / mm:.0%}) | {_num(r['fwd_over_conv_time'], '.2f')} "
            f"| {fb} | {mem} | {_num(r.get('fwd_peak_ratio_2x_hw'), '.2f')}x | {compiled} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------- main


def _shape(text: str) -> Shape:
    parts = [int(p) for p in text.replace("x", ",").split(",")]
    if len(parts) != 5 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected B,T,C,H,W (5 positive ints), got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def _commit() -> str:
    """The git commit of the stcnnt_dsl being measured (not of this script)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(stcnnt_dsl.__file__)))
    try:
        out = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        return out + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _reexec_with_allocator(args: argparse.Namespace) -> None:
    """Run this script again with the tuned glibc allocator unless already set."""
    if args.allocator != "tuned" or os.environ.get("GLIBC_TUNABLES") == TUNED_GLIBC:
        return
    env = {**os.environ, "GLIBC_TUNABLES": TUNED_GLIBC}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--arch", nargs="+", default=None, help="architectures (default: every bundled one)"
    )
    parser.add_argument(
        "--input",
        action="append",
        type=_shape,
        help="B,T,C,H,W (repeatable; default 1,16,1,128,128 on CPU, 1,16,1,256,256 on CUDA)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--runs", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs")
    parser.add_argument(
        "--ckpt-runs", type=int, default=1, help="timed runs of the checkpointed training step"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument(
        "--no-checkpoint",
        dest="checkpoint",
        action="store_false",
        help="skip the checkpointing and memory-scaling measurements",
    )
    parser.add_argument(
        "--compile",
        nargs="*",
        choices=["default", "freeze"],
        default=["default", "freeze"],
        help="torch.compile modes to time (default: both; none: skip). freeze: "
        "torch._inductor.config.freezing=True, inductor's inference setting",
    )
    parser.add_argument(
        "--allocator",
        choices=["tuned", "default"],
        default="tuned",
        help="tuned: re-run with GLIBC_TUNABLES keeping freed memory "
        "(default); default: leave the environment as it is",
    )
    parser.add_argument("--label", default="", help="free text stored with the results")
    parser.add_argument(
        "--markdown", action="store_true", help="also print the results as a Markdown table"
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    args = parser.parse_args(argv)  # fmt: skip
    if argv is None:
        _reexec_with_allocator(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    archs = args.arch or stcnnt_dsl.list_architectures()
    shapes = args.input or [DEFAULT_INPUT[device.type]]

    print("measuring the roof ...", file=sys.stderr, flush=True)
    mm0, cv0 = matmul_roof(device, dtype), conv_roof(device, dtype)
    rows = [bench_model(a, s, device, dtype, args) for s in shapes for a in archs]
    mm1, cv1 = matmul_roof(device, dtype), conv_roof(device, dtype)
    env = {
        "label": args.label,
        "commit": _commit(),
        "package": os.path.dirname(os.path.abspath(stcnnt_dsl.__file__)),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, load "
        f"{os.getloadavg()[0]:.2f} at the end",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "allocator": os.environ.get("GLIBC_TUNABLES", "glibc defaults (GLIBC_TUNABLES unset)"),
        "runs": f"median of {args.runs} after {args.warmup} warm-up (+1 profiled call)",
        "matmul_roof_start": mm0,
        "matmul_roof_end": mm1,
        "matmul_roof_gflops_per_s": max(mm0, mm1),
        "conv_roof_start": cv0,
        "conv_roof_end": cv1,
        "conv_roof_gflops_per_s": max(cv0, cv1),
    }
    for r in rows:
        r["fwd_matmul_roof_fraction"] = r["fwd_gflops_per_s"] / env["matmul_roof_gflops_per_s"]
        r["fwd_conv_roof_fraction"] = r["fwd_gflops_per_s"] / env["conv_roof_gflops_per_s"]
        if "fwdbwd_gflops_per_s" in r:
            r["fwdbwd_matmul_roof_fraction"] = (
                r["fwdbwd_gflops_per_s"] / env["matmul_roof_gflops_per_s"]
            )
    print_table(env, rows)
    if args.markdown:
        print()
        print(markdown_table(env, rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": rows}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
