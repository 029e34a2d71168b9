"""``WINDOW`` leaves: a neighborhood on a canvas of 1-3 axes (NATTEN / GNA semantics: per-axis
kernel, dilation, stride, causal; windows clamped at the borders), the extra keys after the
canvas seen by every query. Coordinates come from the kernels' token order (:mod:`.order`):
raster or tiled, padded or not.

Leaf fields (after the kind): per axis ``(W, DIL, S, C)``: kernel, dilation, stride, causal.
The block forms give the same booleans as :func:`allowed` with one subtraction and one unsigned
comparison per element and axis where the block's coordinates split into its origin plus those
of its offsets (:func:`.order.splits`): what depends on the fixed side only is loop-invariant
and hoisted by the compiler, what depends on the block is a scalar origin. The partial blocks
of canvases spend most of their non-matmul time here.
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
_AXIS = tl.constexpr(S.WINDOW_AXIS_LEN)
_ORDER_AXES = tl.constexpr(S.AXES)
_ORDER_AXIS_LEN = tl.constexpr(S.AXIS_LEN)
_ORDER_L = tl.constexpr(S.AXIS_L)  # (the canvas length of an axis, in the token order)


@triton.jit
def _window(x, lg, MASK: tl.constexpr, LEAF: tl.constexpr, A: tl.constexpr):
    """``(start, width)``: the keys ``[start, start + width)`` (inside ``[0, lg)``) of query
    coordinates ``x`` along axis ``A``, in a dilation group of ``lg`` positions (coordinates
    and lengths divided by the dilation; ``lg = L`` without dilation)."""
    W: tl.constexpr = MASK[LEAF + 1 + A * _AXIS]
    S: tl.constexpr = MASK[LEAF + 3 + A * _AXIS]
    C: tl.constexpr = MASK[LEAF + 4 + A * _AXIS]
    if C:
        if S == 1:
            leader = x
        else:
            leader = tl.minimum((x // S) * S + (S - 1), lg - 1)
        start = tl.maximum(leader - (W - 1), 0)
        width = x - start + 1
    else:
        if S == 1:
            leader = x
        else:
            leader = tl.minimum((x // S) * S + S // 2, lg - 1)
        start = tl.minimum(tl.maximum(leader - W // 2, 0), lg - W)
        width = start * 0 + W  # (zeros_like would need a layout under Gluon; this folds away)
    return start, width


@triton.jit
def _axis_allowed(x, y, MASK: tl.constexpr, LEAF: tl.constexpr, A: tl.constexpr):
    """May query coordinate x see key coordinate y along canvas axis ``A``."""
    L: tl.constexpr = MASK[_ORDER_AXES + A * _ORDER_AXIS_LEN + _ORDER_L]
    DIL: tl.constexpr = MASK[LEAF + 2 + A * _AXIS]
    if DIL == 1:
        xg = x
        yg = y
        lg = L
    else:
        xg = x // DIL
        yg = y // DIL
        lg = L // DIL + ((x % DIL) < (L % DIL)).to(tl.int32)
    start, width = _window(xg, lg, MASK, LEAF, A)
    ok = (yg >= start) & (yg < start + width)
    if DIL != 1:
        ok = ok & ((y % DIL) == (x % DIL))
    return ok


@triton.jit
def _axis(q, k, ok, real, MASK: tl.constexpr, LEAF: tl.constexpr, A: tl.constexpr):
    """``ok`` and ``real`` (key inside the canvas) narrowed by canvas axis ``A``."""
    qx = coord(q, MASK, A)
    kx = coord(k, MASK, A)
    if MASK[_PADDED]:  # padded canvas: padded keys never allowed, padded queries clamped
        real = real & (kx < MASK[_ORDER_AXES + A * _ORDER_AXIS_LEN + _ORDER_L])
        qx = query_coord(qx, MASK, A)
    return ok & _axis_allowed(qx, kx, MASK, LEAF, A), real


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
    first = origin(start, MASK, A)
    ks = inner(offs, MASK, A)
    if MASK[LEAF + 2 + A * _AXIS] == 1:
        lo, width = _window(qx, MASK[_ORDER_AXES + A * _ORDER_AXIS_LEN + _ORDER_L], MASK, LEAF, A)
        return below(ks[None, :] - (lo - first)[:, None], width[:, None])
    else:
        return _axis_allowed(qx[:, None], (first + ks)[None, :], MASK, LEAF, A)


@triton.jit
def _axis_block_t(start, offs, cols, MASK: tl.constexpr, LEAF: tl.constexpr, A: tl.constexpr):
    """Axis ``A`` of the mask of queries ``start + offs`` and keys ``cols``, transposed: ``[N, M]``."""
    qx = query_coord(origin(start, MASK, A) + inner(offs, MASK, A), MASK, A)
    kx = coord(cols, MASK, A)
    if MASK[LEAF + 2 + A * _AXIS] == 1:
        lo, width = _window(qx, MASK[_ORDER_AXES + A * _ORDER_AXIS_LEN + _ORDER_L], MASK, LEAF, A)
        return below(kx[:, None] - lo[None, :], width[None, :])
    else:
        return _axis_allowed(qx[None, :], kx[:, None], MASK, LEAF, A)


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
