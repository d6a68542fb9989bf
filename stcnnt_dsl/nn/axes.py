"""The order of a tensor's axes at a model's boundary (`build(..., layout=...)`).

Inside, everything is [B, T, C, H, W]. Other libraries order the same data differently:
the reference implementation and torchvision's video models use [B, C, T, H, W], 2D
pipelines [B, C, H, W], MONAI's 3D ones [B, C, H, W, D] with the slices last. A model
built with one of those layouts takes and returns it; the permutations are views.
"""

from __future__ import annotations

from torch import Tensor

from ..errors import ShapeError, SpecError, did_you_mean

__all__ = ["LAYOUTS", "check_layout", "from_btchw", "to_btchw"]

LAYOUTS = {
    "BTCHW": "[B, T, C, H, W]: this library's own (T = frames, slices, or 1)",
    "BCTHW": "[B, C, T, H, W]: the reference implementation, torchvision video models",
    "BCHW": "[B, C, H, W]: 2D images (T = 1)",
    "BCHWD": "[B, C, H, W, D]: MONAI 3D volumes, the slices D last (T = D inside)",
}


def check_layout(layout: object) -> str:
    """The layout's name, or a `SpecError` with the choices."""
    if isinstance(layout, str) and layout.upper() in LAYOUTS:
        return layout.upper()
    hint = did_you_mean(str(layout).upper(), LAYOUTS) if isinstance(layout, str) else ""
    choices = "; ".join(f"{k} {v}" for k, v in LAYOUTS.items())
    raise SpecError(f"unknown layout {layout!r}{hint}; layouts: {choices}", "layout")


def _rank(x: object, layout: str, where: str) -> None:
    want = 4 if layout == "BCHW" else 5
    if isinstance(x, Tensor) and x.dim() != want:
        other = [k for k in LAYOUTS if (4 if k == "BCHW" else 5) == x.dim()]
        hint = f"; for a {x.dim()}-D input build with layout={other[0]!r}" if other else ""
        raise ShapeError(
            f"{where}: layout {layout} takes {LAYOUTS[layout].split(':')[0]} ({want}-D), got "
            f"{x.dim()}-D shape {tuple(x.shape)}{hint}",
            rule="input rank of the layout",
        )


def to_btchw(x: Tensor, layout: str, where: str = "model") -> Tensor:
    """The input in [B, T, C, H, W] (a view)."""
    if layout == "BTCHW":
        return x
    _rank(x, layout, where)
    if layout == "BCTHW":
        return x.transpose(1, 2)
    if layout == "BCHW":
        return x.unsqueeze(1)
    return x.permute(0, 4, 1, 2, 3)  # BCHWD: [B, C, H, W, D] -> [B, D, C, H, W]


def from_btchw(y: Tensor, layout: str) -> Tensor:
    """A [B, T, C, H, W] result in the layout (a view); other ranks (a classification
    [B, classes]) pass unchanged."""
    if layout == "BTCHW" or y.dim() != 5:
        return y
    if layout == "BCTHW":
        return y.transpose(1, 2)
    if layout == "BCHW":
        return y.squeeze(1) if y.shape[1] == 1 else y.flatten(1, 2)
    return y.permute(0, 2, 3, 4, 1)  # BCHWD
