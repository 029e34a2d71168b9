"""The sequence patterns of issue #25: PrefixLM, Global, ChunkCausal, PowerAttention,
StridedHeads (S2-Attention) and PerHead.

Each against brute-force masks written from the definitions with plain loops (``brute.py``):
``mask_mod``; block layouts block by block (odd lengths, ``q_len != kv_len`` both ways, several
block sizes, per-head layouts head by head) and built without evaluating the mask; the kernel
mask descriptions as the Triton kernels evaluate them (``mask_probe.py``); attention forward and
backward on the reference, torch and triton backends against naive float64 attention on the
brute-force masks; argument validation; ``foveate show`` / ``simulate`` and the drawings.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import brute
import foveate
from foveate import patterns as P
from foveate.cli import main
from foveate.layout import BlockLayout
from foveate.patterns.chunked import ChunkCausal
from foveate.patterns.interval_layout import build_interval_layout
from foveate.patterns.kernel_mask import AllOf, AnyOf, Band, Chunks, PowerBlocks, Rect
from foveate.patterns.per_head import PerHead
from foveate.patterns.power import PowerAttention
from foveate.patterns.prefix import Global, PrefixLM
from foveate.patterns.strided_heads import StridedHeads
from foveate.simulator import simulate

from conftest import grads_of
from kernel_spy import DEVICE, needs_triton
from layout_checks import assert_grid, check_layout, check_structure
from naive import naive_attention

F64, F32 = torch.float64, torch.float32


# =============================================================================================
# Helpers
# =============================================================================================


def evaluate(pattern, q_len: int, kv_len: int, heads: int = 1) -> torch.Tensor:
    """``mask_mod`` on index grids: ``(heads, q_len, kv_len)`` bool (query head ``h`` passed as ``h``)."""
    mm = pattern.mask_mod(q_len, kv_len)
    out = mm(torch.zeros((), dtype=torch.long), torch.arange(heads).view(-1, 1, 1),
             torch.arange(q_len).view(1, -1, 1), torch.arange(kv_len).view(1, 1, -1))
    assert out.dtype == torch.bool
    return torch.broadcast_to(out, (heads, q_len, kv_len)).clone()


def assert_same_mask(got, want, what):
    assert got.shape == want.shape, what
    diff = (got != want).nonzero().tolist()
    assert not diff, f"{what}: {len(diff)} pairs differ from the brute force, e.g. {diff[:6]}"


def brute_heads(pattern, q_len, kv_len) -> torch.Tensor:
    """The brute-force mask ``(H, q_len, kv_len)`` of a pattern (H = 1 unless it differs per head)."""
    if isinstance(pattern, StridedHeads):
        return brute.strided_heads_mask(q_len, kv_len, pattern.block, pattern.local, pattern.vertical,
                                        pattern.kv_heads, pattern.group, pattern.offset)
    if isinstance(pattern, PerHead):
        return torch.stack([brute.pattern_mask(p, q_len, kv_len) for p in pattern.patterns])
    return brute.pattern_mask(pattern, q_len, kv_len)[None]


def check_head_layout(layout: BlockLayout, masks: torch.Tensor, block_q: int, block_kv: int, what):
    """A layout with a head axis ``(1, H)``: each head's blocks against its brute-force mask, and
    the allowed pairs summed over the heads."""
    assert layout.batch_heads == (1, masks.shape[0]), what
    grid = check_structure(layout)
    for h in range(masks.shape[0]):
        assert_grid(grid[0, h], brute.block_grid(masks[h], block_q, block_kv), f"{what}, head {h}")
    assert layout.allowed_pairs() == int(masks.sum()), what


def check_any_layout(pattern, q_len, kv_len, block_q, block_kv):
    masks = brute_heads(pattern, q_len, kv_len)
    layout = pattern.build(q_len, kv_len, block_q=block_q, block_kv=block_kv)
    what = (pattern, q_len, kv_len, block_q, block_kv)
    if masks.shape[0] == 1 and not isinstance(pattern, (StridedHeads, PerHead)):
        check_layout(layout, masks[0], block_q, block_kv, what)
    else:
        check_head_layout(layout, masks, block_q, block_kv, what)


# =============================================================================================
# The brute force: literal examples read off the definitions
# =============================================================================================


def rows(mask) -> list[str]:
    return ["".join("x" if v else "." for v in row) for row in mask.tolist()]


def test_brute_literals():
    # PrefixLM(3): the first three positions see the prefix (and only it), the rest causal.
    assert rows(brute.prefix_lm_mask(5, 5, 3)) == ["xxx..", "xxx..", "xxx..", "xxxx.", "xxxxx"]
    # q_len=3 < kv_len=5: the queries are positions 2, 3, 4.
    assert rows(brute.prefix_lm_mask(3, 5, 3)) == ["xxx..", "xxxx.", "xxxxx"]
    # Global(2): rows 0-1 and columns 0-1.
    assert rows(brute.global_mask(4, 4, 2)) == ["xxxx", "xxxx", "xx..", "xx.."]
    # q_len=4 < kv_len=5: positions 1, 2, 3, 4; only position 1 is a global query.
    assert rows(brute.global_mask(4, 5, 2)) == ["xxxxx", "xx...", "xx...", "xx..."]
    # q_len=4 > kv_len=3: positions -1, 0, 1, 2; global queries are those at p < 2.
    assert rows(brute.global_mask(4, 3, 2)) == ["xxx", "xxx", "xxx", "xx."]
    # ChunkCausal(2): keys of the query's chunk and earlier ones; p < 0 sees nothing.
    assert rows(brute.chunk_causal_mask(5, 5, 2)) == ["xx...", "xx...", "xxxx.", "xxxx.", "xxxxx"]
    assert rows(brute.chunk_causal_mask(3, 2, 2)) == ["..", "xx", "xx"]
    # PowerAttention(block=1, window=1, sink=0): distances 0, 1, 2, 4 (not 3, 5, 6, 7).
    assert rows(brute.power_mask(8, 8, 1, 1, 0))[-1] == "...x.xxx"
    # ... with a sink block and blocks of 2: query 7 (block 3) sees blocks 0 (sink), 1, 2 (d=2, 1), 3.
    assert rows(brute.power_mask(8, 8, 2, 1, 1))[7] == "xxxxxxxx"
    assert rows(brute.power_mask(10, 10, 2, 1, 0))[9] == "xx..xxxxxx"  # block 4 sees d=4, 2, 1, 0; not d=3
    # StridedHeads(block=1, local=1, vertical=3, kv_heads=3): step 1; head h sees the keys with
    # (j + h) % 3 == 0, and its own position.
    masks = brute.strided_heads_mask(6, 6, 1, 1, 3, 3)
    assert [rows(m)[5] for m in masks] == ["x..x.x", "..x..x", ".x..xx"]
    # group=2: query heads 0, 1 share kv head 0.
    grouped = brute.strided_heads_mask(6, 6, 1, 1, 3, 3, group=2)
    assert torch.equal(grouped[0], grouped[1]) and torch.equal(grouped[2], masks[1])


# =============================================================================================
# mask_mod against the brute force
# =============================================================================================

STATIC = [
    pytest.param(PrefixLM(1), id="prefix-1-causal"),
    pytest.param(PrefixLM(7), id="prefix-7"),
    pytest.param(PrefixLM(40), id="prefix-past-keys"),
    pytest.param(Global(1), id="global-1"),
    pytest.param(Global(6), id="global-6"),
    pytest.param(ChunkCausal(1), id="chunk-1-causal"),
    pytest.param(ChunkCausal(4), id="chunk-4"),
    pytest.param(ChunkCausal(9), id="chunk-9"),
    pytest.param(PowerAttention(1, 1, 0), id="power-1-1-0"),
    pytest.param(PowerAttention(3, 2, 1), id="power-3-2-1"),
    pytest.param(PowerAttention(4, 0, 0), id="power-no-window"),
    pytest.param(PowerAttention(2, 0, 2), id="power-sink-only"),
]
LENGTHS = [(1, 1), (23, 23), (9, 31), (31, 9), (1, 29)]


@pytest.mark.parametrize("q_len,kv_len", LENGTHS, ids=[f"{q}x{k}" for q, k in LENGTHS])
@pytest.mark.parametrize("pattern", STATIC)
def test_mask_matches_brute(pattern, q_len, kv_len):
    assert_same_mask(evaluate(pattern, q_len, kv_len)[0], brute.pattern_mask(pattern, q_len, kv_len), pattern)


PER_HEAD = [
    pytest.param(StridedHeads(1, 1, 3, kv_heads=3), id="strided-literal"),
    pytest.param(StridedHeads(4, 2, 4, kv_heads=2, group=2), id="strided-gqa"),
    pytest.param(StridedHeads(3, 0, 5, kv_heads=8, offset=2), id="strided-no-local-many-heads"),
    pytest.param(PerHead([P.Causal(), PowerAttention(2, 1, 1), Global(3), P.Causal()]), id="per-head"),
    pytest.param(PerHead((PrefixLM(5) & P.SlidingWindow(6), ChunkCausal(5) | P.Sinks(2))), id="per-head-compositions"),
]


@pytest.mark.parametrize("q_len,kv_len", LENGTHS, ids=[f"{q}x{k}" for q, k in LENGTHS])
@pytest.mark.parametrize("pattern", PER_HEAD)
def test_per_head_mask_matches_brute(pattern, q_len, kv_len):
    want = brute_heads(pattern, q_len, kv_len)
    assert_same_mask(evaluate(pattern, q_len, kv_len, heads=want.shape[0]), want, pattern)


def test_mask_mod_on_scalars():
    # FlexAttention evaluates mask_mod on 0-dim tensors (under vmap).
    for pattern in (PrefixLM(5), Global(3), ChunkCausal(4), PowerAttention(3, 1, 1),
                    StridedHeads(2, 1, 3, kv_heads=2, group=2), PerHead([P.Causal(), Global(2)] * 2)):
        want = brute_heads(pattern, 13, 17)
        mm = pattern.mask_mod(13, 17)
        for h in range(want.shape[0] if want.shape[0] > 1 else 1):
            for i, j in ((0, 0), (12, 16), (3, 9), (7, 2), (11, 15)):
                got = mm(torch.tensor(0), torch.tensor(h), torch.tensor(i), torch.tensor(j))
                assert bool(got) == bool(want[h, i, j]), (pattern, h, i, j)


# =============================================================================================
# Layouts: exact, every block's state
# =============================================================================================

BLOCKS = [(1, 1), (4, 4), (3, 5), (16, 8), (7, 64)]
LAYOUT_PATTERNS = STATIC + PER_HEAD
LAYOUT_LENGTHS = [(37, 37), (21, 45), (45, 21), (1, 13)]


@pytest.mark.parametrize("block_q,block_kv", BLOCKS, ids=[f"{a}x{b}" for a, b in BLOCKS])
@pytest.mark.parametrize("q_len,kv_len", LAYOUT_LENGTHS, ids=[f"{q}x{k}" for q, k in LAYOUT_LENGTHS])
@pytest.mark.parametrize("pattern", LAYOUT_PATTERNS)
def test_layout_exact(pattern, q_len, kv_len, block_q, block_kv):
    check_any_layout(pattern, q_len, kv_len, block_q, block_kv)


@st.composite
def random_pattern(draw):
    kind = draw(st.sampled_from(["prefix", "global", "chunk", "power", "strided", "per-head"]))
    small = st.integers(1, 12)
    if kind == "prefix":
        return PrefixLM(draw(st.integers(1, 50)))
    if kind == "global":
        return Global(draw(st.integers(1, 50)))
    if kind == "chunk":
        return ChunkCausal(draw(small))
    if kind == "power":
        return PowerAttention(draw(small), draw(st.integers(0, 4)), draw(st.integers(0, 3)))
    if kind == "strided":
        return StridedHeads(draw(small), draw(st.integers(0, 4)), draw(st.integers(1, 6)),
                            kv_heads=draw(st.integers(1, 4)), group=draw(st.integers(1, 2)),
                            offset=draw(st.integers(0, 5)))
    parts = [PrefixLM(draw(small)), ChunkCausal(draw(small)), PowerAttention(draw(small), 1, 1), P.Causal()]
    return PerHead([draw(st.sampled_from(parts)) for _ in range(draw(st.integers(1, 3)))])


@given(random_pattern(), st.integers(1, 48), st.integers(1, 48), st.integers(1, 12), st.integers(1, 12))
@settings(max_examples=120, deadline=None)
def test_random_patterns_masks_and_layouts(pattern, q_len, kv_len, block_q, block_kv):
    want = brute_heads(pattern, q_len, kv_len)
    assert_same_mask(evaluate(pattern, q_len, kv_len, heads=want.shape[0]), want, pattern)
    check_any_layout(pattern, q_len, kv_len, block_q, block_kv)


COMPOSITIONS = [
    pytest.param(PowerAttention(3, 1, 1) | Global(4), id="power|global"),
    pytest.param((P.SlidingWindow(5, 5) | Global(3)) & P.Causal(), id="longformer-causal"),
    pytest.param(PrefixLM(9) & P.SlidingWindow(6), id="prefix&window"),
    pytest.param(ChunkCausal(6) & P.SlidingWindow(8), id="chunk&window"),
    pytest.param(StridedHeads(3, 1, 4, kv_heads=2) | P.Sinks(3), id="strided|sinks"),
    pytest.param(PerHead([P.Causal(), ChunkCausal(4)]) & P.SlidingWindow(10), id="per-head&window"),
]


@pytest.mark.parametrize("block_q,block_kv", [(4, 4), (5, 3)])
@pytest.mark.parametrize("pattern", COMPOSITIONS)
def test_compositions(pattern, block_q, block_kv):
    q_len, kv_len = 29, 35
    parts = [brute_heads(p, q_len, kv_len) for p in pattern.parts]
    want = parts[0]
    for m in parts[1:]:
        want = (want | m) if isinstance(pattern, P.Union) else (want & m)
    heads = want.shape[0]
    assert_same_mask(evaluate(pattern, q_len, kv_len, heads=heads), want, pattern)
    layout = pattern.build(q_len, kv_len, block_q=block_q, block_kv=block_kv)
    if heads == 1:
        check_layout(layout, want[0], block_q, block_kv, pattern)
    else:
        check_head_layout(layout, want, block_q, block_kv, pattern)


# -- the cost of a build: no mask evaluation, candidates that are the visited blocks -----------


class _NoEvaluation:
    def __call__(self, *args):
        raise AssertionError("the mask was evaluated while the layout was built")


@pytest.mark.parametrize("pattern", [
    PrefixLM(3000), Global(100), ChunkCausal(1000), PowerAttention(), PowerAttention(48, 3, 2),
    StridedHeads(kv_heads=4, group=2), PerHead([P.Causal(), PowerAttention(), P.SlidingWindow(500)]),
], ids=["prefix", "global", "chunk", "power", "power-odd-blocks", "strided", "per-head"])
def test_large_layouts_evaluate_no_mask(monkeypatch, pattern):
    """At 2**15 tokens (2**30 pairs) every layout is built from the structure alone: no
    ``mask_mod`` is evaluated, not even for the count of allowed pairs (checked against the
    closed forms below where they are simple)."""
    import foveate.layout as layout_module

    def refuse(*args, **kwargs):
        raise AssertionError("count_allowed called while building")

    monkeypatch.setattr(layout_module, "count_allowed", refuse)
    for cls in {type(pattern), *(type(p) for p in getattr(pattern, "patterns", ()))}:
        monkeypatch.setattr(cls, "mask_mod", lambda self, q_len, kv_len: _NoEvaluation())
    n = 1 << 15
    layout = pattern.build(n, n, block_q=128, block_kv=64)
    allowed = layout.allowed_pairs()
    if isinstance(pattern, PrefixLM):
        assert allowed == n * (n + 1) // 2 + pattern.prefix * (pattern.prefix - 1) // 2
    elif isinstance(pattern, Global):
        assert allowed == 2 * pattern.n * n - pattern.n ** 2
    elif isinstance(pattern, ChunkCausal):
        c, m = pattern.chunk, n // pattern.chunk  # n = m * c + r
        r = n - m * c
        assert allowed == c * c * m * (m + 1) // 2 + r * n
    assert 0 < allowed < layout.batch_heads[1] * n * n
    assert layout.num_visited() < layout.batch_heads[1] * layout.num_q_blocks * layout.num_kv_blocks


def test_candidates_are_a_tight_superset():
    """The block-rule builders classify only their candidates: they must hold every visited
    block (exactness tests above) and few others (here: none)."""
    for pattern, n in ((PowerAttention(), 20000), (PowerAttention(16, 4, 2), 5000), (PowerAttention(300, 2, 0), 7000)):
        qb, kb = pattern.candidates(n, n, 128, 64, "cpu")
        layout = pattern.build(n, n, block_q=128, block_kv=64)
        assert layout.num_visited() <= qb.numel() <= layout.num_visited(), pattern
    pattern = StridedHeads(32, 3, 5, kv_heads=3)
    layout = pattern.build(9000, 9000, block_q=64, block_kv=128)
    count = sum(pattern.candidates(9000, 9000, 64, 128, "cpu", h)[0].numel() for h in range(3))
    assert count == layout.num_visited()


def test_interval_layout_checks_its_requirements():
    lo = torch.zeros(6, dtype=torch.long)
    ok = torch.tensor([0, 1, 1, 3, 4, 5])
    kw = dict(block_q=2, block_kv=2, device=torch.device("cpu"), mask_mod=None)
    build_interval_layout(6, 6, lo, ok, **kw)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        build_interval_layout(6, 6, lo, torch.tensor([0, 2, 1, 3, 4, 5]), **kw)
    with pytest.raises(RuntimeError, match="gap"):
        build_interval_layout(6, 6, torch.tensor([0, 0, 3, 3, 3, 3]), torch.tensor([0, 1, 3, 4, 5, 5]), **kw)
    with pytest.raises(RuntimeError, match="consecutive"):
        build_interval_layout(6, 6, lo, torch.tensor([0, -1, 1, 3, 4, 5]), **kw)


# =============================================================================================
# Kernel masks
# =============================================================================================


def test_kernel_mask_descriptions():
    assert PrefixLM(10).kernel_mask(30, 50) == AnyOf((Band(20, None, 0), Rect(0, 0, 0, 10)))
    assert PrefixLM(10).kernel_mask(50, 30) == AnyOf((Band(-20, None, 0), Rect(0, 30, 0, 10)))
    assert Global(4).kernel_mask(30, 32) == AnyOf((Rect(0, 2, 0, 32), Rect(0, 30, 0, 4)))
    assert ChunkCausal(8).kernel_mask(30, 40) == Chunks(10, 8)
    assert PowerAttention(16, 3, 2).kernel_mask(40, 30) == AllOf((PowerBlocks(-10, 16, 3, 2), Band(-10, None, 0)))
    assert StridedHeads(kv_heads=2).kernel_mask(64, 64) is None
    assert PerHead([P.Causal(), P.Causal()]).kernel_mask(20, 30) == Band(10, None, 0)
    assert PerHead([P.Causal(), PrefixLM(1)]).kernel_mask(20, 30) is None  # (equal masks, other descriptions)
    assert PerHead([P.Causal(), P.Mask(lambda b, h, q, k: k <= q)]).kernel_mask(20, 20) is None


PROBE_CASES = [
    pytest.param(PrefixLM(50), 150, 150, id="prefix"),
    pytest.param(PrefixLM(70), 90, 140, id="prefix-q<kv"),
    pytest.param(PrefixLM(30), 140, 90, id="prefix-q>kv"),
    pytest.param(Global(9), 150, 130, id="global"),
    pytest.param(Global(40), 100, 150, id="global-q<kv"),
    pytest.param(ChunkCausal(24), 150, 150, id="chunk"),
    pytest.param(ChunkCausal(7), 90, 140, id="chunk-q<kv"),
    pytest.param(ChunkCausal(20), 140, 90, id="chunk-q>kv"),
    pytest.param(PowerAttention(8, 2, 1), 150, 150, id="power"),
    pytest.param(PowerAttention(5, 1, 2), 90, 140, id="power-q<kv"),
    pytest.param(PowerAttention(3, 0, 0), 140, 90, id="power-q>kv-no-window"),
    pytest.param(PowerAttention(40, 2, 1), 150, 150, id="power-blocks-larger-than-tiles"),
]


@needs_triton
@pytest.mark.parametrize("pattern,q_len,kv_len", PROBE_CASES)
def test_kernel_mask_as_the_kernels_evaluate_it(pattern, q_len, kv_len):
    """The description, lowered and evaluated by the kernels' block forms (forward/dq and
    dk/dv), equals the brute-force mask."""
    from foveate.backends.triton import masks
    from mask_probe import assert_masks_equal, probe

    spec = masks.mask_spec(pattern, q_len, kv_len)
    assert not spec.uses_bits, f"{pattern!r} fell back to a bitmask"
    want = brute.pattern_mask(pattern, q_len, kv_len)
    for transposed, blocks in ((False, (32, 16)), (True, (16, 32)), (False, (16, 64))):
        got, _ = probe(spec, q_len, kv_len, *blocks, transposed)
        assert_masks_equal(got, want, f"{pattern!r}, blocks {blocks}, transposed={transposed}", spec)


@st.composite
def described_pattern(draw):
    """A pattern with a kernel mask description of a new kind (Chunks, PowerBlocks), or of bands
    and rectangles (PrefixLM, Global), with lengths."""
    kind = draw(st.sampled_from(["prefix", "global", "chunk", "power"]))
    if kind == "prefix":
        pattern = PrefixLM(draw(st.integers(1, 120)))
    elif kind == "global":
        pattern = Global(draw(st.integers(1, 120)))
    elif kind == "chunk":
        pattern = ChunkCausal(draw(st.integers(1, 70)))
    else:
        pattern = PowerAttention(draw(st.integers(1, 40)), draw(st.integers(0, 4)), draw(st.integers(0, 3)))
    return pattern, draw(st.integers(1, 110)), draw(st.integers(1, 110))


@needs_triton
@given(described_pattern(), st.sampled_from([(False, (16, 32)), (True, (32, 16))]))
@settings(max_examples=10, deadline=None)
def test_random_kernel_masks_as_the_kernels_evaluate_them(case, direction):
    from foveate.backends.triton import masks
    from mask_probe import assert_masks_equal, probe

    (pattern, q_len, kv_len), (transposed, blocks) = case, direction
    spec = masks.mask_spec(pattern, q_len, kv_len)
    got, _ = probe(spec, q_len, kv_len, *blocks, transposed)
    assert_masks_equal(got, brute.pattern_mask(pattern, q_len, kv_len), f"{pattern!r} at {q_len}x{kv_len}", spec)


# =============================================================================================
# Attention: forward and backward on every backend against naive attention on brute-force masks
# =============================================================================================

ATTENTION_CASES = [
    pytest.param(PrefixLM(50), 150, 170, (2, 1), id="prefix-q<kv"),
    pytest.param(Global(7), 170, 150, (2, 2), id="global-q>kv"),
    pytest.param(ChunkCausal(30), 150, 130, (2, 1), id="chunk-q>kv"),
    pytest.param(ChunkCausal(17), 113, 200, (2, 2), id="chunk-q<kv"),
    pytest.param(PowerAttention(16, 2, 1), 200, 200, (2, 1), id="power"),
    pytest.param(PowerAttention(5, 1, 0), 120, 90, (2, 2), id="power-q>kv"),
    pytest.param(StridedHeads(16, 2, 4, kv_heads=2, group=2), 150, 190, (4, 2), id="strided-gqa"),
    pytest.param(PerHead([P.Causal(), PowerAttention(8, 1, 1)]), 160, 160, (2, 1), id="per-head-bitmask"),
    pytest.param(PerHead([ChunkCausal(20), ChunkCausal(20)]), 130, 130, (2, 1), id="per-head-structured"),
    pytest.param((P.SlidingWindow(20, 20) | Global(5)) & P.Causal(), 180, 180, (2, 1), id="longformer-causal"),
]


def check_attention(pattern, q_len, kv_len, heads, backend):
    """Forward (out, lse) and gradients against naive float64 attention on the brute-force mask."""
    gen = torch.Generator().manual_seed(q_len * 1000 + kv_len)
    hq, hk = heads
    q = torch.randn(1, hq, q_len, 16, generator=gen, dtype=F64)
    k = torch.randn(1, hk, kv_len, 16, generator=gen, dtype=F64)
    v = torch.randn(1, hk, kv_len, 16, generator=gen, dtype=F64)
    d_out = torch.randn(1, hq, q_len, 16, generator=gen, dtype=F64)
    d_lse = torch.randn(1, hq, q_len, generator=gen, dtype=F64)
    mask = brute_heads(pattern, q_len, kv_len)[None]  # (1, H or 1, q, kv)
    device = DEVICE if backend == "triton" else torch.device("cpu")

    def run(q_, k_, v_):
        return foveate.attention(q_, k_, v_, pattern, backend=backend, return_lse=True)

    got = grads_of(run, *(t.to(F32).to(device) for t in (q, k, v)), d_out.to(F32).to(device), d_lse.to(F32).to(device))
    want = grads_of(lambda q_, k_, v_: naive_attention(q_, k_, v_, mask), q, k, v, d_out, d_lse)
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        g = g.cpu().to(F64)
        if name == "lse":
            assert torch.equal(torch.isinf(g), torch.isinf(w)), f"{backend}: rows without keys differ"
            g, w = torch.where(torch.isinf(w), 0, g), torch.where(torch.isinf(w), 0, w)
        err = (g - w).abs().max().item()
        assert err <= 1e-4 * max(1.0, w.abs().max().item()), f"{backend} {name}: error {err:.3g}"


@pytest.mark.parametrize("backend", ["reference", "torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("pattern,q_len,kv_len,heads", ATTENTION_CASES)
def test_attention_matches_naive(pattern, q_len, kv_len, heads, backend, triton_spy):
    check_attention(pattern, q_len, kv_len, heads, backend)
    if backend == "triton":
        assert triton_spy["fwd"] >= 1 and triton_spy["bwd"] >= 1, "the Triton kernels did not run"


@needs_triton
@given(random_pattern(), st.integers(1, 130), st.integers(1, 130), st.sampled_from([1, 2]))
@settings(max_examples=8, deadline=None)
def test_random_attention(pattern, q_len, kv_len, group):
    """Random parameters on the torch and triton backends (GQA with ``group`` query heads per kv
    head; a per-head pattern takes its own head count)."""
    if isinstance(pattern, StridedHeads):
        heads = (pattern.heads, pattern.kv_heads)
    elif isinstance(pattern, PerHead):
        heads = (pattern.heads, pattern.heads)
    else:
        heads = (2 * group, 2)
    for backend in ("torch", "triton"):
        check_attention(pattern, q_len, kv_len, heads, backend)


@pytest.mark.parametrize("pattern,heads,message", [
    (StridedHeads(kv_heads=2, group=2), 2, "4 query heads"),
    (PerHead([P.Causal()] * 3), 2, "3 patterns"),
])
def test_attention_checks_the_head_count(pattern, heads, message):
    q = torch.randn(1, heads, 16, 8)
    with pytest.raises(ValueError, match=message):
        foveate.attention(q, q, q, pattern, backend="reference")


# =============================================================================================
# Validation, equality, repr
# =============================================================================================

BAD_ARGUMENTS = [
    (lambda: PrefixLM(0), ValueError, "prefix"),
    (lambda: PrefixLM(2.5), TypeError, "prefix"),
    (lambda: PrefixLM(True), TypeError, "prefix"),
    (lambda: Global(-1), ValueError, "n"),
    (lambda: Global("4"), TypeError, "n"),
    (lambda: ChunkCausal(0), ValueError, "chunk"),
    (lambda: ChunkCausal(None), TypeError, "chunk"),
    (lambda: PowerAttention(0), ValueError, "block"),
    (lambda: PowerAttention(64, -1), ValueError, "window"),
    (lambda: PowerAttention(64, 2, -1), ValueError, "sink"),
    (lambda: PowerAttention(64.0), TypeError, "block"),
    (lambda: StridedHeads(), TypeError, "kv_heads"),
    (lambda: StridedHeads(kv_heads=0), ValueError, "kv_heads"),
    (lambda: StridedHeads(kv_heads=2, group=0), ValueError, "group"),
    (lambda: StridedHeads(kv_heads=2, offset=-1), ValueError, "offset"),
    (lambda: StridedHeads(0, kv_heads=2), ValueError, "block"),
    (lambda: StridedHeads(64, -1, kv_heads=2), ValueError, "local"),
    (lambda: StridedHeads(64, 4, 0, kv_heads=2), ValueError, "vertical"),
    (lambda: StridedHeads(64, 4, 8, 2), TypeError, "positional"),  # kv_heads is keyword-only
    (lambda: PerHead([]), ValueError, "patterns"),
    (lambda: PerHead(P.Causal()), TypeError, "patterns"),
    (lambda: PerHead([P.Causal(), "causal"]), TypeError, r"patterns\[1\]"),
    (lambda: PerHead([P.Causal(), P.BlockTopK(2)]), ValueError, r"patterns\[1\].*selected from the inputs"),
    (lambda: PerHead([StridedHeads(kv_heads=2)]), ValueError, r"patterns\[0\].*differs per"),
    (lambda: PerHead([P.Mask(lambda b, h, q, k: q >= k, heads=2)]), ValueError, r"patterns\[0\].*differs per"),
    (lambda: PerHead([P.Blocks(torch.ones(1, 2, 2, 2, dtype=torch.bool), 4, 4)]), ValueError, "differs per"),
    (lambda: PerHead([PerHead([P.Causal(), P.Dense()])]), ValueError, "differs per"),
    (lambda: PerHead([P.Neighborhood((4, 4), 3), P.Neighborhood((2, 8), (1, 3))]), ValueError, "canvases"),
    (lambda: PerHead([P.Blocks(torch.ones(2, 2, dtype=torch.bool), 4, 4),
                      P.Blocks(torch.ones(2, 1, dtype=torch.bool), 4, 8)]), ValueError, "block sizes"),
]


@pytest.mark.parametrize("make,error,name", BAD_ARGUMENTS, ids=[str(i) for i in range(len(BAD_ARGUMENTS))])
def test_bad_arguments(make, error, name):
    with pytest.raises(error, match=name):
        make()


def test_lengths_are_checked():
    for pattern in (PrefixLM(3), StridedHeads(kv_heads=1), PerHead([P.Causal()])):
        with pytest.raises(ValueError, match="q_len"):
            pattern.mask_mod(0, 5)
        with pytest.raises(TypeError, match="kv_len"):
            pattern.build(5, 5.0)
    nb = PerHead([P.Neighborhood((4, 4), 3), P.Causal()])
    assert nb.canvas == (4, 4) and nb.default_lengths() == (16, 16)
    with pytest.raises(ValueError, match="q_len=16"):
        nb.build(17, 17)


def test_equality_hash_and_repr():
    namespace = dict(PrefixLM=PrefixLM, Global=Global, ChunkCausal=ChunkCausal, PowerAttention=PowerAttention,
                     StridedHeads=StridedHeads, PerHead=PerHead, Causal=P.Causal, SlidingWindow=P.SlidingWindow)
    patterns = [PrefixLM(9), Global(3), ChunkCausal(4), PowerAttention(), PowerAttention(16, 2, 0),
                StridedHeads(kv_heads=8, group=4, offset=1), PerHead([P.Causal(), P.SlidingWindow(3)])]
    for p in patterns:
        assert eval(repr(p), namespace) == p and hash(eval(repr(p), namespace)) == hash(p)
    assert len(set(patterns)) == len(patterns)
    assert PerHead([P.Causal()]) == PerHead((P.Causal(),)) != PerHead([P.Causal(), P.Causal()])
    assert PowerAttention() == PowerAttention(256, 5, 1) != PowerAttention(256, 5, 2)
    assert StridedHeads(kv_heads=2) != StridedHeads(kv_heads=2, group=2)
    assert repr(StridedHeads(kv_heads=2)) == ("StridedHeads(block=64, local=16, vertical=8, kv_heads=2, group=1, "
                                              "offset=0)")


# =============================================================================================
# CLI, drawings, simulator
# =============================================================================================

CLI_CASES = {
    "prefix-lm": (["prefix-lm", "--prefix", "40", "--len", "150", "--kv-len", "170"], PrefixLM(40), (150, 170)),
    "global": (["global", "--n", "9", "--len", "150"], Global(9), (150, 150)),
    "chunk-causal": (["chunk-causal", "--chunk", "30", "--len", "150", "--kv-len", "130"], ChunkCausal(30),
                     (150, 130)),
    "power": (["power", "--block", "8", "--window", "2", "--sink", "1", "--len", "200"], PowerAttention(8, 2, 1),
              (200, 200)),
    "strided-heads": (["strided-heads", "--kv-heads", "2", "--group", "2", "--block", "8", "--local", "2",
                       "--vertical", "4", "--offset", "1", "--len", "120"],
                      StridedHeads(8, 2, 4, kv_heads=2, group=2, offset=1), (120, 120)),
}


def _documents_case():
    documents = pytest.importorskip("foveate.patterns.documents")  # (written beside these patterns)
    return (["documents", "--lengths", "50", "30", "70", "--inner", "sliding", "--left", "10"],
            documents.Documents([50, 30, 70], inner=P.SlidingWindow(10)), (150, 150))


@pytest.mark.parametrize("case", [*CLI_CASES, "documents"])
def test_cli_simulate_and_show(tmp_path, capsys, case):
    args, pattern, (q_len, kv_len) = _documents_case() if case == "documents" else CLI_CASES[case]
    expected = json.loads(json.dumps(simulate(pattern, q_len=q_len, kv_len=kv_len, block_q=16, block_kv=16).as_dict()))
    assert main(["simulate", *args, "--block-q", "16", "--block-kv", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    out = tmp_path / "out.png"
    assert main(["show", *args, "--out", str(out), "--dpi", "30"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("args,message", [
    (["show", "prefix-lm", "--prefix", "0", "--len", "10"], "prefix must be >= 1"),
    (["simulate", "power", "--window", "-1", "--len", "10"], "window must be >= 0"),
    (["simulate", "strided-heads", "--kv-heads", "0", "--len", "10"], "kv_heads must be >= 1"),
    (["simulate", "documents", "--lengths", "5", "5", "--inner", "sliding"], "--inner sliding needs --left"),
    (["simulate", "documents", "--lengths", "5", "5", "--left", "3"], "--left applies to --inner sliding"),
])
def test_cli_bad_values_exit_2(capsys, args, message):
    if args[1] == "documents":
        pytest.importorskip("foveate.patterns.documents")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_simulate_per_head_patterns():
    pattern = StridedHeads(8, 2, 4, kv_heads=2, group=2)
    record = simulate(pattern, q_len=100, kv_len=120, block_q=16, block_kv=32)
    masks = brute_heads(pattern, 100, 120)
    assert record.heads == 4 and record.pairs_useful == int(masks.sum())
    assert record.blocks_total == 4 * 7 * 4 and not record.kernel_mask
    grids = [brute.block_grid(m, 16, 32) for m in masks]
    assert record.blocks_full == sum(int((g == brute.FULL).sum()) for g in grids)
    assert record.blocks_partial == sum(int((g == brute.PARTIAL).sum()) for g in grids)


def _titles(fig) -> str:
    texts = [t.get_text() for f in [fig, *fig.subfigs] if (t := f._suptitle) is not None]
    return "\n".join(texts + [ax.get_title() for ax in fig.get_axes()])


def test_drawing_per_head_patterns():
    pytest.importorskip("matplotlib")
    from foveate import draw

    pattern = PerHead([P.Causal(), PowerAttention(4, 1, 0), Global(5), ChunkCausal(8), P.SlidingWindow(3)])
    masks = brute_heads(pattern, 40, 50)
    layout = pattern.build(40, 50, block_q=8, block_kv=8)
    for h in range(5):  # each head's panels show that head, never a merge
        pixels, pool = draw.mask_pixels(pattern, 40, 50, layout=layout, slot=(0, h))
        assert pool == (1, 1) and torch.equal(pixels, masks[h]), h
        cells, _ = draw.layout_cells(layout, slot=(0, h))
        assert torch.equal(cells, brute.block_grid(masks[h], 8, 8)), h
        pooled, pool = draw.layout_cells(layout, max_cells=3, slot=(0, h))  # 5 x 7 blocks in 3 x 3 cells
        rank = torch.tensor([0, 2, 1])[brute.block_grid(masks[h], 8, 8).long()]  # partial > full > empty
        busiest = torch.nn.functional.max_pool2d(rank[None].float(), pool, ceil_mode=True)[0].long()
        assert pool == (2, 3) and torch.equal(pooled.long(), torch.tensor([0, 2, 1])[busiest]), h
    text = _titles(draw.figure_for(pattern, q_len=40, kv_len=50, block_q=8, dpi=30))
    assert "differs per query head: heads 0, 1, 2, 3 of 5 drawn" in text
    for h in range(4):
        assert f"query head {h} of 5\nmask: 40 queries x 50 keys, density {masks[h].float().mean().item():.2%}" in text
    text = _titles(draw.figure_for(pattern, q_len=40, kv_len=50, heads=[4], dpi=30))
    assert "head 4 of 5 drawn" in text and "block layout, query head 4 of 5" in text
    assert "query head 0" not in text
    with pytest.raises(ValueError, match="heads"):
        draw.figure_for(pattern, q_len=40, heads=[5])
    with pytest.raises(ValueError, match="no head axis"):
        draw.figure_for(P.Causal(), q_len=40, heads=[0])
    # A canvas pattern per head: one head's neighborhood, named.
    nb = PerHead([P.Neighborhood((8, 8), 3), P.Neighborhood((8, 8), 5)])
    text = _titles(draw.figure_for(nb, heads=[1], dpi=30))
    assert "query head 1 of 2 drawn" in text and "sees 25 canvas keys" in text
    assert "query head 0 of 2 drawn" in _titles(draw.figure_for(nb, tile=None, dpi=30))
    with pytest.raises(ValueError, match="one head"):
        draw.figure_for(nb, heads=[0, 1])
