"""A whole model: a backbone with task heads (the spec's `heads:`).

`forward(x)` returns one output per head, by name: segmentation [B, T, classes, H, W],
classification [B, classes] (or [B, T, classes] per frame), enhancement
[B, T, out_channels, H, W], in the model's layout. The modules sit where the reference
implementation's whole models keep them: `backbone.*` and `heads.<name>.*`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..graph.heads import HeadNode
from ..graph.model import ModelGraph
from ..language.spec import ArchSpec
from ..nn.axes import from_btchw
from ..registry import resolve_ref
from .backbone import Backbone

__all__ = ["Model", "head_module", "model_of"]


def head_module(node: HeadNode) -> nn.Module:
    """The torch module of a head node."""
    return resolve_ref(node.descriptor.module)(**node.args)


class Model(nn.Module):
    """A backbone with task heads: `.backbone` (a `Backbone`), `.heads` (a `ModuleDict`
    by head name), `.spec`, `.graph`; `forward(x) -> dict[name, Tensor]`."""

    def __init__(self, graph: ModelGraph, layout: str = "BTCHW") -> None:
        super().__init__()
        self.graph = graph
        self.spec: ArchSpec = graph.spec
        self.backbone = Backbone(graph, layout)
        self.layout = self.backbone.layout
        self.heads = nn.ModuleDict({h.head_name: head_module(h) for h in graph.heads})

    @property
    def in_channels(self) -> int:
        return self.backbone.in_channels

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """The backbone's features, with module names in this model (`backbone.*`)."""
        return [{**f, "module": f"backbone.{f['module']}"} for f in self.backbone.feature_info]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x, output, features = self.backbone.forward_all(x)
        return {
            name: from_btchw(head(x, output, features), self.layout)
            for name, head in self.heads.items()
        }

    def no_weight_decay(self) -> set[str]:
        """The backbone's (bias tables, norms, biases) and the heads' norms and biases."""
        names = {f"backbone.{n}" for n in self.backbone.no_weight_decay()}
        for name, param in self.heads.named_parameters():
            if param.ndim <= 1 or ".norm" in name:
                names.add(f"heads.{name}")
        return names

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, heads={list(self.heads)}"


def model_of(graph: ModelGraph, layout: str = "BTCHW") -> Backbone | Model:
    """The module of a graph: a `Model` when it has heads, else a `Backbone`."""
    return Model(graph, layout) if graph.heads else Backbone(graph, layout)
