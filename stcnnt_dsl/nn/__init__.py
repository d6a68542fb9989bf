"""The ST-CNNT layer library: attentions, norms, cells and blocks over [B, T, C, H, W]."""

from .attention import SpatialAttention, TemporalAttention
from .block import Block
from .cells import AttentionCell, ConvCell, DropPath, Mixer, make_cell
from .norms import Norm5d

__all__ = [
    "AttentionCell",
    "Block",
    "ConvCell",
    "DropPath",
    "Mixer",
    "Norm5d",
    "SpatialAttention",
    "TemporalAttention",
    "make_cell",
]
