"""Kernel masks of compositions and of any ``mask_mod``, element by element, against brute force.

* Compositions (``|``, ``&``) of patterns that describe their masks lower to several leaves and
  a register program (``masks.lower``); the probe (``mask_probe.py``) assembles the masks of
  both block forms over every block pair and compares them with ``brute.pattern_mask``, which
  combines the parts' loop definitions.
* Patterns without a description (``P.Mask``), and any pattern under
  ``policy.force_bitmask``, mask their partial blocks from the layout's packed bitmask; the
  probe walks the layout's partial lists as the kernels do (the forward's row numbering, the
  dk/dv's block numbers) in kernel tiles smaller than the layout's blocks.
* The lowering itself: flattening, shared leaves, the register bound, what falls back to the
  bitmask, and the bitmask's memory (proportional to partial blocks: checked on a layout
  whose dense mask would not fit in memory).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import foveate
from foveate import patterns as P
from foveate.backends.triton import masks
from foveate.backends.triton.masks import spec as S
from foveate.bitmask import build_bitmask
from foveate.patterns.kernel_mask import AllOf, AnyOf, Band, Rect, Tiles, Window
from foveate.tiling import Tiled

import brute
from kernel_spy import needs_triton
from mask_probe import assert_masks_equal, probe, probe_partial
from strategies import pattern_tree


def check_composed(pattern, q_len: int, kv_len: int, block: int = 32, fixed: int = 64):
    """Both block forms of ``pattern``'s spec equal its brute-force mask; the spec."""
    spec = masks.mask_spec(pattern, q_len, kv_len)
    assert not spec.uses_bits, spec.fields()
    want = brute.pattern_mask(pattern, q_len, kv_len)
    for transposed, blocks in ((False, (fixed, block)), (True, (block, fixed))):
        got, _ = probe(spec, q_len, kv_len, *blocks, transposed)
        assert_masks_equal(got, want, f"{pattern!r}, transposed={transposed}, blocks {blocks}", spec)
    return spec


NB1 = P.Neighborhood(canvas=150, kernel=9, extra_kv=3)
NB2 = P.Neighborhood((12, 10), (5, 3), dilation=(1, 2))
NB2_TIME = P.Neighborhood((12, 10), (12, 10), causal=(True, False))

# (id, pattern, q_len, kv_len, leaves)
COMPOSED_CASES = [
    # (bands around one diagonal compose into one band: a single leaf)
    ("window|causal", P.SlidingWindow(20) | P.Causal(), 150, 150, 1),
    ("window|causal-q70-kv150", P.SlidingWindow(20, 5) | P.Causal(), 70, 150, 1),
    ("(window|sinks)&causal", (P.SlidingWindow(30) | P.Sinks(7)) & P.Causal(), 150, 150, 3),
    ("(window|sinks)&causal-q150-kv70", (P.SlidingWindow(30) | P.Sinks(40)) & P.Causal(), 150, 70, 3),
    ("sinks-q90-kv140", P.Sinks(33), 90, 140, 1),
    ("dense&window", P.Dense() & P.SlidingWindow(9, 9), 100, 120, 1),
    ("nbhd1d&causal-extra", NB1 & P.Causal(), 150, 153, 2),
    ("nbhd1d|sinks-extra", NB1 | P.Sinks(2), 150, 153, 2),
    ("nbhd2d&time-raster", NB2 & NB2_TIME, 120, 120, 2),
    ("nbhd2d|window|sinks", NB2 | P.SlidingWindow(3) | P.Sinks(5), 120, 120, 3),
    ("4-deep", ((P.SlidingWindow(5) | P.Sinks(3)) & P.Causal()) | (P.SlidingWindow(0, 9) & P.Dense()), 130, 130, 4),
]


@needs_triton
@pytest.mark.parametrize("pattern,q_len,kv_len,leaves", [c[1:] for c in COMPOSED_CASES],
                         ids=[c[0] for c in COMPOSED_CASES])
def test_composed_masks_match_brute_force(pattern, q_len, kv_len, leaves):
    spec = check_composed(pattern, q_len, kv_len)
    assert len(spec.leaves) == leaves and spec.path == ("composed" if leaves > 1 else "structured")


TILED_COMPOSED = [
    ("2d-tile4x8-intersection", Tiled(NB2 & NB2_TIME, (4, 8)), (32, 64)),
    ("2d-tile4x8-union-padded-extra", Tiled(P.Neighborhood((10, 13), 3, extra_kv=2)
                                            | P.Neighborhood((10, 13), (1, 13), extra_kv=2), (4, 8)), (16, 32)),
    ("3d-tile2x4x4-three-parts", Tiled((P.Neighborhood((4, 6, 8), (3, 3, 5)) | P.Neighborhood((4, 6, 8), (1, 1, 8)))
                                       & P.Neighborhood((4, 6, 8), (4, 6, 8), causal=(True, False, False)), (2, 4, 4)),
     (32, 32)),
]


@needs_triton
@pytest.mark.parametrize("pattern,blocks", [c[1:] for c in TILED_COMPOSED], ids=[c[0] for c in TILED_COMPOSED])
def test_tiled_compositions_match_brute_force(pattern, blocks):
    q_len, kv_len = pattern.default_lengths()
    spec = check_composed(pattern, q_len, kv_len, *blocks)
    assert set(spec.kinds) == {"window"} and spec.fields()["TILE_SIZE"] > 1


@needs_triton
@settings(max_examples=30, deadline=None)
@given(pattern_tree(3, 40, arity=(2, 3)), st.integers(1, 150), st.integers(1, 150),
       st.sampled_from([(16, 32), (32, 64), (64, 16)]))
def test_random_compositions_match_brute_force(pattern, q_len, kv_len, blocks):
    spec = masks.mask_spec(pattern, q_len, kv_len)
    if spec.uses_bits:  # past the program's bounds: the bitmask path (checked below)
        assert len(pattern.kernel_mask(q_len, kv_len).leaves()) > 1
        return
    check_composed(pattern, q_len, kv_len, *blocks)


# -- the lowering -------------------------------------------------------------------------------------


def test_lowering_flattens_and_shares_leaves():
    a, b = Band(0, 5, 0), Rect(0, 100, 0, 4)
    spec = masks.lower(AllOf((AnyOf((a, AnyOf((b, a)))), AnyOf((a, b)))), 100, 100)
    assert spec.leaves == [(S.BAND, 0, 5, 0, 1, 1) + (0,) * (S.LEAF_WIDTH - 6),
                           (S.RECT, 0, 100, 0, 4) + (0,) * (S.LEAF_WIDTH - 5)]
    ops = spec.ops
    assert sum(op[0] == S.LEAF for op in ops) == 5 and ops[-1][:2] == (S.AND, 0)
    assert max(max(op[1], op[2], op[3]) for op in ops) < S.REGISTERS


def test_lowering_registers_follow_the_most_demanding_child_first():
    """A right-leaning chain needs 2 registers evaluated deepest first, not one per level."""
    leaves = [Band(0, w, 0) for w in range(6)]
    tree = leaves[0]
    for leaf in leaves[1:]:
        tree = AllOf((leaf, AnyOf((tree, Rect(0, 9, 0, 1)))))  # nested 5 deep, 7 distinct leaves
    spec = masks.lower(tree, 50, 50)
    assert not spec.uses_bits and len(spec.leaves) == 7
    assert max(op[1] for op in spec.ops) <= 1


def test_lowering_past_the_bounds_is_the_bitmask():
    nine = AnyOf(tuple(Band(0, w, 0) for w in range(S.MAX_LEAVES + 1)))
    spec = masks.lower(nine, 64, 64, blocks=(64, 64))
    assert spec.uses_bits and spec.path == "bitmask" and spec.bit_blocks == (64, 64)
    balanced = AllOf((AnyOf((AllOf((Band(0, 1, 0), Band(0, 2, 0))), AllOf((Band(0, 3, 0), Band(0, 4, 0))))),
                      AnyOf((AllOf((Band(0, 5, 0), Band(0, 6, 0))), AllOf((Band(0, 7, 0), Band(0, 8, 0)))))))
    spec = masks.lower(balanced, 64, 64)  # 8 leaves, a balanced tree: 4 registers, the bound
    assert not spec.uses_bits and max(op[1] for op in spec.ops) == S.REGISTERS - 1


def test_paths_of_patterns():
    assert masks.mask_spec(P.Causal(), 100, 100).path == "structured"
    assert masks.mask_spec(P.Causal() | P.Sinks(4), 100, 100).path == "composed"
    assert masks.mask_spec(P.Mask(lambda b, h, q, k: q >= k), 100, 100).path == "bitmask"
    assert masks.mask_spec(P.Causal() | P.Mask(lambda b, h, q, k: k < 3), 100, 100).path == "bitmask"
    with foveate.policy.override(force_bitmask=True):
        assert masks.mask_spec(P.Causal(), 100, 100).path == "bitmask"
    assert masks.mask_spec(P.Causal(), 100, 100).path == "structured"  # restored, and not cached as forced


def test_tiles_only_at_the_root():
    window = Window((4, 4), ((3, 1, 1, False), (3, 1, 1, False)))
    with pytest.raises(TypeError, match="no predicate for Tiles"):
        masks.lower(AnyOf((Tiles(window, (4, 4), (2, 2)), Band(0, 1, 0))), 16, 16)
    with pytest.raises(ValueError, match="raster_io needs a description in a tiled order"):
        masks.lower(window, 16, 16, raster_io=True)


# -- the bitmask ----------------------------------------------------------------------------------------


def _prefix_lm(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) | (kv_idx < 37)


_DOCS = torch.tensor([0] * 50 + [1] * 3 + [2] * 90 + [3] * 57)  # 200 tokens, 4 documents


def _documents(b, h, q_idx, kv_idx):
    docs = _DOCS.to(q_idx.device)
    return (docs[q_idx] == docs[kv_idx]) & (kv_idx <= q_idx)


def _checkerboard(b, h, q_idx, kv_idx):
    return ((q_idx // 3) + (kv_idx // 5)) % 2 == 0


_RANDOM = torch.rand(200, 210, generator=torch.Generator().manual_seed(3)) < 0.3


def _random(b, h, q_idx, kv_idx):
    return _RANDOM.to(q_idx.device)[q_idx, kv_idx]


# (id, pattern, q_len, kv_len)
BITMASK_CASES = [
    ("prefix-lm", P.Mask(_prefix_lm), 200, 200),
    ("documents", P.Mask(_documents), 200, 200),
    ("checkerboard-q170-kv200", P.Mask(_checkerboard), 170, 200),
    ("random", P.Mask(_random), 200, 210),
    ("causal|mask", P.Causal() | P.Mask(lambda b, h, q, k: k % 7 == 0), 150, 190),
]


@needs_triton
@pytest.mark.parametrize("layout_block,tile", [(64, (64, 64)), (64, (32, 16)), (32, (16, 32))])
@pytest.mark.parametrize("pattern,q_len,kv_len", [c[1:] for c in BITMASK_CASES], ids=[c[0] for c in BITMASK_CASES])
def test_bitmask_partial_blocks_match_brute_force(pattern, q_len, kv_len, layout_block, tile):
    layout = pattern.build(q_len, kv_len, block_q=layout_block, block_kv=layout_block)
    spec = masks.mask_spec(pattern, q_len, kv_len, blocks=(layout_block, layout_block))
    assert spec.path == "bitmask"
    want = brute.pattern_mask(pattern, q_len, kv_len)
    partial = layout.to_dense()[0, 0] == 1
    cells = partial.repeat_interleave(layout_block, 0).repeat_interleave(layout_block, 1)[:q_len, :kv_len]
    assert cells.any()
    for transposed in (False, True):
        got = probe_partial(spec, layout, *tile, transposed)
        assert_masks_equal(got[cells].bool(), want[cells], f"{pattern!r}, transposed={transposed}", spec)
        assert (got[~cells] == -1).all(), "the probe wrote outside the partial blocks"


@needs_triton
def test_forced_bitmask_on_a_tiled_canvas_matches_brute_force():
    pattern = Tiled(P.Neighborhood((10, 13), (3, 5), extra_kv=2), (4, 8))
    q_len, kv_len = pattern.default_lengths()
    with foveate.policy.override(force_bitmask=True):
        spec = masks.mask_spec(pattern, q_len, kv_len, raster_io=True, blocks=(32, 32))
    assert spec.uses_bits and spec.raster_io  # the token order stays: the kernels address raster rows
    layout = pattern.build(q_len, kv_len, block_q=32, block_kv=32)
    want = brute.pattern_mask(pattern, q_len, kv_len)
    cells = (layout.to_dense()[0, 0] == 1).repeat_interleave(32, 0).repeat_interleave(32, 1)[:q_len, :kv_len]
    for transposed in (False, True):
        got = probe_partial(spec, layout, 16, 32, transposed)
        assert_masks_equal(got[cells].bool(), want[cells], f"transposed={transposed}", spec)


def test_bitmask_bytes_are_what_is_built():
    for pattern, n in ((P.Mask(_prefix_lm), 200), (P.Causal() | P.Sinks(3), 333), (P.Neighborhood((20, 20), 5), 400)):
        layout = pattern.build(n, n, block_q=64, block_kv=64)
        partial = int(layout.kv_num_blocks.sum())
        assert layout.bitmask_bytes() == layout.partial_bitmask().nbytes
        assert layout.partial_bitmask().words.shape == (partial, 64, 2)
        assert foveate.simulate(pattern, q_len=n, block_q=64, block_kv=64).bitmask_bytes == layout.bitmask_bytes()


def test_bitmask_memory_is_proportional_to_partial_blocks():
    """256K tokens: a dense bool mask would take 64 GiB; the bitmask of a window's partial blocks
    takes 2 per query block."""
    n, block = 1 << 18, 64
    pattern = P.SlidingWindow(block - 1)
    layout = pattern.build(n, n, block_q=block, block_kv=block)
    bits = build_bitmask(layout)
    partial = int(layout.kv_num_blocks.sum())
    assert partial == 2 * (n // block) - 1
    assert bits.words.numel() * 4 == partial * block * block // 8
    assert layout.bitmask_bytes() == bits.nbytes < 64 << 20
    # spot checks against the definition: the first, a middle and the last partial block
    for slot in (0, partial // 2, partial - 1):
        row = int(torch.searchsorted(bits.row_start.view(-1), torch.tensor(slot), right=True)) - 1
        kb = int(layout.kv_indices.view(layout.num_q_blocks, -1)[row, slot - int(bits.row_start.view(-1)[row])])
        q = torch.arange(row * block, (row + 1) * block)[:, None]
        k = torch.arange(kb * block, (kb + 1) * block)[None, :]
        want = (k <= q) & (k >= q - (block - 1))
        c = torch.arange(block)  # the keys' columns in the block
        got = (bits.words[slot][:, c // 32] >> (c % 32)) & 1
        assert torch.equal(got.bool(), want), slot


def test_per_batch_and_head_masks_get_their_own_bits():
    def staggered(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx - 3 * h - 5 * b

    pattern = P.Mask(staggered, batch=2, heads=3)
    layout = pattern.build(100, 100, block_q=32, block_kv=32)
    assert layout.batch_heads == (2, 3)
    bits = layout.partial_bitmask()
    rows = bits.row_start.view(-1)
    counts = layout.kv_num_blocks.view(-1)
    idx = layout.kv_indices.view(counts.numel(), -1)
    for row in range(counts.numel()):
        b, h, qb = row // (3 * 4), (row // 4) % 3, row % 4
        for j in range(int(counts[row])):
            kb = int(idx[row, j])
            q = torch.arange(qb * 32, qb * 32 + 32)[:, None]
            k = torch.arange(kb * 32, kb * 32 + 32)[None, :]
            want = (k <= q - 3 * h - 5 * b) & (q < 100) & (k < 100)
            c = torch.arange(32)
            got = (bits.words[int(rows[row]) + j][:, c // 32] >> (c % 32)) & 1
            assert torch.equal(got.bool(), want), (b, h, qb, kb)


def test_compiled_bitmask_build_equals_the_eager_one():
    """``torch.compile`` of the build's chunks (the default on CUDA) gives the same bits; a
    mask_mod dynamo cannot trace whole still builds (its graph breaks run eagerly)."""
    def branchy(b, h, q_idx, kv_idx):
        if bool((q_idx > 10 ** 6).any()):  # data-dependent Python: a graph break
            return q_idx < 0
        return (kv_idx <= q_idx) & (kv_idx % 3 != 1)

    for pattern, n in ((P.Mask(_prefix_lm), 200), (P.Mask(branchy), 150)):
        layout = pattern.build(n, n, block_q=64, block_kv=64)
        eager, compiled = build_bitmask(layout), build_bitmask(layout, compiled=True)
        for name in ("words", "row_start", "col_slot"):
            assert torch.equal(getattr(eager, name), getattr(compiled, name)), name
