"""The model graph: one description of a model, built once from a spec, that every part
of the library reads (see `stcnnt_dsl.graph.model`). No torch here.

`build_graph(source)` loads a spec (anything `load_spec` accepts), builds the graph with
the topology's builder, and runs the checks that need the whole model (options that no
cell reads, causal attention next to frame-mixing layers), with every error located in
the source text.
"""

from __future__ import annotations

from .build import build_graph
from .guard import ResourceEstimate, estimate, guard, limits
from .model import Feature, Layout, ModelGraph, describe_rule, parse_shape
from .nodes import INPUT, BlockNode, GateNode, MergeNode, Node, ResampleNode
from .resolve import BlockPlan, Layer
from .shapes import Accepts, accepts, check, infer_shapes
from .topologies import TOPOLOGIES, Topology, register_topology

__all__ = [
    "INPUT",
    "TOPOLOGIES",
    "Accepts",
    "BlockNode",
    "BlockPlan",
    "Feature",
    "GateNode",
    "Layer",
    "Layout",
    "MergeNode",
    "ModelGraph",
    "Node",
    "ResampleNode",
    "ResourceEstimate",
    "Topology",
    "accepts",
    "build_graph",
    "check",
    "describe_rule",
    "estimate",
    "guard",
    "infer_shapes",
    "limits",
    "parse_shape",
    "register_topology",
]
