"""``BAND`` leaves: key ``j`` allowed for query ``i`` when ``p - LEFT <= j <= p + RIGHT``,
``p = i + OFFSET`` (a side may be unbounded: ``HAS_LEFT`` / ``HAS_RIGHT``). Dense, causal and
sliding-window masks; positions in the kernels' order.

Leaf fields (after the kind): ``OFFSET, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT``. The block forms
cost one subtraction and one unsigned comparison per element (``common.below_width``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import below_width


@triton.jit
def allowed(q, k, MASK: tl.constexpr, LEAF: tl.constexpr):
    """The mask of query positions ``q`` and key positions ``k`` (broadcasting tensors)."""
    OFFSET: tl.constexpr = MASK[LEAF + 1]
    LEFT: tl.constexpr = MASK[LEAF + 2]
    RIGHT: tl.constexpr = MASK[LEAF + 3]
    p = q + OFFSET
    ok = (k >= 0) & (q >= 0)
    if MASK[LEAF + 4]:
        ok = ok & (k >= p - LEFT)
    if MASK[LEAF + 5]:
        ok = ok & (k <= p + RIGHT)
    return ok


@triton.jit
def block(rows, start, offs, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``rows`` by keys ``start + offs``: ``[M, N]``."""
    OFFSET: tl.constexpr = MASK[LEAF + 1]
    LEFT: tl.constexpr = MASK[LEAF + 2]
    RIGHT: tl.constexpr = MASK[LEAF + 3]
    p = rows + (OFFSET - start)  # the query's position, relative to the block's first key
    if MASK[LEAF + 4] and MASK[LEAF + 5]:
        return below_width(offs[None, :] - (p - LEFT)[:, None], LEFT + RIGHT + 1)
    elif MASK[LEAF + 5]:
        return offs[None, :] <= (p + RIGHT)[:, None]
    elif MASK[LEAF + 4]:
        return offs[None, :] >= (p - LEFT)[:, None]
    else:
        return (offs[None, :] >= 0) & (rows[:, None] >= 0)


@triton.jit
def block_t(start, offs, cols, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``start + offs`` by keys ``cols``, transposed: ``[N, M]``."""
    OFFSET: tl.constexpr = MASK[LEAF + 1]
    LEFT: tl.constexpr = MASK[LEAF + 2]
    RIGHT: tl.constexpr = MASK[LEAF + 3]
    rel = cols - (OFFSET + start)  # key - (first query's position): allowed iff -LEFT <= rel - offs <= RIGHT
    if MASK[LEAF + 4] and MASK[LEAF + 5]:
        return below_width((rel + LEFT)[:, None] - offs[None, :], LEFT + RIGHT + 1)
    elif MASK[LEAF + 5]:
        return offs[None, :] >= (rel - RIGHT)[:, None]
    elif MASK[LEAF + 4]:
        return offs[None, :] <= (rel + LEFT)[:, None]
    else:
        return (offs[None, :] >= 0) & (cols[:, None] >= 0)
