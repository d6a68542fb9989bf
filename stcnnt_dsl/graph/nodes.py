"""The nodes of a model graph: blocks, resamplers, attention gates and merges.

A node knows its inputs (names of other nodes, or `input`), its output channels and
resolution (1/scale of the input's H and W, 1/time_scale of its T), and its own costs
as pure functions: parameters by module path, FLOPs and saved activations for an input
size, and the size rules it puts on the input. Its `name` is its module path in the
compiled model (`encoder.1`, `level1.stage2`, `gates.0`), which is also the name
`overrides:`, `explain` and error messages use; merges have no module and are named
`sum:<consumer>` / `cat:<consumer>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..machine import SDPA_MIN_TOKENS_CPU
from .geometry import (
    _conv_flops,
    _conv_params,
    component_params,
    conv3d_columns,
    norm_keeps_input,
)
from .resolve import BlockPlan
from .rules import SizeRule

__all__ = [
    "INPUT",
    "BlockNode",
    "ConvUnitNode",
    "GateNode",
    "MergeNode",
    "Node",
    "PartitionNode",
    "ResampleNode",
]

INPUT = "input"
"""The name of the model's input in `Node.inputs`."""


@dataclass(frozen=True)
class Node:
    """What every node has. `path`: the spec path where its options are set (for
    messages); `meta`: topology facts (level, stage, source and target level) that the
    diagram and the reference-weights mapping read."""

    name: str
    inputs: tuple[str, ...]
    out_channels: int
    scale: int
    label: str
    path: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    time_scale: int = 1  # its output has T / time_scale frames (the mixed U-Netr's halving)

    kind: ClassVar[str] = "node"
    has_module: ClassVar[bool] = True

    @property
    def rules_time_scale(self) -> int:
        """1/scale of the model's T at which `rules()` apply (the node's input for a
        resampler that halves T)."""
        return self.time_scale

    def params(self) -> dict[str, int]:
        """Parameters by module path inside the node."""
        return {}

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        """FLOPs of one sample of `t` frames (the node's output T) on an h x w *model
        input*, by module path inside the node."""
        return {}

    def saved(self, frames: int, t: int, h: int, w: int) -> dict[str, int]:
        """Elements kept for backward (training forward) on an h x w model input, by
        module path inside the node ("" for the node itself); `frames` = B x the node's
        output T."""
        return {}

    def workspace(
        self, frames: int, t: int, h: int, w: int, sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU
    ) -> dict[str, tuple[int, int]]:
        """(forward, backward) elements held besides the saved ones while the node runs,
        by the same module paths as `saved` (backward: the gradients it computes of its
        saved maps and inputs, not of its parameters)."""
        return {part: (0, value) for part, value in self.saved(frames, t, h, w).items()}

    def rules(self) -> list[tuple[str, SizeRule, int]]:
        """(where, rule, scale): rules on the map at 1/scale of the input."""
        return []


@dataclass(frozen=True)
class BlockNode(Node):
    """A stage: one block from a block string."""

    plan: BlockPlan | None = None
    in_channels: int = 0

    kind: ClassVar[str] = "block"

    def params(self) -> dict[str, int]:
        return self.plan.params()

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        return self.plan.flops(t, h // self.scale, w // self.scale)

    def saved(self, frames: int, t: int, h: int, w: int) -> dict[str, int]:
        return self.plan.saved(frames, t, h // self.scale, w // self.scale)

    def workspace(
        self, frames: int, t: int, h: int, w: int, sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU
    ) -> dict[str, tuple[int, int]]:
        return self.plan.workspace(frames, t, h // self.scale, w // self.scale, sdpa_min_tokens)

    def rules(self) -> list[tuple[str, SizeRule, int]]:
        return [(where, rule, self.scale) for where, rule in self.plan.size_rules()]


def _conv(cin: int, cout: int, kernel: int, *, bias: bool = False) -> int:
    return cin * cout * kernel * kernel + (cout if bias else 0)


@dataclass(frozen=True)
class ResampleNode(Node):
    """A resolution change by 2^steps, one of:
    `merge` (patch merging: 2x2 space-to-depth + 1x1 conv, per step), `pool` (2x2 mean),
    `upconv` (bilinear x2 + 3x3 conv without bias, per step), `upsample` (bilinear
    only), `block` (bilinear to the target size, then a block of the target level).
    With `temporal` (merge, upconv, upsample; one step), T is halved or doubled too:
    2x2x2 space-to-depth, trilinear x2 and a 3x3x3 conv (the mixed U-Netr's `halve_time`)."""

    op: str = "merge"
    steps: int = 1
    in_channels: int = 0
    in_scale: int = 1
    padding: str = "zeros"  # of the up-sampling convs: the owning stage's
    plan: BlockPlan | None = None  # op "block"
    temporal: bool = False

    kind: ClassVar[str] = "resample"

    @property
    def down(self) -> bool:
        return self.scale > self.in_scale

    @property
    def rules_time_scale(self) -> int:
        return self.time_scale // 2 if self.temporal and self.down else self.time_scale

    @property
    def _t_in(self) -> int:
        """Input frames per output frame (2 when T is halved)."""
        return 2 if self.temporal and self.down else 1

    @property
    def _taps(self) -> int:
        return 3 if self.temporal else 2

    def _channels(self, k: int) -> int:
        return self.in_channels if k == 0 else self.out_channels

    def params(self) -> dict[str, int]:
        if self.op == "merge":
            return {
                f"merges.{k}.conv": 4 * self._t_in * self._channels(k) * self.out_channels
                for k in range(self.steps)
            }
        if self.op == "upconv":
            return {
                f"convs.{k}": _conv_params(
                    self._channels(k), self.out_channels, 3, bias=False, taps=self._taps
                )
                for k in range(self.steps)
            }
        if self.op == "block":
            return {f"block.{k}": v for k, v in self.plan.params().items()}
        return {}

    def _size(self, h: int, w: int, scale: int) -> int:
        return (h // scale) * (w // scale)

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        if self.op == "merge":  # step k outputs at 1/(in_scale * 2^(k+1))
            return {
                f"merges.{k}.conv": 2 * t * 4 * self._t_in * self._channels(k)
                * self.out_channels * self._size(h, w, self.in_scale * 2 ** (k + 1))
                for k in range(self.steps)
            }  # fmt: skip
        if self.op == "upconv":  # step k outputs at 1/(in_scale / 2^(k+1))
            return {
                f"convs.{k}": _conv_flops(self._channels(k), self.out_channels, 3,
                                          t * self._size(h, w, self.in_scale // 2 ** (k + 1)),
                                          self._taps)
                for k in range(self.steps)
            }  # fmt: skip
        if self.op == "block":
            flops = self.plan.flops(t, h // self.scale, w // self.scale)
            return {f"block.{k}": v for k, v in flops.items()}
        return {}

    def saved(self, frames: int, t: int, h: int, w: int) -> dict[str, int]:
        # each convolution keeps its input: merge step k its space-to-depth copy (the
        # channels of step k at the step's input resolution, times the frames merged
        # into one when T is halved), upconv step k the bilinear (trilinear) map at the
        # step's output resolution; bilinear alone keeps nothing
        if self.op in ("merge", "upconv"):
            down = self.op == "merge"
            scales = [self.in_scale * 2**k if down else self.in_scale // 2 ** (k + 1)
                      for k in range(self.steps)]  # fmt: skip
            t_in = self._t_in if down else 1
            return {"": sum(self._channels(k) * t_in * frames * self._size(h, w, scale)
                            for k, scale in enumerate(scales))}  # fmt: skip
        if self.op == "block":
            out = self.plan.saved(frames, t, h // self.scale, w // self.scale)
            mapped = {f"block.{k}": v for k, v in out.items()}
            mapped[""] = self.in_channels * frames * self._size(h, w, self.scale)
            return mapped
        return {}

    def workspace(
        self, frames: int, t: int, h: int, w: int, sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU
    ) -> dict[str, tuple[int, int]]:
        out = super().workspace(frames, t, h, w, sdpa_min_tokens)
        if self.op == "block":
            inner = self.plan.workspace(
                frames, t, h // self.scale, w // self.scale, sdpa_min_tokens
            )
            out.update({f"block.{k}": v for k, v in inner.items()})
        return out

    def rules(self) -> list[tuple[str, SizeRule, int]]:
        rules = []
        if self.down:
            m = 2**self.steps
            what = f"{self.steps} 2x down-sampling step{'s' * (self.steps > 1)}"
            rule = SizeRule((m, m), what, frames_multiple=2 if self.temporal else 1)
            rules.append((f"{self.name} ({self.label})", rule, self.in_scale))
        if self.plan is not None:
            rules += [(w, r, self.scale) for w, r in self.plan.size_rules()]
        return rules


@dataclass(frozen=True)
class GateNode(Node):
    """Attention gate (Oktay et al. 2018): inputs (g, x); the coarser decoder feature g
    gates the skip x with a learned [B, T, 1, H, W] sigmoid map."""

    gate_channels: int = 0

    kind: ClassVar[str] = "gate"

    def params(self) -> dict[str, int]:
        g, s = self.gate_channels, self.out_channels
        return {"query": g * s, "key": s * s, "psi": s}

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        hw = (h // self.scale) * (w // self.scale)
        return {name: 2 * t * value * hw for name, value in self.params().items()}

    def saved(self, frames: int, t: int, h: int, w: int) -> dict[str, int]:
        # the query's input g, the key's input x, the ReLU's output (psi's input) and
        # the sigmoid map
        pixels = frames * (h // self.scale) * (w // self.scale)
        return {"": (self.gate_channels + 2 * self.out_channels + 1) * pixels}


@dataclass(frozen=True)
class MergeNode(Node):
    """A sum (`op="sum"`, left to right) or a channel concatenation (`op="cat"`) of
    its inputs; no parameters, no module."""

    op: str = "sum"

    kind: ClassVar[str] = "merge"
    has_module: ClassVar[bool] = False


@dataclass(frozen=True)
class ConvUnitNode(Node):
    """A convolution unit (the mixed U-Netr's skip encoders and decoders, see
    `stcnnt_dsl.nn.conv_unit`): conv, norm, act, conv, norm, (+ input), act, with 3x3x3
    (`temporal`) or 3x3 convolutions without bias."""

    in_channels: int = 0
    residual: bool = False
    temporal: bool = True
    norm: str = "instance2d"
    activation: str = "prelu"
    padding: str = "reflect"
    input_size: tuple[int, int] | None = None  # at this node's scale (layer norm)

    kind: ClassVar[str] = "conv_unit"

    @property
    def _taps(self) -> int:
        return 3 if self.temporal else 2

    def params(self) -> dict[str, int]:
        cin, cout = self.in_channels, self.out_channels
        norm = component_params("norm", self.norm, cout, self.input_size)
        act = component_params("activation", self.activation)
        return {
            "conv1": _conv_params(cin, cout, 3, bias=False, taps=self._taps),
            "norm1": norm, "act1": act,
            "conv2": _conv_params(cout, cout, 3, bias=False, taps=self._taps),
            "norm2": norm, "act2": act,
        }  # fmt: skip

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        positions = t * (h // self.scale) * (w // self.scale)
        cin, cout = self.in_channels, self.out_channels
        return {
            "conv1": _conv_flops(cin, cout, 3, positions, self._taps),
            "conv2": _conv_flops(cout, cout, 3, positions, self._taps),
        }

    def saved(self, frames: int, t: int, h: int, w: int) -> dict[str, int]:
        # each conv's input (3x3x3 with a non-zero padding: and its padded copy), the
        # norms' outputs (and inputs, where the norm keeps them), the sum before act2
        hp, wp = h // self.scale, w // self.scale
        pixels = frames * hp * wp
        cin, cout = self.in_channels, self.out_channels
        total = (cin + 3 * cout + (cout if self.residual else 0)) * pixels
        if norm_keeps_input(self.norm):
            total += 2 * cout * pixels
        if self.temporal and self.padding != "zeros":
            padded = frames // max(t, 1) * (t + 2) * (hp + 2) * (wp + 2)
            total += (cin + cout) * padded
        return {"": total}

    def workspace(
        self, frames: int, t: int, h: int, w: int, sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU
    ) -> dict[str, tuple[int, int]]:
        # each conv's output and the norm's forward; backward the gradients of the maps
        # and of the input; 3x3x3 convolutions may unfold their input (`conv3d_columns`)
        hp, wp = h // self.scale, w // self.scale
        pixels = frames * hp * wp
        cin, cout = self.in_channels, self.out_channels
        columns = 0
        if self.temporal:
            padded = self.padding != "zeros"
            columns = max(conv3d_columns(c, frames, t, hp, wp, padded) for c in (cin, cout))
        return {"": (columns + 2 * cout * pixels, columns + (cout + 2 * cin) * pixels)}

    def rules(self) -> list[tuple[str, SizeRule, int]]:
        if self.padding != "reflect":
            return []
        frames = 2 if self.temporal else 1
        what = f"{self.name} ({self.label})"
        return [(what, SizeRule(minimum=2, min_frames=frames), self.scale)]


@dataclass(frozen=True)
class PartitionNode(ResampleNode):
    """The mixed U-Netr's window partition of its input (`partition: 2d | 3d`): 2x2
    (2x2x2 with `temporal`) space-to-depth, channel-major (channel c*4 + dh*2 + dw, or
    c*8 + dt*4 + dh*2 + dw), then one 3x3 (`conv_temporal`: 3x3x3) conv without bias.
    `order="reference"` reproduces the reference's 2-D reshuffle instead (see
    `stcnnt_dsl.nn.sampling.partition`)."""

    op: str = "partition"
    conv_temporal: bool = True
    order: str = "space_to_depth"

    @property
    def _depth(self) -> int:
        return 8 if self.temporal else 4

    def params(self) -> dict[str, int]:
        taps = 3 if self.conv_temporal else 2
        cin = self._depth * self.in_channels
        return {"conv": _conv_params(cin, self.out_channels, 3, bias=False, taps=taps)}

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        taps = 3 if self.conv_temporal else 2
        cin = self._depth * self.in_channels
        positions = t * self._size(h, w, self.scale)
        return {"conv": _conv_flops(cin, self.out_channels, 3, positions, taps)}

    def saved(self, frames: int, t: int, h: int, w: int) -> dict[str, int]:
        out = frames * self._size(h, w, self.scale)
        return {"": (self._depth * self.in_channels + self.out_channels) * out}

    def rules(self) -> list[tuple[str, SizeRule, int]]:
        rules = super().rules()
        if self.padding == "reflect":  # the conv's reflect padding, at the partition's size
            frames = (2 if self.conv_temporal else 1) * self._t_in  # in input frames
            what = f"{self.name} ({self.label})"
            rules.append((what, SizeRule(minimum=2, min_frames=frames), self.scale))
        return rules
