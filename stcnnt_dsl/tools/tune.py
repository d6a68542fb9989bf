"""`stcnnt tune`: measure the per-machine choices of `stcnnt_dsl.nn.tuning` on this
machine and cache them, so that later processes use them instead of the rules.

What is measured is what each choice decides: a whole model's training step (forward +
backward) with feature maps channels-last and with NCHW, its forward likewise, the
training step with one Q/K/V convolution and with three, and CPU attention (SDPA
against the short-sequence kernel) at 16 to 128 tokens. Each pair runs interleaved
(a, b, a, b, ...) so that the machine's load hits both alike, and an option replaces
the rule only when it is faster by more than `MARGIN` in the median of the pairs AND
faster in every pair: where the measurement cannot tell them apart, the rule stays.

It runs only when asked (`stcnnt tune`, or `tune()`), never at a first forward: see
`stcnnt_dsl.nn.tuning` for why. It takes about a minute on a 2-core machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import STCNNTError
from ..models.build import build
from ..nn import tuning
from ..nn.short_attention import attend_short
from ..nn.tuning import Choices

__all__ = ["MARGIN", "TUNE_ARCH", "TUNE_INPUT", "TuneResult", "decide", "tune"]

TUNE_ARCH = "unet"  # the default U-Net: 32/64/128 channels, T1L1G1 blocks
TUNE_INPUT = (1, 4, 1, 64, 64)
MARGIN = 1.05  # another option must win by more than this (median of the pairs)
Progress = Callable[[str], None]


@dataclass
class TuneResult:
    """What `tune` measured (ms per call, one value per interleaved pair) and chose."""

    rules: Choices
    chosen: Choices
    measured_ms: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    key: str = ""

    def format(self) -> str:
        lines = [f"machine: {self.key}"]
        for name, why in self.reasons.items():
            lines.append(f"  {name:<15} {getattr(self.chosen, name)!s:<14} {why}")
        where = f"written to {self.path}" if self.path else "not written (--dry-run)"
        lines.append(f"{where}; STCNNT_TUNING still overrides, STCNNT_CALIBRATE=0 ignores it")
        return "\n".join(lines)


def decide(rule: str, times: dict[str, list[float]]) -> tuple[str, str]:
    """(choice, why): the rule unless the other option is faster by more than MARGIN in
    the median of the interleaved pairs and faster in every pair."""
    (other,) = (k for k in times if k != rule)
    ratios = [o / r for o, r in zip(times[other], times[rule], strict=True)]
    median = statistics.median(ratios)
    summary = (f"{other} / {rule} = {median:.3f} median of {len(ratios)} pairs "
               f"({min(ratios):.3f}-{max(ratios):.3f})")  # fmt: skip
    if median * MARGIN < 1.0 and max(ratios) < 1.0:
        return other, f"measured: {summary}"
    return rule, f"rule kept: {summary}"


def _ms(times: dict[str, list[float]]) -> dict[str, list[float]]:
    return {k: [round(1e3 * t, 3) for t in v] for k, v in times.items()}


def _timed(options: dict[str, dict[str, Any]], run: Callable[[], object], repeats: int):
    """Interleaved times of `run` under each option's choices."""

    def under(values: dict[str, Any]) -> Callable[[], None]:
        def call() -> None:
            with tuning.using(**values):
                run()

        return call

    return tuning.interleaved_times({k: under(v) for k, v in options.items()}, repeats)


def _attention_problem(tokens: int, sdpa: bool, pixels: int, gen: torch.Generator):
    """Forward + backward of 32 channels x `pixels` pixels of tokens as 8 heads of 32
    features (this library's `heads: auto`) and as 32 heads of 4 (the reference's): SDPA,
    or the kernel attention runs below the threshold (`short_attention`). Small problems
    fit in the cache, where the explicit kernels' memory traffic does not show: use
    128x128 pixels."""
    items = []
    for heads, d in ((8, 32), (32, 4)):
        shape = (max(1, pixels * 32 // (tokens * heads * d)), heads, tokens, d)
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


def _attention_threshold(
    rule: int, repeats: int, pixels: int, measured: dict, reasons: list[str]
) -> int:
    """From how many tokens SDPA beats the short-sequence kernel: from long sequences
    (where SDPA wins first) down, while SDPA keeps winning."""
    gen = torch.Generator().manual_seed(0)
    threshold = 256  # SDPA never stores S x S scores: long sequences keep it
    for tokens in (128, 64, 32, 16):
        times = tuning.interleaved_times({
            "sdpa": _attention_problem(tokens, True, pixels, gen),
            "matmul": _attention_problem(tokens, False, pixels, gen),
        }, repeats)  # fmt: skip
        measured[f"attention_{tokens}_tokens_train"] = _ms(times)
        choice, why = decide("sdpa" if tokens >= rule else "matmul", times)
        reasons.append(f"{tokens} tokens: {why}")
        if choice != "sdpa":
            break
        threshold = tokens
    return threshold


def _model_problem(arch: Any, input_shape: Sequence[int]):
    """(model, a training step, a forward) of `arch` on a fixed random input."""
    torch.manual_seed(0)
    model = build(arch, seed=0)
    x = torch.randn(tuple(input_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        grad = torch.randn_like(model.eval()(x))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).backward(grad)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    return model, step, forward


def tune(
    arch: Any = TUNE_ARCH,
    input_shape: Sequence[int] = TUNE_INPUT,
    *,
    repeats: int = 5,
    attention_pixels: int = 128 * 128,
    write: bool = True,
    progress: Progress | None = None,
) -> TuneResult:
    """Measure the choices on this machine (CPU, float32, the current thread count) with
    `arch` (anything `build` accepts) at `input_shape`, and (with `write`) cache them for
    this machine key. Returns what was measured and chosen."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise STCNNTError(f"repeats must be a positive integer, got {repeats!r}")
    say = progress or (lambda _message: None)
    base = tuning.rules()
    result = TuneResult(rules=base, chosen=base, key=tuning.machine_key())
    start = time.perf_counter()
    # A caller under no_grad or inference_mode still needs autograd for the steps.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        model, step, forward = _model_problem(arch, input_shape)
        plain = {"qkv": base.qkv, "sdpa_min_tokens": base.sdpa_min_tokens}
        layouts = {k: {"layout_train": k, "layout_infer": k, **plain} for k in tuning.LAYOUTS}
        say("training steps, channels-last and NCHW")
        model.train()
        times = _timed(layouts, step, repeats)
        result.measured_ms["layout_train"] = _ms(times)
        train, result.reasons["layout_train"] = decide(base.layout_train, times)
        say("forwards, channels-last and NCHW")
        model.eval()
        times = _timed(layouts, forward, repeats)
        result.measured_ms["layout_infer"] = _ms(times)
        infer, result.reasons["layout_infer"] = decide(base.layout_infer, times)
        say("training steps, one Q/K/V convolution and three")
        model.train()
        qkv_options = {
            q: {"layout_train": train, "qkv": q, "sdpa_min_tokens": base.sdpa_min_tokens}
            for q in tuning.QKV
        }
        times = _timed(qkv_options, step, repeats)
        result.measured_ms["qkv"] = _ms(times)
        qkv, result.reasons["qkv"] = decide(base.qkv, times)
        say("attention kernels at 128, 64, 32, 16 tokens")
        steps: list[str] = []
        threshold = _attention_threshold(
            base.sdpa_min_tokens, repeats, attention_pixels, result.measured_ms, steps
        )
        result.reasons["sdpa_min_tokens"] = "; ".join(steps)
    result.chosen = Choices(infer, train, qkv, threshold, "calibrated")
    if write:
        entry = {
            "choices": tuning.as_dict(result.chosen),
            "rules": tuning.as_dict(base),
            "measured_ms": result.measured_ms,
            "reasons": result.reasons,
            "model": f"{arch if isinstance(arch, str) else type(arch).__name__} "
            f"{'x'.join(map(str, input_shape))}",
            "seconds": round(time.perf_counter() - start, 1),
            "when": time.strftime("%Y-%m-%d %H:%M"),
            "version": tuning.CALIBRATION_VERSION,
        }
        result.path = tuning.write_cache_entry(entry, result.key)
    return result
