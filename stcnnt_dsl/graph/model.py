"""The model graph: one description of a model that every part of the library reads.

Built once from a spec (by the topology's builder, `stcnnt_dsl.graph.topologies`), it
holds the nodes in execution order with their resolved options, channels, scales and
module names, the edges between them (each node's `inputs`), the output and the
feature nodes. The compiled module runs it, `check` / `infer_shapes` / the resource
guard / the counters / `explain` / the diagram / the reference-weights mapping all
iterate over it. Nothing here needs torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ShapeError
from ..language.spec import ArchSpec, SpecSource
from ..machine import SDPA_MIN_TOKENS_CPU
from .nodes import BlockNode, Node
from .resolve import BlockPlan
from .rules import SizeRule, check_size, nearest_multiples

__all__ = ["Feature", "Layout", "ModelGraph", "Shape", "describe_rule", "parse_shape"]

Shape = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class Feature:
    """One entry of `forward_features`: a node's output at 1/reduction resolution."""

    name: str
    channels: int
    reduction: int


@dataclass(frozen=True)
class Layout:
    """How the diagram arranges the graph: `rankdir`; `rows`: names kept side by side,
    in order; `back`: nodes whose incoming edges are drawn against the direction (the
    U-Net's decoder climbs back up); `as_edges`: one-in one-out nodes drawn as a labelled
    edge instead of a box."""

    rankdir: str = "TB"
    rows: tuple[tuple[str, ...], ...] = ()
    back: frozenset[str] = frozenset()
    as_edges: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ModelGraph:
    """Nodes in execution order; `output` is what `forward` returns, `features` what
    `forward_features` returns (finest first)."""

    source: SpecSource
    nodes: tuple[Node, ...]
    output: str
    features: tuple[Feature, ...]
    in_channels: int
    out_channels: int
    layout: Layout = field(default_factory=Layout)
    heads: tuple[Any, ...] = ()  # HeadNode (graph.heads): what a whole Model adds

    @property
    def all_nodes(self) -> tuple[Node, ...]:
        """The backbone's nodes, then the heads."""
        return (*self.nodes, *self.heads)

    def module_path(self, node: Node) -> str:
        """Where `node`'s module sits: its name in a backbone; `backbone.<name>` and
        `heads.<name>` in a whole model (the reference's layout too)."""
        if not self.heads or node in self.heads:
            return node.name
        return f"backbone.{node.name}"

    # ------------------------------------------------------------------ access
    @property
    def spec(self) -> ArchSpec:
        return self.source.spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def topology(self) -> str:
        return self.spec.topology

    def node(self, name: str) -> Node:
        for node in self.all_nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    @property
    def stages(self) -> tuple[BlockNode, ...]:
        """The block nodes (the stages users name in overrides and explain)."""
        return tuple(n for n in self.nodes if isinstance(n, BlockNode))

    def block_plans(self) -> list[BlockPlan]:
        """Every block of the model: stages and the blocks inside resamplers."""
        return [n.plan for n in self.nodes if getattr(n, "plan", None) is not None]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    # ------------------------------------------------------------------ sizes
    def rule(self) -> SizeRule:
        """The rule on the model input (T, H, W): every node's rule scaled up."""
        mh = mw = mt = 1
        minimum, min_frames, exact = 1, 1, None
        for _, rule, scale, node in self._rules():
            ts = node.rules_time_scale
            mh = math.lcm(mh, rule.multiple[0] * scale)
            mw = math.lcm(mw, rule.multiple[1] * scale)
            mt = math.lcm(mt, rule.frames_multiple * ts)
            if rule.minimum > 1:
                minimum = max(minimum, rule.minimum * scale)
            min_frames = max(min_frames, rule.min_frames * ts)
            if rule.exact is not None and exact is None:
                exact = (rule.exact[0] * scale, rule.exact[1] * scale)
        min_frames = -(-min_frames // mt) * mt
        return SizeRule((mh, mw), "", exact, minimum, min_frames, mt)

    def _rules(self) -> Iterator[tuple[str, SizeRule, int, Node]]:
        for node in self.nodes:
            for where, rule, scale in node.rules():
                yield where, rule, scale, node

    def check(
        self, t: int, h: int, w: int, *, batch: int | None = None, frames: str | None = "T"
    ) -> None:
        """Raise a `ShapeError` naming the first node and rule that an input of T
        frames and H x W pixels breaks; the message states the valid inputs of the
        whole model first (the multiple that really works) and the nearest valid sizes.
        With `batch`, also the rule of batch norms in training: more than one value
        per channel. `frames` names the frame axis as the caller's layout does (D for
        volumes, None for 2D images)."""
        if t < 1 or h < 1 or w < 1:
            raise ShapeError(
                f"T, H and W must be >= 1, got T={t}, H={h}, W={w}", rule="positive size"
            )
        whole = self.rule()
        nearest = _nearest(whole, h, w)
        mt = whole.frames_multiple
        if mt > 1 and (t % mt or t < whole.min_frames):
            nearest["T"] = sorted({max(whole.min_frames, v) for v in nearest_multiples(t, mt)})
        hint = "; ".join(
            f"nearest valid {k}: {' or '.join(map(str, v))}" for k, v in nearest.items()
        )
        for where, rule, scale, node in self._rules():
            sh, sw, ts = h // scale, w // scale, node.rules_time_scale
            try:
                check_size(rule, sh, sw, where=where, path=node.path, t=t // ts)
            except ShapeError as err:
                notes = [f"the input's {h}x{w} is {sh}x{sw} at 1/{scale} scale"] * (scale > 1)
                notes += [f"its T={t} is {t // ts} frames there"] * (ts > 1)
                at = f" ({', '.join(notes)})" if notes else ""
                sizes = f"H={h}, W={w}" if frames is None else f"{frames}={t}, H={h}, W={w}"
                reason = f"input {sizes} cannot run: valid inputs are "
                reason += describe_rule(whole, frames)
                if nearest:
                    reason += f"; {hint}"
                reason += f". The first rule it breaks: {where}: {err.rule}{at}"
                raise ShapeError(
                    reason, node.path, rule=err.rule, nearest=nearest or err.nearest
                ) from None
        if batch is not None:
            self._check_batch_statistics(batch, t, h, w)
            for head in self.heads:
                head.check_batch(batch, t)

    def _check_batch_statistics(self, b: int, t: int, h: int, w: int) -> None:
        for node in self.nodes:
            for plan in [getattr(node, "plan", None)]:
                if plan is None:
                    continue
                sh, sw, st = h // node.scale, w // node.scale, t // node.time_scale
                for cell in plan.cells:
                    norm = cell.geometry.options.norm
                    if norm in ("batch2d", "batch3d") and b * st * sh * sw <= 1:
                        rule = (
                            f"norm={norm} needs more than one value per channel in training, "
                            f"got B*T*H*W = {b}*{st}*{sh}*{sw} = 1"
                        )
                        raise ShapeError(
                            f"{plan.cell_label(cell.index)}: {rule}"
                            + (f" (at 1/{node.scale} scale)" if node.scale > 1 else "")
                            + "; use a larger batch, more frames or a larger input, or "
                            "norm=instance2d (inference in eval mode would run)",
                            node.path,
                            rule=rule,
                        )

    def shapes(self, shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Output shape of every node (heads too) for an input (B, T, C, H, W)."""
        b, t, _, h, w = shape
        out = {
            n.name: (b, t // n.time_scale, n.out_channels, h // n.scale, w // n.scale)
            for n in self.nodes
        }
        out.update({head.name: head.output_shape(shape) for head in self.heads})
        return out

    def default_input(self) -> Shape:
        """The smallest input the model accepts: one sample, its fewest frames, the
        spec's `input_size` when it has one, else the smallest valid H and W."""
        rule = self.rule()
        if self.spec.input_size is not None:
            h, w = self.spec.input_size
        elif rule.exact is not None:
            h, w = rule.exact
        else:
            h, w = (max(m, -(-rule.minimum // m) * m) for m in rule.multiple)
        return (1, rule.min_frames, self.in_channels, h, w)

    # ------------------------------------------------------------------ costs
    def _path(self, node: Node, part: str) -> str:
        path = self.module_path(node)
        return f"{path}.{part}" if part else path

    def params(self) -> dict[str, int]:
        """Parameters by module path (`encoder.0.cells.1.attn.qkv`)."""
        return {
            self._path(node, part): value
            for node in self.all_nodes
            for part, value in node.params().items()
        }

    def flops(self, shape: Sequence[int]) -> dict[str, int]:
        """FLOPs of one forward on (B, T, C, H, W), by module path."""
        b, t, _, h, w = shape
        return {
            self._path(node, part): b * value
            for node in self.all_nodes
            for part, value in node.flops(t // _time_scale(node), h, w).items()
        }

    def per_node(self, values: dict[str, int]) -> dict[str, int]:
        """Module-path values (`params()`, `flops()`, `saved()`) summed per node name."""
        paths = [(self.module_path(node), node.name) for node in self.all_nodes]
        out = dict.fromkeys((name for _, name in paths), 0)
        for key, value in values.items():
            path = key.partition(":")[0]
            node = next(n for p, n in paths if path == p or path.startswith(p + "."))
            out[node] += value
        return out

    def saved(self, shape: Sequence[int]) -> dict[str, int]:
        """Elements kept for backward in one training forward, by module path."""
        b, t, _, h, w = shape
        out: dict[str, int] = {}
        for node in self.all_nodes:
            nt = t // _time_scale(node)
            for part, value in node.saved(b * nt, nt, h, w).items():
                out[self._path(node, part)] = value
        return out

    def workspace(
        self, shape: Sequence[int], sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU
    ) -> dict[str, tuple[int, int]]:
        """(forward, backward) working elements of one training forward and backward, by
        the module paths of `saved` (see `Node.workspace`); `sdpa_min_tokens`: the
        sequence length from which attention runs fused SDPA (no S x S scores kept): the
        CPU's tuned threshold, 0 on CUDA."""
        b, t, _, h, w = shape
        return {
            self._path(node, part): value
            for node in self.all_nodes
            for part, value in node.workspace(b * t, t, h, w, sdpa_min_tokens).items()
        }


def _time_scale(node: Any) -> int:
    """1/scale of T at a node's output (heads keep the backbone output's T)."""
    return getattr(node, "time_scale", 1)


def describe_rule(rule: SizeRule, frames: str | None = "T") -> str:
    """`H and W multiples of 32, any T` in words; `frames` names the frame axis in the
    caller's layout (D for volumes), None where the layout has none (2D)."""
    if rule.exact is not None:
        text = f"exactly H={rule.exact[0]}, W={rule.exact[1]}"
    else:
        mh, mw = rule.multiple
        text = f"H and W multiples of {mh}" if mh == mw else f"H a multiple of {mh}, W of {mw}"
        if rule.minimum > 1:
            text += f", at least {rule.minimum}"
    if frames is None:
        return text
    if rule.frames_multiple > 1:
        text += f", {frames} a multiple of {rule.frames_multiple}"
        return text + (f" >= {rule.min_frames}" if rule.min_frames > rule.frames_multiple else "")
    return text + (f", {frames} >= {rule.min_frames}" if rule.min_frames > 1 else f", any {frames}")


def _nearest(rule: SizeRule, h: int, w: int) -> dict[str, list[int]]:
    if rule.exact is not None:
        out = {}
        if h != rule.exact[0]:
            out["H"] = [rule.exact[0]]
        if w != rule.exact[1]:
            out["W"] = [rule.exact[1]]
        return out
    out = {}
    for name, value, m in (("H", h, rule.multiple[0]), ("W", w, rule.multiple[1])):
        base = max(m, math.ceil(rule.minimum / m) * m)
        if value % m or value < base:
            out[name] = sorted({max(base, v) for v in nearest_multiples(value, m)})
    return out


def parse_shape(shape: Sequence[int] | str) -> Shape:
    """(B, T, C, H, W) from a sequence or a "B,T,C,H,W" string."""
    if isinstance(shape, str):
        try:
            shape = [int(p) for p in shape.replace("x", ",").split(",") if p.strip()]
        except ValueError:
            raise ShapeError(
                f"input shape must be B,T,C,H,W integers, got {shape!r}", rule="input shape"
            ) from None
    values = tuple(shape)
    if len(values) != 5 or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ShapeError(
            f"input shape must be 5 integers [B, T, C, H, W] (T = frames or slices, 1 for "
            f"2D), got {values!r}",
            rule="input shape",
        )
    if min(values) < 1:
        raise ShapeError(
            f"every dimension of [B, T, C, H, W] must be >= 1, got {values}", rule="input shape"
        )
    if max(values) >= 2**63:  # beyond any tensor dimension (and Python's int printing)
        raise ShapeError("a dimension of the input shape is beyond 2^63", rule="input shape")
    return values  # type: ignore[return-value]
