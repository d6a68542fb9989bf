#!/usr/bin/env python
"""ONNX Runtime against eager PyTorch on CPU: the forward of an exported backbone.

Exports the architecture once with `stcnnt_dsl.export` (one file with dynamic B, T, H,
W serves every input) and then, for every input, times the eager forward (eval,
no_grad, float32: the library's fused CPU inference path) and ONNX Runtime's
(CPUExecutionProvider) in the same process, with the same number of threads for both
(`torch.set_num_threads`, ORT `intra_op_num_threads`), as interleaved pairs: each pair
runs both once, alternating which goes first, so that other load on the machine hits
both alike. Reports the median and the fastest time of each and the median of the
per-pair ratios ORT / eager (below 1: ONNX Runtime is faster).

ORT's worker threads do not spin between runs here (`session.intra_op.allow_spinning`
0; `--ort-spinning` turns it back on): a spinning pool keeps burning the cores after
`run` returns, which would slow the eager call that follows it.

`--profile` adds ONNX Runtime's own profile of a few runs (`SessionOptions.
enable_profiling`): time per operator type, the place to look when ORT is slower.

Allocator: as tools/bench.py, this re-runs itself with glibc's malloc tuned to keep
freed memory (large blocks are otherwise returned to the OS and faulted in again on the
next forward, which slowed eager PyTorch by up to 6x for a fresh 128 MiB tensor);
`--allocator default` keeps the environment. The setting is stored in the JSON.

The machine this runs on matters: on a shared machine both timings move with the other
load; take final numbers on a quiet one.

Usage:
    python tools/bench_export.py                             # unet, 1x8x1x64x64 and 1x16x1x128x128
    python tools/bench_export.py --pairs 9 --json export-bench.json
    python tools/bench_export.py --arch hrnet --input 1,4,1,128,128 --profile
    python tools/bench_export.py --export-only --arch unet-2d-small,unet   # export time
    python tools/bench_export.py --export-only --variants full-optimiser,retrace,one-trace
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import stcnnt_dsl
from stcnnt_dsl.machine import cpu

TUNED_GLIBC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
DEFAULT_INPUTS = ("1,8,1,64,64", "1,16,1,128,128")
OPT_LEVELS = ("all", "extended", "basic", "disable")


def _session(path: Path, args: argparse.Namespace, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[args.opt_level]
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if args.ort_spinning else "0"
    )
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model, session, shape: tuple[int, ...], args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved pairs of eager and ORT forwards on one input."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    feed = {"input": x.numpy()}
    with torch.no_grad():
        want = model(x)
        (got,) = session.run(None, feed)
        error = ((torch.from_numpy(got) - want).abs().max() / want.abs().max()).item()
        for _ in range(args.warmup):
            model(x)
            session.run(None, feed)
        eager, onnx = [], []
        for i in range(args.pairs):
            steps = [("eager", lambda: model(x)), ("ort", lambda: session.run(None, feed))]
            for name, fn in steps if i % 2 == 0 else steps[::-1]:
                (eager if name == "eager" else onnx).append(_time(fn))
    ratios = [o / e for o, e in zip(onnx, eager, strict=True)]
    return {
        "input": list(shape),
        "relative_error": error,
        "eager_ms": [1e3 * t for t in eager],
        "ort_ms": [1e3 * t for t in onnx],
        "eager_median_ms": 1e3 * statistics.median(eager),
        "ort_median_ms": 1e3 * statistics.median(onnx),
        "eager_min_ms": 1e3 * min(eager),
        "ort_min_ms": 1e3 * min(onnx),
        "ratio_of_medians": statistics.median(onnx) / statistics.median(eager),
        "median_pair_ratio": statistics.median(ratios),
    }


def ort_profile(path: Path, shape: tuple[int, ...], args: argparse.Namespace) -> dict[str, Any]:
    """ONNX Runtime's time per operator type over 3 profiled runs (after one untimed)."""
    with tempfile.TemporaryDirectory() as folder:
        session = _session(path, args, profile_prefix=str(Path(folder) / "ort"))
        feed = {"input": torch.randn(shape).numpy()}
        session.run(None, feed)
        for _ in range(3):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sum(1 for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    per_op: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
            calls[e["args"]["op_name"]] += 1
    total = sum(per_op.values())
    return {
        "input": list(shape),
        "runs": runs,
        "node_ms_per_run": total / runs / 1e3,
        "ops": [
            {
                "op": op,
                "ms_per_run": us / runs / 1e3,
                "share": us / total,
                "calls_per_run": calls[op] // runs,
            }
            for op, us in per_op.most_common(args.top)
        ],
    }


def commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
    except OSError:
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": cpu().describe(),
        "logical_cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
    }


# The export's settings being compared (`stcnnt_dsl.tools.export` module attributes):
# "full-optimiser" is the export before issue 23's first session, "cached-trace" before
# its third (main at f92d868), "retrace" before its fourth (torch's decomposition
# re-trace of the whole graph: what the library does, as "current"), "one-trace" the
# opt-in translation of torch.export's graph as it is (`RETRACE = False`: less export
# CPU, a file that runs slower).
VARIANTS: dict[str, dict[str, Any]] = {
    "full-optimiser": {"OPTIMIZE": "full", "FAKE_TENSOR_CACHE": True, "RETRACE": True},
    "cached-trace": {"OPTIMIZE": "lean", "FAKE_TENSOR_CACHE": True, "RETRACE": True},
    "retrace": {"OPTIMIZE": "lean", "FAKE_TENSOR_CACHE": False, "RETRACE": True},
    "one-trace": {"OPTIMIZE": "lean", "FAKE_TENSOR_CACHE": False, "RETRACE": False},
}
VARIANTS["current"] = VARIANTS["retrace"]
PHASES = {"_trace": "trace", "_to_onnx": "onnx", "_optimize": "optimise", "_verify": "ort_check"}


def export_once(arch: str, variant: str, threads: int) -> dict[str, Any]:
    """One export of `arch` with the settings of `variant`, in this (fresh) process:
    seconds of wall-clock and of this process's CPU per phase. `onnx` is torch's
    translation (with torch's decomposition re-trace of the graph in "retrace") and
    includes `optimise`."""
    from stcnnt_dsl.tools import export as exporter

    torch.set_num_threads(threads)
    for name, value in VARIANTS[variant].items():
        setattr(exporter, name, value)
    spent: dict[str, list[float]] = {}
    for name in PHASES:
        inner = getattr(exporter, name)

        def timed(*a, _inner=inner, _name=name, **k):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return _inner(*a, **k)
            finally:
                spent[_name] = [time.perf_counter() - wall, time.process_time() - cpu]

        setattr(exporter, name, timed)
    with tempfile.TemporaryDirectory() as folder:
        wall, cpu = time.perf_counter(), time.process_time()
        stcnnt_dsl.export(arch, Path(folder) / f"{arch}.onnx")
        total = [time.perf_counter() - wall, time.process_time() - cpu]
    row: dict[str, Any] = {"arch": arch, "variant": variant}
    for key, (wall_s, cpu_s) in [("total", total)] + [(PHASES[n], spent[n]) for n in PHASES]:
        row[f"{key}_s"] = round(wall_s, 1)
        row[f"{key}_cpu_s"] = round(cpu_s, 1)
    return row


def export_times(args: argparse.Namespace) -> int:
    """Seconds per export phase for each --variant, side by side: every export runs in a
    fresh process (as `stcnnt export` does: no cache of an earlier export helps it), and
    the variants alternate per round, so other load on the machine hits them alike.
    CPU seconds (this process's) move less with that load than wall-clock ones."""
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    rows = []
    for arch in args.arch.split(","):
        for round_ in range(args.rounds):
            for variant in variants if round_ % 2 == 0 else variants[::-1]:
                command = [sys.executable, __file__, "--export-one", arch, "--variant", variant,
                           "--threads", str(args.threads)]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{arch} ({variant}) failed:\n{done.stderr[-2000:]}")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    out = {"commit": commit(), "threads": args.threads, "torch": torch.__version__,
           "machine": machine(), "exports": rows}  # fmt: skip
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="unet", help="architecture (default: unet)")
    parser.add_argument(
        "--input",
        action="append",
        metavar="B,T,C,H,W",
        help=f"input shape, repeatable (default: {' and '.join(DEFAULT_INPUTS)})",
    )
    parser.add_argument("--pairs", type=int, default=7, help="timed pairs per input (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pairs first (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    parser.add_argument(
        "--opt-level",
        choices=OPT_LEVELS,
        default="all",
        help="ONNX Runtime graph optimisation level (default: all)",
    )
    parser.add_argument(
        "--ort-spinning", action="store_true", help="let ORT's worker threads spin between runs"
    )
    parser.add_argument("--profile", action="store_true", help="add ORT's per-operator profile")
    parser.add_argument("--top", type=int, default=15, help="operator types in the profile")
    parser.add_argument("--onnx", metavar="FILE", help="keep the exported file here")
    parser.add_argument("--json", metavar="FILE", help="write the results here (and stdout)")
    parser.add_argument(
        "--allocator",
        choices=("tuned", "default"),
        default="tuned",
        help="glibc malloc settings (see the module docstring)",
    )
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="time the export itself (trace, translation, optimisation, ORT check) of each "
        "--arch with each of --variants, interleaved, each in a fresh process; no inference "
        "timing",
    )
    parser.add_argument(
        "--variants",
        default="retrace,one-trace",
        help="with --export-only: the export settings compared, from "
        f"{', '.join(VARIANTS)} (default: retrace,one-trace)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="with --export-only: exports per variant"
    )
    parser.add_argument("--export-one", metavar="ARCH", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="current", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export_one:
        print(json.dumps(export_once(args.export_one, args.variant, args.threads)))
        return 0
    if args.export_only:
        return export_times(args)

    if args.allocator == "tuned" and os.environ.get("GLIBC_TUNABLES") != TUNED_GLIBC:
        env = dict(os.environ, GLIBC_TUNABLES=TUNED_GLIBC)
        return subprocess.call([sys.executable, *sys.argv], env=env)

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split(",")) for s in (args.input or DEFAULT_INPUTS)]
    model = stcnnt_dsl.build(args.arch, seed=0).eval()
    result: dict[str, Any] = {
        "arch": args.arch,
        "commit": commit(),
        "threads": args.threads,
        "opt_level": args.opt_level,
        "ort_spinning": args.ort_spinning,
        "allocator": os.environ.get("GLIBC_TUNABLES", "default"),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(args.onnx) if args.onnx else Path(folder) / f"{args.arch}.onnx"
        start = time.perf_counter()
        exported = stcnnt_dsl.export(model, path, shapes[0])
        result["export_s"] = time.perf_counter() - start
        result["onnx_bytes"] = path.stat().st_size
        session = _session(path, args)
        result["results"] = [measure(model, session, shape, args) for shape in shapes]
        if args.profile:
            result["ort_profile"] = [ort_profile(path, shape, args) for shape in shapes]
    result["exported_inputs"] = {k: list(v) for k, v in exported.inputs.items()}
    result["machine"]["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
