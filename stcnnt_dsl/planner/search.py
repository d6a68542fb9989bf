"""`--search N`: a multi-objective search over what the language expresses, with Optuna.

Each trial is a U-Net spec at the plan's patch and batch: levels, base width (doubled per
level up to the cap), one block string per level and for the bridge, the attention
window and the mixer ratio. Objectives: predicted FLOPs of one sample's forward (the
capacity, maximised) and the predicted training-step peak (`memory.step_memory`,
minimised); with `proxy_steps`, the held-out metric of a short training run
(`stcnnt_dsl.train`: Dice, accuracy or PSNR) is the quality (maximised) and FLOPs a
cost (minimised). Optuna's NSGA-II
sampler with a constraint (the peak within the budget) does the searching; here is only
the search space and the report (the front as a table and an SVG plot, each point a
spec).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import STCNNTError
from ..graph.build import build_graph
from ..language.spec import dump_spec
from ..language.yamlio import dump_yaml
from ..units import human_bytes
from .memory import HEADROOM, parse_memory, step_memory, within
from .plan import plan
from .rules import GRID, MAX_LEVELS, MAX_WIDTH, heads_for, read_fingerprint

__all__ = ["Front", "Point", "search"]

WIDTHS = (8, 16, 24, 32, 48, 64)
WINDOWS = (4, 8, 16)
MIXER_RATIOS = (1.0, 2.0, 4.0)
SPATIAL = ("L1", "L0", "L1G1", "L0G0", "L1L1", "G1", "C2L1", "L1G1G1")


@dataclass
class Point:
    """One architecture of the front (or of the search)."""

    trial: int
    spec: str  # YAML text load_spec reads
    flops: int
    memory: int
    proxy: float | None = None  # the held-out metric after --proxy STEPS
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "flops": self.flops, "memory": self.memory,
                "proxy": self.proxy, "summary": self.summary, "spec": self.spec}  # fmt: skip


@dataclass
class Front:
    """The Pareto front (fitting the budget), best FLOPs first, and what was searched."""

    points: list[Point]
    trials: int
    failed: int
    over_budget: int
    patch: list[int]
    batch: int
    budget: int
    others: list[tuple[int, int]] = field(default_factory=list)  # (flops, memory) not on it

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "failed": self.failed, "over_budget": self.over_budget,
                "patch": self.patch, "batch": self.batch, "budget": self.budget,
                "front": [p.to_dict() for p in self.points]}  # fmt: skip

    def table(self) -> str:
        head = (f"Pareto front: {len(self.points)} of {self.trials} trials (patch "
                f"{'x'.join(map(str, self.patch))}, batch {self.batch}; {self.over_budget} "
                f"over the budget, {self.failed} invalid)")  # fmt: skip
        rows = [("#", "trial", "GFLOPs/sample", "peak", "proxy", "architecture")]
        for i, p in enumerate(self.points):
            proxy = "-" if p.proxy is None else f"{p.proxy:.4f}"
            rows.append((str(i), str(p.trial), f"{p.flops / 1e9:.3f}", human_bytes(p.memory),
                         proxy, p.summary))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                          for r in rows]  # fmt: skip
        return "\n".join(line.rstrip() for line in lines)

    def svg(self) -> str:
        """FLOPs (x) against predicted peak (y): the front joined, the others grey."""
        w, h, pad = 640, 420, 60
        pts = [(p.flops, p.memory) for p in self.points] + self.others
        if not pts:
            return f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}"></svg>'
        xs, ys = [math.log10(max(x, 1)) for x, _ in pts], [y / 2**20 for _, y in pts]
        x0, x1 = min(xs), max(xs) + 1e-9
        y0, y1 = 0.0, max(max(ys), self.budget / 2**20) * 1.05

        def at(flops: int, mem: int) -> tuple[float, float]:
            x = pad + (math.log10(max(flops, 1)) - x0) / (x1 - x0 or 1) * (w - 2 * pad)
            y = h - pad - (mem / 2**20 - y0) / (y1 - y0) * (h - 2 * pad)
            return x, y

        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
               'font-family="sans-serif" font-size="12">',
               f'<rect width="{w}" height="{h}" fill="white"/>',
               f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
               f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
               f'<text x="{w / 2}" y="{h - 20}" text-anchor="middle">FLOPs per sample '
               f'(log, {10**x0 / 1e9:.3g} to {10**x1 / 1e9:.3g} G)</text>',
               f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" '
               f'text-anchor="middle">predicted peak (MiB, 0 to {y1:.0f})</text>']  # fmt: skip
        by = h - pad - (self.budget / 2**20 - y0) / (y1 - y0) * (h - 2 * pad)
        out.append(f'<line x1="{pad}" y1="{by:.1f}" x2="{w - pad}" y2="{by:.1f}" '
                   'stroke="red" stroke-dasharray="4"/>'
                   f'<text x="{w - pad}" y="{by - 4:.1f}" text-anchor="end" fill="red">budget '
                   f'{human_bytes(self.budget)}</text>')  # fmt: skip
        for flops, mem in self.others:
            x, y = at(flops, mem)
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#bbb"/>')
        line = " ".join("{:.1f},{:.1f}".format(*at(p.flops, p.memory)) for p in self.points)
        out.append(f'<polyline points="{line}" fill="none" stroke="#1f77b4"/>')
        for i, p in enumerate(self.points):
            x, y = at(p.flops, p.memory)
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#1f77b4"><title>#{i}: '
                       f'{p.summary}</title></circle>'
                       f'<text x="{x + 6:.1f}" y="{y - 6:.1f}">{i}</text>')  # fmt: skip
        out.append("</svg>")
        return "\n".join(out)

    def write(self, out: str | os.PathLike) -> list[Path]:
        """`front.svg`, `front.yaml` (every point with its spec) and `front/N.yaml`."""
        folder = Path(out)
        (folder / "front").mkdir(parents=True, exist_ok=True)
        files = {folder / "front.svg": self.svg(),
                 folder / "front.yaml": dump_yaml(self.to_dict())}  # fmt: skip
        files.update({folder / "front" / f"{i}.yaml": p.spec for i, p in enumerate(self.points)})
        for path, text in files.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        return [folder / "front.svg", folder / "front.yaml"]


def _spec(trial: Any, t: int, h: int, w: int, channels: int, heads: dict) -> tuple[dict, str]:
    """The trial's spec; every choice is asked of Optuna (the same names every trial,
    so NSGA-II can cross them over)."""
    max_levels = max(1, min(MAX_LEVELS, int(math.log2(min(h, w) // 4))))
    levels = trial.suggest_int("levels", 1, max_levels)
    base = trial.suggest_categorical("width", WIDTHS)
    window = trial.suggest_categorical("window", WINDOWS)
    ratio = trial.suggest_categorical("mixer_ratio", MIXER_RATIOS)
    temporal = trial.suggest_categorical("temporal", (True, False)) if t > 1 else False
    blocks = []
    for i in range(MAX_LEVELS + 1):  # asked for every level: a fixed space
        block = trial.suggest_categorical(f"block{i}", SPATIAL)
        if i <= levels:
            blocks.append(("T1" if temporal else "") + block)
    widths = [min(base * 2**i, MAX_WIDTH) for i in range(levels)]
    spec = {
        "name": f"search-{trial.number}", "in_channels": channels,
        "defaults": {"window": window, "patch": 2, "grid": GRID, "norm": "instance2d",
                     "mixer_ratio": ratio},
        "unet": {"channels": widths, "blocks": blocks},
        "heads": heads,
    }  # fmt: skip
    summary = f"{widths} {' '.join(blocks)} window {window} mixer x{ratio:g}"
    return spec, summary


def _proxy_metric(spec: dict, plan_recipe: dict, steps: int) -> float:
    """The held-out metric (Dice, accuracy or PSNR: higher is better) after `steps`
    training steps of the planned recipe with this architecture."""
    from ..train import train

    if plan_recipe["data"]["path"] == "DATASET":
        raise STCNNTError("--proxy trains on the data set: give its folder, not a fingerprint")
    recipe = {**plan_recipe, "model": {k: v for k, v in spec.items() if k != "heads"},
              "heads": spec["heads"], "steps": steps, "eval_every": steps,
              "checkpoint_every": steps, "schedule": {"name": "cosine", "warmup": 0}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        result = train(recipe, out=tmp, quiet=True)
    if result.last is None:
        raise STCNNTError("--proxy needs held-out cases (data.val) to score a candidate")
    return float(result.last)


def search(
    dataset: Any,
    *,
    memory: str | int,
    device: str = "cuda",
    trials: int = 100,
    proxy_steps: int = 0,
    seed: int = 0,
    quiet: bool = True,
) -> Front:
    """The FLOPs / memory Pareto front of `trials` architectures (Optuna NSGA-II) at the
    patch and batch `plan` chooses for `dataset` within `memory`."""
    try:
        import optuna
    except ImportError:
        raise STCNNTError('--search needs Optuna: pip install "stcnnt-dsl[plan]"') from None
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise STCNNTError(f"--search needs a positive number of trials, got {trials!r}")
    budget = parse_memory(memory)
    fp = read_fingerprint(dataset)
    base = plan(dataset, memory=budget, device=device)
    t, h, w = base.patch
    heads = heads_for(fp)
    points: dict[int, Point] = {}

    def objective(trial: Any) -> tuple[float, ...]:
        spec, summary = _spec(trial, t, h, w, fp.channels, heads)
        try:
            graph = build_graph(spec)
            graph.check(t, h, w)
        except STCNNTError:  # not an architecture for this patch: Optuna skips it
            raise optuna.TrialPruned() from None
        shape = (base.batch, t, fp.channels, h, w)
        peak = step_memory(graph, shape, device).peak_bytes
        flops = sum(graph.flops((1, t, fp.channels, h, w)).values())
        trial.set_user_attr("peak", peak)
        trial.set_constraint("memory", float(peak - HEADROOM * budget))  # feasible: fits
        values: tuple[float, ...] = (float(flops), float(peak))
        loss = None
        if proxy_steps and within(peak, budget):
            loss = _proxy_metric(spec, base.recipe, proxy_steps)
            values += (loss,)
        elif proxy_steps:
            values += (-math.inf,)
        points[trial.number] = Point(trial.number, dump_spec(spec), flops, peak, loss, summary)
        return values

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    population = min(50, max(4, trials // 4))
    sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    # Without a proxy, FLOPs stand for capacity (more is better) against memory; with
    # one, the held-out metric is the quality (maximised) and FLOPs a cost (minimised).
    directions = ["minimize", "minimize", "maximize"] if proxy_steps else ["maximize", "minimize"]
    study = optuna.create_study(directions=directions, sampler=sampler)
    study.optimize(objective, n_trials=trials, show_progress_bar=not quiet)
    done = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    pruned = len(study.trials) - len(done)
    fitting = [tr for tr in done if within(tr.user_attrs["peak"], budget)]
    best = {tr.number for tr in study.best_trials if within(tr.user_attrs["peak"], budget)}
    unique: dict[str, Point] = {}  # blocks of unused levels differ: the same spec twice
    for n in sorted(best):
        unique.setdefault(points[n].spec.split("\n", 1)[1], points[n])
    front = sorted(unique.values(), key=lambda p: (p.flops, p.memory))
    others = [(points[tr.number].flops, points[tr.number].memory)
              for tr in done if tr.number not in best]  # fmt: skip
    return Front(front, trials, pruned, len(done) - len(fitting),
                 list(base.patch), base.batch, budget, others)  # fmt: skip
