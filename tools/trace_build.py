"""How many of our modules one `build` passes through, and how often it goes back to a
module it had left (a measure of data flowing one way, issue 20).

Every Python call inside `stcnnt_dsl` during `build(ARCH)` is recorded (sys.setprofile,
after a warm-up build so that imports and caches are not counted) by the module of the
called function. "Modules" is the number of distinct modules called; "returns" counts
the calls into a module after calls into other modules since the last call into it
(the sequence of callee modules with runs collapsed, minus its distinct entries).

    python tools/trace_build.py unet            # modules, returns, calls
    python tools/trace_build.py unet --list     # the modules in first-call order
    python tools/trace_build.py unet --packages # the same for layers (language, graph, nn)
    python tools/trace_build.py unet --edges    # the most frequent returns, from -> to
"""

from __future__ import annotations

import argparse
import collections
import sys
from typing import Any


def trace(arch: str) -> list[str]:
    import stcnnt_dsl

    stcnnt_dsl.build(arch, seed=0)  # warm-up: imports, parsers and caches
    modules: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            name = frame.f_globals.get("__name__", "")
            if name.startswith("stcnnt_dsl"):
                modules.append(name)

    sys.setprofile(profile)
    try:
        stcnnt_dsl.build(arch, seed=0)
    finally:
        sys.setprofile(None)
    return modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", nargs="?", default="unet")
    parser.add_argument("--list", action="store_true", help="print the modules in order")
    parser.add_argument(
        "--packages", action="store_true",
        help="count layers (stcnnt_dsl.language, .graph, .nn, ...) instead of modules",
    )  # fmt: skip
    parser.add_argument("--edges", action="store_true", help="the most frequent returns")
    args = parser.parse_args()
    calls = trace(args.arch)
    if args.packages:
        calls = [".".join(m.split(".")[:2]) for m in calls]
    runs = [m for i, m in enumerate(calls) if i == 0 or calls[i - 1] != m]
    distinct = list(dict.fromkeys(runs))
    print(f"build({args.arch!r}): {len(distinct)} modules, {len(runs) - len(distinct)} returns "
          f"to a module left earlier, {len(calls)} calls")  # fmt: skip
    if args.list:
        print("\n".join(distinct))
    if args.edges:
        seen: set[str] = set()
        edges: collections.Counter[tuple[str, str]] = collections.Counter()
        for before, module in zip(["", *runs], runs, strict=False):
            if module in seen:
                edges[(before, module)] += 1
            seen.add(module)
        for (before, module), count in edges.most_common(15):
            print(f"{count:6d}  {before} -> {module}")


if __name__ == "__main__":
    main()
