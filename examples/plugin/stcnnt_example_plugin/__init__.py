"""An stcnnt-dsl plugin made only of public calls: it adds a topology (a cascade of two
U-Nets), a cell kind (a ConvNeXt-style mixer, letter N) and a head decoder (a per-pixel
MLP) without touching stcnnt_dsl. Installed (`pip install examples/plugin`), its entry
point in the group `stcnnt_dsl.plugins` calls `register()` on first use of a registry."""

from __future__ import annotations

from stcnnt_dsl import Topology, register_cell, register_head, register_topology

from .cascade import CascadeSpec, build_cascade
from .convnext import CELL
from .mlp_head import DECODER

__all__ = ["register"]


def register() -> None:
    """Register the example's kinds (safe to call more than once)."""
    register_cell(CELL)
    register_head(DECODER)
    register_topology(
        Topology(
            "cascade", CascadeSpec, build_cascade,
            "two U-Nets in cascade: the second reads the input and the first's output",
            ("encoder.{i}", "bridge", "decoder.{i}", "refine.encoder.{i}", "refine.bridge",
             "refine.decoder.{i}"),
            "cascade(channels=[8, 16], blocks=T1L1G1, window=4, patch=2)",
        )
    )  # fmt: skip
