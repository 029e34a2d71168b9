"""Shared machinery of rectangle patterns: queries in one range of positions with keys in
another (sinks; prefixes and global tokens are unions of such rectangles).

A rectangle has an exact analytic layout: the query blocks that meet its query range times the
key blocks that meet its key range, a pair full exactly when both blocks lie inside the ranges.
"""

from __future__ import annotations

import torch

from ..layout import BlockLayout


def rect_mask_mod(q_start: int, q_end: int, kv_start: int, kv_end: int):
    """``mask_mod(b, h, q_idx, kv_idx)``: ``q_start <= q_idx < q_end`` and ``kv_start <= kv_idx < kv_end``."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= q_start) & (q_idx < q_end) & (kv_idx >= kv_start) & (kv_idx < kv_end)

    return mask_mod


def _block_range(start: int, end: int, length: int, block: int):
    """``(blocks, full)``: the blocks of ``block`` positions that meet ``[start, end)`` (clipped
    to ``[0, length)``), and whether each lies inside it."""
    end = min(end, length)
    if start >= end:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool)
    blocks = torch.arange(start // block, (end - 1) // block + 1)
    first, last = blocks * block, torch.clamp((blocks + 1) * block, max=length)
    return blocks, (first >= start) & (last <= end)


def build_rect_layout(q_len: int, kv_len: int, q_start: int, q_end: int, kv_start: int, kv_end: int, *,
                      block_q: int, block_kv: int, device: torch.device, mask_mod) -> BlockLayout:
    """Analytic layout of a rectangle: time and memory proportional to the visited blocks."""
    qb, q_full = _block_range(q_start, q_end, q_len, block_q)
    kb, kv_full = _block_range(kv_start, kv_end, kv_len, block_kv)
    row, col = qb.repeat_interleave(kb.numel()), kb.repeat(qb.numel())
    full = q_full.repeat_interleave(kb.numel()) & kv_full.repeat(qb.numel())
    q_size = (min(q_end, q_len) - q_start) if q_end > q_start else 0
    kv_size = (min(kv_end, kv_len) - kv_start) if kv_end > kv_start else 0
    return BlockLayout.from_pairs(
        row.to(device), col.to(device), full.to(device), block_q=block_q, block_kv=block_kv, q_len=q_len,
        kv_len=kv_len, mask_mod=mask_mod, allowed_pairs=max(q_size, 0) * max(kv_size, 0),
    )
