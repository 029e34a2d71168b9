"""KV caches for decoding: contiguous (:class:`KVCache`) and paged (:class:`PagedKVCache`).

Both hold keys and values of ``B`` sequences with ``Hkv`` kv heads and head dim ``D``, and
each sequence's length in ``lengths`` (int32 ``(B,)``, on the cache's device: the kernels read
it). :meth:`append` writes ``n_new`` tokens per sequence at its length, in place (one indexed
write per tensor: the cache is never copied), then advances the lengths.

The cache keeps a host copy of the lengths (and of a paged cache's block table) beside the
device tensors, so that checking an append and choosing a kernel's splits never waits for
the GPU. The cache is therefore the only writer of its lengths and block table: change them
through :meth:`set_lengths` / :meth:`PagedKVCache.set_block_table`, not in place.

Bad input raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, device,
range) naming the argument, and a failed call changes nothing: every check runs before the
first write.
"""

from __future__ import annotations

import torch

#: Smallest page: the kernels' key blocks (>= 16 keys, for ``tl.dot``) are read per page.
MIN_PAGE_SIZE = 16


def _tensor(name: str, t, ndim: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    return t


def _same_device(name: str, t: torch.Tensor, device: torch.device, of: str) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, {of} on {device}: every tensor of a cache is on one device")


def _float_kv(k, v, k_name: str, v_name: str) -> None:
    _tensor(k_name, k, 4)
    _tensor(v_name, v, 4)
    if not k.dtype.is_floating_point:
        raise TypeError(f"{k_name} must be a floating-point tensor, got {k.dtype}")
    if v.dtype != k.dtype:
        raise TypeError(f"{v_name} must have {k_name}'s dtype {k.dtype}, got {v.dtype}")
    _same_device(v_name, v, k.device, k_name)
    if v.shape != k.shape:
        raise ValueError(f"{v_name} must have {k_name}'s shape {tuple(k.shape)}, got {tuple(v.shape)}")


def _lengths(lengths, batch: int, capacity: int, device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """The device lengths (an int32 copy the cache owns) and their host copy."""
    if lengths is None:
        return torch.zeros(batch, dtype=torch.int32, device=device), [0] * batch
    _tensor("lengths", lengths, 1)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    _same_device("lengths", lengths, device, "the keys")
    if lengths.shape[0] != batch:
        raise ValueError(f"lengths must have shape ({batch},) (one per sequence), got {tuple(lengths.shape)}")
    host = [int(x) for x in lengths.tolist()]
    for b, n in enumerate(host):
        if not 0 <= n <= capacity:
            raise ValueError(f"lengths[{b}] = {n} is outside [0, {capacity}] (the cache's capacity)")
    return lengths.to(torch.int32).clone(), host


class _Cache:
    """What both caches share: lengths, the shape of an append, its checks."""

    k: torch.Tensor
    v: torch.Tensor
    lengths: torch.Tensor
    _host_lengths: list[int]

    batch: int
    kv_heads: int
    head_dim: int
    capacity: int

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    @property
    def device(self) -> torch.device:
        return self.k.device

    @property
    def host_lengths(self) -> list[int]:
        """The lengths as Python ints (a copy; no GPU sync)."""
        return list(self._host_lengths)

    @property
    def max_length(self) -> int:
        """The longest sequence's length (host value; no GPU sync)."""
        return max(self._host_lengths, default=0)

    def set_lengths(self, lengths: torch.Tensor) -> None:
        """Replace the lengths (``(B,)`` integers in ``[0, capacity]``), e.g. to drop tokens or
        start over; the keys and values are left as they are."""
        device_lengths, host = _lengths(lengths, self.batch, self.capacity, self.device)
        self._check_allocated(host, "lengths")
        self.lengths.copy_(device_lengths)
        self._host_lengths = host

    def _check_allocated(self, lengths: list[int], name: str) -> None:
        """Raise unless positions ``[0, lengths[b])`` have storage (paged: allocated pages)."""

    def _check_appended(self, n: int) -> None:
        """Raise unless the next ``n`` positions of each sequence have storage."""

    def _check_new(self, k_new, v_new) -> int:
        """Validate an append of ``(B, Hkv, n_new, D)`` keys and values; returns ``n_new``."""
        _float_kv(k_new, v_new, "k_new", "v_new")
        if k_new.dtype != self.dtype:
            raise TypeError(f"k_new must have the cache's dtype {self.dtype}, got {k_new.dtype}")
        _same_device("k_new", k_new, self.device, "the cache")
        b, h, n, d = k_new.shape
        if (b, h, d) != (self.batch, self.kv_heads, self.head_dim):
            raise ValueError(f"k_new must be (B, Hkv, n_new, D) = ({self.batch}, {self.kv_heads}, n_new, "
                             f"{self.head_dim}), got {tuple(k_new.shape)}")
        for i, length in enumerate(self._host_lengths):
            if length + n > self.capacity:
                raise ValueError(f"k_new: appending {n} tokens to sequence {i} (length {length}) goes past the "
                                 f"cache's capacity {self.capacity}")
        self._check_appended(n)
        return n

    def _positions(self, n: int) -> torch.Tensor:
        """``(B, n)`` int64 positions of the new tokens, from the device lengths (no sync)."""
        return self.lengths.long()[:, None] + torch.arange(n, device=self.device)

    def _advance(self, n: int) -> None:
        self.lengths += n
        self._host_lengths = [length + n for length in self._host_lengths]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(batch={self.batch}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
                f"capacity={self.capacity}, dtype={self.dtype}, device={self.device}, "
                f"lengths={self._host_lengths})")


class KVCache(_Cache):
    """A contiguous cache: ``k``, ``v`` ``(B, Hkv, max_len, D)``, sequence ``b``'s tokens in
    ``[0, lengths[b])`` of its rows (the rest unused, never read).

    Args:
        k: the keys' storage (held, not copied).
        v: the values' storage (the keys' shape, dtype and device).
        lengths: ``(B,)`` integers in ``[0, max_len]`` (copied to an int32 tensor the cache
            owns); ``None``: all 0.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None = None):
        _float_kv(k, v, "k", "v")
        self.k, self.v = k, v
        self.batch, self.kv_heads, self.capacity, self.head_dim = k.shape
        self.lengths, self._host_lengths = _lengths(lengths, self.batch, self.capacity, k.device)

    @classmethod
    def full(cls, k: torch.Tensor, v: torch.Tensor) -> "KVCache":
        """A cache whose every sequence holds all ``max_len`` tokens of ``k``, ``v`` (what
        :func:`foveate.attention` hands the decode backend), made without reading a length back
        from the device."""
        cache = cls(k, v)
        cache.lengths.fill_(cache.capacity)
        cache._host_lengths = [cache.capacity] * cache.batch
        return cache

    @classmethod
    def empty(cls, batch: int, kv_heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype = torch.float16,
              device: torch.device | str = "cpu") -> "KVCache":
        """An empty cache of ``max_len`` tokens per sequence (storage uninitialised)."""
        shape = (batch, kv_heads, max_len, head_dim)
        return cls(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Write ``k_new``, ``v_new`` ``(B, Hkv, n_new, D)`` at positions ``[lengths[b],
        lengths[b] + n_new)`` of each sequence ``b`` (ragged lengths; in place), then advance
        the lengths by ``n_new``. ``ValueError`` naming ``k_new`` past the capacity, with
        nothing written."""
        n = self._check_new(k_new, v_new)
        if n == 0:
            return
        pos = self._positions(n)
        rows = torch.arange(self.batch, device=self.device)[:, None]
        # (B, n) advanced indices around a slice: the indexed view is (B, n, Hkv, D)
        self.k[rows, :, pos] = k_new.transpose(1, 2)
        self.v[rows, :, pos] = v_new.transpose(1, 2)
        self._advance(n)


class PagedKVCache(_Cache):
    """A paged cache (vLLM / FlashInfer layout): pools of pages ``k_pages``, ``v_pages``
    ``(num_pages, Hkv, page_size, D)`` and a block table ``(B, max_pages)`` int32: token ``t``
    of sequence ``b`` is slot ``t % page_size`` of page ``block_table[b, t // page_size]``.
    Entries are page numbers in ``[0, num_pages)``, or ``-1`` for a page not allocated (yet);
    the pages that hold a sequence's ``lengths[b]`` tokens, and those an append writes, must
    be allocated (pages may be shared between sequences, e.g. a common prefix).

    ``page_size`` must be a power of two and at least 16: the kernels read keys in blocks of
    a power of two (>= 16, for ``tl.dot``) that lie in one page or span whole pages.

    Args:
        k_pages: the keys' pool (held, not copied).
        v_pages: the values' pool (the keys' shape, dtype and device).
        block_table: ``(B, max_pages)`` integers in ``[-1, num_pages)`` (copied to int32).
        lengths: ``(B,)`` integers in ``[0, max_pages * page_size]``; ``None``: all 0.
        summaries: keep per-page elementwise minima and maxima of the keys, ``k_min`` and
            ``k_max`` ``(num_pages, Hkv, D)`` in the keys' dtype, for query-aware page
            selection (:func:`foveate.decode.select_pages`). Each append recomputes those of
            the pages it writes from their content (the tokens before the sequence's new
            length), so they always describe exactly the tokens a page holds; built from the
            pages' content here when ``lengths`` are given. A page no sequence has written has
            ``+inf`` / ``-inf``.
    """

    def __init__(self, k_pages: torch.Tensor, v_pages: torch.Tensor, block_table: torch.Tensor,
                 lengths: torch.Tensor | None = None, *, summaries: bool = False):
        _float_kv(k_pages, v_pages, "k_pages", "v_pages")
        num_pages, kv_heads, page_size, head_dim = k_pages.shape
        if page_size < MIN_PAGE_SIZE or page_size & (page_size - 1):
            raise ValueError(f"k_pages: page_size (dim 2) must be a power of two >= {MIN_PAGE_SIZE}, got {page_size}")
        self.k, self.v = k_pages, v_pages
        self.num_pages, self.kv_heads, self.page_size, self.head_dim = num_pages, kv_heads, page_size, head_dim
        table, host_table = self._table(block_table)
        self.batch, self.max_pages = table.shape
        self.capacity = self.max_pages * page_size
        device_lengths, host_lengths = _lengths(lengths, self.batch, self.capacity, k_pages.device)
        self._host_table, self._host_rows = host_table, host_table.tolist()
        self._check_allocated(host_lengths, "lengths")
        self.block_table, self.lengths, self._host_lengths = table, device_lengths, host_lengths
        self.summaries = bool(summaries)
        self.k_min = self.k_max = None
        if self.summaries:
            # one scratch page past the pool: the summary writes of pages not written aim there
            shape = (num_pages + 1, kv_heads, head_dim)
            self._k_min = torch.full(shape, float("inf"), dtype=self.dtype, device=self.device)
            self._k_max = torch.full(shape, float("-inf"), dtype=self.dtype, device=self.device)
            self.k_min, self.k_max = self._k_min[:num_pages], self._k_max[:num_pages]
            if any(host_lengths):
                self._summarise(torch.zeros(self.batch, dtype=torch.long, device=self.device),
                                self.lengths.long(), self.max_pages)

    @property
    def k_pages(self) -> torch.Tensor:
        return self.k

    @property
    def v_pages(self) -> torch.Tensor:
        return self.v

    @classmethod
    def empty(cls, batch: int, kv_heads: int, max_len: int, head_dim: int, *, page_size: int = 16,
              num_pages: int | None = None, dtype: torch.dtype = torch.float16, device: torch.device | str = "cpu",
              summaries: bool = False, shuffle: torch.Generator | None = None) -> "PagedKVCache":
        """An empty cache of ``max_len`` tokens per sequence (``page_size`` must divide it), each
        sequence given its own ``max_len // page_size`` pages of a pool of ``num_pages``
        (default: exactly enough), in order or, with a ``shuffle`` generator, scattered."""
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        if max_len % page_size:
            raise ValueError(f"page_size {page_size} must divide max_len {max_len}")
        per_seq = max_len // page_size
        num_pages = batch * per_seq if num_pages is None else num_pages
        if num_pages < batch * per_seq:
            raise ValueError(f"num_pages {num_pages} is fewer than batch * max_len / page_size = {batch * per_seq}")
        order = (torch.randperm(num_pages, generator=shuffle) if shuffle is not None else torch.arange(num_pages))
        table = order[:batch * per_seq].view(batch, per_seq).to(torch.int32).to(device)
        shape = (num_pages, kv_heads, page_size, head_dim)
        return cls(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device),
                   table, summaries=summaries)

    def _table(self, block_table) -> tuple[torch.Tensor, torch.Tensor]:
        """The device table (an int32 copy the cache owns) and its host copy, checked."""
        _tensor("block_table", block_table, 2)
        if block_table.dtype.is_floating_point or block_table.dtype == torch.bool or block_table.is_complex():
            raise TypeError(f"block_table must be an integer tensor, got {block_table.dtype}")
        _same_device("block_table", block_table, self.k.device, "k_pages")
        host = block_table.cpu().long()
        bad = ((host < -1) | (host >= self.num_pages)).nonzero()
        if len(bad):
            b, i = bad[0].tolist()
            raise ValueError(f"block_table[{b}, {i}] = {int(host[b, i])} is out of range: pages are 0 .. "
                             f"{self.num_pages - 1} (num_pages), or -1 for none")
        return block_table.to(torch.int32).clone(), host

    def set_block_table(self, block_table: torch.Tensor) -> None:
        """Replace the block table (same shape ``(B, max_pages)``); the pages of the current
        lengths must stay allocated. Page contents and summaries are left as they are."""
        table, host = self._table(block_table)
        if tuple(table.shape) != (self.batch, self.max_pages):
            raise ValueError(f"block_table must keep shape ({self.batch}, {self.max_pages}), got {tuple(table.shape)}")
        old, self._host_table = self._host_table, host
        try:
            self._check_allocated(self._host_lengths, "block_table")
        except ValueError:
            self._host_table = old
            raise
        self._host_rows = host.tolist()
        self.block_table.copy_(table)

    def set_lengths(self, lengths: torch.Tensor) -> None:
        """Replace the lengths (``(B,)`` integers in ``[0, capacity]``, their pages allocated);
        the pages are left as they are, the summaries recomputed for the new lengths."""
        super().set_lengths(lengths)
        if self.summaries:
            self._summarise(torch.zeros(self.batch, dtype=torch.long, device=self.device), self.lengths.long(),
                            self.max_pages)

    def _check_appended(self, n: int) -> None:
        # only the pages an append writes (the others were checked with the lengths): a few
        # list lookups, as appends run every step
        ps = self.page_size
        for b, length in enumerate(self._host_lengths):
            row = self._host_rows[b]
            for i in range(length // ps, -(-(length + n) // ps)):
                if row[i] < 0:
                    raise ValueError(f"block_table: sequence {b} needs {length + n} tokens, but block_table[{b}, "
                                     f"{i}] = {row[i]} has no page")

    def _check_allocated(self, lengths: list[int], name: str) -> None:
        needed = torch.arange(self.max_pages)[None, :] * self.page_size < torch.tensor(lengths)[:, None]
        missing = (needed & (self._host_table < 0)).nonzero()
        if len(missing):
            b, i = missing[0].tolist()
            raise ValueError(f"{name}: sequence {b} needs {lengths[b]} tokens, but block_table[{b}, {i}] = "
                             f"{int(self._host_table[b, i])} has no page")

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Write ``k_new``, ``v_new`` ``(B, Hkv, n_new, D)`` at positions ``[lengths[b],
        lengths[b] + n_new)`` of each sequence (through its block table; in place), then
        advance the lengths (and update the summaries of the pages written). ``ValueError``
        naming ``k_new`` past the capacity, naming ``block_table`` where a page is not
        allocated, with nothing written."""
        n = self._check_new(k_new, v_new)
        if n == 0:
            return
        pos = self._positions(n)
        rows = torch.arange(self.batch, device=self.device)[:, None]
        page = self.block_table[rows, pos // self.page_size].long()
        slot = pos % self.page_size
        self.k[page, :, slot] = k_new.transpose(1, 2)
        self.v[page, :, slot] = v_new.transpose(1, 2)
        if self.summaries:
            first = self.lengths.long() // self.page_size
            self._summarise(first, self.lengths.long() + n, (n - 1) // self.page_size + 2)
        self._advance(n)

    def _summarise(self, first: torch.Tensor, ends: torch.Tensor, count: int) -> None:
        """Recompute ``k_min`` / ``k_max`` of the logical pages ``first[b] + [0, count)`` of each
        sequence from their tokens before ``ends[b]`` (pages past the end: the scratch row).
        Pages shared by sequences get the same values from each: writes agree."""
        count = min(count, self.max_pages)
        # (a whole cache at construction: in chunks of pages, so the copies stay small)
        chunk = max(1, (1 << 26) // (self.batch * self.kv_heads * self.page_size * self.head_dim))
        for start in range(0, count, chunk):
            self._summarise_pages(first + start, ends, min(chunk, count - start))

    def _summarise_pages(self, first: torch.Tensor, ends: torch.Tensor, count: int) -> None:
        ps = self.page_size
        logical = first[:, None] + torch.arange(count, device=self.device)  # (B, count)
        live = logical * ps < ends[:, None]
        rows = torch.arange(self.batch, device=self.device)[:, None]
        page = self.block_table[rows, logical.clamp(max=self.max_pages - 1)].long()
        page = torch.where(live & (page >= 0), page, self.num_pages)  # dead: the scratch row
        tokens = self.k[page.clamp(max=self.num_pages - 1)]  # (B, count, Hkv, ps, D)
        filled = (logical[:, :, None] * ps + torch.arange(ps, device=self.device)) < ends[:, None, None]
        empty = ~filled[:, :, None, :, None]  # (B, count, 1, ps, 1)
        self._k_min[page] = tokens.masked_fill(empty, float("inf")).amin(dim=3)
        self._k_max[page] = tokens.masked_fill(empty, float("-inf")).amax(dim=3)


__all__ = ["KVCache", "MIN_PAGE_SIZE", "PagedKVCache"]
