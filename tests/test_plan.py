"""`stcnnt plan`: budgets, the rules, the fit of patch and batch, --base, --search, the
studio's `plan_for_spec`, the command, and the prediction against a measured step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

import stcnnt_dsl
from stcnnt_dsl import STCNNTError, load_spec, plan, plan_for_spec
from stcnnt_dsl.graph.build import build_graph
from stcnnt_dsl.machine import SDPA_MIN_TOKENS_CPU
from stcnnt_dsl.planner import parse_memory, step_memory
from stcnnt_dsl.planner.memory import HEADROOM
from stcnnt_dsl.planner.plan import CPU_BATCH
from stcnnt_dsl.planner.rules import (
    BASE_WIDTH,
    CPU_SAMPLE_FLOPS,
    MIN_WIDTH,
    WINDOW,
    design,
    read_fingerprint,
    round_patch,
)

ROOT = Path(__file__).resolve().parents[1]


def fingerprint(median, spacing=(1.0, 1.0, 1.0), cases=10, task="segment", channels=1):
    return {
        "cases": cases, "channels": [f"c{i}" for i in range(channels)], "task": task,
        "classes": {"background": 0.9, "a": 0.05, "b": 0.05},
        "shape": {"median": list(median)}, "spacing": {"median": list(spacing)},
    }  # fmt: skip


CINE = fingerprint((12, 101, 117), (1.0, 1.5, 1.5))
IMAGE = fingerprint((1, 256, 256), (1.0, 0.8, 0.8), cases=40)
VOLUME = fingerprint((40, 160, 160), (5.0, 1.0, 1.0), channels=2)


# --------------------------------------------------------------------------- budgets


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8GiB", 8 * 2**30), ("8GB", 8 * 10**9), ("8 GiB", 8 * 2**30), ("512MiB", 2**29),
     ("1.5gib", int(1.5 * 2**30)), ("1000", 1000), (4096, 4096)],
)  # fmt: skip
def test_budget_forms(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["8G B", "8GiBs", "eight GiB", "8 G iB", "-1GiB", "0GB", ""])
def test_budget_typos_are_refused_with_the_forms(text):
    with pytest.raises(STCNNTError) as err:
        parse_memory(text)
    assert "8GiB" in str(err.value) and "8GB" in str(err.value)


# --------------------------------------------------------------------------- plans


@pytest.mark.parametrize("fp", [CINE, IMAGE, VOLUME], ids=["cine", "image", "volume"])
@pytest.mark.parametrize("memory", ["512MiB", "4GiB"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_plan_fits_the_budget_and_runs(fp, memory, device):
    p = plan(fp, memory=memory, device=device)
    graph = build_graph(p.spec)
    t, h, w = p.patch
    graph.check(t, h, w, batch=p.batch)  # the architecture runs on the patch
    shape = (p.batch, t, graph.in_channels, h, w)
    assert p.predicted_bytes == step_memory(graph, shape, device).peak_bytes
    assert p.predicted_bytes <= HEADROOM * parse_memory(memory)
    assert p.batch >= 2
    assert t <= fp["shape"]["median"][0]
    more = step_memory(graph, (p.batch + 1, t, graph.in_channels, h, w), device).peak_bytes
    if device == "cpu":  # CPU_BATCH crops, fewer only where memory binds
        assert p.batch == CPU_BATCH or more > HEADROOM * parse_memory(memory)
    else:  # the largest: one more sample does not fit, or the batch is capped by the data
        assert more > HEADROOM * parse_memory(memory) or "at most" in " ".join(p.reasons["batch"])
    assert load_spec(p.spec_yaml) == p.spec  # the YAML round-trips, heads included
    assert p.spec.heads["seg"].keys()["classes"] == 3


def test_more_memory_never_gives_a_smaller_patch_or_batch():
    small, large = (plan(CINE, memory=m, device="cuda") for m in ("256MiB", "16GiB"))
    assert all(a <= b for a, b in zip(small.patch, large.patch, strict=True))
    assert small.patch != large.patch
    assert large.patch == [12, 128, 128]  # the median, rounded up to the size rule


def test_rules_temporal_levels_widths():
    cine = plan(CINE, memory="16GiB", device="cpu")
    blocks = [str(b) for b in cine.spec.unet.blocks]
    assert all(b.startswith("T1") for b in blocks)  # T > 1: attention over frames
    image = plan(IMAGE, memory="16GiB", device="cuda")
    assert not any("T" in str(b) for b in image.spec.unet.blocks)
    # levels: the coarsest map reaches the window; widths double up to the cap
    levels = len(image.spec.unet.channels)
    assert image.patch[1] // 2**levels == WINDOW
    assert image.spec.unet.channels == [32, 64, 128, 256, 256][:levels]
    # global cells only where the map holds several windows
    assert "G1" in str(image.spec.unet.blocks[0]) and "G1" not in str(image.spec.unet.blocks[-1])


def test_a_cpu_plan_halves_the_start_width_until_a_sample_fits_the_compute_cap():
    """On a CPU compute binds first: the widest start width whose one-sample forward
    stays within CPU_SAMPLE_FLOPS (twice as wide does not); CUDA keeps nnU-Net's 32.
    The generated cine clips get width 8, small 2D images 16."""
    for fp, want in (
        (fingerprint((7, 41, 43), (40.0, 1.2, 1.2)), 8),
        (fingerprint((1, 64, 64)), 16),
    ):
        cpu, cuda = (plan(fp, memory="16GiB", device=d) for d in ("cpu", "cuda"))
        assert cuda.spec.unet.channels[0] == BASE_WIDTH
        assert cpu.spec.unet.channels[0] == want
        assert any(f"start width {want} (cpu)" in r for r in cpu.reasons["architecture"])
        # the cap holds for one whole (median) sample; the plan trains on crops of it
        t, h, w = round_patch(read_fingerprint(fp).median, up=True)
        shape = (1, t, 1, h, w)
        for width, fits in ((want, True), (2 * want, False)):
            spec = design(read_fingerprint(fp), (t, h, w), width)[0]
            assert (sum(build_graph(spec).flops(shape).values()) <= CPU_SAMPLE_FLOPS) is fits
        assert cpu.recipe["optimizer"]["lr"] == pytest.approx(1e-3 * BASE_WIDTH / want)
    big = plan(CINE, memory="16GiB", device="cpu")  # over the cap even at the narrowest
    assert big.spec.unet.channels[0] == MIN_WIDTH
    assert any("over 3 GFLOP even so" in r for r in big.reasons["architecture"])


def test_anisotropic_axis_keeps_its_resolution_longest():
    p = plan(VOLUME, memory="1GiB", device="cuda")
    assert p.patch[0] == 32  # every slice up to the cap: H and W gave way first
    assert p.patch[1] < 160


def test_padding_is_planned_and_said():
    p = plan(CINE, memory="16GiB", device="cuda")
    assert p.padded and p.patch[1:] == [128, 128]
    assert "padded to 128x128" in " ".join(p.reasons["patch"])


def test_fixed_batch():
    p = plan(CINE, memory="1GiB", device="cpu", batch=4)
    assert p.batch == 4 and p.predicted_bytes <= HEADROOM * 2**30


def test_base_keeps_the_architecture():
    p = plan(IMAGE, memory="2GiB", device="cpu", base="unet")
    assert p.spec.unet.channels == load_spec("unet").unet.channels
    assert p.patch[1] % 32 == 0 and p.patch[2] % 32 == 0
    assert p.spec.heads is not None and p.predicted_bytes <= HEADROOM * 2 * 2**30


def test_recipe_is_valid_for_train(tmp_path):
    from stcnnt_dsl.train.recipe import load_recipe

    p = plan(CINE, memory="1GiB", device="cpu")
    written = p.write(tmp_path / "out")
    source = load_recipe(tmp_path / "out" / "recipe.yaml")
    assert [f.name for f in written] == ["arch.yaml", "recipe.yaml"]
    recipe = source.recipe
    assert list(recipe.data.patch) == p.patch and recipe.data.batch == p.batch
    assert load_spec(tmp_path / "out" / "arch.yaml") == p.spec
    assert set(yaml.safe_load(p.recipe_yaml)) >= {
        "model", "heads", "task", "data", "steps", "optimizer", "schedule", "adapt",
        "init", "precision", "seed", "eval_every", "checkpoint_every", "distributed",
    }  # fmt: skip


# --------------------------------------------------------------------------- bad input


def test_budget_too_small_names_the_smallest_that_fits():
    with pytest.raises(STCNNTError) as err:
        plan(CINE, memory="1MiB", device="cuda")
    message = str(err.value)
    assert "too small for any valid patch" in message
    need = message.split("give --memory ")[1].split()[0]
    p = plan(CINE, memory=need, device="cuda")  # the size it names is enough
    assert p.patch == [1, 16, 16]


@pytest.mark.parametrize("cases", [0, 1])
def test_empty_or_single_case_data_set(cases):
    with pytest.raises(STCNNTError, match="at least 2 cases"):
        plan(fingerprint((1, 64, 64), cases=cases), memory="1GiB")


def test_bad_fingerprint_and_device():
    with pytest.raises(STCNNTError, match="shape"):
        plan({"cases": 4, "shape": {"median": [0, 64, 64]}}, memory="1GiB")
    with pytest.raises(STCNNTError, match="device"):
        plan(CINE, memory="1GiB", device="tpu")


# --------------------------------------------------------------------------- studio


def test_plan_for_spec():
    fit = plan_for_spec("unet", (2, 4, 1, 64, 64), "1GiB", device="cpu")
    graph = build_graph("unet")
    usable = HEADROOM * 2**30
    assert fit.fits == (fit.predicted_bytes <= usable)
    b = fit.largest_batch
    assert step_memory(graph, (b, 4, 1, 64, 64), "cpu").peak_bytes <= usable
    assert step_memory(graph, (b + 1, 4, 1, 64, 64), "cpu").peak_bytes > usable
    t, h, w = fit.largest_patch
    assert t == 4 and h % 32 == 0 and h == w
    assert step_memory(graph, (2, t, 1, h, w), "cpu").peak_bytes <= usable
    assert step_memory(graph, (2, t, 1, h + 32, w + 32), "cpu").peak_bytes > usable
    small = plan_for_spec("unet", (1, 4, 1, 64, 64), "1MiB", device="cpu")
    assert not small.fits and small.largest_batch == 0 and small.largest_patch is None
    assert json.dumps(fit.to_dict())


# --------------------------------------------------------------------------- search


def test_search_front(tmp_path):
    pytest.importorskip("optuna", reason="the plan extra (Optuna) is not installed")
    from stcnnt_dsl.planner.search import search

    front = search(CINE, memory="1GiB", device="cuda", trials=24, seed=1)
    assert front.points and front.trials == 24
    pairs = [(p.flops, p.memory) for p in front.points]
    for f, m in pairs:  # nothing on the front is dominated (FLOPs up, memory down)
        assert not any(f2 >= f and m2 <= m and (f2, m2) != (f, m) for f2, m2 in pairs)
        assert m <= 2**30
    for p in front.points:
        graph = build_graph(p.spec)  # each point is a spec that runs on the patch
        graph.check(front.patch[0], front.patch[1], front.patch[2])
    written = front.write(tmp_path)
    ET.fromstring((tmp_path / "front.svg").read_text())  # well-formed SVG
    assert len(list((tmp_path / "front").glob("*.yaml"))) == len(front.points)
    assert written[0].name == "front.svg"
    assert "Pareto front" in front.table()


# --------------------------------------------------------------------------- command


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "stcnnt_dsl.cli", "plan", *args],
                          capture_output=True, text=True, cwd=cwd)  # fmt: skip


def test_command_json_and_out(tmp_path):
    fp = tmp_path / "fp.json"
    fp.write_text(json.dumps(CINE))
    run = _cli(str(fp), "--memory", "1GiB", "--device", "cpu", "--json",
               "--out", str(tmp_path / "plan"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert {"spec", "patch", "batch", "predicted_bytes", "recipe"} <= set(doc)
    assert load_spec(doc["spec"]).heads
    assert yaml.safe_load(doc["recipe"])["data"]["patch"] == doc["patch"]
    assert (tmp_path / "plan" / "arch.yaml").is_file()
    bad = _cli(str(fp), "--memory", "8G B")
    assert bad.returncode == 2 and "8GiB" in bad.stderr and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- measured


@pytest.mark.slow
def test_prediction_against_a_measured_step():
    """The step's resident-set growth, measured in a fresh process (tools/bench_plan.py),
    within 10% of the prediction for a bundled and a planned architecture, and the
    planned step (weights + growth) within the budget."""
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_plan import _fresh

    p = plan(CINE, memory="1GiB", device="cpu")
    t, h, w = p.patch
    planned = stcnnt_dsl.dump_spec(p.spec)
    for arch, shape in (("unet-2d-small", (1, 4, 1, 64, 64)), (planned, (p.batch, t, 1, h, w))):
        est = step_memory(build_graph(arch), shape, "cpu")
        measured = _fresh(arch, shape)
        assert abs(est.step_bytes - measured) / measured < 0.10, (arch, est, measured)
        if arch == planned:
            assert est.weights + measured <= 2**30


def test_a_cpu_plan_on_an_untuned_machine_does_not_import_torch(tmp_path):
    """The attention threshold of a CPU plan is the rules' until `stcnnt tune` or
    STCNNT_TUNING says otherwise; knowing that needs no torch (1 s of a 2 s budget)."""
    code = (
        "import sys, stcnnt_dsl\n"
        "from stcnnt_dsl.planner.memory import attention_threshold\n"
        "print(attention_threshold('cpu'), 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "STCNNT_CACHE_DIR": str(tmp_path)}
    env.pop("STCNNT_TUNING", None)
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True,  # noqa: E731
                                   text=True, check=True).stdout.strip()  # fmt: skip
    assert run(env) == f"{SDPA_MIN_TOKENS_CPU} False"
    assert run({**env, "STCNNT_TUNING": "attention=64"}) == "64 True"  # the tuning is read


def test_a_cpu_plan_on_a_tuned_machine_imports_torch_only_when_the_cache_must_be_keyed(tmp_path):
    """A tune cache whose entries for this CPU and torch agree on the threshold is read
    without torch; entries that differ by thread count need torch's thread count."""
    import importlib.metadata

    from stcnnt_dsl.machine import CALIBRATION_VERSION, machine_key

    code = (
        "import sys\n"
        "from stcnnt_dsl.planner.memory import attention_threshold\n"
        "print(attention_threshold('cpu'), 'torch' in sys.modules)\n"
    )
    chosen = {"layout_infer": "channels_last", "layout_train": "channels_last", "qkv": "fused"}

    def cache(*thresholds: int, torch_version: str = importlib.metadata.version("torch")):
        entries = {machine_key(torch_version, threads): {
            "version": CALIBRATION_VERSION, "choices": {**chosen, "sdpa_min_tokens": n}}
            for threads, n in enumerate(thresholds, 1)}  # fmt: skip
        (tmp_path / "tuning.json").write_text(json.dumps(entries))

    env = {**os.environ, "STCNNT_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("STCNNT_TUNING", None)
    env.pop("STCNNT_CALIBRATE", None)
    run = lambda: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,  # noqa: E731
                                 text=True, check=True).stdout.strip()  # fmt: skip
    cache(16, 16)
    assert run() == "16 False"
    cache(64, 16)
    assert run() == "64 True"  # this process's entry: torch says 1 thread
    cache(64, torch_version="0.0")  # another torch's only
    assert run() == f"{SDPA_MIN_TOKENS_CPU} True"


def test_a_cpu_plan_spreads_two_whole_patches_over_eight_crops():
    """On a CPU a step's voxels are what cost: the voxels of nnU-Net's 2 whole patches
    go into CPU_BATCH crops, every axis scaled alike (T too), none padded; CUDA keeps the
    whole padded image. Memory that binds gives fewer crops, never a failure."""
    cine = fingerprint((7, 41, 43), (40.0, 1.2, 1.2), cases=40)
    cpu, cuda = (plan(cine, memory="2GiB", device=d) for d in ("cpu", "cuda"))
    assert (cuda.patch, cuda.batch, cuda.padded) == ([7, 48, 48], 2, True)
    assert (cpu.patch, cpu.batch, cpu.padded) == ([4, 32, 32], CPU_BATCH, False)
    assert CPU_BATCH * 4 * 32 * 32 == pytest.approx(2 * 7 * 48 * 48, rel=0.05)
    assert any("8 crops" in r for r in cpu.reasons["patch"])
    image = plan(fingerprint((1, 256, 256)), memory="2GiB", device="cpu")
    assert image.patch == [1, 128, 128] and image.batch == CPU_BATCH  # H and W halved
    tight = plan(cine, memory=f"{cpu.predicted_bytes * 0.6 / 2**20:.0f}MiB", device="cpu")
    assert tight.batch < CPU_BATCH or tight.patch != cpu.patch
    assert tight.predicted_bytes <= HEADROOM * tight.budget


def test_quarter_turns_only_where_they_keep_the_geometry_and_the_patch_shape():
    """Mirroring always; quarter turns where H and W have the same spacing and the patch
    is square (a turn of a 32x48 patch would not stack into a batch)."""
    from stcnnt_dsl.planner.plan import augment_for

    names = lambda augment: [next(iter(a)) for a in augment]  # noqa: E731
    square = read_fingerprint(fingerprint((7, 41, 43), (40.0, 1.2, 1.2)))
    assert names(augment_for(square, [4, 32, 32])) == ["RandFlip", "RandRotate90"]
    assert names(augment_for(square, [4, 32, 48])) == ["RandFlip"]
    oblique = read_fingerprint(fingerprint((7, 41, 43), (40.0, 1.2, 2.0)))
    assert names(augment_for(oblique, [4, 32, 32])) == ["RandFlip"]
    cine = plan(fingerprint((7, 41, 43), (40.0, 1.2, 1.2)), memory="2GiB", device="cpu")
    assert cine.recipe["data"]["augment"] == augment_for(square, cine.patch)
