"""Per-machine choices: the memory layout of feature maps (channels-last or NCHW, for
inference and for training separately), one Q/K/V convolution or three, and from how
many tokens CPU attention uses the fused SDPA kernel.

Which is fastest depends on the CPU and the torch build: on AVX-512 and AMX CPUs
oneDNN's channels-last convolutions win forward and backward; on AVX2-only CPUs their
backward is slower than NCHW's (measured: 86 vs 105 GFLOP/s for a 5x5 convolution's
forward + backward), while their forward still wins. So the layers ask `choices()`:

1. `STCNNT_TUNING` forces choices, e.g. `layout=nchw`, `layout_train=nchw,qkv=separate`,
   `attention=sdpa` (`matmul`, or a token count from which SDPA is used); a value it
   cannot read is an `STCNNTError`;
2. otherwise the choices `stcnnt tune` measured on this machine (`stcnnt_dsl.tools.tune`:
   training steps and forwards of a whole model with each option), cached in the user
   cache dir (`$STCNNT_CACHE_DIR`, else `$XDG_CACHE_HOME/stcnnt-dsl`, else
   `~/.cache/stcnnt-dsl`) under the CPU model, torch version and thread count;
   `STCNNT_CALIBRATE=0` ignores the cache;
3. the rules: channels-last, except NCHW for training on CPUs without AVX-512; one
   Q/K/V convolution; SDPA from 32 tokens.

Nothing here measures: measuring runs only when asked (`stcnnt tune`). Measured at the
first forward, as this module once did, it ran inside whatever the user had wrapped
around that forward (a profiler, a FLOP counter, a trace, a timed call) and counted
there, on whatever load the machine had at that moment, and it was too short to beat a
shared machine's noise (on an AVX2-only EPYC a two-second calibration chose a layout
whose training step was 6% slower than the rule's).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from ..errors import STCNNTError
from ..machine import (
    CALIBRATION_VERSION,
    ENV_CACHE,
    ENV_CALIBRATE,
    ENV_TUNING,
    SDPA_MIN_TOKENS_CPU,
    calibration_enabled,
    cpu,
)
from ..machine import machine_key as _key
from ..machine import tuning_cache_path as cache_path

__all__ = [
    "ENV_CACHE",
    "ENV_CALIBRATE",
    "ENV_TUNING",
    "LAYOUTS",
    "Choices",
    "cache_path",
    "choices",
    "interleaved_times",
    "machine_key",
    "read_cache_entry",
    "rules",
    "using",
    "write_cache_entry",
]

NEVER = 1 << 30  # sdpa_min_tokens that keeps CPU attention off SDPA
LAYOUTS = ("channels_last", "nchw")
QKV = ("fused", "separate")
TUNING_HELP = (
    "write comma-separated key=value with layout / layout_train / layout_infer = "
    "channels_last | nchw, qkv = fused | separate, attention = sdpa | matmul | <tokens "
    "from which SDPA is used>"
)


@dataclass(frozen=True)
class Choices:
    """How the layers run on this machine."""

    layout_infer: str = "channels_last"  # feature maps without autograd
    layout_train: str = "channels_last"  # feature maps when autograd records
    qkv: str = "fused"  # one C -> 3C convolution, or "separate": three C -> C
    sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU  # CPU attention: SDPA from this many tokens
    source: str = "rules"  # rules | calibrated | forced

    def channels_last(self, training: bool) -> bool:
        return (self.layout_train if training else self.layout_infer) == "channels_last"

    def problems(self) -> list[str]:
        """What is not a valid value (empty: all are)."""
        out = [f"{name}={getattr(self, name)!r}" for name in ("layout_infer", "layout_train")
               if getattr(self, name) not in LAYOUTS]  # fmt: skip
        if self.qkv not in QKV:
            out.append(f"qkv={self.qkv!r}")
        n = self.sdpa_min_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            out.append(f"sdpa_min_tokens={n!r}")
        return out


_lock = threading.Lock()
_active: Choices | None = None


def rules(flags: set[str] | None = None) -> Choices:
    """The choices without measuring: channels-last, except NCHW for training where the
    CPU has no AVX-512 (measured on an AVX2 EPYC; AVX-512 and AMX CPUs win with
    channels-last both ways). `flags`: another CPU's /proc/cpuinfo flags (default: this
    one's)."""
    capability = "DEFAULT"
    if flags is None:
        flags = set(cpu().flags)
        capability = torch.backends.cpu.get_cpu_capability()
    avx512 = "avx512f" in flags or capability.startswith("AVX512")
    if flags or capability != "DEFAULT":
        train = "channels_last" if avx512 else "nchw"
    else:  # not x86 (or unknown): keep channels-last
        train = "channels_last"
    return Choices(layout_train=train)


def machine_key() -> str:
    """What a calibration is valid for: CPU model, torch version, threads."""
    return _key(torch.__version__, torch.get_num_threads())


def _forced() -> dict[str, object]:
    """The choices `STCNNT_TUNING` forces, validated."""
    text = os.environ.get(ENV_TUNING, "").strip()
    if not text:
        return {}
    out: dict[str, object] = {}
    for item in text.split(","):
        key, _, value = (part.strip().lower() for part in item.partition("="))
        if key in ("layout", "layout_train", "layout_infer") and value in LAYOUTS:
            for k in ("layout_train", "layout_infer") if key == "layout" else (key,):
                out[k] = value
        elif key == "qkv" and value in QKV:
            out["qkv"] = value
        elif key == "attention" and value in ("sdpa", "matmul"):
            out["sdpa_min_tokens"] = 0 if value == "sdpa" else NEVER
        elif key == "attention" and value.isdigit():
            out["sdpa_min_tokens"] = int(value)
        else:
            raise STCNNTError(f"{ENV_TUNING}={text!r}: cannot read {item.strip()!r}; {TUNING_HELP}")
    return out


def _read_cache() -> dict:
    """The cache file's entries ({} if there is none); a file that is not ours to read
    is an error that names it."""
    path = cache_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise STCNNTError(f"{path}: cannot read the tuning cache ({err.strerror}); fix its "
                          f"permissions or set {ENV_CALIBRATE}=0") from None  # fmt: skip
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise STCNNTError(f"{path}: not a tuning cache (not a JSON object); delete it and run "
                          "`stcnnt tune` again")  # fmt: skip
    return data


def read_cache_entry(key: str | None = None) -> dict | None:
    """This machine's cache entry (measured choices of the current version), or None."""
    entry = _read_cache().get(key or machine_key())
    if not isinstance(entry, dict) or entry.get("version") != CALIBRATION_VERSION:
        return None
    values = entry.get("choices")
    try:
        measured = Choices(**{**values, "source": "calibrated"})
    except TypeError:
        measured = None
    if measured is None or measured.problems():
        raise STCNNTError(f"{cache_path()}: the entry {key or machine_key()!r} has unreadable "
                          "choices; delete the file and run `stcnnt tune` again")  # fmt: skip
    return entry


def write_cache_entry(entry: dict, key: str | None = None) -> Path:
    """Store `entry` for this machine (atomically: a temp file, then a rename) and make
    the next `choices()` read it."""
    path = cache_path()
    data = _read_cache()
    data[key or machine_key()] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
    reset()
    return path


def choices(device: torch.device | str | None = None) -> Choices:
    """The choices for `device` (CPU: as described above; other devices: channels-last,
    one Q/K/V convolution, SDPA everywhere). Reads the environment and the cache once
    per process; never measures."""
    if device is not None and torch.device(device).type not in ("cpu", "meta"):
        return Choices(sdpa_min_tokens=0, source="rules")
    global _active
    if _active is not None:
        return _active
    if torch.compiler.is_compiling():  # no file work while tracing
        return Choices()
    with _lock:
        if _active is None:
            _active = _resolve()
    return _active


def _resolve() -> Choices:
    forced = _forced()
    base = rules()
    if calibration_enabled() and len(forced) < 4:
        entry = read_cache_entry()
        if entry is not None:
            base = Choices(**{**entry["choices"], "source": "calibrated"})
    if forced:
        base = replace(base, **forced, source="forced")  # type: ignore[arg-type]
    return base


def reset() -> None:
    """Forget the active choices (tests; after changing the environment)."""
    global _active
    with _lock:
        _active = None


@contextlib.contextmanager
def using(**values: object) -> Iterator[Choices]:
    """Run the block with these choices (the others as `choices()` has them), e.g.
    `with using(layout_train="nchw"): step()`: how `stcnnt tune` and the benchmarks
    time each option. Not thread-safe: the choices are the process's."""
    global _active
    unknown = set(values) - {f.name for f in fields(Choices)}
    if unknown:
        raise STCNNTError(f"using(): unknown choices {sorted(unknown)}")
    previous = _active
    chosen = replace(choices("cpu"), **values, source="forced")  # type: ignore[arg-type]
    if chosen.problems():
        raise STCNNTError(f"using(): invalid {', '.join(chosen.problems())}; {TUNING_HELP}")
    _active = chosen
    try:
        yield chosen
    finally:
        _active = previous


def as_dict(c: Choices) -> dict[str, object]:
    return {k: v for k, v in asdict(c).items() if k != "source"}


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, run in turn (a, b, a, b, ...) after one warm-up
    each, so that a change of machine load hits every side alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times
