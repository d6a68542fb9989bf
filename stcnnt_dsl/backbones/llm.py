"""ST-CNNT LLM-style stack: blocks at constant resolution with dense skips."""

from __future__ import annotations

from torch import Tensor, nn

from ..plan import Plan
from .base import Backbone

__all__ = ["LLMStack"]


class LLMStack(Backbone):
    """Blocks one after another at full resolution; with `dense_skips`, block k takes
    the sum of the outputs of all earlier blocks (non-causal attention throughout)."""

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self.dense_skips = plan.spec.llm.dense_skips
        self.blocks = nn.ModuleList(self._block(stage) for stage in plan.stages)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The output of every block."""
        x = self._enter(x)
        outs: list[Tensor] = []
        total = None
        for k, block in enumerate(self.blocks):
            if k == 0 or not self.dense_skips:
                y = block(x if k == 0 else outs[-1])
            else:
                y = block(total)
            outs.append(y)
            total = y if total is None else total + y
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[-1]
