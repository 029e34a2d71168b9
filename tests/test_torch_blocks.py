"""The ``torch`` backend (block-sparse PyTorch) against the brute-force masks and naive attention.

It must give what dense masked attention gives, forward (out, lse) and backward (also with a
gradient into lse), for every kind of pattern, GQA, canvas inputs, tiled orders, per-head
patterns, fixed-block patterns and content selections, while gathering only the layout's
visited blocks. Small blocks (the backend's ``block_size`` set per test) make many blocks of
small sequences.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import foveate
from foveate import backends
from foveate import patterns as P
from foveate.backends import Problem
from foveate.backends import torch_blocks

from brute import pattern_mask
from conftest import leaf, make_qkv
from naive import mask_from_mod, naive_attention
from strategies import pattern_tree

F64 = torch.float64


@pytest.fixture
def torch_backend(monkeypatch):
    """The registered ``torch`` backend, walking blocks of 8 tokens during the test."""
    backend = backends.get("torch")
    monkeypatch.setattr(backend, "block_size", 8)
    return backend


def _check_against_naive(q, k, v, pattern, mask, *, tile=None, atol=1e-10):
    """Out, lse and all gradients (a loss on out and on the finite lse) equal naive float64."""
    results = []
    for run in ("torch", "naive"):
        ql, kl, vl = leaf(q), leaf(k), leaf(v)
        if run == "torch":
            out, lse = foveate.attention(ql, kl, vl, pattern, backend="torch", tile=tile, return_lse=True)
        else:
            flat = [t.flatten(2, -2) for t in (ql, kl, vl)]
            out, lse = naive_attention(*flat, mask)
            out, lse = out.reshape(*q.shape[:-1], v.shape[-1]), lse.reshape(q.shape[:-1])
        finite = torch.isfinite(lse)
        (out.square().sum() + torch.where(finite, lse, 0.0).sum()).backward()
        results.append((out.detach(), lse.detach(), ql.grad, kl.grad, vl.grad))
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), *results):
        if name == "lse":  # (float32 by contract)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-6, msg="lse differs")
        else:
            torch.testing.assert_close(got, want, atol=atol, rtol=1e-9, msg=f"{name} differs")


@settings(max_examples=25, deadline=None)
@given(
    tree=pattern_tree(depth=2, max_side=9),
    q_len=st.integers(1, 40),
    kv_len=st.integers(1, 40),
    heads=st.sampled_from([(1, 1), (2, 1), (4, 2)]),
    seed=st.integers(0, 2**16),
)
def test_sequence_patterns_match_naive(tree, q_len, kv_len, heads, seed):
    backend = backends.get("torch")
    old, backend.block_size = backend.block_size, 8
    try:
        q, k, v = make_qkv(torch.Generator().manual_seed(seed), batch=2, heads_q=heads[0], heads_kv=heads[1],
                           q_shape=(q_len,), kv_shape=(kv_len,), head_dim=8, head_dim_v=5)
        _check_against_naive(q, k, v, tree, pattern_mask(tree, q_len, kv_len))
    finally:
        backend.block_size = old


@pytest.mark.parametrize("pattern, tile", [
    (P.Neighborhood((6, 10), (3, 5)), None),
    (P.Neighborhood((6, 10), (3, 5), dilation=(1, 2), stride=(2, 1), causal=(True, False)), None),
    (P.Neighborhood((6, 10), (3, 5)), (2, 4)),
    (P.Neighborhood((4, 6), 3, extra_kv=5), (2, 4)),
    (P.Neighborhood((3, 4, 6), (2, 3, 3)) | P.Neighborhood((3, 4, 6), (3, 1, 1)), (1, 2, 4)),
    (P.Neighborhood((6, 10), (5, 5)), "auto"),
])
def test_canvas_patterns_and_tiled_orders_match_naive(torch_backend, rng, pattern, tile):
    n = pattern.canvas
    q_len, kv_len = pattern.default_lengths()
    kv_shape = (kv_len,) if pattern.extra_kv else n
    q, k, v = make_qkv(rng, heads_q=2, heads_kv=1, q_shape=n, kv_shape=kv_shape, head_dim=8)
    if pattern.extra_kv:  # q on the canvas, k and v flat (canvas then the extra keys)
        q = q.flatten(2, -2)
    _check_against_naive(q, k, v, pattern, mask_from_mod(pattern.mask_mod(q_len, kv_len), 1, 1, q_len, kv_len),
                         tile=tile)


def test_per_head_and_per_batch_patterns_match_naive(torch_backend, rng):
    def fn(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((q_idx - kv_idx) % (h + 2 + b) == 0)

    pattern = P.Mask(fn, batch=2, heads=3)
    q, k, v = make_qkv(rng, batch=2, heads_q=3, q_shape=(37,), head_dim=8)
    _check_against_naive(q, k, v, pattern, mask_from_mod(fn, 2, 3, 37, 37))


def test_fixed_block_pattern_runs_at_its_own_block_size(rng):
    """A ``Blocks`` pattern of 4x8 blocks is walked at 4x8 (no other size could run it)."""
    grid = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    pattern = P.Blocks(grid, block_q=4, block_kv=8)
    q, k, v = make_qkv(rng, q_shape=(15,), kv_shape=(22,), head_dim=8)
    _check_against_naive(q, k, v, pattern, mask_from_mod(pattern.mask_mod(15, 22), 1, 1, 15, 22))


def test_content_selected_pattern_equals_the_reference(rng):
    pattern = P.MoBA(block=16, topk=2, query_block=16)
    q, k, v = make_qkv(rng, heads_q=2, q_shape=(70,), head_dim=16, dtype=torch.float32)
    got = foveate.attention(q, k, v, pattern, backend="torch")
    want = foveate.attention(q, k, v, pattern, backend="reference")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float32, 1e-5)])
def test_low_precision_equals_the_reference(torch_backend, rng, dtype, atol):
    q, k, v = make_qkv(rng, q_shape=(50,), head_dim=16, dtype=dtype)
    pattern = P.SlidingWindow(9) | P.Sinks(3)
    got = foveate.attention(q, k, v, pattern, backend="torch")
    want = foveate.attention(q, k, v, pattern, backend="reference")
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=0)


def test_auto_runs_it_on_cpu():
    problem = Problem(batch=1, heads_q=1, heads_kv=1, q_len=4096, kv_len=4096, head_dim=16, head_dim_v=16,
                      dtype=torch.float32, device=torch.device("cpu"), requires_grad=True, return_lse=True,
                      pattern=P.SlidingWindow(255))
    assert backends.select(problem).name == "torch"


@pytest.mark.parametrize("pattern, q_len, kv_len", [
    (P.SlidingWindow(20), 200, 200),
    (P.Causal() & P.SlidingWindow(30, 5), 90, 130),
    (P.Neighborhood((12, 12), 5), 144, 144),
    (P.Dense(), 40, 70),
])
def test_it_gathers_exactly_the_visited_blocks(torch_backend, monkeypatch, pattern, q_len, kv_len):
    """Every (query block, kv block) pair the backend gathers is one the layout visits, each
    once, and only its partial blocks reach ``mask_mod``: the work follows the layout."""
    monkeypatch.setattr(torch_blocks, "CHUNK_ELEMENTS", 8 * 8 * 8 * 3)  # several chunks
    problem = Problem(batch=1, heads_q=1, heads_kv=1, q_len=q_len, kv_len=kv_len, head_dim=4, head_dim_v=4,
                      dtype=F64, device=torch.device("cpu"), requires_grad=False, return_lse=False, pattern=pattern)
    layout = torch_backend.layout(problem, torch.device("cpu"))
    plan = torch_blocks._Plan.of(layout, problem)
    gathered, masked = [], []
    for lo, hi in plan.chunks():
        _, _, idx = plan.gather_index(lo, hi)
        listed = plan.listed[0, 0, lo:hi]
        for r in range(hi - lo):
            cols = idx[0, 0, r][listed[r]].tolist()
            gathered += [(lo + r, c) for c in cols]
            masked += [(lo + r, c) for c in idx[0, 0, r, : plan.n_partial][listed[r, : plan.n_partial]].tolist()]
    row, col, full = layout.pairs()
    assert sorted(gathered) == sorted(zip(row.tolist(), col.tolist()))
    assert sorted(masked) == sorted((r, c) for r, c, f in zip(row.tolist(), col.tolist(), full.tolist()) if not f)
    assert len(gathered) < layout.num_q_blocks * layout.num_kv_blocks or isinstance(pattern, P.Dense)


def test_composition_with_a_per_head_part_matches_naive(torch_backend, rng):
    """A per-head part composed with a shared one: the composition's layout is per head."""
    def fn(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx) % (h + 2) == 0

    pattern = P.Mask(fn, heads=3) | P.SlidingWindow(3)
    q, k, v = make_qkv(rng, batch=1, heads_q=3, q_shape=(45,), head_dim=8)
    assert pattern.build(45, 45, block_q=8, block_kv=8).batch_heads == (1, 3)
    _check_against_naive(q, k, v, pattern, mask_from_mod(pattern.mask_mod(45, 45), 1, 3, 45, 45))


def test_a_pattern_that_allows_nothing(rng):
    """No visited block at all (found by hypothesis): output 0, lse -inf, zero gradients."""
    pattern = P.Dense() & P.SlidingWindow(0, 0) & P.Sinks(1)  # query 0 sits at key 1; only key 0 is a sink
    q, k, v = make_qkv(rng, batch=1, heads_q=1, q_shape=(1,), kv_shape=(2,), head_dim=8, requires_grad=True)
    assert pattern.build(1, 2, block_q=8, block_kv=8).num_visited() == 0
    out, lse = foveate.attention(q, k, v, pattern, backend="torch", return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    out.sum().backward()
    assert all(torch.equal(t.grad, torch.zeros_like(t)) for t in (q, k, v))
