"""A cell kind: a ConvNeXt-style depthwise-separable mixer under the letter N.

`N1`: norm, 7x7 depthwise conv, 1x1 conv to mixer_ratio x channels, activation, 1x1
conv back (the ConvNeXt block); `N0`: norm, 7x7 depthwise conv, one 1x1 conv. Both add
the (projected) input. It reads the options every cell reads, and with digit 1
`mixer_ratio` and `activation`. This module is the geometry (parameters, FLOPs, saved
activations: no torch); `convnext_module` is the torch module."""

from __future__ import annotations

from dataclasses import dataclass

from stcnnt_dsl import CellKind
from stcnnt_dsl.graph.geometry import CellGeometry, component_params

__all__ = ["CELL", "ConvNeXtGeometry"]

KERNEL = 7


@dataclass(frozen=True)
class ConvNeXtGeometry(CellGeometry):
    family = "convnext"

    def conv_kernels(self) -> list[int]:
        return [*super().conv_kernels(), KERNEL]

    def reads(self) -> frozenset[str]:
        extra = {"mixer_ratio", "activation"} if self.mixer else set()
        return super().reads() | extra

    def params(self) -> dict[str, int]:
        cin, cout, hidden = self.in_channels, self.out_channels, self.hidden
        out = super().params()
        out["dw"] = cin * KERNEL * KERNEL + cin
        if self.mixer:
            out["pw1"] = cin * hidden + hidden
            out["act"] = component_params("activation", self.options.activation)
            out["pw2"] = hidden * cout + cout
        else:
            out["pw"] = cin * cout + cout
        return out

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        cin, cout, hidden, positions = self.in_channels, self.out_channels, self.hidden, t * h * w
        out = super().flops(t, h, w)
        out["dw"] = 2 * cin * KERNEL * KERNEL * positions
        if self.mixer:
            out["pw1"] = 2 * cin * hidden * positions
            out["pw2"] = 2 * hidden * cout * positions
        else:
            out["pw"] = 2 * cin * cout * positions
        return out

    def saved(self, frames: int, t: int, h: int, w: int) -> int:
        pixels = frames * h * w
        middle = (self.in_channels + 2 * self.hidden) if self.mixer else self.in_channels
        return super().saved(frames, t, h, w) + middle * pixels


CELL = CellKind(
    "convnext", "N",
    "ConvNeXt-style depthwise-separable mixer: 7x7 depthwise conv, then a pointwise MLP "
    "(N1) or one pointwise conv (N0) (plugin example)",
    ConvNeXtGeometry, "stcnnt_example_plugin.convnext_module:ConvNeXtCell",
    options=("mixer_ratio", "activation"), color="#cfe8f3",
)  # fmt: skip
