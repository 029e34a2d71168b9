"""Attention patterns: immutable, hashable descriptions of the allowed (query, key) pairs.

Each pattern's ``mask_mod(q_len, kv_len)`` is its one source of truth; ``build(...)``
compiles it to a :class:`~foveate.layout.BlockLayout`. Patterns compose with ``|`` and ``&``.
"""

from .base import MaskMod, Pattern
from .blocks import Blocks
from .causal import Causal
from .chunked import ChunkCausal
from .circular import Circular
from .compose import Intersection, Union
from .cross_scale import CrossScale
from .dense import Dense
from .halo import Halo
from .documents import Documents
from .kernel_mask import KernelMask
from .mask import Mask
from .neighborhood import Neighborhood
from .per_head import PerHead
from .power import PowerAttention
from .prefix import Global, PrefixLM
from .radial import Radial
from .content_selected import BlockTopK, BlockTopP, MoBA, XAttention
from .segments import Segments
from .selected import SelectedBlocks
from .sinks import Sinks
from .sliding import SlidingWindow
from .strided_heads import StridedHeads
from .tile_neighborhood import TileNeighborhood
from .windows import Axial, Grid, Windows
from .with_text import WithText

__all__ = [
    "Pattern", "MaskMod", "KernelMask", "Blocks", "Dense", "Causal", "SlidingWindow", "Sinks", "Neighborhood",
    "Documents", "Segments", "PrefixLM", "Global", "ChunkCausal", "PowerAttention", "StridedHeads", "PerHead",
    "Windows", "Axial", "Grid", "Halo", "TileNeighborhood", "Circular", "CrossScale", "Radial", "WithText",
    "Mask", "Union", "Intersection",
    "BlockTopK", "BlockTopP", "MoBA", "XAttention", "SelectedBlocks",
]
