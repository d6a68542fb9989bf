"""The convolution unit of the mixed U-Netr (the reference's `_encoder_on_skip_connection`
and `_decoder_conv`): the skip encoders and the decoder levels are convolutions, not
ST-CNNT blocks.

    y = act2(norm2(conv2(act1(norm1(conv1(x))))) [+ x])

Convolutions are 3x3x3 over (T, H, W) (`temporal=True`) or 3x3 per frame, without bias;
the residual is added only where it is asked for and the channels agree (as the
reference). Tensors are [B, T, C, H, W].
"""

from __future__ import annotations

from torch import Tensor, nn

from . import lean
from .activations import make_activation
from .norms import Norm5d

__all__ = ["ConvUnit"]


class ConvUnit(nn.Module):
    """conv, norm, act, conv, norm, (+ input), act; see the module docstring."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        residual: bool = False,
        temporal: bool = True,
        norm: str = "instance2d",
        activation: str = "prelu",
        padding: str = "reflect",
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.temporal = temporal
        self.residual = residual and in_channels == out_channels
        conv = nn.Conv3d if temporal else nn.Conv2d
        options = {"padding": 1, "padding_mode": padding, "bias": False}
        self.conv1 = conv(in_channels, out_channels, 3, **options)
        self.norm1 = Norm5d(norm, out_channels, input_size)
        self.act1 = make_activation(activation)
        self.conv2 = conv(
            out_channels, out_channels, 3, padding=1, padding_mode=padding, bias=False
        )
        self.norm2 = Norm5d(norm, out_channels, input_size)
        self.act2 = make_activation(activation)

    def _conv(self, conv: nn.Module, x: Tensor) -> Tensor:
        if self.temporal:  # [B, T, C, H, W] -> [B, C, T, H, W] and back
            return conv(x.transpose(1, 2)).transpose(1, 2)
        return lean.conv2d(conv, x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.norm1(self._conv(self.conv1, x)))
        y = self.norm2(self._conv(self.conv2, y))
        if self.residual:
            y = y + x
        return self.act2(y)
