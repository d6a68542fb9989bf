#!/usr/bin/env python
"""Side by side with the reference implementation (FMImaging): the same backbone, the
same weights, the same input, timed and measured on this machine.

For users migrating from the reference and for us. The reference's source is a checkout
you provide (`git clone https://github.com/Imaging-and-AI/FMImaging`); nothing of it is
copied into this repository. Its model code imports training-only modules (its setup and
status utilities, `interpol`, and `torchvision` for stochastic depth): this tool puts
small stand-ins for those into `sys.modules` before importing it (torchvision's
`StochasticDepth` is replaced only when torchvision is not installed, by the same
row-mode computation). Its model code itself needs `einops` (`pip install einops`).

For each model (`unet`, `hrnet`: the reference's defaults, C=32, 3 levels, T1L1G1,
instance2d, 32 heads) and input size it:

1. builds the reference backbone from a configuration (`REFERENCE_DEFAULTS` plus the
   size), takes its random-init `state_dict`, and `import_reference`s it into ours,
   whose convolution weights it then lays out as `stcnnt train` does
   (`weights_in_layout`: channels-last where the layers run channels-last);
2. checks that the outputs agree (eval, no_grad, relative error <= 1e-4) and stops if not;
3. times forward (eval, no_grad) and a training step (train mode, forward + backward of
   a fixed random output gradient, gradients reset each step) as interleaved pairs
   (reference, ours, reference, ours, ...), and reports medians;
4. measures the peak memory of one training step per side, each in a fresh process:
   the resident-set high-water mark (VmHWM, reset just before the step) and its growth
   over the resident set before the step (model and input built);
5. measures the same run's convolution roofs at the model's shapes (5x5 and 3x3 convs,
   NCHW and channels-last, forward and forward + backward), before and after the models,
   so every timing is also a fraction of the roof (FLOPs: the analytic count, 2 per
   multiply-add; a training step counts 3x the forward).

With `--layouts nchw,channels_last` it also times ours with each layout forced (for
inference and training alike) in the same interleaved runs, and prints which layout
wins beside the library's own choice on this machine (`stcnnt tune`'s cache, or the
rules) and the rules for AVX2-only, AVX-512 and AMX CPUs.

Usage:
    python tools/bench_reference.py --reference-src ~/src/FMImaging
    python tools/bench_reference.py --reference-src DIR --layouts nchw,channels_last
    python tools/bench_reference.py --reference-src DIR --models unet --sizes 1x8x1x64x64 \
        --threads 2 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import stcnnt_dsl
from stcnnt_dsl.compat import REFERENCE_DEFAULTS, import_reference, reference_spec
from stcnnt_dsl.machine import cpu
from stcnnt_dsl.nn import tuning
from stcnnt_dsl.nn.layout import weights_in_layout

MODELS = {"unet": "STCNNT_UNET", "hrnet": "STCNNT_HRNET"}
DEFAULT_SIZES = "1x8x1x64x64,1x16x1x64x64"
AGREEMENT = 1e-4
# the C allocator settings that change a step's resident peak (docs/performance.md)
ALLOCATOR_VARIABLES = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
Shape = tuple[int, int, int, int, int]


class ToolError(Exception):
    """A user-facing problem: printed as one line, exit status 2."""


# --------------------------------------------------------------------------- the reference


class _StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth (row mode), for machines without torchvision."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = [x.shape[0]] + [1] * (x.dim() - 1) if self.mode == "row" else [1] * x.dim()
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


def _stub(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _stub_training_imports() -> list[str]:
    """Stand-ins for the modules the reference's model code imports but does not need to
    build and run a backbone. Returns the names stubbed."""
    nothing = lambda *args, **kwargs: None  # noqa: E731
    stubbed = ["setup", "setup.setup_utils", "utils", "utils.status", "interpol"]
    _stub("setup")
    _stub("setup.setup_utils", get_device=lambda *a, **k: torch.device("cpu"), set_seed=nothing)
    _stub("utils")
    _stub(
        "utils.status",
        model_info=nothing, get_gpu_ram_usage=nothing, start_timer=nothing, end_timer=nothing,
    )  # fmt: skip
    _stub("interpol", resize=nothing)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        vision = _stub("torchvision")
        vision.ops = _stub("torchvision.ops", StochasticDepth=_StochasticDepth)
        stubbed.append("torchvision")
    return stubbed


def load_reference(src: str | os.PathLike) -> dict[str, Any]:
    """The reference's backbone classes {"unet": cls, "hrnet": cls} from a checkout, or a
    `ToolError` that says what is wrong with it."""
    root = Path(src).expanduser()
    if not root.is_dir():
        raise ToolError(
            f"--reference-src {src}: no such directory; clone the reference implementation "
            "(git clone https://github.com/Imaging-and-AI/FMImaging) and pass its folder"
        )
    backbone = root / "model" / "backbone"
    needed = [backbone / "backbone_unet.py", backbone / "backbone_hrnet.py"]
    missing = [str(p.relative_to(root)) for p in needed if not p.is_file()]
    if missing:
        raise ToolError(
            f"--reference-src {src}: not a checkout of the reference implementation "
            f"(missing {', '.join(missing)}); pass the folder that holds model/backbone/"
        )
    _stub_training_imports()
    sys.path[:0] = [str(backbone), str(root / "model"), str(root)]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import backbone_hrnet  # type: ignore[import-not-found]
            import backbone_unet  # type: ignore[import-not-found]
    except ModuleNotFoundError as err:
        hint = " (pip install einops)" if err.name == "einops" else ""
        raise ToolError(
            f"--reference-src {src}: its model code does not import: it needs the module "
            f"{err.name!r}{hint}"
        ) from None
    except Exception as err:  # its code, any failure: say where
        raise ToolError(
            f"--reference-src {src}: its model code does not import: {type(err).__name__}: {err}"
        ) from None
    missing_cls = [
        name for name, mod, cls in
        [("unet", backbone_unet, "STCNNT_Unet"), ("hrnet", backbone_hrnet, "STCNNT_HRnet")]
        if not hasattr(mod, cls)
    ]  # fmt: skip
    if missing_cls:
        raise ToolError(
            f"--reference-src {src}: no STCNNT_Unet / STCNNT_HRnet in its model code "
            f"({', '.join(missing_cls)} missing): an unsupported version"
        )
    return {"unet": backbone_unet.STCNNT_Unet, "hrnet": backbone_hrnet.STCNNT_HRnet}


def reference_config(model: str, shape: Shape) -> dict[str, Any]:
    """The reference's default configuration of `model` for inputs of `shape`: its
    parser's defaults (C=32, 3 levels, T1L1G1, instance2d, 32 heads) as a nested dict."""
    _, t, c, h, w = shape
    flat = dict(REFERENCE_DEFAULTS)
    flat.update({
        "no_in_channel": c, "height": h, "width": w, "time": t, "separable_conv": False,
        "interp_align_c": False, "use_einsum": False, "backbone_model": MODELS[model],
    })  # fmt: skip
    config: dict[str, Any] = {}
    for key, value in flat.items():
        if "." in key:
            section, name = key.split(".", 1)
            config.setdefault(section, {})[name] = value
        else:
            config[key] = value
    for section in ("backbone_unet", "backbone_hrnet"):
        config[section].update(num_resolution_levels=3, C=32, block_str=["T1L1G1"])
        config[section]["use_interpolation"] = 1
    return config


def _namespace(config: dict[str, Any]) -> argparse.Namespace:
    sections = {k: argparse.Namespace(**v) for k, v in config.items() if isinstance(v, dict)}
    plain = {k: v for k, v in config.items() if not isinstance(v, dict)}
    return argparse.Namespace(**plain, **sections)


def build_pair(classes: dict[str, Any], model: str, shape: Shape, seed: int = 0):
    """(reference model, our model with its weights, config)."""
    config = reference_config(model, shape)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its window sizes
        ref = classes[model](_namespace(config))
    ours = weights_in_layout(import_reference(ref.state_dict(), config))
    return ref, ours, config


def first_output(result: Any) -> torch.Tensor:
    """The reference returns [y] (U-Net) or [y, levels] (HR-Net)."""
    return result[0] if isinstance(result, (list, tuple)) else result


# --------------------------------------------------------------------------- measuring


def _inputs(shape: Shape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference input [B, C, T, H, W], our input [B, T, C, H, W]), the same values."""
    gen = torch.Generator().manual_seed(seed)
    ours = torch.randn(shape, generator=gen)
    return ours.transpose(1, 2).contiguous(), ours


def _forward(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            first_output(model(x))

    return run


def _forced(side: str, run: Callable[[], None]) -> Callable[[], None]:
    """`run` with the layout of `side` ("ours nchw", "ours channels_last") forced for
    inference and training alike; "ref" and "ours" (the library's own choices) as is."""
    if " " not in side:
        return run
    layout = side.split(" ", 1)[1]

    def forced() -> None:
        with tuning.using(layout_train=layout, layout_infer=layout):
            run()

    return forced


def _ours_for(side: str, ours: nn.Module) -> nn.Module:
    """Our model for `side`: "ours" as `stcnnt train` lays its weights out here
    (`weights_in_layout`); a forced layout, a copy with its weights in that layout."""
    if " " not in side:
        return ours
    layout = side.split(" ", 1)[1]
    with tuning.using(layout_train=layout, layout_infer=layout):
        return weights_in_layout(copy.deepcopy(ours))


def _train_step(model: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        first_output(model(x)).backward(grad)

    return run


def agreement(ref: nn.Module, ours: nn.Module, shape: Shape) -> float:
    """Relative error (Frobenius) of our output against the reference's, eval mode."""
    x_ref, x_ours = _inputs(shape, seed=1)
    ref.eval(), ours.eval()
    with torch.no_grad():
        expected = first_output(ref(x_ref)).transpose(1, 2)
        got = ours(x_ours)
    if expected.shape != got.shape:
        raise ToolError(f"output shapes differ: reference {tuple(expected.shape)}, ours "
                        f"{tuple(got.shape)}")  # fmt: skip
    return float((got - expected).norm() / expected.norm().clamp_min(1e-30))


def conv_roofs(frames: int, channels: int, size: int) -> dict[str, Any]:
    """GFLOP/s of the model's dominant convolutions on this machine: the mixer's 5x5
    C -> 4C and 4C -> C and the 3x3 C -> C at the first level, on `frames` frames of
    `size`^2 (reflect-padded input), NCHW and channels-last, forward and forward +
    backward. `fwd` / `train`: the best layout's rate, FLOP-weighted over the shapes."""
    shapes = [(channels, 4 * channels, 5), (4 * channels, channels, 5), (channels, channels, 3)]
    out: dict[str, Any] = {"shapes": {}}
    weighted: dict[str, list[float]] = {"fwd": [0.0, 0.0], "train": [0.0, 0.0]}
    gen = torch.Generator().manual_seed(0)
    for cin, cout, k in shapes:
        flops = 2 * frames * cin * cout * k * k * size * size
        best = {"fwd": float("inf"), "train": float("inf")}
        row = {}
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(frames, cin, size + k - 1, size + k - 1, generator=gen)
            x = x.contiguous(memory_format=fmt).requires_grad_()
            w = torch.randn(cout, cin, k, k, generator=gen).contiguous(memory_format=fmt)
            w.requires_grad_()
            b = torch.zeros(cout, requires_grad=True)
            g = torch.randn(frames, cout, size, size, generator=gen).contiguous(memory_format=fmt)

            def fwd(x=x, w=w, b=b) -> None:
                with torch.no_grad():
                    F.conv2d(x, w, b)

            def train(x=x, w=w, b=b, g=g) -> None:
                torch.autograd.grad(F.conv2d(x, w, b), (x, w, b), g)

            times = tuning.interleaved_times({"fwd": fwd, "train": train}, repeats=3)
            t_fwd, t_train = min(times["fwd"]), min(times["train"])
            row[layout] = {"fwd_gflops": flops / t_fwd / 1e9,
                           "train_gflops": 3 * flops / t_train / 1e9}  # fmt: skip
            best["fwd"] = min(best["fwd"], t_fwd)
            best["train"] = min(best["train"], t_train)
        out["shapes"][f"{cin}->{cout} {k}x{k}"] = row
        weighted["fwd"][0] += flops
        weighted["fwd"][1] += best["fwd"]
        weighted["train"][0] += 3 * flops
        weighted["train"][1] += best["train"]
    out["fwd_gflops"] = weighted["fwd"][0] / weighted["fwd"][1] / 1e9
    out["train_gflops"] = weighted["train"][0] / weighted["train"][1] / 1e9
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ToolError(f"/proc/self/status has no {field}: memory is measured on Linux only")


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: one training step of one side; prints a JSON line."""
    torch.set_num_threads(args.threads)
    shape = parse_size(args.size)
    config = reference_config(args.model, shape)
    torch.manual_seed(0)
    if args.memory_child == "ref":
        classes = load_reference(args.reference_src)
        with contextlib.redirect_stdout(io.StringIO()):
            model = classes[args.model](_namespace(config))
        x = _inputs(shape, seed=2)[0]
    else:
        model = weights_in_layout(stcnnt_dsl.build(reference_spec(config), seed=0))
        x = _inputs(shape, seed=2)[1]
        tuning.choices(x.device)  # a first calibration (if any) happens before, not during
    model.train()
    b, t, _, h, w = shape
    channels = 32 if args.model == "unet" else 32 + 64 + 128
    out_shape = (b, channels, t, h, w) if args.memory_child == "ref" else (b, t, channels, h, w)
    grad = torch.randn(out_shape)
    before = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        reset = True
    except OSError:
        reset = False
    _train_step(model, x, grad)()
    peak = _status_kib("VmHWM")
    print(json.dumps({"rss_before_mib": before / 1024, "peak_mib": peak / 1024,
                      "growth_mib": (peak - before) / 1024, "hwm_reset": reset}))  # fmt: skip


def measure_memory(args: argparse.Namespace, model: str, size: str) -> dict[str, Any]:
    out = {}
    for side in ("ref", "ours"):
        cmd = [
            sys.executable, __file__, "--reference-src", str(args.reference_src),
            "--memory-child", side, "--model", model, "--size", size,
            "--threads", str(args.threads),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 or not lines:
            raise ToolError(f"memory measurement of {side} {model} {size} failed: "
                            f"{done.stderr.strip().splitlines()[-1:]}")  # fmt: skip
        out[side] = json.loads(lines[-1])
    return out


# --------------------------------------------------------------------------- reporting


def parse_size(text: str) -> Shape:
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 5 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ToolError(f"--sizes: {text!r} is not BxTxCxHxW (e.g. 1x8x1x64x64)")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def cpu_info() -> dict[str, Any]:
    c = cpu()
    return {
        "model": c.model, "avx2": c.avx2, "avx512f": c.avx512, "avx512_bf16": c.avx512_bf16,
        "amx": c.amx, "torch_capability": torch.backends.cpu.get_cpu_capability(),
    }  # fmt: skip


def _load() -> float:
    with contextlib.suppress(OSError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return float("nan")


def bench_one(args, classes, model: str, size: str) -> dict[str, Any]:
    shape = parse_size(size)
    ref, ours, config = build_pair(classes, model, shape)
    params = (sum(p.numel() for p in ref.parameters()), sum(p.numel() for p in ours.parameters()))
    error = agreement(ref, ours, shape)
    row: dict[str, Any] = {"model": model, "size": size, "params": params, "rel_error": error}
    if not error <= AGREEMENT:
        raise ToolError(
            f"{model} {size}: outputs differ from the reference (relative error "
            f"{error:.2e} > {AGREEMENT:g}); no timing of models that disagree"
        )
    flops = stcnnt_dsl.profile(reference_spec(config), shape, runs=0).flops
    row["gflops_forward"] = flops / 1e9
    x_ref, x_ours = _inputs(shape, seed=2)
    ref.eval(), ours.eval()
    sides = ["ref", "ours", *(f"ours {layout}" for layout in args.layouts)]
    models = {side: ref if side == "ref" else _ours_for(side, ours) for side in sides}
    fwd = tuning.interleaved_times(
        {side: _forced(side, _forward(models[side], x_ref if side == "ref" else x_ours))
         for side in sides}, args.repeats,
    )  # fmt: skip
    for side_model in models.values():
        side_model.train()
    with torch.no_grad():
        grad = torch.randn_like(ours(x_ours))
    grad_ref = grad.transpose(1, 2).contiguous()
    step = tuning.interleaved_times(
        {side: _forced(side, _train_step(ref, x_ref, grad_ref) if side == "ref"
                       else _train_step(models[side], x_ours, grad)) for side in sides},
        args.repeats,
    )  # fmt: skip
    for name, times in (("forward", fwd), ("step", step)):
        for side in sides:
            row[f"{name}_{side}_ms"] = 1e3 * statistics.median(times[side])
            row[f"{name}_{side}_all_ms"] = [1e3 * t for t in times[side]]
            row[f"{name}_{side}_speedup"] = row[f"{name}_ref_ms"] / row[f"{name}_{side}_ms"]
        row[f"{name}_speedup"] = row[f"{name}_ours_speedup"]
        row["layouts"] = args.layouts
        if args.layouts:
            own = getattr(
                tuning.choices("cpu"), "layout_infer" if name == "forward" else "layout_train"
            )
            timed = {layout: row[f"{name}_ours {layout}_ms"] for layout in args.layouts}
            timed.setdefault(own, row[f"{name}_ours_ms"])  # the library's own, unforced
            row[f"{name}_fastest_layout"] = min(timed, key=timed.__getitem__)
    del ref, ours
    if not args.no_memory:
        row.update(memory_row(args, model, size))
    return row


def memory_row(args: argparse.Namespace, model: str, size: str) -> dict[str, Any]:
    mem = measure_memory(args, model, size)
    return {
        "memory": mem,
        "peak_ratio": mem["ours"]["peak_mib"] / mem["ref"]["peak_mib"],
        "growth_ratio": mem["ours"]["growth_mib"] / mem["ref"]["growth_mib"],
    }


def print_columns(head: Sequence[str], lines: list[Sequence[str]]) -> None:
    """A text table: each column as wide as its widest cell, two spaces between."""
    widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(head)]
    for ln in (head, *lines):
        print("  ".join(v.ljust(w) for v, w in zip(ln, widths, strict=True)))


def print_memory_table(env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """--memory-only: one training step per side, each in a fresh process."""
    cpu = env["cpu"]
    allocator = ", ".join(f"{k}={v}" for k, v in env["allocator"].items() if v) or "defaults"
    print(f"CPU: {cpu['model']}; torch {env['torch']}, {env['threads']} threads, float32; "
          f"glibc malloc: {allocator}")  # fmt: skip
    head = ("model", "input", "peak ref", "peak ours", "ratio", "growth ref", "growth ours",
            "ratio")  # fmt: skip
    lines = [(
        r["model"], r["size"],
        *(f"{r['memory'][side]['peak_mib']:.0f} MiB" for side in ("ref", "ours")),
        f"{r['peak_ratio']:.2f}",
        *(f"{r['memory'][side]['growth_mib']:.0f} MiB" for side in ("ref", "ours")),
        f"{r['growth_ratio']:.2f}",
    ) for r in rows]  # fmt: skip
    print_columns(head, lines)
    print("peak: VmHWM of one training step in a fresh process; growth: peak - RSS before "
          "the step.")  # fmt: skip


def add_roof_fractions(row: dict[str, Any], roof: dict[str, Any]) -> None:
    f = row["gflops_forward"]
    for side in ("ref", "ours"):
        row[f"forward_{side}_roof"] = f / (row[f"forward_{side}_ms"] / 1e3) / roof["fwd_gflops"]
        row[f"step_{side}_roof"] = 3 * f / (row[f"step_{side}_ms"] / 1e3) / roof["train_gflops"]


def print_table(env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    cpu = env["cpu"]
    print(f"CPU: {cpu['model']} (avx512_bf16: {'yes' if cpu['avx512_bf16'] else 'no'}, "
          f"amx: {'yes' if cpu['amx'] else 'no'}, torch capability {cpu['torch_capability']}); "
          f"torch {env['torch']}, {env['threads']} threads, float32, "
          f"load {env['load_before']:.2f} -> {env['load_after']:.2f}")  # fmt: skip
    roof = env["roof"]
    c = env["choices"]
    print(f"our per-machine choices ({c['source']}): layout {c['layout_infer']} (inference), "
          f"{c['layout_train']} (training), {c['qkv']} Q/K/V, CPU SDPA from "
          f"{c['sdpa_min_tokens']} tokens")  # fmt: skip
    rule = env["rules_by_cpu"]
    print("the rules (no `stcnnt tune`), inference/training layout: "
          + ", ".join(f"{cpu_class} {r['layout_infer']}/{r['layout_train']}"
                      for cpu_class, r in rule.items()))  # fmt: skip
    print(f"conv roof (5x5/3x3 at the first level, best layout): forward "
          f"{roof['fwd_gflops']:.0f} GFLOP/s, forward+backward {roof['train_gflops']:.0f} "
          f"GFLOP/s; interleaved pairs, median of {env['repeats']}")  # fmt: skip
    head = ("model", "input", "rel.err", "fwd ref", "fwd ours", "x", "roof r/o",
            "step ref", "step ours", "x", "roof r/o", "peak ref", "peak ours", "ratio",
            "growth ref", "growth ours", "ratio")  # fmt: skip
    lines = []
    for r in rows:
        mem = r.get("memory")
        lines.append((
            r["model"], r["size"], f"{r['rel_error']:.1e}",
            f"{r['forward_ref_ms']:.0f} ms", f"{r['forward_ours_ms']:.0f} ms",
            f"{r['forward_speedup']:.2f}",
            f"{r['forward_ref_roof']:.0%}/{r['forward_ours_roof']:.0%}",
            f"{r['step_ref_ms']:.0f} ms", f"{r['step_ours_ms']:.0f} ms",
            f"{r['step_speedup']:.2f}", f"{r['step_ref_roof']:.0%}/{r['step_ours_roof']:.0%}",
            f"{mem['ref']['peak_mib']:.0f} MiB" if mem else "-",
            f"{mem['ours']['peak_mib']:.0f} MiB" if mem else "-",
            f"{r['peak_ratio']:.2f}" if mem else "-",
            f"{mem['ref']['growth_mib']:.0f} MiB" if mem else "-",
            f"{mem['ours']['growth_mib']:.0f} MiB" if mem else "-",
            f"{r['growth_ratio']:.2f}" if mem else "-",
        ))  # fmt: skip
    print_columns(head, lines)
    if any("step_fastest_layout" in r for r in rows):
        layouts = rows[0]["layouts"]
        print()
        print("our layouts forced (inference and training alike), x against the reference "
              "in the same interleaved runs:")  # fmt: skip
        head2 = ("model", "input", *(f"fwd {k}" for k in layouts), "fastest fwd",
                 *(f"step {k}" for k in layouts), "fastest step", "library's choice")  # fmt: skip
        lines2 = []
        c = env["choices"]
        for r in rows:
            lines2.append((
                r["model"], r["size"],
                *(f"{r[f'forward_ours {k}_ms']:.0f} ms {r[f'forward_ours {k}_speedup']:.2f}x"
                  for k in layouts), r["forward_fastest_layout"],
                *(f"{r[f'step_ours {k}_ms']:.0f} ms {r[f'step_ours {k}_speedup']:.2f}x"
                  for k in layouts), r["step_fastest_layout"],
                f"{c['layout_infer']} / {c['layout_train']} ({c['source']})",
            ))  # fmt: skip
        print_columns(head2, lines2)
    print("x: reference time / our time (> 1: we are faster). roof: FLOP rate / conv roof. "
          "peak: VmHWM of one training step in a fresh process; growth: peak - RSS before "
          "the step.")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference-src", required=True, help="a checkout of github.com/Imaging-and-AI/FMImaging"
    )
    parser.add_argument("--models", default="unet,hrnet", help="comma-separated: unet, hrnet")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated BxTxCxHxW")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed pairs per measurement")
    parser.add_argument(
        "--layouts", default="",
        help="also time ours with these layouts forced: comma-separated nchw, channels_last",
    )  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip the memory processes")
    parser.add_argument(
        "--memory-only", action="store_true",
        help="only the memory processes (no timing: memory does not depend on the load)",
    )  # fmt: skip
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--memory-child", choices=["ref", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.memory_child:
            memory_child(args)
            return 0
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in MODELS]
        if unknown or not models:
            raise ToolError(f"--models: unknown {unknown or models}; choose from unet, hrnet")
        sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
        args.layouts = [k.strip() for k in args.layouts.split(",") if k.strip()]
        if set(args.layouts) - set(tuning.LAYOUTS):
            raise ToolError(f"--layouts: choose from {', '.join(tuning.LAYOUTS)}")
        shapes = [parse_size(s) for s in sizes]
        if args.threads < 1 or args.repeats < 1:
            raise ToolError("--threads and --repeats must be >= 1")
        torch.set_num_threads(args.threads)
        classes = load_reference(args.reference_src)
        env = {
            "cpu": cpu_info(), "torch": torch.__version__, "threads": args.threads,
            "repeats": args.repeats, "load_before": _load(), "python": platform.python_version(),
            "allocator": {name: os.environ.get(name, "") for name in ALLOCATOR_VARIABLES},
        }  # fmt: skip
        if args.memory_only:
            rows = [{"model": model, "size": size, **memory_row(args, model, size)}
                    for model in models for size in sizes]  # fmt: skip
            print_memory_table(env, rows)
            if args.json:
                Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1))
            return 0
        active = tuning.choices("cpu")  # the cache of `stcnnt tune`, or the rules
        env["choices"] = dataclasses.asdict(active)
        env["rules_by_cpu"] = {
            cpu_class: dataclasses.asdict(tuning.rules(flags))
            for cpu_class, flags in (("AVX2-only", {"avx2", "fma"}),
                                     ("AVX-512", {"avx2", "avx512f"}),
                                     ("AMX", {"avx2", "avx512f", "amx_tile"}))
        }  # fmt: skip
        frames = max(s[0] * s[1] for s in shapes)
        side = min(min(s[3], s[4]) for s in shapes)
        roof_before = conv_roofs(frames, 32, side)
        rows = []
        for model in models:
            for size in sizes:
                print(f"... {model} {size}", file=sys.stderr, flush=True)
                rows.append(bench_one(args, classes, model, size))
        roof_after = conv_roofs(frames, 32, side)
        best = max((roof_before, roof_after), key=lambda r: r["fwd_gflops"])
        env["roof"] = {
            "fwd_gflops": max(roof_before["fwd_gflops"], roof_after["fwd_gflops"]),
            "train_gflops": max(roof_before["train_gflops"], roof_after["train_gflops"]),
            "shapes": best["shapes"], "before": roof_before, "after": roof_after,
        }  # fmt: skip
        env["load_after"] = _load()
        for row in rows:
            add_roof_fractions(row, env["roof"])
        print_table(env, rows)
        if args.json:
            Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1))
        return 0
    except ToolError as err:
        print(f"bench_reference: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
