"""Masks inside the Triton kernels: a pattern's mask on a partial block as coordinate
arithmetic, never an ``Nq x Nkv`` tensor.

Host side: :mod:`.lower` turns a pattern's kernel mask description
(:meth:`Pattern.kernel_mask <foveate.patterns.Pattern.kernel_mask>`) into a :class:`MaskSpec`
(:mod:`.spec`), a flat tuple of ints the kernels take as the compile-time argument ``MASK``.
Kernel side, one module per kind of leaf (:mod:`.band`, :mod:`.rect`, :mod:`.chunks`,
:mod:`.power`, :mod:`.segment`, :mod:`.window`, :mod:`.frames`, :mod:`.group_window`,
:mod:`.bits`) and :mod:`.order` (coordinates and memory rows of positions); this module
combines the leaves by the spec's register program (:func:`allowed_block`,
:func:`allowed_block_t`: the forms the kernels' loops call). A new kind of mask is a node in
:mod:`foveate.patterns.kernel_mask`, its lowering in :mod:`.lower` and one predicate module.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import band, bits, chunks, frames, group_window, power, rect, segment, window
from . import spec as S
from .lower import eager_mask_spec, lower, mask_ids, mask_spec
from .order import tile_rows, token_rows
from .spec import MaskSpec

_N_LEAVES = tl.constexpr(S.N_LEAVES)
_N_OPS = tl.constexpr(S.N_OPS)
_LEAVES = tl.constexpr(S.LEAVES)
_LEAF_WIDTH = tl.constexpr(S.LEAF_WIDTH)
_OP_WIDTH = tl.constexpr(S.OP_WIDTH)
_BAND = tl.constexpr(S.BAND)
_RECT = tl.constexpr(S.RECT)
_WINDOW = tl.constexpr(S.WINDOW)
_BITS = tl.constexpr(S.BITS)
_CHUNKS = tl.constexpr(S.CHUNKS)
_POWER = tl.constexpr(S.POWER)
_SEGMENT = tl.constexpr(S.SEGMENT)
_FRAMES = tl.constexpr(S.FRAMES)
_GROUP_WINDOW = tl.constexpr(S.GROUP_WINDOW)
_LEAF = tl.constexpr(S.LEAF)
_OR = tl.constexpr(S.OR)
_AND = tl.constexpr(S.AND)
_BLOCK_Q = tl.constexpr(S.BLOCK_Q)
_BLOCK_KV = tl.constexpr(S.BLOCK_KV)
#: ``MASK[HAS_BITS]``: whether the kernels must find each partial block's bits.
HAS_BITS = tl.constexpr(S.HAS_BITS)
#: ``MASK[HAS_IDS]``: whether the kernels' ``BITS`` argument holds per-token segment ids (moved
#: to the batch element's row by the kernels).
HAS_IDS = tl.constexpr(S.HAS_IDS)


@triton.jit
def _leaf(fixed, start, offs, MASK: tl.constexpr, LEAF: tl.constexpr, BITS, TRANSPOSED: tl.constexpr):
    """The leaf at ``LEAF`` on a block (:func:`allowed_block`, or transposed: :func:`allowed_block_t`).
    ``BITS``: the block's bits (``BITS`` leaves) or the batch element's ids (``SEGMENT`` leaves)."""
    KIND: tl.constexpr = MASK[LEAF]
    if TRANSPOSED:
        if KIND == _BAND:
            return band.block_t(start, offs, fixed, MASK, LEAF)
        elif KIND == _RECT:
            return rect.block_t(start, offs, fixed, MASK, LEAF)
        elif KIND == _CHUNKS:
            return chunks.block_t(start, offs, fixed, MASK, LEAF)
        elif KIND == _POWER:
            return power.block_t(start, offs, fixed, MASK, LEAF)
        elif KIND == _SEGMENT:
            return segment.block_t(start, offs, fixed, MASK, LEAF, BITS)
        elif KIND == _WINDOW:
            return window.block_t(start, offs, fixed, MASK, LEAF)
        elif KIND == _FRAMES:
            return frames.block_t(start, offs, fixed, MASK, LEAF)
        elif KIND == _GROUP_WINDOW:
            return group_window.block_t(start, offs, fixed, MASK, LEAF)
        else:  # (the Gluon kernel, which reads BITS_GATHERED leaves, has no dk/dv)
            return bits.block_t(start, offs, fixed, MASK, BITS)
    else:
        if KIND == _BAND:
            return band.block(fixed, start, offs, MASK, LEAF)
        elif KIND == _RECT:
            return rect.block(fixed, start, offs, MASK, LEAF)
        elif KIND == _CHUNKS:
            return chunks.block(fixed, start, offs, MASK, LEAF)
        elif KIND == _POWER:
            return power.block(fixed, start, offs, MASK, LEAF)
        elif KIND == _SEGMENT:
            return segment.block(fixed, start, offs, MASK, LEAF, BITS)
        elif KIND == _WINDOW:
            return window.block(fixed, start, offs, MASK, LEAF)
        elif KIND == _FRAMES:
            return frames.block(fixed, start, offs, MASK, LEAF)
        elif KIND == _GROUP_WINDOW:
            return group_window.block(fixed, start, offs, MASK, LEAF)
        elif KIND == _BITS:
            return bits.block(fixed, start, offs, MASK, BITS)
        else:  # BITS_GATHERED
            return bits.gathered_block(fixed, start, offs, MASK, BITS)


@triton.jit
def _register(r0, r1, r2, r3, I: tl.constexpr):
    if I == 0:
        return r0
    elif I == 1:
        return r1
    elif I == 2:
        return r2
    else:
        return r3


@triton.jit
def _run(r0, r1, r2, r3, val, MASK: tl.constexpr, OP: tl.constexpr):
    """Registers after op ``OP`` (an index into the ops) with ``val`` its leaf's mask (for a
    ``LEAF`` op)."""
    OPS: tl.constexpr = _LEAVES + MASK[_N_LEAVES] * _LEAF_WIDTH + OP * _OP_WIDTH
    KIND: tl.constexpr = MASK[OPS]
    DST: tl.constexpr = MASK[OPS + 1]
    if KIND == _OR:
        val = _register(r0, r1, r2, r3, MASK[OPS + 2]) | _register(r0, r1, r2, r3, MASK[OPS + 3])
    elif KIND == _AND:
        val = _register(r0, r1, r2, r3, MASK[OPS + 2]) & _register(r0, r1, r2, r3, MASK[OPS + 3])
    if DST == 0:
        r0 = val
    elif DST == 1:
        r1 = val
    elif DST == 2:
        r2 = val
    else:
        r3 = val
    return r0, r1, r2, r3


@triton.jit
def _step(r0, r1, r2, r3, fixed, start, offs, MASK: tl.constexpr, I: tl.constexpr, BITS, TRANSPOSED: tl.constexpr):
    """Op ``I`` of the program on the registers."""
    OPS: tl.constexpr = _LEAVES + MASK[_N_LEAVES] * _LEAF_WIDTH + I * _OP_WIDTH
    if MASK[OPS] == _LEAF:
        val = _leaf(fixed, start, offs, MASK, _LEAVES + MASK[OPS + 2] * _LEAF_WIDTH, BITS, TRANSPOSED)
    else:
        val = r0
    return _run(r0, r1, r2, r3, val, MASK, I)


@triton.jit
def _evaluate(fixed, start, offs, MASK: tl.constexpr, BITS, TRANSPOSED: tl.constexpr):
    """The spec's program on a block: :func:`allowed_block`, or transposed."""
    if MASK[_N_OPS] == 1:
        return _leaf(fixed, start, offs, MASK, _LEAVES, BITS, TRANSPOSED)
    else:
        r0 = fixed[:, None] == (start + offs)[None, :]  # (registers are written before read)
        r1 = r0
        r2 = r0
        r3 = r0
        N_OPS: tl.constexpr = MASK[_N_OPS]
        for i in tl.static_range(N_OPS):
            r0, r1, r2, r3 = _step(r0, r1, r2, r3, fixed, start, offs, MASK, i, BITS, TRANSPOSED)
        return r0


@triton.jit
def allowed_block(rows, start, offs, MASK: tl.constexpr, BITS):
    """The mask of queries ``rows`` (``[M]``, any positions) and the block of keys ``start +
    offs`` (``offs = arange(N)``, ``start`` a multiple of N), ``[M, N]``, in the per-element
    work of a loop that walks key blocks (forward, dq). ``BITS``: the block's bits
    (:func:`block_bits`), read by a ``BITS`` leaf only."""
    return _evaluate(rows, start, offs, MASK, BITS, False)


@triton.jit
def allowed_block_t(start, offs, cols, MASK: tl.constexpr, BITS):
    """The mask of the block of queries ``start + offs`` (``offs = arange(M)``, ``start`` a
    multiple of M) and the keys ``cols`` (``[N]``), keys by queries ``[N, M]``, in the
    per-element work of a loop that walks query blocks (dk/dv)."""
    return _evaluate(cols, start, offs, MASK, BITS, True)


@triton.jit
def block_bits(BITS, slot, MASK: tl.constexpr):
    """The bits of partial block number ``slot`` (:mod:`foveate.bitmask`) in the bitmask
    ``BITS``. (int32 offsets: the budget keeps bitmasks far below 8 GiB.)"""
    return BITS + slot * (MASK[_BLOCK_Q] * ((MASK[_BLOCK_KV] + 31) // 32))


__all__ = ["MaskSpec", "mask_spec", "eager_mask_spec", "lower", "allowed_block", "allowed_block_t", "block_bits",
           "tile_rows", "token_rows", "HAS_BITS", "HAS_IDS", "mask_ids"]
