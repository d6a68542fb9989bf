"""`build_graph`: from anything `load_spec` accepts to a checked `ModelGraph`."""

from __future__ import annotations

from typing import Any

from ..errors import SpecError
from ..language.spec import SpecSource, load_source
from .model import ModelGraph
from .resolve import check_causal, check_options_read
from .topologies import TOPOLOGIES

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
        graph = TOPOLOGIES[located.spec.topology].build(located)
        plans = graph.block_plans()
        check_options_read(plans)
        check_causal(plans)
    except SpecError as err:
        raise located.locate(err, key=err.reason.startswith("option ")) from None
    return graph
