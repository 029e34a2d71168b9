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
    """Analytic layout of a band: time and memory proportional to the visited blocks."""
    unbounded = q_len + kv_len  # wider than any distance between a query and a key
    lft = unbounded if left is None else left
    rgt = unbounded if right is None else right
    offset = kv_len - q_len
    nq = -(-q_len // block_q)

    qb = torch.arange(nq, device=device, dtype=torch.int64)
    p_first = qb * block_q + offset
    p_last = torch.clamp((qb + 1) * block_q, max=q_len) - 1 + offset
    # Consecutive windows overlap, so a q block reaches one contiguous key interval.
    lo = torch.clamp(p_first - lft, min=0)
    hi = torch.clamp(p_last + rgt, max=kv_len - 1)
    count = torch.where(hi >= lo, hi // block_kv - lo // block_kv + 1, 0)
    q_of_pair = torch.repeat_interleave(qb, count)
    starts = torch.cumsum(count, 0) - count
    kb = lo.div(block_kv, rounding_mode="floor")[q_of_pair] + (
        torch.arange(q_of_pair.numel(), device=device) - starts[q_of_pair]
    )

    key_first = kb * block_kv
    key_last = torch.clamp(key_first + block_kv, max=kv_len) - 1
    # Every query of the block sees every key of the kv block.
    full = (p_last[q_of_pair] - lft <= key_first) & (p_first[q_of_pair] + rgt >= key_last)

    i = torch.arange(q_len, device=device, dtype=torch.int64) + offset
    per_query = torch.clamp(torch.clamp(i + rgt, max=kv_len - 1) - torch.clamp(i - lft, min=0) + 1, min=0)
    return BlockLayout.from_pairs(
        q_of_pair, kb, full, block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
        mask_mod=mask_mod, allowed_pairs=int(per_query.sum()),
    )
