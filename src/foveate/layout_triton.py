"""A Triton kernel that turns a dense block grid into a layout's padded lists, without host syncs.

:meth:`foveate.layout.BlockLayout.from_block_grid` uses it on CUDA (and, when asked, under the
Triton interpreter): in one launch, one program per row of the grid and one per column (the
transposed lists) reads the row's states, numbers the partial and the full blocks with a prefix sum, and writes
the counts and the column indices. The lists are as wide as the grid (no host sync to learn the
longest list), which content-selected patterns, built on every call, need.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .triton_launch import launch

_PARTIAL, _FULL = tl.constexpr(1), tl.constexpr(2)


@triton.jit
def _row_lists(src, s_col, n_cols, counts, indices, full_counts, full_indices, row_out, list_row,
               CHUNK: tl.constexpr):
    """One row's lists: its partial and its full blocks' column indices, and their counts."""
    n_part = 0
    n_full = 0
    for start in range(0, n_cols, CHUNK):
        cols = start + tl.arange(0, CHUNK)
        state = tl.load(src + cols.to(tl.int64) * s_col, mask=cols < n_cols, other=0)
        is_part = state == _PARTIAL
        is_full = state == _FULL
        slot_part = n_part + tl.cumsum(is_part.to(tl.int32), 0) - 1
        slot_full = n_full + tl.cumsum(is_full.to(tl.int32), 0) - 1
        tl.store(indices + list_row + slot_part, cols, mask=is_part)
        tl.store(full_indices + list_row + slot_full, cols, mask=is_full)
        n_part += tl.sum(is_part.to(tl.int32), 0)
        n_full += tl.sum(is_full.to(tl.int32), 0)
    tl.store(counts + row_out, n_part)
    tl.store(full_counts + row_out, n_full)


@triton.jit
def _grid_to_lists_kernel(
    grid, s_b, s_h, s_row, s_col,
    counts, indices, full_counts, full_indices,
    t_counts, t_indices, t_full_counts, t_full_indices,
    H, n_rows, n_cols,
    CHUNK: tl.constexpr,
):
    """Programs ``(i, b * H + h, 0)``: the lists of grid row ``i``; ``(j, b * H + h, 1)``: those
    of grid column ``j`` (the transposed lists); programs past their axis's length do nothing."""
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    base = grid + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h
    if tl.program_id(2) == 0:
        if i < n_rows:
            _row_lists(base + i.to(tl.int64) * s_row, s_col, n_cols, counts, indices, full_counts, full_indices,
                       bh * n_rows + i, (bh.to(tl.int64) * n_rows + i) * n_cols, CHUNK)
    else:
        if i < n_cols:
            _row_lists(base + i.to(tl.int64) * s_col, s_row, n_rows, t_counts, t_indices, t_full_counts,
                       t_full_indices, bh * n_cols + i, (bh.to(tl.int64) * n_cols + i) * n_rows, CHUNK)


def grid_to_lists(grid: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The lists of an int8 0/1/2 grid ``(B, H, n, m)`` along its last axis and along the one
    before (the transposed lists), in one launch: each ``[counts, indices, full_counts,
    full_indices]``, counts ``(B, H, n)`` int32 and indices ``(B, H, n, m)`` int32 (``m`` and
    ``n`` swapped for the transposed ones; entries past a row's count are unspecified), views
    of one allocation. ``grid`` may be a strided view (e.g. transposed)."""
    b, h, n, m = grid.shape
    shapes = [(b, h, n), (b, h, n, m), (b, h, n), (b, h, n, m), (b, h, m), (b, h, m, n), (b, h, m), (b, h, m, n)]
    sizes = [math.prod(shape) for shape in shapes]
    buffer = torch.empty(sum(sizes), dtype=torch.int32, device=grid.device)
    out = [part.view(shape) for part, shape in zip(buffer.split(sizes), shapes)]
    chunk = min(1024, triton.next_power_of_2(max(m, n, 16)))
    launch(_grid_to_lists_kernel, (max(n, m), b * h, 2), (grid, *grid.stride(), *out, h, n, m), dict(CHUNK=chunk),
           num_warps=4, num_stages=3)
    return out[:4], out[4:]
