"""The ST-CNNT layer library: attentions, norms, cells, resampling and heads over
[B, T, C, H, W] tensors, built from plain arguments (sizes come resolved; the
translation from the model graph lives in `stcnnt_dsl.models.cells`).

`Block` builds a stack of cells from a block string for use in any network. It reads
the language, so it is defined above this package (`stcnnt_dsl.models.block`) and
named here on first use; nothing else in `stcnnt_dsl.nn` imports the language or the
graph (tests/test_layout.py)."""

from typing import Any

from .._lazy import load
from .activations import make_activation
from .attention import SpatialAttention, TemporalAttention
from .cells import AttentionCell, ConvCell, DropPath, Mixer
from .norms import Norm5d
from .stack import CellStack

__all__ = [
    "AttentionCell",
    "Block",
    "CellStack",
    "ConvCell",
    "DropPath",
    "Mixer",
    "Norm5d",
    "SpatialAttention",
    "TemporalAttention",
    "make_activation",
]


def __getattr__(name: str) -> Any:
    return load(__name__, name, globals())  # `Block` (see above)


def __dir__() -> list[str]:
    return sorted(__all__)
