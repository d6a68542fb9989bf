"""The run folder: checkpoints that survive a kill or a full disk, and resuming them.

    DIR/recipe.yaml            the resolved recipe
    DIR/last.safetensors       the whole model at the last checkpoint (load_model reads it;
                               LoRA adapters folded in); metadata: step, state file
    DIR/best.safetensors       the model at the best validation so far
    DIR/state/step-N.safetensors  what resuming needs: the training module's tensors
                               (adapters included), the optimizer's state by parameter
                               name, the torch RNG, the step (the data position: samples
                               are a function of the step) and the best metric
    DIR/metrics.csv            one row per step (loss, lr, time; val_* at evaluations)

Every file is written under a temporary name and renamed into place. A checkpoint writes
its state file first, then last.safetensors (which names it), then removes older state
files: whatever moment a kill or a full disk strikes, last.safetensors and the state file
it names belong together. No pickle: tensors in safetensors, the rest JSON in metadata.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import TrainError, WeightsError
from ..tools.io import read_metadata, save_model, write_atomic

__all__ = ["RUN_FILES", "Checkpoint", "clear", "read_metrics", "write_metrics", "write_text"]

RUN_FILES = ("recipe.yaml", "last.safetensors", "best.safetensors", "metrics.csv", "state")


def write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    write_atomic(path, write)


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """metrics.csv from the rows (the columns: every key any row has, in order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_metrics(path: Path, until: int) -> list[dict[str, Any]]:
    """The rows of metrics.csv up to step `until` (numbers as numbers, blanks dropped)."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        rows = []
        for row in csv.DictReader(handle):
            row = {k: (int(v) if k == "step" else float(v)) for k, v in row.items() if v != ""}
            if row.get("step", 0) <= until:
                rows.append(row)
    return rows


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, plain = {}, {}
    for name, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(name, {})[key] = value
    return tensors, {"groups": state["param_groups"], "plain": plain}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            name, _, entry = key[len("optim/") :].rpartition("/")
            state.setdefault(name, {})[entry] = value
    for name, entries in meta["plain"].items():
        state.setdefault(name, {}).update(entries)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["groups"]]
    return {"state": state, "param_groups": groups}


class Checkpoint:
    """Writes and reads the checkpoints of one run folder (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.last = folder / "last.safetensors"
        self.best = folder / "best.safetensors"
        self.states = folder / "state"

    def step(self) -> int | None:
        """The step of the last checkpoint, or None when there is none."""
        if not self.last.is_file():
            return None
        try:
            return int(read_metadata(self.last).get("step", "-1"))
        except (WeightsError, ValueError):
            return None

    def save(
        self,
        step: int,
        plain_model: nn.Module,
        model_state: dict[str, torch.Tensor],
        optim_state: dict[str, Any],
        info: dict[str, Any],
    ) -> None:
        """One checkpoint: the state file, then last.safetensors naming it."""
        previous = self.step()
        name = f"step-{step:08d}.safetensors"
        tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
        optim_tensors, optim_meta = _flatten_optimizer(optim_state)
        tensors.update(optim_tensors)
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
        meta = {"step": step, "optimizer": optim_meta, **info}
        try:
            self.states.mkdir(exist_ok=True)
            write_atomic(self.states / name, lambda tmp: save_file(
                tensors, tmp, metadata={"state": json.dumps(meta, default=_json)}))  # fmt: skip
            save_model(plain_model, self.last,
                       extra_metadata={"step": str(step), "state": f"state/{name}"})  # fmt: skip
        except (WeightsError, OSError) as err:
            kept = (f"the previous checkpoint {self.last} (step {previous}) is intact"
                    if previous is not None else "no earlier checkpoint exists")  # fmt: skip
            raise TrainError(
                f"checkpoint at step {step} failed: {err}; {kept}; free space (or fix the "
                "folder) and run again with --resume"
            ) from None
        for old in self.states.glob("step-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def save_best(self, plain_model: nn.Module, step: int, metric: str, value: float) -> None:
        save_model(plain_model, self.best,
                   extra_metadata={"step": str(step), metric: f"{value:.6g}"})  # fmt: skip

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
        """(model state, optimizer state, info) of the last checkpoint; the RNG is set."""
        meta = read_metadata(self.last)
        path = self.folder / meta.get("state", "")
        if "state" not in meta or not path.is_file():
            raise TrainError(
                f"{self.last} names no resumable state ({path} is missing); start afresh "
                "with --overwrite"
            )
        with safe_open(str(path), framework="pt") as handle:
            info = json.loads((handle.metadata() or {})["state"])
        tensors = load_file(str(path))
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
        optim = _unflatten_optimizer(tensors, info.pop("optimizer"))
        return model, optim, info


def _json(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def clear(folder: Path) -> None:
    """Remove a previous run's files (--overwrite); nothing else in the folder."""
    for name in RUN_FILES:
        path = folder / name
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        elif path.exists():
            path.unlink()
    for tb in (folder / "tb",):
        if tb.is_dir():
            for child in tb.rglob("*"):
                if child.is_file():
                    child.unlink()
