#!/usr/bin/env python
"""What task heads and LoRA cost in training, measured side by side in one process.

1. Heads: one training step (forward, a loss over the output(s), backward) of a whole
   model (backbone + heads) against the same backbone alone, same weights and input.
   The heads should add little: the issue's bound is 1.1x.
2. Adaptation: the peak memory (and time) of a training step of the whole model fully
   fine-tuned, against the same model with a frozen backbone and LoRA on the Q/K/V and
   mixer layers (`lora_targets`, rank `--rank`), the heads trained, and with LoRA on the
   late stages only (`lora_targets(model, "decoder.*")`): the stages before the first
   adapted one then need no gradient, so their activations are not kept; and with LoRA
   everywhere on a model built with `checkpoint: true` (the backbone is frozen, so the
   recomputation is all it costs). The issue's bound is 0.7x of full fine-tuning's
   training peak.

Memory: "step" is the high-water mark of tensor memory torch allocates during one step
above what was allocated before it (activations, gradients, temporaries), from the
profiler's allocation events (`tools/bench.py`'s `peak_memory`); "train" adds what stays
allocated between steps, the weights and AdamW's state: the memory a training run needs.
Times are the median of `--runs` steps after warm-up. Needs PEFT for part 2 (`pip install peft`).

Usage:
    python tools/bench_models.py
    python tools/bench_models.py --arch unet --input 1,8,1,128,128 --runs 5 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable
from typing import Any

import torch
from bench import peak_memory, run_times  # tools/bench.py, next to this script

import stcnnt_dsl
from stcnnt_dsl.tools.adapt import apply_lora, lora_targets

HEADS = {"seg": {"kind": "segmentation", "classes": 4}}
# the stages a late-only LoRA adapts: the decoder (U-Net), the coarse levels (HR-Net)
LATE = {"unet": ("decoder.*",), "hrnet": ("level2.*", "level3.*"), "llm": ("blocks.3",)}


def _whole(arch: str, checkpoint: bool = False) -> dict[str, Any]:
    spec = stcnnt_dsl.load_spec(arch).model_dump(exclude_none=True, round_trip=True)
    if checkpoint:  # every block recomputes its activations in the backward
        spec["defaults"] = {**spec.get("defaults", {}), "checkpoint": True}
    return {**spec, "heads": HEADS}


def _step(
    model: torch.nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer
) -> Callable[[], None]:
    """One training step: forward, a loss over every output, backward, AdamW update."""

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        outs = out.values() if isinstance(out, dict) else [out]
        sum(o.float().square().mean() for o in outs).backward()
        opt.step()

    return step


def _bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _measure(model: torch.nn.Module, x: torch.Tensor, runs: int) -> dict[str, float]:
    """Step time; the step's peak (activations, gradients, temporaries); and the training
    peak: that plus the weights and AdamW's state, which stay allocated between steps."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    step = _step(model, x, opt)
    times = run_times(step, x.device, runs, warmup=2)  # the warm-up creates AdamW's state
    with peak_memory(x.device) as mem:
        step()
    held = _bytes(model.parameters()) + _bytes(
        v for state in opt.state.values() for v in state.values()
    )
    return {
        "step_ms": 1e3 * statistics.median(times),
        "step_peak_mib": mem["peak"] / 2**20,
        "training_peak_mib": (mem["peak"] + held) / 2**20,
        "trainable": sum(p.numel() for p in trainable),
    }


def bench(
    arch: str, shape: tuple[int, ...], runs: int, rank: int, late: tuple[str, ...]
) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.randn(shape)
    whole = stcnnt_dsl.build(_whole(arch), seed=0).train()
    backbone = copy.deepcopy(whole.backbone)
    rows = {"backbone": _measure(backbone, x, runs), "model": _measure(whole, x, runs)}

    import peft

    checkpointed = stcnnt_dsl.build(_whole(arch, checkpoint=True), seed=0).train()
    for key, stages, base in (
        ("lora", (), whole),
        ("lora_late", late, whole),
        ("lora_ckpt", (), checkpointed),
    ):
        adapted = copy.deepcopy(base)
        config = peft.LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=lora_targets(adapted, *stages),
            modules_to_save=[f"heads.{name}" for name in HEADS],
        )  # fmt: skip
        rows[key] = _measure(apply_lora(adapted, config).train(), x, runs)
    full = rows["model"]
    return {
        "arch": arch,
        "input": list(shape),
        "late_stages": list(late),
        "rows": rows,
        "model_over_backbone_time": full["step_ms"] / rows["backbone"]["step_ms"],
        "lora_over_full_memory": rows["lora"]["training_peak_mib"] / full["training_peak_mib"],
        "lora_late_over_full_memory": (
            rows["lora_late"]["training_peak_mib"] / full["training_peak_mib"]
        ),
        "lora_checkpointed_over_full_memory": (
            rows["lora_ckpt"]["training_peak_mib"] / full["training_peak_mib"]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["unet", "hrnet"])
    parser.add_argument("--input", type=lambda s: tuple(int(v) for v in s.split(",")),
                        default=(1, 8, 1, 128, 128), help="B,T,C,H,W")  # fmt: skip
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    results = [bench(a, args.input, args.runs, args.rank, LATE[a]) for a in args.arch]
    print(f"input {'x'.join(map(str, args.input))}; {torch.get_num_threads()} threads; "
          f"median of {args.runs} steps (AdamW)")  # fmt: skip
    head = (
        f"{'arch':6} {'run':36} {'step ms':>8} {'step MiB':>9} {'train MiB':>10} {'trainable':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        late = ",".join(r["late_stages"])
        names = {"backbone": "backbone alone", "model": "model, full fine-tuning",
                 "lora": f"LoRA r{args.rank}, frozen backbone",
                 "lora_late": f"LoRA r{args.rank} on {late} only",
                 "lora_ckpt": f"LoRA r{args.rank}, checkpoint: true"}  # fmt: skip
        for key, row in r["rows"].items():
            print(f"{r['arch']:6} {names[key]:36} {row['step_ms']:8.1f} "
                  f"{row['step_peak_mib']:9.1f} {row['training_peak_mib']:10.1f} "
                  f"{row['trainable']:11,}")  # fmt: skip
        print(f"  model / backbone step time: {r['model_over_backbone_time']:.3f}x (bound 1.1x)")
        print(f"  LoRA / full training peak: {r['lora_over_full_memory']:.3f}x, on late stages "
              f"only {r['lora_late_over_full_memory']:.3f}x, with checkpointing "
              f"{r['lora_checkpointed_over_full_memory']:.3f}x (bound 0.7x)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
