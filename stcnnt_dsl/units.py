"""Numbers for people: 1.23 M, 4.5 GiB. The one formatter of counts and sizes that
the messages, reports and commands print (base layer: the graph's guard uses it)."""

from __future__ import annotations

import math

__all__ = ["human", "human_bytes"]


def human(value: float, unit: str = "", base: int = 1000) -> str:
    """1234567 -> '1.23 M' (base 1000) or bytes with base 1024 -> '1.18 Mi'."""
    prefixes = ["", "k", "M", "G", "T", "P"] if base == 1000 else ["", "Ki", "Mi", "Gi", "Ti"]
    if value == 0:
        return f"0 {unit}".strip()
    k = min(int(math.log(abs(value), base)), len(prefixes) - 1) if abs(value) >= 1 else 0
    scaled = value / base**k
    text = f"{scaled:.3g}" if k else f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"
    return f"{text} {prefixes[k]}{unit}".strip()


def human_bytes(n: float) -> str:
    """A size in bytes, binary prefixes: 1288490188 -> '1.2 GiB'."""
    return human(n, "B", 1024)
