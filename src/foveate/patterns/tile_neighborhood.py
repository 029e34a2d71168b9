"""``TileNeighborhood``: Sliding Tile Attention (a neighborhood on the grid of tiles)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import per_axis, set_ints
from .kernel_mask import Window
from .interval_canvas import IntervalCanvas, check_canvas


@dataclass(frozen=True)
class TileNeighborhood(IntervalCanvas):
    """Sliding Tile Attention (STA; Zhang et al., "Fast Video Generation with Sliding Tile
    Attention", 2025): a neighborhood on the grid of tiles.

    The canvas is cut into tiles of shape ``tile`` (the canvas a multiple of the tile on every
    axis), a grid of ``G = canvas // tile`` tiles per axis. Every token of a tile sees every
    token of the ``window`` tiles around it: per axis, the query in tile ``t = y // tile``
    sees the tiles ``[c - window // 2, c + window // 2]``, the window's centre
    ``c = clamp(t, window // 2, G - 1 - window // 2)`` moved inward at the borders of the grid
    (as a neighborhood's window, and as STA's released mask does), so every query sees
    ``window * tile`` keys per axis. In token coordinates: the keys
    ``[tile * s, tile * (s + window))`` with ``s = clamp(t - window // 2, 0, G - window)``.
    A key is seen when it is seen on every axis. The keys are those of
    ``Neighborhood(canvas, kernel=window * tile, stride=tile)`` (GNA's view of STA).

    Args:
        canvas: canvas shape, 1 to 3 axes (STA: ``(T, H, W)`` of a video, e.g.
            ``(30, 48, 80)``); ``q_len == prod(canvas)``, ``kv_len == prod(canvas) + extra_kv``.
        tile: tile shape per axis (an int applies to every axis), dividing the canvas (STA:
            ``(6, 8, 8)``).
        window: window size in tiles per axis, odd, ``1 <= window <= canvas // tile`` (STA:
            e.g. ``(3, 3, 3)``).
        extra_kv: keys after the canvas tokens (STA's text tokens) that every query sees.

    Token order: STA runs on tokens laid out tile by tile. ``attention(..., tile=tile)`` (the
    pattern's ``tile``, when it holds as many tokens as the backend's blocks) runs this tiled
    order: every visited block is then full, no mask work. ``tile="auto"`` ranks tiles by the
    block counts of the equivalent neighborhood (:attr:`axes`). Its kernel mask is that
    neighborhood's :class:`~foveate.patterns.kernel_mask.Window` (the Triton backend's tiled
    path takes only patterns with a kernel mask); the layout is built from the tile windows
    (:mod:`.interval_canvas`).
    """

    # field(): no default, although the base class has a class-level `canvas = None`.
    canvas: tuple[int, ...] = field()
    tile: tuple[int, ...] = field()
    window: tuple[int, ...] = field()
    extra_kv: int = 0

    def __post_init__(self):
        canvas = check_canvas(self.canvas)
        ndim = len(canvas)
        tile = per_axis("tile", self.tile, ndim)
        window = per_axis("window", self.window, ndim)
        set_ints(self, extra_kv=0)
        for a, (n, t, w) in enumerate(zip(canvas, tile, window)):
            if t < 1 or n % t:
                raise ValueError(f"tile={tile} does not divide canvas={canvas}: need tile >= 1 and "
                                 f"canvas % tile == 0 on every axis (axis {a}: {n} % {t})")
            if w < 1 or w % 2 == 0 or w > n // t:
                raise ValueError(f"window={window}: need an odd number of tiles, 1 <= window <= canvas // tile "
                                 f"on every axis (axis {a}: {w}, {n // t} tiles)")
        for name, value in (("canvas", canvas), ("tile", tile), ("window", window)):
            object.__setattr__(self, name, value)

    @property
    def grid(self) -> tuple[int, ...]:
        """Tiles per axis, ``canvas // tile``."""
        return tuple(n // t for n, t in zip(self.canvas, self.tile))

    def axis_interval(self, axis: int, x: torch.Tensor):
        t, w, g = self.tile[axis], self.window[axis], self.canvas[axis] // self.tile[axis]
        first = torch.clamp(x // t - w // 2, min=0, max=g - w)  # the window's first tile
        return first * t, (first + w) * t

    # -- tiling ------------------------------------------------------------------------
    can_tile = True

    @property
    def axes(self):
        """Per-axis ``(length, kernel, dilation, stride, causal)`` of the neighborhood with the
        same keys (kernel ``window * tile``, stride ``tile``): what the simulator's block counts
        (``tile="auto"``) read."""
        return tuple((n, w * t, 1, t, False) for n, t, w in zip(self.canvas, self.tile, self.window))

    def kernel_mask(self, q_len: int, kv_len: int) -> Window:
        self.check_lengths(q_len, kv_len)
        return Window(self.canvas, tuple(spec[1:] for spec in self.axes), self.extra_kv)


__all__ = ["TileNeighborhood"]
