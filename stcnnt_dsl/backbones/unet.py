"""ST-CNNT U-Net: encoder levels, a bridge, and decoder levels with gated skips."""

from __future__ import annotations

from torch import Tensor, nn

from ..plan import Plan
from .base import Backbone
from .sampling import AttentionGate, Downsample, Upsample

__all__ = ["UNet"]


class UNet(Backbone):
    """Level i runs at H/2^i with channels[i]. Encoder block i, 2x down-sampling, ...,
    the bridge at H/2^L, then per level (coarsest first): 2x up-sampling, the attention
    gate on the encoder skip, concatenation [gated skip, up-sampled], decoder block i.
    The output has channels[0] channels at full resolution."""

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        body = plan.spec.unet
        n = body.num_levels
        ch = plan.extras["channels"]
        padding = plan.stage("bridge").cell_options()[0]["padding"]
        self.levels = n
        self.encoder = nn.ModuleList(self._block(plan.stage(f"encoder.{i}")) for i in range(n))
        self.down = nn.ModuleList(Downsample(ch[i], ch[i], 1, body.down) for i in range(n))
        self.bridge = self._block(plan.stage("bridge"))
        self.up = nn.ModuleList(
            Upsample(ch[i], ch[i], 1, conv=body.up == "conv", padding=padding) for i in range(n)
        )
        self.gates = (
            nn.ModuleList(AttentionGate(ch[i], ch[i]) for i in range(n)) if (body.gate) else None
        )
        self.decoder = nn.ModuleList(self._block(plan.stage(f"decoder.{i}")) for i in range(n))

    def _decode(self, x: Tensor) -> list[Tensor]:
        x = self._enter(x)
        skips = []
        for i in range(self.levels):
            s = self.encoder[i](x)
            skips.append(s)
            x = self.down[i](s)
        y = self.bridge(x)
        outs: list[Tensor] = [y] * self.levels
        for i in reversed(range(self.levels)):
            u = self.up[i](y)
            skip = self.gates[i](u, skips[i]) if self.gates is not None else skips[i]
            y = self.decoder[i](_cat(skip, u))
            outs[i] = y
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self._decode(x)[0]

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Decoder outputs, finest first: level i at H/2^i (see `feature_info`)."""
        return self._decode(x)


def _cat(a: Tensor, b: Tensor) -> Tensor:
    """[B, T, Ca + Cb, H, W]; concatenated as 4-D frames so the result keeps their
    channels-last storage (a 5-D cat would fall back to contiguous)."""
    import torch

    return torch.cat([a.flatten(0, 1), b.flatten(0, 1)], dim=1).unflatten(0, a.shape[:2])
