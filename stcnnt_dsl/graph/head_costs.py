"""Parameter counts and FLOPs of the task heads (`stcnnt_dsl.nn.heads`), in closed form.

Pure functions of a head's configuration and the input geometry, so a profiler or the
design page can price a head without building it (no torch here).

Convention (as `stcnnt_dsl.flops`): FLOPs = 2 x multiply-adds of convolutions (transposed
included), linear layers and matmuls; norms, pooling, interpolation, activations,
additions and biases are not counted. Every function returns a `HeadCost` whose
`by_module` has one row per FLOP-doing sub-module, keyed by its path inside the head
(`conv`, `fpn.lateral.1`, `blocks.0.conv2`, ...), the names `named_modules()` gives.

Geometry: the input is [batch, frames, C, height, width]; feature i is at
(height // r_i, width // r_i) with `reductions` r_i (default 1, 2, 4, ...) and keeps all
frames, as the backbones of this library do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import SpecError

__all__ = [
    "HEAD_COSTS",
    "HeadCost",
    "conv_avg_head_cost",
    "conv_head_cost",
    "multi_depth_head_cost",
    "norm_avg_head_cost",
    "unetr_head_cost",
    "upernet_head_cost",
]


@dataclass(frozen=True)
class HeadCost:
    """`params`: trainable parameters; `flops`: total; `by_module`: FLOPs per sub-module
    path inside the head (leaves only; they sum to `flops`)."""

    params: int
    flops: int
    by_module: dict[str, int] = field(default_factory=dict)


class _Tally:
    def __init__(self) -> None:
        self.params = 0
        self.rows: dict[str, int] = {}

    def conv(self, path: str, c_in: int, c_out: int, taps: int, positions: int, *, bias: bool):
        """A conv (or linear: taps = 1) with `positions` outputs per channel in total."""
        self.params += c_in * c_out * taps + (c_out if bias else 0)
        self.rows[path] = 2 * c_in * c_out * taps * positions

    def norm(self, channels: int) -> None:
        """An affine norm (batch norm, layer norm): weight and bias."""
        self.params += 2 * channels

    def done(self) -> HeadCost:
        return HeadCost(self.params, sum(self.rows.values()), dict(self.rows))


def _reductions(reductions: Sequence[int] | None, count: int) -> list[int]:
    if reductions is None:
        return [2**i for i in range(count)]
    if len(reductions) != count:
        raise SpecError(f"has {len(reductions)} entries for {count} features", "reductions")
    return list(reductions)


def _taps(kernel: int, mode: str) -> int:
    if mode not in ("2d", "3d"):
        raise SpecError(f"must be '2d' or '3d', got {mode!r}", "mode")
    return kernel ** (2 if mode == "2d" else 3)


def _level_positions(
    count: int, reductions: Sequence[int] | None, batch: int, frames: int, height: int, width: int
) -> list[int]:
    """Number of (sample, frame, row, column) positions of each feature."""
    return [batch * frames * (height // r) * (width // r) for r in _reductions(reductions, count)]


# --------------------------------------------------------------------------- simple heads


def conv_head_cost(
    in_channels: int, out_channels: int, *, batch: int, frames: int, height: int, width: int
) -> HeadCost:
    """`ConvHead`: one 1x1 conv with bias at every output position."""
    t = _Tally()
    t.conv("conv", in_channels, out_channels, 1, batch * frames * height * width, bias=True)
    return t.done()


def norm_avg_head_cost(
    in_channels: int, classes: int, *, batch: int, frames: int = 1, per_frame: bool = False
) -> HeadCost:
    """`NormAvgHead`: the layer norm and the mean are free; the linear runs once per
    sample (per frame with `per_frame`)."""
    t = _Tally()
    t.norm(in_channels)
    t.conv("linear", in_channels, classes, 1, batch * (frames if per_frame else 1), bias=True)
    return t.done()


def conv_avg_head_cost(
    in_channels: int,
    classes: int,
    *,
    batch: int,
    frames: int = 1,
    hidden: int = 2048,
    per_frame: bool = False,
    bias: bool = False,
) -> HeadCost:
    """`ConvAvgHead`: it pools before its 1x1 conv, so the conv runs once per pooled
    vector, not per pixel (the reference's order costs frames·height·width times more)."""
    rows = batch * (frames if per_frame else 1)
    t = _Tally()
    t.conv("conv", in_channels, hidden, 1, rows, bias=bias)
    t.conv("linear", hidden, classes, 1, rows, bias=True)
    return t.done()


def multi_depth_head_cost(
    feature_channels: Sequence[int],
    out_channels: int,
    *,
    batch: int,
    frames: int,
    height: int,
    width: int,
    depth: int = 4,
    reductions: Sequence[int] | None = None,
) -> HeadCost:
    """`MultiDepthHead`: `convs.k` is a 1x1 conv with bias on feature -(k+1), at that
    feature's resolution (the resize after it is free)."""
    n = len(feature_channels)
    if not 1 <= depth <= n:
        raise SpecError(f"must be between 1 and the {n} features, got {depth}", "depth")
    positions = _level_positions(n, reductions, batch, frames, height, width)
    t = _Tally()
    for k in range(depth):
        i = n - 1 - k
        t.conv(f"convs.{k}", feature_channels[i], out_channels, 1, positions[i], bias=True)
    return t.done()


# --------------------------------------------------------------------------- UperNet


def upernet_head_cost(
    feature_channels: Sequence[int],
    classes: int,
    *,
    batch: int,
    frames: int,
    height: int,
    width: int,
    hidden: int | None = None,
    bins: Sequence[int] = (1, 2, 4, 6),
    mode: str = "2d",
    reductions: Sequence[int] | None = None,
    shared_smooth: bool = False,
) -> HeadCost:
    """`UperNetHead`: pooling-branch convs on bin^2 cells per frame (2d) or bin^3 cells per
    sample (3d); bottleneck at the deepest level; lateral 1x1 and smoothing 3x3(x3) convs
    per level (one set of smoothing weights when `shared_smooth`); fuse and head convs at
    the finest level. The head conv runs at the finest feature's resolution, before the
    final resize (the reference's padded bottleneck adds a border, not counted)."""
    n = len(feature_channels)
    hidden = feature_channels[0] if hidden is None else hidden
    taps = _taps(3, mode)
    positions = _level_positions(n, reductions, batch, frames, height, width)
    deepest = feature_channels[-1]
    mid = deepest // len(bins)
    t = _Tally()
    for k, b in enumerate(bins):
        cells = batch * frames * b * b if mode == "2d" else batch * b**3
        t.conv(f"psp.stages.{k}.conv", deepest, mid, 1, cells, bias=False)
        t.norm(mid)
    t.conv("psp.bottleneck.conv", deepest + mid * len(bins), deepest, 1, positions[-1], bias=False)
    t.norm(deepest)
    for i, c in enumerate(feature_channels):
        if not (i == 0 and c == hidden):
            t.conv(f"fpn.lateral.{i}", c, hidden, 1, positions[i], bias=True)
    for i in range(n - 1):
        t.conv(f"fpn.smooth.{i}", hidden, hidden, taps, positions[i], bias=True)
        if shared_smooth and i > 0:  # the same weights again
            t.params -= hidden * hidden * taps + hidden
    t.conv("fpn.fuse.conv", n * hidden, hidden, taps, positions[0], bias=False)
    t.norm(hidden)
    t.conv("head", hidden, classes, taps, positions[0], bias=True)
    return t.done()


# --------------------------------------------------------------------------- UNETR


def _res_block(t: _Tally, path: str, c_in: int, c_out: int, taps: int, positions: int) -> None:
    t.conv(f"{path}.conv1", c_in, c_out, taps, positions, bias=False)
    t.conv(f"{path}.conv2", c_out, c_out, taps, positions, bias=False)
    if c_in != c_out:
        t.conv(f"{path}.conv3", c_in, c_out, 1, positions, bias=False)


def unetr_head_cost(
    feature_channels: Sequence[int],
    out_channels: int,
    *,
    batch: int,
    frames: int,
    height: int,
    width: int,
    reductions: Sequence[int] | None = None,
    in_channels: int | None = None,
    mode: str = "2d",
    kernel_size: int = 3,
) -> HeadCost:
    """`UNETRHead`: a transposed conv with kernel = stride touches each output once, so it
    costs taps x (coarse positions) = (fine positions) multiply-adds per channel pair;
    instance norms have no parameters."""
    n = len(feature_channels)
    r = _reductions(reductions, n)
    taps = _taps(kernel_size, mode)
    positions = _level_positions(n, r, batch, frames, height, width)
    full = batch * frames * height * width
    t = _Tally()
    for i in range(n - 1):
        factor = r[i + 1] // r[i]
        c, coarse = feature_channels[i], feature_channels[i + 1]
        t.conv(f"ups.{i}", coarse, c, factor * factor, positions[i + 1], bias=False)
        _res_block(t, f"blocks.{i}", 2 * c, c, taps, positions[i])
    c0 = feature_channels[0]
    if in_channels is not None:
        _res_block(t, "stem", in_channels, c0, taps, full)
        t.conv("up_input", c0, c0, r[0] * r[0], positions[0], bias=False)
        _res_block(t, "block_input", 2 * c0, c0, taps, full)
    t.conv("out", c0, out_channels, 1, full if in_channels is not None else positions[0], bias=True)
    return t.done()


HEAD_COSTS = {
    "ConvHead": conv_head_cost,
    "NormAvgHead": norm_avg_head_cost,
    "ConvAvgHead": conv_avg_head_cost,
    "MultiDepthHead": multi_depth_head_cost,
    "UperNetHead": upernet_head_cost,
    "UNETRHead": unetr_head_cost,
}
"""Head class name -> its cost function."""
