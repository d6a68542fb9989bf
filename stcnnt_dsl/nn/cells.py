"""Cells: one attention (or convolution) with its norm, residual and optional mixer.

Every cell maps [B, T, C_in, H, W] -> [B, T, C_out, H, W].

Sequential attention cell (pre-norm transformer):
    y = proj(x) + drop_path(att(norm1(x)))
    y = y + drop_path(mixer(norm2(y)))                      (with mixer)
Parallel attention cell (ViT-22B):
    h = norm1(x);  y = proj(x) + drop_path(att(h)) + drop_path(mixer(h))
Conv cell (C2: 3x3 conv over H, W; C3: 3x3x3 conv over T, H, W), as the reference:
    h = norm1(x);  y = proj(x) + drop_path(act(norm2(conv(h))) [+ h when C_in == C_out])
`proj` is the identity when C_in == C_out, else a convolution with bias
(`proj_kernel`, 1 by default).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..registry import CONV3D, TEMPORAL
from . import lean
from .activations import make_activation, onednn_unary
from .attention import SpatialAttention, TemporalAttention
from .functional import can_fuse, fused_conv2d
from .norms import Norm5d

__all__ = ["AttentionCell", "ConvCell", "DropPath", "Mixer", "make_activation"]


def frames(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2D module to every frame of [B, T, C, H, W]."""
    return module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def conv2d(cin: int, cout: int, kernel: int, padding: str, *, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, padding_mode=padding, bias=bias)


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a whole sample (all its frames)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mixer(nn.Sequential):
    """Conv MLP over (C, H, W): conv(k) -> activation -> conv(k) [-> dropout]."""

    def __init__(
        self, cin: int, cout: int, *, hidden: int, kernel: int, activation: str,
        dropout: float, padding: str,
    ) -> None:  # fmt: skip
        layers = [
            conv2d(cin, hidden, kernel, padding, bias=True),
            make_activation(activation),
            conv2d(hidden, cout, kernel, padding, bias=True),
        ]
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self._unary = onednn_unary(activation)

    def forward(self, x: Tensor) -> Tensor:
        f = lean.mixer(self[0], self[1], self[2], x.flatten(0, 1))
        if len(self) > 3:
            f = self[3](f)
        return f.unflatten(0, x.shape[:2])

    def can_fuse(self, x: Tensor) -> bool:
        """Whether `add_into` may run (eval mode, see `functional.can_fuse`)."""
        return not self.training and can_fuse(self[0], x) and can_fuse(self[2], x)

    def add_into(self, y: Tensor, x: Tensor) -> Tensor:
        """y + mixer(x) with the activation and the sum fused into the convolutions;
        overwrites `y` (eval-mode inference only: see `can_fuse`)."""
        f = x.flatten(0, 1)
        unary = self._unary
        act = self[1]
        if isinstance(act, nn.PReLU) and act.num_parameters == 1:  # PReLU = leaky ReLU
            unary = ("leaky_relu", [float(act.weight)], None)
        if unary is not None:
            f = fused_conv2d(self[0], f, unary=unary)
        else:
            f = self[1](self[0](f))
        out = fused_conv2d(self[2], f, add=y.flatten(0, 1), add_inplace=True)
        return out.unflatten(0, y.shape[:2])


class _Residual(nn.Module):
    """Shared parts of all cells: the residual projection and stochastic depth."""

    def _init_residual(
        self, kind: str, in_channels: int, out_channels: int, *, proj_kernel: int,
        padding: str, drop_path: float,
    ) -> None:  # fmt: skip
        self.kind = kind
        self.in_channels, self.out_channels = in_channels, out_channels
        self.proj = (
            conv2d(in_channels, out_channels, proj_kernel, padding, bias=True)
            if in_channels != out_channels
            else None
        )
        self.drop_path = DropPath(drop_path)

    def residual(self, x: Tensor) -> Tensor:
        if self.proj is None:
            return x
        return lean.conv2d(self.proj, x.flatten(0, 1)).unflatten(0, x.shape[:2])


class AttentionCell(_Residual):
    """Norm + L/G/T/V attention + optional conv mixer, sequential or parallel.

    Built from resolved sizes, as a plain layer: `kind` is `local`, `global`, `vit` or
    `temporal`; the keywords are the language's options (`stcnnt_dsl.language.options`)
    with their values, plus what the model graph resolves: `heads` (a number),
    `hidden` (the mixer's hidden channels; 0: no mixer), `parallel`, and for spatial
    kinds `window`, `patch`, `grid` (pixels; `grid` fixes the number of windows and
    leaves `window` None) and `bias_extent` (the relative-position table's extent).
    `stcnnt_dsl.models.cells` translates a graph's cell geometry into these."""

    def __init__(
        self, kind: str, in_channels: int, out_channels: int, *, heads: int, norm: str,
        activation: str, drop_path: float, padding: str, proj_kernel: int, qkv: str,
        qkv_kernel: int, cosine: bool, qk_norm: bool, att_dropout: float, out_proj: bool,
        hidden: int, parallel: bool, mixer_kernel: int, dropout: float,
        input_size: tuple[int, int] | None = None, causal: bool = False, qk_stride: int = 1,
        window: tuple[int, int] | None = None, patch: tuple[int, int] | None = None,
        grid: tuple[int, int] | None = None, bias_extent: tuple[int, int] | None = None,
        rel_pos_bias: bool | str = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self._init_residual(kind, in_channels, out_channels, proj_kernel=proj_kernel,
                            padding=padding, drop_path=drop_path)  # fmt: skip
        cin, cout = in_channels, out_channels
        self.parallel = bool(hidden) and parallel
        self.norm1 = Norm5d(norm, cin, input_size)
        common = dict(
            heads=heads, qkv_kernel=qkv_kernel, cosine=cosine, qk_norm=qk_norm,
            att_dropout=att_dropout, out_proj=out_proj, padding=padding,
        )  # fmt: skip
        if kind == TEMPORAL:
            self.attn: nn.Module = TemporalAttention(
                cin, cout, causal=causal, qk_stride=qk_stride, **common
            )
        else:
            self.attn = SpatialAttention(
                kind, cin, cout, window=window, patch=patch, grid=grid,
                bias_extent=bias_extent, bias_after_softmax=rel_pos_bias == "after_softmax",
                qkv=qkv, **common,
            )  # fmt: skip
        self.mixer: Mixer | None = None
        self.norm2: Norm5d | None = None
        if hidden:
            mixer_in = cin if self.parallel else cout
            if not self.parallel:
                self.norm2 = Norm5d(norm, cout, input_size)
            self.mixer = Mixer(
                mixer_in, cout, hidden=hidden, kernel=mixer_kernel, activation=activation,
                dropout=dropout, padding=padding,
            )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        proj = self.attn.proj
        if not self.training and proj is not None and can_fuse(proj, h):
            y = self.attn(h, add=self.residual(x))  # proj(att) + residual in one conv
        else:
            # branch first: the sum takes its layout (channels-last), even where the
            # residual is a conv of a 1-channel input, whose layout is ambiguous
            y = self.drop_path(self.attn(h)) + self.residual(x)
        if self.mixer is None:
            return y
        mixer_in = h if self.parallel else self.norm2(y)
        if self.mixer.can_fuse(mixer_in):
            return self.mixer.add_into(y, mixer_in)
        return y + self.drop_path(self.mixer(mixer_in))


class ConvCell(_Residual):
    """C2 (3x3 conv over H, W) or C3 (3x3x3 conv over T, H, W) cell: `kind` is `conv2d`
    or `conv3d`; the keywords are the options every cell reads."""

    def __init__(
        self, kind: str, in_channels: int, out_channels: int, *, norm: str, activation: str,
        drop_path: float, padding: str, proj_kernel: int,
        input_size: tuple[int, int] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self._init_residual(kind, in_channels, out_channels, proj_kernel=proj_kernel,
                            padding=padding, drop_path=drop_path)  # fmt: skip
        cin, cout = in_channels, out_channels
        self.norm1 = Norm5d(norm, cin, input_size)
        conv_type = nn.Conv3d if kind == CONV3D else nn.Conv2d
        self.conv = conv_type(cin, cout, 3, padding=1, padding_mode=padding, bias=False)
        self.norm2 = Norm5d(norm, cout, input_size)
        self.act = make_activation(activation)

    def _conv(self, x: Tensor) -> Tensor:
        if self.kind == CONV3D:  # [B, T, C, H, W] -> [B, C, T, H, W] and back
            return self.conv(x.transpose(1, 2)).transpose(1, 2)
        return lean.conv2d(self.conv, x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        branch = self.act(self.norm2(self._conv(h)))
        if self.proj is None:
            branch = branch + h
        return self.drop_path(branch) + self.residual(x)
