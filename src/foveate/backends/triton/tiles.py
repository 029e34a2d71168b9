"""Tile loads and stores with bounds checks only where a bound can be crossed.

A tile is ``rows x cols`` addressed by ``ptrs``; ``EVEN_ROWS`` / ``EVEN_COLS`` say that every
row / column index is in bounds (a sequence length that is a multiple of the block, a head
dim equal to its power-of-two width). Unpredicated loads of full tiles are what lets the
compiler issue wide asynchronous copies; a mask that is always true still costs predicate
work in the kernels' inner loops.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_tile(ptrs, offs_r, offs_c, n_rows, n_cols, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """The tile at ``ptrs``, with 0 where ``offs_r >= n_rows`` or ``offs_c >= n_cols``."""
    if EVEN_ROWS and EVEN_COLS:
        x = tl.load(ptrs)
    elif EVEN_ROWS:
        x = tl.load(ptrs, mask=offs_c[None, :] < n_cols, other=0.0)
    elif EVEN_COLS:
        x = tl.load(ptrs, mask=offs_r[:, None] < n_rows, other=0.0)
    else:
        x = tl.load(ptrs, mask=(offs_r[:, None] < n_rows) & (offs_c[None, :] < n_cols), other=0.0)
    return x


@triton.jit
def store_tile(ptrs, x, offs_r, offs_c, n_rows, n_cols, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """Store ``x`` at ``ptrs`` where ``offs_r < n_rows`` and ``offs_c < n_cols``."""
    if EVEN_ROWS and EVEN_COLS:
        tl.store(ptrs, x)
    elif EVEN_ROWS:
        tl.store(ptrs, x, mask=offs_c[None, :] < n_cols)
    elif EVEN_COLS:
        tl.store(ptrs, x, mask=offs_r[:, None] < n_rows)
    else:
        tl.store(ptrs, x, mask=(offs_r[:, None] < n_rows) & (offs_c[None, :] < n_cols))
