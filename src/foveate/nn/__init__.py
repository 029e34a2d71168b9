"""Modules and functions that put foveate attention into models.

* :class:`NeighborhoodAttention1D` / ``2D`` / ``3D``: NATTEN 0.21's modules (same arguments,
  parameters and shapes; its state dicts load unchanged), on foveate's kernels;
* :class:`SelfAttention`: the same projections around any pattern, with optional global
  (class, register or text) tokens;
* :func:`joint_attention`: a pattern over the canvas tokens plus global tokens, as a function.
"""

from .attention import SelfAttention
from .joint import joint_attention
from .natten import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D

__all__ = ["joint_attention", "SelfAttention", "NeighborhoodAttention1D", "NeighborhoodAttention2D",
           "NeighborhoodAttention3D"]
