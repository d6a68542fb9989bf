"""The built-in topologies, registered through `register_topology` like a user's: each
is a spec section (`unet:`, `hrnet:`, `llm:`, validated by its pydantic model in
`stcnnt_dsl.language.topology_specs`) and a builder from a spec to a `ModelGraph`.
Everything downstream (modules, checks, costs, diagrams) works from the graph."""

from __future__ import annotations

from ...language.spec import HRNetSpec, LLMSpec, MixedUNetrSpec, UNetSpec
from ...registry import TOPOLOGIES, Topology, register_topology
from .common import Entry
from .hrnet import build_hrnet
from .llm import build_llm
from .mixed_unetr import build_mixed_unetr
from .unet import build_unet

__all__ = ["TOPOLOGIES", "Entry", "Topology", "register_topology"]

register_topology(
    Topology(
        "unet", UNetSpec, build_unet, "encoder levels, a bridge, gated decoder levels",
        ("encoder.{i}", "bridge", "decoder.{i}"),
        "unet(channels=[8, 16], blocks=T1L1G1, window=4, patch=2)",
    )
)  # fmt: skip
register_topology(
    Topology(
        "hrnet", HRNetSpec, build_hrnet, "parallel resolution levels with exchanges",
        ("level{i}.stage{j}", "level{i}.output"),
        "hrnet(channels=[8, 16], blocks=T1L1G1, window=4, patch=2)",
    )
)  # fmt: skip
register_topology(
    Topology(
        "llm",
        LLMSpec,
        build_llm,
        "a stack of blocks with dense skips",
        ("blocks.{k}",),
        "llm(channels=8, blocks=[T1L1G1, V1C2], window=4, patch=2)",
    )
)
register_topology(
    Topology(
        "mixed_unetr", MixedUNetrSpec, build_mixed_unetr,
        "ST-CNNT encoder levels and bridge, convolutional skip units and decoder",
        ("encoder.{i}", "bridge"),
        "mixed_unetr(channels=[8, 16], blocks=T1L1G1, window=4, patch=2)",
    )
)  # fmt: skip
