"""The fused Triton selection of the ``"mean"`` score (``foveate.selection.mean_topk_triton``)
against the PyTorch path (``select_topk(mean_logits(...))``, itself checked against brute force
in ``test_selection.py``).

Block means must be close (float32 sums in another order). Selections must be equal on inputs
whose scores are well apart (planted: each key block's mean lies along a direction at its own
level, so every cut has a wide gap); on random inputs a near-tie at the cut may fall the other
way, so there each row keeps as many blocks as the torch path, the forced ones, none outside the
candidates, and a block chosen by one path only must score (torch's float32 score) within
``1e-4`` (relative) of the row's k-th score. Without a GPU the kernels run in Triton's
interpreter (``conftest.py``): small shapes, float32 and float16. Every test that means to run
the kernels checks through a spy that they ran.
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

import foveate
from foveate import patterns as P
from foveate.selection import SelectionGeometry, mean_logits, mean_topk
from foveate.selection import mean_topk_triton as kernels
from foveate.selection.scores import block_means
from foveate.tiling import TiledOrder
from kernel_spy import DEVICE, KernelSpy, needs_triton

F64, F32, F16 = torch.float64, torch.float32, torch.float16

pytestmark = needs_triton
#: A block chosen by one path only must score within this (relative) of the row's k-th score.
NEAR_TIE = 1e-4


@pytest.fixture
def spy(monkeypatch):
    """``spy["means"]``, ``spy["select"]``: the spies on the two kernels."""
    spies = {"means": KernelSpy(kernels._block_means_kernel), "select": KernelSpy(kernels._select_kernel)}
    monkeypatch.setattr(kernels, "_block_means_kernel", spies["means"])
    monkeypatch.setattr(kernels, "_select_kernel", spies["select"])
    return spies


#: The launch settings as shipped (the tests below change them).
SHIPPED_CONFIG = dict(kernels.CONFIG)


@pytest.fixture(autouse=True)
def one_program_per_block(monkeypatch):
    """The block-means kernel unsplit (one program per block, the whole head dim): the
    interpreter runs programs one by one, and the split is tested on its own below."""
    monkeypatch.setitem(kernels.CONFIG, "mean_programs", 1)


def _rand(gen, *shape, dtype=F32, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=F64) * scale).to(dtype).to(DEVICE)


def planted(gen, batch, heads_q, heads_kv, q_len, kv_len, dim, block, dtype=F32):
    """``q``, ``k`` whose block scores are far apart: key block ``j`` of each (batch, key head)
    is shifted by ``level[j] * u`` (``u`` a direction of norm 2, the levels a random permutation
    of ``0 .. nkv-1``) and the queries by ``+u`` or ``-u`` (alternating query heads), so that a
    row's scores step by about ``4 * scale`` from block to block in the order of the levels
    (reversed for the ``-u`` heads), far above the noise of the means."""
    nkv = -(-kv_len // block)
    q = torch.randn(batch, heads_q, q_len, dim, generator=gen, dtype=F64) * 0.5
    k = torch.randn(batch, heads_kv, kv_len, dim, generator=gen, dtype=F64) * 0.5
    u = torch.randn(batch, heads_kv, 1, dim, generator=gen, dtype=F64)
    u = 2 * u / u.norm(dim=-1, keepdim=True)
    levels = torch.stack([torch.randperm(nkv, generator=gen) for _ in range(batch * heads_kv)])
    levels = levels.view(batch, heads_kv, nkv).to(F64).repeat_interleave(block, dim=-1)[..., :kv_len, None]
    k = k + levels * u
    sign = torch.tensor([1.0, -1.0], dtype=F64).repeat(heads_q)[:heads_q].view(1, heads_q, 1, 1)
    q = q + sign * u.repeat_interleave(heads_q // heads_kv, dim=1)
    return q.to(dtype).to(DEVICE), k.to(dtype).to(DEVICE)


def kth_scores(scores, geometry, k_blocks):
    """``(B, H, nq)``: the k-th largest key of each row as ``select_topk`` ranks them (forced
    blocks ``+inf``, non-candidates ``-inf``)."""
    cand, forced = geometry.candidates(scores.device), geometry.forced(scores.device)
    key = scores.masked_fill(~cand, float("-inf")).masked_fill(forced, float("inf"))
    return key.topk(min(k_blocks, key.shape[-1]), dim=-1).values[..., -1]


def check_selection(got, q, k, geometry, scale, k_blocks) -> int:
    """Assert ``got`` (the kernel's selection) is the torch path's up to near-ties at the cut
    (see the module docstring); returns the number of blocks on which they differ."""
    want = mean_topk(q, k, geometry, scale, k_blocks, method="torch")
    assert got.dtype == torch.bool and got.shape == want.shape
    got, want = got.cpu(), want.cpu()
    cand, forced = geometry.candidates("cpu"), geometry.forced("cpu")
    assert torch.equal(got.sum(-1), want.sum(-1)), "rows keep different numbers of blocks"
    assert not (got & ~cand).any(), "a non-candidate was selected"
    assert torch.equal(got & forced, forced.expand_as(got)), "a forced block was left out"
    differ = got ^ want
    if differ.any():
        scores = mean_logits(q, k, geometry, scale).cpu()
        kth = kth_scores(scores, geometry, k_blocks)[..., None].expand_as(scores)
        floor = 1e-6 * scores.abs().amax(-1, keepdim=True).expand_as(scores)  # for a k-th score near 0
        gap = (scores - kth).abs()[differ]
        limit = torch.maximum(NEAR_TIE * kth.abs(), floor)[differ]
        assert (gap <= limit).all(), (
            f"blocks chosen by one path only score far from the cut: gaps {gap[gap > limit].tolist()}, "
            f"k-th scores {kth[differ][gap > limit].tolist()}")
    return int(differ.sum())


def contested_rows(geometry, k_blocks) -> torch.Tensor:
    """``(nq,)`` bool: the rows where content decides (more free candidates than free places)."""
    cand, forced = geometry.candidates("cpu"), geometry.forced("cpu")
    free = (cand & ~forced).sum(-1)
    places = (k_blocks - forced.sum(-1)).clamp_min(0)
    return (places > 0) & (free > places)


# -- block means -----------------------------------------------------------------------------------


#: ``True``: the shipped settings, which split the head dim of these small launches across
#: programs (16 dims each); ``False``: one program per block.
SPLIT = pytest.mark.parametrize("split", [True, False], ids=["split-d", "whole-d"])


def _set_split(monkeypatch, split):
    monkeypatch.setitem(kernels.CONFIG, "mean_programs", SHIPPED_CONFIG["mean_programs"] if split else 1)


def _d_programs(spy) -> int:
    """Programs per block along the head dim in the last launch of the block-means kernel."""
    return spy["means"].grids[-1][1]


@SPLIT
@pytest.mark.parametrize("dtype", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("n,block,dim", [(64, 16, 16), (100, 32, 64), (77, 8, 80), (129, 128, 16), (5, 16, 64)],
                         ids=["aligned", "short-tail", "d80", "one-block-and-a-token", "shorter-than-a-block"])
def test_block_means_match_torch(n, block, dim, dtype, split, rng, spy, monkeypatch):
    _set_split(monkeypatch, split)
    x = _rand(rng, 2, 3, n, dim, dtype=dtype)
    got = kernels.block_means_triton(x, block)
    want = block_means(x, block)
    assert got.dtype == F32 and got.shape == want.shape == (2, 3, -(-n // block), dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert len(spy["means"].launches) == 1 and _d_programs(spy) == (-(-dim // 16) if split else 1)


@SPLIT
def test_block_means_read_strided_inputs(split, rng, spy, monkeypatch):
    """``(B, N, H, D)`` memory seen as ``(B, H, N, D)``, and a head dim taken every other
    element: read in place."""
    _set_split(monkeypatch, split)
    x = _rand(rng, 2, 50, 3, 2 * 24).transpose(1, 2)[..., ::2]
    assert not x.is_contiguous()
    torch.testing.assert_close(kernels.block_means_triton(x, 16), block_means(x, 16), rtol=1e-5, atol=1e-6)
    assert len(spy["means"].launches) == 1 and _d_programs(spy) == (2 if split else 1)


@SPLIT
def test_block_means_pair_in_one_launch(split, rng, spy, monkeypatch):
    """Queries and keys of their own heads, lengths, blocks and counts, one launch: each the
    torch means (strided keys, a tail block, counts with an empty block)."""
    _set_split(monkeypatch, split)
    q = _rand(rng, 2, 4, 100, 48)
    k = _rand(rng, 2, 1, 96, 48 * 2)[..., ::2]
    counts = torch.tensor([16.0, 0.0, 5.0, 16.0, 16.0, 1.0])
    qm, km = kernels.block_means_pair(q, 32, None, k, 16, counts)
    assert len(spy["means"].launches) == 1
    torch.testing.assert_close(qm, block_means(q, 32), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(km, block_means(k, 16, counts.to(DEVICE)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="head dim"):
        kernels.block_means_pair(q, 32, None, k[..., :16], 16)


def test_block_means_and_selection_on_a_padded_canvas(rng, spy, monkeypatch):
    """A tiled canvas with padding (zeros, left out of the counts): the means average the
    tokens alone, blocks of padding alone get 0 and are never selected."""
    order = TiledOrder((3, 5, 7), (2, 2, 4))  # pads 3 -> 4 frames, 5 -> 6 rows, 7 -> 8 columns
    n = order.num_tokens
    q = order.tile_tokens(_rand(rng, 2, 2, order.num_canvas, 32))
    k = order.tile_tokens(_rand(rng, 2, 1, order.num_canvas, 32))
    g = SelectionGeometry(n, n, 8, 16, False, 1, 1, (order.canvas, order.tile))
    assert g.padded and (g.q_counts("cpu") == 0).any()  # query blocks of padding alone
    for split in (True, False):
        _set_split(monkeypatch, split)
        for x, block, counts in ((q, g.query_block, g.q_counts(DEVICE)), (k, g.block, g.kv_counts(DEVICE))):
            got = kernels.block_means_triton(x, block, counts)
            torch.testing.assert_close(got, block_means(x, block, counts), rtol=1e-5, atol=1e-6)
            assert (got[:, :, counts.cpu() == 0] == 0).all() and _d_programs(spy) == (1 + split)
    got = mean_topk(q, k, g, 0.3, 3, method="triton")
    check_selection(got, q, k, g, 0.3, 3)
    assert contested_rows(g, 3).any() and not got.cpu()[:, :, g.q_counts("cpu") == 0].any()
    assert len(spy["means"].launches) == 5 and len(spy["select"].launches) == 1  # q and k in one


# -- selection ---------------------------------------------------------------------------------------

CASES = [  # q_len, kv_len, query_block, block, causal, sink, local, heads (q, kv), dim, k
    pytest.param(256, 256, 32, 32, True, 1, 1, (4, 2), 64, 3, id="causal-gqa-sink-local"),
    pytest.param(300, 640, 64, 128, True, 0, 1, (4, 1), 16, 2, id="moba-mqa-qb64-b128"),
    pytest.param(330, 200, 16, 16, False, 0, 0, (2, 2), 80, 4, id="dense-nothing-forced-d80-2-tiles"),
    pytest.param(300, 200, 32, 16, True, 2, 2, (4, 2), 16, 5, id="causal-q>kv-early-rows-empty"),
    pytest.param(200, 200, 32, 32, False, 1, 2, (2, 1), 64, 2, id="forced-beyond-k"),
    pytest.param(96, 100, 32, 8, True, 0, 0, (1, 1), 64, 50, id="k-beyond-candidates"),
]


@pytest.mark.parametrize("dtype", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("q_len,kv_len,query_block,block,causal,sink,local,heads,dim,k_blocks", CASES)
def test_planted_selection_equals_torch(q_len, kv_len, query_block, block, causal, sink, local, heads, dim,
                                        k_blocks, dtype, rng, spy):
    """Well-separated scores: the same blocks exactly; the rows differ between heads."""
    q, k = planted(rng, 2, *heads, q_len, kv_len, dim, block, dtype)
    g = SelectionGeometry(q_len, kv_len, query_block, block, causal, sink, local)
    scale = dim ** -0.5
    got = mean_topk(q, k, g, scale, k_blocks, method="triton")
    assert len(spy["select"].launches) == 1 and len(spy["means"].launches) == 1  # q and k in one
    want = mean_topk(q, k, g, scale, k_blocks, method="torch")
    assert torch.equal(got.cpu(), want.cpu())
    assert check_selection(got, q, k, g, scale, k_blocks) == 0
    contested = contested_rows(g, k_blocks)
    if contested.any():  # content decides some rows, and differently per head (not one row copied)
        rows = got.cpu()[:, :, contested].flatten(2)
        assert len({tuple(rows[b, h].tolist()) for b in range(2) for h in range(heads[0])}) > 1
    else:  # the geometry alone decides: every candidate, or the forced blocks alone
        cand, forced = g.candidates("cpu"), g.forced("cpu")
        all_fit = (k_blocks - forced.sum(-1)).clamp_min(0) >= (cand & ~forced).sum(-1)
        assert torch.equal(got.cpu(), torch.where(all_fit[:, None], cand, forced).expand_as(got.cpu()))


@pytest.mark.parametrize("dtype", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("q_len,kv_len,query_block,block,causal,sink,local,heads,dim,k_blocks", CASES)
def test_random_selection_equals_torch_up_to_near_ties(q_len, kv_len, query_block, block, causal, sink, local,
                                                       heads, dim, k_blocks, dtype, rng, spy):
    q, k = _rand(rng, 2, heads[0], q_len, dim, dtype=dtype), _rand(rng, 2, heads[1], kv_len, dim, dtype=dtype)
    g = SelectionGeometry(q_len, kv_len, query_block, block, causal, sink, local)
    got = mean_topk(q, k, g, 0.3, k_blocks, method="triton")
    check_selection(got, q, k, g, 0.3, k_blocks)
    assert len(spy["select"].launches) == 1


def test_random_selection_without_near_ties_is_exact(rng, spy):
    """Random inputs checked to have no near-tie at any cut: the same blocks exactly."""
    q, k = _rand(rng, 2, 4, 256, 64), _rand(rng, 2, 2, 384, 64)
    g = SelectionGeometry(256, 384, 32, 32, True, 1, 1)
    scores = mean_logits(q, k, g, 0.125).cpu()
    for k_blocks in (3, 6):
        # Per contested row, the relative gap between the last free block kept and the next.
        cand, forced = g.candidates("cpu"), g.forced("cpu")
        free = scores.masked_fill(~(cand & ~forced), float("-inf")).sort(-1, descending=True).values
        places = (k_blocks - forced.sum(-1)).clamp_min(0)
        contested = contested_rows(g, k_blocks)
        assert contested.any()
        rows = free[:, :, contested]
        idx = places[contested][None, None, :, None].expand(*rows.shape[:3], 1)
        last, nxt = rows.gather(-1, idx - 1), rows.gather(-1, idx)
        assert ((last - nxt) / last.abs() > 1e-3).all(), "the inputs have a near-tie: pick another seed"
        got = mean_topk(q, k, g, 0.125, k_blocks, method="triton")
        assert torch.equal(got.cpu(), mean_topk(q, k, g, 0.125, k_blocks, method="torch").cpu())
    assert len(spy["select"].launches) == 2


@pytest.mark.parametrize("resident", [True, False], ids=["row-in-registers", "row-in-chunks-of-16"])
@pytest.mark.parametrize("tie", [0.0, 0.5, -0.5], ids=["at-zero", "positive", "negative"])
def test_exact_ties_keep_the_first_blocks(tie, resident, rng, spy, monkeypatch):
    """Five identical key blocks score exactly alike: where the cut falls among them, the kernel
    keeps the first ones in block order (the torch path keeps some of them: the same number).
    Tied at 0, at a positive and at a negative score (keys of either sign in the search); the
    row searched in registers, or a chunk at a time with the ties spread over three chunks.
    Small integer inputs: every mean and score is exact in float32, in any summation order."""
    if not resident:
        monkeypatch.setitem(kernels.CONFIG, "max_chunk", 16)
    tied, best = [5, 12, 20, 27, 33], [38, 39]

    def ints(*shape):
        return torch.randint(1, 4, shape, generator=rng).to(F32).to(DEVICE)

    q = ints(1, 1, 64, 16)  # positive queries
    k = -2 * ints(1, 1, 40 * 8, 16)  # blocks well below the tie ...
    blocks = k.view(1, 1, 40, 8, 16)
    blocks[:, :, best] *= -1  # ... but the best two, above it
    blocks[:, :, tied] = tie * ints(1, 1, 1, 8, 16)  # one block five times
    g = SelectionGeometry(64, 320, 16, 8, False, 0, 0)
    got = mean_topk(q, k, g, 0.25, 5, method="triton")
    assert len(spy["select"].launches) == 1 and spy["select"].settings[0]["RESIDENT"] == resident
    check_selection(got, q, k, g, 0.25, 5)
    scores = mean_logits(q, k, g, 0.25).cpu()[0, 0]
    assert (scores[:, tied] == scores[:, tied[:1]]).all() and (scores[:, best].amin(-1) > scores[:, tied[0]]).all()
    others = [j for j in range(40) if j not in tied + best]
    assert (scores[:, others].amax(-1) < scores[:, tied[0]]).all()
    expected = torch.zeros(40, dtype=torch.bool)
    expected[best + tied[:3]] = True  # the two best, then the first three of the five tied
    assert torch.equal(got.cpu(), expected.expand(1, 1, 4, 40))


@pytest.mark.parametrize("config,kv_len,block,resident", [
    ({"max_block_n": 16, "max_chunk": 16}, 1100, 16, False),  # 69 key blocks: 5 chunks, the last one short
    ({}, 800, 2, True),  # 400 key blocks, scored 128 at a time, searched as one row in registers
], ids=["small-chunks", "400-key-blocks"])
def test_long_rows_in_chunks(config, kv_len, block, resident, rng, spy, monkeypatch):
    """Rows longer than a step of the kernel: scored a chunk at a time, and searched in
    registers or (past ``max_chunk``) counted a chunk at a time from the scratch."""
    for name, value in config.items():
        monkeypatch.setitem(kernels.CONFIG, name, value)
    q, k = planted(rng, 1, 2, 1, 40, kv_len, 16, block)
    g = SelectionGeometry(40, kv_len, 16, block, False, 1, 1)
    got = mean_topk(q, k, g, 0.25, 7, method="triton")
    assert len(spy["select"].launches) == 1 and spy["select"].settings[0]["RESIDENT"] == resident
    assert g.num_kv_blocks > spy["select"].settings[0]["BLOCK_N"]
    assert torch.equal(got.cpu(), mean_topk(q, k, g, 0.25, 7, method="torch").cpu())
    qr, kr = _rand(rng, 1, 2, 40, 16), _rand(rng, 1, 1, kv_len, 16)
    check_selection(mean_topk(qr, kr, g, 0.25, 7, method="triton"), qr, kr, g, 0.25, 7)
    assert len(spy["select"].launches) == 2


def _list_rows(counts, indices) -> list[list[int]]:
    counts = counts.flatten().tolist()
    indices = indices.reshape(len(counts), -1).tolist()
    return [row[:c] for row, c in zip(indices, counts)]


@pytest.mark.parametrize("q_len,kv_len,query_block,block,causal,chunks", [
    (96, 160, 16, 16, True, False),    # q_len < kv_len: causal offset, partial diagonal blocks
    (100, 90, 16, 16, True, False),    # q_len > kv_len, ragged ends: early query blocks see nothing
    (64, 200, 16, 8, False, False),    # every selected block full
    (40, 1100, 16, 16, True, True),    # 69 key blocks counted and listed a chunk at a time
], ids=["causal-q<kv", "causal-q>kv-ragged", "non-causal", "causal-chunks"])
def test_the_kernel_writes_the_selections_lists(q_len, kv_len, query_block, block, causal, chunks, rng, spy,
                                                monkeypatch):
    """The selection kernel's lists of its selection (``mean_topk_lists``) are those the layout
    builder makes from the selection and its blocks' causal states, and a pattern's layout at
    its own block sizes takes them (no list launch of its own)."""
    from foveate import layout_triton
    from foveate.layout import BlockLayout
    from foveate.patterns.selected import _causal_block_states

    if chunks:
        monkeypatch.setitem(kernels.CONFIG, "max_block_n", 16)
        monkeypatch.setitem(kernels.CONFIG, "max_chunk", 16)
    q, k = planted(rng, 2, 2, 1, q_len, kv_len, 16, block)
    g = SelectionGeometry(q_len, kv_len, query_block, block, causal, 1, 1)
    states = _causal_block_states(q_len, kv_len, query_block, block, str(DEVICE)) if causal else None
    selected, lists = kernels.mean_topk_lists(q, k, g, 0.25, 3, states)
    assert spy["select"].settings[-1]["RESIDENT"] is not chunks
    assert torch.equal(selected, kernels.mean_topk_select(q, k, g, 0.25, 3))
    grid = (torch.where(selected.cpu(), states.cpu(), 0) if causal else selected.cpu().to(torch.int8) * 2)
    expected = BlockLayout.from_block_grid(grid.to(torch.int8), block_q=query_block, block_kv=block, q_len=q_len,
                                           kv_len=kv_len, method="torch")
    assert (grid == 1).any() == causal and (grid == 2).any()
    for got, want in ((lists[:2], (expected.kv_num_blocks, expected.kv_indices)),
                      (lists[2:], (expected.full_kv_num_blocks, expected.full_kv_indices))):
        assert _list_rows(*[t.cpu() for t in got]) == _list_rows(*want)

    # Through the pattern: its layout's kv lists are the kernel's, the transposed ones built later.
    list_spy = KernelSpy(layout_triton._grid_to_lists_kernel)
    monkeypatch.setattr(layout_triton, "_grid_to_lists_kernel", list_spy)
    pattern = P.BlockTopK(3, block=block, query_block=query_block, causal=causal)
    with foveate.policy.override(mean_topk_method="triton"):
        selection = pattern.select(q, k, scale=0.25)
    layout = selection.build(q_len, kv_len, block_q=query_block, block_kv=block, device=DEVICE)
    assert layout.kv_indices is selection._kv_lists[1] and not layout.has_transposed
    assert torch.equal(layout.to_dense().cpu(), selection.block_grid(query_block, block).cpu())
    assert list_spy.launches == []
    transposed = [(layout.q_num_blocks, layout.q_indices), (layout.full_q_num_blocks, layout.full_q_indices)]
    assert list_spy.grids == ([(list_spy.grids[0][0], 2 * 2, 1)] if q.is_cuda else [])  # columns (CPU: torch)
    for got, want in zip(transposed, [(expected.q_num_blocks, expected.q_indices),
                                      (expected.full_q_num_blocks, expected.full_q_indices)]):
        assert _list_rows(*[t.cpu() for t in got]) == _list_rows(*want)
    half = selection.build(q_len, kv_len, block_q=query_block // 2, block_kv=block, device=DEVICE)
    assert torch.equal(half.to_dense().cpu(), selection.block_grid(query_block // 2, block).cpu())


def test_kernel_lists_refuse_bad_states(rng):
    q, k = planted(rng, 1, 1, 1, 64, 64, 16, 16)
    g = SelectionGeometry(64, 64, 16, 16, True, 1, 1)
    with pytest.raises(ValueError, match="states"):
        kernels.mean_topk_lists(q, k, g, 0.25, 2, torch.zeros(4, 5, dtype=torch.int8, device=DEVICE))


def test_strided_inputs(rng, spy):
    """``q`` and ``k`` in ``(B, N, H, D)`` memory: read in place, same selection."""
    q, k = planted(rng, 2, 2, 2, 96, 160, 32, 16)
    qs, ks = q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2)
    assert not qs.is_contiguous() and torch.equal(qs, q)
    g = SelectionGeometry(96, 160, 32, 16, True, 1, 1)
    got = mean_topk(qs, ks, g, 0.2, 3, method="triton")
    assert torch.equal(got.cpu(), mean_topk(q, k, g, 0.2, 3, method="torch").cpu())
    assert len(spy["select"].launches) == 1


# -- the patterns ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", [
    P.BlockTopK(2, block=32, sink_blocks=1, local_blocks=1, causal=True),
    P.MoBA(block=64, topk=2, query_block=32),
], ids=["blocktopk-causal", "moba-qb32-b64"])
def test_attention_equals_the_torch_selection(pattern, rng, spy, monkeypatch):
    """``foveate.attention`` with the selection forced to the kernels gives the output of the
    torch selection (``foveate.policy.mean_topk_method``)."""
    q, k = planted(rng, 2, 4, 2, 192, 256, 32, pattern.block)
    v = _rand(rng, 2, 2, 256, 32)
    with foveate.policy.override(mean_topk_method="triton"):
        by_kernel = foveate.attention(q, k, v, pattern, backend="reference")
        chosen = pattern.select(q, k).selected
    assert len(spy["select"].launches) == 2
    with foveate.policy.override(mean_topk_method="torch"):
        by_torch = foveate.attention(q, k, v, pattern, backend="reference")
        assert torch.equal(chosen.cpu(), pattern.select(q, k).selected.cpu())
    assert len(spy["select"].launches) == 2  # the torch path ran no kernel
    assert torch.equal(by_kernel, by_torch)
    dense = foveate.attention(q, k, v, P.Causal(), backend="reference")
    assert not torch.allclose(by_kernel, dense)  # the selection is sparse: it decides the output


def test_auto_dispatch(rng, spy):
    """``method="auto"`` (and so ``BlockTopK``'s default) runs the kernels on CUDA only."""
    q, k = planted(rng, 1, 2, 1, 64, 64, 16, 16)
    g = SelectionGeometry(64, 64, 16, 16, False, 0, 0)
    auto = mean_topk(q, k, g, 0.25, 2)
    P.BlockTopK(2, block=16, sink_blocks=0, local_blocks=0).select(q, k)
    assert len(spy["select"].launches) == (2 if q.is_cuda else 0)
    assert torch.equal(auto, mean_topk(q, k, g, 0.25, 2, method="torch"))


def test_bad_input_is_refused(rng):
    g = SelectionGeometry(32, 32, 16, 16, False, 0, 0)
    with pytest.raises(ValueError, match="method"):
        mean_topk(_rand(rng, 1, 1, 32, 16), _rand(rng, 1, 1, 32, 16), g, 0.25, 2, method="cuda")
    big = _rand(rng, 1, 1, 32, 512)
    with pytest.raises(ValueError, match="q has head dim 512"):
        mean_topk(big, big, g, 0.25, 2, method="triton")
    with pytest.raises(ValueError, match="x has head dim 512"):
        kernels.block_means_triton(big, 16)
    assert not kernels.supported(big, g) and kernels.supported(big[..., :256], g) == (
        big.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")
    q = _rand(rng, 1, 2, 32, 16)
    with pytest.raises(ValueError, match="geometry has q_len=32, kv_len=48"):
        mean_topk(q, q, SelectionGeometry(32, 48, 16, 16, False, 0, 0), 0.25, 2, method="triton")
    with pytest.raises(ValueError, match="k of shape"):
        mean_topk(q, _rand(rng, 1, 3, 32, 16), g, 0.25, 2, method="triton")
    with pytest.raises(ValueError, match="k_blocks"):
        mean_topk(q, q, g, 0.25, 0, method="triton")
    with pytest.raises(ValueError, match="counts"):
        kernels.block_means_triton(q, 16, torch.ones(3, device=q.device))


# -- top-k of given scores -------------------------------------------------------------------------

@settings(deadline=None, max_examples=25)
@given(q_len=st.integers(1, 300), kv_len=st.integers(1, 300), blocks=st.sampled_from([(16, 16), (32, 16), (16, 64)]),
       causal=st.booleans(), sink=st.integers(0, 2), local=st.integers(0, 2), k_blocks=st.integers(1, 12),
       ties=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_topk_of_given_scores_equals_torch(q_len, kv_len, blocks, causal, sink, local, k_blocks, ties, seed):
    """``select_topk(method="triton")`` (the selection kernel on given scores) keeps the torch
    path's blocks exactly on distinct scores; on scores with ties, as many per row, all forced,
    none outside the candidates, and of the tied ones at the cut the first in order."""
    from foveate.selection.select import select_topk

    g = SelectionGeometry(q_len, kv_len, blocks[0], blocks[1], causal, sink, local)
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 3, g.num_q_blocks, g.num_kv_blocks)
    if ties:  # few distinct values: ties at the cut
        scores = torch.randint(0, 3, shape, generator=gen).float()
    else:
        scores = torch.randperm(math.prod(shape), generator=gen).float().view(shape)
    cand, forced = g.candidates("cpu"), g.forced("cpu")
    got = select_topk(scores.to(DEVICE), k_blocks, cand.to(DEVICE), forced.to(DEVICE), method="triton").cpu()
    want = select_topk(scores, k_blocks, cand, forced, method="torch")
    if not ties:
        assert torch.equal(got, want)
        return
    assert torch.equal(got.sum(-1), want.sum(-1)) and not (got & ~cand).any()
    assert torch.equal(got & forced, forced.expand_as(got))
    free = cand & ~forced
    for row_got, row_scores, row_free in zip(got.flatten(0, 2), scores.flatten(0, 2), free.repeat(6, 1)):
        taken = row_scores[row_got & row_free]
        if taken.numel() == 0:
            continue
        cut = taken.min()
        left = row_free & ~row_got
        assert not (row_scores[left] > cut).any(), "a better block was left out"
        tied = (row_scores == cut) & row_free
        order = tied.nonzero().flatten()
        chosen_tied = (row_got & tied).nonzero().flatten()
        assert torch.equal(chosen_tied, order[:chosen_tied.numel()]), "not the first tied blocks"


def test_topk_of_given_scores_refuses_bad_input():
    from foveate.selection.mean_topk_triton import topk_select

    scores = torch.rand(1, 1, 4, 5, device=DEVICE)
    cand = torch.ones(4, 5, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="candidates and forced"):
        topk_select(scores, 2, cand[:3], cand)
    with pytest.raises(ValueError, match="k_blocks"):
        topk_select(scores, 0, cand, cand)
    with pytest.raises(ValueError, match="k_blocks"):
        topk_select(scores, True, cand, cand)
