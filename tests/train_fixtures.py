"""In-memory data sets with the data layer's interface (stcnnt_dsl.data.Dataset), for the
training tests: moving discs and squares (examples/synthetic.py) as cases."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from synthetic import moving_shapes


@dataclass(frozen=True)
class Image:
    array: np.ndarray
    spacing: tuple = (1.0, 1.0, 1.0)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    meta: dict = field(default_factory=dict)
    path: Path | None = None


@dataclass(frozen=True)
class Case:
    name: str
    images: tuple = ()
    label: object = None


class ShapesDataset:
    """`n` cases of [T, 1, H, W] clips; task segment (masks), classify (direction) or
    unlabelled; `scale`/`shift` change the intensities (another modality)."""

    def __init__(
        self,
        root: Path,
        n: int = 12,
        task: str = "segment",
        frames: int = 4,
        size: int = 32,
        seed: int = 0,
        scale: float = 1.0,
        shift: float = 0.0,
    ):
        clips = moving_shapes(n, frames=frames, size=size, seed=seed)
        self.root = Path(root)
        self.layout = "nnunet"
        self.task = task
        self.channels = ["MRI"]
        self.images = (clips.noisy.numpy() * scale + shift).astype(np.float32)
        self.masks = clips.masks.numpy()[:, :, None].astype(np.int64)
        self.direction = clips.direction.numpy()
        self.classes = (
            {0: "background", 1: "shape"}
            if task == "segment"
            else {i: str(i) for i in range(4)}
            if task == "classify"
            else {}
        )
        self.cases = [Case(f"case_{i:03d}") for i in range(n)]

    def __len__(self) -> int:
        return len(self.cases)

    def load(self, i: int):
        label = {"segment": self.masks[i], "classify": int(self.direction[i])}.get(self.task)
        return Image(self.images[i]), label


def install(monkeypatch, datasets: dict[str, ShapesDataset]) -> None:
    """Make the trainer open these data sets by folder name (the folders must exist)."""
    import stcnnt_dsl.train.data as train_data

    def open_dataset(path):
        return datasets[Path(path).name]

    monkeypatch.setattr(train_data, "_open_dataset", open_dataset)
