"""Mask specs: what the Triton kernels need to know of a pattern to mask partial blocks.

A spec is a kind and a few integers; the kernels receive them as one compile-time tuple
``MASK`` and turn them into coordinate arithmetic (:func:`allowed`; in their loops the block
forms :func:`allowed_block` / :func:`allowed_block_t`, the same booleans with less work per
element), never an ``Nq x Nkv`` tensor. Kinds:

* ``BAND``: Dense, Causal, SlidingWindow (and Blocks, whose blocks are all full): key ``j``
  allowed for query ``i`` when ``p - left <= j <= p + right``, ``p = i + offset`` (a side may
  be unbounded);
* ``CANVAS``: Neighborhood on 1-3 axes, in raster order or in a tiled order (raster order is
  the tiled order of 1x...x1 tiles), with per-axis kernel, dilation, stride and causal, the
  padding of tiled canvases and the extra keys.

A tiled canvas spec may also say ``RASTER_IO``: the tensors stay in the caller's raster order
and the kernels, which still walk tiled positions, address the raster row of each position
themselves (:func:`token_rows`). The token permutation is then part of the kernels' loads and
stores instead of four gathers around them.

Patterns without a spec (compositions, custom masks) are not run by the Triton backend.

The ``MASK`` tuple is flat: ``(kind, OFFSET, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT, NDIM,
TILE_SIZE, N_TOKENS, EXTRA, PADDED, RASTER_IO, SPLIT, *axis0, *axis1, *axis2)`` with ``axis = (L, W, DIL, S, C,
T, G, GS, TS)``: canvas length, kernel, dilation, stride, causal, tile length, tiles along the
axis, tiles per step of the axis, tokens per step inside a tile. Flat because Triton 3.6 hands
a tuple given for a ``tl.constexpr`` argument to the kernel as a plain Python tuple: one level
of constant indexing works, nested tuples and passing a part of it to a function do not.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ...graph_constants import pattern_from_key, pattern_key
from ...patterns import Blocks, Causal, Dense, Neighborhood, Pattern, SelectedBlocks, SlidingWindow

BAND, CANVAS = 0, 1
MAX_AXES = 3

BAND_FIELDS = ("OFFSET", "LEFT", "RIGHT", "HAS_LEFT", "HAS_RIGHT")
CANVAS_FIELDS = ("NDIM", "TILE_SIZE", "N_TOKENS", "EXTRA", "PADDED", "RASTER_IO", "SPLIT")
AXIS_FIELDS = ("L", "W", "DIL", "S", "C", "T", "G", "GS", "TS")
_NEUTRAL_AXIS = (1, 1, 1, 1, 0, 1, 1, 1, 1)
_NEUTRAL_BAND = (0, 0, 0, 0, 0)
_NEUTRAL_CANVAS = (1, 1, 0, 0, 0, 0, 0, _NEUTRAL_AXIS, _NEUTRAL_AXIS, _NEUTRAL_AXIS)
#: Number of integers of a spec in its flat form (:meth:`MaskSpec.to_ints`).
FLAT_SIZE = 1 + len(BAND_FIELDS) + len(CANVAS_FIELDS) + MAX_AXES * len(AXIS_FIELDS)


@dataclass(frozen=True)
class MaskSpec:
    """A pattern's mask for the kernels: ``kind`` and its parameters (all ints)."""

    kind: int
    band: tuple[int, ...] = _NEUTRAL_BAND
    canvas: tuple = _NEUTRAL_CANVAS

    @property
    def raster_io(self) -> bool:
        """Whether the kernels read and write raster-order tensors while walking tiled
        positions (the token permutation fused into their loads and stores)."""
        return self.kind == CANVAS and bool(self.canvas[5])

    @property
    def padded_io(self) -> bool:
        """Whether some positions have no memory row: canvas padding under ``raster_io``."""
        return self.raster_io and bool(self.canvas[4])

    def in_tiled_order(self) -> "MaskSpec":
        """This spec for tensors already in the tiled order (``raster_io`` off)."""
        head = self.canvas[:len(CANVAS_FIELDS)]
        return MaskSpec(self.kind, self.band, (*head[:5], 0, *head[6:], *self.canvas[len(CANVAS_FIELDS):]))

    def tiled_order(self):
        """The :class:`~foveate.tiling.TiledOrder` of a tiled canvas spec."""
        from ...tiling import TiledOrder

        axes = self.canvas[len(CANVAS_FIELDS):len(CANVAS_FIELDS) + self.canvas[0]]
        return TiledOrder(tuple(axis[0] for axis in axes), tuple(axis[5] for axis in axes))

    def positions(self, q_rows: int, kv_rows: int) -> tuple[int, int]:
        """The kernels' query and key lengths (tiled positions, padding included) for
        tensors of ``q_rows`` and ``kv_rows`` tokens; the same lengths unless ``raster_io``."""
        if not self.raster_io:
            return q_rows, kv_rows
        n_tokens = self.canvas[2]
        n_canvas = math.prod(axis[0] for axis in self.canvas[len(CANVAS_FIELDS):])
        return n_tokens, n_tokens + kv_rows - n_canvas

    @functools.cached_property
    def constexpr(self) -> tuple[int, ...]:
        """The kernels' ``MASK`` argument: the flat tuple of :meth:`to_ints` (made once: every
        launch reads it)."""
        return tuple(self.to_ints())

    def fields(self) -> dict[str, int]:
        """Every parameter by name (axis fields suffixed with the axis): for inspection."""
        out = {"MASK_KIND": self.kind, **dict(zip(BAND_FIELDS, self.band)),
               **dict(zip(CANVAS_FIELDS, self.canvas[:len(CANVAS_FIELDS)]))}
        for a, axis in enumerate(self.canvas[len(CANVAS_FIELDS):]):
            out.update({f"{name}{a}": value for name, value in zip(AXIS_FIELDS, axis)})
        return out

    def to_ints(self) -> list[int]:
        """The flat list of ``FLAT_SIZE`` ints (what a custom operator's schema can carry)."""
        head = list(self.canvas[:len(CANVAS_FIELDS)])
        axes = [x for axis in self.canvas[len(CANVAS_FIELDS):] for x in axis]
        return [self.kind, *self.band, *head, *axes]

    @classmethod
    def from_ints(cls, ints) -> "MaskSpec":
        """The inverse of :meth:`to_ints`."""
        ints = [int(x) for x in ints]
        if len(ints) != FLAT_SIZE:
            raise ValueError(f"a flat mask spec has {FLAT_SIZE} ints, got {len(ints)}")
        nb, nc, na = len(BAND_FIELDS), len(CANVAS_FIELDS), len(AXIS_FIELDS)
        band = tuple(ints[1:1 + nb])
        head = tuple(ints[1 + nb:1 + nb + nc])
        rest = ints[1 + nb + nc:]
        axes = tuple(tuple(rest[a * na:(a + 1) * na]) for a in range(MAX_AXES))
        return cls(ints[0], band, (*head, *axes))


def _band(offset: int, left: int | None, right: int | None, q_len: int, kv_len: int) -> MaskSpec:
    # A side wider than the sequences is clamped to a width that still covers them (the kernels
    # compute in int32): |key - position| < 2 * (q_len + kv_len) for every pair.
    reach = 2 * (q_len + kv_len)
    left = None if left is None else min(left, reach)
    right = None if right is None else min(right, reach)
    return MaskSpec(BAND, band=(offset, left if left is not None else 0, right if right is not None else 0,
                                int(left is not None), int(right is not None)))


def mask_spec(pattern: Pattern, q_len: int, kv_len: int, *, raster_io: bool = False) -> MaskSpec | None:
    """The spec of ``pattern`` at these lengths, or ``None`` when the kernels cannot mask it.

    ``raster_io``: ``pattern`` is :class:`~foveate.tiling.Tiled` and the kernels are to take
    the tensors in raster order (``q_len``, ``kv_len`` are still the tiled lengths).
    Memoised for cacheable (hashable, static) patterns: a call asks for it more than once.
    Under ``torch.compile`` it is computed when the graph is traced, a constant of the graph."""
    if torch.compiler.is_compiling():
        return _traced_mask_spec(pattern_key(pattern), operator.index(q_len), operator.index(kv_len), raster_io)
    return eager_mask_spec(pattern, q_len, kv_len, raster_io)


def eager_mask_spec(pattern, q_len, kv_len, raster_io=False):
    """:func:`mask_spec` outside ``torch.compile``."""
    if pattern.cacheable:
        return _cached_mask_spec(pattern, q_len, kv_len, raster_io)
    return _mask_spec(pattern, q_len, kv_len, raster_io)


@functools.lru_cache(maxsize=256)
def _cached_mask_spec(pattern, q_len, kv_len, raster_io):
    return _mask_spec(pattern, q_len, kv_len, raster_io)


@torch.compiler.assume_constant_result
def _traced_mask_spec(key, q_len, kv_len, raster_io):
    # (run, not traced, by dynamo, where is_compiling() is still True: the eager path directly)
    return eager_mask_spec(pattern_from_key(key), q_len, kv_len, raster_io)


def _mask_spec(pattern: Pattern, q_len: int, kv_len: int, raster_io: bool) -> MaskSpec | None:
    from ...tiling import Tiled

    if raster_io and not isinstance(pattern, Tiled):
        raise ValueError(f"raster_io needs a Tiled pattern, got {pattern!r}")
    if raster_io and any(t & (t - 1) for t in pattern.tile):
        # token_rows splits a block's positions into bit fields, one per tile side.
        raise ValueError(f"raster_io needs tile sides that are powers of two, got {pattern.tile}")

    offset = kv_len - q_len
    if isinstance(pattern, (Dense, Blocks)):  # Blocks: every listed block is full, never masked
        return _band(offset, None, None, q_len, kv_len)
    if isinstance(pattern, Causal):
        return _band(offset, None, 0, q_len, kv_len)
    if isinstance(pattern, SelectedBlocks):  # whole blocks, causal inside when asked
        return _band(offset, None, 0 if pattern.causal else None, q_len, kv_len)
    if isinstance(pattern, SlidingWindow):
        return _band(offset, pattern.left, pattern.right, q_len, kv_len)
    tile = None
    if isinstance(pattern, Tiled):
        pattern, tile = pattern.base, pattern.tile
    if not isinstance(pattern, Neighborhood):
        return None
    ndim = len(pattern.canvas)
    tile = tile or (1,) * ndim
    grid = [-(-n // t) for n, t in zip(pattern.canvas, tile)]
    # SPLIT: the canvas coordinates of a kernel block's positions are (the block's origin) +
    # (those of its offsets), as disjoint bit fields of tiles with power-of-two sides; in 1-D
    # raster order the coordinate is the position itself.
    tile_size = math.prod(tile)
    split = all(t & (t - 1) == 0 for t in tile) and (tile_size > 1 or ndim == 1)
    head = (ndim, tile_size, math.prod(g * t for g, t in zip(grid, tile)), int(pattern.extra_kv > 0),
            int(any(g * t != n for g, t, n in zip(grid, tile, pattern.canvas))), int(raster_io), int(split))
    axes = []
    for a in range(MAX_AXES):
        if a >= ndim:
            axes.append(_NEUTRAL_AXIS)
            continue
        length, kernel, dilation, stride, causal = pattern.axes[a]
        axes.append((length, kernel, dilation, stride, int(causal), tile[a], grid[a], math.prod(grid[a + 1:]),
                     math.prod(tile[a + 1:])))
    return MaskSpec(CANVAS, canvas=(*head, *axes))


# -- inside the kernels ----------------------------------------------------------------------------


# Positions in the flat ``MASK`` tuple (``MaskSpec.to_ints``).
_OFFSET, _LEFT, _RIGHT, _HAS_LEFT, _HAS_RIGHT = (tl.constexpr(1 + i) for i in range(5))
_NDIM, _TILE_SIZE, _N_TOKENS, _EXTRA, _PADDED, _RASTER_IO, _SPLIT = (tl.constexpr(6 + i) for i in range(7))
_AXES = tl.constexpr(13)
_AXIS_LEN = tl.constexpr(len(AXIS_FIELDS))


@triton.jit
def _axis_allowed(x, y, MASK: tl.constexpr, A: tl.constexpr):
    """May query coordinate x see key coordinate y along canvas axis ``A`` (foveate's
    axis_window). Axis fields: ``(L, W, DIL, S, C, ...)``."""
    L: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 0]
    DIL: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 2]
    if DIL == 1:
        xg = x
        yg = y
        lg = L
    else:
        xg = x // DIL
        yg = y // DIL
        lg = L // DIL + ((x % DIL) < (L % DIL)).to(tl.int32)
    start, width = _axis_window(xg, lg, MASK, A)
    ok = (yg >= start) & (yg < start + width)
    if DIL != 1:
        ok = ok & ((y % DIL) == (x % DIL))
    return ok


@triton.jit
def _coord(idx, MASK: tl.constexpr, A: tl.constexpr):
    """Canvas coordinate along axis ``A`` of tiled position idx (raster order: 1x..x1 tiles)."""
    TILE_SIZE: tl.constexpr = MASK[_TILE_SIZE]
    T: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 5]
    G: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 6]
    GS: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 7]
    TS: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 8]
    if TILE_SIZE == 1:
        return (idx // GS) % G
    return ((idx // TILE_SIZE) // GS % G) * T + (idx % TILE_SIZE) // TS % T


@triton.jit
def _band_allowed(q, k, MASK: tl.constexpr):
    OFFSET: tl.constexpr = MASK[_OFFSET]
    LEFT: tl.constexpr = MASK[_LEFT]
    RIGHT: tl.constexpr = MASK[_RIGHT]
    p = q + OFFSET
    ok = (k >= 0) & (q >= 0)
    if MASK[_HAS_LEFT]:
        ok = ok & (k >= p - LEFT)
    if MASK[_HAS_RIGHT]:
        ok = ok & (k <= p + RIGHT)
    return ok


@triton.jit
def _canvas_axis(q, k, ok, real, MASK: tl.constexpr, A: tl.constexpr):
    """``ok`` and ``real`` (key inside the canvas) narrowed by canvas axis ``A``."""
    L: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 0]
    qx = _coord(q, MASK, A)
    kx = _coord(k, MASK, A)
    if MASK[_PADDED]:  # padded canvas: padded keys never allowed, padded queries clamped
        real = real & (kx < L)
        qx = tl.minimum(qx, L - 1)
    return ok & _axis_allowed(qx, kx, MASK, A), real


@triton.jit
def _canvas_allowed(q, k, MASK: tl.constexpr):
    NDIM: tl.constexpr = MASK[_NDIM]
    N_TOKENS: tl.constexpr = MASK[_N_TOKENS]
    ok = (q >= 0) & (k >= 0)
    real = ok
    ok, real = _canvas_axis(q, k, ok, real, MASK, 0)
    if NDIM >= 2:
        ok, real = _canvas_axis(q, k, ok, real, MASK, 1)
    if NDIM >= 3:
        ok, real = _canvas_axis(q, k, ok, real, MASK, 2)
    if MASK[_PADDED]:
        ok = ok & real
    if MASK[_EXTRA]:  # extra keys past the canvas: seen by every query
        ok = ok | (k >= N_TOKENS)
    return ok


@triton.jit
def allowed(rows, cols, MASK: tl.constexpr):
    """The pattern's mask on a tile: ``[len(rows), len(cols)]`` booleans for query positions
    ``rows`` and key positions ``cols`` (token indices in the kernel's order)."""
    if MASK[0] == 0:
        return _band_allowed(rows[:, None], cols[None, :], MASK)
    return _canvas_allowed(rows[:, None], cols[None, :], MASK)


@triton.jit
def allowed_t(rows, cols, MASK: tl.constexpr):
    """:func:`allowed` transposed: ``[len(cols), len(rows)]`` (keys by queries), computed
    directly in that shape (the backward's dk/dv tiles)."""
    if MASK[0] == 0:
        return _band_allowed(rows[None, :], cols[:, None], MASK)
    return _canvas_allowed(rows[None, :], cols[:, None], MASK)


@triton.jit
def _raster_stride(MASK: tl.constexpr, A: tl.constexpr):
    """Raster-order stride of canvas axis ``A`` (neutral axes have length 1)."""
    if A == 0:
        return MASK[_AXES + _AXIS_LEN] * MASK[_AXES + 2 * _AXIS_LEN]
    elif A == 1:
        return MASK[_AXES + 2 * _AXIS_LEN]
    else:
        return 1


@triton.jit
def _in_tile(offs, MASK: tl.constexpr, A: tl.constexpr):
    """Coordinate along axis ``A``, inside its tile, of in-tile positions ``offs``."""
    T: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 5]
    TS: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 8]
    return (offs // TS) % T


@triton.jit
def _tile_coord(tile, MASK: tl.constexpr, A: tl.constexpr):
    """First canvas coordinate along axis ``A`` of tile number ``tile``."""
    T: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 5]
    G: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 6]
    GS: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 7]
    return (tile // GS) % G * T


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
    L: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 0]
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
    origin = (_tile_coord(tile, MASK, 0) + _in_tile(first, MASK, 0)) * _raster_stride(MASK, 0)
    if NDIM >= 2:
        origin += (_tile_coord(tile, MASK, 1) + _in_tile(first, MASK, 1)) * _raster_stride(MASK, 1)
    if NDIM >= 3:
        origin += _tile_coord(tile, MASK, 2) + _in_tile(first, MASK, 2)
    rows = origin + offs_rows
    if MASK[_PADDED] and CHECK_PAD:
        inner = first + offs
        real = _axis_real(tile, inner, MASK, 0)
        if NDIM >= 2:
            real = real & _axis_real(tile, inner, MASK, 1)
        if NDIM >= 3:
            real = real & _axis_real(tile, inner, MASK, 2)
        rows = tl.where(real, rows, n_rows)
    if MASK[_EXTRA]:
        n_canvas: tl.constexpr = MASK[_AXES] * MASK[_AXES + _AXIS_LEN] * MASK[_AXES + 2 * _AXIS_LEN]
        rows = tl.where(start >= N_TOKENS, start - N_TOKENS + n_canvas + offs, rows)
    return rows


# -- the mask of one kernel block --------------------------------------------------------------------
# The kernels' loops mask a block of keys ``start + offs`` (``offs = arange(BLOCK)``, ``start`` a
# multiple of BLOCK) against their fixed queries (forward, dq), or a block of queries against
# their fixed keys (dk/dv). The forms below give the same booleans as :func:`allowed` with one
# subtraction and one unsigned comparison per element and bound (plus one ``&`` per further
# axis): what depends on the fixed side only is loop-invariant and hoisted by the compiler, what
# depends on the block is a scalar origin, and the coordinates of the offsets are computed
# once. The partial blocks of canvases spend most of their non-matmul time here.


@triton.jit
def _below(d, width):
    """``0 <= d < width`` (int32 tensors, ``width >= 0``) as one unsigned comparison."""
    return d.to(tl.uint32, bitcast=True) < width.to(tl.uint32, bitcast=True)


@triton.jit
def _below_width(d, WIDTH: tl.constexpr):
    """``0 <= d < WIDTH`` for a compile-time ``WIDTH >= 0``, as one unsigned comparison."""
    return d.to(tl.uint32, bitcast=True) < WIDTH


@triton.jit
def _band_block(rows, start, offs, MASK: tl.constexpr):
    """:func:`_band_allowed` for queries ``rows`` and keys ``start + offs``: ``[M, N]``."""
    OFFSET: tl.constexpr = MASK[_OFFSET]
    LEFT: tl.constexpr = MASK[_LEFT]
    RIGHT: tl.constexpr = MASK[_RIGHT]
    p = rows + (OFFSET - start)  # the query's position, relative to the block's first key
    if MASK[_HAS_LEFT] and MASK[_HAS_RIGHT]:
        return _below_width(offs[None, :] - (p - LEFT)[:, None], LEFT + RIGHT + 1)
    elif MASK[_HAS_RIGHT]:
        return offs[None, :] <= (p + RIGHT)[:, None]
    elif MASK[_HAS_LEFT]:
        return offs[None, :] >= (p - LEFT)[:, None]
    else:
        return (offs[None, :] >= 0) & (rows[:, None] >= 0)


@triton.jit
def _band_block_t(start, offs, cols, MASK: tl.constexpr):
    """:func:`_band_allowed` for queries ``start + offs`` and keys ``cols``, transposed: ``[N, M]``."""
    OFFSET: tl.constexpr = MASK[_OFFSET]
    LEFT: tl.constexpr = MASK[_LEFT]
    RIGHT: tl.constexpr = MASK[_RIGHT]
    rel = cols - (OFFSET + start)  # key - (first query's position): allowed iff -LEFT <= rel - offs <= RIGHT
    if MASK[_HAS_LEFT] and MASK[_HAS_RIGHT]:
        return _below_width((rel + LEFT)[:, None] - offs[None, :], LEFT + RIGHT + 1)
    elif MASK[_HAS_RIGHT]:
        return offs[None, :] >= (rel - RIGHT)[:, None]
    elif MASK[_HAS_LEFT]:
        return offs[None, :] <= (rel + LEFT)[:, None]
    else:
        return (offs[None, :] >= 0) & (cols[:, None] >= 0)


@triton.jit
def _axis_window(x, lg, MASK: tl.constexpr, A: tl.constexpr):
    """``(start, width)``: the keys ``[start, start + width)`` (inside ``[0, lg)``) of query
    coordinates ``x`` along axis ``A``, in a dilation group of ``lg`` positions (coordinates
    and lengths divided by the dilation; ``lg = L`` without dilation)."""
    W: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 1]
    S: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 3]
    C: tl.constexpr = MASK[_AXES + A * _AXIS_LEN + 4]
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
def _origin(start, MASK: tl.constexpr, A: tl.constexpr):
    """Canvas coordinate along axis ``A`` of position ``start``, the first of a block that lies
    inside one tile (``SPLIT``); in 1-D raster order, the position itself."""
    TILE_SIZE: tl.constexpr = MASK[_TILE_SIZE]
    if TILE_SIZE == 1:
        return start
    return _tile_coord(start // TILE_SIZE, MASK, A) + _in_tile(start % TILE_SIZE, MASK, A)


@triton.jit
def _inner(offs, MASK: tl.constexpr, A: tl.constexpr):
    """Coordinates along axis ``A`` of the offsets ``offs`` inside a block (``SPLIT``)."""
    if MASK[_TILE_SIZE] == 1:
        return offs
    return _in_tile(offs, MASK, A)


@triton.jit
def _query_coord(x, MASK: tl.constexpr, A: tl.constexpr):
    """A query's canvas coordinate, clamped to the canvas (padded queries act as the nearest
    canvas query). Padded keys need no such care: every window lies inside the canvas."""
    if MASK[_PADDED]:
        return tl.minimum(x, MASK[_AXES + A * _AXIS_LEN + 0] - 1)
    return x


@triton.jit
def _canvas_axis_block(rows, start, offs, MASK: tl.constexpr, A: tl.constexpr):
    """Axis ``A`` of the mask of queries ``rows`` and keys ``start + offs``: ``[M, N]``."""
    qx = _query_coord(_coord(rows, MASK, A), MASK, A)
    origin = _origin(start, MASK, A)
    inner = _inner(offs, MASK, A)
    if MASK[_AXES + A * _AXIS_LEN + 2] == 1:
        lo, width = _axis_window(qx, MASK[_AXES + A * _AXIS_LEN + 0], MASK, A)
        return _below(inner[None, :] - (lo - origin)[:, None], width[:, None])
    else:
        return _axis_allowed(qx[:, None], (origin + inner)[None, :], MASK, A)


@triton.jit
def _canvas_axis_block_t(start, offs, cols, MASK: tl.constexpr, A: tl.constexpr):
    """Axis ``A`` of the mask of queries ``start + offs`` and keys ``cols``, transposed: ``[N, M]``."""
    qx = _query_coord(_origin(start, MASK, A) + _inner(offs, MASK, A), MASK, A)
    kx = _coord(cols, MASK, A)
    if MASK[_AXES + A * _AXIS_LEN + 2] == 1:
        lo, width = _axis_window(qx, MASK[_AXES + A * _AXIS_LEN + 0], MASK, A)
        return _below(kx[:, None] - lo[None, :], width[None, :])
    else:
        return _axis_allowed(qx[None, :], kx[:, None], MASK, A)


@triton.jit
def _splits(offs, MASK: tl.constexpr):
    """Whether the coordinates of a canvas block of positions ``start + offs`` split into its
    origin plus those of its offsets (the block lies inside one power-of-two tile, or 1-D
    raster order)."""
    BLOCK: tl.constexpr = offs.shape[0]
    TILE_SIZE: tl.constexpr = tl.constexpr(MASK[_TILE_SIZE])
    return MASK[_SPLIT] and (TILE_SIZE == 1 or TILE_SIZE % BLOCK == 0)


@triton.jit
def allowed_block(rows, start, offs, MASK: tl.constexpr):
    """``allowed(rows, start + offs)``: the mask of queries ``rows`` (``[M]``, any positions)
    and the block of keys ``start + offs`` (``offs = arange(N)``, ``start`` a multiple of N),
    ``[M, N]``, in the per-element work of a loop that walks key blocks."""
    if MASK[0] == 0:
        return _band_block(rows, start, offs, MASK)
    elif _splits(offs, MASK):
        NDIM: tl.constexpr = MASK[_NDIM]
        ok = _canvas_axis_block(rows, start, offs, MASK, 0)
        if NDIM >= 2:
            ok = ok & _canvas_axis_block(rows, start, offs, MASK, 1)
        if NDIM >= 3:
            ok = ok & _canvas_axis_block(rows, start, offs, MASK, 2)
        if MASK[_EXTRA]:  # extra keys past the canvas: seen by every query
            ok = ok | (start + offs >= MASK[_N_TOKENS])[None, :]
        return ok
    else:
        return allowed(rows, start + offs, MASK)


@triton.jit
def allowed_block_t(start, offs, cols, MASK: tl.constexpr):
    """``allowed_t(start + offs, cols)``: the block of queries ``start + offs`` (``offs =
    arange(M)``, ``start`` a multiple of M) and the keys ``cols`` (``[N]``), keys by queries
    ``[N, M]``, in the per-element work of a loop that walks query blocks (dk/dv)."""
    if MASK[0] == 0:
        return _band_block_t(start, offs, cols, MASK)
    elif _splits(offs, MASK):
        NDIM: tl.constexpr = MASK[_NDIM]
        ok = _canvas_axis_block_t(start, offs, cols, MASK, 0)
        if NDIM >= 2:
            ok = ok & _canvas_axis_block_t(start, offs, cols, MASK, 1)
        if NDIM >= 3:
            ok = ok & _canvas_axis_block_t(start, offs, cols, MASK, 2)
        if MASK[_EXTRA]:
            ok = ok | (cols >= MASK[_N_TOKENS])[:, None]
        return ok
    else:
        return allowed_t(start + offs, cols, MASK)
