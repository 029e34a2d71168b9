"""A Triton kernel that turns a dense block grid into a layout's padded lists, without host syncs.

:meth:`foveate.layout.BlockLayout.from_block_grid` uses it on CUDA (and, when asked, under the
Triton interpreter): in one launch, programs for tiles of grid rows and programs for tiles of
grid columns (the transposed lists) read the lines' states, number the partial and the full
blocks with a prefix sum along each line, and write the counts and the indices. The lists are
as wide as the grid (no host sync to learn the longest list), which content-selected patterns,
built on every call, need.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .triton_launch import cdiv, launch

#: Launch settings: up to ``lists`` grid lines per program, positions ``max_chunk`` at a time,
#: a tile of at most ``tile`` states (tests shrink them to run several steps and tiles). H200,
#: 16 heads of 256 x 256 blocks: 11.3 us (8 lines, 2 warps), against 17.5 us for 16 lines and
#: 4 warps and 19.3 us for one line per program (the kernel before the tiles).
CONFIG = {"lists": 8, "max_chunk": 1024, "tile": 4096, "num_warps": 2}

_PARTIAL, _FULL = tl.constexpr(1), tl.constexpr(2)


@triton.jit
def _tile_lists(base, s_list, s_pos, first, n_lists, n_pos, counts, indices, full_counts, full_indices, list_base,
                LISTS: tl.constexpr, CHUNK: tl.constexpr):
    """The lists of ``LISTS`` grid lines at once (rows, or columns for the transposed lists):
    line ``first + r`` holds its states at ``base + (first + r) * s_list + p * s_pos``; the
    partial and the full positions are numbered by a prefix sum along the line and written
    with their counts. A tile of lines (not one per program) keeps the loads of a column's
    states coalesced: neighbouring lines are neighbouring bytes."""
    lines = first + tl.arange(0, LISTS)
    line_ok = lines < n_lists
    n_part = tl.zeros((LISTS,), dtype=tl.int32)
    n_full = tl.zeros((LISTS,), dtype=tl.int32)
    out_rows = (list_base + lines).to(tl.int64) * n_pos
    for start in range(0, n_pos, CHUNK):
        pos = start + tl.arange(0, CHUNK)
        ok = line_ok[:, None] & (pos < n_pos)[None, :]
        state = tl.load(base + lines[:, None].to(tl.int64) * s_list + pos[None, :].to(tl.int64) * s_pos,
                        mask=ok, other=0)
        is_part = state == _PARTIAL
        is_full = state == _FULL
        slot_part = n_part[:, None] + tl.cumsum(is_part.to(tl.int32), 1) - 1
        slot_full = n_full[:, None] + tl.cumsum(is_full.to(tl.int32), 1) - 1
        cols = tl.broadcast_to(pos[None, :], (LISTS, CHUNK))
        tl.store(indices + out_rows[:, None] + slot_part, cols, mask=is_part)
        tl.store(full_indices + out_rows[:, None] + slot_full, cols, mask=is_full)
        n_part += tl.sum(is_part.to(tl.int32), 1)
        n_full += tl.sum(is_full.to(tl.int32), 1)
    tl.store(counts + list_base + lines, n_part, mask=line_ok)
    tl.store(full_counts + list_base + lines, n_full, mask=line_ok)


@triton.jit
def _grid_to_lists_kernel(
    grid, s_b, s_h, s_row, s_col,
    counts, indices, full_counts, full_indices,
    t_counts, t_indices, t_full_counts, t_full_indices,
    H, n_rows, n_cols,
    LISTS: tl.constexpr, CHUNK: tl.constexpr,
):
    """Programs ``(i, b * H + h, 0)``: the lists of grid rows ``i * LISTS ...``; ``(j, b * H +
    h, 1)``: those of grid columns ``j * LISTS ...`` (the transposed lists); programs past
    their axis's length do nothing."""
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    base = grid + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h
    if tl.program_id(2) == 0:
        if i * LISTS < n_rows:
            _tile_lists(base, s_row, s_col, i * LISTS, n_rows, n_cols, counts, indices, full_counts, full_indices,
                        bh * n_rows, LISTS, CHUNK)
    else:
        if i * LISTS < n_cols:
            _tile_lists(base, s_col, s_row, i * LISTS, n_cols, n_rows, t_counts, t_indices, t_full_counts,
                        t_full_indices, bh * n_cols, LISTS, CHUNK)


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
    chunk = min(CONFIG["max_chunk"], triton.next_power_of_2(max(m, n, 16)))  # positions per step
    lists = max(1, min(CONFIG["lists"], CONFIG["tile"] // chunk))
    lists = 1 << (lists.bit_length() - 1)  # lines per program (a power of two, as tl.arange needs)
    launch(_grid_to_lists_kernel, (cdiv(max(n, m), lists), b * h, 2), (grid, *grid.stride(), *out, h, n, m),
           dict(LISTS=lists, CHUNK=chunk), num_warps=CONFIG["num_warps"], num_stages=1)
    return out[:4], out[4:]
