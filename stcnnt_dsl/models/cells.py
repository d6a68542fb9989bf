"""From the model graph's cell geometry to the layer library's arguments: the one place
where a resolved cell (`stcnnt_dsl.graph.geometry`) becomes a torch module.

The layers (`stcnnt_dsl.nn`) take plain arguments and know nothing of the graph; a cell
kind's descriptor names the factory that builds its module from its geometry
(`CellKind.module`), and the built-in kinds' factory is `builtin_cell`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from ..nn.cells import AttentionCell, ConvCell
from ..registry import CELLS, TEMPORAL, on_register, resolve_ref

__all__ = ["builtin_cell", "make_cell"]


def make_cell(geom: Any) -> nn.Module:
    """The module of a cell geometry (`stcnnt_dsl.graph.geometry.cell_geometry`), by its
    kind's registered factory."""
    return _factory(geom.kind)(geom)


@functools.cache
def _factory(kind: str) -> Callable[[Any], nn.Module]:
    """A kind's module factory, resolved once per kind (a `"package.module:Name"`
    string is imported on first use; registering a kind forgets them)."""
    return resolve_ref(CELLS[kind].module)


on_register("cell", lambda name, cell: _factory.cache_clear())


def builtin_cell(geom: Any) -> nn.Module:
    """The module of a built-in cell kind (L, G, T, V, C2, C3)."""
    o = geom.options
    common = dict(
        norm=o.norm, activation=o.activation, drop_path=o.drop_path, padding=o.padding,
        proj_kernel=o.proj_kernel, input_size=geom.input_size,
    )  # fmt: skip
    if geom.family == "conv":
        return ConvCell(geom.kind, geom.in_channels, geom.out_channels, **common)
    if geom.kind == TEMPORAL:
        placement = dict(causal=o.causal, qk_stride=o.qk_stride)
    else:
        placement = dict(
            window=geom.window, patch=geom.patch, grid=geom.grid,
            bias_extent=geom.bias_extent, rel_pos_bias=o.rel_pos_bias,
        )  # fmt: skip
    return AttentionCell(
        geom.kind, geom.in_channels, geom.out_channels, heads=geom.heads, qkv=o.qkv,
        qkv_kernel=o.qkv_kernel, cosine=o.cosine, qk_norm=o.qk_norm,
        att_dropout=o.att_dropout, out_proj=o.out_proj, hidden=geom.hidden,
        parallel=geom.parallel, mixer_kernel=o.mixer_kernel, dropout=o.dropout,
        **common, **placement,
    )  # fmt: skip
