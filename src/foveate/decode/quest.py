"""Query-aware page selection (Quest, Tang et al. 2024) on a paged cache.

A :class:`~.cache.PagedKVCache` built with ``summaries=True`` keeps, per page and kv head, the
elementwise minimum and maximum of its keys (updated by every append). For a query ``q`` the
score of any key of a page is at most ``sum_d max(q_d * min_d, q_d * max_d)``; a kv head serves
``group`` query heads and ``n_new`` queries, so a page's bound for the kv head is the largest
over them. :func:`select_pages` keeps, per (sequence, kv head), the pages of highest bound
within a token budget, always with the pages that hold the new tokens (their queries' own
keys) and the sinks; :func:`foveate.decode.attention` with ``pages=`` then reads exactly
those pages (causally masked inside them as always).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PageSelection:
    """Pages chosen per (sequence, kv head).

    Attributes:
        pages: ``(B, Hkv, k)`` int32 *logical* page numbers (page ``t`` holds the sequence's
            tokens ``[t * page_size, (t + 1) * page_size)``), ascending in each row's first
            ``counts`` entries; entries past the count are padding.
        counts: ``(B, Hkv)`` int32, how many entries of each row are pages.
        page_size: the cache's page size.
    """

    pages: torch.Tensor
    counts: torch.Tensor
    page_size: int

    def __post_init__(self):
        if self.pages.dim() != 3 or self.counts.shape != self.pages.shape[:2]:
            raise ValueError(f"pages must be (B, Hkv, k) and counts (B, Hkv), got {tuple(self.pages.shape)} and "
                             f"{tuple(self.counts.shape)}")

    def check(self, cache) -> None:
        """Raise ``ValueError`` naming ``pages`` unless it fits ``cache`` (shapes, device, page size)."""
        want = (cache.batch, cache.kv_heads)
        if tuple(self.pages.shape[:2]) != want:
            raise ValueError(f"pages: a selection for {tuple(self.pages.shape[:2])} (sequences, kv heads), the cache "
                             f"has {want}")
        if self.page_size != cache.page_size:
            raise ValueError(f"pages: selected with page_size {self.page_size}, the cache's is {cache.page_size}")
        for name, t in (("pages", self.pages), ("counts", self.counts)):
            if t.device != cache.device:
                raise ValueError(f"pages: its {name} are on {t.device}, the cache on {cache.device}")
            if t.dtype != torch.int32:
                raise TypeError(f"pages: its {name} must be int32, got {t.dtype}")


def page_bounds(q: torch.Tensor, cache) -> torch.Tensor:
    """``(B, Hkv, max_pages)`` float32: per logical page the largest upper bound of ``q . k``
    over its keys, the kv head's query heads and the ``n_new`` queries; ``-inf`` for pages past
    a sequence's length. ``q`` ``(B, Hq, n_new, D)``."""
    batch, hq, n_new, d = q.shape
    hkv, ps = cache.kv_heads, cache.page_size
    rows = q.float().reshape(batch, hkv, (hq // hkv) * n_new, d)  # (query head, query) rows per kv head
    table = cache.block_table.long().clamp(min=0)  # (B, P): unallocated pages are past the length
    k_min = cache.k_min[table].float().permute(0, 2, 3, 1)  # (B, Hkv, D, P)
    k_max = cache.k_max[table].float().permute(0, 2, 3, 1)
    # max(q * lo, q * hi) = q * hi where q >= 0, q * lo where q < 0: two matmuls
    bound = (rows.clamp(min=0) @ k_max + rows.clamp(max=0) @ k_min).amax(dim=2)  # (B, Hkv, P)
    live = torch.arange(cache.max_pages, device=q.device) * ps < cache.lengths[:, None]
    return bound.masked_fill(~live[:, None, :], float("-inf"))


def select_pages(q: torch.Tensor, cache, *, budget: int, sinks: int = 0) -> PageSelection:
    """The Quest pages for ``q`` ``(B, Hq, n_new, D)`` (the new tokens' queries, already
    appended) in a paged ``cache`` with ``summaries=True``.

    Per (sequence, kv head): ``budget // page_size`` pages (all of a shorter sequence's): the
    pages holding the last ``n_new`` tokens and the first ``sinks`` tokens always, then the
    others by decreasing :func:`page_bounds` (ties to the earlier page). Returns a
    :class:`PageSelection`; no host sync (CUDA-graph capturable).
    """
    if not hasattr(cache, "block_table"):
        raise ValueError("cache: page selection needs a PagedKVCache (per-page key summaries)")
    if not cache.summaries:
        raise ValueError("cache: page selection needs key summaries: build the PagedKVCache with summaries=True")
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise TypeError(f"budget must be an int (tokens), got {type(budget).__name__}")
    if not isinstance(sinks, int) or isinstance(sinks, bool) or sinks < 0:
        raise ValueError(f"sinks must be an int >= 0, got {sinks!r}")
    ps = cache.page_size
    n_new = q.shape[2]
    k = min(budget // ps, cache.max_pages)
    sink_pages = -(-sinks // ps)
    for b, length in enumerate(cache.host_lengths):  # (host lengths: no sync)
        n_pages = -(-length // ps)
        forced = len(set(range(min(sink_pages, n_pages))) | set(range(max(length - n_new, 0) // ps, n_pages)))
        if forced > k:
            raise ValueError(f"budget {budget} holds {budget // ps} pages of {ps} tokens; sequence {b} needs "
                             f"{forced} for its sinks and new tokens")
    bound = page_bounds(q, cache)
    t = torch.arange(cache.max_pages, device=q.device)
    lengths = cache.lengths.long()[:, None]
    must = ((t < sink_pages) | (t >= (lengths - n_new).clamp(min=0) // ps)) & (t * ps < lengths)  # (B, P)
    bound = bound.masked_fill(must[:, None, :], float("inf"))
    # ties to the earlier page: a stable sort, not topk (whose order among equal values is unspecified)
    order = torch.sort(bound, dim=-1, descending=True, stable=True).indices[..., :k]
    pages = torch.sort(order, dim=-1).values.to(torch.int32)
    counts = ((cache.lengths.long() + ps - 1) // ps).clamp(max=k)
    counts = counts[:, None].expand(-1, cache.kv_heads).to(torch.int32).contiguous()
    return PageSelection(pages.contiguous(), counts, ps)


__all__ = ["PageSelection", "page_bounds", "select_pages"]
