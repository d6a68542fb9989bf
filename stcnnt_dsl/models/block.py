"""Block: a stack of cells built from a block string such as `L1G1T1`.

Public as `stcnnt_dsl.nn.Block` (the layer library's one name that reads the
language). A block's text is resolved by the same cascade and cell geometry as a stage
of a backbone (`stcnnt_dsl.graph.resolve.standalone_block`), and its cells are built
by the same factory (`stcnnt_dsl.models.cells.make_cell`), so a standalone `Block` and
a backbone stage can never disagree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..graph.guard import guard_params
from ..graph.resolve import BlockPlan, standalone_block
from ..graph.rules import SizeRule, check_size
from ..language.blockspec import BlockSpec
from ..nn.checks import check_input_tensor
from ..nn.stack import CellStack
from .cells import make_cell

__all__ = ["Block"]


class Block(CellStack):
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
        plan = standalone_block(text, in_channels, out_channels, options, name)
        guard_params(sum(plan.params().values()), name)
        self._build(plan, name)

    @classmethod
    def from_plan(cls, plan: BlockPlan, name: str | None = None) -> Block:
        """The block of a resolved plan (a stage of a model graph)."""
        block = cls.__new__(cls)
        block._build(plan, name or plan.where)
        return block

    def _build(self, plan: BlockPlan, name: str) -> None:
        CellStack.__init__(
            self, (make_cell(cell.geometry) for cell in plan.cells), dense=plan.dense,
            checkpoint=plan.checkpoint,
        )  # fmt: skip
        self.plan = plan
        self.spec = plan.block
        self.name = name
        self.in_channels, self.out_channels = plan.in_channels, plan.out_channels
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
        check_input_tensor(x, self.in_channels, self.name, like=next(self.parameters(), None))
        t, h, w = x.shape[1], x.shape[3], x.shape[4]
        if self._checked == (t, h, w):
            return
        for where, rule in self._rules:
            check_size(rule, h, w, where=where, path=self.name, t=t)
        self._checked = (t, h, w)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling():
            self.check_input(x)
        return super().forward(x)
