"""Training from recipes: the recipe format, a run's folder, resume after a crash, and
learning on held-out cases (in-memory data sets with the data layer's interface, see
train_fixtures.py; the real files are used by the slow tests and tools/bench_train.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import torch
from safetensors.torch import load_file

import stcnnt_dsl
from stcnnt_dsl.errors import ShapeError, SpecError, TrainError, WeightsError
from stcnnt_dsl.tools.io import read_metadata
from stcnnt_dsl.train import load_recipe, recipe_json_schema
from stcnnt_dsl.train.recipe import dump_plain

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_fixtures as fx

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = "unet(channels=[4, 8], blocks=T1L1G1, window=4, patch=2, heads=1)"


def recipe(**changes) -> dict:
    base = {
        "model": TINY,
        "task": "segment",
        "data": {"path": "ds", "patch": [2, 16, 16], "batch": 2, "val": 2},
        "steps": 4,
        "optimizer": {"name": "adamw", "lr": 0.01},
        "schedule": {"warmup": 1},
        "checkpoint_every": 2,
        "eval_every": 2,
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


@pytest.fixture
def data(tmp_path, monkeypatch):
    """An in-memory data set `ds` (8 cases of 2 x 16 x 16) and the cwd in tmp_path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds").mkdir()
    sets = {"ds": fx.ShapesDataset("ds", n=8, frames=2, size=16)}
    fx.install(monkeypatch, sets)
    return sets


# --------------------------------------------------------------------------- recipes


def test_recipes_in_the_repository_validate_and_match_the_schema():
    schema = recipe_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    files = sorted((ROOT / "recipes").glob("*.yaml"))
    assert files
    for path in files:
        src = load_recipe(path)
        import yaml

        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
        assert src.base == path.parent
        again = load_recipe(dump_plain(src.recipe), base=src.base)
        assert again.recipe == src.recipe


def test_set_overrides_are_validated_like_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: unet\ntask: segment\ndata: {path: ds, patch: [2, 32, 32]}\n"
                    "steps: 10\n")  # fmt: skip
    src = load_recipe(path, overrides=["optimizer.lr=3e-4", "data.patch=[4, 64, 64]"])
    assert src.recipe.optimizer.lr == 3e-4 and src.recipe.data.patch == (4, 64, 64)
    with pytest.raises(SpecError) as info:
        load_recipe(path, overrides=["optimizer.lr=-1"])
    assert info.value.path == "optimizer.lr" and "--set optimizer.lr" in str(info.value)
    with pytest.raises(SpecError, match='did you mean "steps"'):
        load_recipe(path, overrides=["stpes=3"])


def test_errors_in_a_recipe_file_point_at_line_and_column(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: unet\ntask: segment\ndata:\n  path: ds\n  patch: [2, 32, 32]\n"
                    "  augment: [{RandFlip: {prob: 0.5, axis: 1}}]\nsteps: 10\n")  # fmt: skip
    with pytest.raises(SpecError) as info:
        load_recipe(path)
    err = info.value
    assert err.path == "data.augment[0].RandFlip.axis" and err.line == 6
    assert "spatial_axis" in str(err)


# --------------------------------------------------------------------------- a run


def test_a_run_writes_models_metrics_and_state(data, tmp_path):
    result = stcnnt_dsl.train(recipe(), out="run")
    run = tmp_path / "run"
    names = {p.name for p in run.iterdir()}
    assert {"last.safetensors", "best.safetensors", "metrics.csv", "recipe.yaml", "state"} <= names
    model = stcnnt_dsl.load_model(run / "last.safetensors")
    assert isinstance(model, stcnnt_dsl.Model) and list(model.heads) == ["seg"]
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",")[:4] == ["step", "loss", "lr", "seconds"]
    assert len(lines) == 1 + 4 and "val_dice" in lines[0]
    assert result.steps == 4 and result.best is not None and 0 <= result.best <= 1
    assert len(list((run / "state").iterdir())) == 1  # older states are removed
    # the same model trained twice gives the same weights (everything is seeded)
    again = stcnnt_dsl.train(recipe(), out="run2")
    a, b = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("run", "run2"))
    assert all(torch.equal(a[k], b[k]) for k in a) and again.loss == result.loss


def test_a_folder_holding_another_run_is_refused(data):
    stcnnt_dsl.train(recipe(steps=2), out="run")
    with pytest.raises(TrainError, match=r"--resume.*--overwrite"):
        stcnnt_dsl.train(recipe(steps=2), out="run")
    stcnnt_dsl.train(recipe(steps=2), out="run", overwrite=True)
    with pytest.raises(TrainError, match="optimizer differs"):
        stcnnt_dsl.train(recipe(steps=4, optimizer={"lr": 0.5}), out="run", resume=True)


def _interrupt_at(monkeypatch, at: int) -> None:
    """Make the run die (as a kill would) when it reaches step `at` (0-based)."""
    from stcnnt_dsl.train import engine

    real = engine.Run._step

    def step(self, i):
        if i == at:
            raise KeyboardInterrupt
        return real(self, i)

    monkeypatch.setattr(engine.Run, "_step", step)


@pytest.mark.parametrize("adapt", ["full", pytest.param("lora", marks=pytest.mark.slow)])
def test_resume_gives_the_weights_of_an_uninterrupted_run(data, tmp_path, monkeypatch, adapt):
    r = recipe(steps=6, adapt={"method": adapt, "rank": 2},
               data={"augment": [{"RandFlip": {"spatial_axis": [1, 2], "prob": 0.5}}]})  # fmt: skip
    stcnnt_dsl.train(r, out="whole")
    with monkeypatch.context() as m:
        _interrupt_at(m, 3)  # after the checkpoint at step 2, one step later
        with pytest.raises(KeyboardInterrupt):
            stcnnt_dsl.train(r, out="cut")
    resumed = stcnnt_dsl.train(r, out="cut", resume=True)
    assert resumed.resumed_from == 2
    a, b = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_lora_trains_adapters_and_heads_and_saves_a_plain_model(data, tmp_path):
    full = stcnnt_dsl.train(recipe(steps=2), out="full")
    lora = stcnnt_dsl.train(recipe(steps=2, adapt={"method": "lora", "rank": 2}), out="lora")
    frozen = stcnnt_dsl.train(recipe(steps=2, adapt={"method": "frozen"}), out="frozen")
    assert frozen.trainable < lora.trainable < full.trainable
    model = stcnnt_dsl.load_model(tmp_path / "lora" / "last.safetensors")
    assert not any("lora" in k for k in model.state_dict())


def test_init_and_a_model_file_start_from_trained_weights(data, tmp_path):
    stcnnt_dsl.train(recipe(steps=2), out="first")
    first = load_file(str(tmp_path / "first" / "last.safetensors"))
    # one step at lr 0 from the saved model: the weights are the saved ones
    r = recipe(model="first/last.safetensors", steps=1, optimizer={"lr": 0.0})
    stcnnt_dsl.train(r, out="again")
    again = load_file(str(tmp_path / "again" / "last.safetensors"))
    assert all(torch.equal(first[k], again[k]) for k in first)
    r = recipe(steps=1, optimizer={"lr": 0.0}, init={"path": "first/last.safetensors",
                                                      "part": "backbone"})  # fmt: skip
    stcnnt_dsl.train(r, out="init")
    init = load_file(str(tmp_path / "init" / "last.safetensors"))
    assert all(torch.equal(first[k], init[k]) for k in first if k.startswith("backbone."))


def test_pretraining_objectives_and_a_mix_of_modalities(data, tmp_path, monkeypatch):
    (tmp_path / "ct").mkdir()
    data["ct"] = fx.ShapesDataset("ct", n=6, frames=2, size=16, seed=3, scale=900, shift=-200,
                                  task="unlabelled")  # fmt: skip
    data["ds"].task = "unlabelled"
    for objective in ("denoise", "masked"):
        r = recipe(
            task="pretrain",
            objective=objective,
            steps=2,
            data={
                "path": [
                    {"path": "ds", "weight": 1.0},
                    {"path": "ct", "weight": 3.0, "normalize": "percentile"},
                ]
            },
        )
        result = stcnnt_dsl.train(r, out=objective)  # fmt: skip
        assert result.metric == "psnr" and result.best is not None
        model = stcnnt_dsl.load_model(tmp_path / objective / "last.safetensors")
        assert list(model.heads) == ["clean"]


def test_nan_loss_stops_with_the_step_and_the_last_checkpoint(data):
    with pytest.raises(TrainError) as info:
        stcnnt_dsl.train(recipe(steps=8, optimizer={"lr": 1e30}, checkpoint_every=1), out="run")
    message = str(info.value)
    assert "the loss is nan at step" in message and "last.safetensors (step" in message


def test_a_full_disk_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    from stcnnt_dsl.train import state

    real = state.save_file
    calls = []

    def save_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > 1:  # the second checkpoint: the disk is full half-way
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(state, "save_file", save_file)
    with pytest.raises(TrainError, match=r"No space left.*step 2\) is intact"):
        stcnnt_dsl.train(recipe(steps=4), out="run")
    run = tmp_path / "run"
    assert read_metadata(run / "last.safetensors")["step"] == "2"
    assert [p.name for p in run.rglob("*.tmp")] == []
    monkeypatch.setattr(state, "save_file", real)
    assert stcnnt_dsl.train(recipe(steps=4), out="run", resume=True).resumed_from == 2


def test_classification_trains_on_class_labels(data, tmp_path):
    data["cls"] = fx.ShapesDataset("cls", n=8, frames=2, size=16, task="classify")
    (tmp_path / "cls").mkdir()
    result = stcnnt_dsl.train(recipe(task="classify", data={"path": "cls"}, steps=2), out="c")
    assert result.metric == "accuracy" and 0 <= result.best <= 1


def test_cases_are_read_once_then_sampled_from_memory(data, monkeypatch):
    """MONAI's CacheDataset keeps what its transforms return; a plain function is not a
    transform, so with one every sample read its case again (8% of recipe (a)'s step)."""
    from stcnnt_dsl.train.data import TrainData, open_sources

    reads = []
    real = data["ds"].load
    monkeypatch.setattr(data["ds"], "load", lambda i: (reads.append(i), real(i))[1])
    src = load_recipe(recipe())
    train_data = TrainData(open_sources(src), src.recipe.data, "segment", 0)
    assert sorted(reads) == list(range(len(data["ds"])))
    for step in range(3):
        train_data.batch(step, range(2))
    train_data.val_cases()
    assert len(reads) == len(data["ds"])


def test_classification_from_a_folder_of_pngs_learns_on_held_out_images(tmp_path):
    """Recipe (c) small: real PNG files (discs against rings, classes from the folder
    names), 120 steps; 16 held-out images, where chance is 8 right (13 or more by luck:
    p = 1%). 0.94 here; the seeds 1 and 2 give 1.0."""
    sys.path.insert(0, str(ROOT / "examples"))
    from make_dataset import make_dataset

    root = make_dataset(tmp_path / "png", kind="png", cases=48, seed=0, size=(32, 32))
    recipe = {
        "model": "unet(channels=[4, 8], blocks=L1G1, window=4, patch=2, heads=1)",
        "task": "classify",
        "data": {"path": str(root), "patch": [1, 32, 32], "batch": 8, "val": 16,
                 "normalize": "percentile",
                 "augment": [{"RandFlip": {"spatial_axis": [1, 2], "prob": 0.5}}]},
        "steps": 120, "optimizer": {"name": "adamw", "lr": 0.003}, "schedule": {"warmup": 5},
        "eval_every": 0, "checkpoint_every": 0,
    }  # fmt: skip
    result = stcnnt_dsl.train(recipe, out=tmp_path / "run", quiet=True)
    assert result.metric == "accuracy" and result.best >= 13 / 16, result


def test_the_command_line(data, tmp_path, capsys):
    from stcnnt_dsl.cli import main

    (tmp_path / "r.yaml").write_text(json.dumps(recipe(steps=2)))
    assert main(["train", "r.yaml", "--out", "run", "--json", "--set", "seed=1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["steps"] == 2 and doc["out"] == "run"
    assert main(["train", "r.yaml", "--out", "run"]) == 2
    assert "holds another run" in capsys.readouterr().err


# --------------------------------------------------------------------------- slow


def _make_cine(root: Path, cases: int = 6) -> Path:
    sys.path.insert(0, str(ROOT / "examples"))
    from make_dataset import make_dataset

    return make_dataset(root / "cine", kind="2d+t", cases=cases, seed=0, size=(17, 23),
                        frames=(2, 3))  # fmt: skip


def _file_recipe(tmp_path: Path, **changes) -> Path:
    r = recipe(**changes)
    r["data"]["path"] = (
        str(_make_cine(tmp_path)) if not (tmp_path / "cine").exists() else str(tmp_path / "cine")
    )
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(r))
    return path


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    """A real kill (SIGKILL) of `stcnnt train` in the middle, then --resume."""
    path = _file_recipe(tmp_path, steps=12, checkpoint_every=2, eval_every=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "stcnnt_dsl.cli", "train", str(path), "--quiet"]
    subprocess.run([*command, "--out", str(tmp_path / "whole")], check=True, env=env)
    proc = subprocess.Popen([*command, "--out", str(tmp_path / "cut")], env=env)
    state = tmp_path / "cut" / "last.safetensors"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and read_metadata(state)["step"] in ("4", "6"):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = int(read_metadata(state)["step"])
    assert 0 < step < 12
    subprocess.run([*command, "--out", str(tmp_path / "cut"), "--resume"], check=True, env=env)
    a, b = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one_process_on_the_whole_batch(tmp_path, wrapper):
    """SGD (linear in the gradient, see docs/distributed.md) for 3 steps, batch 4 = 2 + 2."""
    path = _file_recipe(tmp_path, steps=3, checkpoint_every=0, eval_every=0,
                        optimizer={"name": "sgd", "lr": 0.05}, distributed=wrapper,
                        data={"batch": 4})  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["train", str(path), "--quiet"]
    subprocess.run([sys.executable, "-m", "stcnnt_dsl.cli", *base, "--out",
                    str(tmp_path / "one")], check=True, env=env)  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "stcnnt_dsl.cli"]  # fmt: skip
    subprocess.run([*torchrun, *base, "--out", str(tmp_path / "two")], check=True, env=env)
    a, b = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("one", "two"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_recipe_a_learns_on_held_out_cases(tmp_path):
    """Real files (make_dataset, 12 cases, 2 held out), recipe (a)'s widths, 60 steps of
    batch 4: the held-out Dice reaches the issue's 0.9 (0.974 here; the 4-channel TINY on
    4 training cases stays near 0.4, too little data to learn the rare class from)."""
    _make_cine(tmp_path, cases=12)
    path = _file_recipe(tmp_path, steps=60, eval_every=0, checkpoint_every=0,
                        model="unet(channels=[8, 16], blocks=T1L1G1, window=4, patch=2, heads=1)",
                        data={"batch": 4, "patch": [2, 16, 16]},
                        optimizer={"lr": 0.004})  # fmt: skip
    result = stcnnt_dsl.train(path, out=tmp_path / "run", quiet=True)
    assert result.best >= 0.9, result


def test_bad_patch_names_the_nearest_valid_one(data):
    with pytest.raises(ShapeError) as info:
        stcnnt_dsl.train(recipe(data={"patch": [2, 20, 20]}), out="run")
    assert info.value.path == "data.patch" and "16 or 32" in str(info.value)


def test_init_of_another_architecture_is_refused(data):
    stcnnt_dsl.train(recipe(steps=1), out="first")
    other = recipe(model="unet(channels=[8, 16], blocks=T1L1G1, window=4, patch=2, heads=1)",
                   init="first/last.safetensors")  # fmt: skip
    with pytest.raises(WeightsError, match=r"init: last\.safetensors cannot start this model"):
        stcnnt_dsl.train(other, out="run")
