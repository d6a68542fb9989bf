"""The CPU this process runs on: its model name and instruction-set flags, read once.

The one reader of /proc/cpuinfo: the per-machine choices (`nn.tuning`), the profile's
notes on bfloat16 and every benchmark's header name the CPU from here, so they cannot
disagree about which machine a number came from. Needs no torch."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CALIBRATION_VERSION",
    "CPU",
    "ENV_CACHE",
    "ENV_CALIBRATE",
    "ENV_TUNING",
    "SDPA_MIN_TOKENS_CPU",
    "agreed_cached_choice",
    "calibration_enabled",
    "cpu",
    "machine_key",
    "read_cpuinfo",
    "tuning_cache_path",
    "tuning_configured",
]

# CPU attention's kernel switch, the rule's default: fused SDPA from this many tokens,
# explicit or cache-chunked kernels below (`stcnnt_dsl.nn.functional.attend`). A machine
# may choose another (`stcnnt tune`, STCNNT_TUNING=attention=...: `nn.tuning.Choices.
# sdpa_min_tokens`); the graph's memory estimate is given the threshold in use.
SDPA_MIN_TOKENS_CPU = 32

# Where a machine's choices other than the rules come from (`stcnnt_dsl.nn.tuning` reads
# them; they live here so that asking whether there are any needs no torch).
ENV_TUNING = "STCNNT_TUNING"
ENV_CALIBRATE = "STCNNT_CALIBRATE"
ENV_CACHE = "STCNNT_CACHE_DIR"
# What the cache entries were measured with; entries of another version are not used
# (3: whole-model training steps by `stcnnt tune`, never at a first forward).
CALIBRATION_VERSION = 3


@dataclass(frozen=True)
class CPU:
    """`model`: the model name (`Intel(R) Xeon(R) Platinum 8480+`); `flags`: the
    kernel's feature flags of the first core (empty where /proc/cpuinfo is absent)."""

    model: str
    flags: frozenset[str]

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def amx(self) -> bool:
        return bool(self.flags & {"amx_tile", "amx_bf16"})

    @property
    def native_bf16(self) -> bool | None:
        """Whether bfloat16 runs natively (AVX512-BF16 or AMX); None: flags unknown."""
        return None if not self.flags else self.avx512_bf16 or "amx_bf16" in self.flags

    def features(self) -> str:
        """The vector features that decide our per-machine choices: `AVX-512, AMX`."""
        named = (("AVX2", self.avx2), ("AVX-512", self.avx512),
                 ("AVX512-BF16", self.avx512_bf16), ("AMX", self.amx))  # fmt: skip
        names = [name for name, present in named if present]
        return ", ".join(names) or "none of AVX2/AVX-512/AMX"

    def describe(self) -> str:
        """One line for a benchmark's header: model, features, logical cores."""
        return f"{self.model} ({self.features()}), {os.cpu_count()} logical cores"


def read_cpuinfo(text: str) -> CPU:
    """The CPU described by the text of a /proc/cpuinfo (the first core's lines)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return CPU(model or platform.processor() or platform.machine() or "unknown CPU", flags)


@functools.cache
def cpu() -> CPU:
    """This machine's CPU (read once per process)."""
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    return read_cpuinfo(text)


def tuning_cache_path() -> Path:
    """The file `stcnnt tune` writes its measured choices to."""
    if os.environ.get(ENV_CACHE):
        root = Path(os.environ[ENV_CACHE])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "stcnnt-dsl"
    else:
        root = Path.home() / ".cache" / "stcnnt-dsl"
    return root / "tuning.json"


def calibration_enabled() -> bool:
    """Whether the tune cache is read (STCNNT_CALIBRATE=0 ignores it)."""
    return os.environ.get(ENV_CALIBRATE, "1").strip().lower() not in ("0", "off", "false", "no")


def tuning_configured() -> bool:
    """Whether this process's choices may differ from the rules: STCNNT_TUNING is set or a
    tune cache is read. Without either, the rules apply, known without importing torch
    (a CPU plan stays fast)."""
    if os.environ.get(ENV_TUNING, "").strip():
        return True
    return calibration_enabled() and tuning_cache_path().exists()


def machine_key(torch_version: str, threads: int | str) -> str:
    """The tune cache's key: what a calibration is valid for (CPU model, torch, threads)."""
    return f"{cpu().model} | torch {torch_version} | {threads} threads"


def agreed_cached_choice(name: str) -> object | None:
    """The value of choice `name` in every current tune-cache entry for this CPU and the
    installed torch, whatever their thread counts; None where there is no such entry,
    they disagree, STCNNT_TUNING is set or the cache cannot be read (then ask
    `nn.tuning.choices()`, which imports torch and reports a bad cache). Needs no torch,
    so that a CPU plan on a tuned machine stays fast."""
    if os.environ.get(ENV_TUNING, "").strip() or not calibration_enabled():
        return None
    try:
        prefix = machine_key(importlib.metadata.version("torch"), "")[: -len(" threads")]
        data = json.loads(tuning_cache_path().read_text())
    except (OSError, ValueError, importlib.metadata.PackageNotFoundError):
        return None
    if not isinstance(data, dict):
        return None
    values = set()
    for key, entry in data.items():
        if key.startswith(prefix) and isinstance(entry, dict):
            if entry.get("version") == CALIBRATION_VERSION:
                values.add(json.dumps((entry.get("choices") or {}).get(name)))
    return json.loads(values.pop()) if len(values) == 1 else None
