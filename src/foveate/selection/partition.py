"""Canvas partitions of a content selection (VMoBA's 1-D, 2-D and 3-D block partitions).

On a video canvas ``(T, H, W)`` (or an image ``(H, W)``), a key block of ``block`` tokens is one
piece of the canvas, and the partition says which pieces:

- ``"1d"`` (temporal): runs of ``block`` consecutive tokens in raster (time-major) order, the
  caller's own order: whole frames, or groups of them, when ``block`` is a multiple of the frame
  ``H * W`` (VMoBA's 1-D chunks, counted in frames); rows of an image. No permutation; the last
  block may be short, as in a sequence.
- ``"2d"`` (spatial): a spatial tile through every frame, ``(T, h, w)`` with ``T * h * w ==
  block`` (VMoBA's 2-D chunks); on an image, an ``(h, w)`` tile. ``block`` must be a multiple
  of ``T``.
- ``"3d"`` (spatio-temporal, 3-D canvases only): a ``(t, h, w)`` cube with ``t * h * w == block``.

For ``"2d"`` and ``"3d"`` the tokens are put in the tiled order of that tile
(:class:`foveate.tiling.TiledOrder`: tiles in raster order of the tile grid, raster order inside
a tile), so that each block of ``block`` tokens is one tile; queries go through the same order,
so a query block is a tile too (or a run of ``query_block`` tokens of one). A canvas that is not
a whole number of tiles is padded up to one: padded positions hold zeros, are no tokens to the
scores (:class:`~foveate.selection.SelectionGeometry` ``tiling``) and are never attended to.

The tile (its free sides: ``(h, w)`` under ``"2d"``) is chosen among those of
:func:`foveate.tiling.candidate_tiles` (each side at most the canvas side rounded up to a power
of two) as the one of least ``padded tokens x surface``, where the padded tokens are those of the
canvas padded up to whole tiles and the surface is ``sum(1 / side)`` (a cube or square is the
most compact): 10% more padding is worth 10% less surface. Ties go to less padding, then to the
first tile in lexicographic order. E.g. block 128 on ``(16, 32, 32)``: ``"3d"`` ``(4, 4, 8)``,
``"2d"`` ``(16, 2, 4)``; on an image ``(30, 52)``: ``"2d"`` ``(16, 8)``.
"""

from __future__ import annotations

import functools
import math

PARTITIONS = ("1d", "2d", "3d")


@functools.lru_cache(maxsize=64)
def partition_tile(canvas: tuple[int, ...], partition: str, block: int) -> tuple[int, ...] | None:
    """The tile of ``block`` tokens that ``partition`` makes the key blocks on ``canvas``, or
    ``None`` for ``"1d"`` (raster order). Raises ``ValueError`` naming the argument when the
    partition cannot be made (``"3d"`` on an image, ``"2d"`` with ``block`` not a multiple of
    ``T``, a tile larger than the canvas)."""
    from ..tiling.order import candidate_tiles

    if partition not in PARTITIONS:
        raise ValueError(f"partition={partition!r}: expected one of {PARTITIONS}")
    if partition == "1d":
        return None
    if partition == "3d" and len(canvas) != 3:
        raise ValueError(f"partition='3d' needs a 3-D canvas (T, H, W), got canvas={canvas}")
    lead: tuple[int, ...] = ()
    plane, size = canvas, block
    if partition == "2d" and len(canvas) == 3:
        frames = canvas[0]
        if block % frames:
            raise ValueError(
                f"block={block}: partition='2d' tiles span all {frames} frames of canvas={canvas}, so block "
                f"must be a multiple of {frames} (e.g. {frames * 128})"
            )
        lead, plane, size = (frames,), canvas[1:], block // frames
    candidates = candidate_tiles(tuple(plane), size)
    if not candidates:
        raise ValueError(
            f"block={block}: no {partition} tile of {size} tokens fits canvas={canvas} (sides at most the "
            f"canvas sides rounded up to powers of two); use a smaller block or partition='1d'"
        )

    def cost(tile):
        padded = math.prod(-(-n // t) * t for n, t in zip(plane, tile))
        surface = sum(size // t for t in tile)  # size * sum(1 / side), in integers
        return padded * surface, padded, tile

    return lead + min(candidates, key=cost)


__all__ = ["PARTITIONS", "partition_tile"]
