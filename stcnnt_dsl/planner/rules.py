"""From a data set's fingerprint to an architecture: nnU-Net's planning rules, written
for ST-CNNT.

- The patch starts at the median image [T, H, W]; T keeps every frame (or slice) up to
  `MAX_FRAMES`: temporal cells attend over all of them.
- Levels: halve until the coarsest map reaches the attention window (`WINDOW` pixels),
  at most `MAX_LEVELS`; widths start at `BASE_WIDTH` and double per level up to
  `MAX_WIDTH` (nnU-Net: 32, doubled, capped at 320/512). On a CPU, where compute binds
  before memory does, the start width halves (down to `MIN_WIDTH`) until one sample's
  forward takes at most `CPU_SAMPLE_FLOPS`.
- Block strings per level: `T1` where T > 1 (attention over frames), `L1` always (local
  windows), `G1` where the map holds at least `GRID` windows per axis (attention across
  a fixed grid of windows).
- Shrinking a patch that does not fit: the axis with the largest extent in millimetres
  first; an anisotropic axis (spacing over `ANISOTROPY` times the finest) keeps its
  full resolution longest (nnU-Net's rule; here the coarse axis is usually T).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import STCNNTError

__all__ = ["Fingerprint", "design", "read_fingerprint"]

WINDOW = 8  # pixels of a local window (2x2-pixel patches: 16 tokens)
PATCH = 2
GRID = 4  # global cells: a 4x4 grid of windows
MAX_LEVELS = 5
BASE_WIDTH = 32
MIN_WIDTH = 8
# CPU plans: one sample's forward at most this many FLOPs. A step of 2 samples (forward
# and backward, about 3x the forward) then takes about a second on one core at the
# ~20 GFLOP/s measured for planned architectures on a Xeon (docs/plan.md): the plan's
# 1000 steps in tens of minutes, where nnU-Net's width 32 took hours (7 s a step).
CPU_SAMPLE_FLOPS = 3 * 10**9
MAX_WIDTH = 256
MAX_FRAMES = 32
ANISOTROPY = 3.0
HEAD_OF_TASK = {"segment": "segmentation", "classify": "classification"}


@dataclass(frozen=True)
class Fingerprint:
    """What planning reads of a data set (from `Dataset.fingerprint()`)."""

    cases: int
    channels: int
    task: str
    classes: int
    median: tuple[int, int, int]  # [T, H, W]
    spacing: tuple[float, float, float]

    @property
    def voxels(self) -> int:
        return math.prod(self.median)


def _fail(message: str) -> STCNNTError:
    return STCNNTError(f"fingerprint: {message}")


def _triple(fp: Mapping[str, Any], key: str, kind: type) -> tuple:
    try:
        value = fp[key]["median"]
        out = tuple(kind(v) for v in value)
    except (KeyError, TypeError, ValueError):
        raise _fail(f"{key} needs a 'median' of three numbers [T, H, W], got "
                    f"{fp.get(key)!r}") from None  # fmt: skip
    if len(out) != 3 or min(out) <= 0:
        raise _fail(f"{key}.median must be three positive numbers [T, H, W], got {value!r}")
    return out


def read_fingerprint(source: Any) -> Fingerprint:
    """A `Fingerprint` from a `stcnnt_dsl.data.Dataset`, a data set folder or the dict
    `Dataset.fingerprint()` returns; a data set with fewer than two cases is refused
    (nothing would be left to validate on)."""
    if not isinstance(source, Mapping):
        if not hasattr(source, "fingerprint"):
            from ..data import open_dataset

            source = open_dataset(source)
        source = source.fingerprint()
    fp = source
    cases = fp.get("cases")
    if isinstance(cases, bool) or not isinstance(cases, int):
        raise _fail(f"'cases' must be a number of cases, got {cases!r}")
    if cases < 2:
        what = "is empty" if cases == 0 else "has one case"
        raise STCNNTError(
            f"the data set {what}: a plan needs at least 2 cases (one to train on, one to "
            "validate on); add cases, or plan from a larger data set with --base for this one"
        )
    channels = fp.get("channels") or ["image"]
    task = fp.get("task", "segment")
    classes = fp.get("classes") or {}
    n_classes = len(classes) if task == "segment" else len([k for k in classes if k]) or 2
    return Fingerprint(
        cases=cases,
        channels=len(channels),
        task=task,
        classes=max(n_classes, 2),
        median=_triple(fp, "shape", lambda v: round(float(v))),
        spacing=_triple(fp, "spacing", float),
    )


def heads_for(fp: Fingerprint) -> dict[str, Any]:
    """The head the task trains (DESIGN.md's `heads:`)."""
    if fp.task == "segment":
        return {"seg": {"kind": "segmentation", "classes": fp.classes}}
    if fp.task == "classify":
        return {"label": {"kind": "classification", "classes": fp.classes}}
    return {"image": {"kind": "enhancement", "out_channels": fp.channels}}


def levels_for(h: int, w: int) -> int:
    """Halve while the coarsest map stays a whole number of windows and at least one."""
    levels = 1
    while levels < MAX_LEVELS:
        step = 2 ** (levels + 1) * WINDOW
        if h % step or w % step:
            break
        levels += 1
    return levels


def round_patch(target: tuple[int, int, int], *, up: bool) -> tuple[int, int, int]:
    """A patch the rules' U-Net runs on near `target` [T, H, W]: H and W multiples of
    2^levels x WINDOW, with the most levels whose rounding keeps H and W within a third
    (`up`: rounding up, the start) or a quarter (down, while shrinking) of the target."""
    t, h, w = target
    for levels in range(MAX_LEVELS, 0, -1):
        m = 2**levels * WINDOW
        if up:
            hh, ww = (max(m, math.ceil(v / m) * m) for v in (h, w))
            ok = hh <= 4 * h / 3 and ww <= 4 * w / 3
        else:
            hh, ww = (max(m, v // m * m) for v in (h, w))
            ok = 3 * h / 4 <= hh <= h and 3 * w / 4 <= ww <= w
        if ok or levels == 1:
            return t, hh, ww
    raise AssertionError("unreachable")


def blocks_for(t: int, size: int) -> str:
    """The block string of a stage whose map is `size` pixels on its short side."""
    return ("T1" if t > 1 else "") + "L1" + ("G1" if size >= GRID * WINDOW else "")


def design(
    fp: Fingerprint, patch: tuple[int, int, int], width: int = BASE_WIDTH
) -> tuple[dict[str, Any], list[str]]:
    """The U-Net spec (a mapping `load_spec` accepts) for `patch` [T, H, W] with widths
    from `width`, and why."""
    t, h, w = patch
    levels = levels_for(h, w)
    widths = [min(width * 2**i, MAX_WIDTH) for i in range(levels)]
    short = min(h, w)
    blocks = [blocks_for(t, short // 2**i) for i in range(levels + 1)]
    coarsest = short // 2**levels
    spec = {
        "name": "planned",
        "description": f"planned for a {fp.median[0]}x{fp.median[1]}x{fp.median[2]} "
        f"(T x H x W) data set of {fp.cases} cases",
        "in_channels": fp.channels,
        "defaults": {"window": WINDOW, "patch": PATCH, "grid": GRID, "norm": "instance2d"},
        "unet": {"channels": widths, "blocks": blocks},
        "heads": heads_for(fp),
    }
    reasons = [
        f"levels {levels}: halving {h}x{w} until the coarsest map ({coarsest} px) reaches "
        f"the {WINDOW}-pixel attention window (at most {MAX_LEVELS})",
        f"widths {widths}: {width} doubled per level, at most {MAX_WIDTH}",
        "blocks " + ", ".join(blocks) + ": "
        + ("T1 attends over the T frames (T > 1); " if t > 1 else "no T1 (T = 1); ")
        + f"L1 local {WINDOW}x{WINDOW} windows at every level; G1 where the map holds at "
        f"least {GRID} windows per axis (a {GRID}x{GRID} grid across windows)",
    ]  # fmt: skip
    return spec, reasons
