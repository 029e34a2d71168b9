"""Analytic block layouts of neighborhood patterns, in any token order.

The neighborhood mask is separable: a (query, key) pair is allowed when it is allowed on
every axis. So for a box of queries ``X`` and a box of keys ``Y``:

* some pair is allowed  <=>  on every axis, some ``(x, y)`` in ``X_a x Y_a`` is allowed;
* every pair is allowed <=>  on every axis, every ``(x, y)`` in ``X_a x Y_a`` is allowed.

Windows are monotone in the query coordinate (inside a dilation group), so both questions
reduce to a few comparisons of window ends per axis. A block is a union of a few boxes
(one tile, or up to ``2 D - 1`` boxes in raster order), so each candidate block pair is
classified exactly with tensor arithmetic, in time proportional to the visited blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..tiling.raster import RasterOrder
from ..layout import BlockLayout
from .neighborhood import Neighborhood, axis_window


@dataclass
class _Axis:
    """One canvas axis: the window ``[start[x], end[x])`` (group coordinates) of each query."""

    length: int
    dilation: int
    start: torch.Tensor
    end: torch.Tensor

    @classmethod
    def of(cls, length, kernel, dilation, stride, causal, device):
        x = torch.arange(length, device=device, dtype=torch.int64)
        start, end = axis_window(x, length, kernel, dilation, stride, causal)
        return cls(length, dilation, start, end)

    def _groups(self, x0, x1):
        """Yield ``(first, last, valid)``: per dilation group present in ``[x0, x1]``, its
        first and last coordinate there."""
        d = self.dilation
        span = int((x1 - x0).max()) + 1 if x0.numel() else 1
        for g in range(min(d, span)):
            first = x0 + g
            valid = first <= x1
            first = torch.where(valid, first, x0)
            last = first + ((x1 - first) // d) * d
            yield first, last, valid

    def any_allowed(self, x0, x1, y0, y1):
        """Whether some query in ``[x0, x1]`` may see some key in ``[y0, y1]`` (per element)."""
        d = self.dilation
        if d == 1:
            return (self.start[x0] <= y1) & (self.end[x1] > y0)
        result = torch.zeros_like(x0, dtype=torch.bool)
        for first, last, valid in self._groups(x0, x1):
            g = first % d
            y_first = y0 + (g - y0) % d  # the group's keys inside [y0, y1]
            y_last = y1 - (y1 - g) % d
            result |= (
                valid & (y_first <= y_last)
                & (self.start[first] <= y_last // d) & (self.end[last] > y_first // d)
            )
        return result

    def all_allowed(self, x0, x1, y0, y1):
        """Whether every query in ``[x0, x1]`` may see every key in ``[y0, y1]``."""
        d = self.dilation
        if d == 1:
            return (self.start[x1] <= y0) & (self.end[x0] > y1)
        # Two coordinates of one range lie in different groups, which never see each other.
        return (
            (x0 == x1) & (y0 == y1) & (x0 % d == y0 % d)
            & (self.start[x0] <= y0 // d) & (self.end[x0] > y0 // d)
        )

    def key_range(self, x0, x1):
        """Raw bounds ``[lo, hi]`` of the keys that queries in ``[x0, x1]`` may see."""
        d = self.dilation
        if d == 1:
            return self.start[x0], self.end[x1] - 1
        lo = torch.full_like(x0, self.length)
        hi = torch.full_like(x0, -1)
        for first, last, valid in self._groups(x0, x1):
            g = first % d
            lo = torch.where(valid, torch.minimum(lo, g + d * self.start[first]), lo)
            hi = torch.where(valid, torch.maximum(hi, g + d * (self.end[last] - 1)), hi)
        return lo, hi


def build_canvas_layout(
    pattern: Neighborhood, *, block_q: int, block_kv: int, device: torch.device, tile=None
) -> BlockLayout:
    """The exact BlockLayout of ``pattern`` in raster order (``tile=None``) or tiled order."""
    axes = [_Axis.of(*spec, device) for spec in pattern.axes]
    return layout_of_axes(pattern, axes, block_q=block_q, block_kv=block_kv, device=device, tile=tile)


def layout_of_axes(pattern, axes, *, block_q: int, block_kv: int, device: torch.device, tile=None) -> BlockLayout:
    """The exact BlockLayout of a separable canvas pattern from its per-axis windows ``axes``
    (one :class:`_Axis` per canvas axis: each query coordinate's window ``[start, end)``,
    monotone), in raster order or in the tiled order of ``tile`` (then blocks are whole tiles).
    ``pattern`` gives the canvas and ``extra_kv``. Neighborhoods and the interval patterns
    (:mod:`.interval_canvas`) share it."""
    order = token_order(pattern.canvas, tile)
    tiles = _product_tiles(pattern, order, block_q, block_kv)
    if tiles is not None:
        return _product_layout(pattern, axes, order, *tiles, block_q, block_kv, device)
    if tile is not None:
        raise ValueError(
            f"tile={tile}: blocks must be whole tiles; block_q={block_q} and block_kv={block_kv} "
            f"must equal the tile size {order.tile_size}"
        )
    return _box_layout(pattern, axes, order, block_q, block_kv, device)


def _product_tiles(pattern: Neighborhood, order, block_q: int, block_kv: int):
    """``(q_tile, kv_tile)`` when every block is a tile of the order, and the extra keys (if
    any) start on a kv block boundary: then the layout is a product. Else ``None``."""
    q_tile, kv_tile = order.block_tile(block_q), order.block_tile(block_kv)
    if q_tile is None or kv_tile is None or (pattern.extra_kv and order.num_tokens % block_kv):
        return None
    return q_tile, kv_tile


def _allowed_pairs(pattern: Neighborhood, axes, padded=None) -> int:
    """Allowed pairs of the mask; on a padded (tiled) canvas, a padded query counts as the
    query at its clamped coordinates, as the tiled mask defines it."""
    padded = padded or pattern.canvas
    total = 1
    for ax, n_pad in zip(axes, padded):
        per_query = ax.end - ax.start
        # Separable: the sum over queries of a product of per-axis counts is the product of sums.
        total *= int(per_query.sum()) + (n_pad - ax.length) * int(per_query[-1])
    return total + math.prod(padded) * pattern.extra_kv


# -- blocks that are tiles: the layout is a product of per-axis layouts -----------------------


def _axis_pairs(ax: _Axis, q_chunk: int, kv_chunk: int):
    """Along one axis cut into chunks: the (q chunk, kv chunk) pairs with some allowed pair,
    ordered by q chunk then kv chunk, and whether every pair is allowed."""
    device = ax.start.device
    length = ax.length
    i = torch.arange(-(-length // q_chunk), device=device)
    x0, x1 = i * q_chunk, torch.clamp((i + 1) * q_chunk, max=length) - 1
    lo, hi = ax.key_range(x0, x1)
    j_first = lo // kv_chunk
    count = hi // kv_chunk - j_first + 1
    qi = torch.repeat_interleave(i, count)
    j = j_first[qi] + torch.arange(qi.numel(), device=device) - (torch.cumsum(count, 0) - count)[qi]
    y0, y1 = j * kv_chunk, torch.clamp((j + 1) * kv_chunk, max=length) - 1
    some = ax.any_allowed(x0[qi], x1[qi], y0, y1)
    # A kv chunk that runs past the canvas holds padding keys, which are never allowed.
    every = ax.all_allowed(x0[qi], x1[qi], y0, y1) & ((j + 1) * kv_chunk <= length)
    return qi[some], j[some], every[some]


def _pad_lists(row, col, full, n_rows):
    """Pairs ordered by row -> padded ``(index, full, valid)`` of shape ``(n_rows, width)``."""
    counts = torch.bincount(row, minlength=n_rows)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    pos = torch.arange(row.numel(), device=row.device) - (torch.cumsum(counts, 0) - counts)[row]
    index = torch.zeros(n_rows, width, dtype=torch.int64, device=row.device)
    is_full = torch.zeros(n_rows, width, dtype=torch.bool, device=row.device)
    valid = torch.zeros_like(is_full)
    index[row, pos], is_full[row, pos], valid[row, pos] = col, full, True
    return index, is_full, valid


def _product_lists(per_axis, col_grid):
    """Combine per-axis padded lists into block lists of the product order.

    ``per_axis[a] = (index, full, valid)`` of shape ``(rows_a, width_a)``; rows of the result
    are the raster order of the ``rows_a`` grid, and a listed column is the raster index, in
    ``col_grid``, of the per-axis columns. Returns packed partial and full lists.
    """
    ndim = len(per_axis)
    strides = [math.prod(col_grid[a + 1 :]) for a in range(ndim)]
    index, full, valid = 0, True, True
    for a, (idx, ful, val) in enumerate(per_axis):
        shape = [1] * (2 * ndim)
        shape[a], shape[ndim + a] = idx.shape
        index = index + idx.view(shape) * strides[a]
        full = full & ful.view(shape)
        valid = valid & val.view(shape)
    rows = math.prod(idx.shape[0] for idx, _, _ in per_axis)
    index, full, valid = (t.reshape(rows, -1) for t in (index, full, valid))
    return _pack_rows(valid & ~full, index) + _pack_rows(valid & full, index)


def _pack_rows(select: torch.Tensor, values: torch.Tensor):
    """Move the selected entries of each row to its front: ``(counts, indices)`` int32."""
    counts = select.sum(dim=1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    pos = torch.cumsum(select, dim=1) - 1
    flat = (torch.arange(select.shape[0], device=select.device)[:, None] * width + pos)[select]
    out = torch.zeros(select.shape[0] * width, dtype=torch.int32, device=select.device)
    out[flat] = values[select].to(torch.int32)
    return [counts.to(torch.int32), out.view(-1, width)]


def _append_full(counts, indices, extra: torch.Tensor, rows: torch.Tensor):
    """Append the ascending columns ``extra`` to the listed ``rows`` of a packed list."""
    if extra.numel() == 0 or rows.numel() == 0:
        return counts, indices
    width = max(indices.shape[1], int(counts[rows].max()) + extra.numel())
    out = torch.zeros(indices.shape[0], width, dtype=torch.int32, device=indices.device)
    out[:, : indices.shape[1]] = indices
    pos = counts[rows].long()[:, None] + torch.arange(extra.numel(), device=extra.device)
    out[rows[:, None], pos] = extra.to(torch.int32)
    counts = counts.clone()
    counts[rows] += extra.numel()
    return counts, out


def _product_layout(pattern, axes, order, q_tile, kv_tile, block_q, block_kv, device) -> BlockLayout:
    n_canvas = order.num_tokens  # the padded canvas in a tiled order
    q_len, kv_len = n_canvas, n_canvas + pattern.extra_kv
    q_grid = [-(-n // t) for n, t in zip(pattern.canvas, q_tile)]
    kv_grid = [-(-n // t) for n, t in zip(pattern.canvas, kv_tile)]
    fwd, bwd = [], []
    for ax, tq, tk, gq, gk in zip(axes, q_tile, kv_tile, q_grid, kv_grid):
        qi, kj, full = _axis_pairs(ax, tq, tk)
        fwd.append(_pad_lists(qi, kj, full, gq))
        by_kv = torch.argsort(kj * gq + qi)
        bwd.append(_pad_lists(kj[by_kv], qi[by_kv], full[by_kv], gk))
    kv_num, kv_idx, full_kv_num, full_kv_idx = _product_lists(fwd, kv_grid)
    q_num, q_idx, full_q_num, full_q_idx = _product_lists(bwd, q_grid)
    if pattern.extra_kv:  # whole kv blocks of extra tokens, full for every query block
        nq, n_canvas_kv, nkv = math.prod(q_grid), n_canvas // block_kv, -(-kv_len // block_kv)
        all_q = torch.arange(nq, device=device)
        extra = torch.arange(n_canvas_kv, nkv, device=device)
        full_kv_num, full_kv_idx = _append_full(full_kv_num, full_kv_idx, extra, all_q)
        pad = nkv - n_canvas_kv
        q_num, q_idx, full_q_num, full_q_idx = (
            torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) for t in (q_num, q_idx, full_q_num, full_q_idx)
        )
        full_q_num, full_q_idx = _append_full(full_q_num, full_q_idx, all_q, extra)
    lists = dict(
        kv_num_blocks=kv_num, kv_indices=kv_idx, full_kv_num_blocks=full_kv_num, full_kv_indices=full_kv_idx,
        q_num_blocks=q_num, q_indices=q_idx, full_q_num_blocks=full_q_num, full_q_indices=full_q_idx,
    )
    if isinstance(order, RasterOrder):
        mask_mod, padded = pattern.mask_mod(q_len, kv_len), None
    else:
        from .tiled import Tiled

        mask_mod, padded = Tiled(pattern, order.tile).mask_mod(q_len, kv_len), order.padded
    return BlockLayout(
        block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len, mask_mod=mask_mod,
        allowed_pairs=_allowed_pairs(pattern, axes, padded),
        **{name: t[None, None] for name, t in lists.items()},
    )


# -- any token order: blocks as unions of boxes ------------------------------------------------


def _box_layout(pattern, axes, order, block_q, block_kv, device) -> BlockLayout:
    ndim = len(axes)
    n_canvas = math.prod(pattern.canvas)
    q_len, kv_len = n_canvas, n_canvas + pattern.extra_kv
    nkv = -(-kv_len // block_kv)

    q_lo, q_hi, q_valid = order.block_boxes(block_q, device)
    k_lo, k_hi, k_valid = order.block_boxes(block_kv, device)
    n_canvas_kv = k_lo.shape[0]  # kv blocks that hold canvas tokens

    # 1. Candidates: blocks covering the key region reached by each q block (a superset).
    big = torch.iinfo(torch.int64).max
    reg_lo = torch.full((q_lo.shape[0], ndim), big, dtype=torch.int64, device=device)
    reg_hi = torch.full_like(reg_lo, -1)
    x_min = torch.full_like(reg_lo, big)
    x_max = torch.full_like(reg_lo, -1)
    for i in range(q_lo.shape[1]):
        v = q_valid[:, i]
        for a, ax in enumerate(axes):
            lo, hi = ax.key_range(q_lo[:, i, a], q_hi[:, i, a])
            reg_lo[:, a] = torch.where(v, torch.minimum(reg_lo[:, a], lo), reg_lo[:, a])
            reg_hi[:, a] = torch.where(v, torch.maximum(reg_hi[:, a], hi), reg_hi[:, a])
            x_min[:, a] = torch.where(v, torch.minimum(x_min[:, a], q_lo[:, i, a]), x_min[:, a])
            x_max[:, a] = torch.where(v, torch.maximum(x_max[:, a], q_hi[:, i, a]), x_max[:, a])
    # A q block on a single coordinate of a dilated axis reaches only its own group's rows.
    dil = torch.tensor([ax.dilation for ax in axes], device=device)
    step = torch.where(x_min == x_max, dil, 1)
    qb, kb = order.blocks_in_regions(reg_lo, reg_hi, step, block_kv)
    if pattern.extra_kv:
        first_extra = n_canvas // block_kv
        extra_blocks = torch.arange(first_extra, nkv, device=device)
        nq = q_lo.shape[0]
        qb = torch.cat([qb, torch.arange(nq, device=device).repeat_interleave(extra_blocks.numel())])
        kb = torch.cat([kb, extra_blocks.repeat(nq)])
        key = torch.unique(qb * nkv + kb)
        qb, kb = key // nkv, key % nkv

    # 2. Exact classification of each candidate, box pair by box pair.
    some = torch.zeros(qb.numel(), dtype=torch.bool, device=device)
    every = torch.ones_like(some)
    k_canvas = kb < n_canvas_kv
    kb_c = torch.clamp(kb, max=n_canvas_kv - 1)
    for i in range(q_lo.shape[1]):
        for j in range(k_lo.shape[1]):
            sel = torch.nonzero(q_valid[qb, i] & k_valid[kb_c, j] & k_canvas).squeeze(1)
            if sel.numel() == 0:
                continue
            qs, ks = qb[sel], kb_c[sel]
            pair_some = torch.ones_like(sel, dtype=torch.bool)
            pair_every = torch.ones_like(pair_some)
            for a, ax in enumerate(axes):
                x0, x1, y0, y1 = q_lo[qs, i, a], q_hi[qs, i, a], k_lo[ks, j, a], k_hi[ks, j, a]
                pair_some &= ax.any_allowed(x0, x1, y0, y1)
                pair_every &= ax.all_allowed(x0, x1, y0, y1)
            some[sel] |= pair_some
            every[sel] &= pair_every
    if pattern.extra_kv:
        some |= (kb + 1) * block_kv > n_canvas  # the kv block holds extra tokens
    qb, kb, full = qb[some], kb[some], every[some]

    return BlockLayout.from_pairs(
        qb, kb, full, block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
        mask_mod=pattern.mask_mod(q_len, kv_len), allowed_pairs=_allowed_pairs(pattern, axes),
    )


def block_counts(pattern: Neighborhood, *, block_q: int, block_kv: int, tile=None) -> tuple[int, int] | None:
    """``(visited, full)`` block counts of the layout, without building it, when its blocks
    are tiles (the product case: counts are products of per-axis counts) and the pattern's
    per-axis windows are known (a neighborhood's ``axes``, or an interval pattern's
    ``axis_interval``: :mod:`.interval_canvas`); else ``None``."""
    cpu = torch.device("cpu")
    if getattr(pattern, "axes", None) is not None:
        axes = [_Axis.of(*spec, cpu) for spec in pattern.axes]
    elif pattern.can_tile and hasattr(pattern, "axis_interval"):
        from .interval_canvas import interval_axes

        axes = interval_axes(pattern, cpu)
    else:
        return None
    order = token_order(pattern.canvas, tile)
    tiles = _product_tiles(pattern, order, block_q, block_kv)
    if tiles is None:
        return None
    q_tile, kv_tile = tiles
    n_tokens = order.num_tokens
    visited = full = 1
    for ax, tq, tk in zip(axes, q_tile, kv_tile):
        _, _, every = _axis_pairs(ax, tq, tk)
        visited *= every.numel()
        full *= int(every.sum())
    if pattern.extra_kv:
        extra = -(-n_tokens // block_q) * (-(-(n_tokens + pattern.extra_kv) // block_kv) - n_tokens // block_kv)
        visited, full = visited + extra, full + extra
    return visited, full


def token_order(canvas, tile):
    """Raster order (``tile=None``) or the tiled order of ``tile``."""
    if tile is None:
        return RasterOrder(canvas)
    from ..tiling.order import TiledOrder

    return TiledOrder(canvas, tile)
