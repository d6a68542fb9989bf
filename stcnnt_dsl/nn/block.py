"""Block: a stack of cells built from a block string such as `L1G1T1`.

The one module of the layer library that reaches into the model graph: a block's text
is resolved by the same cascade and cell geometry as a stage of a backbone
(`stcnnt_dsl.graph.resolve.standalone_block`), so a standalone `Block` and a backbone
stage can never disagree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..graph.guard import guard_params
from ..graph.resolve import BlockPlan, standalone_block
from ..graph.rules import SizeRule, check_size
from ..language.blockspec import BlockSpec
from .cells import make_cell
from .checks import check_input_tensor
from .layout import frames_in_layout

__all__ = ["Block"]


class Block(nn.Module):
    """A stack of cells from a block string: `Block("L1G1T1", 16, 32, window=8)`.

    The first cell maps `in_channels` to `out_channels`, the others keep
    `out_channels`. Keyword options use the language's option names (see
    `stcnnt_dsl.language.options.OPTIONS`) and apply to every cell that reads them; an
    option no cell reads is an error. Options written inline in the block string
    (`L1[window=4]`) win over them.

    Input and output are [B, T, C, H, W]. The block keeps feature maps in channels-last
    storage (converted once on entry), which the convolutions and the window
    partitions both prefer; the logical shape is unchanged.
    """

    def __init__(
        self,
        text: str | BlockSpec,
        in_channels: int,
        out_channels: int,
        *,
        name: str = "Block",
        **options: Any,
    ) -> None:
        super().__init__()
        plan = standalone_block(text, in_channels, out_channels, options, name)
        guard_params(sum(plan.params().values()), name)
        self._build(plan, name)

    @classmethod
    def from_plan(cls, plan: BlockPlan, name: str | None = None) -> Block:
        """The block of a resolved plan (a stage of a model graph)."""
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        block._build(plan, name or plan.where)
        return block

    def _build(self, plan: BlockPlan, name: str) -> None:
        self.plan = plan
        self.spec = plan.block
        self.name = name
        self.in_channels, self.out_channels = plan.in_channels, plan.out_channels
        self.dense = plan.dense
        self.use_checkpoint = plan.checkpoint
        self.cells = nn.ModuleList(make_cell(cell.geometry) for cell in plan.cells)
        self._rules: list[tuple[str, SizeRule]] = plan.size_rules()
        self._checked: tuple[int, int, int] | None = None

    @property
    def cell_options(self) -> list[dict[str, Any]]:
        """Resolved option values of every cell."""
        return [{k: r.value for k, r in cell.options.items()} for cell in self.plan.cells]

    def extra_repr(self) -> str:
        return f"{self.spec}, {self.in_channels} -> {self.out_channels}, dense={self.dense}"

    @property
    def size_rule(self) -> SizeRule:
        """The (T, H, W) rule of the whole block (all cells' rules merged)."""
        rule = SizeRule()
        for _, r in self._rules:
            rule = rule.merge(r)
        return rule

    def check_input(self, x: Tensor) -> None:
        """Raise a `ShapeError` naming the first cell that cannot run on `x`."""
        check_input_tensor(x, self.in_channels, self.name, like=self._reference_parameter())
        t, h, w = x.shape[1], x.shape[3], x.shape[4]
        if self._checked == (t, h, w):
            return
        for where, rule in self._rules:
            check_size(rule, h, w, where=where, path=self.name, t=t)
        self._checked = (t, h, w)

    def _reference_parameter(self) -> Tensor | None:
        return next(self.parameters(), None)

    def _run(self, x: Tensor) -> Tensor:
        if not self.dense:
            for cell in self.cells:
                x = cell(x)
            return x
        # Dense: cell k takes the sum of the outputs of cells 0..k-1.
        total = x = self.cells[0](x)
        for k, cell in enumerate(self.cells[1:], start=1):
            x = cell(total)
            if k < len(self.cells) - 1:
                total = total + x
        return x

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling():
            self.check_input(x)
        x = frames_in_layout(x)
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._run, x, use_reentrant=False)
        return self._run(x)
