"""Benchmark of `stcnnt plan`: predicted against measured training-step peak, and speed.

    python tools/bench_plan.py            # every bundled architecture and 3 planned ones
    python tools/bench_plan.py --quick    # fewer sizes

Measured: in a fresh process per (architecture, input), build the model, run one
training step (forward, loss, backward, AdamW step) to load the kernels, drop the
gradients and the optimizer, return freed heap to the OS (`malloc_trim`), reset the
resident-set high-water mark (`/proc/self/clear_refs`), run one step from a fresh AdamW
and read how far the resident set grew (VmHWM minus VmRSS before). The weights are
resident before the step; the prediction compared is `Plan`'s step growth
(`MemoryEstimate.step_bytes`: gradients, AdamW state, saved activations, workspace), and
the total the budget is checked against adds the weights. One thread: the machine is
shared. Also times `plan()` without search and `--search 200` without proxy.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys

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


def _fresh(arch: str, shape: tuple[int, ...]) -> int:
    text = subprocess.run(
        [sys.executable, __file__, WORKER, arch, ",".join(map(str, shape))],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return int(text.strip().splitlines()[-1])


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == WORKER:
    print(measure(sys.argv[2], tuple(int(v) for v in sys.argv[3].split(","))))
    sys.exit(0)
