"""Content-selected block sparsity: ``foveate.selection`` (geometry, scores, top-k / top-p) and the
patterns built on it (``BlockTopK``, ``BlockTopP``, ``MoBA``, ``XAttention``, ``SelectedBlocks``).

Every expectation comes from a definition written here or in ``foveate.selection.naive``:
loops over blocks and positions for the geometry (from ``SelectionGeometry``'s docstring),
the float64 loop definitions of the scores, planted inputs whose right selection is known by
construction, the defining properties of top-k and top-p, the mask of a selection expanded from
its block grid, and naive float64 attention on that mask (``naive.py``). The Triton cases run in
Triton's interpreter without a GPU (``conftest.py`` sets ``TRITON_INTERPRET=1``): small shapes,
float32 and float16 only.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import foveate
from foveate import patterns as P
from foveate.backends.triton import fwd as fwd_module
from foveate.selection import (
    SelectionGeometry, antidiagonal_mass, mean_logits, mean_mass, select_topk, select_topp,
)
from foveate.selection import scores as scores_module
from foveate.selection.naive import naive_antidiagonal_mass, naive_mean_logits

import brute
from layout_checks import check_structure
from conftest import grads_of
from naive import naive_attention
from kernel_spy import DEVICE, needs_triton

F64, F32, F16 = torch.float64, torch.float32, torch.float16


# -- brute-force definitions -------------------------------------------------------------------


def brute_candidates(g: SelectionGeometry) -> torch.Tensor:
    """``(nq, nkv)``: non-causal, every key block; causal, the key blocks that hold a key at or
    before the key position of the query block's last query (bottom-right alignment)."""
    offset = g.kv_len - g.q_len
    nq, nkv = -(-g.q_len // g.query_block), -(-g.kv_len // g.block)
    out = torch.zeros(nq, nkv, dtype=torch.bool)
    for i in range(nq):
        last = min((i + 1) * g.query_block, g.q_len) - 1 + offset
        for j in range(nkv):
            keys = range(j * g.block, min((j + 1) * g.block, g.kv_len))
            out[i, j] = (not g.causal) or any(key <= last for key in keys)
    return out


def brute_forced(g: SelectionGeometry) -> torch.Tensor:
    """``(nq, nkv)``: the sink blocks (``j < sink_blocks``) and the local band: a key block is
    local when, for some position ``p`` of the query block, it is the block of ``p`` (``p //
    block``, floor division: positions before key 0 lie in virtual blocks -1, -2, ...) or one
    of the ``local_blocks - 1`` blocks before it (or after it, when not causal); all within the
    candidates."""
    offset = g.kv_len - g.q_len
    nq, nkv = -(-g.q_len // g.query_block), -(-g.kv_len // g.block)
    out = torch.zeros(nq, nkv, dtype=torch.bool)
    for i in range(nq):
        positions = range(i * g.query_block + offset, min((i + 1) * g.query_block, g.q_len) + offset)
        for j in range(nkv):
            local = False
            for p in positions:
                d = p // g.block - j  # how many blocks j lies before the block of p
                if 0 <= d < g.local_blocks or (not g.causal and 0 <= -d < g.local_blocks):
                    local = True
                    break
            out[i, j] = j < g.sink_blocks or local
    return out & brute_candidates(g)


def kv_head(h: int, heads_q: int, heads_kv: int) -> int:
    return h // (heads_q // heads_kv)


def expand_selection(selected, query_block, block, q_len, kv_len, causal) -> torch.Tensor:
    """The token mask ``(B, H, q_len, kv_len)`` of a block selection, built by loops over
    tokens: pair allowed iff its block pair is selected (and ``j <= p`` under ``causal``)."""
    b_, h_, _, _ = selected.shape
    out = torch.zeros(b_, h_, q_len, kv_len, dtype=torch.bool)
    causal_mask = brute.causal_mask(q_len, kv_len) if causal else brute.dense_mask(q_len, kv_len)
    sel = selected.cpu()
    for i in range(q_len):
        for j in range(kv_len):
            if causal_mask[i, j]:
                out[:, :, i, j] = sel[:, :, i // query_block, j // block]
    return out


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# -- strategies --------------------------------------------------------------------------------


@st.composite
def score_problems(draw, max_len=48, strides=(1, 2, 4, 8)):
    """Random ``q``, ``k`` and a geometry: lengths not multiples of the blocks, either longer,
    causal or not, GQA, query_block != block, strided block sizes."""
    stride = draw(st.sampled_from(strides))
    query_block = stride * draw(st.integers(1, 3))
    block = stride * draw(st.integers(1, 3))
    q_len, kv_len = draw(st.integers(1, max_len)), draw(st.integers(1, max_len))
    causal = draw(st.booleans())
    heads_kv = draw(st.integers(1, 2))
    heads_q = heads_kv * draw(st.sampled_from([1, 2]))
    batch = draw(st.integers(1, 2))
    dim = draw(st.sampled_from([4, 8]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads_q, q_len, dim, generator=gen)
    k = torch.randn(batch, heads_kv, kv_len, dim, generator=gen)
    g = SelectionGeometry(q_len, kv_len, query_block, block, causal, 0, 0)
    return q, k, g, stride


# -- 1. scores ---------------------------------------------------------------------------------


@given(score_problems(), st.floats(0.05, 2.0))
@settings(max_examples=60, deadline=None)
def test_mean_logits_match_the_naive_definition(problem, scale):
    q, k, g, _ = problem
    got = mean_logits(q, k, g, scale)
    want = naive_mean_logits(q, k, g, scale)
    assert got.dtype == F32 and got.shape == want.shape == (q.shape[0], q.shape[1], g.num_q_blocks, g.num_kv_blocks)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@given(score_problems(max_len=40), st.floats(0.05, 2.0), st.booleans())
@settings(max_examples=40, deadline=None)
def test_antidiagonal_mass_matches_the_naive_definition(problem, scale, small_chunks):
    q, k, g, stride = problem
    # small_chunks: one query block per chunk, so that the chunked path is checked too.
    with mock.patch.object(scores_module, "_CHUNK_ELEMS", 1 if small_chunks else scores_module._CHUNK_ELEMS):
        got = antidiagonal_mass(q, k, g, scale, stride)
    want = naive_antidiagonal_mass(q, k, g, scale, stride)
    assert got.dtype == F32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@given(score_problems(max_len=64))
@settings(max_examples=60, deadline=None)
def test_antidiagonal_mass_of_a_query_block_sums_to_its_share_of_rows_that_see_keys(problem):
    """Each reduced row (``stride`` queries) spreads mass 1 over the keys it sees: a query block
    sums to 1, or to 0 when none of its rows sees a key (causal, ``q_len > kv_len``); a block
    whose first rows lie before key 0 and last rows do not sums to the share of its rows that
    see a key. Never negative, never mass on blocks a causal query block cannot see."""
    q, k, g, s = problem
    mass = antidiagonal_mass(q, k, g, 1.0, s)
    assert (mass >= 0).all()
    offset = g.kv_len - g.q_len
    for i in range(g.num_q_blocks):
        rows = range(i * g.query_block, min((i + 1) * g.query_block, g.q_len), s)
        seeing = [not g.causal or min(r + s, g.q_len) - 1 + offset >= 0 for r in rows]
        want = sum(seeing) / len(seeing)
        torch.testing.assert_close(mass[:, :, i].sum(-1), torch.full(mass.shape[:2], want), rtol=0, atol=1e-5)
    assert (mass[..., ~brute_candidates(g)] == 0).all()


@given(score_problems(), st.floats(0.05, 2.0))
@settings(max_examples=40, deadline=None)
def test_mean_mass_is_the_softmax_over_candidates_of_logit_plus_log_count(problem, scale):
    q, k, g, _ = problem
    cand = brute_candidates(g)
    counts = torch.tensor([min(g.block, g.kv_len - j * g.block) for j in range(g.num_kv_blocks)], dtype=F64)
    want = torch.zeros(q.shape[0], q.shape[1], g.num_q_blocks, g.num_kv_blocks, dtype=F64)
    logits = naive_mean_logits(q, k, g, scale)
    for i in range(g.num_q_blocks):
        if cand[i].any():
            e = torch.exp(logits[:, :, i] + counts.log()) * cand[i]
            want[:, :, i] = e / e.sum(-1, keepdim=True)
    got = mean_mass(q, k, g, scale)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    sums = got.sum(-1)
    assert torch.allclose(sums[..., cand.any(-1)], torch.tensor(1.0), atol=1e-5)
    assert (sums[..., ~cand.any(-1)] == 0).all()


# -- 2. geometry -------------------------------------------------------------------------------


@given(st.integers(1, 60), st.integers(1, 60), st.integers(1, 12), st.integers(1, 12), st.booleans(),
       st.integers(0, 3), st.integers(0, 3))
@settings(max_examples=300, deadline=None)
def test_geometry_matches_the_brute_force_definition(q_len, kv_len, query_block, block, causal, sink, local):
    g = SelectionGeometry(q_len, kv_len, query_block, block, causal, sink, local)
    nq, nkv = -(-q_len // query_block), -(-kv_len // block)
    assert (g.num_q_blocks, g.num_kv_blocks) == (nq, nkv)
    cand, forced = g.candidates("cpu"), g.forced("cpu")
    assert cand.dtype == forced.dtype == torch.bool and cand.shape == forced.shape == (nq, nkv)
    assert torch.equal(cand, brute_candidates(g))
    assert torch.equal(forced, brute_forced(g))
    assert not (forced & ~cand).any(), "a forced block outside the candidates"
    counts = [min(block, kv_len - j * block) for j in range(nkv)]
    assert g.kv_counts("cpu").tolist() == counts


def test_geometry_examples():
    """A few hand-checked cases of the brute force itself."""
    # Causal, aligned, 4 blocks: lower triangle; local 2 = diagonal and the one before; sink 1.
    g = SelectionGeometry(16, 16, 4, 4, True, 1, 2)
    assert torch.equal(brute_candidates(g), torch.ones(4, 4, dtype=torch.bool).tril())
    assert brute_forced(g).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1]]
    # Decoding-like: 2 queries at the end of 10 keys sit at positions 8, 9 (block 2 of size 4).
    g = SelectionGeometry(2, 10, 2, 4, False, 0, 2)
    assert brute_forced(g).int().tolist() == [[0, 1, 1]]
    assert brute_candidates(SelectionGeometry(2, 10, 2, 4, True, 0, 1)).int().tolist() == [[1, 1, 1]]
    # q_len > kv_len, causal: the first query block sits before key 0 and sees nothing.
    g = SelectionGeometry(8, 4, 4, 2, True, 1, 1)
    assert brute_candidates(g).int().tolist() == [[0, 0], [1, 1]]
    assert brute_forced(g).int().tolist() == [[0, 0], [1, 1]]


# -- 3. selection semantics ----------------------------------------------------------------------


def planted(pattern, *, batch, heads_q, heads_kv, q_len, kv_len, dim=32, seed=0):
    """Inputs where each (batch, query head, query block) matches a known set of key blocks.

    Per (batch, key head), each key block ``j`` gets its own direction ``u_j`` (orthonormal:
    ``nkv <= dim``); its keys are ``40 u_j`` plus small noise. The queries of a query block are
    ``4 * sum(u_j)`` over a random set of ``k - |forced|`` of its candidate non-forced blocks
    (all of them when there are fewer), plus small noise; under ``causal`` only blocks entirely
    before the query block's first position are planted (the band holding its own positions is
    forced: ``local_blocks >= 1``). Returns ``q, k`` and the expected selection
    ``forced | planted`` ``(B, Hq, nq, nkv)``."""
    gen = torch.Generator().manual_seed(seed)
    g = pattern.geometry(q_len, kv_len)
    cand, forced = brute_candidates(g), brute_forced(g)
    nq, nkv = cand.shape
    assert nkv <= dim and (not pattern.causal or pattern.local_blocks >= 1)
    offset = kv_len - q_len
    q = 0.01 * torch.randn(batch, heads_q, q_len, dim, generator=gen, dtype=F64)
    k = 0.01 * torch.randn(batch, heads_kv, kv_len, dim, generator=gen, dtype=F64)
    expected = forced.expand(batch, heads_q, nq, nkv).clone()
    directions = {}
    for b in range(batch):
        for kh in range(heads_kv):
            u = torch.linalg.qr(torch.randn(dim, nkv, generator=gen, dtype=F64))[0].T  # (nkv, dim) orthonormal
            directions[b, kh] = u
            for j in range(nkv):
                k[b, kh, j * g.block:(j + 1) * g.block] += 40 * u[j]
    for b in range(batch):
        for h in range(heads_q):
            u = directions[b, kv_head(h, heads_q, heads_kv)]
            for i in range(nq):
                first = i * g.query_block + offset
                free = [j for j in range(nkv) if cand[i, j] and not forced[i, j]
                        and (not pattern.causal or min((j + 1) * g.block, kv_len) - 1 <= first)]
                assert len(free) == int((cand[i] & ~forced[i]).sum()), "a candidate block only partly visible"
                m = max(0, min(pattern.k - int(forced[i].sum()), len(free)))
                chosen = [free[t] for t in torch.randperm(len(free), generator=gen)[:m].tolist()]
                for j in chosen:
                    q[b, h, i * g.query_block:(i + 1) * g.query_block] += 4 * u[j]
                    expected[b, h, i, j] = True
    return q.float(), k.float(), expected


PLANTED = [
    pytest.param({"k": 4, "block": 16}, 96, 96, id="aligned"),
    pytest.param({"k": 3, "block": 16, "causal": True, "sink_blocks": 1, "local_blocks": 1}, 100, 150,
                 id="causal-q<kv"),
    pytest.param({"k": 5, "block": 16, "query_block": 8, "causal": True, "sink_blocks": 2, "local_blocks": 2}, 90, 120,
                 id="causal-qb8-sink2-local2"),
    pytest.param({"k": 3, "block": 8, "query_block": 16, "sink_blocks": 0, "local_blocks": 0}, 100, 70,
                 id="no-forced-q>kv"),
    pytest.param({"k": 6, "block": 16, "query_block": 32, "sink_blocks": 1, "local_blocks": 2}, 64, 200,
                 id="band-both-sides"),
    pytest.param({"k": 2, "block": 16, "causal": True, "sink_blocks": 1, "local_blocks": 2}, 80, 80,
                 id="forced-exceeds-k"),
]


@pytest.mark.parametrize("score", ["mean", "antidiagonal"])
@pytest.mark.parametrize("kw,q_len,kv_len", PLANTED)
def test_topk_finds_the_planted_blocks(kw, q_len, kv_len, score):
    pattern = P.BlockTopK(score=score, stride=4, **kw)
    q, k, expected = planted(pattern, batch=2, heads_q=4, heads_kv=2, q_len=q_len, kv_len=kv_len)
    sel = pattern.select(q, k)
    assert isinstance(sel, P.SelectedBlocks)
    assert sel.selected.dtype == torch.bool and sel.selected.shape == expected.shape
    assert torch.equal(sel.selected, expected)
    forced = brute_forced(pattern.geometry(q_len, kv_len))
    if (expected & ~forced).any():
        # The planted inputs give each (batch, head) its own selection (so the check is per head).
        flat = expected.flatten(2)
        assert any(not torch.equal(flat[0, 0], flat[b, h]) for b in range(2) for h in range(4))
    else:  # forced-exceeds-k: more forced blocks than k in most rows, all of them kept
        assert (forced.sum(-1) > pattern.k).any()


def _score_of(pattern, q, k, g, scale):
    if pattern.score == "mean":
        return mean_logits(q, k, g, scale).double()
    return antidiagonal_mass(q, k, g, scale, pattern.stride).double()


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_topk_keeps_k_blocks_the_forced_ones_then_the_best(data):
    score = data.draw(st.sampled_from(["mean", "antidiagonal"]))
    stride = data.draw(st.sampled_from([1, 2, 4]))
    block = stride * data.draw(st.integers(1, 4))
    query_block = stride * data.draw(st.integers(1, 4))
    pattern = P.BlockTopK(data.draw(st.integers(1, 6)), block=block, query_block=query_block, score=score,
                          stride=stride, sink_blocks=data.draw(st.integers(0, 2)),
                          local_blocks=data.draw(st.integers(0, 2)), causal=data.draw(st.booleans()))
    q_len, kv_len = data.draw(st.integers(1, 64)), data.draw(st.integers(1, 64))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    q = torch.randn(2, 2, q_len, 8, generator=gen)
    k = torch.randn(2, 1, kv_len, 8, generator=gen)
    sel = pattern.select(q, k).selected
    g = pattern.geometry(q_len, kv_len)
    cand, forced = brute_candidates(g), brute_forced(g)
    scores = _score_of(pattern, q, k, g, 8 ** -0.5)
    assert sel.shape == (2, 2, g.num_q_blocks, g.num_kv_blocks)
    for b in range(2):
        for h in range(2):
            for i in range(g.num_q_blocks):
                row = sel[b, h, i]
                assert not (row & ~cand[i]).any(), "a non-candidate block was selected"
                assert (row | ~forced[i]).all(), "a forced block was dropped"
                n_forced, n_cand = int(forced[i].sum()), int(cand[i].sum())
                want = n_forced if n_forced >= pattern.k else min(pattern.k, n_cand)
                assert int(row.sum()) == want
                # The chosen non-forced blocks score at least as high as the candidates left out.
                chosen = scores[b, h, i][row & ~forced[i]]
                left = scores[b, h, i][cand[i] & ~row]
                if chosen.numel() and left.numel():
                    assert chosen.min() >= left.max() - 1e-6


def _check_topp(sel, mass, p, cand, forced):
    """The defining properties of top-p for one (batch, head): ``mass`` ``(nq, nkv)`` float64,
    as the pattern estimates it (renormalised here over the candidates)."""
    for i in range(cand.shape[0]):
        row = sel[i]
        assert not (row & ~cand[i]).any(), "a non-candidate block was selected"
        assert (row | ~forced[i]).all(), "a forced block was dropped"
        m = mass[i] * cand[i]
        if m.sum() <= 0:
            assert torch.equal(row, forced[i])
            continue
        m = m / m.sum()
        kept = float(m[row].sum())
        assert kept >= p - 1e-5, f"query block {i}: kept mass {kept} < {p}"
        extra = m[row & ~forced[i]]
        if extra.numel():
            # Minimal: without its smallest non-forced block, the set falls short of p ...
            assert kept - float(extra.min()) < p + 1e-5, f"query block {i}: the set is not minimal"
            # ... and the non-forced blocks taken are the heaviest ones.
            left = m[cand[i] & ~row]
            if left.numel():
                assert float(extra.min()) >= float(left.max()) - 1e-6


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_topp_keeps_the_smallest_set_reaching_the_mass(data):
    score = data.draw(st.sampled_from(["mean", "antidiagonal"]))
    stride = data.draw(st.sampled_from([1, 2, 4]))
    block = stride * data.draw(st.integers(1, 4))
    query_block = stride * data.draw(st.integers(1, 4))
    p = data.draw(st.sampled_from([0.1, 0.3, 0.5, 0.75, 0.9, 0.99, 1.0]))
    pattern = P.BlockTopP(p, block=block, query_block=query_block, score=score, stride=stride,
                          sink_blocks=data.draw(st.integers(0, 2)), local_blocks=data.draw(st.integers(0, 2)),
                          causal=data.draw(st.booleans()))
    q_len, kv_len = data.draw(st.integers(1, 64)), data.draw(st.integers(1, 64))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    temperature = data.draw(st.sampled_from([0.3, 1.0, 3.0]))  # flat and peaked masses
    q = temperature * torch.randn(1, 2, q_len, 8, generator=gen)
    k = torch.randn(1, 2, kv_len, 8, generator=gen)
    sel = pattern.select(q, k).selected
    g = pattern.geometry(q_len, kv_len)
    cand, forced = brute_candidates(g), brute_forced(g)
    if score == "mean":
        mass = mean_mass(q, k, g, 8 ** -0.5)
    else:
        mass = antidiagonal_mass(q, k, g, 8 ** -0.5, stride)
    for h in range(2):
        _check_topp(sel[0, h], mass[0, h].double(), p, cand, forced)


@given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**31 - 1), st.sampled_from([0.2, 0.5, 0.9, 1.0]),
       st.floats(0.01, 100.0))
@settings(max_examples=80, deadline=None)
def test_select_functions_on_raw_scores(nq, nkv, seed, p, factor):
    """``select_topk`` / ``select_topp`` on arbitrary scores and masks (not from a geometry):
    top-p renormalises over the candidates, so scaling the mass or putting mass on
    non-candidates changes nothing; top-k keeps the forced blocks and then the best scores."""
    gen = torch.Generator().manual_seed(seed)
    mass = torch.rand(2, 3, nq, nkv, generator=gen) ** 3 + 1e-3  # skewed, no mass lost to rounding
    cand = torch.rand(nq, nkv, generator=gen) < 0.7
    forced = cand & (torch.rand(nq, nkv, generator=gen) < 0.2)
    sel = select_topp(mass, p, cand, forced)
    noisy = torch.where(cand, mass * factor, torch.rand(2, 3, nq, nkv, generator=gen) * 10)
    assert torch.equal(select_topp(noisy, p, cand, forced), sel)
    for b in range(2):
        for h in range(3):
            _check_topp(sel[b, h], mass[b, h].double(), p, cand, forced)
    for k in range(1, nkv + 2):
        top = select_topk(mass, k, cand, forced)
        assert torch.equal(top, select_topk(noisy, k, cand, forced))
        n_forced, n_cand = forced.sum(-1), cand.sum(-1)
        want = torch.where(n_forced >= k, n_forced, torch.clamp(n_cand, max=k))
        assert torch.equal(top.sum(-1), want.expand(2, 3, nq))
        assert not (top & ~cand).any() and (top | ~forced).all()
        chosen = torch.where(top & ~forced, mass, torch.inf).amin(-1)
        left = torch.where(cand & ~top, mass, -torch.inf).amax(-1)
        assert (chosen >= left).all()


def test_topp_renormalises_rows_that_partly_see_no_key():
    """Causal, ``q_len > kv_len``: a query block whose first rows sit before key 0 has
    antidiagonal mass summing to less than 1; top-p measures ``mass`` against the candidates'
    total."""
    gen = torch.Generator().manual_seed(8)
    q, k = torch.randn(2, 2, 96, 8, generator=gen), torch.randn(2, 2, 60, 8, generator=gen)
    for p in (0.3, 0.6, 0.9):
        pattern = P.BlockTopP(p, block=8, query_block=16, stride=4, causal=True, sink_blocks=0, local_blocks=0)
        g = pattern.geometry(96, 60)
        mass = antidiagonal_mass(q, k, g, 8 ** -0.5, 4).double()
        sums = mass.sum(-1)
        assert ((sums > 0.1) & (sums < 0.9)).any(), "no query block that partly sees no key"
        sel = pattern.select(q, k).selected
        cand, forced = brute_candidates(g), brute_forced(g)
        for b in range(2):
            for h in range(2):
                _check_topp(sel[b, h], mass[b, h], p, cand, forced)


def test_topp_one_keeps_every_candidate_and_small_mass_keeps_only_the_forced_or_the_best():
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 1, 64, 8, generator=gen), torch.randn(1, 1, 64, 8, generator=gen)
    every = P.BlockTopP(1.0, block=8, score="mean", causal=True).select(q, k).selected
    g = P.BlockTopP(1.0, block=8, causal=True).geometry(64, 64)
    assert torch.equal(every[0, 0], brute_candidates(g))
    tiny = P.BlockTopP(1e-6, block=8, score="mean", sink_blocks=0, local_blocks=0).select(q, k).selected
    assert (tiny.sum(-1) == 1).all()
    best = mean_mass(q, k, P.BlockTopP(0.5, block=8).geometry(64, 64), 8 ** -0.5).argmax(-1)
    assert torch.equal(tiny.int().argmax(-1), best)
    forced_only = P.BlockTopP(1e-6, block=8, score="mean", sink_blocks=1, local_blocks=1).select(q, k).selected
    assert torch.equal(forced_only[0, 0], P.BlockTopP(0.5, block=8).geometry(64, 64).forced("cpu"))


@pytest.mark.parametrize("pattern", [
    P.BlockTopK(2, block=8, sink_blocks=0, local_blocks=0),
    P.BlockTopK(3, block=8, query_block=4, score="antidiagonal", stride=4, causal=True),
    P.BlockTopP(0.6, block=8, stride=2, causal=True),
    P.BlockTopP(0.8, block=8, score="mean", sink_blocks=0, local_blocks=0),
], ids=["topk-mean", "topk-antidiag-causal", "topp-antidiag-causal", "topp-mean"])
def test_selection_is_per_batch_and_query_head_with_gqa(pattern):
    """Each (batch, query head) is selected from its own queries and its group's key head alone:
    the same as selecting that slice on its own; and the selections differ between heads."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, 60, 16, generator=gen)
    k = torch.randn(2, 2, 70, 16, generator=gen)
    sel = pattern.select(q, k).selected
    g = pattern.geometry(60, 70)
    assert sel.shape == (2, 4, g.num_q_blocks, g.num_kv_blocks)
    for b in range(2):
        for h in range(4):
            kh = kv_head(h, 4, 2)
            alone = pattern.select(q[b:b + 1, h:h + 1], k[b:b + 1, kh:kh + 1]).selected
            assert torch.equal(sel[b, h], alone[0, 0]), (b, h)
    flat = sel.flatten(2)
    distinct = {tuple(flat[b, h].tolist()) for b in range(2) for h in range(4)}
    assert len(distinct) > 1, "every head got the same selection: the inputs do not test per-head selection"


def test_selection_follows_the_scale():
    """``select(..., scale=)`` scores with that scale: a top-p selection widens as the scale
    (the softmax's sharpness) shrinks, and ``attention(scale=)`` selects with its scale."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=gen, dtype=F64) for _ in range(3))
    pattern = P.BlockTopP(0.5, block=8, score="mean", sink_blocks=0, local_blocks=0)
    sharp, flat = pattern.select(q, k, scale=2.0).selected, pattern.select(q, k, scale=0.05).selected
    assert int(sharp.sum()) < int(flat.sum())
    out = foveate.attention(q, k, v, pattern, scale=2.0, backend="reference")
    mask = pattern.select(q, k, scale=2.0).dense_mask()
    ref, _ = naive_attention(q, k, v, mask, 2.0)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


# -- 4. SelectedBlocks -----------------------------------------------------------------------------


@st.composite
def selections(draw):
    query_block, block = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    q_len, kv_len = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    nq, nkv = -(-q_len // query_block), -(-kv_len // block)
    lead = draw(st.sampled_from([(1, 1), (2, 1), (1, 3), (2, 3)]))
    seed = draw(st.integers(0, 2**31 - 1))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    selected = torch.rand(*lead, nq, nkv, generator=torch.Generator().manual_seed(seed)) < density
    causal = draw(st.booleans())
    sb = P.SelectedBlocks(selected, q_len=q_len, kv_len=kv_len, query_block=query_block, block=block, causal=causal)
    return sb, draw(st.sampled_from(divisors(query_block))), draw(st.sampled_from(divisors(block)))


@given(selections())
@settings(max_examples=120, deadline=None)
def test_selected_blocks_mask_and_layout_match_brute_force(case):
    sb, block_q, block_kv = case
    want = expand_selection(sb.selected, sb.query_block, sb.block, sb.q_len, sb.kv_len, sb.causal)
    dense = sb.dense_mask()
    # (The shape of a (1, 1) selection's dense mask is checked on its own below.)
    assert dense.dtype == torch.bool and torch.equal(torch.broadcast_to(dense, want.shape), want)
    b = torch.arange(want.shape[0]).view(-1, 1, 1, 1)
    h = torch.arange(want.shape[1]).view(1, -1, 1, 1)
    mm = sb.mask_mod(sb.q_len, sb.kv_len)
    got = mm(b, h, torch.arange(sb.q_len).view(1, 1, -1, 1), torch.arange(sb.kv_len).view(1, 1, 1, -1))
    assert torch.equal(torch.broadcast_to(got, want.shape), want)
    layout = sb.build(sb.q_len, sb.kv_len, block_q=block_q, block_kv=block_kv)
    assert (layout.block_q, layout.block_kv, layout.q_len, layout.kv_len) == (block_q, block_kv, sb.q_len, sb.kv_len)
    grid = check_structure(layout)
    assert torch.equal(torch.broadcast_to(grid, (*want.shape[:2], *grid.shape[2:])), brute.classify_blocks(want, block_q, block_kv))
    # (allowed_pairs() of these layouts is checked on its own below.)


@pytest.mark.parametrize("lead", [(1, 1), (2, 1), (1, 3), (2, 3)], ids=["bcast", "per-batch", "per-head", "both"])
def test_selection_layout_counts_the_allowed_pairs_of_each_batch_and_head(lead):
    """``layout.allowed_pairs()`` (and ``density()``) sum the pairs that ``mask_mod`` allows over
    the layout's leading axes; a causal selection has partial blocks, whose pairs are counted
    with the mask of their own (batch, head)."""
    selected = torch.rand(*lead, 3, 4, generator=torch.Generator().manual_seed(2)) < 0.6
    sb = P.SelectedBlocks(selected, q_len=20, kv_len=30, query_block=8, block=8, causal=True)
    want = expand_selection(selected, 8, 8, 20, 30, True)
    layout = sb.build(20, 30, block_q=4, block_kv=8)
    assert layout.allowed_pairs() == int(want.sum())
    assert layout.density() == pytest.approx(want.double().mean().item())


@pytest.mark.parametrize("lead", [(1, 1), (2, 1), (1, 3), (2, 3)], ids=["bcast", "per-batch", "per-head", "both"])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_mask_has_the_selection_batch_and_head_axes(lead, causal):
    """``dense_mask()`` is documented as ``(B, H, q_len, kv_len)``, ``(B, H)`` the selection's
    leading axes, including a selection made for one batch row and one head."""
    selected = torch.rand(*lead, 3, 4, generator=torch.Generator().manual_seed(0)) < 0.5
    sb = P.SelectedBlocks(selected, q_len=20, kv_len=30, query_block=8, block=8, causal=causal)
    dense = sb.dense_mask()
    assert tuple(dense.shape) == (*lead, 20, 30)
    assert torch.equal(dense, expand_selection(selected, 8, 8, 20, 30, causal))


def test_dense_mask_of_a_single_head_selection_keeps_its_leading_axes():
    """A pattern's selection for inputs with B = Hq = 1 is a (1, 1) selection."""
    q = torch.randn(1, 1, 20, 8, generator=torch.Generator().manual_seed(1))
    assert P.BlockTopK(2, block=8).select(q, q[:, :, :15]).dense_mask().shape == (1, 1, 20, 15)


def test_selected_blocks_refuse_block_sizes_that_do_not_divide_and_other_lengths():
    sel = torch.ones(1, 1, 3, 2, dtype=torch.bool)
    sb = P.SelectedBlocks(sel, q_len=40, kv_len=30, query_block=16, block=24, causal=False)
    sb.build(40, 30, block_q=8, block_kv=12)
    for bq, bkv in ((3, 12), (16, 5), (32, 24), (16, 48)):
        with pytest.raises(ValueError, match=f"{bq}x{bkv}"):
            sb.build(40, 30, block_q=bq, block_kv=bkv)
    for q_len, kv_len in ((41, 30), (40, 29), (30, 40)):
        with pytest.raises(ValueError, match="q_len=40, kv_len=30"):
            sb.build(q_len, kv_len, block_q=8, block_kv=8)
        with pytest.raises(ValueError, match="q_len=40, kv_len=30"):
            sb.mask_mod(q_len, kv_len)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1, 40, 8, generator=gen) for _ in range(3))
    with pytest.raises(ValueError, match="batch, heads"):  # a selection made for another batch size
        foveate.attention(q, k, v, P.SelectedBlocks(torch.ones(3, 1, 3, 2, dtype=torch.bool), q_len=40, kv_len=40,
                                                    query_block=16, block=24, causal=False), backend="reference")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("q_len,kv_len", [(64, 64), (30, 77), (77, 30)])
def test_block_density_counts_selected_over_candidate_blocks(causal, q_len, kv_len):
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, q_len, 8, generator=gen), torch.randn(2, 3, kv_len, 8, generator=gen)
    pattern = P.BlockTopK(2, block=8, query_block=4, sink_blocks=0, local_blocks=1, causal=causal)
    sb = pattern.select(q, k)
    cand = brute_candidates(pattern.geometry(q_len, kv_len))
    want = int(sb.selected.sum()) / (2 * 3 * int(cand.sum()))
    assert sb.block_density() == pytest.approx(want)
    if not causal:
        assert sb.block_density() == pytest.approx(
            sb.build(q_len, kv_len, block_q=4, block_kv=8).block_density())


def test_build_with_q_and_k_is_the_selection_layout():
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 2, 50, 8, generator=gen), torch.randn(2, 1, 90, 8, generator=gen)
    pattern = P.BlockTopK(3, block=16, query_block=8, causal=True, score="antidiagonal", stride=4)
    layout = pattern.build(50, 90, block_q=4, block_kv=8, q=q, k=k)
    sb = pattern.select(q, k)
    assert torch.equal(check_structure(layout), brute.classify_blocks(sb.dense_mask(), 4, 8))
    assert torch.equal(layout.to_dense(), sb.build(50, 90, block_q=4, block_kv=8).to_dense())
    assert sb.source == pattern


# -- 5. attention -----------------------------------------------------------------------------------


REFERENCE_CASES = [
    pytest.param(P.BlockTopK(3, block=8, causal=True), 40, 70, (4, 2), id="topk-causal-q<kv-gqa"),
    pytest.param(P.BlockTopK(2, block=16, query_block=8, score="antidiagonal", stride=4, sink_blocks=0,
                             local_blocks=2), 70, 45, (2, 2), id="topk-antidiag-q>kv"),
    pytest.param(P.BlockTopP(0.7, block=8, stride=4, causal=True), 50, 30, (2, 1), id="topp-causal-empty-rows-mqa"),
    pytest.param(P.BlockTopP(0.5, block=12, query_block=6, score="mean", causal=True), 37, 61, (2, 2),
                 id="topp-mean-qb6"),
    pytest.param(P.MoBA(block=16, topk=2, query_block=8), 40, 96, (4, 2), id="moba"),
    pytest.param(P.XAttention(block=8, stride=4, threshold=0.8), 64, 64, (2, 2), id="xattention"),
]


@pytest.mark.parametrize("pattern,q_len,kv_len,heads", REFERENCE_CASES)
def test_reference_attention_is_naive_attention_on_the_selection(pattern, q_len, kv_len, heads):
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(2, heads[0], q_len, 16, generator=gen, dtype=F64)
    k, v = (torch.randn(2, heads[1], kv_len, 16, generator=gen, dtype=F64) for _ in range(2))
    d_out = torch.randn(2, heads[0], q_len, 16, generator=gen, dtype=F64)
    d_lse = torch.randn(2, heads[0], q_len, generator=gen, dtype=F64)
    clones = [t.clone() for t in (q, k, v)]
    mask = pattern.select(q, k).dense_mask()
    assert mask.shape == (2, heads[0], q_len, kv_len)

    got = grads_of(lambda q, k, v: foveate.attention(q, k, v, pattern, backend="reference", return_lse=True),
                 q, k, v, d_out, d_lse)
    want = grads_of(lambda q, k, v: naive_attention(q, k, v, mask), q, k, v, d_out, d_lse)
    assert all(torch.equal(a, b) for a, b in zip(clones, (q, k, v))), "attention() modified its inputs"
    out, lse = got[:2]
    assert torch.equal(torch.isinf(lse), torch.isinf(want[1]))
    assert (out[torch.isinf(lse)] == 0).all()
    fin = torch.isfinite(want[1])
    torch.testing.assert_close(out, want[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lse[fin].double(), want[1][fin], rtol=1e-6, atol=1e-6)  # lse is float32
    for name, g, w in zip(("dq", "dk", "dv"), got[2:], want[2:]):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-7, msg=name)
    # The selection is not the dense pattern (otherwise the check says little).
    assert not mask.all()


def test_gradients_do_not_flow_into_the_selection():
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 2, 48, 8, generator=gen, requires_grad=True)
    k = torch.randn(1, 2, 48, 8, generator=gen, requires_grad=True)
    v = torch.randn(1, 2, 48, 8, generator=gen, requires_grad=True)
    pattern = P.BlockTopP(0.6, block=8, causal=True)
    sb = pattern.select(q, k)
    assert not sb.selected.requires_grad and sb.selected.grad_fn is None
    out = foveate.attention(q, k, v, pattern, backend="reference")
    out.sum().backward()
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name





TRITON_CASES = [
    # Causal, q_len < kv_len (offset 384): each 128-query block keeps its diagonal block and picks
    # one of the earlier blocks by content; GQA (2 query heads on 1 key head), batch 2.
    pytest.param(P.BlockTopK(2, block=128, sink_blocks=0, local_blocks=1, causal=True), 256, 640, (2, 1), F32,
                 id="topk-causal-q<kv-f32"),
    pytest.param(P.BlockTopK(2, block=128, sink_blocks=0, local_blocks=1, causal=True), 256, 640, (2, 1), F16,
                 id="topk-causal-q<kv-f16"),
    # MoBA with 128-query blocks against 256-key blocks: run on 128x128 kernel blocks.
    pytest.param(P.MoBA(block=256, topk=2, query_block=128), 256, 1280, (2, 2), F32, id="moba-qb128-f32"),
    # Top-p on antidiagonal scores, not causal, q_len > kv_len, ragged ends.
    pytest.param(P.BlockTopP(0.5, block=128, stride=8, sink_blocks=0, local_blocks=0), 300, 280, (1, 1), F16,
                 id="topp-antidiag-q>kv-f16"),
]


@needs_triton
@pytest.mark.parametrize("pattern,q_len,kv_len,heads,dtype", TRITON_CASES)
def test_triton_matches_reference_on_selections(triton_spy, pattern, q_len, kv_len, heads, dtype):
    gen = torch.Generator().manual_seed(13)

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).to(dtype).to(DEVICE)

    q = draw(2, heads[0], q_len, 32)
    k, v = draw(2, heads[1], kv_len, 32), draw(2, heads[1], kv_len, 32)
    d_out, d_lse = draw(2, heads[0], q_len, 32), draw(2, heads[0], q_len).float()
    sb = pattern.select(q, k)
    flat = sb.selected.flatten(2)
    assert len({tuple(flat[b, h].tolist()) for b in range(2) for h in range(heads[0])}) > 1 or heads[0] == 1
    mask = sb.dense_mask().cpu()
    assert mask.any(-1).any() and not mask.all()

    tri = grads_of(lambda q, k, v: foveate.attention(q, k, v, pattern, backend="triton", return_lse=True),
                 q, k, v, d_out, d_lse)
    assert triton_spy == {"fwd": 1, "bwd": 1}, f"the triton kernels did not run: {triton_spy}"
    ref = grads_of(lambda q, k, v: foveate.attention(q, k, v, pattern, backend="reference", return_lse=True),
                 q, k, v, d_out, d_lse)
    cpu = [t.cpu() for t in (q, k, v, d_out, d_lse)]
    truth = grads_of(lambda q, k, v: naive_attention(q, k, v, mask), *(t.double() for t in cpu[:3]),
                   cpu[3].double(), cpu[4].double())
    low = None if dtype == F32 else grads_of(lambda q, k, v: naive_attention(q, k, v, mask), *cpu)

    empty = ~mask.any(-1)
    assert torch.equal(torch.isinf(tri[1].cpu()), empty) and torch.equal(torch.isinf(ref[1].cpu()), empty)
    for i, name in enumerate(("out", "lse", "dq", "dk", "dv")):
        t, r, w = tri[i].cpu(), ref[i].cpu(), truth[i]
        assert t.dtype == r.dtype and t.shape == w.shape, name
        if name == "lse":
            t, r, w = t[~empty], r[~empty], w[~empty]
            low_i = None if low is None else low[i][~empty]
        else:
            low_i = None if low is None else low[i]
        assert torch.isfinite(t).all(), name
        size = w.abs().max().item() + 1e-6
        err_tri = (t.double() - w).abs().max().item()
        err_ref = (r.double() - w).abs().max().item()
        if dtype == F32:
            assert err_tri <= 1e-4 * max(1.0, size), f"{name}: triton error {err_tri:.3g}"
        else:
            err_low = (low_i.double() - w).abs().max().item()
            assert err_tri <= 2 * err_low + 1e-3 * max(1.0, size), (
                f"{name}: triton error {err_tri:.3g} > 2 x naive {dtype} error {err_low:.3g}")
        # The reference backend (the oracle of the other tests) agrees with the truth too.
        bound = 1e-4 * max(1.0, size) if dtype == F32 else 2 * err_low + 1e-3 * max(1.0, size)
        assert err_ref <= bound, f"{name}: reference error {err_ref:.3g}"


@needs_triton
def test_the_transposed_lists_wait_for_the_backward(monkeypatch):
    """A selection's layout is built on every call: its forward builds the kv lists only, the
    backward the transposed (q) lists when it reads them; inference never builds them."""
    seen = []
    real_fwd = fwd_module.attention_forward

    def attention_forward(q, k, v, layout, *args, **kw):
        seen.append(layout.has_transposed)
        seen.append(layout)
        return real_fwd(q, k, v, layout, *args, **kw)

    monkeypatch.setattr(fwd_module, "attention_forward", attention_forward)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 256, 32, generator=gen).to(DEVICE).requires_grad_() for _ in range(3))
    pattern = P.BlockTopK(1, block=128, sink_blocks=0, local_blocks=1, causal=True)
    with torch.no_grad():
        foveate.attention(q, k, v, pattern, backend="triton")
    out = foveate.attention(q, k, v, pattern, backend="triton")
    assert seen[0::2] == [False, False]
    assert not seen[1].has_transposed and not seen[3].has_transposed
    out.sum().backward()
    assert seen[3].has_transposed and not seen[1].has_transposed


# -- 6. bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,error,match", [
    (lambda: P.BlockTopK(0), ValueError, r"^k must be >= 1"),
    (lambda: P.BlockTopK(-2), ValueError, r"^k must be >= 1"),
    (lambda: P.BlockTopK(True), TypeError, r"^k must be an int"),
    (lambda: P.BlockTopK(2.0), TypeError, r"^k must be an int"),
    (lambda: P.BlockTopP(0.0), ValueError, r"^mass must be in \(0, 1\]"),
    (lambda: P.BlockTopP(1.5), ValueError, r"^mass must be in \(0, 1\]"),
    (lambda: P.BlockTopP(-0.1), ValueError, r"^mass must be in \(0, 1\]"),
    (lambda: P.BlockTopP("0.9"), TypeError, r"^mass must be a float"),
    (lambda: P.BlockTopP(True), TypeError, r"^mass must be a float"),
    (lambda: P.BlockTopK(2, score="foo"), ValueError, r"score='foo'"),
    (lambda: P.BlockTopP(0.9, score="max"), ValueError, r"score='max'"),
    (lambda: P.BlockTopK(2, score="antidiagonal", stride=3), ValueError, r"^stride=3 must divide"),
    (lambda: P.BlockTopP(0.9, block=128, query_block=100, stride=8), ValueError,
     r"^stride=8 must divide query_block=100"),
    (lambda: P.XAttention(block=128, stride=48), ValueError, r"^stride=48"),
    (lambda: P.BlockTopK(2, stride=0), ValueError, r"^stride must be >= 1"),
    (lambda: P.BlockTopK(2, sink_blocks=-1), ValueError, r"^sink_blocks must be >= 0"),
    (lambda: P.BlockTopK(2, local_blocks=-1), ValueError, r"^local_blocks must be >= 0"),
    (lambda: P.BlockTopK(2, block=0), ValueError, r"^block must be >= 1"),
    (lambda: P.BlockTopK(2, query_block=0), ValueError, r"^query_block must be >= 1"),
    (lambda: P.BlockTopK(2, causal="yes"), TypeError, r"^causal must be a bool"),
    (lambda: P.BlockTopP(0.5, causal=1), TypeError, r"^causal must be a bool"),
    (lambda: P.MoBA(topk=0), ValueError, r"^k must be >= 1"),
])
def test_bad_arguments_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_content_selected_patterns_need_the_inputs():
    pattern = P.BlockTopK(2, block=8)
    with pytest.raises(ValueError, match="select"):
        pattern.mask_mod(16, 16)
    with pytest.raises(ValueError, match="q= and k="):
        pattern.build(16, 16, block_q=8, block_kv=8)
    q = torch.randn(1, 1, 16, 8)
    with pytest.raises(ValueError, match="q= and k="):
        pattern.build(16, 16, block_q=8, block_kv=8, q=q)
    for other in (P.Causal(), P.Dense(), P.SlidingWindow(4)):
        with pytest.raises(ValueError, match="selected from the inputs"):
            pattern | other
        with pytest.raises(ValueError, match="selected from the inputs"):
            other | pattern
        with pytest.raises(ValueError, match="selected from the inputs"):
            other & P.BlockTopP(0.9)
    sb = pattern.select(q, q)
    with pytest.raises(ValueError, match="selected from the inputs"):
        sb | P.Causal()


@pytest.mark.parametrize("q_shape,k_shape,error", [
    ((2, 2, 16, 8), (1, 2, 16, 8), ValueError),  # batch
    ((1, 2, 16, 8), (1, 2, 16, 4), ValueError),  # head dim
    ((1, 3, 16, 8), (1, 2, 16, 8), ValueError),  # Hq % Hkv
    ((1, 16, 8), (1, 16, 8), ValueError),  # rank
    ((1, 1, 0, 8), (1, 1, 16, 8), ValueError),  # empty
], ids=["batch", "head-dim", "groups", "rank", "empty"])
def test_select_refuses_mismatched_inputs(q_shape, k_shape, error):
    with pytest.raises(error):
        P.BlockTopK(2, block=8).select(torch.randn(*q_shape), torch.randn(*k_shape))
    with pytest.raises(TypeError, match="^q must be"):
        P.BlockTopK(2, block=8).select(torch.ones(1, 1, 16, 8, dtype=torch.int64), torch.randn(1, 1, 16, 8))


@pytest.mark.parametrize("pattern", [P.BlockTopK(2, block=8, causal=True), P.XAttention(block=8, stride=4)],
                         ids=["topk", "xattention"])
def test_inputs_are_not_modified(pattern):
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(1, 2, 40, 8, generator=gen)
    k, v = torch.randn(1, 1, 50, 8, generator=gen), torch.randn(1, 1, 50, 8, generator=gen)
    # Non-contiguous views, too: a transposed input must not be written through.
    qt = torch.randn(1, 40, 2, 8, generator=gen).transpose(1, 2)
    saved = [t.clone() for t in (q, k, v, qt)]
    pattern.select(q, k)
    pattern.select(qt, k)
    foveate.attention(q, k, v, pattern, backend="reference")
    foveate.attention(qt, k, v, pattern, backend="reference")
    assert all(torch.equal(a, b) for a, b in zip(saved, (q, k, v, qt)))


# -- 7. value semantics --------------------------------------------------------------------------------


def test_patterns_are_values():
    assert P.BlockTopK(4) == P.BlockTopK(4) and hash(P.BlockTopK(4)) == hash(P.BlockTopK(4))
    assert P.BlockTopK(4) != P.BlockTopK(5)
    assert P.BlockTopK(4) != P.BlockTopK(4, block=64)
    assert P.BlockTopK(4, score="antidiagonal") != P.BlockTopK(4)
    assert P.BlockTopP(0.9) == P.BlockTopP(0.9) and hash(P.BlockTopP(0.9)) == hash(P.BlockTopP(0.9))
    assert P.BlockTopP(0.9) != P.BlockTopP(0.8)
    assert P.MoBA() == P.MoBA() and P.XAttention() == P.XAttention()
    assert P.XAttention() == P.BlockTopP(0.9, causal=True)
    assert len({P.BlockTopK(4), P.BlockTopK(4), P.BlockTopP(0.9), P.BlockTopP(0.9), P.MoBA()}) == 3
    pattern = P.BlockTopK(4)
    with pytest.raises(AttributeError):
        pattern.k = 5  # frozen
    # A selection stands for one set of inputs: equal only to itself.
    q = torch.randn(1, 1, 32, 8)
    a, b = pattern.select(q, q), pattern.select(q, q)
    assert a != b and len({a, b}) == 2 and len({a, a}) == 1


def test_repr_shows_the_budget_first_then_what_differs_from_the_defaults():
    assert repr(P.BlockTopK(4)) == "BlockTopK(4)"
    assert repr(P.BlockTopK(4, block=64, causal=True)) == "BlockTopK(4, block=64, causal=True)"
    assert repr(P.BlockTopP(0.9)) == "BlockTopP(0.9)"
    assert repr(P.BlockTopP(0.5, score="mean")) == "BlockTopP(0.5, score='mean')"
    assert repr(P.XAttention()) == "BlockTopP(0.9, causal=True)"
    assert repr(P.MoBA()).startswith("BlockTopK(12, block=4096, ")
    for p in (P.BlockTopK(3, sink_blocks=0), P.BlockTopP(0.7, stride=4), P.MoBA(block=256, topk=2)):
        assert eval(repr(p), {"BlockTopK": P.BlockTopK, "BlockTopP": P.BlockTopP}) == p
