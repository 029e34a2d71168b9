"""The decoding reference: each sequence's cache gathered, every pair scored in float32.

Short and loop-based on purpose (one sequence at a time): it is what the kernels are tested
against, and the ``"torch"`` backend of :func:`foveate.decode.attention`.
"""

from __future__ import annotations

import torch


def gather(cache, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence ``b``'s keys and values, ``(Hkv, lengths[b], D)`` each (a copy for a paged cache)."""
    length = cache.host_lengths[b]
    if hasattr(cache, "block_table"):
        ps = cache.page_size
        pages = cache.block_table[b, :-(-length // ps)].long()
        hkv, d = cache.kv_heads, cache.head_dim

        def rows(pool):
            return pool[pages].permute(1, 0, 2, 3).reshape(hkv, -1, d)[:, :length]

        return rows(cache.k), rows(cache.v)
    return cache.k[b, :, :length], cache.v[b, :, :length]


def pattern_mask(pattern, n_new: int, length: int, device) -> torch.Tensor:
    """``(n_new, length)``: which keys query ``i`` (at position ``length - n_new + i``) may see,
    from ``pattern.mask_mod`` (``None``: causal), the last ``n_new`` positions bottom-right."""
    if length == 0:
        return torch.zeros(n_new, 0, dtype=torch.bool, device=device)
    q_idx = torch.arange(n_new, device=device)[:, None]
    kv_idx = torch.arange(length, device=device)[None, :]
    if pattern is None:
        return kv_idx <= q_idx + (length - n_new)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    return torch.broadcast_to(pattern.mask_mod(n_new, length)(zero, zero, q_idx, kv_idx), (n_new, length))


def page_mask(pages, b: int, length: int, page_size: int, kv_heads: int, device) -> torch.Tensor:
    """``(Hkv, length)``: the keys of the pages that ``pages`` (a :class:`~.quest.PageSelection`)
    lists for sequence ``b``, per kv head."""
    keep = torch.zeros(kv_heads, -(-length // page_size), dtype=torch.bool, device=device)
    for h in range(kv_heads):
        count = int(pages.counts[b, h])
        keep[h, pages.pages[b, h, :count].long()] = True
    return keep.repeat_interleave(page_size, dim=1)[:, :length]


def decode_attention(q: torch.Tensor, cache, *, scale: float | None = None, pattern=None, pages=None):
    """Attention of ``q`` ``(B, Hq, n_new, D)`` against each sequence's cache, in float32.

    The ``n_new`` queries are the cache's last ``n_new`` tokens (already appended): query ``i``
    of sequence ``b`` sits at position ``lengths[b] - n_new + i`` and, with ``pattern=None``,
    sees keys ``j <= lengths[b] - n_new + i`` (a position below 0 sees none). ``pattern``: a
    static pattern whose ``mask_mod(n_new, lengths[b])`` decides instead (any pattern here;
    the kernels take those :func:`~foveate.decode.rule.lower` accepts). ``pages``: a
    :class:`~.quest.PageSelection`: only keys of the listed pages (per kv head) count, under
    the same mask. Query head ``h`` reads kv head ``h // (Hq // Hkv)``.

    Returns ``out`` ``(B, Hq, n_new, D)`` in ``q.dtype`` and ``lse`` ``(B, Hq, n_new)`` float32
    (natural log); a query with no key gets 0 and ``-inf``.
    """
    batch, hq, n_new, d = q.shape
    group = hq // cache.kv_heads
    scale = d ** -0.5 if scale is None else scale
    out = torch.zeros(batch, hq, n_new, d, dtype=torch.float32, device=q.device)
    lse = torch.full((batch, hq, n_new), float("-inf"), dtype=torch.float32, device=q.device)
    for b in range(batch):
        k, v = gather(cache, b)
        length = k.shape[1]
        if length == 0:
            continue
        k = k.float().repeat_interleave(group, dim=0)  # (Hq, L, D)
        v = v.float().repeat_interleave(group, dim=0)
        mask = pattern_mask(pattern, n_new, length, q.device)[None]  # (1, n_new, L)
        if pages is not None:
            keep = page_mask(pages, b, length, cache.page_size, cache.kv_heads, q.device)
            mask = mask & keep.repeat_interleave(group, dim=0)[:, None, :]
        s = (q[b].float() @ k.transpose(1, 2)) * scale  # (Hq, n_new, L)
        s = s.masked_fill(~mask, float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1)  # -inf on rows with no key
        p = torch.exp(s - torch.where(torch.isinf(row_lse), 0.0, row_lse)[..., None])
        out[b] = p @ v
        lse[b] = row_lse
    return out.to(q.dtype), lse


__all__ = ["decode_attention", "gather", "page_mask", "pattern_mask"]
