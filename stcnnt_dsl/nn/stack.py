"""CellStack: cells run in sequence (or densely connected) over [B, T, C, H, W].

The plain-layer half of a block: it takes built cell modules and knows nothing of block
strings. `stcnnt_dsl.nn.Block` (built in `stcnnt_dsl.models.block`) adds the block
string, its resolution by the model graph and the input check."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import SpecError
from .layout import frames_in_layout

__all__ = ["CellStack"]


class CellStack(nn.Module):
    """`cells` in order. `dense`: cell k takes the sum of the outputs of cells 0..k-1
    (the method's dense connections). `checkpoint`: recompute the cells' activations
    in backward instead of keeping them (training only). Feature maps are kept in the
    layout the cells prefer (`nn.layout.frames_in_layout`, converted once on entry)."""

    def __init__(self, cells: Iterable[nn.Module], *, dense: bool = False,
                 checkpoint: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.cells = nn.ModuleList(cells)
        if not len(self.cells):
            raise SpecError("a CellStack needs at least one cell", "cells")
        self.dense = dense
        self.use_checkpoint = checkpoint

    def _run(self, x: Tensor) -> Tensor:
        if not self.dense:
            for cell in self.cells:
                x = cell(x)
            return x
        total = x = self.cells[0](x)
        for k, cell in enumerate(self.cells[1:], start=1):
            x = cell(total)
            if k < len(self.cells) - 1:
                total = total + x
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = frames_in_layout(x)
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._run, x, use_reentrant=False)
        return self._run(x)
