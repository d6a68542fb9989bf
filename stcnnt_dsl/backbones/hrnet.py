"""ST-CNNT HR-Net: parallel resolution branches that exchange information every stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.block import Block
from ..nn.cells import frames
from ..plan import Plan
from .base import Backbone
from .sampling import Downsample, Upsample

__all__ = ["HRNet"]


class _BlockResample(nn.Module):
    """Bilinear resampling by 2^steps (down or up), then a block of the target level."""

    def __init__(self, block: Block, steps: int) -> None:
        super().__init__()
        self.block, self.factor = block, 2.0**steps

    def forward(self, x: Tensor) -> Tensor:
        x = frames(
            lambda f: F.interpolate(
                f, scale_factor=self.factor, mode="bilinear", align_corners=False
            ),
            x,
        )
        return self.block(x)


class HRNet(Backbone):
    """Block (i, j) runs at level i (H/2^i, channels[i]) in stage j; level i joins at
    stage i. The input of block (i, j) is the sum of the earlier outputs of its own
    level and of the previous stage's finer levels, down-sampled to level i:

        in(i, j) = sum_{k<j} x(i, k) + sum_{a<i} down_{a->i}(x(a, j-1))

    (exactly the wiring of the reference implementation). The fusion stage brings every
    level to every level (down: patch merging; up: bilinear + 3x3 conv), sums, and runs
    an output block per level. `forward` returns the per-level outputs brought to full
    resolution and concatenated; `forward_features` the per-level outputs."""

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        body = plan.spec.hrnet
        n, s = body.num_levels, plan.extras["stages"]
        ch = plan.extras["channels"]
        self.levels, self.num_stages = n, s
        padding = plan.stage("output0").cell_options()[0]["padding"]
        use_blocks = body.resample == "block"

        def down(a: int, b: int) -> nn.Module:
            if use_blocks:
                return _BlockResample(self._transition_block(plan, a, b), -(b - a))
            return Downsample(ch[a], ch[b], b - a, "merge")

        def up(a: int, b: int) -> nn.Module:
            if use_blocks:
                return _BlockResample(self._transition_block(plan, a, b), a - b)
            return Upsample(ch[a], ch[b], a - b, conv=True, padding=padding)

        self.blocks = nn.ModuleDict()
        self.transitions = nn.ModuleDict()
        for stage in plan.stages:
            if stage.key.startswith("level"):
                self.blocks[stage.key.replace(".", "_")] = self._block(stage)
        for j in range(1, s):
            for i in range(min(j, n - 1) + 1):
                for a in range(min(i, j)):
                    if a <= min(j - 1, n - 1):
                        self.transitions[f"stage{j}_{a}to{i}"] = down(a, i)
        self.fuse = nn.ModuleDict()
        for k in range(n):
            for i in range(n):
                if i < k:
                    self.fuse[f"{i}to{k}"] = down(i, k)
                elif i > k:
                    self.fuse[f"{i}to{k}"] = up(i, k)
        self.outputs = nn.ModuleList(self._block(plan.stage(f"output{k}")) for k in range(n))
        self.output_up = nn.ModuleList(
            Upsample(ch[k], ch[k], k, conv=True, padding=padding) for k in range(1, n)
        )

    def _transition_block(self, plan: Plan, a: int, b: int) -> Block:
        target = plan.stage(f"output{b}")
        return Block(
            target.block,
            plan.extras["channels"][a],
            plan.extras["channels"][b],
            layers=target.layers,
            name=f"hrnet.transition[{a}->{b}]",
        )

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Per-level outputs after the fusion stage: level k at H/2^k."""
        x = self._enter(x)
        n = self.levels
        outs: list[list[Tensor]] = [[] for _ in range(n)]  # outs[i][k] = x(i, stage of k)
        for j in range(self.num_stages):
            new = []
            for i in range(min(j, n - 1) + 1):
                if j == 0:
                    inp = x
                else:
                    terms = list(outs[i])
                    terms += [
                        self.transitions[f"stage{j}_{a}to{i}"](outs[a][-1])
                        for a in range(min(i, n))
                        if outs[a]
                    ]
                    inp = _sum(terms)
                new.append((i, self.blocks[f"level{i}_stage{j}"](inp)))
            for i, y in new:
                outs[i].append(y)
        last = [level[-1] for level in outs]
        fused = []
        for k in range(n):
            terms = [last[i] if i == k else self.fuse[f"{i}to{k}"](last[i]) for i in range(n)]
            fused.append(self.outputs[k](_sum(terms)))
        return fused

    def forward(self, x: Tensor) -> Tensor:
        levels = self.forward_features(x)
        full = [levels[0]] + [self.output_up[k - 1](levels[k]) for k in range(1, self.levels)]
        return torch.cat(full, dim=2)


def _sum(terms: list[Tensor]) -> Tensor:
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total
