"""The ST-CNNT layer library: attentions, norms, cells, blocks, resampling and heads over
[B, T, C, H, W] tensors.

The layers (attention, cells, norms, sampling, functional) are plain torch modules whose
sizes come resolved from the model graph's cell geometry; `Block` builds a stack of cells
from a block string for use in any network."""

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
