"""Training from recipes, measured: the numbers in README.md's training section.

    python tools/bench_train.py --recipe-a      # (a): held-out Dice over wall time
    python tools/bench_train.py --overhead      # the engine against a bare loop, interleaved
    python tools/bench_train.py --lora-memory   # peak memory of LoRA against full fine-tuning
    python tools/bench_train.py --distributed   # torchrun 2 processes (gloo) against one
    python tools/bench_train.py --resume        # SIGKILL mid-run, --resume, compare weights
    python tools/bench_train.py --adapt         # (b): pretrain + LoRA against scratch, 16 cases
    python tools/bench_train.py --classify      # (c): classification from a folder of PNGs
    python tools/bench_train.py --curve 4,16    # (d): label efficiency, pretrained on a mix

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
        write_pngs(DATA / "Shapes_png", 48)


def write_pngs(root: Path, n: int, size: int = 32, seed: int = 0) -> None:
    """A folder of 8-bit PNGs, one sub-folder per class: a bright disc or square, at a
    random place and size, on noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        kind = ("disc", "square")[i % 2]
        r = rng.uniform(4, 8)
        cy, cx = rng.uniform(r + 1, size - r - 1, 2)
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if kind == "disc" else (
            np.maximum(abs(yy - cy), abs(xx - cx)) <= r * 0.85)  # fmt: skip
        image = 60 + 120 * inside + rng.normal(0, 25, (size, size))
        (root / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / kind / f"{i:03d}.png")


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


def overhead(repeats: int = 2, steps: int = 10) -> None:
    """Median step time of the engine (metrics.csv's clock, first steps dropped) and of a
    bare loop over the same model, batches, loss and optimizer; interleaved runs."""
    from stcnnt_dsl.train.data import TrainData, open_sources
    from stcnnt_dsl.train.losses import make_loss
    from stcnnt_dsl.train.model import prepare_model
    from stcnnt_dsl.train.recipe import load_recipe

    sets = [f"steps={steps}", "eval_every=0", "checkpoint_every=0", "data.augment=[]"]
    src = load_recipe(RECIPES / "segment_2dt.yaml", overrides=sets)
    engine, bare = [], []
    for _ in range(repeats):
        train(src, "bench_overhead", quiet=True)
        seconds = [r["seconds"] for r in metrics("bench_overhead")]
        engine += list(np.diff(seconds)[2:])
        recipe = src.recipe
        torch.manual_seed(recipe.seed)
        data = TrainData(open_sources(src), recipe.data, recipe.task, recipe.seed)
        prepared = prepare_model(src, 1, 3, tuple(recipe.data.patch))
        model, head = prepared.model, prepared.head
        loss_fn = make_loss("segment", recipe.loss, 3)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.optimizer.lr)
        times = []
        for step in range(steps):
            start = time.perf_counter()
            batch = data.batch(step, range(recipe.data.batch))
            loss = loss_fn(model(batch.x)[head], batch.targets())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        bare += times[3:]
    e, b = statistics.median(engine), statistics.median(bare)
    print(f"engine {e * 1000:.0f} ms/step, bare loop {b * 1000:.0f} ms/step (medians of "
          f"{len(engine)} and {len(bare)} steps): overhead {100 * (e / b - 1):+.1f}%")  # fmt: skip


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


def adapt() -> None:
    pre = train(RECIPES / "pretrain_denoise.yaml", "pretrain_denoise")
    print(f"pretraining: held-out PSNR {pre.best:.2f} dB, {pre.seconds:.0f} s")
    lora = train(RECIPES / "adapt_lora.yaml", "bench_lora16")
    scratch = train(RECIPES / "adapt_lora.yaml", "bench_scratch16", f"model={SCRATCH}",
                    "adapt.method=full")  # fmt: skip
    for name, r in (("pretrained + LoRA", lora), ("scratch", scratch)):
        print(
            f"{name}: 16 labelled cases, {r.steps} steps: held-out Dice {r.best:.4f}, "
            f"{r.trainable:,} trainable parameters, {r.seconds:.0f} s"
        )


def classify() -> None:
    r = train(RECIPES / "classify_png.yaml", "bench_classify")
    print(
        f"(c) PNG classification: held-out accuracy {r.best:.3f} ({r.steps} steps, "
        f"{r.seconds:.0f} s)"
    )


def curve(counts: list[int]) -> None:
    pre = train(RECIPES / "pretrain_mix.yaml", "pretrain_mix")
    print(f"pretraining on the mix: held-out PSNR {pre.best:.2f} dB, {pre.seconds:.0f} s")
    rows = []
    for n in counts:
        lora = train(RECIPES / "adapt_lora.yaml", f"curve_lora_{n}", f"data.cases={n}",
                     "model=../runs/pretrain_mix/last.safetensors")  # fmt: skip
        scratch = train(RECIPES / "adapt_lora.yaml", f"curve_scratch_{n}", f"data.cases={n}",
                        f"model={SCRATCH}", "adapt.method=full")  # fmt: skip
        rows.append((n, lora.best, scratch.best))
        print(f"{n} labelled cases: pretrained + LoRA {lora.best:.4f}, scratch "
              f"{scratch.best:.4f}")  # fmt: skip
    (RUNS / "curve.json").write_text(json.dumps(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("recipe-a", "overhead", "lora-memory", "distributed", "resume", "adapt",
                 "classify"):  # fmt: skip
        p.add_argument(f"--{flag}", action="store_true")
    p.add_argument("--curve", metavar="N,N,...", help="labelled case counts, e.g. 4,8,16,32")
    p.add_argument("--peak-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.peak_child:
        _peak_child(args.peak_child[0], args.peak_child[1] == "True")
        return
    print(machine())
    ensure_data()
    for flag, run in (("recipe_a", recipe_a), ("overhead", overhead),
                      ("lora_memory", lora_memory), ("distributed", distributed),
                      ("resume", resume), ("adapt", adapt), ("classify", classify)):  # fmt: skip
        if getattr(args, flag):
            run()
    if args.curve:
        curve([int(n) for n in args.curve.split(",")])
    print(machine())


if __name__ == "__main__":
    main()
