"""Shared machinery of the 1-D sequence patterns (Dense, Causal, SlidingWindow).

Each is a *band*: with bottom-right alignment, query ``i`` sits at key position
``p = i + (kv_len - q_len)`` and may see key ``j`` when ``p - left <= j <= p + right``
(``None`` = unbounded on that side). Bands have exact analytic block layouts: the keys a
query block reaches form one interval, and a block pair is full exactly when the
intersection of its queries' windows covers the kv block.
"""

from __future__ import annotations

import torch

from ..layout import BlockLayout


def band_mask_mod(q_len: int, kv_len: int, left: int | None, right: int | None):
    """``mask_mod(b, h, q_idx, kv_idx)`` of the band ``p - left <= kv_idx <= p + right``."""
    offset = kv_len - q_len

    def mask_mod(b, h, q_idx, kv_idx):
        p = q_idx + offset
        ok = (q_idx >= 0) & (kv_idx >= 0)
        if left is not None:
            ok = ok & (kv_idx >= p - left)
        if right is not None:
            ok = ok & (kv_idx <= p + right)
        return ok

    return mask_mod


def build_band_layout(
    q_len: int,
    kv_len: int,
    left: int | None,
    right: int | None,
    *,
    block_q: int,
    block_kv: int,
    device: torch.device,
    mask_mod,
) -> BlockLayout:
    """Analytic layout of a band, its full blocks held as runs (one per row and column): time
    and memory proportional to the query and kv blocks, whatever the visited blocks."""
    unbounded = q_len + kv_len  # wider than any distance between a query and a key
    lft = unbounded if left is None else left
    rgt = unbounded if right is None else right
    offset = kv_len - q_len
    rows = _band_rows(q_len, block_q, kv_len, block_kv, offset, lft, rgt, device)
    # Transposed: key j is seen by the queries i with j - right <= i + offset <= j + left.
    cols = _band_rows(kv_len, block_kv, q_len, block_q, -offset, rgt, lft, device)
    i = torch.arange(q_len, device=device, dtype=torch.int64) + offset
    per_query = torch.clamp(torch.clamp(i + rgt, max=kv_len - 1) - torch.clamp(i - lft, min=0) + 1, min=0)
    return BlockLayout(
        block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
        kv_num_blocks=rows[0], kv_indices=rows[1], full_kv_num_blocks=rows[2], full_kv_starts=rows[3],
        q_num_blocks=cols[0], q_indices=cols[1], full_q_num_blocks=cols[2], full_q_starts=cols[3],
        mask_mod=mask_mod, allowed_pairs=int(per_query.sum()),
    )


def _band_rows(n_rows, block_r, n_cols, block_c, shift, left, right, device):
    """The lists of a band along one axis: row position ``p = r + shift`` sees the columns
    ``p - left .. p + right``. Returns int32 ``(1, 1, rows)`` partial counts, ``(1, 1, rows,
    W)`` partial indices, full counts and the first full block of each row's run.

    A row block reaches one interval of column blocks, full in the middle: a column block is
    full when the last row's window starts at or before it and the first row's ends at or
    after it. Partial blocks sit at the two ends of the interval (a few per row), so ``W`` is
    small."""
    nr, nc = -(-n_rows // block_r), -(-n_cols // block_c)
    rb = torch.arange(nr, device=device, dtype=torch.int64)
    p_first = rb * block_r + shift
    p_last = torch.clamp((rb + 1) * block_r, max=n_rows) - 1 + shift
    lo = torch.clamp(p_first - left, min=0)
    hi = torch.clamp(p_last + right, max=n_cols - 1)
    reached = hi >= lo
    first, last = lo.div(block_c, rounding_mode="floor"), hi.div(block_c, rounding_mode="floor")
    total = torch.where(reached, last - first + 1, 0)
    # Full column blocks: c * block_c >= p_last - left and the block's last column <= p_first + right.
    full_first = torch.maximum(first, -(-(p_last - left)).div(block_c, rounding_mode="floor"))
    ends_inside = p_first + right + 1  # columns before this are inside every row's window
    full_last = torch.where(ends_inside >= n_cols, nc - 1, ends_inside.div(block_c, rounding_mode="floor") - 1)
    full_last = torch.minimum(last, full_last)
    n_full = torch.where(reached, torch.clamp(full_last - full_first + 1, min=0), 0)
    # Partial blocks: those before the run, then those after it (all of them when no run).
    before = torch.where(n_full > 0, full_first - first, total)
    n_part = total - n_full
    width = max(1, int(n_part.max())) if nr else 1
    j = torch.arange(width, device=device)[None, :]
    part = torch.where(j < before[:, None], first[:, None] + j, full_first[:, None] + n_full[:, None] + (j - before[:, None]))
    part = torch.where(j < n_part[:, None], part, 0)
    starts = torch.where(n_full > 0, full_first, 0)
    return (n_part.int().view(1, 1, nr), part.int().view(1, 1, nr, width),
            n_full.int().view(1, 1, nr), starts.int().view(1, 1, nr))
