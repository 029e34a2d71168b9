"""Token orders on a canvas, as the analytic layout builders see them.

A *token order* says which canvas tokens make up each block of the flat sequence, as a few
axis-aligned boxes, and which blocks cover a box-shaped region of the canvas. Raster
(row-major) order lives here; tiled orders (``foveate.tiling``) implement the same two
methods.
"""

from __future__ import annotations

import math

import torch


class RasterOrder:
    """Row-major token order: block ``b`` holds tokens ``[b * block, (b + 1) * block)``.

    A run of consecutive raster tokens on a ``D``-axis canvas is the union of at most
    ``2 * D - 1`` boxes (a partial row, full rows, full planes, ..., then back down).
    """

    def __init__(self, canvas: tuple[int, ...]):
        self.canvas = tuple(canvas)
        self.ndim = len(canvas)
        # units[k] = tokens in one index step of axis k - 1 (units[ndim] = 1, units[0] = N).
        self.units = [math.prod(canvas[k:]) for k in range(self.ndim + 1)]
        self.num_tokens = self.units[0]

    def block_tile(self, block: int) -> tuple[int, ...] | None:
        """The tile shape whose tiles, in raster order of the tile grid, are exactly the
        blocks of ``block`` raster tokens; ``None`` if blocks are not such tiles.

        A block is a tile when it is a whole number of rows (planes, ...) that divides the
        next axis, e.g. 128 tokens on a ``(64, 256)`` canvas are ``(1, 128)`` tiles and on a
        ``(64, 32)`` canvas ``(4, 32)`` tiles. A block holding the whole canvas is one tile.
        """
        if block >= self.num_tokens:
            return self.canvas
        for k in range(self.ndim - 1, -1, -1):
            inner = self.units[k + 1]
            if block % inner == 0 and self.canvas[k] % (block // inner) == 0:
                return (1,) * k + (block // inner,) + self.canvas[k + 1 :]
            if block < inner:
                return None
        return None

    def coord(self, flat: torch.Tensor, axis: int) -> torch.Tensor:
        return (flat // self.units[axis + 1]) % self.canvas[axis]

    def block_boxes(self, block: int, device: torch.device):
        """Boxes of every block that holds canvas tokens.

        Returns ``(lo, hi, valid)``: ``lo, hi`` int64 ``(num_blocks, 2 * D - 1, D)``
        inclusive coordinates; ``valid`` bool ``(num_blocks, 2 * D - 1)``.
        """
        d, u, n = self.ndim, self.units, self.num_tokens
        start = torch.arange(0, n, block, device=device, dtype=torch.int64)
        end = torch.clamp(start + block, max=n)
        runs = []  # (first, stop, level): [first, stop) is a box of level `level`
        cur = start
        for level in range(d, 0, -1):  # up: finish the partial row, then plane, ...
            stop_level = (end // u[level]) * u[level]
            if level > 1:
                next_boundary = -(-cur // u[level - 1]) * u[level - 1]
                stop = torch.minimum(next_boundary, stop_level)
            else:
                stop = stop_level
            stop = torch.maximum(stop, cur)
            runs.append((cur, stop, level))
            cur = stop
        for level in range(2, d + 1):  # down: the remaining planes, rows, tokens
            stop = torch.maximum((end // u[level]) * u[level], cur)
            runs.append((cur, stop, level))
            cur = stop
        lo = torch.empty(start.numel(), len(runs), d, dtype=torch.int64, device=device)
        hi = torch.empty_like(lo)
        valid = torch.empty(start.numel(), len(runs), dtype=torch.bool, device=device)
        for i, (first, stop, level) in enumerate(runs):
            # A level-k box: axes < k-1 fixed, axis k-1 a range, axes >= k whole.
            valid[:, i] = stop > first
            last = torch.maximum(stop - 1, first)
            for a in range(d):
                if a < level - 1:
                    lo[:, i, a] = hi[:, i, a] = self.coord(first, a)
                elif a == level - 1:
                    lo[:, i, a], hi[:, i, a] = self.coord(first, a), self.coord(last, a)
                else:
                    lo[:, i, a], hi[:, i, a] = 0, self.canvas[a] - 1
        # Move each block's boxes to the front and drop slots that no block uses, so that
        # callers loop over as few box slots as possible.
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
        width = max(int(valid.sum(dim=1).max()), 1)
        order = order[:, :width]
        pick = order[:, :, None].expand(-1, -1, d)
        return lo.gather(1, pick), hi.gather(1, pick), valid.gather(1, order)

    def blocks_in_regions(self, lo: torch.Tensor, hi: torch.Tensor, step: torch.Tensor, block: int):
        """Blocks holding tokens of each region.

        A region is ``lo[r, a] + step[r, a] * t <= hi[r, a]`` on each axis (the last axis is
        taken contiguous). Returns ``(region, block)`` int64 1-D tensors, ordered by region
        then block, without repeats. Empty regions (``hi < lo`` on an axis) have no blocks.
        """
        device = lo.device
        d, u = self.ndim, self.units
        nonempty = (hi >= lo).all(dim=1)
        counts = torch.where(hi >= lo, (hi - lo) // step + 1, 0)[:, : d - 1]
        rows_per_region = torch.where(nonempty, counts.prod(dim=1), 0)
        region = torch.repeat_interleave(torch.arange(lo.shape[0], device=device), rows_per_region)
        rank = torch.arange(region.numel(), device=device) - (
            torch.cumsum(rows_per_region, 0) - rows_per_region
        )[region]
        row_start = torch.zeros_like(region)
        for a in range(d - 2, -1, -1):  # mixed radix, last outer axis fastest
            c = counts[region, a]
            coord = lo[region, a] + step[region, a] * (rank % c)
            rank = rank // c
            row_start += coord * u[a + 1]
        first = (row_start + lo[region, d - 1]) // block
        last = (row_start + hi[region, d - 1]) // block
        per_row = last - first + 1
        owner = torch.repeat_interleave(region, per_row)
        rows = torch.repeat_interleave(torch.arange(region.numel(), device=device), per_row)
        blocks = first[rows] + torch.arange(owner.numel(), device=device) - (
            torch.cumsum(per_row, 0) - per_row
        )[rows]
        # Rows ascend in flat order, so blocks ascend within a region; drop repeats.
        nblocks = -(-self.num_tokens // block)
        key = torch.unique_consecutive(owner * nblocks + blocks)
        return key // nblocks, key % nblocks
