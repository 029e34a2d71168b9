"""Decoding with a KV cache: a few new queries per sequence against its cached keys and values.

>>> import foveate.decode as fd
>>> cache = fd.PagedKVCache.empty(batch=8, kv_heads=8, max_len=32768, head_dim=128, page_size=16,
...                               dtype=torch.bfloat16, device="cuda")               # doctest: +SKIP
>>> cache.append(k_new, v_new)                    # (B, Hkv, n_new, D), at each sequence's length
>>> out = fd.attention(q, cache)                  # q (B, Hq, n_new, D): causal, bottom-right
>>> out = fd.attention(q, cache, pattern=(P.SlidingWindow(4095) | P.Sinks(4)) & P.Causal())
>>> out = fd.attention(q, cache, pages=fd.select_pages(q, cache, budget=4096))   # Quest

Caches (:mod:`.cache`): contiguous :class:`KVCache` and paged :class:`PagedKVCache`, with
ragged lengths and in-place appends. The kernels (:mod:`.kernel`) split each sequence's keys
across programs (flash-decoding) and serve a kv head's query heads together (GQA); sparse
decoding reads only the keys a static pattern allows (:mod:`.rule`) or the pages a query-aware
selection keeps (:mod:`.quest`). The reference is :func:`.naive.decode_attention`.
"""

from __future__ import annotations

import math
import os
import typing

import torch

from .cache import KVCache, PagedKVCache
from .quest import PageSelection, select_pages

if typing.TYPE_CHECKING:
    from ..patterns import Pattern

#: What ``attention(backend=...)`` may be.
BACKENDS = ("auto", "triton", "torch")
#: The most query rows (query heads of a kv head x new queries) one decode program holds.
MAX_ROWS = 256


def _backend(backend: str, q: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if q.is_cuda else "torch"
    if backend == "triton" and not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernels on a CPU)")
    return backend


def _check_q(q, cache) -> None:
    if not isinstance(cache, (KVCache, PagedKVCache)):
        raise TypeError(f"cache must be a KVCache or a PagedKVCache, got {type(cache).__name__}")
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must be (B, Hq, n_new, D), got shape {tuple(q.shape)}")
    if q.dtype != cache.dtype:
        raise TypeError(f"q must have the cache's dtype {cache.dtype}, got {q.dtype}")
    if q.device != cache.device:
        raise ValueError(f"q is on {q.device}, the cache on {cache.device}")
    batch, hq, n_new, d = q.shape
    if batch != cache.batch or d != cache.head_dim or n_new < 1:
        raise ValueError(f"q must be (B, Hq, n_new, D) with B = {cache.batch}, D = {cache.head_dim}, n_new >= 1; "
                         f"got {tuple(q.shape)}")
    if hq % cache.kv_heads:
        raise ValueError(f"q's heads {hq} must be a multiple of the cache's kv heads {cache.kv_heads}")


def attention(
    q: torch.Tensor,
    cache: KVCache | PagedKVCache,
    *,
    scale: float | None = None,
    pattern: "Pattern | None" = None,
    pages: PageSelection | None = None,
    splits: int | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of the new queries of each sequence against its cache.

    Args:
        q: ``(B, Hq, n_new, D)``, the queries of the cache's last ``n_new`` tokens (appended
            before this call), in the cache's dtype and device; ``Hq`` a multiple of the
            cache's ``Hkv`` (query head ``h`` reads kv head ``h // (Hq // Hkv)``).
        cache: a :class:`KVCache` or :class:`PagedKVCache`.
        scale: factor on ``q @ k^T``; defaults to ``D ** -0.5``.
        pattern: ``None`` is causal: query ``i`` of sequence ``b`` (position ``lengths[b] -
            n_new + i``) sees the keys up to its own position. A static pattern replaces it,
            aligned bottom-right on each sequence's length (its ``mask_mod(n_new, lengths[b])``):
            ``P.SlidingWindow``, ``P.Sinks``, ``P.Causal``, ``P.Dense`` and their ``|`` / ``&``
            (e.g. StreamingLLM's ``(P.SlidingWindow(w - 1) | P.Sinks(4)) & P.Causal()``); only
            the keys it allows are read. Others raise ``ValueError``.
        pages: a :class:`PageSelection` (:func:`select_pages`; paged caches): only the listed
            pages of each (sequence, kv head) count, under ``pattern``'s mask.
        splits: programs per (sequence, kv head) (flash-decoding); ``None`` chooses from the
            shapes (:func:`.kernel.choose_splits`). Results agree up to rounding. Triton only.
        return_lse: also return the log-sum-exp of the scaled scores.
        backend: ``"auto"`` (``"triton"`` on CUDA, else ``"torch"``), ``"triton"`` (CUDA, or a CPU
            under ``TRITON_INTERPRET=1``) or ``"torch"`` (the float32 reference,
            :func:`.naive.decode_attention`).

    Returns:
        ``out`` ``(B, Hq, n_new, D)`` in ``q.dtype``; with ``return_lse`` also ``lse`` ``(B, Hq,
        n_new)`` float32, natural log. A query with no key (a position before 0, an empty
        selection) gets 0 and ``-inf``.
    """
    _check_q(q, cache)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float, got {scale!r}")
    if splits is not None and (not isinstance(splits, int) or isinstance(splits, bool) or splits < 1):
        raise ValueError(f"splits must be an int >= 1 or None, got {splits!r}")
    if pages is not None:
        if not isinstance(cache, PagedKVCache):
            raise ValueError("pages: a page selection needs a PagedKVCache")
        if not isinstance(pages, PageSelection):
            raise TypeError(f"pages must be a PageSelection, got {type(pages).__name__}")
        pages.check(cache)
    from ..patterns import Pattern
    from .rule import lower

    if pattern is not None and not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a foveate pattern or None, got {type(pattern).__name__}")
    rule = lower(pattern, q.shape[2])  # (refuses what decoding cannot run, on every backend)
    which = _backend(backend, q)
    rows = q.shape[1] // cache.kv_heads * q.shape[2]
    if which == "triton" and rows > MAX_ROWS:
        raise ValueError(f"q: {rows} rows per kv head (query heads per kv head x n_new); the decode kernel takes at "
                         f"most {MAX_ROWS} (prefill belongs to foveate.attention)")
    if which == "torch":
        from .naive import decode_attention

        out, lse = decode_attention(q, cache, scale=float(scale), pattern=pattern, pages=pages)
    else:
        from .kernel import decode_forward

        out, lse = decode_forward(q, cache, rule, float(scale), pages=pages, splits=splits)
    return (out, lse) if return_lse else out


__all__ = ["BACKENDS", "KVCache", "MAX_ROWS", "PageSelection", "PagedKVCache", "attention", "select_pages"]
