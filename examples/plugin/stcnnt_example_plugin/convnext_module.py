"""The torch module of the N cell (see `convnext`), built from its geometry."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from stcnnt_dsl.nn import DropPath, make_activation
from stcnnt_dsl.nn.norms import Norm5d

from .convnext import KERNEL


class ConvNeXtCell(nn.Module):
    def __init__(self, geom: Any) -> None:
        super().__init__()
        o, cin, cout = geom.options, geom.in_channels, geom.out_channels
        self.norm1 = Norm5d(o.norm, cin, geom.input_size)
        self.dw = nn.Conv2d(cin, cin, KERNEL, padding=KERNEL // 2, groups=cin,
                            padding_mode=o.padding)  # fmt: skip
        if geom.mixer:
            self.pw1 = nn.Conv2d(cin, geom.hidden, 1)
            self.act = make_activation(o.activation)
            self.pw2 = nn.Conv2d(geom.hidden, cout, 1)
        else:
            self.pw = nn.Conv2d(cin, cout, 1)
        k = o.proj_kernel
        self.proj = (
            nn.Conv2d(cin, cout, k, padding=k // 2, padding_mode=o.padding)
            if geom.changes_channels
            else None
        )
        self.drop_path = DropPath(o.drop_path)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:2]
        y = self.dw(self.norm1(x).flatten(0, 1))
        y = self.pw2(self.act(self.pw1(y))) if hasattr(self, "pw1") else self.pw(y)
        residual = x if self.proj is None else self.proj(x.flatten(0, 1)).unflatten(0, lead)
        return self.drop_path(y.unflatten(0, lead)) + residual
