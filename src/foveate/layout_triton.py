"""A Triton kernel that turns a dense block grid into a layout's padded lists, without host syncs.

:meth:`foveate.layout.BlockLayout.from_block_grid` uses it on CUDA (and, when asked, under the
Triton interpreter): one program per row of the grid (per column, for the transposed lists)
reads the row's states, numbers the partial and the full blocks with a prefix sum, and writes
the counts and the column indices. The lists are as wide as the grid (no host sync to learn the
longest list), which content-selected patterns, built on every call, need.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_launch import launch

_PARTIAL, _FULL = tl.constexpr(1), tl.constexpr(2)


@triton.jit
def _grid_to_lists_kernel(
    grid, s_b, s_h, s_row, s_col,
    counts, indices, full_counts, full_indices,
    H, n_rows, n_cols,
    CHUNK: tl.constexpr,
):
    row = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    src = grid + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h + row.to(tl.int64) * s_row
    list_row = (bh.to(tl.int64) * n_rows + row) * n_cols
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
    tl.store(counts + bh * n_rows + row, n_part)
    tl.store(full_counts + bh * n_rows + row, n_full)


def grid_to_lists(grid: torch.Tensor) -> list[torch.Tensor]:
    """``[counts, indices, full_counts, full_indices]`` along the last axis of an int8 0/1/2 grid
    ``(B, H, n, m)``: counts ``(B, H, n)`` int32, indices ``(B, H, n, m)`` int32 (entries past a
    row's count are unspecified). ``grid`` may be a strided view (e.g. transposed)."""
    b, h, n, m = grid.shape
    out = [torch.empty(b, h, n, dtype=torch.int32, device=grid.device),
           torch.empty(b, h, n, m, dtype=torch.int32, device=grid.device)]
    out += [torch.empty_like(out[0]), torch.empty_like(out[1])]
    chunk = min(1024, triton.next_power_of_2(max(m, 16)))
    launch(_grid_to_lists_kernel, (n, b * h), (grid, *grid.stride(), *out, h, n, m), dict(CHUNK=chunk),
           num_warps=4, num_stages=3)
    return out
