"""Token orders of canvases: raster order (:mod:`.raster`), the tiled order and its candidate
tiles (:mod:`.order`), and the permutation as a bandwidth-bound Triton copy kernel
(:mod:`.permute_triton`).

In raster order a block of 128 tokens is a thin strip of the canvas, so a neighborhood spans
many blocks, most of them partial. Tiling permutes the tokens so that each block is a compact
tile (e.g. 16x8, or 2x8x8 in 3-D): a neighborhood then covers few blocks, mostly full ones.
A pattern seen in a tiled order is :class:`foveate.patterns.tiled.Tiled` (also importable from
here); the tile that ``tile="auto"`` takes is chosen by :func:`foveate.simulator.choose_tile`.
"""

from __future__ import annotations

from .order import TiledOrder, candidate_tiles
from .raster import RasterOrder


def __getattr__(name):
    # (``Tiled`` is a pattern: it lives with the patterns, which import this package)
    if name == "Tiled":
        from ..patterns.tiled import Tiled

        return Tiled
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RasterOrder", "TiledOrder", "Tiled", "candidate_tiles"]
