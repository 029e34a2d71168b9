"""Decoding with a KV cache (``foveate.decode``): the caches' appends and checks, the split-KV
kernels (Triton's interpreter on a CPU) against the float32 reference on the gathered cache,
sparse decoding (window, sinks + window, Quest pages), and a greedy generation loop against
PyTorch's SDPA over the whole sequence. The bf16 GPU checks at the end run only with CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import foveate.decode as fd
from foveate import patterns as P
from foveate.decode import rule as R
from foveate.decode.kernel import DecodeConfig, choose_splits
from foveate.decode.naive import decode_attention, gather, pattern_mask
from foveate.decode.quest import page_bounds

from naive import dense_mask

CPU = torch.device("cpu")
WINDOW = P.SlidingWindow(23)
STREAMING = (P.SlidingWindow(23) | P.Sinks(5)) & P.Causal()


def _randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _cache(kind: str, gen, *, batch=3, kv_heads=2, head_dim=32, lengths=(70, 3, 130), max_len=192,
           dtype=torch.float32, summaries=False):
    """A cache of ``kind`` (``"contiguous"`` or ``"paged<page_size>"``) filled with random keys
    and values up to ``lengths`` (pages scattered over the pool)."""
    if kind == "contiguous":
        cache = fd.KVCache.empty(batch, kv_heads, max_len, head_dim, dtype=dtype)
    else:
        cache = fd.PagedKVCache.empty(batch, kv_heads, max_len, head_dim, page_size=int(kind[5:]), dtype=dtype,
                                      shuffle=gen, summaries=summaries)
    cache.k.copy_(_randn(gen, *cache.k.shape, dtype=dtype))
    cache.v.copy_(_randn(gen, *cache.v.shape, dtype=dtype))
    cache.set_lengths(torch.tensor(lengths))
    return cache


def _close(out, ref, dtype):
    tol = 2e-5 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


# -- the rule: patterns lowered to key intervals ------------------------------------------------


@pytest.mark.parametrize("pattern", [None, P.Causal(), P.Dense(), WINDOW, P.SlidingWindow(6, 3), P.Sinks(4),
                                     STREAMING, P.SlidingWindow(9) | P.Sinks(3)], ids=repr)
@pytest.mark.parametrize("n_new", [1, 4])
def test_rule_allows_what_mask_mod_allows(pattern, n_new):
    rule = R.lower(pattern, n_new)
    for length in (1, n_new, 17, 64, 301):
        want = (pattern_mask(None, n_new, length, CPU) if pattern is None else dense_mask(pattern, n_new, length))
        assert torch.equal(R.rule_mask(rule, n_new, length), want), length
        # the ranges a kernel reads are disjoint and cover every allowed key
        read = torch.zeros(length, dtype=torch.int32)
        for lo, hi in R.walk(rule, n_new, length):
            read[lo:hi] += 1
        assert read.max() <= 1 and bool((read[want.any(0)] == 1).all())


@pytest.mark.parametrize("pattern", [P.ChunkCausal(16), P.PrefixLM(8), P.Global(4), P.Neighborhood((8, 8), 3),
                                     P.SlidingWindow(4) | P.Sinks(2) | P.ChunkCausal(64)], ids=repr)
def test_rule_refuses_other_patterns(pattern):
    with pytest.raises(ValueError, match="pattern .* cannot run in decoding.*Supported"):
        R.lower(pattern, 3)


def test_window_and_sinks_read_only_their_keys():
    rule = R.lower(STREAMING, 2)
    assert R.walk(rule, 2, 100_000) == [(0, 5), (100_000 - 25, 100_000)]
    assert R.walk_tokens(rule, 2, 100_000) == 30


# -- caches ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["contiguous", "paged16"])
def test_append_writes_in_place_at_each_length(kind, rng):
    cache = _cache(kind, rng, lengths=(5, 0, 17), dtype=torch.float32)
    k_ref = [gather(cache, b)[0].clone() for b in range(3)]
    storage = cache.k.data_ptr(), cache.v.data_ptr()
    for n in (3, 1, 20):
        k_new, v_new = _randn(rng, 3, 2, n, 32), _randn(rng, 3, 2, n, 32)
        cache.append(k_new, v_new)
        k_ref = [torch.cat([k_ref[b], k_new[b]], dim=1) for b in range(3)]
        for b in range(3):
            assert torch.equal(gather(cache, b)[0], k_ref[b])
            assert torch.equal(gather(cache, b)[1][:, -n:], v_new[b])
    assert cache.host_lengths == [29, 24, 41] and cache.lengths.tolist() == [29, 24, 41]
    assert cache.lengths.dtype == torch.int32
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == storage  # no copy of the cache


def test_contiguous_append_leaves_other_rows():
    cache = fd.KVCache(torch.zeros(2, 1, 8, 16), torch.zeros(2, 1, 8, 16), torch.tensor([2, 5]))
    cache.append(torch.ones(2, 1, 2, 16), torch.ones(2, 1, 2, 16))
    assert cache.k[0, 0, :, 0].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    assert cache.k[1, 0, :, 0].tolist() == [0, 0, 0, 0, 0, 1, 1, 0]


def test_summaries_follow_appends_and_lengths(rng):
    cache = _cache("paged16", rng, lengths=(0, 0, 0), summaries=True)
    for n in (7, 16, 1, 30):
        cache.append(_randn(rng, 3, 2, n, 32), _randn(rng, 3, 2, n, 32))
    cache.set_lengths(torch.tensor([54, 20, 33]))  # (drops tokens mid-page)
    cache.append(_randn(rng, 3, 2, 2, 32), _randn(rng, 3, 2, 2, 32))
    for b in range(3):
        k = gather(cache, b)[0]
        for t in range(-(-k.shape[1] // 16)):
            page = cache.block_table[b, t]
            assert torch.equal(cache.k_min[page], k[:, 16 * t:16 * (t + 1)].amin(1)), (b, t)
            assert torch.equal(cache.k_max[page], k[:, 16 * t:16 * (t + 1)].amax(1)), (b, t)


def _state(cache):
    return [t.clone() for t in (cache.k, cache.v, cache.lengths)] + [list(cache.host_lengths)]


def _unchanged(cache, before):
    after = _state(cache)
    assert all(torch.equal(a, b) for a, b in zip(before[:3], after[:3])) and before[3] == after[3]


def test_bad_appends_raise_and_write_nothing(rng):
    cache = _cache("paged16", rng, lengths=(70, 3, 130), max_len=144)
    before = _state(cache)
    k = _randn(rng, 3, 2, 20, 32)
    with pytest.raises(ValueError, match="k_new: appending 20 tokens to sequence 2 .* capacity 144"):
        cache.append(k, k)
    table = cache.block_table.clone()
    table[0, 5] = -1  # the page of tokens 80..95 of sequence 0
    cache.set_block_table(table)
    with pytest.raises(ValueError, match=r"block_table: sequence 0 .* block_table\[0, 5\] = -1"):
        cache.append(k[:, :, :12], k[:, :, :12])
    with pytest.raises(TypeError, match="k_new must have the cache's dtype"):
        cache.append(k.double(), k.double())
    with pytest.raises(TypeError, match="v_new must have k_new's dtype"):
        cache.append(k, k.half())
    with pytest.raises(ValueError, match=r"k_new must be \(B, Hkv, n_new, D\)"):
        cache.append(k[:, :1], k[:, :1])
    with pytest.raises(ValueError, match="v_new must have k_new's shape"):
        cache.append(k, k[:, :, :3])
    with pytest.raises(ValueError, match="k_new is on meta"):
        cache.append(k.to("meta"), k.to("meta"))
    with pytest.raises(TypeError, match="k_new must be a torch.Tensor"):
        cache.append(k.tolist(), k)
    _unchanged(cache, before)
    with pytest.raises(ValueError, match=r"block_table: sequence 0 needs 70 tokens, but block_table\[0, 4\]"):
        bad = table.clone()
        bad[0, 4] = -1
        cache.set_block_table(bad)
    assert torch.equal(cache.block_table, table)
    with pytest.raises(ValueError, match=r"lengths\[1\] = 145 is outside \[0, 144\]"):
        cache.set_lengths(torch.tensor([1, 145, 1]))
    _unchanged(cache, before)


def test_bad_caches_raise():
    pool = torch.zeros(6, 2, 16, 8)
    table = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"block_table\[1, 2\] = 6 is out of range"):
        fd.PagedKVCache(pool, pool, table + torch.tensor([[0, 0, 0], [0, 0, 1]], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"block_table\[0, 0\] = -2 is out of range"):
        fd.PagedKVCache(pool, pool, table - 2)
    with pytest.raises(TypeError, match="block_table must be an integer tensor"):
        fd.PagedKVCache(pool, pool, table.float())
    with pytest.raises(ValueError, match="page_size 16 must divide max_len 40"):
        fd.PagedKVCache.empty(2, 2, 40, 8, page_size=16)
    with pytest.raises(ValueError, match="k_pages: page_size .* power of two >= 16, got 24"):
        fd.PagedKVCache(torch.zeros(6, 2, 24, 8), torch.zeros(6, 2, 24, 8), table)
    with pytest.raises(ValueError, match="k_pages: page_size .* got 8"):
        fd.PagedKVCache(torch.zeros(6, 2, 8, 8), torch.zeros(6, 2, 8, 8), table)
    with pytest.raises(ValueError, match="v_pages is on meta"):
        fd.PagedKVCache(pool, pool.to("meta"), table)
    with pytest.raises(ValueError, match="block_table is on meta"):
        fd.PagedKVCache(pool, pool, table.to("meta"))
    with pytest.raises(ValueError, match="lengths is on meta"):
        fd.PagedKVCache(pool, pool, table, torch.tensor([1, 2], device="meta"))
    with pytest.raises(ValueError, match=r"lengths\[0\] = 49 is outside \[0, 48\]"):
        fd.PagedKVCache(pool, pool, table, torch.tensor([49, 2]))
    with pytest.raises(ValueError, match=r"lengths: sequence 1 needs 20 tokens, but block_table\[1, 1\] = -1"):
        fd.PagedKVCache(pool, pool, torch.tensor([[0, 1, 2], [3, -1, -1]]), torch.tensor([1, 20]))
    with pytest.raises(TypeError, match="v must have k's dtype"):
        fd.KVCache(torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8, 8, dtype=torch.float16))
    with pytest.raises(TypeError, match="k must be a floating-point tensor"):
        fd.KVCache(torch.zeros(2, 2, 8, 8, dtype=torch.int32), torch.zeros(2, 2, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="v must have k's shape"):
        fd.KVCache(torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 9, 8))
    with pytest.raises(ValueError, match="k must have 4 dims"):
        fd.KVCache(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        fd.KVCache(torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8, 8), torch.tensor([1, 2, 3]))


def test_bad_attention_inputs_raise(rng):
    cache = _cache("paged16", rng, summaries=True)
    q = _randn(rng, 3, 4, 1, 32)
    for bad, error, match in [
        (dict(q=q.half()), TypeError, "q must have the cache's dtype"),
        (dict(q=q.to("meta")), ValueError, "q is on meta"),
        (dict(q=q[:2]), ValueError, r"q must be \(B, Hq, n_new, D\) with B = 3"),
        (dict(q=q[:, :3]), ValueError, "q's heads 3 must be a multiple of the cache's kv heads 2"),
        (dict(q=q[0]), ValueError, r"q must be \(B, Hq, n_new, D\), got shape"),
        (dict(cache=object()), TypeError, "cache must be a KVCache or a PagedKVCache"),
        (dict(pattern=P.ChunkCausal(8)), ValueError, "pattern ChunkCausal.* cannot run in decoding"),
        (dict(backend="flex"), ValueError, "backend must be one of"),
        (dict(splits=0), ValueError, "splits must be an int >= 1"),
        (dict(scale="x"), TypeError, "scale must be a finite float"),
        (dict(pages="x"), TypeError, "pages must be a PageSelection"),
        (dict(pattern="causal"), TypeError, "pattern must be a foveate pattern or None"),
        (dict(q=_randn(rng, 3, 32, 17, 32), backend="triton"), ValueError, "q: 272 rows per kv head"),
    ]:
        args = dict(q=q, cache=cache) | bad
        with pytest.raises(error, match=match):
            fd.attention(args.pop("q"), args.pop("cache"), **args)
    with pytest.raises(ValueError, match="pages: a page selection needs a PagedKVCache"):
        fd.attention(q, _cache("contiguous", rng), pages=fd.select_pages(q, cache, budget=64))
    with pytest.raises(ValueError, match="budget 16 holds 1 pages"):
        fd.select_pages(q, cache, budget=16, sinks=4)
    with pytest.raises(ValueError, match="cache: page selection needs key summaries"):
        fd.select_pages(q, _cache("paged16", rng), budget=64)


# -- kernels against the reference ------------------------------------------------------------

KERNEL_CASES = [
    # (cache, n_new, group, pattern, dtype, splits)
    ("contiguous", 1, 1, None, torch.float32, None),
    ("contiguous", 3, 2, None, torch.float16, 3),
    ("contiguous", 1, 8, WINDOW, torch.float32, 2),
    ("contiguous", 4, 4, STREAMING, torch.float16, None),
    ("paged16", 1, 4, None, torch.float32, 4),
    ("paged16", 5, 2, STREAMING, torch.float32, 2),
    ("paged16", 2, 8, WINDOW, torch.float16, 1),
    ("paged64", 1, 2, STREAMING, torch.float16, 3),
    ("paged64", 3, 1, None, torch.float32, 2),
    ("paged128", 2, 4, None, torch.float16, 2),
    ("paged16", 16, 1, P.SlidingWindow(6, 2), torch.float32, 1),
]


@pytest.mark.parametrize("kind, n_new, group, pattern, dtype, splits", [
    pytest.param(*c, id=f"{c[0]}-n{c[1]}-g{c[2]}-{'causal' if c[3] is None else type(c[3]).__name__}-"
                        f"{str(c[4])[6:]}-s{c[5]}") for c in KERNEL_CASES])
def test_kernel_matches_reference(kind, n_new, group, pattern, dtype, splits, rng):
    """Ragged lengths (one shorter than the queries: its first queries see no key)."""
    cache = _cache(kind, rng, kv_heads=2, lengths=(70, 3, 130), max_len=256 if kind == "paged128" else 192,
                   dtype=dtype)
    q = _randn(rng, 3, 2 * group, n_new, 32, dtype=dtype)
    out, lse = fd.attention(q, cache, pattern=pattern, splits=splits, return_lse=True, backend="triton")
    ref, ref_lse = decode_attention(q, cache, pattern=pattern)
    assert out.dtype == dtype and out.shape == q.shape and lse.shape == q.shape[:3]
    _close(out, ref, dtype)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)  # (-inf where a query sees no key)


@pytest.mark.parametrize("pattern", [P.Causal() | P.Sinks(3), P.SlidingWindow(23) | P.Sinks(64), P.Dense(),
                                     P.Sinks(5), P.SlidingWindow(40) & P.SlidingWindow(10, 5)], ids=repr)
def test_kernel_on_overlapping_and_one_sided_ranges(pattern, rng):
    """Key ranges that overlap (sinks inside the window or the causal range: read once), a
    pattern that is not causal, an intersection of windows."""
    cache = _cache("paged16", rng, lengths=(70, 3, 130))
    q = _randn(rng, 3, 4, 3, 32)
    out, lse = fd.attention(q, cache, pattern=pattern, splits=3, return_lse=True, backend="triton")
    ref, ref_lse = decode_attention(q, cache, pattern=pattern)
    _close(out, ref, torch.float32)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["contiguous", "paged16"])
def test_splits_agree(kind, rng):
    """One split, a few, and more splits than key blocks (empty splits): the same result."""
    cache = _cache(kind, rng, batch=2, kv_heads=1, lengths=(150, 40))
    q = _randn(rng, 2, 2, 2, 32)
    outs = [fd.attention(q, cache, pattern=STREAMING if s == 5 else None, splits=s, return_lse=True,
                         backend="triton") for s in (1, 2, 7, 5)]
    for out, lse in outs[1:3]:
        torch.testing.assert_close(out, outs[0][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(lse, outs[0][1], atol=1e-6, rtol=1e-5)
    _close(outs[3][0], decode_attention(q, cache, pattern=STREAMING)[0], torch.float32)


@pytest.mark.parametrize("kind", ["contiguous", "paged16"])
@pytest.mark.parametrize("what", ["streaming", "quest"])
def test_sparse_decoding_reads_only_its_keys(kind, what, rng):
    """Every key and value the pattern (or the selection) leaves out is NaN, as is every unused
    row of the storage: a kernel that loaded one would return NaN. An empty sequence too."""
    if what == "quest" and kind == "contiguous":
        pytest.skip("Quest needs a paged cache")
    cache = _cache(kind, rng, lengths=(150, 0, 191), summaries=what == "quest")
    q = _randn(rng, 3, 4, 2, 32)
    pattern = STREAMING if what == "streaming" else None
    pages = fd.select_pages(q, cache, budget=64, sinks=1) if what == "quest" else None
    ref, ref_lse = decode_attention(q, cache, pattern=pattern, pages=pages)
    keep = torch.zeros(cache.k.shape[:3], dtype=torch.bool)  # per storage row (and kv head)
    for b, length in enumerate(cache.host_lengths):
        for h in range(2):
            if pages is None:
                used = pattern_mask(pattern, 2, length, CPU).any(0).nonzero().flatten()
            else:
                used = torch.cat([torch.arange(16 * t, 16 * t + 16) for t in
                                  pages.pages[b, h, :int(pages.counts[b, h])].tolist()] + [torch.arange(0)])
                used = used[used < length]
            if kind == "contiguous":
                keep[b, h, used] = True
            else:
                keep[cache.block_table[b, used // 16].long(), h, used % 16] = True
    cache.k[~keep] = float("nan")
    cache.v[~keep] = float("nan")
    out, lse = fd.attention(q, cache, pattern=pattern, pages=pages, splits=2, return_lse=True, backend="triton")
    _close(out, ref, torch.float32)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)
    assert bool((out[1] == 0).all()) and bool(torch.isinf(lse[1]).all())  # the empty sequence


def test_torch_backend_is_the_reference(rng):
    cache = _cache("paged16", rng)
    q = _randn(rng, 3, 4, 2, 32)
    out, lse = fd.attention(q, cache, pattern=STREAMING, return_lse=True)  # auto: torch on a CPU
    ref, ref_lse = decode_attention(q, cache, pattern=STREAMING)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)


def test_choose_splits_fills_the_device():
    cfg = DecodeConfig(cpu_multiprocessors=132)
    assert choose_splits(1, 8, 131072, CPU, config=cfg) == 33  # 264 programs
    assert choose_splits(64, 8, 131072, CPU, config=cfg) == 1
    assert choose_splits(1, 8, 1024, CPU, config=cfg) == 4  # at least 256 keys a split
    assert choose_splits(1, 8, 100, CPU, config=cfg, page_size=16) == 1
    assert choose_splits(1, 1, 10**7, CPU, config=cfg) == 128  # max_splits


# -- Quest ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_new, group, sinks", [(1, 2, 0), (3, 4, 20)])
def test_quest_selects_the_top_pages_by_the_bound(n_new, group, sinks, rng):
    cache = _cache("paged16", rng, lengths=(150, 20, 191), summaries=True)
    q = _randn(rng, 3, 2 * group, n_new, 32)
    budget = 80  # 5 pages
    sel = fd.select_pages(q, cache, budget=budget, sinks=sinks)
    assert sel.pages.shape == (3, 2, 5) and sel.pages.dtype == torch.int32
    for b in range(3):
        k = gather(cache, b)[0].double()  # (Hkv, L, D): the bound from the keys themselves
        length = k.shape[1]
        n_pages = -(-length // 16)
        forced = {t for t in range(n_pages) if t < -(-sinks // 16) or t >= (length - n_new) // 16}
        for h in range(2):
            count = int(sel.counts[b, h])
            chosen = sel.pages[b, h, :count].tolist()
            assert count == min(5, n_pages) and chosen == sorted(set(chosen))
            rows = q[b, h * group:(h + 1) * group].reshape(-1, 32).double()
            bound = {}
            for t in range(n_pages):
                lo, hi = k[h, 16 * t:16 * (t + 1)].amin(0), k[h, 16 * t:16 * (t + 1)].amax(0)
                bound[t] = torch.maximum(rows * lo, rows * hi).sum(1).max().item()
            assert forced <= set(chosen)
            free = sorted(set(range(n_pages)) - forced, key=lambda t: -bound[t])
            want = forced | set(free[:count - len(forced)])
            if set(chosen) != want:  # only a near tie may differ (float32 against float64)
                worst = min(bound[t] for t in set(chosen) - forced)
                best_left = max(bound[t] for t in set(range(n_pages)) - set(chosen))
                assert worst >= best_left - 1e-4 * max(1.0, abs(best_left)), (b, h, chosen, want)
    bounds = page_bounds(q, cache)
    assert bounds.shape == (3, 2, cache.max_pages) and bool(torch.isinf(bounds[1, :, 2:]).all())


@pytest.mark.parametrize("kind_dtype", [("paged16", torch.float32), ("paged64", torch.float16)])
def test_quest_attention_over_the_selected_pages(kind_dtype, rng):
    kind, dtype = kind_dtype
    cache = _cache(kind, rng, kv_heads=2, lengths=(150, 3, 191), summaries=True, dtype=dtype)
    q = _randn(rng, 3, 4, 2, 32, dtype=dtype)
    sel = fd.select_pages(q, cache, budget=128, sinks=4)
    ref, ref_lse = decode_attention(q, cache, pages=sel)
    for splits in (1, 3):
        out, lse = fd.attention(q, cache, pages=sel, splits=splits, return_lse=True, backend="triton")
        _close(out, ref, dtype)
        torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)
    # the reference over the pages is attention over exactly those pages' keys
    for b, h in ((0, 1), (2, 0)):
        count, ps = int(sel.counts[b, h]), cache.page_size
        keys = torch.cat([torch.arange(ps * t, ps * (t + 1)) for t in sel.pages[b, h, :count].tolist()])
        k, v = gather(cache, b)
        keys = keys[keys < k.shape[1]]
        for i in range(2):
            qh = q[b, 2 * h + 1, i].float()
            visible = keys[keys <= k.shape[1] - 2 + i]
            s = (k[h, visible].float() @ qh) * 32 ** -0.5
            want = torch.softmax(s, 0) @ v[h, visible].float()
            torch.testing.assert_close(ref[b, 2 * h + 1, i].float(), want, atol=2e-3, rtol=2e-3)


def test_quest_with_the_whole_cache_in_budget_is_dense(rng):
    cache = _cache("paged16", rng, batch=2, lengths=(60, 33), summaries=True)
    q = _randn(rng, 2, 4, 1, 32)
    sel = fd.select_pages(q, cache, budget=cache.capacity)
    out = fd.attention(q, cache, pages=sel, backend="triton")
    _close(out, decode_attention(q, cache)[0], torch.float32)


# -- a generation loop ----------------------------------------------------------------------------


class _Decoder(torch.nn.Module):
    """Two pre-norm layers of GQA attention and an MLP, learned positions; tiny."""

    def __init__(self, vocab=61, dim=32, heads=4, kv_heads=2, layers=2, max_len=64):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.emb, self.pos = torch.nn.Embedding(vocab, dim), torch.nn.Embedding(max_len, dim)
        self.layers = torch.nn.ModuleList()
        for _ in range(layers):
            self.layers.append(torch.nn.ModuleDict(dict(
                n1=torch.nn.LayerNorm(dim), q=torch.nn.Linear(dim, dim),
                kv=torch.nn.Linear(dim, 2 * kv_heads * self.head_dim), o=torch.nn.Linear(dim, dim),
                n2=torch.nn.LayerNorm(dim),
                mlp=torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(),
                                        torch.nn.Linear(4 * dim, dim)))))
        self.norm, self.head = torch.nn.LayerNorm(dim), torch.nn.Linear(dim, vocab)

    def forward(self, tokens, start=0, attend=None):
        """Logits ``(B, n, vocab)`` of ``tokens`` ``(B, n)`` at positions ``start..``; ``attend(layer,
        q, k, v)`` with ``(B, H, n, d)`` tensors, default causal SDPA over these tokens alone."""
        b, n = tokens.shape
        x = self.emb(tokens) + self.pos(torch.arange(start, start + n))
        for i, layer in enumerate(self.layers):
            h = layer["n1"](x)
            q = layer["q"](h).view(b, n, self.heads, -1).transpose(1, 2)
            k, v = layer["kv"](h).view(b, n, 2, self.kv_heads, -1).permute(2, 0, 3, 1, 4)
            if attend is None:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                a = attend(i, q, k.contiguous(), v.contiguous())
            x = x + layer["o"](a.transpose(1, 2).reshape(b, n, -1))
            x = x + layer["mlp"](layer["n2"](x))
        return self.head(self.norm(x))


@pytest.mark.parametrize("kind", ["contiguous", "paged16"])
def test_greedy_generation_matches_sdpa(kind):
    torch.manual_seed(0)
    model = _Decoder().eval()
    prompt = torch.randint(0, 61, (2, 5), generator=torch.Generator().manual_seed(1))
    steps = 8

    with torch.no_grad():
        want = prompt
        for _ in range(steps):  # SDPA over the whole sequence at every step
            want = torch.cat([want, model(want)[:, -1].argmax(-1, keepdim=True)], dim=1)

        caches = [fd.KVCache.empty(2, 2, 32, 8, dtype=torch.float32) if kind == "contiguous" else
                  fd.PagedKVCache.empty(2, 2, 32, 8, page_size=16, dtype=torch.float32,
                                        shuffle=torch.Generator().manual_seed(2)) for _ in range(2)]

        def attend(i, q, k, v):
            caches[i].append(k, v)
            return fd.attention(q, caches[i], backend="triton")

        got, step_in, start = prompt, prompt, 0
        for _ in range(steps):
            nxt = model(step_in, start, attend)[:, -1].argmax(-1, keepdim=True)
            start += step_in.shape[1]
            got, step_in = torch.cat([got, nxt], dim=1), nxt
    assert torch.equal(got, want)


# -- GPU: bf16 against float32, the 2x rule -------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _sdpa_lowp(q, cache, pattern=None, pages=None):
    """The same decoding by PyTorch in q's dtype (SDPA per sequence on the gathered cache)."""
    batch, hq, n_new, d = q.shape
    out = torch.zeros_like(q)
    for b in range(batch):
        k, v = gather(cache, b)
        if k.shape[1] == 0:
            continue
        mask = pattern_mask(pattern, n_new, k.shape[1], q.device)[None].expand(hq, -1, -1)
        if pages is not None:
            from foveate.decode.naive import page_mask

            keep = page_mask(pages, b, k.shape[1], cache.page_size, cache.kv_heads, q.device)
            mask = mask & keep.repeat_interleave(hq // cache.kv_heads, 0)[:, None, :]
        o = F.scaled_dot_product_attention(q[b], k, v, attn_mask=mask, enable_gqa=True)
        out[b] = torch.where(mask.any(-1, keepdim=True), o, 0)  # (SDPA gives NaN where a query sees no key)
    return out


@gpu
@pytest.mark.parametrize("kind", ["contiguous", "paged16", "paged64"])
@pytest.mark.parametrize("what", ["causal", "streaming", "quest"])
def test_gpu_bf16_within_twice_torch_error(kind, what):
    if what == "quest" and kind == "contiguous":
        pytest.skip("Quest needs a paged cache")
    gen = torch.Generator(device="cuda").manual_seed(0)
    lengths, dim, hq, hkv, n_new = (4099, 1, 777, 2500), 128, 32, 8, 2
    cache_kw = dict(dtype=torch.bfloat16, device="cuda")
    if kind == "contiguous":
        cache = fd.KVCache.empty(4, hkv, 4352, dim, **cache_kw)
    else:
        cache = fd.PagedKVCache.empty(4, hkv, 4352, dim, page_size=int(kind[5:]), summaries=True, **cache_kw)
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen, device="cuda"))
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen, device="cuda"))
    cache.set_lengths(torch.tensor(lengths, device="cuda"))
    q = torch.randn(4, hq, n_new, dim, generator=gen, device="cuda").bfloat16()
    pattern = P.SlidingWindow(1023) | P.Sinks(4) if what == "streaming" else None
    pages = fd.select_pages(q, cache, budget=1024, sinks=4) if what == "quest" else None
    ref, ref_lse = decode_attention(q.float(), _as_float(cache), pattern=pattern, pages=pages)
    for splits in (None, 1):
        out, lse = fd.attention(q, cache, pattern=pattern, pages=pages, splits=splits, return_lse=True)
        torch_err = (_sdpa_lowp(q, cache, pattern, pages).float() - ref).abs().max().item()
        err = (out.float() - ref).abs().max().item()
        assert err <= 2 * torch_err + 1e-5, (err, torch_err)
        finite = torch.isfinite(ref_lse)
        assert torch.equal(finite, torch.isfinite(lse))
        assert (lse[finite] - ref_lse[finite]).abs().max().item() <= 1e-2


def _as_float(cache):
    """The same cache with float32 storage (the reference's inputs)."""
    if isinstance(cache, fd.PagedKVCache):
        return fd.PagedKVCache(cache.k.float(), cache.v.float(), cache.block_table, cache.lengths)
    return fd.KVCache(cache.k.float(), cache.v.float(), cache.lengths)

