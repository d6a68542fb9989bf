"""The reference implementation's window sizing, replayed block by block.

The reference computes, for each block it builds, the number of windows and of patches
per window that the block's attention modules get. It has two helpers: "keep the number
of windows" (returns new lists) and "keep the window size", which shrinks the window and
patch lists it is given *in place*. The backbones hand the same list objects to later
blocks, so a block built later (the U-Net's bridge and decoder, the HR-Net's later
stages) can see sizes that an earlier block changed. Construction order therefore
matters, and this module follows it exactly. (Our own `window_sizing` option has clean
semantics instead: see `stcnnt_dsl.window_sizing`.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Geometry", "ReferenceSizer", "hrnet_geometry", "mixed_unetr_geometry", "unet_geometry"]

METHODS = ("mixed", "keep_window_size", "keep_num_window")


@dataclass(frozen=True)
class Geometry:
    """What one block's attention modules are built with: the block's nominal size, the
    number of windows and the number of patches per window (each (h, w))."""

    size: tuple[int, int]
    num_wind: tuple[int, int]
    num_patch: tuple[int, int]


def _keep_num_window(hw, num_wind, num_patch) -> tuple[list, list, Geometry]:
    nw = [max(v, 2) for v in num_wind]
    npch = [max(v, 2) for v in num_patch]
    window = [max(s // n, 1) for s, n in zip(hw, nw, strict=True)]
    patch = [max(w // n, 1) for w, n in zip(window, npch, strict=True)]
    return window, patch, Geometry(tuple(hw), tuple(nw), tuple(npch))


def _keep_window_size(hw, window: list, patch: list) -> tuple[list, list, Geometry]:
    """Shrinks `window` and `patch` in place where the level is too small (as the
    reference does), and returns them with the resulting geometry."""
    for a in (0, 1):
        if hw[a] // window[a] < 2:
            window[a] = max(hw[a] // 2, 1)
    for a in (0, 1):
        if window[a] // patch[a] < 2:
            patch[a] = max(window[a] // 2, 1)
    nw = tuple(s // w for s, w in zip(hw, window, strict=True))
    npch = tuple(w // p for w, p in zip(window, patch, strict=True))
    return window, patch, Geometry(tuple(hw), nw, npch)


class ReferenceSizer:
    """The per-level window/patch lists of one backbone under construction."""

    def __init__(
        self, method: str, height: int, width: int, window: list[int], patch: list[int]
    ) -> None:
        self.method = method
        self.h, self.w = height, width
        self.window0, self.patch0 = list(window), list(patch)
        self.num_wind = [height // window[0], width // window[1]]
        self.num_patch = [window[0] // patch[0], window[1] // patch[1]]
        self.windows: list[list[int]] = []
        self.patches: list[list[int]] = []

    def size(self, level: int) -> tuple[int, int]:
        return (self.h // 2**level, self.w // 2**level)

    def new_level(self, level: int) -> Geometry:
        """The first block of `level` (U-Net D_i, HR-Net B_ii): the method decides."""
        hw, m = self.size(level), self.method
        if level == 0 and m == "keep_window_size":
            w, p, g = _keep_window_size(hw, self.window0, self.patch0)
        elif level == 0 or m == "keep_num_window":
            w, p, g = _keep_num_window(hw, self.num_wind, self.num_patch)
        elif m == "keep_window_size" or level % 2 == 1:  # mixed: odd levels keep the size
            w, p, g = _keep_window_size(hw, self.windows[level - 1], self.patches[level - 1])
        else:  # mixed, even level: keep a number of windows that halves every two levels
            halved = [v // 2 ** (level // 2) for v in self.num_wind]
            w, p, g = _keep_num_window(hw, halved, self.num_patch)
        self.windows.append(w)
        self.patches.append(p)
        return g

    def again(self, level: int, size: tuple[int, int] | None = None) -> Geometry:
        """A later block that reuses (and may shrink) level `level`'s lists."""
        hw = size or self.size(level)
        return _keep_window_size(hw, self.windows[level], self.patches[level])[2]


def unet_geometry(sizer: ReferenceSizer, levels: int) -> dict[str, Geometry]:
    """Geometry per U-Net block (reference names), in construction order."""
    out = {f"D{i}": sizer.new_level(i) for i in range(levels)}
    last = sizer.size(levels - 1)
    out["bridge"] = sizer.again(levels - 1, (last[0] // 2, last[1] // 2))
    for i in reversed(range(levels)):
        out[f"U{i}"] = sizer.again(i)
    return out


def hrnet_geometry(sizer: ReferenceSizer, levels: int) -> dict[str, Geometry]:
    """Geometry per HR-Net block (reference names), in construction order:
    B00, output_B0, then per stage j: B0j .. B(j-1)j, Bjj, output_Bj."""
    out = {"B00": sizer.new_level(0), "output_B0": sizer.again(0)}
    for j in range(1, levels):
        for i in range(j):
            out[f"B{i}{j}"] = sizer.again(i)
        out[f"B{j}{j}"] = sizer.new_level(j)
        out[f"output_B{j}"] = sizer.again(j)
    return out


def mixed_unetr_geometry(sizer: ReferenceSizer, levels: int) -> dict[str, Geometry]:
    """Geometry per mixed U-Netr block: the encoder levels and the bridge as the U-Net's
    (its decoder is convolutional)."""
    out = {f"D{i}": sizer.new_level(i) for i in range(levels)}
    last = sizer.size(levels - 1)
    out["bridge"] = sizer.again(levels - 1, (last[0] // 2, last[1] // 2))
    return out
