"""``POWER`` leaves: PowerAttention's rule between blocks of ``BLOCK`` positions. With ``d = p //
BLOCK - j // BLOCK`` (``p = i + OFFSET``), key ``j`` allowed for query ``i`` when ``d >= 0`` and
(``j // BLOCK < SINK``, or ``d < WINDOW``, or ``d`` is a power of two). Causality inside a block
is a separate band leaf of the same description.

Leaf fields (after the kind): ``OFFSET, BLOCK, WINDOW, SINK``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _rule(qb, kb, WINDOW: tl.constexpr, SINK: tl.constexpr):
    """Query blocks ``qb`` against key blocks ``kb`` (broadcasting; ``qb < 0`` for queries before
    the keys' start reaches nothing)."""
    d = qb - kb
    return (d >= 0) & (qb >= 0) & ((kb < SINK) | (d < WINDOW) | ((d > 0) & ((d & (d - 1)) == 0)))


@triton.jit
def _query_block(p, BLOCK: tl.constexpr):
    return tl.where(p >= 0, p // BLOCK, -1)


@triton.jit
def block(rows, start, offs, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``rows`` by keys ``start + offs``: ``[M, N]``."""
    BLOCK: tl.constexpr = MASK[LEAF + 2]
    qb = _query_block(rows + MASK[LEAF + 1], BLOCK)
    kb = (start + offs) // BLOCK
    return _rule(qb[:, None], kb[None, :], MASK[LEAF + 3], MASK[LEAF + 4])


@triton.jit
def block_t(start, offs, cols, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``start + offs`` by keys ``cols``, transposed: ``[N, M]``."""
    BLOCK: tl.constexpr = MASK[LEAF + 2]
    qb = _query_block(start + offs + MASK[LEAF + 1], BLOCK)
    kb = cols // BLOCK
    return _rule(qb[None, :], kb[:, None], MASK[LEAF + 3], MASK[LEAF + 4])
