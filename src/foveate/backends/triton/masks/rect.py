"""``RECT`` leaves: queries in ``[Q_START, Q_END)`` with keys in ``[KV_START, KV_END)``
(positions in the kernels' order; sinks, prefixes, global tokens).

Leaf fields (after the kind): ``Q_START, Q_END, KV_START, KV_END``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import below_width


@triton.jit
def _inside(x, START: tl.constexpr, END: tl.constexpr):
    return below_width(x - START, END - START)


@triton.jit
def allowed(q, k, MASK: tl.constexpr, LEAF: tl.constexpr):
    """The mask of query positions ``q`` and key positions ``k`` (broadcasting tensors)."""
    return _inside(q, MASK[LEAF + 1], MASK[LEAF + 2]) & _inside(k, MASK[LEAF + 3], MASK[LEAF + 4])


@triton.jit
def block(rows, start, offs, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``rows`` by keys ``start + offs``: ``[M, N]``."""
    keys = _inside(start + offs, MASK[LEAF + 3], MASK[LEAF + 4])
    return _inside(rows, MASK[LEAF + 1], MASK[LEAF + 2])[:, None] & keys[None, :]


@triton.jit
def block_t(start, offs, cols, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``start + offs`` by keys ``cols``, transposed: ``[N, M]``."""
    queries = _inside(start + offs, MASK[LEAF + 1], MASK[LEAF + 2])
    return _inside(cols, MASK[LEAF + 3], MASK[LEAF + 4])[:, None] & queries[None, :]
