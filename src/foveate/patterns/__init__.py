"""Attention patterns: immutable, hashable descriptions of the allowed (query, key) pairs.

Each pattern's ``mask_mod(q_len, kv_len)`` is its one source of truth; ``build(...)``
compiles it to a :class:`~foveate.layout.BlockLayout`. Patterns compose with ``|`` and ``&``.
"""

from .base import MaskMod, Pattern
from .blocks import Blocks
from .causal import Causal
from .compose import Intersection, Union
from .dense import Dense
from .kernel_mask import KernelMask
from .mask import Mask
from .neighborhood import Neighborhood
from .content_selected import BlockTopK, BlockTopP, MoBA, XAttention
from .selected import SelectedBlocks
from .sinks import Sinks
from .sliding import SlidingWindow

__all__ = [
    "Pattern", "MaskMod", "KernelMask", "Blocks", "Dense", "Causal", "SlidingWindow", "Sinks", "Neighborhood",
    "Mask", "Union", "Intersection",
    "BlockTopK", "BlockTopP", "MoBA", "XAttention", "SelectedBlocks",
]
