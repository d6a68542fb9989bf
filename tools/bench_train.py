"""Training from recipes, measured: the numbers in README.md's training section.

    python tools/bench_train.py --recipe-a      # (a): held-out Dice over wall time
    python tools/bench_train.py --planned 2GiB # `stcnnt plan`'s recipe against (a), same time
    python tools/bench_train.py --planned 2GiB --seeds 3   # ... once per seed, in turn
    python tools/bench_train.py --overhead      # the engine against a bare loop, step by step
    python tools/bench_train.py --lora-memory   # peak memory of LoRA against full fine-tuning
    python tools/bench_train.py --distributed   # torchrun 2 processes (gloo) against one
    python tools/bench_train.py --resume        # SIGKILL mid-run, --resume, compare weights
    python tools/bench_train.py --adapt         # (b): pretrain + LoRA against scratch, 16 cases
    python tools/bench_train.py --classify      # (c): classification from a folder of PNGs
    python tools/bench_train.py --curve 4,16    # (d): label efficiency, pretrained on a mix
                                                #   (writes runs/curve.json, docs/*.svg)

The data sets are written under data/ by examples/make_dataset.py (and the PNGs here) when
missing; runs go to runs/bench_*. Everything runs on the CPU with OMP_NUM_THREADS=1 per
process unless set. The machine, threads and load average are printed with the results.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from make_dataset import make_dataset  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from synthetic import machine  # noqa: E402

import stcnnt_dsl  # noqa: E402
from stcnnt_dsl.tools.io import read_metadata  # noqa: E402

DATA = ROOT / "data"
RUNS = ROOT / "runs"
RECIPES = ROOT / "recipes"
SCRATCH = "unet(channels=[8, 16], blocks=T1L1G1, window=4, patch=2)"


def ensure_data() -> None:
    """The generated data sets the recipes read (written once)."""
    wanted = {
        "Dataset001_Cine": dict(kind="2d+t", cases=40, seed=0),
        "Dataset002_CineUnlabelled": dict(kind="2d+t", cases=48, seed=1),
        "Dataset003_Volumes": dict(kind="3d", cases=24, seed=2),
    }
    for name, args in wanted.items():
        if not (DATA / name / "dataset.json").exists():
            make_dataset(DATA / name, **args)
    if not (DATA / "Shapes_png").exists():
        make_dataset(DATA / "Shapes_png", kind="png", cases=64, seed=0, size=(32, 32))


def train(recipe: str | Path, out: str, *sets: str, **kwargs) -> stcnnt_dsl.train.TrainResult:
    return stcnnt_dsl.train(recipe, out=RUNS / out, overwrite=True, overrides=sets, **kwargs)


def metrics(out: str) -> list[dict[str, float]]:
    with (RUNS / out / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def recipe_a() -> None:
    result = train(RECIPES / "segment_2dt.yaml", "bench_a")
    rows = [r for r in metrics("bench_a") if "val_dice" in r]
    for r in rows:
        print(f"step {int(r['step'])}: held-out Dice {r['val_dice']:.4f} at {r['seconds']:.0f} s")
    first = next((r for r in rows if r["val_dice"] >= 0.9), None)
    print(f"(a) Dice >= 0.9 first at step {int(first['step'])}, {first['seconds']:.0f} s "
          f"after the start" if first else "(a) Dice never reached 0.9")  # fmt: skip
    print(f"(a) best {result.best:.4f}; whole run {result.seconds:.0f} s")


def _stcnnt(*args: str | Path) -> tuple[dict, float]:
    """`stcnnt ARGS --json` in a fresh process: its JSON document and wall seconds."""
    exe = Path(sys.executable).with_name("stcnnt")
    begin = time.perf_counter()
    done = subprocess.run([str(exe), *map(str, args), "--json"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout), time.perf_counter() - begin


def _held_out(recipe: Path) -> list[str]:
    """The names of the cases `recipe` holds out (its data.val and seed)."""
    from stcnnt_dsl.train.data import open_sources
    from stcnnt_dsl.train.recipe import load_recipe

    (source,) = open_sources(load_recipe(recipe))
    return [source.dataset.cases[i].name for i in source.val]


def _curve(out: str) -> str:
    rows = [r for r in metrics(out) if "val_dice" in r]
    return ", ".join(f"{r['val_dice']:.3f} at {r['seconds']:.0f} s (step {int(r['step'])})"
                     for r in rows)  # fmt: skip


def planned(memory: str, seeds: int = 1) -> None:
    """The planned architecture and recipe (`stcnnt plan Dataset001_Cine --memory
    MEMORY --device cpu`) against recipe (a) in the same wall time, each a fresh
    `stcnnt train` process, both validated on recipe (a)'s held-out cases. The planned
    run's steps fill recipe (a)'s wall time: its step and evaluation times are measured
    by a short run first, and the plan's schedule rule (`schedule_for`) sets warm-up,
    evaluations and checkpoints for that many steps. With `seeds` > 1 the pair runs
    once per seed (recipe `seed`: initial weights, crops, augmentation), (a) and the
    planned run in turn, so a change of the machine's load hits both alike."""
    from stcnnt_dsl.planner.plan import schedule_for

    out = RUNS / "bench_planned"
    recipe_a = RECIPES / "segment_2dt.yaml"
    held = _held_out(recipe_a)
    val = "data.val=[" + ", ".join(held) + "]"
    print(f"held-out cases (recipe (a)'s): {', '.join(held)}")
    doc, took = _stcnnt("plan", DATA / "Dataset001_Cine", "--memory", memory, "--device",
                        "cpu", "--out", out / "plan")  # fmt: skip
    print(f"plan ({took:.1f} s): patch {doc['patch']}, batch {doc['batch']}, predicted peak "
          f"{doc['predicted_bytes'] / 2**20:.0f} MiB of {memory}")  # fmt: skip
    print(doc["spec"])
    planned_recipe = out / "plan" / "recipe.yaml"
    data = f"data.path={(DATA / 'Dataset001_Cine').resolve()}"

    # the planned run's step and evaluation times: 6 steps, evaluated after 3 and 6
    probe, probe_wall = _stcnnt("train", planned_recipe, "--out", out / "probe",
                                "--overwrite", "--set", data, "--set", val,
                                "--set", "steps=6", "--set", "eval_every=3",
                                "--set", "checkpoint_every=0")  # fmt: skip
    secs = [r["seconds"] for r in metrics("bench_planned/probe")]
    step = statistics.median([secs[1] - secs[0], secs[2] - secs[1], secs[4] - secs[3],
                              secs[5] - secs[4]])  # fmt: skip
    evaluation = max(0.0, secs[3] - secs[2] - step)
    fixed = probe_wall - probe["seconds"]  # start-up: imports, data, model
    evals = 10  # schedule_for's cadence
    print(f"planned: {step:.2f} s per step, {evaluation:.1f} s per evaluation, "
          f"{fixed:.1f} s start-up")  # fmt: skip

    rows = []
    for seed in range(seeds):
        tag = f"seed {seed}: " if seeds > 1 else ""
        a, a_wall = _stcnnt("train", recipe_a, "--out", out / "a", "--overwrite", "--set",
                            val, "--set", f"seed={seed}")  # fmt: skip
        print(f"{tag}(a) {a['steps']} steps in {a_wall:.0f} s (process), held-out Dice last "
              f"{a['last']:.4f}, best {a['best']:.4f}: {_curve('bench_planned/a')}")  # fmt: skip
        steps = max(10, int((a_wall - fixed - evals * evaluation) / step))
        sets = [x for k, v in schedule_for(steps).items()
                for x in ("--set", f"{k}={json.dumps(v)}")]  # fmt: skip
        p, p_wall = _stcnnt("train", planned_recipe, "--out", out / "planned",
                            "--overwrite", "--set", data, "--set", val, "--set", f"seed={seed}",
                            *sets)  # fmt: skip
        print(f"{tag}planned {p['steps']} steps (to fill {a_wall:.0f} s) in {p_wall:.0f} s "
              f"(process), held-out Dice last {p['last']:.4f}, best {p['best']:.4f}: "
              f"{_curve('bench_planned/planned')}")  # fmt: skip
        # the strict reading: the planned run's last evaluation within (a)'s training time
        a_end = [r for r in metrics("bench_planned/a") if "val_dice" in r][-1]["seconds"]
        within = [r for r in metrics("bench_planned/planned")
                  if "val_dice" in r and r["seconds"] <= a_end]  # fmt: skip
        at_a = within[-1]["val_dice"] if within else float("nan")
        print(f"{tag}planned Dice within (a)'s {a_end:.0f} s of training: {at_a:.4f}")
        rows.append((a_wall, a["last"], p_wall, p["last"], at_a))
    median = lambda i: statistics.median(r[i] for r in rows)  # noqa: E731
    wins = sum(min(r[3], r[4]) >= r[1] for r in rows)
    print(f"same held-out cases, median of {len(rows)} seed(s): (a) {median(0):.0f} s -> Dice "
          f"{median(1):.4f}; planned {median(2):.0f} s -> Dice {median(3):.4f} ({median(4):.4f} "
          f"within (a)'s training time); planned >= (a) both ways in {wins} of "
          f"{len(rows)}")  # fmt: skip


def overhead(rounds: int = 4, steps: int = 10, warm: int = 2) -> None:
    """Step time of the engine (`Run.iteration`: the step, its metrics row, progress and
    the due checks) against a bare loop (batch, forward, loss, zero_grad, backward, AdamW
    step) on the same recipe, starting weights and batches. One step of each in turn, in
    one process, the order alternating, so the machine's load falls on both alike; the
    first `warm` pairs of every round are dropped. The overhead is the median of the
    pairs' ratios, with its quartiles and each round's median."""
    from stcnnt_dsl.train import engine
    from stcnnt_dsl.train.recipe import load_recipe

    sets = [f"steps={steps}", "eval_every=0", "checkpoint_every=0", "data.augment=[]"]
    src = load_recipe(RECIPES / "segment_2dt.yaml", overrides=sets)
    ratios: list[list[float]] = []
    times: dict[str, list[float]] = {"engine": [], "bare": []}
    with engine._Processes() as procs:
        for _ in range(rounds):
            run = engine.Run(src, RUNS / "bench_overhead", False, True, procs)
            progress = engine._Progress(run.total, 0, True, 0)
            steppers = {"engine": lambda step: run.iteration(step, progress, 0.0),  # noqa: B023
                        "bare": _bare_loop(src, run)}  # fmt: skip
            pairs = []
            for step in range(steps):
                took = {}
                for name in ("engine", "bare") if step % 2 else ("bare", "engine"):
                    begin = time.perf_counter()
                    steppers[name](step)
                    took[name] = time.perf_counter() - begin
                if step >= warm:
                    pairs.append(took["engine"] / took["bare"])
                    for name in took:
                        times[name].append(took[name])
            ratios.append(pairs)
    flat = [r for pairs in ratios for r in pairs]
    q1, q2, q3 = statistics.quantiles(flat, n=4)
    e, b = statistics.median(times["engine"]), statistics.median(times["bare"])
    print(f"engine {e * 1000:.0f} ms/step, bare loop {b * 1000:.0f} ms/step (medians of "
          f"{len(flat)} interleaved pairs, {rounds} rounds of {steps - warm})")  # fmt: skip
    print(f"overhead: median {100 * (q2 - 1):+.1f}% (quartiles {100 * (q1 - 1):+.1f}% .. "
          f"{100 * (q3 - 1):+.1f}%); per round: "
          + ", ".join(f"{100 * (statistics.median(p) - 1):+.1f}%" for p in ratios))  # fmt: skip


def _bare_loop(src: object, run: object) -> object:
    """step(i): the plain PyTorch loop on the run's data, with its own copy of the model
    (the same starting weights) and a plain AdamW."""
    from stcnnt_dsl.train.losses import make_loss
    from stcnnt_dsl.train.model import prepare_model

    recipe = src.recipe
    prepared = prepare_model(src, run.channels, run.classes, tuple(recipe.data.patch))
    model, head = prepared.model, prepared.head
    loss_fn = make_loss(recipe.task, recipe.loss, run.classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.optimizer.lr,
                                  weight_decay=recipe.optimizer.weight_decay)  # fmt: skip
    indices = range(recipe.data.batch)

    def step(i: int) -> None:
        batch = run.data.batch(i, indices)
        loss = loss_fn(model(batch.x)[head], batch.targets())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _peak_child(method: str, checkpoint: bool) -> None:
    """In a fresh process, one training step: the bytes autograd keeps for the backward
    (saved activations, each storage once), the gradients and the optimizer's state."""
    from stcnnt_dsl.train import engine
    from stcnnt_dsl.train.recipe import load_recipe

    sets = ["steps=2", "eval_every=0", "checkpoint_every=0", "data.cases=8",
            f"adapt.method={method}", f"checkpoint={str(checkpoint).lower()}"]  # fmt: skip
    src = load_recipe(RECIPES / "segment_2dt.yaml", overrides=sets)
    folder = RUNS / f"bench_mem_{method}_{checkpoint}"
    with engine._Processes() as procs:
        run = engine.Run(src, folder, False, True, procs)
        run._step(0)  # the optimizer's state exists from here on
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run._step(1)
        grads = sum(p.grad.nbytes for p in run.model.parameters() if p.grad is not None)
        state = sum(v.nbytes for s in run.optimizer.state.values() for v in s.values()
                    if isinstance(v, torch.Tensor))  # fmt: skip
    print(json.dumps({"activations": sum(storages.values()), "grads": grads,
                      "optimizer": state, "trainable": run.prepared.trainable}))  # fmt: skip


def lora_memory() -> None:
    rows = {}
    for method, checkpoint in (("full", False), ("lora", False), ("lora", True)):
        out = subprocess.run([sys.executable, __file__, "--peak-child", method, str(checkpoint)],
                             check=True, capture_output=True, text=True).stdout  # fmt: skip
        doc = json.loads(out.strip().splitlines()[-1])
        total = doc["activations"] + doc["grads"] + doc["optimizer"]
        rows[(method, checkpoint)] = total
        print(f"{method:4s} recompute {'on ' if checkpoint else 'off'}: {doc['trainable']:,} "
              f"trainable; saved activations {doc['activations'] / 2**20:.1f} MiB + gradients "
              f"{doc['grads'] / 2**20:.2f} + optimizer {doc['optimizer'] / 2**20:.2f} = "
              f"{total / 2**20:.1f} MiB")  # fmt: skip
    for key in (("lora", False), ("lora", True)):
        ratio = rows[key] / rows[("full", False)]
        print(f"LoRA (activation recompute {'on' if key[1] else 'off'}) / full: {ratio:.2f}x")


def _tiny_recipe(folder: Path, **extra: object) -> Path:
    make = folder / "cine"
    if not make.exists():
        make_dataset(make, kind="2d+t", cases=6, seed=0, size=(17, 23), frames=(2, 3))
    recipe = {
        "model": "unet(channels=[4, 8], blocks=T1L1G1, window=4, patch=2, heads=1)",
        "task": "segment", "data": {"path": str(make), "patch": [2, 16, 16], "batch": 4,
                                    "val": 2}, "steps": 3, "seed": 0,
        "optimizer": {"name": "sgd", "lr": 0.05}, **extra,
    }  # fmt: skip
    path = folder / f"r_{abs(hash(json.dumps(extra, sort_keys=True)))}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def distributed() -> None:
    folder = RUNS / "bench_dist"
    folder.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "stcnnt_dsl.cli", "train"]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "stcnnt_dsl.cli", "train"]  # fmt: skip
    for wrapper in ("fsdp", "ddp"):
        path = _tiny_recipe(folder, distributed=wrapper)
        one, two = folder / f"{wrapper}_one", folder / f"{wrapper}_two"
        subprocess.run([*cli, str(path), "--out", str(one), "--overwrite", "--quiet"], check=True)
        subprocess.run([*run, str(path), "--out", str(two), "--overwrite", "--quiet"], check=True)
        a, b = (load_file(str(p / "last.safetensors")) for p in (one, two))
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        print(f"{wrapper}: 2 processes (gloo, batch 4 = 2 + 2, SGD, 3 steps) against one "
              f"process on the whole batch: max |difference| {diff:.2e}")  # fmt: skip


def resume() -> None:
    folder = RUNS / "bench_resume"
    folder.mkdir(parents=True, exist_ok=True)
    path = _tiny_recipe(folder, steps=12, checkpoint_every=2,
                        optimizer={"name": "adamw", "lr": 0.01})  # fmt: skip
    cli = [sys.executable, "-m", "stcnnt_dsl.cli", "train", str(path), "--quiet"]
    subprocess.run([*cli, "--out", str(folder / "whole"), "--overwrite"], check=True)
    proc = subprocess.Popen([*cli, "--out", str(folder / "cut"), "--overwrite"])
    last = folder / "cut" / "last.safetensors"
    while proc.poll() is None:
        if last.exists() and read_metadata(last)["step"] == "6":
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = read_metadata(last)["step"]
    subprocess.run([*cli, "--out", str(folder / "cut"), "--resume"], check=True)
    a, b = (load_file(str(folder / d / "last.safetensors")) for d in ("whole", "cut"))
    same = all(torch.equal(a[k], b[k]) for k in a)
    print(
        f"SIGKILL after the checkpoint at step {step} of 12, then --resume: weights "
        f"{'bit-identical' if same else 'DIFFERENT'} to the uninterrupted run"
    )


# The arms of (b) and (d): the same adaptation recipe from the pretrained backbone with
# LoRA or in full, and from scratch (random weights, every parameter trained).
ARMS = {
    "lora": ("pretrained + LoRA", ()),
    "full": ("pretrained + full fine-tuning", ("adapt.method=full",)),
    "scratch": ("from scratch", (f"model={SCRATCH}", "adapt.method=full")),
}


def _pretrain(recipe: str, reuse: bool) -> None:
    out = Path(recipe).stem
    if reuse and (RUNS / out / "last.safetensors").exists():
        print(f"pretraining: reusing runs/{out}")
        return
    pre = train(RECIPES / recipe, out)
    print(f"pretraining ({out}): held-out PSNR {pre.best:.2f} dB, {pre.seconds:.0f} s")


def adapt(arms: list[str], reuse: bool) -> None:
    _pretrain("pretrain_denoise.yaml", reuse)
    for tag in arms:
        name, sets = ARMS[tag]
        r = train(RECIPES / "adapt_lora.yaml", f"bench_{tag}16", *sets)
        print(f"{name}: 16 labelled cases, {r.steps} steps: held-out Dice {r.best:.4f}, "
              f"{r.trainable:,} trainable parameters, {r.seconds:.0f} s")  # fmt: skip


def classify() -> None:
    r = train(RECIPES / "classify_png.yaml", "bench_classify")
    print(
        f"(c) PNG classification: held-out accuracy {r.best:.3f} ({r.steps} steps, "
        f"{r.seconds:.0f} s)"
    )


def curve(counts: list[int], arms: list[str], reuse: bool) -> None:
    _pretrain("pretrain_mix.yaml", reuse)
    pretrained = "model=../runs/pretrain_mix/last.safetensors"
    table = RUNS / "curve.json"
    rows: dict[str, dict[str, float]] = json.loads(table.read_text()) if table.exists() else {}
    for n in counts:
        for tag in arms:
            name, sets = ARMS[tag]
            extra = sets if tag == "scratch" else (pretrained, *sets)
            r = train(RECIPES / "adapt_lora.yaml", f"curve_{tag}_{n}", f"data.cases={n}",
                      *extra)  # fmt: skip
            rows.setdefault(name, {})[str(n)] = r.best
            print(f"{n} labelled cases, {name}: held-out Dice {r.best:.4f} "
                  f"({r.trainable:,} trainable, {r.seconds:.0f} s)")  # fmt: skip
            table.write_text(json.dumps(rows, indent=1))
    plot()


def plot() -> None:
    """docs/label_efficiency.svg from runs/curve.json (what --curve wrote)."""
    rows = json.loads((RUNS / "curve.json").read_text())
    svg = ROOT / "docs" / "label_efficiency.svg"
    svg.write_text(curve_svg(rows))
    print(f"wrote {svg.relative_to(ROOT)} from runs/curve.json")


def curve_svg(rows: dict[str, dict[str, float]]) -> str:
    """Held-out Dice against labelled cases (log2 axis), one line per arm, as SVG."""
    width, height, left, right, top, bottom = 580, 300, 56, 220, 20, 44
    counts = sorted({int(n) for arm in rows.values() for n in arm})
    lo, hi = np.log2(min(counts)), np.log2(max(counts))
    x = lambda n: left + (np.log2(n) - lo) / max(hi - lo, 1e-9) * (width - left - right)  # noqa: E731
    y = lambda d: top + (1 - d) * (height - top - bottom)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>']  # fmt: skip
    for d in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(d):.1f}" y2="{y(d):.1f}" '
                   f'stroke="#ddd"/><text x="{left - 8}" y="{y(d) + 4:.1f}" '
                   f'text-anchor="end">{d:.2f}</text>')  # fmt: skip
    for n in counts:
        out.append(f'<text x="{x(n):.1f}" y="{height - bottom + 18}" text-anchor="middle">'
                   f"{n}</text>")  # fmt: skip
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" '
               'text-anchor="middle">labelled training cases</text>')  # fmt: skip
    out.append(f'<text transform="translate(14 {(top + height - bottom) / 2}) rotate(-90)" '
               'text-anchor="middle">held-out Dice</text>')  # fmt: skip
    colours = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd")
    for k, (name, arm) in enumerate(rows.items()):
        colour = colours[k % len(colours)]
        points = sorted((int(n), d) for n, d in arm.items())
        line = " ".join(f"{x(n):.1f},{y(d):.1f}" for n, d in points)
        out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" '
                   'stroke-width="2"/>')  # fmt: skip
        out += [f'<circle cx="{x(n):.1f}" cy="{y(d):.1f}" r="3" fill="{colour}"/>'
                for n, d in points]  # fmt: skip
        ly = top + 12 + 18 * k
        out.append(f'<line x1="{width - right + 12}" x2="{width - right + 32}" y1="{ly - 4}" '
                   f'y2="{ly - 4}" stroke="{colour}" stroke-width="2"/><text '
                   f'x="{width - right + 38}" y="{ly}">{name}</text>')  # fmt: skip
    return "\n".join([*out, "</svg>"]) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("recipe-a", "overhead", "lora-memory", "distributed", "resume", "adapt",
                 "classify"):  # fmt: skip
        p.add_argument(f"--{flag}", action="store_true")
    p.add_argument("--planned", metavar="MEMORY", help="the planned recipe for this budget")
    p.add_argument("--seeds", type=int, default=1, help="--planned: pairs of runs, one per seed")
    p.add_argument("--curve", metavar="N,N,...", help="labelled case counts, e.g. 4,8,16,32")
    p.add_argument(
        "--arms",
        default=",".join(ARMS),
        metavar="A,B",
        help=f"the arms of --adapt and --curve (default: {','.join(ARMS)})",
    )
    p.add_argument(
        "--reuse-pretrained",
        action="store_true",
        help="--adapt / --curve: start from runs/pretrain_* when it is there",
    )
    p.add_argument("--plot", action="store_true", help="redraw the curve from runs/curve.json")
    p.add_argument("--peak-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.peak_child:
        _peak_child(args.peak_child[0], args.peak_child[1] == "True")
        return
    print(machine())
    ensure_data()
    arms = [a.strip() for a in args.arms.split(",")]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"--arms: {unknown[0]!r} is not one of {', '.join(ARMS)}")
    for flag, run in (("recipe_a", recipe_a), ("overhead", overhead),
                      ("lora_memory", lora_memory), ("distributed", distributed),
                      ("resume", resume), ("classify", classify)):  # fmt: skip
        if getattr(args, flag):
            run()
    if args.planned:
        planned(args.planned, args.seeds)
    if args.adapt:
        adapt(arms, args.reuse_pretrained)
    if args.curve:
        curve([int(n) for n in args.curve.split(",")], arms, args.reuse_pretrained)
    if args.plot:
        plot()
    print(machine())


if __name__ == "__main__":
    main()
