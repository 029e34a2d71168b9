"""Mask specs: what the Triton kernels need to know of a pattern to mask partial blocks.

A spec is a kind and a few integers; the kernel turns them into coordinate arithmetic (see
``_allowed`` in ``fwd.py``), never an ``Nq x Nkv`` tensor. Kinds:

* ``BAND``: Dense, Causal, SlidingWindow: key ``j`` allowed for query ``i`` when
  ``p - left <= j <= p + right``, ``p = i + offset`` (a side may be unbounded);
* ``CANVAS``: Neighborhood on 1-3 axes, in raster order or in a tiled order (raster order is
  the tiled order of 1x...x1 tiles), with per-axis kernel, dilation, stride and causal, the
  padding of tiled canvases and the extra keys.

Patterns without a spec (compositions, custom masks) are not run by the Triton backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...patterns import Blocks, Causal, Dense, Neighborhood, Pattern, SlidingWindow

BAND, CANVAS = 0, 1
MAX_AXES = 3


@dataclass(frozen=True)
class MaskSpec:
    """Keyword arguments for the kernel's mask (all ints/bools: compile-time constants)."""

    kind: int
    params: tuple[tuple[str, int], ...]

    def kwargs(self) -> dict:
        """Every mask parameter of the kernel: this spec's values, neutral ones for the rest."""
        return {**_NEUTRAL, "MASK_KIND": self.kind, **dict(self.params)}


_AXIS_FIELDS = ("L", "W", "DIL", "S", "C", "T", "G", "GS", "TS")
_NEUTRAL = {
    "OFFSET": 0, "LEFT": 0, "RIGHT": 0, "HAS_LEFT": False, "HAS_RIGHT": False,
    "NDIM": 1, "TILE_SIZE": 1, "N_TOKENS": 0, "EXTRA": False, "PADDED": False,
    **{f"{name}{a}": 0 if name == "C" else 1 for a in range(3) for name in _AXIS_FIELDS},
}


def _band(offset: int, left: int | None, right: int | None) -> MaskSpec:
    return MaskSpec(BAND, (("OFFSET", offset), ("LEFT", left if left is not None else 0),
                           ("RIGHT", right if right is not None else 0),
                           ("HAS_LEFT", left is not None), ("HAS_RIGHT", right is not None)))


def mask_spec(pattern: Pattern, q_len: int, kv_len: int) -> MaskSpec | None:
    """The spec of ``pattern`` at these lengths, or ``None`` when the kernels cannot mask it."""
    from ...tiling import Tiled

    offset = kv_len - q_len
    if isinstance(pattern, (Dense, Blocks)):  # Blocks: every listed block is full, never masked
        return _band(offset, None, None)
    if isinstance(pattern, Causal):
        return _band(offset, None, 0)
    if isinstance(pattern, SlidingWindow):
        return _band(offset, pattern.left, pattern.right)
    tile = None
    if isinstance(pattern, Tiled):
        pattern, tile = pattern.base, pattern.tile
    if not isinstance(pattern, Neighborhood):
        return None
    ndim = len(pattern.canvas)
    tile = tile or (1,) * ndim
    grid = [-(-n // t) for n, t in zip(pattern.canvas, tile)]
    params = [("NDIM", ndim), ("TILE_SIZE", math.prod(tile)),
              ("N_TOKENS", math.prod(g * t for g, t in zip(grid, tile))),
              ("EXTRA", pattern.extra_kv > 0),
              ("PADDED", any(g * t != n for g, t, n in zip(grid, tile, pattern.canvas)))]
    for a in range(MAX_AXES):
        if a >= ndim:
            break
        length, kernel, dilation, stride, causal = pattern.axes[a]
        values = (length, kernel, dilation, stride, int(causal), tile[a], grid[a],
                  math.prod(grid[a + 1:]), math.prod(tile[a + 1:]))
        for name, value in zip(_AXIS_FIELDS, values):
            params.append((f"{name}{a}", value))
    return MaskSpec(CANVAS, tuple(params))
