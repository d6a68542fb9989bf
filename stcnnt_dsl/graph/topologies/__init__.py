"""The topology registry: a topology is a spec section (`unet:`, `hrnet:`, `llm:`,
validated by its pydantic model in `stcnnt_dsl.language.spec`) and a builder from a
spec to a `ModelGraph`. Everything downstream (modules, checks, costs, diagrams) works
from the graph, so a new topology is one builder module plus its entry here (and its
spec model)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...language.spec import HRNetSpec, LLMSpec, MixedUNetrSpec, SpecSource, UNetSpec
from ..model import ModelGraph
from .common import Entry
from .hrnet import build_hrnet
from .llm import build_llm
from .mixed_unetr import build_mixed_unetr
from .unet import build_unet

__all__ = ["TOPOLOGIES", "Entry", "Topology", "register_topology"]


@dataclass(frozen=True)
class Topology:
    name: str
    spec: type
    build: Callable[[SpecSource, Entry], ModelGraph]
    description: str


TOPOLOGIES: dict[str, Topology] = {}


def register_topology(topology: Topology) -> None:
    """Add (or replace) a topology builder."""
    TOPOLOGIES[topology.name] = topology


for _topology in (
    Topology("unet", UNetSpec, build_unet, "encoder levels, a bridge, gated decoder levels"),
    Topology("hrnet", HRNetSpec, build_hrnet, "parallel resolution levels with exchanges"),
    Topology("llm", LLMSpec, build_llm, "a stack of blocks with dense skips"),
    Topology(
        "mixed_unetr",
        MixedUNetrSpec,
        build_mixed_unetr,
        "ST-CNNT encoder levels and bridge, convolutional skips and decoder",
    ),
):
    register_topology(_topology)
