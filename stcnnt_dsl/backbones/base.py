"""What every compiled backbone offers, whatever its topology."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import STCNNTError
from ..nn.block import Block
from ..nn.checks import check_input_tensor
from ..nn.layout import channels_last_frames
from ..plan import Plan, StagePlan
from ..spec import ArchSpec

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """A compiled architecture.

    - `forward(x)`: [B, T, C_in, H, W] -> [B, T, out_channels, H, W] (for HR-Net the
      aggregated output);
    - `forward_features(x)`: the per-level (or per-block) outputs, see `feature_info`;
    - `feature_info`: one dict per feature: `channels`, `reduction`, `module`;
    - `out_channels`, `in_channels`, `spec` (the resolved `ArchSpec`), `plan`.
    The input is checked once per new shape (rank, channels, dtype, sizes) with a
    message naming the stage and cell that cannot run it.
    """

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan
        self.spec: ArchSpec = plan.spec
        self.in_channels = plan.spec.in_channels
        self.out_channels = plan.out_channels
        self.feature_info: list[dict[str, Any]] = [dict(f) for f in plan.feature_info]
        self._checked: tuple[int, int, int] | None = None

    def _block(self, stage: StagePlan) -> Block:
        try:
            return Block(
                stage.block,
                stage.in_channels,
                stage.out_channels,
                layers=stage.layers,
                name=stage.path,
            )
        except STCNNTError as err:
            if hasattr(err, "located") and not getattr(err, "path", "").startswith(stage.path):
                err.located(path_prefix=stage.path)
            raise

    def check_input(self, x: Tensor) -> None:
        """Raise a `ShapeError` if `x` cannot run through this backbone."""
        check_input_tensor(x, self.in_channels, self.spec.name)
        t, h, w = x.shape[1], x.shape[3], x.shape[4]
        if self._checked != (t, h, w):
            self.plan.check(t, h, w)
            self._checked = (t, h, w)

    def _enter(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling():
            self.check_input(x)
        return channels_last_frames(x)

    def forward_features(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"name={self.spec.name!r}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}"
        )
