"""Which input sizes a cell can run on: the one place these rules are written.

The layers check their input against these rules (when a block first sees a tensor)
and shape inference applies the same rules without tensors, so `check` and a forward
pass can never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ShapeError

__all__ = ["SizeRule", "check_size", "nearest_multiples"]


@dataclass(frozen=True)
class SizeRule:
    """What (T, H, W) a cell accepts.

    H must be a multiple of `multiple[0]` and W of `multiple[1]` (`what` names why);
    H, W must be >= `minimum` (reflect padding needs pad < size); T >= `min_frames`
    and a multiple of `frames_multiple` (halving T); with `exact`, the size is fixed
    (layer norm's per-element affine).
    """

    multiple: tuple[int, int] = (1, 1)
    what: str = ""
    exact: tuple[int, int] | None = None
    minimum: int = 1
    min_frames: int = 1
    frames_multiple: int = 1

    def merge(self, other: SizeRule) -> SizeRule:
        mh = math.lcm(self.multiple[0], other.multiple[0])
        mw = math.lcm(self.multiple[1], other.multiple[1])
        what = " and ".join(w for w in (self.what, other.what) if w)
        return SizeRule(
            (mh, mw),
            what,
            self.exact or other.exact,
            max(self.minimum, other.minimum),
            max(self.min_frames, other.min_frames),
            math.lcm(self.frames_multiple, other.frames_multiple),
        )


def nearest_multiples(value: int, multiple: int) -> list[int]:
    """The valid sizes closest to `value` (below and above) for a multiple rule."""
    below = (value // multiple) * multiple
    above = below + multiple
    return [v for v in (below, above) if v >= multiple and v != value] or [multiple]


def check_size(rule: SizeRule, h: int, w: int, where: str, path: str = "", t: int = 1) -> None:
    """Raise a `ShapeError` naming `where` if (t, h, w) breaks `rule`."""
    if rule.frames_multiple > 1 and t % rule.frames_multiple:
        m = rule.frames_multiple
        raise ShapeError(
            f"{where}: halves T, which needs T a multiple of {m}, got T={t}",
            path,
            rule=f"halves T, which needs T a multiple of {m}, got T={t}",
            nearest={"T": nearest_multiples(t, m)},
        )
    if t < rule.min_frames:
        raise ShapeError(
            f"{where}: needs T >= {rule.min_frames} (3D convolution with reflect padding), "
            f"got T={t}; use padding=zeros or more frames",
            path,
            rule=f"needs T >= {rule.min_frames} (3D convolution with reflect padding), got "
            f"T={t}; use padding=zeros or more frames",
        )
    if h < rule.minimum or w < rule.minimum:
        why = (
            " (reflect padding needs the padding to be smaller than the size)"
            if (rule.minimum > 1)
            else ""
        )
        raise ShapeError(
            f"{where}: H and W must be >= {rule.minimum}{why}, got H={h}, W={w}",
            path,
            rule=f"H and W must be >= {rule.minimum}{why}, got H={h}, W={w}",
            nearest={"H": [max(h, rule.minimum)], "W": [max(w, rule.minimum)]},
        )
    if rule.exact is not None and (h, w) != rule.exact:
        eh, ew = rule.exact
        raise ShapeError(
            f"{where}: norm=layer was built for input_size {eh}x{ew} (per-element affine), "
            f"but got H={h}, W={w}; use that size, or a norm without a fixed size "
            "(instance2d, batch2d, ...)",
            path,
            rule=f"norm=layer was built for input_size {eh}x{ew}, got H={h}, W={w}",
            nearest={"H": [eh], "W": [ew]},
        )
    mh, mw = rule.multiple
    bad = []
    nearest: dict[str, list[int]] = {}
    if h % mh:
        bad.append(f"{mh} must divide H={h}")
        nearest["H"] = nearest_multiples(h, mh)
    if w % mw:
        bad.append(f"{mw} must divide W={w}")
        nearest["W"] = nearest_multiples(w, mw)
    if bad:
        hint = "; ".join(
            f"nearest valid {k}: {' or '.join(map(str, v))}" for k, v in nearest.items()
        )
        raise ShapeError(
            f"{where}: {rule.what}: {', '.join(bad)} ({hint})",
            path,
            rule=f"{rule.what}: {', '.join(bad)}",
            nearest=nearest,
        )
