"""A run's predictions on its held-out cases (worst first, with the metric of each) and
its export to ONNX.

The model is the run's best checkpoint (else its last), read with `load_model`; each
held-out case is predicted and scored with the data layer's helpers
(`stcnnt_dsl.data`: sliding-window prediction with the training's normalisation, MONAI's
metrics), so the page shows what `stcnnt evaluate` would say. Results are kept per
checkpoint (a newer checkpoint predicts again).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import STCNNTError
from .data_view import DataView, png_label
from .runs import Runs, _read_json

__all__ = ["Predictions"]


class Predictions:
    """Predictions and exports of the runs, cached by checkpoint."""

    def __init__(self, view: DataView) -> None:
        self.view = view
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, dict, dict[int, np.ndarray]]] = {}

    @staticmethod
    def checkpoint(runs: Runs, name: str) -> Path:
        status = runs.status(name)
        for key in ("best", "last"):
            if status["checkpoints"][key]:
                return runs.file(name, f"{key}.safetensors")
        raise STCNNTError(
            f"run {name!r} has no checkpoint yet (it writes one every "
            "checkpoint_every steps); wait, or resume it"
        )

    def of(self, runs: Runs, name: str) -> dict[str, Any]:
        """{"checkpoint", "metric", "mean", "cases": [{"index", "name", "metric", "t"}]},
        worst case first."""
        return self._predict(runs, name)[0]

    def image(self, runs: Runs, name: str, index: int, t: int) -> bytes:
        _, maps = self._predict(runs, name)
        if index not in maps:
            raise STCNNTError(f"case {index} is not one of run {name!r}'s held-out cases")
        prediction = maps[index]
        if not 0 <= t < prediction.shape[0]:
            raise STCNNTError(f"no frame {t}: the case has T={prediction.shape[0]}")
        return png_label(prediction[t, 0])

    def _predict(self, runs: Runs, name: str) -> tuple[dict, dict[int, np.ndarray]]:
        path = self.checkpoint(runs, name)
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:  # one prediction at a time: they are heavy
            cached = self._cache.get(name)
            if cached is not None and cached[0] == key:
                return cached[1], cached[2]
            document, maps = self._run(runs, name, path)
            document["version"] = key[1]
            self._cache[name] = (key, document, maps)
            return document, maps

    def _run(self, runs: Runs, name: str, checkpoint: Path) -> tuple[dict, dict[int, np.ndarray]]:
        from .. import data

        dataset = self.view.dataset
        run_dir = checkpoint.parent
        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
        held_out = _held_out(run_dir, recipe, dataset)
        evaluation = data.evaluate_cases(checkpoint, dataset, held_out)
        rows, maps = [], {}
        for index, result in zip(held_out, evaluation, strict=True):
            prediction = result.get("prediction")
            row = {
                "index": index,
                "name": dataset.cases[index].name,
                "metric": result["metric"],
                "t": 0,
                "label": False,
                "image": False,
            }
            if isinstance(prediction, np.ndarray) and prediction.ndim == 4:
                maps[index] = prediction.astype(np.int64)
                row["image"] = True
                _, label = dataset.load(index)
                if isinstance(label, np.ndarray):
                    row["label"] = True
                    counts = (label > 0).reshape(label.shape[0], -1).sum(axis=1)
                    row["t"] = int(np.argmax(counts))  # the frame with most foreground
            else:
                row["predicted"], row["truth"] = result.get("predicted"), result.get("truth")
            rows.append(row)
        metric = evaluation[0]["name"] if evaluation else "metric"
        higher_better = metric not in ("loss", "hd95")
        rows.sort(key=lambda r: (r["metric"] is None, r["metric"]), reverse=False)
        if not higher_better:
            rows.reverse()
        values = [r["metric"] for r in rows if r["metric"] is not None]
        document = {
            "checkpoint": checkpoint.name,
            "metric": metric,
            "cases": rows,
            "mean": float(np.mean(values)) if values else None,
        }
        return document, maps

    def export(self, runs: Runs, name: str) -> Path:
        """The run's model as ONNX (`stcnnt_dsl.export`), written once per checkpoint
        into the run's folder."""
        from .. import export, load_model

        path = self.checkpoint(runs, name)
        target = runs.folder.inside(name, "model.onnx")
        if target.is_file() and target.stat().st_mtime_ns >= path.stat().st_mtime_ns:
            return target
        info = _read_json(path.parent / "studio.json") or {}
        model = load_model(path)
        patch = info.get("patch")
        channels = getattr(getattr(model, "spec", None), "in_channels", None) or 1
        shape = None if not patch else (1, patch[0], channels, patch[1], patch[2])
        with self._lock:
            export(model, target, shape)
        return target


def _held_out(run_dir: Path, recipe: dict, dataset: Any) -> list[int]:
    """The cases the run did not train on: the training's own split when it wrote one
    (split.json), else the recipe's `data.val`."""
    split = _read_json(run_dir / "split.json")
    names = [case.name for case in dataset.cases]
    if split and "val" in split:
        return [names.index(n) for n in split["val"] if n in names]
    raise STCNNTError(f"run {run_dir.name!r} did not record its held-out cases (split.json)")
