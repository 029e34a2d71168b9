"""Modules and functions that put foveate attention into models.

* :class:`NeighborhoodAttention1D` / ``2D`` / ``3D``: NATTEN 0.21's modules (same arguments,
  parameters and shapes; its state dicts load unchanged), on foveate's kernels;
* :class:`SelfAttention`: the same projections around any pattern, with optional global
  (class, register or text) tokens;
* :func:`joint_attention`: a pattern over the canvas tokens plus global tokens, as a function;
* :class:`LinearAttention`: the same projections around a :mod:`foveate.linear` method
  (``"decayed"``, ``"gated_delta"``, ``"based"``), with a state for chunked prefill and
  one-token decoding;
* :class:`HybridAttention` (state :class:`HybridState`): per-head hybrid, some heads sparse
  softmax attention through a pattern, the others linear, in one call;
* :func:`hybrid_schedule`, :func:`hybrid_stack`: per-layer hybrids, the layers' kinds from a
  cycle such as ``"LLLS"`` and a stack of modules built from them.
"""

from .attention import SelfAttention
from .hybrid import HybridAttention
from .joint import joint_attention
from .linear_attention import LinearAttention
from .mixed_heads import HybridState
from .natten import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from .schedule import hybrid_schedule, hybrid_stack

__all__ = ["joint_attention", "SelfAttention", "NeighborhoodAttention1D", "NeighborhoodAttention2D",
           "NeighborhoodAttention3D", "LinearAttention", "HybridAttention", "HybridState", "hybrid_schedule",
           "hybrid_stack"]
