"""``SEGMENT`` leaves: masks by per-token segment ids read from memory (documents, segment
rule tables), the one kind whose parameters are partly a tensor.

``IDS`` (the kernels' ``BITS`` argument, moved to the batch element's row by the kernels when
the spec's ``HAS_IDS`` is set) points at :meth:`foveate.patterns.kernel_mask.TokenIds.operand`:
query ids from 0, key ids from ``KV_START``, the rule table from ``TABLE_START``: one int32
word per query segment ``a`` (``N_SEG <= 16``), bit ``b`` set when ``rules[a][b]`` is full
and bit ``16 + b`` when it is causal (``j <= i + OFFSET``). Past each end of the ids lie
padding ids (-1 for queries, -2 for keys) that match nothing, so the loads need no bounds.
Without a table (``N_SEG == 0``) a key is allowed when its id equals the query's. A tile costs
one id load per query and per key and one table word per query (L1 hits), then two bit tests
per element: no per-element gather or integer tile, which would cost the warp-specialized
forward its registers (a spill the offline compile test catches). Only partial blocks evaluate it.

Leaf fields (after the kind): ``OFFSET, KV_START, TABLE_START, N_SEG``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _allowed(id_q, code_q, id_k, q, k, MASK: tl.constexpr, LEAF: tl.constexpr):
    """The mask of (broadcasting) ids ``id_q``, ``id_k`` of query and key positions ``q``, ``k``
    (``code_q``: the packed table row of each query's segment)."""
    if MASK[LEAF + 4] == 0:
        return id_q == id_k
    else:
        bit = tl.where(id_k >= 0, 1 << id_k, 0)  # (one bit per key segment; none for padding)
        full = (code_q & bit) != 0
        causal = ((code_q >> 16) & bit) != 0
        return full | (causal & (k <= q + MASK[LEAF + 1]))


@triton.jit
def _codes(IDS, id_q, MASK: tl.constexpr, LEAF: tl.constexpr):
    """The packed table row of each query's segment (a gather of one word per query)."""
    if MASK[LEAF + 4] == 0:
        return id_q
    else:
        return tl.load(IDS + MASK[LEAF + 3] + tl.maximum(id_q, 0))


@triton.jit
def block(rows, start, offs, MASK: tl.constexpr, LEAF: tl.constexpr, IDS):
    """Queries ``rows`` by keys ``start + offs``: ``[M, N]``."""
    cols = start + offs
    id_q = tl.load(IDS + rows)
    id_k = tl.load(IDS + MASK[LEAF + 2] + cols)
    code = _codes(IDS, id_q, MASK, LEAF)
    return _allowed(id_q[:, None], code[:, None], id_k[None, :], rows[:, None], cols[None, :], MASK, LEAF)


@triton.jit
def block_t(start, offs, cols, MASK: tl.constexpr, LEAF: tl.constexpr, IDS):
    """Queries ``start + offs`` by keys ``cols``, transposed: ``[N, M]``."""
    rows = start + offs
    id_q = tl.load(IDS + rows)
    id_k = tl.load(IDS + MASK[LEAF + 2] + cols)
    code = _codes(IDS, id_q, MASK, LEAF)
    return _allowed(id_q[None, :], code[None, :], id_k[:, None], rows[None, :], cols[:, None], MASK, LEAF)
