"""`build_graph`: from anything `load_spec` accepts to a checked `ModelGraph`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import SpecError
from ..language.spec import SpecSource, load_source
from .heads import head_node
from .model import ModelGraph
from .nodes import INPUT
from .resolve import check_causal, check_options_read
from .topologies import TOPOLOGIES
from .topologies.common import Entry, Stage, stage_layers

__all__ = ["build_graph"]


def build_graph(source: Any, *, read_files: bool = True) -> ModelGraph:
    """The model graph of anything `load_spec` accepts (or a `ModelGraph`, returned as
    is). `read_files=False`: text is never read as a path."""
    if isinstance(source, ModelGraph):
        return source
    located = (
        source if isinstance(source, SpecSource) else load_source(source, read_files=read_files)
    )
    try:
        graph = _build(located)
        plans = graph.block_plans()
        check_options_read(plans)
        check_causal(plans)
    except SpecError as err:
        raise located.locate(err, key=err.reason.startswith("option ")) from None
    return graph


def _build(source: SpecSource) -> ModelGraph:
    """The topology's graph, with the stem (`pre:`) before it and the heads after it."""
    spec = source.spec
    entry, pre = Entry(INPUT, spec.in_channels), None
    if spec.pre is not None:
        stage = Stage(
            name="pre", label="stem", path="pre", block=spec.pre.blocks, block_path="pre.blocks",
            in_channels=spec.in_channels, out_channels=spec.pre.channels, scale=1,
            layers=stage_layers(source, spec.pre, "pre", 1), meta={},
        )  # fmt: skip
        pre = stage.node(source, [INPUT])
        entry = Entry(pre.name, pre.out_channels)
    graph = TOPOLOGIES[spec.topology].build(source, entry)
    if pre is not None:
        graph = replace(graph, nodes=(pre, *graph.nodes))
    if spec.heads:
        heads = tuple(
            head_node(
                name,
                head,
                output=graph.output,
                out_channels=graph.out_channels,
                features=graph.features,
                in_channels=spec.in_channels,
            )
            for name, head in spec.heads.items()
        )
        graph = replace(graph, heads=heads)
    return graph
