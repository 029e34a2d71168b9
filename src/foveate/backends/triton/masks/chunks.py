"""``CHUNKS`` leaves: chunk-causal masks, key ``j`` allowed for query ``i`` when ``p >= 0`` and
``j // SIZE <= p // SIZE``, ``p = i + OFFSET`` (the key's chunk is not after the query's).

Leaf fields (after the kind): ``OFFSET, SIZE``. Positions are non-negative but for ``p`` (a
query before the keys' start under bottom-right alignment), checked apart: Triton's integer
division truncates toward zero.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _last_key(p, SIZE: tl.constexpr):
    """The last key a query at position ``p`` reaches (-1 for ``p < 0``)."""
    return tl.where(p >= 0, (p // SIZE + 1) * SIZE - 1, -1)


@triton.jit
def block(rows, start, offs, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``rows`` by keys ``start + offs``: ``[M, N]``."""
    last = _last_key(rows + MASK[LEAF + 1], MASK[LEAF + 2]) - start
    return offs[None, :] <= last[:, None]


@triton.jit
def block_t(start, offs, cols, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``start + offs`` by keys ``cols``, transposed: ``[N, M]``."""
    last = _last_key(start + offs + MASK[LEAF + 1], MASK[LEAF + 2])
    return cols[:, None] <= last[None, :]
