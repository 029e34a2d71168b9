"""``GROUP_WINDOW`` leaves: windows of groups of queries on a canvas of 1-3 axes, cut at the
borders (:class:`~foveate.patterns.kernel_mask.GroupWindow`: HaloNet's blocks with halos,
Swin's shifted windows in the original coordinates), the extra keys after the canvas seen by
every query. Per axis of length ``L``, the query at coordinate ``x`` is in group ``g = (x + P)
// S`` and sees the keys ``[g * S - Q, g * S - Q + W)`` inside ``[0, L)``. Coordinates come
from the kernels' token order (:mod:`.order`): raster or tiled, padded or not.

Leaf fields (after the kind): per axis ``(W, S, P, Q)``. The window's start and width depend on
the query alone; the block forms give the same booleans as :func:`allowed` with one subtraction
and one unsigned comparison per element and axis where the block's coordinates split into its
origin plus those of its offsets (:func:`.order.splits`), as :mod:`.window`'s do.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import spec as S
from .common import below
from .order import coord, inner, origin, query_coord, splits

_NDIM = tl.constexpr(S.NDIM)
_N_TOKENS = tl.constexpr(S.N_TOKENS)
_EXTRA = tl.constexpr(S.EXTRA)
_PADDED = tl.constexpr(S.PADDED)
_AXIS = tl.constexpr(S.GROUP_WINDOW_AXIS_LEN)
_ORDER_AXES = tl.constexpr(S.AXES)
_ORDER_AXIS_LEN = tl.constexpr(S.AXIS_LEN)
_ORDER_L = tl.constexpr(S.AXIS_L)  # (the canvas length of an axis, in the token order)


@triton.jit
def _window(x, MASK: tl.constexpr, LEAF: tl.constexpr, A: tl.constexpr):
    """``(start, width)``: the keys ``[start, start + width)`` of query coordinates ``x`` along
    axis ``A``, the end cut at the canvas border (``width >= 0``; ``start`` may be negative:
    key coordinates are not)."""
    L: tl.constexpr = MASK[_ORDER_AXES + A * _ORDER_AXIS_LEN + _ORDER_L]
    W: tl.constexpr = MASK[LEAF + 1 + A * _AXIS]
    S: tl.constexpr = MASK[LEAF + 2 + A * _AXIS]
    P: tl.constexpr = MASK[LEAF + 3 + A * _AXIS]
    Q: tl.constexpr = MASK[LEAF + 4 + A * _AXIS]
    if S == 1:
        start = x + (P - Q)
    else:
        start = ((x + P) // S) * S - Q
    width = tl.maximum(tl.minimum(start + W, L) - start, 0)
    return start, width


@triton.jit
def _axis(q, k, ok, real, MASK: tl.constexpr, LEAF: tl.constexpr, A: tl.constexpr):
    """``ok`` and ``real`` (key inside the canvas) narrowed by canvas axis ``A``."""
    qx = coord(q, MASK, A)
    kx = coord(k, MASK, A)
    if MASK[_PADDED]:  # padded canvas: padded keys never allowed, padded queries clamped
        real = real & (kx < MASK[_ORDER_AXES + A * _ORDER_AXIS_LEN + _ORDER_L])
        qx = query_coord(qx, MASK, A)
    start, width = _window(qx, MASK, LEAF, A)
    return ok & (kx >= start) & (kx < start + width), real


@triton.jit
def allowed(q, k, MASK: tl.constexpr, LEAF: tl.constexpr):
    """The mask of query positions ``q`` and key positions ``k`` (broadcasting tensors)."""
    NDIM: tl.constexpr = MASK[_NDIM]
    ok = (q >= 0) & (k >= 0)
    real = ok
    ok, real = _axis(q, k, ok, real, MASK, LEAF, 0)
    if NDIM >= 2:
        ok, real = _axis(q, k, ok, real, MASK, LEAF, 1)
    if NDIM >= 3:
        ok, real = _axis(q, k, ok, real, MASK, LEAF, 2)
    if MASK[_PADDED]:
        ok = ok & real
    if MASK[_EXTRA]:  # extra keys past the canvas: seen by every query
        ok = ok | (k >= MASK[_N_TOKENS])
    return ok


@triton.jit
def _axis_block(rows, start, offs, MASK: tl.constexpr, LEAF: tl.constexpr, A: tl.constexpr):
    """Axis ``A`` of the mask of queries ``rows`` and keys ``start + offs``: ``[M, N]``."""
    qx = query_coord(coord(rows, MASK, A), MASK, A)
    lo, width = _window(qx, MASK, LEAF, A)
    return below(inner(offs, MASK, A)[None, :] - (lo - origin(start, MASK, A))[:, None], width[:, None])


@triton.jit
def _axis_block_t(start, offs, cols, MASK: tl.constexpr, LEAF: tl.constexpr, A: tl.constexpr):
    """Axis ``A`` of the mask of queries ``start + offs`` and keys ``cols``, transposed: ``[N, M]``."""
    qx = query_coord(origin(start, MASK, A) + inner(offs, MASK, A), MASK, A)
    lo, width = _window(qx, MASK, LEAF, A)
    return below(coord(cols, MASK, A)[:, None] - lo[None, :], width[None, :])


@triton.jit
def block(rows, start, offs, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``rows`` by keys ``start + offs``: ``[M, N]``."""
    if splits(offs, MASK):
        NDIM: tl.constexpr = MASK[_NDIM]
        ok = _axis_block(rows, start, offs, MASK, LEAF, 0)
        if NDIM >= 2:
            ok = ok & _axis_block(rows, start, offs, MASK, LEAF, 1)
        if NDIM >= 3:
            ok = ok & _axis_block(rows, start, offs, MASK, LEAF, 2)
        if MASK[_EXTRA]:  # extra keys past the canvas: seen by every query
            ok = ok | (start + offs >= MASK[_N_TOKENS])[None, :]
        return ok
    else:
        return allowed(rows[:, None], (start + offs)[None, :], MASK, LEAF)


@triton.jit
def block_t(start, offs, cols, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``start + offs`` by keys ``cols``, transposed: ``[N, M]``."""
    if splits(offs, MASK):
        NDIM: tl.constexpr = MASK[_NDIM]
        ok = _axis_block_t(start, offs, cols, MASK, LEAF, 0)
        if NDIM >= 2:
            ok = ok & _axis_block_t(start, offs, cols, MASK, LEAF, 1)
        if NDIM >= 3:
            ok = ok & _axis_block_t(start, offs, cols, MASK, LEAF, 2)
        if MASK[_EXTRA]:
            ok = ok | (cols >= MASK[_N_TOKENS])[:, None]
        return ok
    else:
        return allowed((start + offs)[None, :], cols[:, None], MASK, LEAF)
