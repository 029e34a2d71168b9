"""BlockLayouts: every builder against the brute-force block classification of ``brute.py``,
the structure of the index lists, counts and densities, both neighborhood builder paths,
compositions, the generic builder, ``from_block_grid`` and the FlexAttention conversion."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import brute
import foveate.patterns.canvas_layout as canvas_layout
from foveate import patterns as P
from foveate.layout import BlockLayout, layout_from_mask_mod

from layout_checks import check_layout, check_structure, read_lists
from strategies import neighborhood_params, raster_blocks, sequence_composition, sequence_pattern

# =============================================================================================
# Helpers
# =============================================================================================


def build_and_check(pattern, mask, block_q, block_kv):
    q_len, kv_len = mask.shape
    layout = pattern.build(q_len, kv_len, block_q=block_q, block_kv=block_kv)
    what = f"{pattern!r} with blocks ({block_q}, {block_kv})"
    return layout, check_layout(layout, mask, block_q, block_kv, what)


def neighborhood_and_mask(**kw):
    return P.Neighborhood(**kw), brute.neighborhood_mask(**kw)


# =============================================================================================
# 1-D patterns
# =============================================================================================


@pytest.mark.parametrize(
    "q_len, kv_len, block_q, block_kv",
    [
        pytest.param(32, 32, 8, 8, id="multiples"),
        pytest.param(30, 30, 8, 8, id="ragged"),
        pytest.param(37, 29, 8, 4, id="ragged-q>kv-bq!=bkv"),
        pytest.param(13, 41, 4, 16, id="ragged-q<kv-bq<bkv"),
        pytest.param(20, 20, 64, 32, id="blocks-past-the-end"),
        pytest.param(17, 9, 1, 1, id="blocks-of-1"),
    ],
)
@pytest.mark.parametrize(
    "pattern, expected",
    [
        pytest.param(P.Dense(), brute.dense_mask, id="dense"),
        pytest.param(P.Causal(), brute.causal_mask, id="causal"),
        pytest.param(P.SlidingWindow(5), lambda q, k: brute.sliding_window_mask(q, k, 5), id="window-5-0"),
        pytest.param(P.SlidingWindow(3, 6), lambda q, k: brute.sliding_window_mask(q, k, 3, 6), id="window-3-6"),
        pytest.param(P.SlidingWindow(0, 0), lambda q, k: brute.sliding_window_mask(q, k, 0, 0), id="window-diag"),
    ],
)
def test_sequence_layout_examples(pattern, expected, q_len, kv_len, block_q, block_kv):
    build_and_check(pattern, expected(q_len, kv_len), block_q, block_kv)


@given(
    sequence_pattern(max_window=20),
    st.integers(1, 40), st.integers(1, 40), st.integers(1, 48), st.integers(1, 48),
)
@settings(max_examples=250, deadline=None)
def test_sequence_layout_matches_brute(pat, q_len, kv_len, block_q, block_kv):
    pattern, expected = pat
    build_and_check(pattern, expected(q_len, kv_len), block_q, block_kv)


def test_causal_layout_literal():
    # 8 x 8 causal with blocks of 4: full below the diagonal, partial on it, empty above.
    layout = P.Causal().build(8, 8, block_q=4, block_kv=4)
    assert layout.to_dense()[0, 0].tolist() == [[1, 0], [2, 1]]
    assert layout.allowed_pairs() == 36
    # q_len < kv_len (bottom-right): every query sees the first kv block entirely.
    layout = P.Causal().build(4, 8, block_q=4, block_kv=4)
    assert layout.to_dense()[0, 0].tolist() == [[2, 1]]


# =============================================================================================
# Neighborhood: both builder paths
# =============================================================================================


@pytest.fixture
def path_calls(monkeypatch):
    """Counts the calls of the two neighborhood builders: ``{"product": n, "box": m}``."""
    calls = {"product": 0, "box": 0}
    for name, fn in (("product", canvas_layout._product_layout), ("box", canvas_layout._box_layout)):
        def wrapper(*args, _fn=fn, _name=name, **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(canvas_layout, f"_{name}_layout", wrapper)
    return calls


PATH_CASES = [
    # Blocks that are tiles of the canvas: the product of per-axis layouts.
    pytest.param(dict(canvas=(8, 16), kernel=(3, 5)), 16, 16, "product", id="product-2d-rows"),
    pytest.param(dict(canvas=(8, 16), kernel=5), 16, 32, "product", id="product-2d-bq!=bkv"),
    pytest.param(dict(canvas=(8, 16), kernel=(2, 4)), 32, 32, "product", id="product-2d-even-kernels"),
    pytest.param(
        dict(canvas=(8, 16), kernel=(3, 5), dilation=2, stride=(1, 2)),
        32, 16, "product", id="product-2d-dilated-strided",
    ),
    pytest.param(dict(canvas=(8, 16), kernel=(4, 4), stride=4), 64, 32, "product", id="product-2d-blocked"),
    pytest.param(dict(canvas=(8, 16), kernel=(3, 7), causal=(True, False)), 16, 64, "product", id="product-2d-causal"),
    pytest.param(dict(canvas=(8, 16), kernel=3), 128, 16, "product", id="product-q-block-whole-canvas"),
    pytest.param(dict(canvas=(8, 16), kernel=3), 256, 200, "product", id="product-blocks-past-the-end"),
    pytest.param(
        dict(canvas=(6, 10), kernel=(3, 4), causal=(False, True)),
        20, 30, "product", id="product-2d-tiles-2x10-3x10",
    ),
    pytest.param(
        dict(canvas=(12, 12), kernel=(3, 4), dilation=(3, 2)),
        24, 12, "product", id="product-2d-dilation-per-axis",
    ),
    pytest.param(dict(canvas=(8, 8), kernel=3, extra_kv=8), 16, 16, "product", id="product-extra-kv-whole-block"),
    pytest.param(dict(canvas=(8, 8), kernel=3, extra_kv=5), 16, 16, "product", id="product-extra-kv-short-block"),
    pytest.param(dict(canvas=(8, 8), kernel=3, extra_kv=20), 32, 8, "product", id="product-extra-kv-many-blocks"),
    pytest.param(dict(canvas=(4, 8, 8), kernel=3), 64, 64, "product", id="product-3d"),
    pytest.param(
        dict(canvas=(4, 8, 8), kernel=(2, 3, 3), causal=(True, False, False)),
        64, 128, "product", id="product-3d-causal-time",
    ),
    pytest.param(
        dict(canvas=(4, 8, 8), kernel=(2, 3, 2), dilation=(2, 2, 3), stride=(2, 1, 2)),
        16, 32, "product", id="product-3d-dilated-strided",
    ),
    pytest.param(dict(canvas=(4, 8, 8), kernel=(4, 8, 8)), 64, 32, "product", id="product-3d-dense"),
    pytest.param(dict(canvas=(24,), kernel=5), 4, 6, "product", id="product-1d"),
    pytest.param(dict(canvas=(24,), kernel=4, dilation=3, stride=2), 8, 3, "product", id="product-1d-dilated"),
    # Blocks that are not tiles: blocks as unions of boxes.
    pytest.param(dict(canvas=(7, 9), kernel=3), 5, 5, "box", id="box-2d-ragged"),
    pytest.param(dict(canvas=(7, 9), kernel=(2, 4), dilation=(2, 2)), 5, 7, "box", id="box-2d-dilated-even"),
    pytest.param(
        dict(canvas=(7, 9), kernel=(3, 3), stride=(3, 2), causal=(True, True)),
        11, 4, "box", id="box-2d-causal-strided",
    ),
    pytest.param(dict(canvas=(8, 16), kernel=3), 24, 24, "box", id="box-2d-block-not-a-tile"),
    pytest.param(dict(canvas=(8, 16), kernel=3), 16, 24, "box", id="box-kv-not-a-tile"),
    pytest.param(dict(canvas=(8, 16), kernel=3), 24, 16, "box", id="box-q-not-a-tile"),
    pytest.param(
        dict(canvas=(9, 9), kernel=(3, 4), dilation=2, stride=(3, 2), causal=(True, False)),
        7, 9, "box", id="box-2d-everything",
    ),
    pytest.param(dict(canvas=(4, 4), kernel=3, extra_kv=3), 32, 32, "box", id="box-extra-kv-block-past-the-end"),
    pytest.param(dict(canvas=(8, 8), kernel=3, extra_kv=5), 16, 24, "box", id="box-extra-kv-straddling-block"),
    pytest.param(dict(canvas=(5, 6, 7), kernel=3), 11, 13, "box", id="box-3d"),
    pytest.param(
        dict(canvas=(5, 6, 7), kernel=(2, 3, 4), dilation=(2, 1, 1), causal=(True, False, False), extra_kv=2),
        17, 10, "box", id="box-3d-everything",
    ),
    pytest.param(dict(canvas=(4, 8, 8), kernel=3), 64, 48, "box", id="box-3d-kv-not-a-tile"),
    pytest.param(dict(canvas=(10,), kernel=3), 3, 3, "box", id="box-1d"),
    pytest.param(
        dict(canvas=(13,), kernel=4, dilation=3, stride=2, causal=True),
        4, 5, "box", id="box-1d-dilated-causal",
    ),
]


@pytest.mark.parametrize("kw, block_q, block_kv, path", PATH_CASES)
def test_neighborhood_layout_paths(kw, block_q, block_kv, path, path_calls):
    pattern, mask = neighborhood_and_mask(**kw)
    build_and_check(pattern, mask, block_q, block_kv)
    other = "box" if path == "product" else "product"
    assert path_calls == {path: 1, other: 0}, f"expected the {path} builder to run once, calls: {path_calls}"


@given(st.data())
@settings(max_examples=250, deadline=None)
def test_neighborhood_layout_matches_brute(data):
    kw = data.draw(neighborhood_params())
    block_q, block_kv = data.draw(raster_blocks(kw), label="block_q, block_kv")
    pattern, mask = neighborhood_and_mask(**kw)
    build_and_check(pattern, mask, block_q, block_kv)


def test_neighborhood_layout_literal():
    # 1-D canvas of 8, kernel 3, blocks of 4: block (0, 1) holds the pair (3, 4) only.
    layout = P.Neighborhood(canvas=(8,), kernel=3).build(8, 8, block_q=4, block_kv=4)
    assert layout.to_dense()[0, 0].tolist() == [[1, 1], [1, 1]]
    # Blocked attention (stride == kernel == block): only diagonal blocks, all full.
    layout = P.Neighborhood(canvas=(8,), kernel=4, stride=4).build(8, 8, block_q=4, block_kv=4)
    assert layout.to_dense()[0, 0].tolist() == [[2, 0], [0, 2]]
    assert layout.allowed_pairs() == 32


# =============================================================================================
# Compositions
# =============================================================================================


def test_union_of_partials_becomes_full():
    # Lower and upper triangles: each diagonal block is partial in both, full in the union.
    lower, upper = P.SlidingWindow(3, 0), P.SlidingWindow(0, 3)
    for q_len, kv_len in ((8, 8), (8, 12)):  # the second is shifted by the bottom-right alignment
        m_lower = brute.sliding_window_mask(q_len, kv_len, 3, 0)
        m_upper = brute.sliding_window_mask(q_len, kv_len, 0, 3)
        g_lower, g_upper = brute.block_grid(m_lower, 4, 4), brute.block_grid(m_upper, 4, 4)
        diag = [(qb, qb + (kv_len - q_len) // 4) for qb in range(2)]
        assert all(g_lower[d] == g_upper[d] == brute.PARTIAL for d in diag)  # the premise
        layout, expected = build_and_check(lower | upper, m_lower | m_upper, 4, 4)
        assert all(expected[d] == brute.FULL for d in diag)


def test_intersection_of_partials_becomes_empty():
    # Block (1, 0) with blocks of 2: the window allows (2, 1); the dilated neighborhood allows
    # (2, 0) and (3, 1). Both partial, their intersection empty.
    window = P.SlidingWindow(1, 1)
    dilated = P.Neighborhood(canvas=(8,), kernel=2, dilation=2)
    m_window = brute.sliding_window_mask(8, 8, 1, 1)
    m_dilated = brute.neighborhood_mask((8,), 2, dilation=2)
    assert brute.block_grid(m_window, 2, 2)[1, 0] == brute.block_grid(m_dilated, 2, 2)[1, 0] == brute.PARTIAL
    layout, expected = build_and_check(window & dilated, m_window & m_dilated, 2, 2)
    assert expected[1, 0] == brute.EMPTY


def test_intersection_full_with_partial_stays_partial():
    layout, expected = build_and_check(P.Dense() & P.Causal(), brute.causal_mask(12, 12), 4, 4)
    assert expected.tolist() == [[1, 0, 0], [2, 1, 0], [2, 2, 1]]


@given(sequence_composition(max_window=8), st.integers(1, 30), st.integers(1, 30), st.integers(1, 12), st.integers(1, 12))
@settings(max_examples=150, deadline=None)
def test_sequence_composition_layout_matches_brute(comp, q_len, kv_len, block_q, block_kv):
    pattern, expected = comp
    build_and_check(pattern, expected(q_len, kv_len), block_q, block_kv)


@pytest.mark.parametrize(
    "canvas, extra_kv, block_q, block_kv",
    [
        pytest.param((8, 16), 0, 16, 32, id="product-blocks"),
        pytest.param((7, 9), 0, 5, 5, id="box-blocks"),
        pytest.param((4, 4, 4), 3, 16, 8, id="3d-extra-kv"),
    ],
)
@pytest.mark.parametrize("op", [pytest.param("or", id="union"), pytest.param("and", id="intersection")])
def test_neighborhood_composition_layout(canvas, extra_kv, block_q, block_kv, op):
    kw_a = dict(canvas=canvas, kernel=3, extra_kv=extra_kv)
    kw_b = dict(canvas=canvas, kernel=tuple(min(n, 4) for n in canvas), stride=2, causal=True, extra_kv=extra_kv)
    a, ma = neighborhood_and_mask(**kw_a)
    b, mb = neighborhood_and_mask(**kw_b)
    n = math.prod(canvas)
    mc = brute.causal_mask(n, n + extra_kv)
    if op == "or":
        build_and_check(a | b, ma | mb, block_q, block_kv)
        build_and_check((a & P.Causal()) | b, (ma & mc) | mb, block_q, block_kv)
    else:
        build_and_check(a & b, ma & mb, block_q, block_kv)
        build_and_check((a | b) & P.Causal(), (ma | mb) & mc, block_q, block_kv)


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_neighborhood_composition_layout_matches_brute(data):
    kw_a = data.draw(neighborhood_params())
    kw_b = data.draw(neighborhood_params(canvas=kw_a["canvas"], extra_kv=kw_a["extra_kv"]))
    block_q, block_kv = data.draw(raster_blocks(kw_a), label="block_q, block_kv")
    a, ma = neighborhood_and_mask(**kw_a)
    b, mb = neighborhood_and_mask(**kw_b)
    if data.draw(st.booleans(), label="union"):
        build_and_check(a | b, ma | mb, block_q, block_kv)
    else:
        build_and_check(a & b, ma & mb, block_q, block_kv)


# =============================================================================================
# The generic builder, from_block_grid, build() arguments
# =============================================================================================


def brute_mask_mod(mask: torch.Tensor):
    """A mask_mod that looks pairs up in a dense mask (independent of foveate's patterns)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return mask[q_idx, kv_idx]

    return mask_mod


@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31 - 1))
@settings(max_examples=100, deadline=None)
def test_generic_builder_on_random_masks(q_len, kv_len, block_q, block_kv, seed):
    gen = torch.Generator().manual_seed(seed)
    density = torch.rand((), generator=gen)
    mask = torch.rand(q_len, kv_len, generator=gen) < density
    layout = layout_from_mask_mod(brute_mask_mod(mask), q_len, kv_len, block_q=block_q, block_kv=block_kv)
    check_layout(layout, mask, block_q, block_kv, "layout_from_mask_mod(random mask)")


def test_generic_builder_with_candidates():
    mask = brute.neighborhood_mask((6, 7), (3, 2), dilation=(1, 3), extra_kv=2)
    grid = brute.block_grid(mask, 4, 5)
    # Every visited block plus a few empty ones: the empty ones must be dropped.
    rows, cols = torch.nonzero(torch.ones_like(grid), as_tuple=True)
    keep = (grid[rows, cols] > 0) | ((rows + cols) % 3 == 0)
    layout = layout_from_mask_mod(
        brute_mask_mod(mask), 42, 44, block_q=4, block_kv=5, candidates=(rows[keep], cols[keep])
    )
    check_layout(layout, mask, 4, 5, "layout_from_mask_mod(candidates)")


GENERIC_CASES = [
    pytest.param(P.Causal(), 29, 37, 8, 4, id="causal"),
    pytest.param(P.SlidingWindow(5, 2), 40, 33, 3, 7, id="window"),
    pytest.param(P.Neighborhood(canvas=(8, 16), kernel=(3, 5), dilation=(2, 1)), 128, 128, 16, 32, id="nb-product"),
    pytest.param(
        P.Neighborhood(canvas=(7, 9), kernel=(3, 4), stride=(2, 3), causal=(True, False)), 63, 63, 5, 5, id="nb-box"
    ),
    pytest.param(P.Neighborhood(canvas=(4, 5, 6), kernel=(2, 3, 3), extra_kv=3), 120, 123, 16, 10, id="nb-3d-extra"),
    pytest.param(
        P.Neighborhood(canvas=(8, 8), kernel=3) | P.Neighborhood(canvas=(8, 8), kernel=(1, 8)), 64, 64, 8, 16,
        id="union",
    ),
]


@pytest.mark.parametrize("pattern, q_len, kv_len, block_q, block_kv", GENERIC_CASES)
def test_generic_builder_agrees_with_analytic(pattern, q_len, kv_len, block_q, block_kv):
    analytic = pattern.build(q_len, kv_len, block_q=block_q, block_kv=block_kv)
    generic = layout_from_mask_mod(pattern.mask_mod(q_len, kv_len), q_len, kv_len, block_q=block_q, block_kv=block_kv)
    assert torch.equal(check_structure(generic), check_structure(analytic))
    assert generic.allowed_pairs() == analytic.allowed_pairs()


@given(
    st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6),
    st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1),
)
@settings(max_examples=80, deadline=None)
def test_from_block_grid_round_trips(b, h, nq, nkv, block_q, block_kv, seed):
    gen = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, 3, (b, h, nq, nkv), generator=gen).to(torch.int8)
    q_len = (nq - 1) * block_q + 1 + int(torch.randint(0, block_q, (), generator=gen))
    kv_len = (nkv - 1) * block_kv + 1 + int(torch.randint(0, block_kv, (), generator=gen))
    layout = BlockLayout.from_block_grid(grid, block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len)
    assert layout.batch_heads == (b, h)
    assert torch.equal(check_structure(layout), grid)
    assert torch.equal(layout.to_dense(), grid)


def test_from_block_grid_all_empty():
    grid = torch.zeros(1, 1, 3, 4, dtype=torch.int8)
    layout = BlockLayout.from_block_grid(grid, block_q=4, block_kv=4, q_len=12, kv_len=16)
    assert torch.equal(check_structure(layout), grid)
    assert layout.block_density() == 0.0


@pytest.mark.parametrize(
    "shape, q_len, kv_len",
    [
        pytest.param((3, 4), 12, 16, id="2-dims"),
        pytest.param((1, 1, 3, 4), 13, 16, id="too-few-q-blocks"),
        pytest.param((1, 1, 3, 4), 12, 12, id="too-many-kv-blocks"),
    ],
)
def test_from_block_grid_shape_errors(shape, q_len, kv_len):
    with pytest.raises(ValueError, match="grid"):
        BlockLayout.from_block_grid(
            torch.zeros(shape, dtype=torch.int8), block_q=4, block_kv=4, q_len=q_len, kv_len=kv_len
        )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        pytest.param(dict(block_q=0, block_kv=4), "block_q", id="block-q-0"),
        pytest.param(dict(block_q=4, block_kv=-4), "block_kv", id="block-kv-negative"),
        pytest.param(dict(block_q=4.0, block_kv=4), "block_q", id="block-q-float"),
    ],
)
@pytest.mark.parametrize(
    "pattern",
    [pytest.param(P.Causal(), id="causal"), pytest.param(P.Neighborhood(canvas=(4, 4), kernel=3), id="nb")],
)
def test_build_rejects_bad_blocks(pattern, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        pattern.build(16, 16, **kwargs)


def test_build_rejects_lengths_that_do_not_fit():
    with pytest.raises(ValueError, match="q_len|kv_len"):
        P.Neighborhood(canvas=(4, 4), kernel=3).build(15, 16, block_q=4, block_kv=4)
    with pytest.raises(ValueError, match="q_len|kv_len"):
        P.Neighborhood(canvas=(4, 4), kernel=3, extra_kv=1).build(16, 16, block_q=4, block_kv=4)


# =============================================================================================
# FlexAttention BlockMask
# =============================================================================================

FLEX_CASES = [
    pytest.param(P.Causal(), brute.causal_mask(64, 64), 16, 16, id="causal"),
    pytest.param(P.SlidingWindow(6, 2), brute.sliding_window_mask(30, 45, 6, 2), 8, 16, id="window-ragged"),
    pytest.param(P.Dense(), brute.dense_mask(20, 20), 8, 8, id="dense-ragged"),
    pytest.param(
        P.Neighborhood(canvas=(8, 16), kernel=(3, 5)), brute.neighborhood_mask((8, 16), (3, 5)), 16, 32,
        id="nb-product",
    ),
    pytest.param(
        P.Neighborhood(canvas=(7, 9), kernel=3, extra_kv=4), brute.neighborhood_mask((7, 9), 3, extra_kv=4), 8, 8,
        id="nb-box-extra",
    ),
    pytest.param(
        P.SlidingWindow(3, 0) | P.SlidingWindow(0, 3),
        brute.sliding_window_mask(32, 32, 3, 0) | brute.sliding_window_mask(32, 32, 0, 3), 4, 4,
        id="union",
    ),
]


@pytest.mark.parametrize("pattern, mask, block_q, block_kv", FLEX_CASES)
def test_to_flex_block_mask(pattern, mask, block_q, block_kv):
    q_len, kv_len = mask.shape
    layout = pattern.build(q_len, kv_len, block_q=block_q, block_kv=block_kv)
    expected = brute.block_grid(mask, block_q, block_kv)
    block_mask = layout.to_flex_block_mask()
    assert tuple(block_mask.BLOCK_SIZE) == (block_q, block_kv)
    assert tuple(block_mask.seq_lengths) == (q_len, kv_len)
    dense = block_mask.to_dense()
    assert tuple(dense.shape) == (1, 1, *expected.shape)
    assert torch.equal(dense[0, 0] > 0, expected > 0), "visited blocks differ"
    # Full blocks are FlexAttention's full blocks.
    full = torch.zeros_like(expected, dtype=torch.bool)
    for r, cols in read_lists(block_mask.full_kv_num_blocks, block_mask.full_kv_indices).items():
        full[r[2], cols] = True
    assert torch.equal(full, expected == brute.FULL), "full blocks differ"
    # The transposed lists FlexAttention keeps for the backward pass.
    visited_t = torch.zeros_like(full.T)
    for num, idx in (
        (block_mask.q_num_blocks, block_mask.q_indices),
        (block_mask.full_q_num_blocks, block_mask.full_q_indices),
    ):
        for r, rows in read_lists(num, idx).items():
            visited_t[r[2], rows] = True
    assert torch.equal(visited_t, (expected > 0).T), "q_indices are not the transpose"
    # Its mask_mod is the pattern's.
    zero = torch.zeros((), dtype=torch.long)
    got = block_mask.mask_mod(zero, zero, torch.arange(q_len)[:, None], torch.arange(kv_len)[None, :])
    assert torch.equal(got.expand(q_len, kv_len), mask)


def test_to_flex_block_mask_with_explicit_mask_mod():
    layout = BlockLayout.from_block_grid(
        torch.tensor([[[[1, 0], [2, 1]]]], dtype=torch.int8), block_q=4, block_kv=4, q_len=8, kv_len=8
    )
    with pytest.raises(ValueError, match="mask_mod"):
        layout.to_flex_block_mask()
    mask = brute.causal_mask(8, 8)
    mask_mod = brute_mask_mod(mask)
    block_mask = layout.to_flex_block_mask(mask_mod)
    assert block_mask.mask_mod is mask_mod
    assert block_mask.to_dense()[0, 0].tolist() == [[1, 0], [1, 1]]


def test_row_blocks_is_the_mean_number_of_visited_blocks():
    from foveate.backends.base import cached_layout

    layout = P.Causal().build(300, 300, block_q=128, block_kv=128, device="cpu")
    assert layout.row_blocks is None
    assert layout.find_row_blocks() == pytest.approx((1 + 2 + 3) / 3)
    assert layout.to("cpu").row_blocks == layout.row_blocks
    assert cached_layout(P.Causal(), 300, 300, block_q=128, block_kv=128, device="cpu").row_blocks == 2.0


@pytest.mark.parametrize("axis", [0, 1])
def test_stack_layouts_equals_the_layout_of_the_same_pairs(axis):
    """stack_layouts (lists padded and gathered) gives the kv and transposed lists that
    from_pairs gives for the same pairs, entry i of the axis being layouts[index[i]]."""
    from foveate.layout import stack_layouts

    parts = [P.SlidingWindow(40).build(300, 300, block_q=32, block_kv=16), P.Causal().build(300, 300, block_q=32, block_kv=16),
             P.Sinks(7).build(300, 300, block_q=32, block_kv=16)]
    index = torch.tensor([2, 0, 0, 1, 2])
    got = stack_layouts(parts, index, axis=axis)
    nq = parts[0].num_q_blocks
    rows, cols, fulls = [], [], []
    for i, u in enumerate(index.tolist()):
        row, col, full = parts[u].pairs()
        rows.append(row + i * nq)
        cols.append(col)
        fulls.append(full)
    shape = (5, 1) if axis == 0 else (1, 5)
    want = BlockLayout.from_pairs(torch.cat(rows), torch.cat(cols), torch.cat(fulls), batch_heads=shape, block_q=32,
                                  block_kv=16, q_len=300, kv_len=300)
    assert got.batch_heads == shape
    for transposed in (False, True):
        for counts, indices in (("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices")) if transposed \
                else (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
            g_n, w_n = getattr(got, counts), getattr(want, counts)
            assert torch.equal(g_n, w_n), counts
            width = int(w_n.max()) if w_n.numel() else 0
            step = torch.arange(width)
            listed = step < w_n[..., None]
            assert torch.equal(torch.where(listed, getattr(got, indices)[..., :width], -1),
                               torch.where(listed, getattr(want, indices)[..., :width], -1)), indices
    with pytest.raises(ValueError, match="one batch element and head"):
        stack_layouts([got], torch.tensor([0]), axis=1)
