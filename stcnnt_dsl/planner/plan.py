"""`plan`: architecture, patch, batch and recipe for a data set and a memory budget."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ShapeError, STCNNTError
from ..graph.build import build_graph
from ..graph.model import ModelGraph, describe_rule
from ..language.spec import ArchSpec, dump_spec, load_spec
from ..language.yamlio import dump_yaml
from ..units import human_bytes
from .fit import ceil_to, largest_batch, shrink_axis
from .memory import (
    HEADROOM,
    MemoryEstimate,
    check_device,
    parse_memory,
    step_memory,
)
from .rules import (
    BASE_WIDTH,
    CPU_SAMPLE_FLOPS,
    MAX_FRAMES,
    MIN_WIDTH,
    Fingerprint,
    design,
    heads_for,
    read_fingerprint,
    round_patch,
)

__all__ = ["Plan", "plan", "schedule_for"]

MIN_BATCH = 2  # nnU-Net's: batch statistics and a stable step need two samples
# CPU plans: a step's voxels are what cost, so nnU-Net's MIN_BATCH whole patches are
# spread over this many crops (each axis scaled alike): more independent samples for the
# same compute (docs/plan.md: the planned cine recipe then matched hand-written recipe (a)
# in 4 of 5 seeds at the same wall time, where 2 whole padded clips a step matched it in 0).
CPU_BATCH = 8
DATA_FRACTION = 0.05  # a batch covers at most 5% of the data set's voxels (nnU-Net)
STEPS = 1000
# AdamW's learning rate at nnU-Net's start width; a narrower network takes a larger one
# in proportion (muP, Yang et al. 2021: Adam's best rate for hidden weights scales as
# 1/width), so a CPU plan's narrower network is not trained at the wide one's rate.
LR = 1e-3


@dataclass
class Plan:
    """A plan: `spec` (an `ArchSpec`, heads included), `patch` [T, H, W], `batch`,
    `predicted_bytes` (the training step's peak), `recipe` (a mapping for `stcnnt
    train`), `reasons` (why each choice, by topic) and the prediction's parts."""

    spec: ArchSpec
    patch: list[int]
    batch: int
    predicted_bytes: int
    budget: int
    device: str
    memory: MemoryEstimate
    recipe: dict[str, Any]
    reasons: dict[str, list[str]] = field(default_factory=dict)
    flops: int = 0
    padded: bool = False

    @property
    def spec_yaml(self) -> str:
        return dump_spec(self.spec)

    @property
    def recipe_yaml(self) -> str:
        return dump_yaml(self.recipe)

    def to_dict(self) -> dict[str, Any]:
        """The `--json` document (DESIGN.md: spec and recipe as YAML text)."""
        return {
            "spec": self.spec_yaml, "patch": list(self.patch), "batch": self.batch,
            "predicted_bytes": self.predicted_bytes, "recipe": self.recipe_yaml,
            "budget": self.budget, "device": self.device, "memory": self.memory.to_dict(),
            "flops": self.flops, "padded": self.padded, "reasons": self.reasons,
        }  # fmt: skip

    def write(self, out: str | os.PathLike) -> list[Path]:
        """`out/arch.yaml` and `out/recipe.yaml` (whose `model` is `arch.yaml`), each
        written to a temporary file first and renamed."""
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise STCNNTError(f"--out {folder} is a file; give a folder")
        folder.mkdir(parents=True, exist_ok=True)
        recipe = {**self.recipe, "model": "arch.yaml"}
        written = []
        for name, text in (("arch.yaml", self.spec_yaml), ("recipe.yaml", dump_yaml(recipe))):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, folder / name)
            written.append(folder / name)
        return written

    def __str__(self) -> str:
        t, h, w = self.patch
        lines = [
            f"plan: patch {t}x{h}x{w} (T x H x W), batch {self.batch}, predicted peak "
            f"{human_bytes(self.predicted_bytes)} of {human_bytes(self.budget)} "
            f"({self.device}, AdamW, float32)",
            f"  weights {human_bytes(self.memory.weights)}, gradients "
            f"{human_bytes(self.memory.gradients)}, AdamW state "
            f"{human_bytes(self.memory.optimizer)}, activations "
            f"{human_bytes(self.memory.activations)}, workspace "
            f"{human_bytes(self.memory.workspace)} (peak in the {self.memory.phase} phase)",
        ]
        for topic, items in self.reasons.items():
            lines.append(f"{topic}:")
            lines += [f"  - {item}" for item in items]
        return "\n".join(lines)


def _graph(spec: Any) -> ModelGraph:
    return build_graph(spec)


def schedule_for(steps: int) -> dict[str, Any]:
    """The recipe keys that follow the number of steps (a plan's rule): warm-up over the
    first 5%, a held-out evaluation and a checkpoint every 10%."""
    tenth = max(1, steps // 10)
    return {
        "steps": steps,
        "schedule": {"name": "cosine", "warmup": steps // 20},
        "eval_every": tenth,
        "checkpoint_every": tenth,
    }


def _recipe(fp: Fingerprint, spec: ArchSpec, patch: list[int], batch: int,
            path: str | None, lr: float) -> dict[str, Any]:  # fmt: skip
    data = spec.model_dump(mode="json", exclude_none=True, exclude_unset=True)
    heads = data.pop("heads", None)
    task = {"segment": "segment", "classify": "classify"}.get(fp.task, "pretrain")
    recipe: dict[str, Any] = {
        "model": _plain(dump_spec(spec), drop="heads"),
        "heads": heads,
        "task": task,
        "data": {
            "path": path or "DATASET",
            "patch": list(patch),
            "batch": batch,
            "val": 0.2,
            "augment": augment_for(fp, patch),
        },
        "steps": STEPS,
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.01},
        "schedule": None,
        "adapt": {"method": "full"},
        "init": None,
        "precision": "fp32",
        "seed": 0,
        "eval_every": None,
        "checkpoint_every": None,
        "distributed": "ddp",
    }
    recipe.update(schedule_for(STEPS))
    if task == "pretrain":
        recipe["objective"] = "denoise"
    return recipe


def augment_for(fp: Fingerprint, patch: list[int]) -> list[dict[str, Any]]:
    """nnU-Net's augmentations that need no interpolation: mirroring in-plane, and
    quarter turns where H and W have the same spacing and the patch is square (a turn
    then keeps both the geometry and the patch's shape)."""
    out: list[dict[str, Any]] = [{"RandFlip": {"spatial_axis": [1, 2], "prob": 0.5}}]
    if patch[1] == patch[2] and math.isclose(fp.spacing[1], fp.spacing[2], rel_tol=0.01):
        out.append({"RandRotate90": {"spatial_axes": [1, 2], "prob": 0.5}})
    return out


def _cpu_width(fp: Fingerprint, patch: list[int]) -> tuple[int, str]:
    """The widest start width (`BASE_WIDTH` halved, at least `MIN_WIDTH`) whose forward
    of one `patch` sample takes at most `CPU_SAMPLE_FLOPS`, and why."""
    width, flops = BASE_WIDTH, 0
    shape = (1, patch[0], fp.channels, patch[1], patch[2])
    while True:
        flops = sum(_graph(design(fp, tuple(patch), width)[0]).flops(shape).values())
        if flops <= CPU_SAMPLE_FLOPS or width <= MIN_WIDTH:
            break
        width //= 2
    cap = f"{CPU_SAMPLE_FLOPS / 1e9:g} GFLOP"
    return width, (
        f"start width {width} (cpu): one sample's forward takes {flops / 1e9:.2f} GFLOP, "
        + (f"within {cap}" if flops <= CPU_SAMPLE_FLOPS else f"over {cap} even so")
        + f" (nnU-Net's {BASE_WIDTH} halved while over, at least {MIN_WIDTH}): on a CPU "
        "compute binds before memory (docs/plan.md)"
    )


def _cpu_crop(start: list[int], rounded: Any) -> list[int]:
    """The patch of which `CPU_BATCH` crops hold the voxels of `MIN_BATCH` `start`
    patches: every axis longer than 1 scaled by the same factor, rounded up to the size
    rule (`rounded`)."""
    axes = sum(v > 1 for v in start)
    factor = (MIN_BATCH / CPU_BATCH) ** (1 / max(axes, 1))
    target = [max(1, round(v * factor)) if v > 1 else v for v in start]
    return list(rounded(tuple(target), True))


def _plain(yaml_text: str, drop: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(yaml_text)
    data.pop(drop, None)
    return data


def plan(
    dataset: Any,
    *,
    memory: str | int,
    device: str = "cuda",
    batch: int | None = None,
    base: Any = None,
) -> Plan:
    """Plan training for `dataset` (a `stcnnt_dsl.data.Dataset`, a data set folder, or
    its fingerprint dict) within `memory` (`8GiB`, `8GB`, bytes): the architecture
    (the rules of `stcnnt_dsl.planner.rules`, or `base` kept as given), the largest
    patch and batch whose predicted training-step peak fits (on a CPU: `CPU_BATCH` crops
    holding the voxels of `MIN_BATCH` such patches), and a recipe."""
    device = check_device(device)
    budget = parse_memory(memory)
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise STCNNTError(f"batch must be a positive integer, got {batch!r}")
    path = None if isinstance(dataset, dict) else str(getattr(dataset, "root", dataset))
    fp = read_fingerprint(dataset)
    reasons: dict[str, list[str]] = {"data": [], "architecture": [], "patch": [], "batch": []}
    t0, h0, w0 = fp.median
    reasons["data"].append(
        f"{fp.cases} cases, {fp.channels} channel(s), task {fp.task}; median image "
        f"{t0}x{h0}x{w0} (T x H x W), spacing {'x'.join(f'{s:g}' for s in fp.spacing)} mm"
    )

    width = BASE_WIDTH
    if base is not None:
        base_spec = load_spec(base)
        if base_spec.heads is None:
            base_spec = ArchSpec.model_validate(
                {**_plain(dump_spec(base_spec), drop=""), "heads": heads_for(fp),
                 "in_channels": fp.channels}
            )  # fmt: skip
        base_graph = _graph(base_spec)
        make = lambda patch: (base_graph, [])  # noqa: E731
        mh, mw = base_graph.rule().multiple

        def rounded(target, up):
            step = (lambda v, m: ceil_to(v, m)) if up else (lambda v, m: max(m, v // m * m))
            return target[0], step(target[1], mh), step(target[2], mw)

        reasons["architecture"].append(f"kept as given (--base): {base_spec.name or 'spec'}")
    else:
        mh = mw = 16
        rounded = lambda target, up: round_patch(target, up=up)  # noqa: E731

        def make(patch):
            spec, why = design(fp, patch, width)
            return _graph(spec), why

    target = [min(t0, MAX_FRAMES), h0, w0]
    start = list(rounded(target, True))
    if base is None and device == "cpu":
        width, why_width = _cpu_width(fp, start)
        reasons["architecture"].append(why_width)
    if t0 > MAX_FRAMES:
        reasons["patch"].append(f"T {t0} capped at {MAX_FRAMES} frames per patch")
    steps = [1, mh, mw]
    floor = [1, mh, mw]

    def fit(start: list[int], want: int) -> tuple[list[int], int, ModelGraph, list[str]]:
        """Shrink `start` until `want` samples fit (fewer where the smallest patch
        cannot hold them and the batch is not given)."""
        patch, target = list(start), list(start)
        while True:
            graph, why = make(tuple(patch))
            try:
                graph.check(patch[0], patch[1], patch[2])
            except ShapeError as err:  # a --base whose rule is more than a multiple
                raise STCNNTError(f"--base cannot run on the patch {patch}: {err}") from None
            fitting = largest_batch(graph, patch, budget, device, cap=want)
            if fitting >= want:
                return patch, want, graph, why
            axis = shrink_axis(patch, fp.spacing, steps, floor)
            if axis is None:
                if batch is None and fitting:
                    return patch, fitting, graph, why  # said in the batch's reasons
                peak = step_memory(graph, (want, *patch[:1], graph.in_channels, *patch[1:]),
                                   device).peak_bytes  # fmt: skip
                raise STCNNTError(
                    f"memory {human_bytes(budget)} is too small for any valid patch: the "
                    f"smallest, {patch[0]}x{patch[1]}x{patch[2]} (T x H x W) with batch "
                    f"{want}, needs {human_bytes(peak)} ({device}, AdamW, float32; plans "
                    f"keep {1 - HEADROOM:.0%} headroom); give --memory "
                    f"{math.ceil(peak / HEADROOM / 2**20)}MiB or more"
                )
            target[axis] = min(target[axis], patch[axis]) - steps[axis]
            patch = list(rounded(tuple(target), False))

    want = batch or MIN_BATCH
    patch, want, graph, why = fit(start, want)
    if patch != start:
        reasons["patch"].append(
            f"shrunk from {start[0]}x{start[1]}x{start[2]} to {patch[0]}x{patch[1]}x"
            f"{patch[2]} until batch {want} fits: the axis with the largest extent in mm "
            "first, an anisotropic axis last"
        )
    else:
        reasons["patch"].append(
            f"{patch[0]}x{patch[1]}x{patch[2]}: the median image (rounded up to the size "
            "rule), every frame" + ("" if t0 <= MAX_FRAMES else " up to the cap")
        )
    cropped = False
    if device == "cpu" and batch is None and want == MIN_BATCH:
        whole = patch
        crop = _cpu_crop(whole, rounded)
        cropped = crop != whole
        if cropped:
            patch, want, graph, why = fit(crop, CPU_BATCH)
            reasons["patch"].append(
                f"{patch[0]}x{patch[1]}x{patch[2]} crops, {want} a step (cpu): a step's "
                f"voxels are what cost on a CPU, so those of {MIN_BATCH} {whole[0]}x"
                f"{whole[1]}x{whole[2]} patches are spread over {CPU_BATCH} crops (every axis "
                "scaled alike, rounded up to the size rule): more independent samples for "
                "the same compute (docs/plan.md)"
                + ("" if patch == crop else f"; shrunk from {crop[0]}x{crop[1]}x{crop[2]} "
                   f"until batch {want} fits")
            )  # fmt: skip
    padded = patch[1] > h0 or patch[2] > w0  # a CPU plan's crops need none
    if padded:
        reasons["patch"].insert(0,
            f"the median image {h0}x{w0} is padded to {patch[1]}x{patch[2]}: the "
            f"architecture takes {describe_rule(graph.rule())}"
            + ("" if h0 % 16 == 0 and w0 % 16 == 0 else
               f"; no planned U-Net runs on {h0}x{w0} without padding (every level halves "
               "H and W, and a window must tile each map: multiples of 16 at least)")
        )  # fmt: skip
    reasons["architecture"] += why
    if batch is not None:
        chosen = batch
        reasons["batch"].append(f"{batch}: given")
    elif cropped:
        chosen = want
        reasons["batch"].append(
            f"{want} (cpu): the crops above; a larger batch would only make a step longer"
            if want == CPU_BATCH else f"{want}: even the smallest crop does not fit {CPU_BATCH}"
        )  # fmt: skip
    elif want < MIN_BATCH:
        chosen = want
        reasons["batch"].append(f"{want}: even the smallest patch does not fit {MIN_BATCH}")
    else:
        cap = max(want, int(DATA_FRACTION * fp.cases * fp.voxels / math.prod(patch)))
        chosen = max(want, largest_batch(graph, patch, budget, device, cap=cap))
        reasons["batch"].append(
            f"{chosen}: the largest that fits, at least {MIN_BATCH} (nnU-Net's), at most "
            f"{cap} (a batch covers at most {DATA_FRACTION:.0%} of the data set's voxels)"
        )  # fmt: skip
    shape = (chosen, patch[0], graph.in_channels, patch[1], patch[2])
    est = step_memory(graph, shape, device)
    reasons["memory"] = [
        f"predicted peak {human_bytes(est.peak_bytes)} of {human_bytes(budget)}: weights, "
        f"gradients, AdamW state, activations kept for backward, workspace; at most "
        f"{HEADROOM:.0%} of the budget (the prediction's error, docs/plan.md)"
    ]
    spec = graph.spec
    flops = sum(graph.flops(shape).values())
    lr = LR * BASE_WIDTH / width  # with --base the width stays BASE_WIDTH: LR
    reasons["recipe"] = [
        f"AdamW lr {lr:g}: {LR:g} at width {BASE_WIDTH}, times {BASE_WIDTH}/{width} (muP: "
        "Adam's best rate scales as 1/width)" if base is None else
        f"AdamW lr {LR:g} (the architecture is given: its width is kept, so is the rate)",
        f"{STEPS} steps, cosine with 5% warm-up, a held-out evaluation and a checkpoint "
        "every 10% (`schedule_for(steps)` gives them for the steps your time allows)",
    ]  # fmt: skip
    return Plan(
        spec=spec, patch=patch, batch=chosen, predicted_bytes=est.peak_bytes, budget=budget,
        device=device, memory=est, recipe=_recipe(fp, spec, patch, chosen, path, lr),
        reasons={k: v for k, v in reasons.items() if v}, flops=flops, padded=padded,
    )  # fmt: skip
