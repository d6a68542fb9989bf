"""Per-machine choices: the memory layout of feature maps (channels-last or NCHW, for
inference and for training separately), one Q/K/V convolution or three, and from how
many tokens CPU attention uses the fused SDPA kernel.

Which is fastest depends on the CPU and the torch build: on AVX-512 and AMX CPUs
oneDNN's channels-last convolutions win forward and backward; on AVX2-only CPUs their
backward is slower than NCHW's (measured: 86 vs 105 GFLOP/s for a 5x5 convolution's
forward + backward), while their forward still wins. So the layers ask `choices()`:

1. `STCNNT_TUNING` forces choices, e.g. `layout=nchw`, `layout_train=nchw,qkv=separate`,
   `attention=sdpa` (`matmul`, or a token count from which SDPA is used);
2. otherwise a calibration measured on this machine, cached in the user cache dir
   (`$STCNNT_CACHE_DIR`, else `$XDG_CACHE_HOME/stcnnt-dsl`, else `~/.cache/stcnnt-dsl`)
   under the CPU model, torch version and thread count. It runs once, at the first
   eager CPU float32 forward of a block or backbone (never at import), takes about two
   seconds, and measures small fixed problems (5x5 and 3x3 convolutions, attention at
   16..128 tokens) forward and forward + backward, the best of interleaved runs; a choice
   leaves the rule below only when the other option wins by more than 5%.
   The attention threshold is measured again in each process (see
   `attention_threshold`: it also depends on the threading state).
   `STCNNT_CALIBRATE=0` turns it off (then: the rules);
3. the rules: channels-last, except NCHW for training on CPUs without AVX-512; one
   Q/K/V convolution; SDPA from 32 tokens.
Under torch.compile nothing is measured: the choices already made (or the rules) hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import STCNNTError
from .short_attention import attend_short

__all__ = [
    "ENV_CALIBRATE",
    "ENV_TUNING",
    "Choices",
    "attention_threshold",
    "cache_path",
    "calibrate",
    "choices",
    "interleaved_times",
    "machine_key",
    "rules",
]

ENV_TUNING = "STCNNT_TUNING"
ENV_CALIBRATE = "STCNNT_CALIBRATE"
ENV_CACHE = "STCNNT_CACHE_DIR"
MARGIN = 1.05  # another option must win by more than this to replace the rule
NEVER = 1 << 30  # sdpa_min_tokens that keeps CPU attention off SDPA
LAYOUTS = ("channels_last", "nchw")
# What the cache entries were measured with; older entries are measured again
# (2: short sequences run the cache-chunked kernel, SDPA tried from 128 tokens).
CALIBRATION_VERSION = 2


@dataclass(frozen=True)
class Choices:
    """How the layers run on this machine."""

    layout_infer: str = "channels_last"  # feature maps without autograd
    layout_train: str = "channels_last"  # feature maps when autograd records
    qkv: str = "fused"  # one C -> 3C convolution, or "separate": three C -> C
    sdpa_min_tokens: int = 32  # CPU attention: SDPA from this many tokens, else explicit
    source: str = "rules"  # rules | calibrated | forced

    def channels_last(self, training: bool) -> bool:
        return (self.layout_train if training else self.layout_infer) == "channels_last"


_lock = threading.Lock()
_active: Choices | None = None


def _cpu_flags_and_model() -> tuple[set[str], str]:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if flags and line.startswith("model name"):
                break
    return flags, model


def rules() -> Choices:
    """The choices without measuring: channels-last, except NCHW for training where the
    CPU has no AVX-512 (measured on an AVX2 EPYC; AVX-512 and AMX CPUs win with
    channels-last both ways)."""
    flags, _ = _cpu_flags_and_model()
    capability = torch.backends.cpu.get_cpu_capability()
    avx512 = "avx512f" in flags or capability.startswith("AVX512")
    if flags or capability != "DEFAULT":
        train = "channels_last" if avx512 else "nchw"
    else:  # not x86 (or unknown): keep channels-last
        train = "channels_last"
    return Choices(layout_train=train)


def machine_key() -> str:
    """What a calibration is valid for: CPU model, torch version, threads."""
    _, model = _cpu_flags_and_model()
    return f"{model} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def cache_path() -> Path:
    if os.environ.get(ENV_CACHE):
        root = Path(os.environ[ENV_CACHE])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "stcnnt-dsl"
    else:
        root = Path.home() / ".cache" / "stcnnt-dsl"
    return root / "tuning.json"


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
        elif key == "qkv" and value in ("fused", "separate"):
            out["qkv"] = value
        elif key == "attention" and (value in ("sdpa", "matmul") or value.isdigit()):
            out["sdpa_min_tokens"] = {"sdpa": 0, "matmul": NEVER}.get(value) or int(value)
        else:
            raise STCNNTError(
                f"{ENV_TUNING}: cannot read {item!r}; write comma-separated key=value with "
                "layout / layout_train / layout_infer = channels_last | nchw, qkv = fused | "
                "separate, attention = sdpa | matmul | <tokens from which SDPA is used>"
            )
    return out


def _calibration_enabled() -> bool:
    return os.environ.get(ENV_CALIBRATE, "1").strip().lower() not in ("0", "off", "false", "no")


def _read_cache() -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cache_path().read_text())
        if isinstance(data, dict):
            return data
    return {}


def _write_cache(key: str, entry: dict) -> None:
    path = cache_path()
    data = _read_cache()
    data[key] = entry
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)


def choices(device: torch.device | str | None = None) -> Choices:
    """The choices for `device` (CPU: as described above; other devices: channels-last,
    one Q/K/V convolution, SDPA everywhere)."""
    if device is not None and torch.device(device).type not in ("cpu", "meta"):
        return Choices(sdpa_min_tokens=0, source="rules")
    global _active
    if _active is not None:
        return _active
    if torch.compiler.is_compiling():  # no file or timing work while tracing
        return Choices()
    with _lock:
        if _active is None:
            _active = _resolve()
    return _active


def _resolve() -> Choices:
    forced = _forced()
    base = rules()
    if _calibration_enabled() and len(forced) < 4:
        key = machine_key()
        entry = _read_cache().get(key)
        fresh = not isinstance(entry, dict) or entry.get("version") != CALIBRATION_VERSION
        if fresh:
            entry = calibrate(base)
            _write_cache(key, entry)
        with contextlib.suppress(TypeError, ValueError):
            base = Choices(**{**entry["choices"], "source": "calibrated"})
        if not fresh and "sdpa_min_tokens" not in forced:
            base = replace(base, sdpa_min_tokens=attention_threshold(base))
    if forced:
        base = replace(base, **forced, source="forced")  # type: ignore[arg-type]
    return base


def reset() -> None:
    """Forget the active choices (tests; after changing the environment)."""
    global _active
    with _lock:
        _active = None


# --------------------------------------------------------------------------- calibration


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


def _best_times(fns: dict[str, Callable[[], object]], repeats: int = 4) -> dict[str, float]:
    """The fastest of `repeats` interleaved runs of each function: the least sensitive
    to other processes on the machine."""
    return {k: min(v) for k, v in interleaved_times(fns, repeats).items()}


def _conv_problems(layout: str, gen: torch.Generator):
    """Forward and forward + backward of a mixer (5x5, C -> 4C -> C) and a Q/K/V
    convolution (3x3, C -> 3C) on 4 frames of 32x32, C = 32."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    shapes = [(32, 128, 5), (128, 32, 5), (32, 96, 3)]
    items = []
    for cin, cout, k in shapes:
        x = torch.randn(4, cin, 32 + k - 1, 32 + k - 1, generator=gen).contiguous(memory_format=fmt)
        w = torch.randn(cout, cin, k, k, generator=gen).contiguous(memory_format=fmt)
        g = torch.randn(4, cout, 32, 32, generator=gen).contiguous(memory_format=fmt)
        items.append((x, w, g))

    def fwd() -> None:
        with torch.no_grad():
            for x, w, _ in items:
                F.conv2d(x, w)

    def train() -> None:
        for x, w, g in items:
            xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
            torch.autograd.grad(F.conv2d(xg, wg), (xg, wg), g)

    return fwd, train


def _qkv_problem(layout: str, separate: bool, gen: torch.Generator):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(4, 32, 34, 34, generator=gen).contiguous(memory_format=fmt)
    w = torch.randn(96, 32, 3, 3, generator=gen).contiguous(memory_format=fmt)
    g = torch.randn(4, 96, 32, 32, generator=gen).contiguous(memory_format=fmt)

    def train() -> None:
        xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
        if separate:
            out = torch.cat([F.conv2d(xg, part) for part in wg.chunk(3)], 1)
        else:
            out = F.conv2d(xg, wg)
        torch.autograd.grad(out, (xg, wg), g)

    return train


def _attention_problem(tokens: int, sdpa: bool, gen: torch.Generator):
    """Forward + backward of 32 channels x 128x128 pixels of tokens (smaller problems fit
    in the cache, where the explicit kernels' memory traffic does not show), as 8 heads of 32
    features (this library's `heads: auto`) and as 32 heads of 4 (the reference's);
    SDPA against the kernel `functional.attend` runs below the threshold for such heads
    (`short_attention`: cache-sized chunks, probabilities recomputed in the backward)."""
    items = []
    for heads, d in ((8, 32), (32, 4)):
        shape = (16384 * 32 // (tokens * heads * d), heads, tokens, d)
        items.append([torch.randn(shape, generator=gen) for _ in range(4)])

    def train() -> None:
        for q, k, v, g in items:
            qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
            if sdpa:
                out = F.scaled_dot_product_attention(qg, kg, vg)
            else:
                out = attend_short(qg, kg, vg, q.shape[-1] ** -0.5, None, False)
            torch.autograd.grad(out, (qg, kg, vg), g)

    return train


def calibrate(base: Choices | None = None) -> dict:
    """Measure the choices on this machine (CPU, float32); returns the cache entry:
    {"choices": {...}, "measured_ms": {...}, "when": ...}."""
    base = base or rules()
    gen = torch.Generator().manual_seed(0)
    measured: dict[str, float] = {}
    # The first forward is often an inference under no_grad or inference_mode; the
    # training problems need autograd whatever the caller's mode.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        problems = {layout: _conv_problems(layout, gen) for layout in LAYOUTS}
        fwd = _best_times({k: v[0] for k, v in problems.items()})
        train = _best_times({k: v[1] for k, v in problems.items()})
        measured.update({f"conv_fwd_{k}": 1e3 * v for k, v in fwd.items()})
        measured.update({f"conv_train_{k}": 1e3 * v for k, v in train.items()})
        layout_infer = _pick(base.layout_infer, fwd)
        layout_train = _pick(base.layout_train, train)
        qkv = _best_times({
            "fused": _qkv_problem(layout_train, False, gen),
            "separate": _qkv_problem(layout_train, True, gen),
        })  # fmt: skip
        measured.update({f"qkv_train_{k}": 1e3 * v for k, v in qkv.items()})
        qkv_choice = _pick(base.qkv, qkv)
    threshold = attention_threshold(base, measured, gen)
    chosen = Choices(layout_infer, layout_train, qkv_choice, threshold, "calibrated")
    entry = {k: v for k, v in asdict(chosen).items() if k != "source"}
    return {
        "choices": entry,
        "measured_ms": measured,
        "when": time.strftime("%Y-%m-%d"),
        "version": CALIBRATION_VERSION,
    }


def attention_threshold(
    base: Choices, measured: dict[str, float] | None = None, gen: torch.Generator | None = None
) -> int:
    """From how many tokens SDPA beats the short-sequence kernel, measured now (about a
    second). Also measured in every process, not only cached: it depends on the process's
    threading state as well as the machine. `torch.set_num_threads` turns MKL's dynamic
    threads off, and then the matrix products inside SDPA's own parallel loop run threaded
    too: measured on a 2-core EPYC, SDPA took 1.9x as long for 32 heads of 4 features
    afterwards, while the short-sequence kernel (one parallel op at a time) did not change."""
    measured = {} if measured is None else measured
    gen = gen or torch.Generator().manual_seed(0)
    threshold = 256  # SDPA never stores S x S scores: long sequences keep it
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        for tokens in (128, 64, 32, 16):  # from long to short: SDPA wins first at long ones
            att = _best_times({
                "sdpa": _attention_problem(tokens, True, gen),
                "matmul": _attention_problem(tokens, False, gen),
            }, repeats=3)  # fmt: skip
            measured.update({f"attention{tokens}_train_{k}": 1e3 * v for k, v in att.items()})
            default = "sdpa" if tokens >= base.sdpa_min_tokens else "matmul"
            if _pick(default, att) != "sdpa":
                break
            threshold = tokens
    return threshold


def _pick(default: str, times: dict[str, float]) -> str:
    """The default unless another option is faster by more than MARGIN."""
    best = min(times, key=times.__getitem__)
    return best if times[default] > MARGIN * times[best] else default
