"""Shared machinery of *interval* patterns: each query sees one interval of keys ``[lo(i),
hi(i)]`` (empty when ``lo(i) > hi(i)``), with ``lo`` and ``hi`` non-decreasing in ``i``.

Prefix LMs (``[0, max(p, prefix - 1)]``) and chunk-causal masks (``[0, end of p's chunk]``) are
such patterns, as are bands. Their block layouts are exact in closed form, as those of bands
(:mod:`.band`): a query block reaches one interval of key blocks, full in the middle, because
the union of its queries' intervals has no gap, and a key block is full exactly when the
block's last query starts at or before it and its first query ends at or after it (the other
queries' intervals contain the intersection of those two). The transpose is again an interval
pattern: key ``j`` is seen by the queries ``i`` with ``hi(i) >= j`` (a suffix) and ``lo(i) <=
j`` (a prefix).

Requirements, checked in ``O(q_len)`` (a ``RuntimeError`` names the broken one: a bug of the
pattern, not of the caller): the non-empty rows are consecutive, ``lo`` and ``hi`` are
non-decreasing over them, and consecutive intervals leave no gap (``lo(i + 1) <= hi(i) + 1``).
"""

from __future__ import annotations

import torch

from ..layout import BlockLayout


def build_interval_layout(q_len: int, kv_len: int, lo: torch.Tensor, hi: torch.Tensor, *, block_q: int,
                          block_kv: int, device: torch.device, mask_mod) -> BlockLayout:
    """The layout of the pattern where query ``i`` sees the keys ``lo[i] .. hi[i]`` (int64
    ``(q_len,)`` tensors; clipped here to the keys): full runs held as starts, time and memory
    proportional to the lengths and the partial blocks."""
    lo = torch.clamp(lo.to(device=device, dtype=torch.int64), min=0)
    hi = torch.clamp(hi.to(device=device, dtype=torch.int64), max=kv_len - 1)
    _check_intervals(lo, hi, "query")
    rows = _interval_rows(lo, hi, q_len, block_q, kv_len, block_kv)
    q_lo, q_hi = transpose_intervals(lo, hi, kv_len)
    _check_intervals(q_lo, q_hi, "key")
    cols = _interval_rows(q_lo, q_hi, kv_len, block_kv, q_len, block_q)
    allowed = int(torch.clamp(hi - lo + 1, min=0).sum())
    return BlockLayout(
        block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
        kv_num_blocks=rows[0], kv_indices=rows[1], full_kv_num_blocks=rows[2], full_kv_starts=rows[3],
        q_num_blocks=cols[0], q_indices=cols[1], full_q_num_blocks=cols[2], full_q_starts=cols[3],
        mask_mod=mask_mod, allowed_pairs=allowed,
    )


def transpose_intervals(lo: torch.Tensor, hi: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q_lo, q_hi)``: for each of the ``n_cols`` columns ``j``, the rows that see it,
    ``q_lo[j] .. q_hi[j]`` (empty when ``q_lo > q_hi``)."""
    device = lo.device
    cols = torch.arange(n_cols, device=device, dtype=torch.int64)
    nonempty = lo <= hi
    if not bool(nonempty.any()):
        none = torch.zeros(n_cols, dtype=torch.int64, device=device)
        return none + 1, none  # (every column empty)
    where = torch.nonzero(nonempty).flatten()
    ra, rb = int(where[0]), int(where[-1])
    lo_ne, hi_ne = lo[ra:rb + 1].contiguous(), hi[ra:rb + 1].contiguous()
    # The first non-empty row whose interval ends at or after j; the last that starts at or before j.
    q_lo = ra + torch.searchsorted(hi_ne, cols, right=False)
    q_hi = ra + torch.searchsorted(lo_ne, cols, right=True) - 1
    return q_lo, q_hi


def _check_intervals(lo: torch.Tensor, hi: torch.Tensor, what: str) -> None:
    nonempty = lo <= hi
    where = torch.nonzero(nonempty).flatten()
    if where.numel() == 0:
        return
    ra, rb = int(where[0]), int(where[-1])
    if where.numel() != rb - ra + 1:
        raise RuntimeError(f"interval layout: the {what}s that see something are not consecutive")
    lo_ne, hi_ne = lo[ra:rb + 1], hi[ra:rb + 1]
    if bool((lo_ne[1:] < lo_ne[:-1]).any()) or bool((hi_ne[1:] < hi_ne[:-1]).any()):
        raise RuntimeError(f"interval layout: the {what}s' intervals are not non-decreasing")
    if bool((lo_ne[1:] > hi_ne[:-1] + 1).any()):
        raise RuntimeError(f"interval layout: consecutive {what}s' intervals leave a gap")


def _interval_rows(lo, hi, n_rows, block_r, n_cols, block_c):
    """The lists of an interval pattern along one axis (row ``r`` sees columns ``lo[r] ..
    hi[r]``): int32 ``(1, 1, rows)`` partial counts, ``(1, 1, rows, W)`` partial indices, full
    counts and the first full block of each row's run (as :func:`.band._band_rows`)."""
    device = lo.device
    nr, nc = -(-n_rows // block_r), -(-n_cols // block_c)
    nonempty = lo <= hi
    where = torch.nonzero(nonempty).flatten()
    if where.numel() == 0:
        zeros = torch.zeros(1, 1, nr, dtype=torch.int32, device=device)
        return zeros, torch.zeros(1, 1, nr, 1, dtype=torch.int32, device=device), zeros.clone(), zeros.clone()
    ra, rb = int(where[0]), int(where[-1])
    r0 = torch.arange(nr, device=device, dtype=torch.int64) * block_r
    r1 = torch.clamp(r0 + block_r, max=n_rows) - 1
    f, last_row = torch.clamp(r0, min=ra), torch.clamp(r1, max=rb)  # the block's non-empty rows
    reached = f <= last_row
    fi, li = torch.clamp(f, max=n_rows - 1), torch.clamp(last_row, min=0)
    # No gaps: the block's rows together see lo[f] .. hi[last_row].
    first, last = lo[fi].div(block_c, rounding_mode="floor"), hi[li].div(block_c, rounding_mode="floor")
    total = torch.where(reached, last - first + 1, 0)
    # Full: every row of the block sees something, c * block_c >= lo[r1] (the latest start) and
    # the block's last column <= hi[r0] (the earliest end).
    every_row = (r0 >= ra) & (r1 <= rb)
    full_first = torch.maximum(first, -(-lo[r1]).div(block_c, rounding_mode="floor"))
    ends = hi[r0] + 1  # columns before this are seen by every row of the block
    full_last = torch.where(ends >= n_cols, nc - 1, ends.div(block_c, rounding_mode="floor") - 1)
    full_last = torch.minimum(last, full_last)
    n_full = torch.where(reached & every_row, torch.clamp(full_last - full_first + 1, min=0), 0)
    before = torch.where(n_full > 0, full_first - first, total)
    n_part = total - n_full
    width = max(1, int(n_part.max())) if nr else 1
    j = torch.arange(width, device=device)[None, :]
    part = torch.where(j < before[:, None], first[:, None] + j,
                       full_first[:, None] + n_full[:, None] + (j - before[:, None]))
    part = torch.where(j < n_part[:, None], part, 0)
    starts = torch.where(n_full > 0, full_first, 0)
    return (n_part.int().view(1, 1, nr), part.int().view(1, 1, nr, width),
            n_full.int().view(1, 1, nr), starts.int().view(1, 1, nr))
