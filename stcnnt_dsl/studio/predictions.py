"""A run's predictions on its held-out cases (worst first, with the metric of each) and
its export to ONNX.

The model is the run's best checkpoint (else its last), read with `load_model`; each
held-out case is predicted and scored with the data layer's helpers
(`stcnnt_dsl.data`: sliding-window prediction with the training's normalisation, MONAI's
metrics), so the page shows what `stcnnt evaluate` would say. Results are kept per
checkpoint (a newer checkpoint predicts again).
"""

from __future__ import annotations

import os
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
        import torch

        from ..data.predict import load_checkpoint, predict_image

        # half the cores: the server keeps answering the page (and a training may run)
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))

        dataset = self.view.dataset
        recipe = yaml.safe_load((checkpoint.parent / "recipe.yaml").read_text(encoding="utf-8"))
        held_out = held_out_cases(recipe, dataset)
        normalization = (recipe.get("data") or {}).get("normalize") or "zscore"
        model, _ = load_checkpoint(checkpoint)
        rows, maps = [], {}
        for index in held_out:
            image, label = dataset.load(index)
            outputs = predict_image(model, image, normalization=normalization)
            output = next(iter(outputs.values()))
            row: dict[str, Any] = {
                "index": index,
                "name": dataset.cases[index].name,
                "t": 0,
                "label": isinstance(label, np.ndarray),
                "image": False,
            }
            if output.task == "segmentation" and isinstance(label, np.ndarray):
                maps[index] = output.array
                row["image"] = True
                row["metric"] = dice(output.array, label, len(dataset.classes) or 2)
                counts = (label > 0).reshape(label.shape[0], -1).sum(axis=1)
                row["t"] = int(np.argmax(counts))  # the frame with most foreground
                metric = "dice"
            elif output.task == "classification" and label is not None:
                probabilities = output.array.reshape(-1, output.array.shape[-1]).mean(axis=0)
                row["predicted"], row["truth"] = int(np.argmax(probabilities)), int(label)
                row["metric"] = float(probabilities[int(label)])  # the true class's probability
                metric = "p(true class)"
            else:
                raise STCNNTError(
                    f"run {name!r} predicts {output.task}; the page shows "
                    "segmentation and classification predictions"
                )
            rows.append(row)
        rows.sort(key=lambda r: r["metric"])  # worst first
        values = [r["metric"] for r in rows]
        document = {
            "checkpoint": checkpoint.name,
            "metric": metric if rows else "dice",
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


def held_out_cases(recipe: dict, dataset: Any) -> list[int]:
    """The cases the run did not train on: the studio writes them into the recipe by
    name (`data.val`)."""
    names = [case.name for case in dataset.cases]
    val = (recipe.get("data") or {}).get("val")
    if not isinstance(val, list):
        raise STCNNTError(
            "this run's recipe does not name its held-out cases (data.val); "
            "the page predicts only runs it started"
        )
    return [names.index(n) for n in val if n in names]


def dice(prediction: np.ndarray, label: np.ndarray, classes: int) -> float:
    """Mean Dice over the foreground classes present in the label or the prediction
    (MONAI's `compute_dice`)."""
    import torch
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    def hot(a: np.ndarray) -> torch.Tensor:  # [T, 1, H, W] -> [1, K, T, H, W]
        t = torch.as_tensor(a.astype(np.int64)).permute(1, 0, 2, 3)[None]
        return one_hot(t, classes, dim=1)

    scores = compute_dice(hot(prediction), hot(label), include_background=False, ignore_empty=True)
    values = scores[torch.isfinite(scores)]
    return float(values.mean()) if values.numel() else 1.0
