"""The tiled token order of 2-D/3-D canvases (:class:`TiledOrder`) and the candidate tiles.

In raster order a block of 128 tokens is a thin strip of the canvas, so a neighborhood spans
many blocks, most of them partial. Tiling permutes the tokens so that each block is a
compact tile (e.g. 16x8, or 2x8x8 in 3-D): a neighborhood then covers few blocks, mostly
full ones.

The tiled order pads the canvas up to whole tiles. Padded keys are never allowed; a padded
query is given the neighborhood of the nearest real query (its coordinates clamped to the
canvas), which keeps border blocks full where possible; its output is discarded. So the
tiled sequence has ``prod(padded canvas)`` tokens, then the ``extra_kv`` keys.

``attention()`` applies all this; the pieces are public for drawing, simulation and tests:
:class:`TiledOrder` (the permutation and its inverse), :class:`~foveate.patterns.tiled.Tiled`
(a pattern in tiled order) and :func:`candidate_tiles`.
"""

from __future__ import annotations

import math

import torch

from ..kernel_choice import use_triton


def _row_major_strides(shape) -> list[int]:
    return [math.prod(shape[a + 1 :]) for a in range(len(shape))]


class TiledOrder:
    """Tokens ordered tile by tile (tiles in raster order of the tile grid, tokens in
    raster order inside a tile), on the canvas padded up to whole tiles."""

    def __init__(self, canvas: tuple[int, ...], tile: tuple[int, ...]):
        if len(tile) != len(canvas) or not all(isinstance(t, int) and t >= 1 for t in tile):
            raise ValueError(f"tile={tile!r}: expected {len(canvas)} positive ints for canvas {canvas}")
        self.canvas, self.tile = tuple(canvas), tuple(tile)
        self.ndim = len(canvas)
        self.grid = tuple(-(-n // t) for n, t in zip(canvas, tile))
        self.padded = tuple(g * t for g, t in zip(self.grid, tile))
        self.tile_size = math.prod(tile)
        self.num_tokens = math.prod(self.padded)  # the tiled sequence, padding included
        self.num_canvas = math.prod(canvas)

    def __repr__(self) -> str:
        return f"TiledOrder(canvas={self.canvas}, tile={self.tile})"

    @property
    def has_padding(self) -> bool:
        return self.padded != self.canvas

    # -- as the layout builder sees it ---------------------------------------------------
    def block_tile(self, block: int) -> tuple[int, ...] | None:
        """Blocks of ``block`` tokens are tiles exactly when ``block`` is the tile size."""
        return self.tile if block == self.tile_size else None

    # -- index arithmetic (tensors; also inside torch.compile) ---------------------------
    def coords(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Canvas coordinates of tiled positions ``idx`` (padding: coordinates past the canvas)."""
        tile_idx, inner = idx // self.tile_size, idx % self.tile_size
        out = []
        for g_stride, g, t_stride, t in zip(
            _row_major_strides(self.grid), self.grid, _row_major_strides(self.tile), self.tile
        ):
            out.append(((tile_idx // g_stride) % g) * t + (inner // t_stride) % t)
        return out

    def to_raster(self, idx: torch.Tensor, *, clamp: bool = False):
        """Raster index and realness of tiled positions ``idx`` (< ``num_tokens``).

        With ``clamp``, padding positions map to the nearest canvas token (and are reported
        real)."""
        coords = self.coords(idx)
        real = None
        flat = torch.zeros_like(idx)
        for c, n, stride in zip(coords, self.canvas, _row_major_strides(self.canvas)):
            inside = c < n
            real = inside if real is None else real & inside
            if clamp:
                c = torch.clamp(c, max=n - 1)
            flat = flat + c * stride
        if clamp:
            real = torch.ones_like(real)
        return flat, real

    def permutation(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(tiled_to_raster, raster_to_tiled)``: int64 index tensors of lengths
        ``num_tokens`` (``-1`` at padding) and ``num_canvas``."""
        idx = torch.arange(self.num_tokens, device=device)
        flat, real = self.to_raster(idx)
        tiled_to_raster = torch.where(real, flat, -1)
        raster_to_tiled = torch.empty(self.num_canvas, dtype=torch.int64, device=device)
        raster_to_tiled[flat[real]] = idx[real]
        return tiled_to_raster, raster_to_tiled

    # -- moving tensors ------------------------------------------------------------------
    def tile_tokens(self, x: torch.Tensor, *, method: str = "auto") -> torch.Tensor:
        """``(B, H, N, D)`` canvas tokens in raster order (``N = prod(canvas)``) ->
        ``(B, H, num_tokens, D)`` in tiled order, zeros at padding. A trailing feature axis is
        optional. Differentiable.

        ``method``: ``"triton"`` (a gathering copy kernel, :mod:`foveate.tiling.permute_triton`; CUDA,
        or CPU under ``TRITON_INTERPRET=1``), ``"torch"`` (reshape/permute copies, any device:
        the reference) or ``"auto"`` (triton for CUDA tensors it supports, outside
        ``torch.compile``, which fuses the torch path itself)."""
        if use_triton(method, x, lambda: _triton_takes(self, x)):
            from .permute_triton import tile_tokens

            return tile_tokens(self, x)
        squeeze = x.dim() == 3
        if squeeze:
            x = x[..., None]
        b, h, _, d = x.shape
        x = x.reshape(b, h, *self.canvas, d)
        pad = []
        for n_a, p_a in zip(reversed(self.canvas), reversed(self.padded)):
            pad += [0, p_a - n_a]
        if self.has_padding:
            x = torch.nn.functional.pad(x, [0, 0] + pad)
        split = [b, h]
        for g, t in zip(self.grid, self.tile):
            split += [g, t]
        x = x.reshape(*split, d)
        nd = self.ndim
        perm = [0, 1] + [2 + 2 * a for a in range(nd)] + [3 + 2 * a for a in range(nd)] + [2 + 2 * nd]
        x = x.permute(perm).reshape(b, h, self.num_tokens, d)
        return x[..., 0] if squeeze else x

    def untile_tokens(self, x: torch.Tensor, *, method: str = "auto") -> torch.Tensor:
        """Inverse of :meth:`tile_tokens`: ``(B, H, num_tokens, ...)`` -> ``(B, H, N, ...)``,
        padding dropped. A trailing feature axis is optional (lse has none). ``method`` as
        for :meth:`tile_tokens`."""
        if use_triton(method, x, lambda: _triton_takes(self, x)):
            from .permute_triton import untile_tokens

            return untile_tokens(self, x)
        squeeze = x.dim() == 3
        if squeeze:
            x = x[..., None]
        b, h, _, d = x.shape
        nd = self.ndim
        x = x.reshape(b, h, *self.grid, *self.tile, d)
        perm = [0, 1]
        for a in range(nd):
            perm += [2 + a, 2 + nd + a]
        x = x.permute(perm + [2 + 2 * nd]).reshape(b, h, *self.padded, d)
        if self.has_padding:
            x = x[(slice(None), slice(None)) + tuple(slice(0, n) for n in self.canvas)]
        x = x.reshape(b, h, self.num_canvas, d)
        return x[..., 0] if squeeze else x

    def tile_keys(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`tile_tokens` of keys or values ``(B, H, N + extra, D)``: the canvas tokens in
        tiled order, the extra tokens after them as they are."""
        n = self.num_canvas
        canvas = self.tile_tokens(x[:, :, :n])
        return torch.cat([canvas, x[:, :, n:]], dim=2) if x.shape[2] > n else canvas

    def untile_keys(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`tile_keys`."""
        n = self.num_tokens
        canvas = self.untile_tokens(x[:, :, :n])
        return torch.cat([canvas, x[:, :, n:]], dim=2) if x.shape[2] > n else canvas


def _triton_takes(order: TiledOrder, x: torch.Tensor) -> bool:
    """Whether ``method="auto"`` moves ``x`` with the Triton kernel: outside ``torch.compile``
    (which fuses the torch path itself), with Triton installed, for inputs it supports."""
    if torch.compiler.is_compiling():
        return False
    try:
        from .permute_triton import supports
    except ImportError:  # no Triton
        return False
    return supports(order, x) is None


def candidate_tiles(canvas: tuple[int, ...], size: int = 128) -> list[tuple[int, ...]]:
    """Tile shapes of ``size`` tokens (powers of two when ``size`` is one) that fit the
    canvas up to padding: each side at most the canvas side rounded up to a power of two."""
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    limits = [1 << max(0, (n - 1).bit_length()) for n in canvas]
    out: list[tuple[int, ...]] = [()]
    for limit in limits:
        out = [t + (d,) for t in out for d in divisors if d <= limit]
    return [t for t in out if math.prod(t) == size]
