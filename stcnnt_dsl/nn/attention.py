"""The ST-CNNT attentions: local (L), global (G), ViT-style (V) and temporal (T).

All map [B, T, C_in, H, W] -> [B, T, C_out, H, W].

- L: tokens are the patches of one window; attention runs within each window.
- G: tokens are the patches at the same in-window position in every window: a strided
  grid over the whole image whose spacing is the window size (MaxViT "grid").
- V: tokens are whole windows; attention runs across all windows of a frame.
- T: tokens are whole frames [C, H, W]; a T x T attention per head (heads are groups
  of channels).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import ShapeError
from ..registry import LOCAL
from . import lean
from .functional import (
    LONG_SEQUENCE_CHUNK,
    attend,
    bypassable,
    frame_tokens,
    frames_from_tokens,
    fused_conv2d,
    is_exporting,
    partition,
    partition_qkv,
    relative_position_index,
    unpartition_heads,
)
from .layout import frames_channels_last
from .tuning import choices

__all__ = ["SpatialAttention", "TemporalAttention"]

Pair = tuple[int, int]


def _conv(cin: int, cout: int, kernel: int, padding_mode: str, *, bias: bool, stride: int = 1):
    return nn.Conv2d(
        cin, cout, kernel, stride=stride, padding=kernel // 2, padding_mode=padding_mode, bias=bias
    )


def _separate_qkv(qkv: nn.Module, x: Tensor) -> bool:
    """Whether to run the C -> 3C Q/K/V convolution as three C -> C ones: where measured
    faster on this machine (`tuning`), and always in exports. In ONNX Runtime the three
    outputs go straight into their partitions, where one output would be split by a
    copy (`Split`) after a transpose it cannot fold into the convolution's output
    reorder: the bundled U-Net's forward at 1x16x1x128x128 took 4549 ms against 4692
    (fastest of 4 interleaved runs, 2 threads, AMD EPYC)."""
    if not bypassable(qkv):
        return False
    return is_exporting() or choices(x.device).qkv == "separate"


@functools.lru_cache(maxsize=64)
def _cached_index(grid: tuple[int, int], extent: tuple[int, int], device: torch.device) -> Tensor:
    # A normal tensor even when first asked for under torch.inference_mode(): the
    # backward of the bias gather keeps the index.
    with torch.inference_mode(False):
        return relative_position_index(grid, extent, device=device)


def _project(proj: nn.Conv2d | None, y: Tensor, add: Tensor | None) -> Tensor:
    """proj(y) [+ add], [N, C, H, W]; the sum fused into the convolution when given."""
    if add is None:
        return y if proj is None else lean.conv2d(proj, y)
    add = add.flatten(0, 1)
    if proj is None:
        return y + add
    return fused_conv2d(proj, y, add=add)


class SpatialAttention(nn.Module):
    """Local (L), global (G) or ViT-style (V) attention over windows and patches.

    Every size is resolved by the caller (`stcnnt_dsl.graph.geometry.SpatialGeometry`
    holds the rules: heads, window or grid, patch, bias table extent): `window` and
    `patch` in pixels, or a `grid` of windows (G, V) whose size follows the input; V has
    no patch (a token is a whole window); `bias_extent` sizes the relative position
    table (None: no bias).
    """

    def __init__(
        self,
        kind: str,
        in_channels: int,
        out_channels: int,
        *,
        heads: int,
        window: Pair | None,
        patch: Pair | None,
        grid: Pair | None,
        bias_extent: Pair | None,
        bias_after_softmax: bool,
        qkv: str,
        qkv_kernel: int,
        cosine: bool,
        qk_norm: bool,
        att_dropout: float,
        out_proj: bool,
        padding: str,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.mode = "local" if kind == LOCAL else "global"
        self.out_channels = out_channels
        self.heads = heads
        self.grid, self.window, self.patch = grid, window, patch
        patch_px = patch or window  # None only for V with a grid
        self.qkv_mode = qkv
        if qkv == "conv":
            self.qkv = _conv(in_channels, 3 * out_channels, qkv_kernel, padding, bias=False)
        else:
            cin_token = in_channels * patch_px[0] * patch_px[1]
            self.qkv = nn.Linear(
                cin_token, 3 * out_channels * patch_px[0] * patch_px[1], bias=False
            )
        self.cosine, self.qk_norm, self.att_dropout = cosine, qk_norm, att_dropout
        self.bias_after_softmax = bias_after_softmax
        self.rel_pos_bias = bias_extent is not None
        self.bias_table: nn.Parameter | None = None
        self.bias_extent = bias_extent
        if bias_extent is not None:
            eh, ew = bias_extent
            table = torch.zeros((2 * eh - 1) * (2 * ew - 1), heads)
            self.bias_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))
        # Where the token grid does not depend on the input (L; G and V with `grid`) its
        # index is a buffer: no work per forward, and a constant that torch.compile can
        # fold (with freezing, the whole bias becomes a constant).
        fixed = self._fixed_token_grid()
        index = None
        if bias_extent is not None and fixed is not None:
            index = relative_position_index(fixed, bias_extent)
        self.register_buffer("bias_index", index, persistent=False)
        self.proj = _conv(out_channels, out_channels, 3, padding, bias=True) if out_proj else None

    def geometry(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(window, patch) in pixels for an h x w input."""
        if self.window is not None:
            return self.window, self.patch or self.window
        gh, gw = self.grid
        if h % gh or w % gw:  # the Block checks first; this guards direct use
            raise ShapeError(
                f"{self.kind} attention: grid {gh}x{gw} must divide H={h} and W={w}",
                rule=f"grid {gh}x{gw} divides H and W",
            )
        window = (h // gh, w // gw)
        return window, self.patch or window

    def extra_repr(self) -> str:
        bias = "after_softmax" if self.bias_after_softmax else self.rel_pos_bias
        size = f"grid={self.grid}" if self.grid else f"window={self.window}"
        return (
            f"{self.kind}, {size}, patch={self.patch}, heads={self.heads}, "
            f"qkv={self.qkv_mode}, cosine={self.cosine}, qk_norm={self.qk_norm}, "
            f"rel_pos_bias={bias}"
        )

    def _fixed_token_grid(self) -> tuple[int, int] | None:
        if self.mode == "local":
            (wh, ww), (ph, pw) = self.window, self.patch
            return (wh // ph, ww // pw)
        return self.grid

    def _token_grid(self, h: int, w: int) -> tuple[int, int]:
        """The grid tokens sit on: patches in a window (L) or windows (G, V)."""
        (wh, ww), (ph, pw) = self.geometry(h, w)
        return (wh // ph, ww // pw) if self.mode == "local" else (h // wh, w // ww)

    def _bias(self, h: int, w: int, device: torch.device) -> Tensor | None:
        if self.bias_table is None:
            return None
        grid = self._token_grid(h, w)
        if self.bias_index is not None:
            index = self.bias_index
        elif torch.compiler.is_compiling():
            index = relative_position_index(grid, self.bias_extent, device=device)
        else:
            index = _cached_index(grid, self.bias_extent, device)
        n = grid[0] * grid[1]
        # contiguous [heads, S, S]: the layout of the scores it is added to (a permuted
        # view made inductor order its softmax loops by head, 10x slower on CPU)
        return self.bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()

    def _bias_rows(self, grid: tuple[int, int], start: int, stop: int, device) -> Tensor:
        """Rows start..stop-1 of the [heads, S, S] bias, without building the rest."""
        index = relative_position_index(grid, self.bias_extent, (start, stop), device)
        rows = self.bias_table[index.view(-1)].view(stop - start, index.shape[1], -1)
        return rows.permute(2, 0, 1).contiguous()

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, h: int, w: int) -> Tensor:
        options = dict(
            cosine=self.cosine,
            qk_norm=self.qk_norm,
            bias_after_softmax=self.bias_after_softmax,
            dropout=self.att_dropout if self.training else 0.0,
        )
        s = q.shape[-2]
        # (export: one graph for every size, so no chunks, whose number follows S)
        if is_exporting() or self.bias_table is None or s <= LONG_SEQUENCE_CHUNK:
            return attend(q, k, v, bias=self._bias(h, w, q.device), **options)
        # Long sequence with a bias: query chunks, each with its rows of the bias.
        grid = self._token_grid(h, w)
        parts = []
        for start in range(0, s, LONG_SEQUENCE_CHUNK):
            stop = min(s, start + LONG_SEQUENCE_CHUNK)
            bias = self._bias_rows(grid, start, stop, q.device)
            parts.append(attend(q[:, :, start:stop], k, v, bias=bias, **options))
        return torch.cat(parts, dim=2)

    def forward(self, x: Tensor, add: Tensor | None = None) -> Tensor:
        """Attention of [B, T, C_in, H, W]; with `add` (same shape as the output, eval-mode
        CPU inference only: see `functional.can_fuse`) returns output + add, the sum
        fused into the output projection."""
        b, t, _, h, w = x.shape
        channels_last = frames_channels_last(x)
        x = x.flatten(0, 1)
        c = self.out_channels
        window, patch = self.geometry(h, w)

        def qkv(x: Tensor) -> tuple[Tensor, ...]:  # q, k, v: [Nb, heads, S, d] each
            if self.qkv_mode == "conv" and _separate_qkv(self.qkv, x):
                weight = self.qkv.weight
                return tuple(
                    partition_qkv(
                        lean.conv2d(self.qkv, x, weight[i * c : (i + 1) * c]),
                        window, patch, self.mode, self.heads,
                    )[0]
                    for i in range(3)
                )  # fmt: skip
            if self.qkv_mode == "conv":
                stacked = lean.conv2d(self.qkv, x).unflatten(1, (3, c))  # [N, 3, C, H, W]
                # one copy: q, k, v as contiguous [Nb, heads, S, d]
                return partition_qkv(stacked, window, patch, self.mode, self.heads)
            tokens = self.qkv(partition(x, window, patch, self.mode))  # [Nb, S, 3D]
            tokens = tokens.unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
            return tokens.contiguous().unbind(0)

        def core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            out = self._attend(q, k, v, h, w)
            return unpartition_heads(out, (h, w), window, patch, self.mode, channels_last)

        table = () if self.bias_table is None else (self.bias_table,)
        return _attention(self, qkv, core, x, add, [self.qkv], table).unflatten(0, (b, t))


def _attention(
    attn: nn.Module,
    qkv: Callable[[Tensor], Sequence[Tensor]],
    core: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    add: Tensor | None,
    qkv_layers: Sequence[nn.Module],
    params: Sequence[Tensor] = (),
) -> Tensor:
    """proj(core(*qkv(x))) [+ add], [N, C, H, W]: in training, lean where it can be
    (`lean.attention` recomputes q, k and v where their layers are plain convolutions,
    `lean.attend_project` keeps them otherwise; neither with attention dropout)."""
    if add is not None or (attn.training and attn.att_dropout):
        return _project(attn.proj, core(*qkv(x)), add)
    if attn.proj is not None and bypassable(*qkv_layers):
        weights = [layer.weight for layer in qkv_layers]
        return lean.attention(qkv, core, attn.proj, x, [*weights, *params])
    return lean.attend_project(core, attn.proj, *qkv(x), params)


class TemporalAttention(nn.Module):
    """Attention across frames: each [C, H, W] frame is one token (per head: a group of
    C/heads channels over all pixels), giving a T x T attention per head."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        heads: int,
        qkv_kernel: int,
        cosine: bool,
        qk_norm: bool,
        att_dropout: float,
        causal: bool,
        qk_stride: int,
        out_proj: bool,
        padding: str,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.heads = heads
        self.stride = qk_stride
        if qk_stride == 1:
            self.qkv = _conv(in_channels, 3 * out_channels, qkv_kernel, padding, bias=False)
        else:
            self.qk = _conv(
                in_channels, 2 * out_channels, qkv_kernel, padding, bias=False, stride=qk_stride
            )
            self.v = _conv(in_channels, out_channels, qkv_kernel, padding, bias=False)
        self.cosine, self.qk_norm, self.causal = cosine, qk_norm, causal
        self.att_dropout = att_dropout
        self.proj = _conv(out_channels, out_channels, 3, padding, bias=True) if out_proj else None

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, causal={self.causal}, qk_stride={self.stride}, "
            f"cosine={self.cosine}, qk_norm={self.qk_norm}"
        )

    def forward(self, x: Tensor, add: Tensor | None = None) -> Tensor:
        """Attention of [B, T, C_in, H, W]; `add` as in `SpatialAttention.forward`."""
        b, t, _, h, w = x.shape
        cl = frames_channels_last(x)
        x = x.flatten(0, 1)
        c = self.out_channels
        layers = [self.qkv] if self.stride == 1 else [self.qk, self.v]

        def qkv(x: Tensor) -> tuple[Tensor, ...]:  # q, k, v: [B, heads, T, features]
            if self.stride == 1 and _separate_qkv(self.qkv, x):
                weight = self.qkv.weight
                return tuple(
                    frame_tokens(lean.conv2d(self.qkv, x, weight[i * c : (i + 1) * c]), b, 1,
                                 self.heads, cl)[0]
                    for i in range(3)
                )  # fmt: skip
            if self.stride == 1:
                return frame_tokens(lean.conv2d(self.qkv, x), b, 3, self.heads, cl)
            q, k = frame_tokens(lean.conv2d(self.qk, x), b, 2, self.heads, cl)
            (v,) = frame_tokens(lean.conv2d(self.v, x), b, 1, self.heads, cl)
            return q, k, v

        def core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            out = attend(
                q, k, v,
                cosine=self.cosine,
                qk_norm=self.qk_norm,
                causal=self.causal,
                dropout=self.att_dropout if self.training else 0.0,
            )  # fmt: skip
            return frames_from_tokens(out, b, (h, w), cl)  # [B*T, C, H, W], one copy

        return _attention(self, qkv, core, x, add, layers).unflatten(0, (b, t))
