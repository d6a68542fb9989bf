"""Synthetic 2D+T clips for the examples: bright discs and squares that move in straight
lines across the frames, under Gaussian noise, with their masks and motion labels; and
the few helpers the examples share (a training loop, metrics, the results table).

Everything is generated in code (no downloads), vectorised, and reproducible from a seed:

    clips = moving_shapes(64, frames=4, size=32, seed=0)
    clips.noisy   # [N, T, 1, H, W] float: what the model sees
    clips.clean   # [N, T, 1, H, W] float: the same clip without noise
    clips.masks   # [N, T, H, W] int64: 1 inside a shape, 0 outside
    clips.direction  # [N] int64: how the first shape moves (DIRECTIONS)

Each shape moves by a constant step per frame along one of four directions and stays
inside the image for the whole clip, so the direction can only be read from the
temporal axis (one frame alone does not tell it).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import stcnnt_dsl

__all__ = [
    "DIRECTIONS",
    "Clips",
    "Timer",
    "accuracy",
    "batches",
    "dice",
    "fit",
    "machine",
    "moving_shapes",
    "predict",
    "print_table",
    "set_threads",
    "trainable",
]

DIRECTIONS = ("right", "left", "down", "up")
_STEPS = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]])  # (dy, dx) per frame


@dataclass
class Clips:
    """A batch of clips (see the module docstring for the shapes)."""

    noisy: Tensor
    clean: Tensor
    masks: Tensor
    direction: Tensor

    def __len__(self) -> int:
        return self.noisy.shape[0]

    def subset(self, index: Tensor | slice) -> Clips:
        return Clips(self.noisy[index], self.clean[index], self.masks[index],
                     self.direction[index])  # fmt: skip


def moving_shapes(
    n: int,
    *,
    frames: int = 4,
    size: int = 32,
    shapes: int = 2,
    radius: tuple[float, float] | None = None,
    speed: tuple[float, float] = (1.0, 3.0),
    noise: float = 0.35,
    seed: int = 0,
) -> Clips:
    """`n` clips of `frames` frames of `size` x `size` pixels, each with 1..`shapes`
    discs or squares (half-width in `radius`, by default 3..7 pixels at size 32, in
    proportion at other sizes) of brightness 0.5..1 on a dim random gradient, moving
    `speed` pixels per frame; `noise` is the noise's standard deviation."""
    g = torch.Generator().manual_seed(seed)
    radius = radius or (3 * size / 32, 7 * size / 32)

    def uniform(shape: tuple[int, ...], low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=g)

    s = shapes
    r = uniform((n, s), *radius)
    # the fastest step that keeps the whole path inside the image
    fastest = ((size - 2 * r - 2) / max(frames - 1, 1)).clamp(min=0)
    step = torch.minimum(uniform((n, s), *speed), fastest)
    direction = torch.randint(0, 4, (n, s), generator=g)
    velocity = _STEPS[direction] * step[..., None]  # [n, s, 2]
    travel = velocity * (frames - 1)
    low = r[..., None] + 1 + (-travel).clamp(min=0)  # start so that start + travel fits
    high = size - 1 - r[..., None] - travel.clamp(min=0)
    start = low + (high - low).clamp(min=0) * torch.rand((n, s, 2), generator=g)
    t = torch.arange(frames, dtype=torch.float32)
    centre = start[:, :, None] + velocity[:, :, None] * t[None, None, :, None]  # [n, s, T, 2]

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dy = coords[None, None, None, :, None] - centre[..., 0, None, None]  # [n, s, T, H, 1]
    dx = coords[None, None, None, None, :] - centre[..., 1, None, None]  # [n, s, T, 1, W]
    rr = r[:, :, None, None, None]
    disc = dy**2 + dx**2 <= rr**2
    square = torch.maximum(dy.abs(), dx.abs()) <= rr
    is_disc = (torch.rand((n, s), generator=g) < 0.5)[:, :, None, None, None]
    present = torch.ones(n, s, dtype=torch.bool)  # the first shape always, the rest maybe
    present[:, 1:] = torch.rand((n, s - 1), generator=g) < 0.5
    inside = torch.where(is_disc, disc, square) & present[:, :, None, None, None]

    brightness = uniform((n, s), 0.5, 1.0)[:, :, None, None, None]
    foreground = (inside * brightness).amax(dim=1)  # [n, T, H, W]: overlaps take the max
    yy, xx = torch.meshgrid(coords / size - 0.5, coords / size - 0.5, indexing="ij")
    tilt = uniform((n, 2), -0.3, 0.3)
    background = 0.1 + tilt[:, 0, None, None] * yy + tilt[:, 1, None, None] * xx  # [n, H, W]
    clean = torch.where(foreground > 0, foreground, background[:, None]).unsqueeze(2)
    noisy = clean + noise * torch.randn(clean.shape, generator=g)
    masks = inside.any(dim=1).long()
    return Clips(noisy, clean, masks, direction[:, 0].clone())


# --------------------------------------------------------------------------- metrics


def dice(logits: Tensor, masks: Tensor) -> float:
    """Dice of the foreground class (argmax of [N, T, classes, H, W] against [N, T, H, W])
    over the whole set (not averaged per clip, so empty frames are no problem)."""
    pred = logits.argmax(dim=2) == 1
    truth = masks == 1
    overlap = (pred & truth).sum().item()
    return 2.0 * overlap / max(pred.sum().item() + truth.sum().item(), 1)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of [N, classes] logits whose argmax is the label."""
    return (logits.argmax(dim=1) == labels).float().mean().item()


# --------------------------------------------------------------------------- training


def fit(
    model: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor]],
    loss_fn: Callable[[dict[str, Tensor], Tensor], Tensor],
    steps: int,
    *,
    lr: float,
    weight_decay: float = 0.01,
) -> list[float]:
    """Train the trainable parameters for `steps` batches of (input, target) with AdamW
    (no decay on norms, biases and bias tables: `stcnnt_dsl.param_groups`) and a
    one-cycle schedule. Returns the loss of every step."""
    groups = stcnnt_dsl.param_groups(model, lr=lr, weight_decay=weight_decay)
    optimizer = torch.optim.AdamW(groups)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    model.train()
    losses = []
    for _ in range(steps):
        x, target = next(batches)
        loss = loss_fn(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def batches(
    x: Tensor, target: Tensor, batch: int, seed: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled batches of (x, target), a new order every pass over the set."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch + 1, batch):
            pick = order[i : i + batch]
            yield x[pick], target[pick]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, head: str, batch: int = 32) -> Tensor:
    """The output of one head on `x`, in eval mode, a batch at a time."""
    model.eval()
    return torch.cat([model(x[i : i + batch])[head] for i in range(0, len(x), batch)])


def trainable(model: nn.Module) -> int:
    """How many parameters the optimizer updates."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- reporting


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads (default: 1; tiny models on a shared machine are fastest
    on one thread) and return the number."""
    torch.set_num_threads(threads or 1)
    return torch.get_num_threads()


def print_table(rows: list[dict[str, object]]) -> None:
    """A small aligned table of result rows (same keys in every row)."""
    keys = list(rows[0])
    text = [[str(row[k]) for k in keys] for row in rows]
    widths = [max(len(k), *(len(r[i]) for r in text)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in text:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def machine() -> str:
    """CPU, threads and load average, for the results."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{_cpu_name()}, {torch.get_num_threads()} thread(s), load average {load:.1f}, "
            f"torch {torch.__version__}, python {sys.version.split()[0]}")  # fmt: skip


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


class Timer:
    """Wall time since creation, in seconds."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
