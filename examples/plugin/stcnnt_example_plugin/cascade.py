"""A cascade of two U-Nets (as in cascaded refinement networks): the first U-Net reads
the input; the second (`refine.*`) reads the input concatenated with the first's output
and gives the model's output and features. Both share the section's keys (channels,
blocks, options, overrides by stage name)."""

from __future__ import annotations

from dataclasses import replace

from stcnnt_dsl.graph.model import Feature, ModelGraph
from stcnnt_dsl.graph.nodes import MergeNode, Node
from stcnnt_dsl.graph.topologies import Entry
from stcnnt_dsl.graph.topologies.unet import build_unet
from stcnnt_dsl.language.spec import SpecSource, UNetSpec

__all__ = ["CascadeSpec", "build_cascade"]

PREFIX = "refine."


class CascadeSpec(UNetSpec):
    """The keys of a U-Net; the cascade runs two of them."""


def _renamed(node: Node, keep: frozenset[str]) -> Node:
    inputs = tuple(i if i in keep else PREFIX + i for i in node.inputs)
    return replace(node, name=PREFIX + node.name, inputs=inputs)


def build_cascade(source: SpecSource, entry: Entry) -> ModelGraph:
    first = build_unet(source, entry)
    cat = MergeNode(
        name="cat:refine", inputs=(entry.name, first.output),
        out_channels=entry.channels + first.out_channels, scale=1, label="concat",
        op="cat",
    )  # fmt: skip
    second = build_unet(source, Entry(cat.name, cat.out_channels))
    keep = frozenset({cat.name})
    nodes = (*first.nodes, cat, *(_renamed(n, keep) for n in second.nodes))
    features = tuple(Feature(PREFIX + f.name, f.channels, f.reduction) for f in second.features)
    return ModelGraph(
        source, nodes, PREFIX + second.output, features, first.in_channels,
        second.out_channels,
    )  # fmt: skip
