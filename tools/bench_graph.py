#!/usr/bin/env python
"""How fast the model graph answers: `check`, `infer_shapes`, `profile(runs=0)` and
`to_dot` on the bundled architectures, without building or running a model's forward
for the first two.

With `--before PATH` (a checkout of an earlier commit) the same measurements run in a
second process importing the library from PATH, and the table puts both side by side:
the comparison the model graph's issue asked for. Each number is the median of `--runs`
calls after one warm-up call (so parsing caches and lazy imports are warm in both).

Usage:
    python tools/bench_graph.py
    git worktree add /tmp/before <commit>
    python tools/bench_graph.py --before /tmp/before --json graph.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

ARCHS = ("unet", "hrnet", "llm", "reference-unet")
SHAPE = (1, 16, 1, 256, 256)


def _median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up: imports, caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(archs: tuple[str, ...], shape: tuple[int, ...], runs: int) -> dict[str, Any]:
    """{arch: {operation: milliseconds}} for the library importable from sys.path."""
    import stcnnt_dsl

    out: dict[str, Any] = {}
    for arch in archs:
        spec = stcnnt_dsl.load_spec(arch)
        model = stcnnt_dsl.build(spec)
        out[arch] = {
            "check": _median_ms(lambda s=spec: stcnnt_dsl.check(s, shape), runs),
            "infer_shapes": _median_ms(lambda s=spec: stcnnt_dsl.infer_shapes(s, shape), runs),
            "profile": _median_ms(lambda m=model: stcnnt_dsl.profile(m, shape, runs=0), runs),
            "to_dot": _median_ms(lambda m=model: stcnnt_dsl.to_dot(m), runs),
        }
    return out


def _measure_elsewhere(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """The same measurements, in a fresh process that imports the library from `path`."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(path)}
    cmd = [sys.executable, __file__, "--runs", str(args.runs), "--input",
           ",".join(map(str, args.input)), "--arch", *args.arch, "--raw"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"--before {path}: the measurement failed:\n{done.stderr}")
    return json.loads(done.stdout)


def _cpu() -> str:
    from stcnnt_dsl.machine import cpu  # this checkout's reader (--before imports another)

    return cpu().describe()


def print_table(now: dict[str, Any], before: dict[str, Any] | None) -> None:
    ops = ("check", "infer_shapes", "profile", "to_dot")
    head = ["arch", "operation", "now ms"] + (["before ms", "speed-up"] if before else [])
    rows = [head]
    for arch, numbers in now.items():
        for op in ops:
            row = [arch, op, f"{numbers[op]:.1f}"]
            if before:
                old = before.get(arch, {}).get(op)
                row += (
                    ["-", "-"]
                    if old is None
                    else [
                        f"{old:.1f}",
                        f"{old / numbers[op]:.{0 if old >= 10 * numbers[op] else 1}f}x",
                    ]
                )
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for k, row in enumerate(rows):
        print("  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in
                        enumerate(zip(row, widths, strict=True))))  # fmt: skip
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=list(ARCHS))
    parser.add_argument("--input", type=lambda s: tuple(int(v) for v in s.split(",")),
                        default=SHAPE, help="B,T,C,H,W (default 1,16,1,256,256)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", metavar="PATH", help="a checkout to compare with")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers here")
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    archs = tuple(args.arch)
    now = measure(archs, args.input, args.runs)
    if args.raw:
        print(json.dumps(now))
        return 0
    before = _measure_elsewhere(args.before, args) if args.before else None
    print(f"{_cpu()}; input {'x'.join(map(str, args.input))}; median of {args.runs}")
    print_table(now, before)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": _cpu(), "input": args.input, "now": now, "before": before}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
