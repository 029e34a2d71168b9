"""Packed documents and segment rules (``P.Documents``, ``P.Segments``): masks against brute-force
definitions written with plain loops, exact block layouts (per batch element too), the kernels'
segment-id predicate on every block pair, and attention on the fused kernels and the torch
backend against naive float64 attention, forward and backward. Without a GPU the kernels run in
Triton's interpreter (small shapes)."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import foveate
from foveate import patterns as P
from foveate.backends.triton.masks import mask_spec
from foveate.patterns.documents import Documents
from foveate.patterns.segments import Segments

import brute
from kernel_spy import needs_triton
from layout_checks import assert_grid, check_layout
from mask_probe import probe
from naive import mask_from_mod, naive_attention

F64 = torch.float64

# -- brute force ----------------------------------------------------------------------------------------


def documents_mask(lengths, inner) -> torch.Tensor:
    """``inner(i, j)`` on each document's own positions, nothing across documents."""
    n = sum(lengths)
    mask = torch.zeros(n, n, dtype=torch.bool)
    start = 0
    for length in lengths:
        for i in range(length):
            for j in range(length):
                mask[start + i, start + j] = inner(i, j)
        start += length
    return mask


def segments_mask(ids, rules) -> torch.Tensor:
    n = len(ids)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            rule = rules[ids[i]][ids[j]]
            mask[i, j] = rule == "full" or (rule == "causal" and j <= i)
    return mask


INNERS = {
    "causal": (P.Causal(), lambda i, j: j <= i),
    "dense": (P.Dense(), lambda i, j: True),
    "window": (P.SlidingWindow(3), lambda i, j: i - 3 <= j <= i),
    "centred": (P.SlidingWindow(2, 1), lambda i, j: i - 2 <= j <= i + 1),
    "sinks": (P.Sinks(2), lambda i, j: j < 2),  # not a band: a bitmask on the kernels
    "sinks-window": ((P.Sinks(2) | P.SlidingWindow(2)) & P.Causal(), lambda i, j: j <= i and (j < 2 or j >= i - 2)),
}

DOCS = {
    "mixed": [5, 1, 30, 7, 1, 56],
    "tiny": [1] * 37,
    "one": [83],
    "edges": [16, 16, 1, 15, 32],
}


def block_rank_rules(n_seg: int):
    """BlockRank: ``k <= q`` and (key in segment 0, or the query's segment, or the query in the last)."""
    last = n_seg - 1
    return [["causal" if (b == 0 or b == a or a == last) else "none" for b in range(n_seg)] for a in range(n_seg)]


def prefix_documents_rules(n_docs: int):
    """A prefix LM with documents: the instruction (segment 0) sees itself; each document sees the
    instruction and itself, causally."""
    n = n_docs + 1
    return [["full" if (a == 0 and b == 0) or (a > 0 and b == 0) else "causal" if a == b else "none"
             for b in range(n)] for a in range(n)]


def _mask_of(pattern, n):
    return brute.user_mask(pattern.mask_mod(n, n), n, n)


# -- masks and layouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("inner", INNERS)
@pytest.mark.parametrize("docs", DOCS)
def test_documents_mask_and_layout(inner, docs):
    pattern, definition = INNERS[inner]
    lengths = DOCS[docs]
    p = Documents(lengths, inner=pattern)
    n = sum(lengths)
    want = documents_mask(lengths, definition)
    assert torch.equal(_mask_of(p, n), want)
    for block_q, block_kv in ((16, 16), (32, 16), (16, 64), (128, 128)):
        check_layout(p.build(n, n, block_q=block_q, block_kv=block_kv), want, block_q, block_kv, f"{p} {block_q}x{block_kv}")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=12), st.sampled_from(sorted(INNERS)),
       st.sampled_from([8, 16, 32]), st.sampled_from([8, 16, 32]))
def test_documents_random_lengths(lengths, inner, block_q, block_kv):
    pattern, definition = INNERS[inner]
    p = Documents(lengths, inner=pattern)
    n = sum(lengths)
    check_layout(p.build(n, n, block_q=block_q, block_kv=block_kv), documents_mask(lengths, definition), block_q,
                 block_kv, p)


def test_documents_per_batch_layout():
    rows = [[5, 40, 19], [64], [1] * 64]
    p = Documents(rows)
    layout = p.build(64, 64, block_q=16, block_kv=16)
    assert layout.batch_heads == (3, 1)
    grid = layout.to_dense()
    for b, lengths in enumerate(rows):
        want = documents_mask(lengths, lambda i, j: j <= i)
        assert_grid(grid[b, 0], brute.block_grid(want, 16, 16), f"batch {b}")
    assert layout.allowed_pairs() == sum(int(documents_mask(r, lambda i, j: j <= i).sum()) for r in rows)
    mask = mask_from_mod(p.mask_mod(64, 64), 3, 1, 64, 64)
    for b, lengths in enumerate(rows):
        assert torch.equal(mask[b, 0], documents_mask(lengths, lambda i, j: j <= i))


def test_documents_from_ids_and_inputs():
    ids = torch.tensor([3] * 4 + [0] * 2 + [7] * 5)
    assert Documents.from_ids(ids) == Documents([4, 2, 5])
    assert Documents.from_ids([[1, 1, 2], [0, 0, 0]], inner=P.Dense()) == Documents([[2, 1], [3]], inner=P.Dense())
    assert Documents(torch.tensor([2, 3])) == Documents((2, 3)) == Documents([2, 3])
    assert hash(Documents([2, 3])) == hash(Documents(torch.tensor([2, 3])))
    assert Documents([2, 3]).default_lengths() == (5, 5)
    import numpy as np

    assert Documents(np.array([2, 3])) == Documents([2, 3])


@pytest.mark.parametrize("args, error, words", [
    (([],), ValueError, "lengths"),
    (([3, 0],), ValueError, "lengths"),
    (([3, 1.5],), TypeError, "lengths"),
    (([[3, 2], [4]],), ValueError, "lengths"),
    ((torch.tensor([1.0, 2.0]),), TypeError, "lengths"),
    (("abc",), TypeError, "lengths"),
    (([3, 2], "causal"), TypeError, "inner"),
    (([3, 2], P.Neighborhood((5,), 3)), ValueError, "inner"),
    (([3, 2], P.BlockTopK(2)), ValueError, "inner"),
    (([3, 2], P.Mask(lambda b, h, q, k: q >= k, heads=2)), ValueError, "inner"),
])
def test_documents_bad_arguments(args, error, words):
    with pytest.raises(error, match=words):
        Documents(*args)


def test_documents_bad_ids_and_lengths():
    with pytest.raises(ValueError, match="contiguous"):
        Documents.from_ids([0, 0, 1, 0])
    p = Documents([3, 4])
    with pytest.raises(ValueError, match="q_len=7"):
        p.build(8, 8)
    q = torch.randn(2, 1, 7, 16)
    with pytest.raises(ValueError, match="batch=3"):
        foveate.attention(q, q, q, Documents([[3, 4]] * 3), backend="torch")


def test_segments_masks_and_layouts():
    cases = {
        "block-rank": ([0] * 13 + [1] * 20 + [2] * 7 + [3] * 31 + [4] * 9 + [5] * 17, block_rank_rules(6)),
        "prefix-docs": ([0] * 10 + [1] * 33 + [2] * 1 + [3] * 40, prefix_documents_rules(3)),
        "scattered": ([random.Random(0).randrange(4) for _ in range(77)],
                      [["none", "full", "causal", "full"], ["causal", "none", "full", "none"],
                       ["full", "causal", "causal", "none"], ["none", "none", "full", "causal"]]),
        "one-rule": ([0] * 50, [["causal"]]),
    }
    for name, (ids, rules) in cases.items():
        p = Segments(ids, rules)
        n = len(ids)
        want = segments_mask(ids, rules)
        assert torch.equal(_mask_of(p, n), want), name
        for block_q, block_kv in ((16, 16), (32, 16), (16, 64)):
            check_layout(p.build(n, n, block_q=block_q, block_kv=block_kv), want, block_q, block_kv, name)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(1, 90), st.integers(0, 2**31), st.sampled_from([8, 16, 32]))
def test_segments_random(n_seg, n, seed, block):
    gen = random.Random(seed)
    ids = [gen.randrange(n_seg) for _ in range(n)]
    rules = [[gen.choice(["none", "full", "causal"]) for _ in range(n_seg)] for _ in range(n_seg)]
    p = Segments(ids, rules)
    check_layout(p.build(n, n, block_q=block, block_kv=2 * block), segments_mask(ids, rules), block, 2 * block, p)


@pytest.mark.parametrize("ids, rules, error, words", [
    ([0, 1], [["full"]], ValueError, "ids"),
    ([0, -1], [["full"]], ValueError, "ids"),
    ([0, 0], [["full", "none"]], ValueError, "rules"),
    ([0, 0], [["all"]], ValueError, "rules"),
    ([0, 0], "full", TypeError, "rules"),
    ([[0, 0], [0]], [["full"]], ValueError, "ids"),
])
def test_segments_bad_arguments(ids, rules, error, words):
    with pytest.raises(error, match=words):
        Segments(ids, rules)


# -- the kernels' predicate ----------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("name", ["documents", "documents-window", "segments"])
def test_segment_predicate_on_every_block(name):
    if name == "segments":
        ids = [random.Random(1).randrange(3) for _ in range(70)]
        p = Segments(ids, [["causal", "none", "full"], ["full", "causal", "none"], ["none", "full", "causal"]])
    else:
        p = Documents([9, 1, 33, 27], inner=P.SlidingWindow(4) if name.endswith("window") else P.Causal())
    n = 70
    spec = mask_spec(p, n, n)
    assert "segment" in spec.kinds and spec.uses_ids and not spec.uses_bits
    ids = p.kernel_mask(n, n).leaves()[0].ids.operand("cpu")
    want = _mask_of(p, n)
    for transposed in (False, True):
        got, _ = probe(spec, n, n, 16, 32, transposed, ids=ids)
        assert torch.equal(got, want), f"{name}, transposed={transposed}"


def test_documents_kernel_mask_kinds():
    assert mask_spec(Documents([3, 4], inner=P.Dense()), 7, 7).kinds == ("segment",)
    assert set(mask_spec(Documents([3, 4]), 7, 7).kinds) == {"segment", "band"}
    assert mask_spec(Documents([3, 4], inner=P.Sinks(1)), 7, 7).path == "bitmask"
    # two sets of ids cannot be read at once: the bitmask
    both = Documents([3, 4]) | Documents([2, 5])
    assert mask_spec(both, 7, 7).path == "bitmask"


# -- attention -------------------------------------------------------------------------------------------------


def _grads(run, q, k, v, d_out):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = run(*leaves)
    (out.to(F64) * d_out.to(out.device)).sum().backward()
    return [out.detach().cpu().to(F64)] + [t.grad.cpu().to(F64) for t in leaves]


def _check_attention(pattern, mask, batch, heads, n, backends, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    hq, hk = heads
    q = torch.randn(batch, hq, n, 16, generator=gen, dtype=F64)
    k = torch.randn(batch, hk, n, 16, generator=gen, dtype=F64)
    v = torch.randn(batch, hk, n, 16, generator=gen, dtype=F64)
    d_out = torch.randn(batch, hq, n, 16, generator=gen, dtype=F64)
    want = _grads(lambda q, k, v: naive_attention(q, k, v, mask)[0], q, k, v, d_out)
    for backend in backends:
        # The kernels on the GPU where there is one (else Triton's interpreter on the CPU).
        device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
        got = _grads(lambda q, k, v: foveate.attention(q, k, v, pattern, backend=backend),
                     *(t.to(device, dtype) for t in (q, k, v)), d_out)
        for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
            err = (g - w).abs().max().item()
            assert err <= 1e-4 * max(1.0, w.abs().max().item()), f"{backend} {name}: error {err:.3g}"


@needs_triton
@pytest.mark.parametrize("inner", ["causal", "dense", "window", "sinks"])
def test_documents_attention(inner):
    pattern, definition = INNERS[inner]
    lengths = [5, 1, 30, 7, 1, 56]
    p = Documents(lengths, inner=pattern)
    mask = documents_mask(lengths, definition)[None, None]
    _check_attention(p, mask, 1, (2, 1), 100, ["triton", "torch"])


@needs_triton
def test_documents_per_batch_attention():
    rows = [[5, 40, 19], [64], [1] * 64]
    p = Documents(rows)
    mask = torch.stack([documents_mask(r, lambda i, j: j <= i) for r in rows])[:, None]
    _check_attention(p, mask, 3, (4, 2), 64, ["triton", "torch"])


@needs_triton
def test_segments_attention():
    ids = [0] * 13 + [1] * 20 + [2] * 7 + [3] * 31 + [4] * 9 + [5] * 17
    rules = block_rank_rules(6)
    p = Segments(ids, rules)
    _check_attention(p, segments_mask(ids, rules)[None, None], 1, (2, 2), len(ids), ["triton", "torch"])
    per_batch = Segments([ids, ids[::-1]], rules)
    mask = torch.stack([segments_mask(ids, rules), segments_mask(ids[::-1], rules)])[:, None]
    _check_attention(per_batch, mask, 2, (2, 1), len(ids), ["triton"])


def test_segments_tables_past_the_kernels_take_the_bitmask():
    n_seg = 17  # (the kernels' packed table holds 16)
    ids = [i % n_seg for i in range(40)]
    rules = [["causal" if b <= a else "none" for b in range(n_seg)] for a in range(n_seg)]
    p = Segments(ids, rules)
    assert p.kernel_mask(40, 40) is None and mask_spec(p, 40, 40).path == "bitmask"
    assert mask_spec(Segments(ids[:16], [r[:16] for r in rules[:16]]), 16, 16).kinds == ("segment",)
