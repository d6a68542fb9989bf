"""The compiled backbone: a torch module that runs a model graph.

Every node with a module is placed at its name (`encoder.1` is `self.encoder[1]`, so
state-dict keys, `get_submodule` and `feature_info` all use the graph's names); merges
are sums and concatenations. `forward` walks the nodes in order, keeping each output
only until its last consumer has run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..graph.model import ModelGraph
from ..graph.nodes import INPUT, BlockNode, ConvUnitNode, GateNode, MergeNode, Node, ResampleNode
from ..language.spec import ArchSpec
from ..nn.axes import check_layout, from_btchw, to_btchw
from ..nn.checks import check_input_tensor
from ..nn.conv_unit import ConvUnit
from ..nn.layout import frames_in_layout
from ..nn.norms import Norm5d
from ..nn.sampling import AttentionGate, BlockResample, Downsample, Upsample
from .block import Block

__all__ = ["Backbone", "module_of"]


def module_of(node: Node) -> nn.Module | None:
    """The torch module of a graph node (None for merges)."""
    if isinstance(node, BlockNode):
        return Block.from_plan(node.plan, node.name)
    if isinstance(node, ResampleNode):
        if node.op in ("merge", "pool"):
            mode = "merge" if node.op == "merge" else "interpolate"
            return Downsample(node.in_channels, node.out_channels, node.steps, mode)
        if node.op in ("upconv", "upsample"):
            return Upsample(
                node.in_channels, node.out_channels, node.steps,
                conv=node.op == "upconv", padding=node.padding,
            )  # fmt: skip
        steps = node.steps if node.scale < node.in_scale else -node.steps
        return BlockResample(Block.from_plan(node.plan, node.name), steps)
    if isinstance(node, GateNode):
        return AttentionGate(node.gate_channels, node.out_channels)
    if isinstance(node, ConvUnitNode):
        return ConvUnit(
            node.in_channels, node.out_channels, residual=node.residual,
            temporal=node.temporal, norm=node.norm, activation=node.activation,
            padding=node.padding, input_size=node.input_size,
        )  # fmt: skip
    return None


class Modules(nn.ModuleDict):
    """The container of a name's children (`encoder` holds `0`, `1`, ...). Like a
    `ModuleList`, integers index it (`model.encoder[1]`) and iterating gives the modules;
    `keys()` / `items()` give the names."""

    def __getitem__(self, key: str | int) -> nn.Module:
        return super().__getitem__(str(key))

    def __iter__(self) -> Iterator[nn.Module]:  # type: ignore[override]
        names = list(self._modules)
        if all(name.isdigit() for name in names):  # in index order, as a ModuleList
            names.sort(key=int)
        return iter([self._modules[name] for name in names])


def _place(root: nn.Module, name: str, module: nn.Module) -> None:
    """Register `module` at the dotted path `name`, creating containers on the way."""
    *parents, leaf = name.split(".")
    holder = root
    for part in parents:
        child = holder._modules.get(part)
        if child is None:
            child = Modules()
            holder.add_module(part, child)
        holder = child
    holder.add_module(leaf, module)


def _cat(tensors: list[Tensor]) -> Tensor:
    """[B, T, sum C, H, W]; concatenated as 4-D frames so the result keeps their
    channels-last storage (a 5-D cat would fall back to contiguous)."""
    lead = tensors[0].shape[:2]
    return torch.cat([t.flatten(0, 1) for t in tensors], dim=1).unflatten(0, lead)


def _sum(tensors: list[Tensor]) -> Tensor:
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


def _both(graph: ModelGraph) -> tuple[str, ...]:
    return tuple(dict.fromkeys([graph.output, *(f.name for f in graph.features)]))


class Backbone(nn.Module):
    """A compiled architecture.

    - `forward(x)`: [B, T, C_in, H, W] -> [B, T, out_channels, H', W'] (for HR-Net the
      aggregated output);
    - `forward_features(x)`: the per-level (or per-block) outputs, see `feature_info`;
    - `feature_info`: one dict per feature with timm's keys `num_chs`, `reduction`,
      `module` (a name `get_submodule` resolves), and `channels` as an alias;
    - `out_channels`, `in_channels`, `spec` (the resolved `ArchSpec`), `graph`.
    The input is checked once per new shape (rank, channels, dtype, device, sizes) with a
    message naming the stage and cell that cannot run it.
    """

    def __init__(self, graph: ModelGraph, layout: str = "BTCHW") -> None:
        super().__init__()
        self.graph = graph
        self.layout = check_layout(layout)
        self.spec: ArchSpec = graph.spec
        self.in_channels = graph.in_channels
        self.out_channels = graph.out_channels
        self.feature_info: list[dict[str, Any]] = [
            {"num_chs": f.channels, "reduction": f.reduction, "module": f.name,
             "channels": f.channels}
            for f in graph.features
        ]  # fmt: skip
        self._steps: list[tuple[str, str, tuple[str, ...]]] = []
        for node in graph.nodes:
            module = module_of(node)
            if module is not None:
                _place(self, node.name, module)
            op = node.op if isinstance(node, MergeNode) else "module"
            self._steps.append((node.name, op, node.inputs))
        self._paths = {name: tuple(name.split(".")) for name, op, _ in self._steps}
        self._programs: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        features = tuple(f.name for f in graph.features)
        for wanted in ((graph.output,), features, _both(graph), (INPUT, *_both(graph))):
            self._programs[wanted] = self._program(wanted)
        self._checked: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ running
    def _program(self, wanted: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """The steps needed for `wanted`, each with the names whose last use it is."""
        program = self._programs.get(wanted)
        if program is not None:
            return program
        needed = set(wanted)
        for name, _, inputs in reversed(self._steps):
            if name in needed:
                needed.update(inputs)
        steps = [s for s in self._steps if s[0] in needed]
        last_use: dict[str, int] = {}
        for k, (_, _, inputs) in enumerate(steps):
            for name in inputs:
                last_use[name] = k
        program = []
        for k, (name, op, inputs) in enumerate(steps):
            free = tuple(n for n in dict.fromkeys(inputs) if last_use[n] == k and n not in wanted)
            program.append((name, op, inputs, free))
        self._programs[wanted] = program
        return program

    def _child(self, name: str) -> nn.Module:
        """The module at a node's name, looked up when it runs (a dict walk, far cheaper
        than `get_submodule`), so that a wrapper put in its place after building runs."""
        module: nn.Module = self
        for part in self._paths[name]:
            module = module._modules[part]
        return module

    def _run(self, x: Tensor, wanted: tuple[str, ...]) -> dict[str, Tensor]:
        x = self._enter(x)
        env: dict[str, Tensor] = {INPUT: x}
        del x
        for name, op, inputs, free in self._program(wanted):
            args = [env[i] for i in inputs]
            if op == "module":  # by name: a child replaced after building (a wrapper) runs
                env[name] = self._child(name)(*args)
            elif op == "cat":
                env[name] = _cat(args)
            else:
                env[name] = _sum(args)
            del args
            for n in free:
                del env[n]
        return env

    def forward(self, x: Tensor) -> Tensor:
        output = self.graph.output
        return from_btchw(self._run(x, (output,))[output], self.layout)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The per-level (or per-block) outputs, finest first (see `feature_info`), in
        the model's layout."""
        names = tuple(f.name for f in self.graph.features)
        env = self._run(x, names)
        return [from_btchw(env[n], self.layout) for n in names]

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(the input, the output, the features) in [B, T, C, H, W] from one pass: what
        task heads read, whatever the model's layout."""
        env = self._run(x, (INPUT, *_both(self.graph)))
        return env[INPUT], env[self.graph.output], [env[f.name] for f in self.graph.features]

    # ------------------------------------------------------------------ checks
    def check_input(self, x: Tensor) -> None:
        """Raise a `ShapeError` if `x` cannot run through this backbone."""
        check_input_tensor(x, self.in_channels, self.spec.name, like=next(self.parameters(), None))
        b, t, h, w = x.shape[0], x.shape[1], x.shape[3], x.shape[4]
        key = (b if self.training else 0, t, h, w)
        if self._checked != key:
            self.graph.check(t, h, w, batch=b if self.training else None)
            self._checked = key

    def _enter(self, x: Tensor) -> Tensor:
        x = to_btchw(x, self.layout, self.spec.name)
        if not torch.compiler.is_compiling():
            self.check_input(x)
        return frames_in_layout(x)

    # ------------------------------------------------------------------ training help
    def no_weight_decay(self) -> set[str]:
        """Names of the parameters that weight decay should leave alone: relative
        position bias tables, every norm's parameters, and all biases (and other
        one-dimensional parameters, like PReLU slopes)."""
        names = set()
        norms = {name for name, m in self.named_modules() if isinstance(m, Norm5d)}
        for name, param in self.named_parameters():
            owner = name.rsplit(".", 1)[0]
            in_norm = any(owner == n or owner.startswith(n + ".") for n in norms)
            if name.endswith("bias_table") or in_norm or param.ndim <= 1:
                names.add(name)
        return names

    def extra_repr(self) -> str:
        layout = "" if self.layout == "BTCHW" else f", layout={self.layout}"
        return (
            f"name={self.spec.name!r}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}{layout}"
        )
