"""Shared machinery of *block-rule* patterns: causal attention restricted to the pairs of
pattern blocks that a rule selects.

Key ``j`` is allowed for query ``i`` when ``j <= p`` (``p = i + (kv_len - q_len)``) and
``selected(p // block, j // block)``: PowerAttention (sinks, a local window and power-of-two
distances in blocks) and S2-Attention's strided heads (a local window and one residue class of
blocks per head) are such patterns.

Their layouts are built from a superset of the visited block pairs that each pattern lists
from its structure (per query block: a few ranges of keys, :func:`candidates_from_ranges`), and
every candidate is classified exactly in closed form (:func:`rule_counts`): a layout block is
cut by the pattern's block grid into at most ``((block_q - 1) // block + 2) x ((block_kv - 1)
// block + 2)`` rectangles, each either not selected or causal, and a causal rectangle's
allowed pairs have a closed form. Time proportional to the candidates, never to ``q_len *
kv_len``; the count of allowed pairs comes exactly with the states.
"""

from __future__ import annotations

import torch

#: Elements of the scratch tensors evaluated at once.
_EVAL_ELEMS = 1 << 22


def row_positions(q_len: int, kv_len: int, block_q: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(query blocks, first position, last position)`` of the query blocks whose last
    position is ``>= 0`` (the others see no key of a causal pattern); the first position is
    clamped at 0."""
    offset = kv_len - q_len
    nq = -(-q_len // block_q)
    qb = torch.arange(nq, device=device, dtype=torch.int64)
    last = torch.clamp((qb + 1) * block_q, max=q_len) - 1 + offset
    keep = last >= 0
    qb, last = qb[keep], last[keep]
    return qb, torch.clamp(qb * block_q + offset, min=0), last


def candidates_from_ranges(qb: torch.Tensor, start: torch.Tensor, end: torch.Tensor, block_kv: int, nkv: int):
    """The unique ``(query block, kv block)`` pairs of the key ranges ``start[r, k] ..
    end[r, k]`` (inclusive; none where ``start > end``) of query block ``qb[r]``."""
    device = qb.device
    n, width = start.shape
    first, last = start.div(block_kv, rounding_mode="floor"), end.div(block_kv, rounding_mode="floor")
    count = torch.where(start <= end, last - first + 1, 0).reshape(-1)
    which = torch.repeat_interleave(torch.arange(n * width, device=device), count)
    step = torch.arange(which.numel(), device=device) - (torch.cumsum(count, 0) - count)[which]
    kb = first.reshape(-1)[which] + step
    key = torch.unique(qb.repeat_interleave(width)[which] * nkv + kb)
    return key // nkv, key % nkv


def _causal_count(a, b, c, e):
    """Pairs ``(p, k)`` with ``a <= p <= b``, ``c <= k <= e`` and ``k <= p`` (for ``a <= b``,
    ``c <= e``): 0 for ``p < c``; ``p - c + 1`` for ``c <= p <= e``; ``e - c + 1`` after."""
    s, t = torch.maximum(a, c), torch.minimum(b, e)
    n1 = torch.clamp(t - s + 1, min=0)
    ramp = n1 * ((s - c + 1) + (t - c + 1)) // 2
    n2 = torch.clamp(b - torch.maximum(a, e + 1) + 1, min=0)
    return ramp + n2 * (e - c + 1)


def rule_counts(selected, qb: torch.Tensor, kb: torch.Tensor, *, q_len: int, kv_len: int, block_q: int,
                block_kv: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(allowed, area)``, int64 per candidate block pair ``(qb, kb)``: the allowed pairs of
    the block-rule pattern ``j <= p and selected(p // block, j // block)`` (``selected`` takes
    broadcasting int64 tensors of pattern rows and columns), and the pairs that exist."""
    offset = kv_len - q_len
    qb, kb = qb.long(), kb.long()
    p_first = qb * block_q + offset
    p_last = torch.clamp((qb + 1) * block_q, max=q_len) - 1 + offset
    k_first = kb * block_kv
    k_last = torch.clamp((kb + 1) * block_kv, max=kv_len) - 1
    area = (p_last - p_first + 1) * (k_last - k_first + 1)
    p_first = torch.clamp(p_first, min=0)  # (positions < 0 see no key)
    m_r, m_c = (block_q - 1) // block + 2, (block_kv - 1) // block + 2
    rows = torch.arange(m_r, device=qb.device)[None, :, None]
    cols = torch.arange(m_c, device=qb.device)[None, None, :]
    allowed = torch.zeros(qb.numel(), dtype=torch.int64, device=qb.device)
    step = max(1, _EVAL_ELEMS // (m_r * m_c))
    for lo in range(0, qb.numel(), step):
        pf, pl = p_first[lo:lo + step, None, None], p_last[lo:lo + step, None, None]
        kf, kl = k_first[lo:lo + step, None, None], k_last[lo:lo + step, None, None]
        pr = pf.div(block, rounding_mode="floor") + rows
        pc = kf.div(block, rounding_mode="floor") + cols
        a, b = torch.maximum(pf, pr * block), torch.minimum(pl, pr * block + block - 1)
        c, e = torch.maximum(kf, pc * block), torch.minimum(kl, pc * block + block - 1)
        live = (a <= b) & (c <= e) & selected(pr, pc)
        allowed[lo:lo + step] = torch.where(live, _causal_count(a, b, c, e), 0).sum(dim=(1, 2))
    return allowed, area


def classify(selected, qb, kb, *, q_len, kv_len, block_q, block_kv, block):
    """The visited pairs among the candidates: ``(qb, kb, full, allowed)`` (as
    :func:`rule_counts`)."""
    allowed, area = rule_counts(selected, qb, kb, q_len=q_len, kv_len=kv_len, block_q=block_q,
                                block_kv=block_kv, block=block)
    keep = allowed > 0
    return qb[keep], kb[keep], allowed[keep] == area[keep], allowed[keep]
