"""The kernels' token order, inside the kernels: canvas coordinates of positions, and the
memory row of each position.

Positions are the layout's token order: a sequence, a canvas in raster order (the tiled order
of 1x...x1 tiles) or a canvas in a tiled order. Under ``RASTER_IO`` the tensors stay in the
caller's raster order and every load and store addresses the raster row of its tiled position
(:func:`token_rows`): the token permutation is part of the kernels' loads and stores instead
of four gathers around them. Fields: :mod:`.spec`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import spec as S

_NDIM = tl.constexpr(S.NDIM)
_TILE_SIZE = tl.constexpr(S.TILE_SIZE)
_N_TOKENS = tl.constexpr(S.N_TOKENS)
_EXTRA = tl.constexpr(S.EXTRA)
_PADDED = tl.constexpr(S.PADDED)
_RASTER_IO = tl.constexpr(S.RASTER_IO)
_SPLIT = tl.constexpr(S.SPLIT)
_AXES = tl.constexpr(S.AXES)
_AXIS_LEN = tl.constexpr(S.AXIS_LEN)
_L = tl.constexpr(S.AXIS_L)
_T = tl.constexpr(S.AXIS_T)
_G = tl.constexpr(S.AXIS_G)
_GS = tl.constexpr(S.AXIS_GS)
_TS = tl.constexpr(S.AXIS_TS)


@triton.jit
def coord(idx, MASK: tl.constexpr, A: tl.constexpr):
    """Canvas coordinate along axis ``A`` of position ``idx`` (raster order: 1x..x1 tiles)."""
    TILE_SIZE: tl.constexpr = MASK[_TILE_SIZE]
    T: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + _T]
    G: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + _G]
    GS: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + _GS]
    TS: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + _TS]
    if TILE_SIZE == 1:
        return (idx // GS) % G
    return ((idx // TILE_SIZE) // GS % G) * T + (idx % TILE_SIZE) // TS % T


@triton.jit
def query_coord(x, MASK: tl.constexpr, A: tl.constexpr):
    """A query's canvas coordinate, clamped to the canvas (padded queries act as the nearest
    canvas query). Padded keys need no such care: every window lies inside the canvas."""
    if MASK[_PADDED]:
        return tl.minimum(x, MASK[_AXES + A * _AXIS_LEN + _L] - 1)
    return x


@triton.jit
def _in_tile(offs, MASK: tl.constexpr, A: tl.constexpr):
    """Coordinate along axis ``A``, inside its tile, of in-tile positions ``offs``."""
    T: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + _T]
    TS: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + _TS]
    return (offs // TS) % T


@triton.jit
def _tile_coord(tile, MASK: tl.constexpr, A: tl.constexpr):
    """First canvas coordinate along axis ``A`` of tile number ``tile``."""
    T: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + _T]
    G: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + _G]
    GS: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + _GS]
    return (tile // GS) % G * T


@triton.jit
def splits(offs, MASK: tl.constexpr):
    """Whether the coordinates of a canvas block of positions ``start + offs`` split into its
    origin plus those of its offsets (the block lies inside one power-of-two tile, or 1-D
    raster order)."""
    BLOCK: tl.constexpr = offs.shape[0]
    TILE_SIZE: tl.constexpr = tl.constexpr(MASK[_TILE_SIZE])
    return MASK[_SPLIT] and (TILE_SIZE == 1 or TILE_SIZE % BLOCK == 0)


@triton.jit
def origin(start, MASK: tl.constexpr, A: tl.constexpr):
    """Canvas coordinate along axis ``A`` of position ``start``, the first of a block that lies
    inside one tile (:func:`splits`); in 1-D raster order, the position itself."""
    TILE_SIZE: tl.constexpr = MASK[_TILE_SIZE]
    if TILE_SIZE == 1:
        return start
    return _tile_coord(start // TILE_SIZE, MASK, A) + _in_tile(start % TILE_SIZE, MASK, A)


@triton.jit
def inner(offs, MASK: tl.constexpr, A: tl.constexpr):
    """Coordinates along axis ``A`` of the offsets ``offs`` inside a block (:func:`splits`)."""
    if MASK[_TILE_SIZE] == 1:
        return offs
    return _in_tile(offs, MASK, A)


@triton.jit
def _raster_stride(MASK: tl.constexpr, A: tl.constexpr):
    """Raster-order stride of canvas axis ``A`` (neutral axes have length 1)."""
    if A == 0:
        return MASK[_AXES + _AXIS_LEN + _L] * MASK[_AXES + 2 * _AXIS_LEN + _L]
    elif A == 1:
        return MASK[_AXES + 2 * _AXIS_LEN + _L]
    else:
        return 1


@triton.jit
def tile_rows(offs, MASK: tl.constexpr):
    """Raster rows, relative to the tile's first token, of the in-tile positions ``offs``
    (``RASTER_IO``; else ``offs``). Depends on ``offs`` alone, so kernels compute it once
    for ``arange(BLOCK)`` and hand it to :func:`token_rows` in their loops."""
    if not MASK[_RASTER_IO]:
        return offs
    NDIM: tl.constexpr = MASK[_NDIM]
    rows = _in_tile(offs, MASK, 0) * _raster_stride(MASK, 0)
    if NDIM >= 2:
        rows += _in_tile(offs, MASK, 1) * _raster_stride(MASK, 1)
    if NDIM >= 3:
        rows += _in_tile(offs, MASK, 2)
    return rows


@triton.jit
def _axis_real(tile, offs, MASK: tl.constexpr, A: tl.constexpr):
    L: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + _L]
    return _tile_coord(tile, MASK, A) + _in_tile(offs, MASK, A) < L


@triton.jit
def token_rows(start, offs, offs_rows, n_rows, MASK: tl.constexpr, CHECK_PAD: tl.constexpr):
    """Memory rows of the kernel positions ``start + offs`` in tensors of ``n_rows`` tokens.

    ``offs`` is ``arange(BLOCK)`` and ``start`` a multiple of ``BLOCK``, a power of two that
    divides the tile size; ``offs_rows = tile_rows(offs)``. Without ``RASTER_IO``: the
    positions themselves. With it (a tiled canvas whose tensors are in raster order): the
    raster row of each tiled position, the extra keys after the canvas, and with
    ``CHECK_PAD`` ``n_rows`` (one past the end, dropped by every bounds check) for canvas
    padding; callers pass ``CHECK_PAD=False`` where no padding can be (full key blocks).
    Positions past the kernel's length land at or past ``n_rows`` too.

    A block lies inside one tile, whose sides are powers of two, so the in-tile part splits
    into disjoint bits: rows = (scalar: the tile's first row + the in-tile row of ``start``)
    + ``offs_rows``. That keeps the per-element work of the loops to one add."""
    if not MASK[_RASTER_IO]:
        return start + offs
    NDIM: tl.constexpr = MASK[_NDIM]
    TILE_SIZE: tl.constexpr = MASK[_TILE_SIZE]
    N_TOKENS: tl.constexpr = MASK[_N_TOKENS]
    tile = start // TILE_SIZE
    first = start % TILE_SIZE
    row0 = (_tile_coord(tile, MASK, 0) + _in_tile(first, MASK, 0)) * _raster_stride(MASK, 0)
    if NDIM >= 2:
        row0 += (_tile_coord(tile, MASK, 1) + _in_tile(first, MASK, 1)) * _raster_stride(MASK, 1)
    if NDIM >= 3:
        row0 += _tile_coord(tile, MASK, 2) + _in_tile(first, MASK, 2)
    rows = row0 + offs_rows
    if MASK[_PADDED] and CHECK_PAD:
        in_block = first + offs
        real = _axis_real(tile, in_block, MASK, 0)
        if NDIM >= 2:
            real = real & _axis_real(tile, in_block, MASK, 1)
        if NDIM >= 3:
            real = real & _axis_real(tile, in_block, MASK, 2)
        rows = tl.where(real, rows, n_rows)
    if MASK[_EXTRA]:
        n_canvas: tl.constexpr = (MASK[_AXES + _L] * MASK[_AXES + _AXIS_LEN + _L]
                                  * MASK[_AXES + 2 * _AXIS_LEN + _L])
        rows = tl.where(start >= N_TOKENS, start - N_TOKENS + n_canvas + offs, rows)
    return rows
