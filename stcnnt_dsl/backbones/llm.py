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
        for k, block in enumerate(self.blocks):
            if k == 0:
                total = y = block(x)
            elif self.dense_skips:
                y = block(total)
                if k < len(self.blocks) - 1:
                    total = total + y
            else:
                y = block(outs[-1])
            outs.append(y)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[-1]
