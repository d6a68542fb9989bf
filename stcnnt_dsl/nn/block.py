"""Block: a stack of cells built from a block string such as `L1G1T1`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..blockspec import BlockSpec, CellSpec
from ..errors import SpecError
from ..options import (
    BLOCK_OPTION_NAMES,
    OPTIONS,
    options_for_kind,
    resolve_options,
    validate_options,
)
from ..rules import SizeRule, cell_size_rule, check_size
from .cells import make_cell
from .checks import check_input_tensor
from .layout import channels_last_frames

__all__ = ["Block", "resolve_cell"]

Layers = Sequence[tuple[str, Mapping[str, Any]]]


def resolve_cell(cell: CellSpec, layers: Layers) -> dict[str, Any]:
    """Resolved options of `cell`: library defaults < `layers` (weak to strong) < the
    options written inline on the cell. Block-level options are included."""
    names = options_for_kind(cell.kind) + BLOCK_OPTION_NAMES
    resolved = resolve_options(names, [*layers, ("inline", cell.options)])
    return {name: r.value for name, r in resolved.items()}


class Block(nn.Module):
    """A stack of cells from a block string: `Block("L1G1T1", 16, 32, window=8)`.

    The first cell maps `in_channels` to `out_channels`, the others keep
    `out_channels`. Keyword options use the language's option names (see
    `stcnnt_dsl.options.OPTIONS`) and apply to every cell they concern; options
    written inline in the block string (`L1[window=4]`) win over them.

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
        layers: Layers | None = None,
        name: str = "Block",
        **options: Any,
    ) -> None:
        super().__init__()
        from ..language import parse_block  # the language imports nn-free modules only

        for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(
                    f"{label} must be a positive integer, got {value!r}", f"{name}.{label}"
                )
        spec = text if isinstance(text, BlockSpec) else parse_block(text)
        standalone = layers is None
        if layers is None:
            given = validate_options(options, name)
            _check_options_used(spec, given, name)
            layers = [("options", given)]
        elif options:
            raise TypeError("pass either layers or keyword options, not both")
        self.spec = spec
        self.name = name
        self.in_channels, self.out_channels = in_channels, out_channels
        self.cell_options = [resolve_cell(cell, layers) for cell in spec.cells]
        if standalone:  # backbones are guarded as a whole by build()
            from ..resources import guard_block

            guard_block(spec.cells, in_channels, out_channels, self.cell_options, name)
        block_opts = self.cell_options[0]
        self.dense = bool(block_opts["dense"])
        self.use_checkpoint = bool(block_opts["checkpoint"])
        input_size = block_opts["input_size"]
        cells = []
        self._rules: list[tuple[str, SizeRule]] = []
        for i, (cell, opts) in enumerate(zip(spec.cells, self.cell_options, strict=True)):
            cin = in_channels if i == 0 else out_channels
            where = f"{name} cell {i} ({cell})"
            try:
                module = make_cell(
                    cell.kind, cin, out_channels, opts, mixer=cell.mixer, input_size=input_size
                )
            except SpecError as err:
                raise err.located(path_prefix=f"{name}.cells[{i}]") from None
            cells.append(module)
            rule = cell_size_rule(
                cell.kind, opts, mixer=cell.mixer, changes_channels=cin != out_channels
            )
            self._rules.append((where, rule))
            if input_size is not None:
                # T is unknown when building: check the spatial rules only.
                check_size(
                    rule,
                    *input_size,
                    where=f"{where} with input_size {input_size}",
                    t=rule.min_frames,
                )
        self.cells = nn.ModuleList(cells)
        self._checked: tuple[int, int, int] | None = None

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
        check_input_tensor(x, self.in_channels, self.name)
        t, h, w = x.shape[1], x.shape[3], x.shape[4]
        if self._checked == (t, h, w):
            return
        for where, rule in self._rules:
            check_size(rule, h, w, where=where, path=self.name, t=t)
        self._checked = (t, h, w)

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
        x = channels_last_frames(x)
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._run, x, use_reentrant=False)
        return self._run(x)


def _check_options_used(spec: BlockSpec, options: Mapping[str, Any], name: str) -> None:
    """A keyword option that no cell of the block reads is a mistake, not a no-op."""
    kinds = {cell.kind for cell in spec.cells}
    for option_name in options:
        if not kinds & OPTIONS[option_name].applies_to:
            users = ", ".join(sorted(OPTIONS[option_name].applies_to))
            raise SpecError(
                f"option {option_name!r} does not apply to any cell of {spec} "
                f"(it applies to {users} cells)",
                f"{name}.{option_name}",
            )
