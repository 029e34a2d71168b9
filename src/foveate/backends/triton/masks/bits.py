"""``BITS`` leaves: the mask of a partial block read from the layout's packed bitmask
(:mod:`foveate.bitmask`), for patterns without a kernel mask description.

Two forms give the same booleans: :func:`block` / :func:`block_t` load a tile's words once and
spread each word's bits over its 32 keys (the ``tl`` kernels); :func:`gathered_block` loads the
word of every element (``BITS_GATHERED`` leaves: the Gluon kernel, whose tensors carry explicit
layouts that a layout-free ``arange`` lacks; the loads hit the L1 cache).

``BITS`` (the kernels pass it to the block forms) points at the first word of the block's bits:
``BLOCK_Q`` rows of ``ceil(BLOCK_KV / 32)`` int32 words, bit ``c % 32`` of word ``c // 32`` of
row ``r`` for query ``r`` and key ``c`` of the layout block. The kernels' tiles may be parts of
a layout block: a tile's rows and keys are taken modulo the layout's blocks. Only partial blocks
have bits; full blocks are never masked.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import spec as S

_BLOCK_Q = tl.constexpr(S.BLOCK_Q)
_BLOCK_KV = tl.constexpr(S.BLOCK_KV)


@triton.jit
def words_per_block(MASK: tl.constexpr):
    """The int32 words of one layout block's bits."""
    return MASK[_BLOCK_Q] * ((MASK[_BLOCK_KV] + 31) // 32)


@triton.jit
def _expand(words, AXIS: tl.constexpr):
    """The bits of ``words`` along ``AXIS`` (``[M, NW]`` -> ``[M, 32 NW]``, ``AXIS=1``, or
    ``[NW, M]`` -> ``[32 NW, M]``, ``AXIS=0``), bit ``b`` of word ``w`` at ``32 w + b``."""
    shifts = tl.arange(0, 32)
    if AXIS == 1:
        M: tl.constexpr = words.shape[0]
        NW: tl.constexpr = words.shape[1]
        bits = (words[:, :, None] >> shifts[None, None, :]) & 1
        return tl.reshape(bits, [M, NW * 32]) != 0
    else:
        NW: tl.constexpr = words.shape[0]
        M: tl.constexpr = words.shape[1]
        bits = (words[:, None, :] >> shifts[None, :, None]) & 1
        return tl.reshape(bits, [NW * 32, M]) != 0


@triton.jit
def block(rows, start, offs, MASK: tl.constexpr, BITS):
    """Queries ``rows`` by keys ``start + offs``: ``[M, N]``."""
    WIDTH: tl.constexpr = (MASK[_BLOCK_KV] + 31) // 32
    N: tl.constexpr = offs.shape[0]
    r = rows % MASK[_BLOCK_Q]
    c0 = start % MASK[_BLOCK_KV]
    if N % 32 == 0:  # the tile's words, each spread to its 32 keys (loads of [M, N / 32] words)
        words = tl.load(BITS + r[:, None] * WIDTH + (c0 >> 5) + tl.arange(0, N // 32)[None, :])
        return _expand(words, 1)
    else:  # a tile inside one word
        c = c0 + offs
        word = tl.load(BITS + r[:, None] * WIDTH + (c >> 5)[None, :])
        return ((word >> (c & 31)[None, :]) & 1) != 0


@triton.jit
def block_t(start, offs, cols, MASK: tl.constexpr, BITS):
    """Queries ``start + offs`` by keys ``cols`` (consecutive, from a multiple of their number),
    transposed: ``[N, M]``."""
    WIDTH: tl.constexpr = (MASK[_BLOCK_KV] + 31) // 32
    N: tl.constexpr = cols.shape[0]
    r = start % MASK[_BLOCK_Q] + offs
    if N % 32 == 0:
        c0 = tl.min(cols, 0) % MASK[_BLOCK_KV]  # (loop-invariant in the dk/dv kernel: hoisted)
        words = tl.load(BITS + r[None, :] * WIDTH + (c0 >> 5) + tl.arange(0, N // 32)[:, None])
        return _expand(words, 0)
    else:
        c = cols % MASK[_BLOCK_KV]
        word = tl.load(BITS + r[None, :] * WIDTH + (c >> 5)[:, None])
        return ((word >> (c & 31)[:, None]) & 1) != 0


@triton.jit
def gathered_block(rows, start, offs, MASK: tl.constexpr, BITS):
    """:func:`block`, one word load per element."""
    WIDTH: tl.constexpr = (MASK[_BLOCK_KV] + 31) // 32
    r = rows % MASK[_BLOCK_Q]
    c = start % MASK[_BLOCK_KV] + offs
    word = tl.load(BITS + r[:, None] * WIDTH + (c >> 5)[None, :])
    return ((word >> (c & 31)[None, :]) & 1) != 0
