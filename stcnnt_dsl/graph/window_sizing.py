"""Window sizing per resolution level: how `window` and `patch` follow the image down the
levels of a U-Net or HR-Net (the topology key `window_sizing`).

The top-level `window` and `patch` (from `defaults` and the topology) are sizes at the
nominal input size `input_size` (level 0). Level l runs at H_l = H // 2^l. Per axis:

- `fixed` (default): every level uses `window` and `patch` unchanged.
- `keep_size`: keep the window size in pixels; where the level is too small to hold two
  windows (H_l // window < 2) the window becomes H_l // 2, and where the window would
  hold fewer than two patches the patch becomes window // 2 (all at least 1).
- `keep_count`: keep the number of windows n = max(H // window, 2) and of patches per
  window m = max(window // patch, 2): window_l = H_l // n, patch_l = window_l // m.
- `mixed`: alternate, as the reference implementation does: even levels keep the count,
  with n halved every second level (n_l = max((H // window) // 2^(l/2), 2)); odd levels
  apply `keep_size` to the level above.

U-Net decoder levels use their encoder level's sizes and the bridge is level L; every
HR-Net block of level l uses level l's sizes. Stage and inline options still win, and
cells with a `grid` keep it. The rules are pure functions of (window, patch, input_size,
level): no state is shared between levels (the reference implementation changes its
lists in place, which makes its decoder sizes depend on construction order;
`stcnnt_dsl.compat.reference_spec` reproduces that exactly with per-stage options).
"""

from __future__ import annotations

from typing import Any

from ..language.options import as_pair

__all__ = ["WINDOW_SIZING_METHODS", "level_sizes"]

WINDOW_SIZING_METHODS = ("fixed", "keep_size", "keep_count", "mixed")


def _keep_size(size: int, window: int, patch: int) -> tuple[int, int]:
    if size // window < 2:
        window = max(size // 2, 1)
    if window // patch < 2:
        patch = max(window // 2, 1)
    return window, patch


def _keep_count(size: int, count: int, per_window: int) -> tuple[int, int]:
    window = max(size // count, 1)
    return window, max(window // per_window, 1)


def _axis(method: str, window: int, patch: int, size0: int, level: int) -> tuple[int, int]:
    """(window, patch) along one axis at `level` for a nominal level-0 size `size0`."""
    size = max(size0 // 2**level, 1)
    per_window = max(window // patch, 2)
    if method == "keep_size":
        return _keep_size(size, window, patch)
    if method == "keep_count":
        return _keep_count(size, max(size0 // window, 2), per_window)
    if level % 2 == 0:  # mixed, even level: keep a count that halves every two levels
        count = max((size0 // window) // 2 ** (level // 2), 2)
        return _keep_count(size, count, per_window)
    return _keep_size(size, *_axis(method, window, patch, size0, level - 1))


def _canonical(h: int, w: int) -> int | tuple[int, int]:
    return h if h == w else (h, w)


def level_sizes(
    method: str,
    window: Any,
    patch: Any,
    input_size: tuple[int, int],
    level: int,
) -> dict[str, Any]:
    """The `window` and `patch` options of resolution level `level` (0 = full size)."""
    if method not in WINDOW_SIZING_METHODS:
        raise ValueError(f"unknown window sizing method {method!r}")
    (wh, ww), (ph, pw) = as_pair(window), as_pair(patch)
    if method == "fixed":
        return {"window": _canonical(wh, ww), "patch": _canonical(ph, pw)}
    win_h, patch_h = _axis(method, wh, ph, input_size[0], level)
    win_w, patch_w = _axis(method, ww, pw, input_size[1], level)
    return {"window": _canonical(win_h, win_w), "patch": _canonical(patch_h, patch_w)}
