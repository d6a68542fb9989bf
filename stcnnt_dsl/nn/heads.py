"""Task heads: what turns a backbone into a whole model (segmentation, classification,
enhancement), modelled on the reference implementation's `post` heads.

Every head has the same call, so a model can hand each one everything and let it read
what it needs::

    head(x, output, features)

- `x`: the model input [B, T, C_in, H, W];
- `output`: the backbone's output [B, T, C_out, H, W] (full resolution);
- `features`: the backbone's per-level features [B, T, C_i, H/r_i, W/r_i], finest first
  (U-Net: decoder outputs, level 0 at full resolution; HR-Net: per-level outputs).

Heads work in our layout [B, T, C, H, W]; 2D operations fold the frames into the batch,
3D ones see [B, C, T, H, W] (a view: channels-last frames become channels-last-3d).

Reference state_dict keys (FMImaging `ModelManager`, all under `post.`) map onto ours by
renaming only (see /work/research/reference_heads.md for the facts):

| reference (`post.` stripped)          | ours                               | head          |
|---------------------------------------|------------------------------------|---------------|
| `conv2d.conv.{weight,bias}`           | `conv.{weight,bias}`               | ConvHead      |
| `conv2d.conv.weight` (no bias)        | `conv.weight`                      | ConvAvgHead   |
| `linear.{weight,bias}`                | `linear.{weight,bias}`             | ConvAvg, NormAvg |
| `norm.{weight,bias}`                  | `norm.{weight,bias}`               | NormAvgHead   |
| `conv2d_{k}.conv.{weight,bias}`       | `convs.{k-1}.{weight,bias}`        | MultiDepthHead |
| `PPN.stages.{k}.1.*` / `.2.*`         | `psp.stages.{k}.conv.*` / `.norm.*` | UperNetHead  |
| `PPN.bottleneck.0.*` / `.1.*`         | `psp.bottleneck.conv.*` / `.norm.*` | UperNetHead  |
| `FPN.conv1x1.{i}.*`                   | `fpn.lateral.{i+1}.*`              | UperNetHead   |
| `FPN.smooth_conv.{i}.*`               | `fpn.smooth.{i}.*`                 | UperNetHead   |
| `FPN.conv_fusion.0.*` / `.1.*`        | `fpn.fuse.conv.*` / `.norm.*`      | UperNetHead   |
| `head.{weight,bias}`                  | `head.{weight,bias}`               | UperNetHead   |
| `decoder{k}.transp_conv.conv.weight`  | `ups.{i}.weight` (see UNETRHead)   | UNETRHead     |
| `decoder{k}.conv_block.conv{j}.conv.weight` | `blocks.{i}.conv{j}.weight`  | UNETRHead     |
| `encoder1.layer.conv{j}.conv.weight`  | `stem.conv{j}.weight`              | UNETRHead     |
| `out.conv.conv.{weight,bias}`         | `out.{weight,bias}`                | UNETRHead     |

ConvHead, ConvAvgHead, NormAvgHead and MultiDepthHead then give the reference's outputs;
UperNetHead does with the reference's behaviours switched on (`bottleneck_padding=1`,
`shared_smooth=True`, `frames="first"` for UperNet2D, `size` its configured size), which
its defaults leave off; UNETRHead is UNETR-style, not weight-compatible (the reference's UNETR
needs exactly 5 Swin features and never ran inside `ModelManager`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..errors import SpecError, STCNNTError
from .functional import is_exporting

__all__ = [
    "ConvAvgHead",
    "ConvHead",
    "MultiDepthHead",
    "NormAvgHead",
    "UNETRHead",
    "UperNetHead",
]


# --------------------------------------------------------------------------- validation


def _positive(value: object, name: str, head: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"must be a positive integer, got {value!r} ({head})", name)
    return value


def _channel_list(values: object, name: str, head: str) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise SpecError(
            f"must be a non-empty list of channel counts, finest feature first, got "
            f"{values!r} ({head})",
            name,
        )
    return [_positive(c, f"{name}[{i}]", head) for i, c in enumerate(values)]


def _mode(mode: object, head: str) -> str:
    if mode not in ("2d", "3d"):
        raise SpecError(
            f"must be '2d' (per frame) or '3d' (over T, H, W), got {mode!r} ({head})", "mode"
        )
    return mode  # type: ignore[return-value]


def _check_features(head: nn.Module, features: Sequence[Tensor]) -> None:
    """Fail with a message naming the head when the backbone's features do not fit it."""
    want = head.feature_channels
    got = [f.shape[2] for f in features]
    if got != want:
        raise STCNNTError(
            f"{type(head).__name__} was built for features with channels {want} (finest "
            f"first) but got {got}; build the head from the backbone's feature_info"
        )


def _add_residual(head: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """y + x for enhancement heads, once the channels and sizes are known to agree."""
    if x.shape[2] != y.shape[2] or x.shape[-2:] != y.shape[-2:]:
        raise STCNNTError(
            f"{type(head).__name__}(residual=True) adds the input to its output, but the "
            f"input has {x.shape[2]} channels at {tuple(x.shape[-2:])} and the head gives "
            f"{y.shape[2]} at {tuple(y.shape[-2:])}; set out_channels to the input's "
            "channels or residual=False"
        )
    return y + x


# --------------------------------------------------------------------------- layout


def _resize(x: Tensor, size: Sequence[int], mode: str, align_corners: bool) -> Tensor:
    """Interpolate the trailing dims of `x` to `size` (a no-op when they already match).
    Under export the sizes are symbols: they match only where that is known without a
    guard (asking would fix the traced size, e.g. T == 3 for a pooling bin of 3)."""
    if all(statically_known_true(a == b) for a, b in zip(x.shape[2:], size, strict=True)):
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align_corners)


class _Layout:
    """2D: frames folded into the batch ([B*T, C, H, W]); 3D: [B, C, T, H, W] views."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.dims = 2 if mode == "2d" else 3
        self.interp = "bilinear" if mode == "2d" else "trilinear"

    def enter(self, x: Tensor) -> Tensor:
        return x.flatten(0, 1) if self.dims == 2 else x.transpose(1, 2)

    def leave(self, y: Tensor, batch: int) -> Tensor:
        return y.unflatten(0, (batch, -1)) if self.dims == 2 else y.transpose(1, 2)

    def size(self, x: Tensor) -> tuple[int, ...]:
        """Target size of an our-layout tensor [B, T, C, H, W] in working coordinates."""
        return tuple(x.shape[-2:]) if self.dims == 2 else (x.shape[1], *x.shape[-2:])

    def conv(
        self, c_in: int, c_out: int, kernel: int, *, bias: bool, padding: int | None = None
    ) -> nn.Module:
        cls = nn.Conv2d if self.dims == 2 else nn.Conv3d
        pad = kernel // 2 if padding is None else padding
        return cls(c_in, c_out, kernel, padding=pad, bias=bias)

    def batch_norm(self, channels: int) -> nn.Module:
        return (nn.BatchNorm2d if self.dims == 2 else nn.BatchNorm3d)(channels)

    def instance_norm(self, channels: int) -> nn.Module:
        return (nn.InstanceNorm2d if self.dims == 2 else nn.InstanceNorm3d)(channels)


# --------------------------------------------------------------------------- simple heads


class ConvHead(nn.Module):
    """Per-frame 1x1 conv with bias on the backbone output (the reference `SimpleConv`):
    [B, T, in_channels, H, W] -> [B, T, out_channels, H, W]. Segmentation (out_channels =
    classes) and enhancement (`residual=True` adds the input)."""

    def __init__(self, in_channels: int, out_channels: int, *, residual: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        self.in_channels = _positive(in_channels, "in_channels", name)
        self.out_channels = _positive(out_channels, "out_channels", name)
        self.residual = bool(residual)
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, output: Tensor, features: list[Tensor]) -> Tensor:
        y = self.conv(output.flatten(0, 1)).unflatten(0, output.shape[:2])
        return _add_residual(self, x, y) if self.residual else y


class NormAvgHead(nn.Module):
    """LayerNorm over the channels at every position, mean, linear (the reference
    `NormPoolLinear`): [B, T, C, H, W] -> [B, classes], or [B, T, classes] with
    `per_frame` (mean over H, W only)."""

    def __init__(self, in_channels: int, classes: int, *, per_frame: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        self.in_channels = _positive(in_channels, "in_channels", name)
        self.classes = _positive(classes, "classes", name)
        self.per_frame = bool(per_frame)
        self.norm = nn.LayerNorm(in_channels)
        self.linear = nn.Linear(in_channels, classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, output: Tensor, features: list[Tensor]) -> Tensor:
        # [B, T, H, W, C]: contiguous when the frames are stored channels-last
        normed = self.norm(output.permute(0, 1, 3, 4, 2))
        pooled = normed.mean(dim=(2, 3) if self.per_frame else (1, 2, 3))
        return self.linear(pooled)


class _PooledPointwise(nn.Module):
    """A 1x1 conv's weight [C_out, C_in, 1, 1] applied to already pooled vectors [..., C_in].

    A 1x1 conv with nothing nonlinear before the average commutes with it, so pooling
    first is exact and costs T·H·W times fewer FLOPs; the parameter keeps the conv's shape
    and initialisation so checkpoints load unchanged."""

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default init
        if self.bias is not None:
            bound = 1 / math.sqrt(in_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, pooled: Tensor) -> Tensor:
        return F.linear(pooled, self.weight.flatten(1), self.bias)


class ConvAvgHead(nn.Module):
    """Per-frame 1x1 conv C -> hidden, mean, linear hidden -> classes (the reference
    `ConvPoolLinear`, whose conv has no bias): [B, T, C, H, W] -> [B, classes], or
    [B, T, classes] with `per_frame`. The linear starts trunc-normal (std 0.02), bias 0.

    There is no nonlinearity between the conv and the mean, so the mean runs first (see
    `_PooledPointwise`); the result is the reference's up to rounding."""

    def __init__(
        self,
        in_channels: int,
        classes: int,
        *,
        hidden: int = 2048,
        per_frame: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.in_channels = _positive(in_channels, "in_channels", name)
        self.classes = _positive(classes, "classes", name)
        self.hidden = _positive(hidden, "hidden", name)
        self.per_frame = bool(per_frame)
        self.conv = _PooledPointwise(in_channels, hidden, bias=bias)
        self.linear = nn.Linear(hidden, classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, output: Tensor, features: list[Tensor]) -> Tensor:
        pooled = output.mean(dim=(3, 4) if self.per_frame else (1, 3, 4))
        return self.linear(self.conv(pooled))


class MultiDepthHead(nn.Module):
    """1x1 convs (with bias) from the `depth` deepest features to out_channels, each
    resized to the output's (T, H, W) and summed (the reference `SimpleMultidepthConv`,
    which reads its list's last 4: lists are finest first there as here, so "last" =
    deepest). `convs[k]` reads `features[-(k + 1)]`: `convs.0` the deepest, like the
    reference's `conv2d_1`. Resizing is bilinear per frame (trilinear over (T, H, W) if a
    feature has fewer frames), align_corners=False, after the conv (both are linear and
    the interpolation weights sum to 1, so the order only changes the cost)."""

    def __init__(
        self,
        feature_channels: Sequence[int],
        out_channels: int,
        *,
        depth: int = 4,
        residual: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.feature_channels = _channel_list(feature_channels, "feature_channels", name)
        self.out_channels = _positive(out_channels, "out_channels", name)
        self.depth = _positive(depth, "depth", name)
        if depth > len(self.feature_channels):
            raise SpecError(
                f"{depth} is more than the backbone's {len(self.feature_channels)} features "
                f"({name}); use depth <= {len(self.feature_channels)}",
                "depth",
            )
        self.residual = bool(residual)
        self.convs = nn.ModuleList(
            nn.Conv2d(self.feature_channels[-(k + 1)], out_channels, 1) for k in range(depth)
        )

    def forward(self, x: Tensor, output: Tensor, features: list[Tensor]) -> Tensor:
        _check_features(self, features)
        batch, frames = output.shape[:2]
        size = output.shape[-2:]
        terms = []
        for k, conv in enumerate(self.convs):
            feature = features[-(k + 1)]
            y = conv(feature.flatten(0, 1))
            if feature.shape[1] == frames:
                y = _resize(y, size, "bilinear", False).unflatten(0, (batch, frames))
            else:  # fewer frames than the output: resize over (T, H, W)
                y = y.unflatten(0, feature.shape[:2]).transpose(1, 2)
                y = _resize(y, (frames, *size), "trilinear", False).transpose(1, 2)
            terms.append(y)
        total = terms[0]
        for y in terms[1:]:
            total = total + y
        return _add_residual(self, x, total) if self.residual else total


# --------------------------------------------------------------------------- UperNet


class _ConvNormAct(nn.Module):
    """conv (no bias) -> batch norm -> ReLU [-> channel dropout]."""

    def __init__(
        self, layout: _Layout, c_in: int, c_out: int, kernel: int, dropout: float = 0,
        padding: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.conv = layout.conv(c_in, c_out, kernel, bias=False, padding=padding)
        self.norm = layout.batch_norm(c_out)
        self.act = nn.ReLU()
        drop = nn.Dropout2d if layout.dims == 2 else nn.Dropout3d
        self.drop = drop(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.act(self.norm(self.conv(x))))


class _PoolStage(nn.Module):
    """Adaptive average pool to bin^d cells, 1x1 conv, batch norm, ReLU."""

    def __init__(self, layout: _Layout, c_in: int, c_out: int, bin_size: int) -> None:
        super().__init__()
        pool = nn.AdaptiveAvgPool2d if layout.dims == 2 else nn.AdaptiveAvgPool3d
        self.pool = pool(bin_size)
        self.bin_size = bin_size
        self.conv = layout.conv(c_in, c_out, 1, bias=False)
        self.norm = layout.batch_norm(c_out)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        pooled = _adaptive_mean(x, self.bin_size) if is_exporting() else self.pool(x)
        return self.act(self.norm(self.conv(pooled)))


def _adaptive_mean(x: Tensor, bins: int) -> Tensor:
    """Adaptive average pooling of the trailing dims of `x` [N, C, *dims] to `bins` cells
    each, as products with averaging matrices: cell i of a size-n axis averages
    [floor(i n / bins), ceil((i + 1) n / bins)), as AdaptiveAvgPool does. For export:
    torch's ONNX exporter decomposes AdaptiveAvgPool into an AvgPool whose kernel is the
    traced size, so the file fails at any other size; these matrices follow the input's
    symbolic sizes."""
    for axis in range(2, x.dim()):
        n = x.shape[axis]
        cells = torch.arange(bins, device=x.device)
        start = (cells * n).div(bins, rounding_mode="floor")
        end = ((cells + 1) * n + bins - 1).div(bins, rounding_mode="floor")
        at = torch.arange(n, device=x.device)
        inside = (at >= start[:, None]) & (at < end[:, None])
        weights = inside.to(x.dtype) / (end - start)[:, None].to(x.dtype)  # [bins, n]
        x = torch.movedim(torch.movedim(x, axis, -1) @ weights.T, -1, axis)
    return x


class _PSP(nn.Module):
    """Pyramid pooling on the deepest feature: the feature and its pooled, projected,
    re-enlarged (align_corners=True) copies, concatenated, squeezed back by a 1x1 conv
    (zero-padded by `padding`: the reference pads it by 1, so its output is one pixel
    larger on every side)."""

    def __init__(
        self, layout: _Layout, channels: int, bins: Sequence[int], dropout: float, padding: int
    ) -> None:
        super().__init__()
        self.layout = layout
        mid = channels // len(bins)
        self.stages = nn.ModuleList(_PoolStage(layout, channels, mid, b) for b in bins)
        self.bottleneck = _ConvNormAct(
            layout, channels + mid * len(bins), channels, 1, dropout, padding
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        pyramid = [x] + [_resize(s(x), size, self.layout.interp, True) for s in self.stages]
        return self.bottleneck(torch.cat(pyramid, dim=1))


class _FPN(nn.Module):
    """Lateral 1x1 convs to `hidden` channels; top-down `pairwise` (the reference's: level
    i = smooth(up(lateral i+1) + lateral i)) or `cumulative` (the FPN paper's: the sum
    carries down, level i = smooth(up(sum i+1) + lateral i)); all levels enlarged to the
    finest, concatenated, fused. `shared_smooth`: one smoothing conv for every level (the
    reference builds `[conv] * (n - 1)`; its state dict lists it once per level)."""

    def __init__(
        self, layout: _Layout, channels: Sequence[int], hidden: int, *,
        top_down: str = "pairwise", shared_smooth: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.layout = layout
        self.top_down = top_down
        self.lateral = nn.ModuleList(
            nn.Identity() if c == hidden and i == 0 else layout.conv(c, hidden, 1, bias=True)
            for i, c in enumerate(channels)
        )
        count = len(channels) - 1
        if shared_smooth and count:
            self.smooth = nn.ModuleList([layout.conv(hidden, hidden, 3, bias=True)] * count)
        else:
            self.smooth = nn.ModuleList(
                layout.conv(hidden, hidden, 3, bias=True) for _ in range(count)
            )
        self.fuse = _ConvNormAct(layout, len(channels) * hidden, hidden, 3)

    def forward(self, features: list[Tensor]) -> Tensor:
        lat = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        interp = self.layout.interp
        levels: list[Tensor] = [lat[-1]]
        carried = lat[-1]
        for i in reversed(range(len(self.smooth))):
            coarser = carried if self.top_down == "cumulative" else lat[i + 1]
            carried = _resize(coarser, lat[i].shape[2:], interp, True) + lat[i]
            levels.insert(0, self.smooth[i](carried))
        size = levels[0].shape[2:]
        levels = [_resize(p, size, interp, True) for p in levels]
        return self.fuse(torch.cat(levels, dim=1))


class UperNetHead(nn.Module):
    """UperNet segmentation head (the reference `UperNet2D/3D`): pyramid pooling (`bins`)
    on the deepest feature, FPN fuse over all features, 3x3 conv with bias to `classes`,
    resized (align_corners=False) to the output's size: [B, T, classes, H, W].

    `mode="2d"` works per frame (frames folded into the batch), `"3d"` over (T, H, W)
    with 3x3x3 convs and cubic pooling bins. `hidden` (the FPN width) defaults to the
    finest feature's channels, as in the reference; then that feature needs no lateral
    conv (`fpn.lateral.0` is the identity). Batch norm as in the reference: train with
    more than one sample per batch (frames count in 2d).

    The reference's behaviours, as options (all off by default but `top_down`):
    `bottleneck_padding=1` (its pyramid pooling pads the 1x1 conv), `shared_smooth`
    (one smoothing conv for every FPN level), `top_down="pairwise"` (no sum carried down;
    "cumulative" carries it), `frames="first"` (its UperNet2D reads frame 0 only and
    returns [B, 1, classes, H, W]), `size` (resize to a fixed (H, W) in 2d or (T, H, W)
    in 3d, its configured size, instead of the output's), `reads="output"` (the
    backbone's output as the only feature, which is what its heads get)."""

    def __init__(
        self,
        feature_channels: Sequence[int],
        classes: int,
        *,
        hidden: int | None = None,
        bins: Sequence[int] = (1, 2, 4, 6),
        mode: str = "2d",
        dropout: float = 0.1,
        bottleneck_padding: int = 0,
        shared_smooth: bool = False,
        top_down: str = "pairwise",
        frames: str = "all",
        size: Sequence[int] | None = None,
        reads: str = "features",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.feature_channels = _channel_list(feature_channels, "feature_channels", name)
        self.classes = _positive(classes, "classes", name)
        self.hidden = (
            self.feature_channels[0] if hidden is None else _positive(hidden, "hidden", name)
        )
        if isinstance(bins, (str, bytes)) or not isinstance(bins, Sequence) or not bins:
            raise SpecError(
                f"must be a non-empty list of pooling sizes, got {bins!r} ({name})", "bins"
            )
        self.bins = tuple(_positive(b, f"bins[{i}]", name) for i, b in enumerate(bins))
        deepest = self.feature_channels[-1]
        if deepest < len(self.bins):
            raise SpecError(
                f"the deepest feature's {deepest} channels cannot be split among "
                f"{len(self.bins)} pooling branches ({name}); use at most {deepest} bins",
                "bins",
            )
        if not 0 <= dropout < 1:
            raise SpecError(f"must be in [0, 1), got {dropout!r} ({name})", "dropout")
        self.mode = _mode(mode, name)
        if bottleneck_padding not in (0, 1):
            raise SpecError(f"must be 0 or 1, got {bottleneck_padding!r} ({name})",
                            "bottleneck_padding")  # fmt: skip
        if top_down not in ("pairwise", "cumulative"):
            raise SpecError(f"must be 'pairwise' or 'cumulative', got {top_down!r} ({name})",
                            "top_down")  # fmt: skip
        if frames not in ("all", "first") or (frames == "first" and self.mode == "3d"):
            raise SpecError(
                f"must be 'all' or (in mode 2d) 'first', got {frames!r} with mode "
                f"{self.mode!r} ({name})",
                "frames",
            )
        self.frames = frames
        if reads not in ("features", "output"):
            raise SpecError(f"must be 'features' or 'output', got {reads!r} ({name})", "reads")
        self.reads = reads
        dims = 2 if self.mode == "2d" else 3
        if size is not None:
            if (
                isinstance(size, (str, bytes))
                or not isinstance(size, Sequence)
                or len(size) != dims
            ):
                raise SpecError(
                    f"must be {'[H, W]' if dims == 2 else '[T, H, W]'} in mode {self.mode}, "
                    f"got {size!r} ({name})",
                    "size",
                )
            size = tuple(_positive(v, f"size[{i}]", name) for i, v in enumerate(size))
        self.size = size
        self.layout = _Layout(self.mode)
        self.psp = _PSP(self.layout, deepest, self.bins, dropout, bottleneck_padding)
        self.fpn = _FPN(self.layout, self.feature_channels, self.hidden, top_down=top_down,
                        shared_smooth=shared_smooth)  # fmt: skip
        self.head = self.layout.conv(self.hidden, classes, 3, bias=True)

    def forward(self, x: Tensor, output: Tensor, features: list[Tensor]) -> Tensor:
        if self.reads == "output":
            features = [output]
        _check_features(self, features)
        batch = output.shape[0]
        if self.layout.dims == 2 and any(f.shape[1] != output.shape[1] for f in features):
            raise STCNNTError(
                "UperNetHead(mode='2d') works per frame and needs every feature to keep "
                "the output's T; use mode='3d'"
            )
        samples = batch * (output.shape[1] if self.layout.dims == 2 else 1)
        if self.training and samples == 1 and 1 in self.bins:
            raise STCNNTError(
                "UperNetHead: the batch norm after the 1x1 pooling bin needs more than one "
                "sample per batch in training; use batch > 1, drop bin 1, or call .eval()"
            )
        if self.frames == "first":
            features = [f[:, :1] for f in features]
            output = output[:, :1]
        work = [self.layout.enter(f) for f in features]
        work[-1] = self.psp(work[-1])
        y = self.head(self.fpn(work))
        y = _resize(y, self.size or self.layout.size(output), self.layout.interp, False)
        return self.layout.leave(y, batch)


# --------------------------------------------------------------------------- UNETR


class _ResBlock(nn.Module):
    """UNETR's residual unit (MONAI `UnetResBlock`): conv k (no bias), instance norm,
    LeakyReLU(0.01), conv k, instance norm, plus a 1x1 conv + norm shortcut when the
    channels change; summed, LeakyReLU."""

    def __init__(self, layout: _Layout, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = layout.conv(c_in, c_out, kernel, bias=False)
        self.norm1 = layout.instance_norm(c_out)
        self.conv2 = layout.conv(c_out, c_out, kernel, bias=False)
        self.norm2 = layout.instance_norm(c_out)
        self.act = nn.LeakyReLU(0.01)
        if c_in != c_out:
            self.conv3 = layout.conv(c_in, c_out, 1, bias=False)
            self.norm3 = layout.instance_norm(c_out)
        else:
            self.conv3 = self.norm3 = None

    def forward(self, x: Tensor) -> Tensor:
        if self.training and math.prod(x.shape[2:]) == 1:
            raise STCNNTError(
                "UNETRHead: instance norm needs more than one position per map in training, "
                f"got a map of size {tuple(x.shape[2:])}; use larger inputs or fewer levels"
            )
        y = self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))
        shortcut = x if self.conv3 is None else self.norm3(self.conv3(x))
        return self.act(y + shortcut)


def _up(layout: _Layout, c_in: int, c_out: int, factor: int) -> nn.Module:
    """Transposed conv with kernel = stride = factor in space (1 in time), no bias."""
    if layout.dims == 2:
        return nn.ConvTranspose2d(c_in, c_out, factor, stride=factor, bias=False)
    k = (1, factor, factor)
    return nn.ConvTranspose3d(c_in, c_out, k, stride=k, bias=False)


class UNETRHead(nn.Module):
    """A UNETR-style decoder over the backbone's features, coarsest first: at each level,
    upsample (transposed conv, `ups.i`: level i+1 -> level i), concatenate with feature i,
    residual conv block (`blocks.i`: 2·C_i -> C_i); then, with `in_channels`, the input
    joins as the full-resolution skip (`stem` encodes it, `up_input` / `block_input` merge
    it); a 1x1 conv with bias (`out`) gives [B, T, out_channels, H, W].

    `reductions` (default 1, 2, 4, ...) are the features' downsampling factors; each must
    divide the next. `mode="2d"`: per frame; `"3d"`: kernels k x k x k over (T, H, W) with
    instance norm over (T, H, W), upsampling in space only (as the reference UNETR3D).
    Without `in_channels` the finest feature must be at full resolution.

    Reference (MONAI blocks, 5 Swin features) to ours, by role: `decoder5..decoder2` ->
    `ups.3..0` / `blocks.3..0` (`transp_conv.conv` -> `ups.i`, `conv_block.convj.conv` ->
    `blocks.i.convj`), `encoder1` -> `stem`, `decoder1` -> `up_input` / `block_input`,
    `out.conv.conv` -> `out`. The reference's extra skip encoders (`encoder2/3/4/10`) have
    no counterpart: skips enter as the backbone gives them."""

    def __init__(
        self,
        feature_channels: Sequence[int],
        out_channels: int,
        *,
        reductions: Sequence[int] | None = None,
        in_channels: int | None = None,
        mode: str = "2d",
        kernel_size: int = 3,
        residual: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        channels = _channel_list(feature_channels, "feature_channels", name)
        self.feature_channels = channels
        self.out_channels = _positive(out_channels, "out_channels", name)
        if reductions is None:
            reductions = [2**i for i in range(len(channels))]
        reductions = _channel_list(reductions, "reductions", name)
        if len(reductions) != len(channels):
            raise SpecError(
                f"has {len(reductions)} entries for {len(channels)} features ({name})",
                "reductions",
            )
        for i in range(len(channels) - 1):
            if reductions[i + 1] % reductions[i]:
                raise SpecError(
                    f"{reductions[i + 1]} is not a multiple of the finer level's "
                    f"{reductions[i]} ({name}); each feature must be an integer factor "
                    "coarser than the one before",
                    f"reductions[{i + 1}]",
                )
        self.reductions = reductions
        self.in_channels = (
            None if in_channels is None else _positive(in_channels, "in_channels", name)
        )
        if reductions[0] != 1 and in_channels is None:
            raise SpecError(
                f"the finest feature is at 1/{reductions[0]} resolution, so the decoder "
                f"needs the input as its full-resolution skip: pass in_channels ({name})",
                "in_channels",
            )
        k = _positive(kernel_size, "kernel_size", name)
        if k % 2 == 0:
            raise SpecError(f"must be odd to keep the size, got {k} ({name})", "kernel_size")
        self.mode = _mode(mode, name)
        self.layout = layout = _Layout(self.mode)
        self.residual = bool(residual)
        n = len(channels)
        self.ups = nn.ModuleList(
            _up(layout, channels[i + 1], channels[i], reductions[i + 1] // reductions[i])
            for i in range(n - 1)
        )
        self.blocks = nn.ModuleList(
            _ResBlock(layout, 2 * channels[i], channels[i], k) for i in range(n - 1)
        )
        if in_channels is not None:
            self.stem = _ResBlock(layout, in_channels, channels[0], k)
            self.up_input = _up(layout, channels[0], channels[0], reductions[0])
            self.block_input = _ResBlock(layout, 2 * channels[0], channels[0], k)
        else:
            self.stem = self.up_input = self.block_input = None
        self.out = layout.conv(channels[0], out_channels, 1, bias=True)

    def _merge(self, level: str, up: Tensor, skip: Tensor, block: nn.Module) -> Tensor:
        if up.shape[2:] != skip.shape[2:]:
            raise STCNNTError(
                f"UNETRHead: upsampling to {level} gives size {tuple(up.shape[2:])} but the "
                f"skip there is {tuple(skip.shape[2:])}; check the head's reductions "
                f"{self.reductions} against the backbone's feature_info"
            )
        return block(torch.cat((up, skip), dim=1))

    def forward(self, x: Tensor, output: Tensor, features: list[Tensor]) -> Tensor:
        _check_features(self, features)
        batch = x.shape[0]
        enter = self.layout.enter
        y = enter(features[-1])
        for i in reversed(range(len(self.ups))):
            y = self._merge(f"feature {i}", self.ups[i](y), enter(features[i]), self.blocks[i])
        if self.stem is not None:
            if x.shape[2] != self.in_channels:
                raise STCNNTError(
                    f"UNETRHead was built for in_channels={self.in_channels} but the input "
                    f"has {x.shape[2]} channels"
                )
            y = self._merge("the input", self.up_input(y), self.stem(enter(x)), self.block_input)
        y = self.layout.leave(self.out(y), batch)
        return _add_residual(self, x, y) if self.residual else y
