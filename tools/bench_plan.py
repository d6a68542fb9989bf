"""Benchmark of `stcnnt plan`: predicted against measured training-step peak, and speed.

    python tools/bench_plan.py            # every bundled architecture and 3 planned ones
    python tools/bench_plan.py --quick    # fewer sizes

Measured: in a fresh process per (architecture, input), build the model, run one
training step (forward, loss, backward, AdamW step) to load the kernels, drop the
gradients and the optimizer, return freed heap to the OS (`malloc_trim`), reset the
resident-set high-water mark (`/proc/self/clear_refs`), run one step from a fresh AdamW
and read how far the resident set grew (VmHWM minus VmRSS before), with glibc's mmap
threshold fixed (`MALLOC_ENV`: the resident set then follows the tensors). The weights are
resident before the step; the prediction compared is `Plan`'s step growth
(`MemoryEstimate.step_bytes`: gradients, AdamW state, saved activations, workspace), and
the total the budget is checked against adds the weights. One thread: the machine is
shared. Also times `plan()` without search and `--search 200` without proxy.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import time

WORKER = "--worker"


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        return int(re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M).group(1)) * 1024


def measure(arch: str, shape: tuple[int, ...]) -> int:
    """The resident-set growth of one training step (run in a fresh process)."""
    import torch

    from stcnnt_dsl import build

    torch.set_num_threads(1)
    libc = ctypes.CDLL("libc.so.6")
    model = build(arch, seed=0)
    x = torch.randn(shape)

    def step(optimizer: torch.optim.Optimizer) -> None:
        out = model(x)
        outs = out.values() if isinstance(out, dict) else [out]
        loss = sum(o.float().square().mean() for o in outs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(torch.optim.AdamW(model.parameters(), lr=1e-4))  # kernels loaded
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")
    base = _status("VmRSS")
    step(optimizer)
    return _status("VmHWM") - base


# glibc's allocator keeps freed blocks below its mmap threshold in the heap, and raises
# that threshold (up to 32 MiB) each time a larger block is freed, so with its defaults
# the resident set grows 1.3-1.6x past the tensors a step holds, depending on the order
# of allocations and frees: a fixed threshold maps every tensor of 64 KiB or more on its
# own and returns it when freed, so the resident set follows the tensors.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _fresh(arch: str, shape: tuple[int, ...]) -> int:
    text = subprocess.run(
        [sys.executable, __file__, WORKER, arch, ",".join(map(str, shape))],
        check=True, capture_output=True, text=True, env={**os.environ, **MALLOC_ENV},
    ).stdout  # fmt: skip
    return int(text.strip().splitlines()[-1])


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == WORKER:
    print(measure(sys.argv[2], tuple(int(v) for v in sys.argv[3].split(","))))
    sys.exit(0)


# The data sets the planned architectures come from (fingerprints as `Dataset.fingerprint`
# gives them): 2D, 2D+T cine, anisotropic 3D.
FINGERPRINTS = {
    "2d": {"cases": 40, "channels": ["ct"], "task": "segment", "classes": {"0": 0.9, "1": 0.1},
           "shape": {"median": [1, 256, 256]}, "spacing": {"median": [1.0, 0.8, 0.8]}},
    "2d+t": {"cases": 12, "channels": ["cine"], "task": "segment",
             "classes": {"0": 0.9, "1": 0.05, "2": 0.05},
             "shape": {"median": [12, 101, 117]}, "spacing": {"median": [1.0, 1.5, 1.5]}},
    "3d": {"cases": 20, "channels": ["t1", "t2"], "task": "segment",
           "classes": {"0": 0.95, "1": 0.05},
           "shape": {"median": [40, 160, 160]}, "spacing": {"median": [3.0, 1.0, 1.0]}},
}  # fmt: skip
BUDGET = "1GiB"


def cases(quick: bool) -> list[tuple[str, str, tuple[int, ...]]]:
    """(label, arch, input) to measure: every bundled architecture, and the architecture
    planned for each data set at three sizes (the plan's patch, and smaller ones)."""
    from stcnnt_dsl import dump_spec, list_architectures, plan
    from stcnnt_dsl.graph.build import build_graph

    out, second = [], []
    for label, fp in FINGERPRINTS.items():
        p = plan(fp, memory=BUDGET, device="cpu")
        t, h, w = p.patch
        c = p.spec.in_channels
        m = build_graph(p.spec).rule().multiple[0]
        half = (max(m, h // 2 // m * m), max(m, w // 2 // m * m))
        sizes = [(p.batch, t, c, h, w), (1, t, c, h, w), (1, max(1, t // 2), c, *half)]
        for shape in sizes[: 1 if quick else 3]:
            out.append((f"planned {label}", dump_spec(p.spec), shape))
    for name in list_architectures():
        g = build_graph(name)
        m = g.rule().multiple[0]
        side = max(64, -(-64 // m) * m)
        out.append((name, name, (1, 4, g.in_channels, side, side)))
        second.append((name, name, (2, 4, g.in_channels, side, side)))
    return out + ([] if quick else second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one size per architecture")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--only", metavar="TEXT", help="only the architectures named so")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N measurements")
    args = parser.parse_args()
    from stcnnt_dsl.graph.build import build_graph
    from stcnnt_dsl.machine import cpu
    from stcnnt_dsl.planner.memory import step_memory

    print(f"CPU: {cpu().describe()}; one thread per measurement; fresh process each")
    rows = []
    print(f"{'architecture':22s} {'input':18s} {'predicted':>10s} {'measured':>10s} error")
    todo = [c for c in cases(args.quick) if args.only is None or args.only in c[0]]
    for label, arch, shape in todo[args.skip :]:
        est = step_memory(build_graph(arch), shape, "cpu")
        measured = _fresh(arch, shape)
        err = (est.step_bytes - measured) / measured
        rows.append({"arch": label, "input": list(shape), "predicted_step": est.step_bytes,
                     "measured_step": measured, "weights": est.weights, "error": err})  # fmt: skip
        print(f"{label:22s} {'x'.join(map(str, shape)):18s} {est.step_bytes / 2**20:8.1f}Mi "
              f"{measured / 2**20:8.1f}Mi {100 * err:+6.1f}%", flush=True)  # fmt: skip
    worst = max(abs(r["error"]) for r in rows)
    print(f"largest error {100 * worst:.1f}% over {len(rows)} measurements")
    start = time.perf_counter()
    from stcnnt_dsl import plan

    plan(FINGERPRINTS["2d+t"], memory="8GiB")
    print(f"plan without search: {time.perf_counter() - start:.2f} s (wall, first call)")
    from stcnnt_dsl.planner.search import search

    start = time.perf_counter()
    front = search(FINGERPRINTS["2d+t"], memory="8GiB", trials=200)
    print(f"--search 200: {time.perf_counter() - start:.1f} s (wall), front of {len(front.points)}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
