"""An stcnnt-dsl plugin made only of public calls: it adds kinds without touching
stcnnt_dsl. Installed (`pip install examples/plugin`), its entry point in the group
`stcnnt_dsl.plugins` calls `register()` on first use of a registry."""

from __future__ import annotations

from stcnnt_dsl import Topology, register_topology

from .cascade import CascadeSpec, build_cascade

__all__ = ["register"]


def register() -> None:
    """Register the example's kinds (safe to call more than once)."""
    register_topology(
        Topology(
            "cascade", CascadeSpec, build_cascade,
            "two U-Nets in cascade: the second reads the input and the first's output",
            ("encoder.{i}", "bridge", "decoder.{i}", "refine.encoder.{i}", "refine.bridge",
             "refine.decoder.{i}"),
        )
    )  # fmt: skip
