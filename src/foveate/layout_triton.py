"""A Triton kernel that turns a dense block grid into a layout's padded lists, without host syncs.

:meth:`foveate.layout.BlockLayout.from_block_grid` uses it on CUDA (and, when asked, under the
Triton interpreter): in one launch, programs for tiles of grid rows and programs for tiles of
grid columns (the transposed lists) read the lines' states, number the partial and the full
blocks with a prefix sum along each line, and write the counts and the indices. The lists are
as wide as the grid (no host sync to learn the longest list), which content-selected patterns,
built on every call, need. Either direction can be built alone (a layout builds its transposed
lists when the backward first needs them), and a boolean selection can be read with the state
of each selected block given apart (the causal states of a causal selection), so that the
combined grid is never written.
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
def append_to_lists(state, pos, n_part, n_full, out_rows, indices, full_indices):
    """One step along a tile of lines: ``state`` ``(lines, chunk)`` the states at positions
    ``pos`` ``(chunk,)`` (ascending, after those of earlier steps); the partial and the full
    positions are numbered by a prefix sum after the ``n_part`` / ``n_full`` ``(lines,)``
    listed so far and written to ``indices`` / ``full_indices`` at ``out_rows`` (each line's
    first entry). Returns the new counts. (Also the selection kernel's, which writes the
    forward's lists of its own selection.)"""
    is_part = state == _PARTIAL
    is_full = state == _FULL
    slot_part = n_part[:, None] + tl.cumsum(is_part.to(tl.int32), 1) - 1
    slot_full = n_full[:, None] + tl.cumsum(is_full.to(tl.int32), 1) - 1
    cols = tl.broadcast_to(pos[None, :], state.shape)
    tl.store(indices + out_rows[:, None] + slot_part, cols, mask=is_part)
    tl.store(full_indices + out_rows[:, None] + slot_full, cols, mask=is_full)
    return n_part + tl.sum(is_part.to(tl.int32), 1), n_full + tl.sum(is_full.to(tl.int32), 1)


def list_buffers(shapes, device) -> list[torch.Tensor]:
    """int32 tensors of these shapes, views of one allocation (a layout's lists)."""
    sizes = [math.prod(shape) for shape in shapes]
    buffer = torch.empty(sum(sizes), dtype=torch.int32, device=device)
    return [part.view(shape) for part, shape in zip(buffer.split(sizes), shapes)]


@triton.jit
def _tile_lists(base, s_list, s_pos, states, s_state_list, s_state_pos, first, n_lists, n_pos, counts, indices,
                full_counts, full_indices, list_base, LISTS: tl.constexpr, CHUNK: tl.constexpr,
                SELECTED: tl.constexpr, HAS_STATES: tl.constexpr):
    """The lists of ``LISTS`` grid lines at once (rows, or columns for the transposed lists):
    line ``first + r`` holds its states at ``base + (first + r) * s_list + p * s_pos``; the
    partial and the full positions are numbered by a prefix sum along the line and written
    with their counts. A tile of lines (not one per program) keeps the loads of a column's
    states coalesced: neighbouring lines are neighbouring bytes. ``SELECTED``: the grid holds
    0/1 (a selection), a selected block's state being ``states`` at the same place
    (``HAS_STATES``) or full."""
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
        if SELECTED:
            if HAS_STATES:
                given = tl.load(states + lines[:, None] * s_state_list + pos[None, :] * s_state_pos, mask=ok, other=0)
                state = tl.where(state != 0, given, 0)
            else:
                state = tl.where(state != 0, _FULL, 0)
        n_part, n_full = append_to_lists(state, pos, n_part, n_full, out_rows, indices, full_indices)
    tl.store(counts + list_base + lines, n_part, mask=line_ok)
    tl.store(full_counts + list_base + lines, n_full, mask=line_ok)


@triton.jit
def _grid_to_lists_kernel(
    grid, s_b, s_h, s_row, s_col, states, s_state_row, s_state_col,
    counts, indices, full_counts, full_indices,
    t_counts, t_indices, t_full_counts, t_full_indices,
    H, n_rows, n_cols,
    LISTS: tl.constexpr, CHUNK: tl.constexpr, FIRST: tl.constexpr, SELECTED: tl.constexpr,
    HAS_STATES: tl.constexpr,
):
    """Programs ``(i, b * H + h, d)``, direction ``FIRST + d``: 0, the lists of grid rows ``i *
    LISTS ...``; 1, those of grid columns ``i * LISTS ...`` (the transposed lists); programs
    past their axis's length do nothing."""
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    base = grid + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h
    if tl.program_id(2) + FIRST == 0:
        if i * LISTS < n_rows:
            _tile_lists(base, s_row, s_col, states, s_state_row, s_state_col, i * LISTS, n_rows, n_cols, counts,
                        indices, full_counts, full_indices, bh * n_rows, LISTS, CHUNK, SELECTED, HAS_STATES)
    else:
        if i * LISTS < n_cols:
            _tile_lists(base, s_col, s_row, states, s_state_col, s_state_row, i * LISTS, n_cols, n_rows, t_counts,
                        t_indices, t_full_counts, t_full_indices, bh * n_cols, LISTS, CHUNK, SELECTED, HAS_STATES)


def grid_to_lists(grid: torch.Tensor, states: torch.Tensor | None = None, *, rows: bool = True,
                  columns: bool = True) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
    """The lists of a grid ``(B, H, n, m)`` along its last axis (``rows``) and along the one
    before (``columns``: the transposed lists), in one launch: each ``[counts, indices,
    full_counts, full_indices]``, counts ``(B, H, n)`` int32 and indices ``(B, H, n, m)`` int32
    (``m`` and ``n`` swapped for the transposed ones; entries past a row's count are
    unspecified), views of one allocation; ``None`` for a direction not asked for.

    ``grid``: int8 states 0/1/2, or a bool selection, whose selected blocks are full or, given
    ``states`` (int8 ``(n, m)``, the same for every batch and head), of the state there (as
    :meth:`~foveate.layout.BlockLayout.from_block_grid` checks). Both may be strided views
    (e.g. transposed)."""
    b, h, n, m = grid.shape
    selected = grid.dtype == torch.bool
    if not (rows or columns):
        return None, None
    shapes = []
    if rows:
        shapes += [(b, h, n), (b, h, n, m), (b, h, n), (b, h, n, m)]
    if columns:
        shapes += [(b, h, m), (b, h, m, n), (b, h, m), (b, h, m, n)]
    out = list_buffers(shapes, grid.device)
    row_lists, column_lists = (out[:4], out[4:]) if rows else (None, out)
    kernel_out = (row_lists or column_lists) + (column_lists or row_lists)  # (an unused direction: any tensors)
    if selected:
        grid = grid.view(torch.uint8)  # (bool tensors are read as their bytes)
    given = states if states is not None else grid
    chunk = min(CONFIG["max_chunk"], triton.next_power_of_2(max(m, n, 16)))  # positions per step
    lists = max(1, min(CONFIG["lists"], CONFIG["tile"] // chunk))
    lists = 1 << (lists.bit_length() - 1)  # lines per program (a power of two, as tl.arange needs)
    n_lines = max(n if rows else 0, m if columns else 0)
    launch(_grid_to_lists_kernel, (cdiv(n_lines, lists), b * h, int(rows) + int(columns)),
           (grid, *grid.stride(), given, *given.stride()[-2:], *kernel_out, h, n, m),
           dict(LISTS=lists, CHUNK=chunk, FIRST=0 if rows else 1, SELECTED=selected, HAS_STATES=states is not None),
           num_warps=CONFIG["num_warps"], num_stages=1)
    return row_lists, column_lists
