"""Tiled token order (``foveate.tiling``) against brute force written from its docstring.

The tiled order pads the canvas up to whole tiles and orders tokens tile by tile (tiles in
raster order of the tile grid, raster order inside a tile). Padded keys are never allowed; a
padded query acts as the canvas query at its coordinates clamped to the canvas; the
``extra_kv`` keys come after the padded canvas. Everything here is checked against the plain
Python loops of ``brute.py`` (the tiled order, the masks and the block classifier):
the permutation, ``tile_tokens`` / ``untile_tokens``, ``Tiled.mask_mod``, tiled layouts block
by block, tiled attention against the raster-order reference and ``naive.py``, bad tiles and
``candidate_tiles``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import brute
import foveate
from foveate import patterns as P
from foveate.simulator import choose_tile
from foveate.tiling import Tiled, TiledOrder, candidate_tiles

from conftest import make_qkv
from layout_checks import check_layout
from naive import naive_attention
from strategies import neighborhood_and_tile, tile_of

F64 = torch.float64

# =============================================================================================
# Helpers and strategies
# =============================================================================================


def eval_mask_mod(mask_mod, q_len, kv_len) -> torch.Tensor:
    zero = torch.zeros((), dtype=torch.int64)
    got = mask_mod(zero, zero, torch.arange(q_len)[:, None], torch.arange(kv_len)[None, :])
    return torch.broadcast_to(got, (q_len, kv_len))


MAX_SIDE = {1: 12, 2: 9, 3: 5}


@st.composite
def canvas_and_tile(draw, ndims=(2, 3)):
    ndim = draw(st.sampled_from(ndims))
    canvas = tuple(draw(st.integers(1, MAX_SIDE[ndim])) for _ in range(ndim))
    return canvas, draw(tile_of(canvas, slack=2))


# =============================================================================================
# TiledOrder: the permutation and moving tensors
# =============================================================================================

ORDER_CASES = [
    pytest.param((4, 6), (2, 3), id="2d-multiples"),
    pytest.param((5, 7), (2, 4), id="2d-padded"),
    pytest.param((3, 5), (4, 8), id="2d-tile-larger-than-canvas"),
    pytest.param((6, 5), (1, 5), id="2d-row-tiles"),
    pytest.param((4, 6, 8), (2, 3, 4), id="3d-multiples"),
    pytest.param((3, 5, 6), (2, 2, 4), id="3d-padded"),
    pytest.param((1, 1), (1, 1), id="2d-single-token"),
    pytest.param((7,), (3,), id="1d-padded"),
]


def check_order(canvas, tile, gen):
    order = TiledOrder(canvas, tile)
    padded = brute.padded_canvas(canvas, tile)
    n_canvas, n_tiled = math.prod(canvas), math.prod(padded)
    assert order.padded == padded and order.num_tokens == n_tiled and order.num_canvas == n_canvas
    assert order.has_padding == (padded != tuple(canvas))

    # coords() against the loops over tiles.
    coords = brute.tiled_coords(canvas, tile)
    got = order.coords(torch.arange(n_tiled))
    assert len(got) == len(canvas)
    assert list(zip(*(c.tolist() for c in got))) == coords, "coords() differ from the brute-force tiled order"

    # permutation(): both directions, and a bijection onto the canvas.
    t2r, r2t = order.permutation()
    b_t2r, b_r2t = brute.tiled_permutation(canvas, tile)
    assert t2r.dtype == r2t.dtype == torch.int64
    assert t2r.tolist() == b_t2r, "tiled_to_raster differs from the brute force"
    assert r2t.tolist() == b_r2t, "raster_to_tiled differs from the brute force"
    assert sorted(r2t.tolist()) == sorted(p for p, r in enumerate(b_t2r) if r >= 0)
    assert torch.equal(t2r[r2t], torch.arange(n_canvas)), "not a bijection onto the canvas"
    assert (t2r == -1).sum() == n_tiled - n_canvas

    # tile_tokens: token p of the tiled sequence is raster token t2r[p], zeros at padding.
    b, h, d = 2, 3, 4
    x = torch.randn(b, h, n_canvas, d, generator=gen, dtype=F64)
    tiled = order.tile_tokens(x)
    assert tiled.shape == (b, h, n_tiled, d)
    for p, r in enumerate(b_t2r):
        if r >= 0:
            assert torch.equal(tiled[:, :, p], x[:, :, r]), f"tiled position {p} is not raster token {r}"
        else:
            assert (tiled[:, :, p] == 0).all(), f"padding position {p} is not zero"
    # untile_tokens: exact inverse, also on lse-shaped (B, H, N) tensors.
    assert torch.equal(order.untile_tokens(tiled), x)
    lse = x[..., 0]
    assert torch.equal(order.untile_tokens(order.tile_tokens(lse[..., None])[..., 0]), lse)
    # untile_tokens of any tiled tensor (padding not zero) reads raster token r at r2t[r].
    y = torch.randn(b, h, n_tiled, d, generator=gen, dtype=F64)
    idx = torch.tensor(b_r2t, dtype=torch.int64)
    assert torch.equal(order.untile_tokens(y), y[:, :, idx])
    assert torch.equal(order.untile_tokens(y[..., 1]), y[:, :, idx, 1])
    # tile_tokens is differentiable: its adjoint drops the padding, i.e. is untile_tokens.
    xg = x.clone().requires_grad_(True)
    (order.tile_tokens(xg) * y).sum().backward()
    assert torch.equal(xg.grad, order.untile_tokens(y))


@pytest.mark.parametrize("canvas, tile", ORDER_CASES)
def test_tiled_order_examples(canvas, tile, rng):
    check_order(canvas, tile, rng)


@given(canvas_and_tile(), st.integers(0, 2**31 - 1))
@settings(max_examples=80, deadline=None)
def test_tiled_order_matches_brute(ct, seed):
    canvas, tile = ct
    check_order(canvas, tile, torch.Generator().manual_seed(seed))


def test_tiled_order_literal():
    # 3 x 5 canvas, 2 x 2 tiles: padded to 4 x 6, tiles in raster order of a 2 x 3 grid.
    t2r, r2t = TiledOrder((3, 5), (2, 2)).permutation()
    assert t2r.tolist() == [
        0, 1, 5, 6,    2, 3, 7, 8,    4, -1, 9, -1,
        10, 11, -1, -1,    12, 13, -1, -1,    14, -1, -1, -1,
    ]
    assert r2t.tolist() == [0, 1, 4, 5, 8, 2, 3, 6, 7, 10, 12, 13, 16, 17, 20]


# =============================================================================================
# Tiled(pattern, tile): the mask in tiled order
# =============================================================================================

MASK_CASES = [
    pytest.param(dict(canvas=(4, 8), kernel=3), (2, 4), id="2d-multiples"),
    pytest.param(dict(canvas=(5, 7), kernel=(3, 4)), (2, 4), id="2d-padded-even-kernel"),
    pytest.param(
        dict(canvas=(7, 9), kernel=(3, 2), dilation=(2, 3), stride=(2, 1), causal=(True, False)),
        (4, 2), id="2d-padded-dilated-strided-causal",
    ),
    pytest.param(dict(canvas=(5, 6), kernel=3, extra_kv=3), (4, 4), id="2d-padded-extra-kv"),
    pytest.param(dict(canvas=(3, 9), kernel=(3, 5), causal=(False, True), extra_kv=2), (1, 8), id="2d-row-tiles-extra"),
    pytest.param(dict(canvas=(3, 5, 6), kernel=(2, 3, 3)), (4, 2, 2), id="3d-padded"),
    pytest.param(
        dict(canvas=(4, 5, 5), kernel=(2, 2, 3), dilation=(1, 2, 1), stride=(2, 1, 3), causal=(True, False, False),
             extra_kv=1),
        (2, 2, 4), id="3d-everything",
    ),
    pytest.param(dict(canvas=(3, 4), kernel=(3, 4)), (4, 8), id="2d-dense-tile-larger-than-canvas"),
    pytest.param(dict(canvas=(10,), kernel=3, extra_kv=2), (4,), id="1d-neighborhood-padded"),
]


def check_tiled_mask(kw, tile):
    pattern = P.Neighborhood(**kw)
    tiled = Tiled(pattern, tile)
    padded = brute.padded_canvas(kw["canvas"], tile)
    extra = kw.get("extra_kv", 0)
    n_tiled = math.prod(padded)
    assert tiled.default_lengths() == (n_tiled, n_tiled + extra)
    raster = brute.neighborhood_mask(**kw)
    expected = brute.tiled_mask(raster, kw["canvas"], tile, extra)
    assert torch.equal(brute.tiled_mask_indexed(raster, kw["canvas"], tile, extra), expected)
    got = eval_mask_mod(tiled.mask_mod(n_tiled, n_tiled + extra), n_tiled, n_tiled + extra)
    diff = (got != expected).nonzero().tolist()
    assert not diff, f"{tiled!r}: {len(diff)} (query, key) pairs differ from the brute force, e.g. {diff[:6]}"
    return pattern, tiled, expected


@pytest.mark.parametrize("kw, tile", MASK_CASES)
def test_tiled_mask_mod_examples(kw, tile):
    check_tiled_mask(kw, tile)


@given(neighborhood_and_tile())
@settings(max_examples=60, deadline=None)
def test_tiled_mask_mod_matches_brute(case):
    kw, tile = case
    check_tiled_mask(kw, tile)


def test_tiled_mask_literal():
    # 1 x 3 canvas, kernel (1, 3) (every query sees the whole row), tile (1, 2): padded to
    # 1 x 4; the padded query 3 acts as query 2; the padded key 3 is never allowed.
    tiled = Tiled(P.Neighborhood(canvas=(1, 3), kernel=(1, 3)), (1, 2))
    got = eval_mask_mod(tiled.mask_mod(4, 4), 4, 4)
    assert got.tolist() == [[True, True, True, False]] * 4


def test_tiled_lengths_are_the_padded_canvas():
    tiled = Tiled(P.Neighborhood(canvas=(5, 7), kernel=3, extra_kv=2), (2, 4))
    assert tiled.default_lengths() == (48, 50)
    with pytest.raises(ValueError, match="q_len"):
        tiled.mask_mod(35, 37)  # the caller's (raster) lengths are not the tiled lengths
    # A list tile is taken as the tuple.
    assert Tiled(P.Neighborhood(canvas=(5, 7), kernel=3), [2, 4]).tile == (2, 4)


# =============================================================================================
# Tiled layouts, block by block (block = tile)
# =============================================================================================

LAYOUT_CASES = [
    pytest.param(dict(canvas=(8, 8), kernel=3), (2, 4), id="2d-2x4-multiples"),
    pytest.param(dict(canvas=(7, 9), kernel=(3, 5)), (2, 4), id="2d-2x4-padded"),
    pytest.param(dict(canvas=(7, 9), kernel=(2, 4), dilation=(2, 2)), (2, 4), id="2d-2x4-padded-dilated-even"),
    pytest.param(
        dict(canvas=(9, 7), kernel=(3, 3), stride=(3, 2), causal=(True, True)), (4, 2), id="2d-4x2-causal-strided"
    ),
    pytest.param(dict(canvas=(6, 10), kernel=(3, 5), extra_kv=3), (1, 8), id="2d-1x8-padded-extra-kv"),
    pytest.param(dict(canvas=(5, 16), kernel=(5, 7), causal=(False, True)), (1, 8), id="2d-1x8-dense-rows"),
    pytest.param(dict(canvas=(4, 8, 8), kernel=3), (4, 2, 2), id="3d-4x2x2-multiples"),
    pytest.param(
        dict(canvas=(5, 5, 6), kernel=(2, 3, 3), dilation=(2, 1, 2), causal=(True, False, False), extra_kv=2),
        (4, 2, 2), id="3d-4x2x2-padded-everything",
    ),
    pytest.param(dict(canvas=(3, 5, 7), kernel=(2, 3, 4), stride=(1, 3, 2)), (2, 2, 4), id="3d-2x2x4-padded"),
    pytest.param(dict(canvas=(3, 4), kernel=(2, 3), extra_kv=5), (4, 8), id="2d-one-tile-past-the-canvas"),
]


def check_tiled_layout(kw, tile):
    pattern, tiled, mask = check_tiled_mask(kw, tile)
    block = math.prod(tile)
    q_len, kv_len = mask.shape
    layout = tiled.build(q_len, kv_len, block_q=block, block_kv=block)
    expected = check_layout(layout, mask, block, block, f"{tiled!r} with blocks of {block}")
    # The same layout through the base pattern's build(tile=...).
    direct = pattern.build(*pattern.default_lengths(), block_q=block, block_kv=block, tile=tile)
    assert (direct.q_len, direct.kv_len) == (q_len, kv_len)
    assert torch.equal(direct.to_dense()[0, 0], expected)
    assert direct.allowed_pairs() == int(mask.sum())
    return layout, expected


@pytest.mark.parametrize("kw, tile", LAYOUT_CASES)
def test_tiled_layout_examples(kw, tile):
    check_tiled_layout(kw, tile)


@given(neighborhood_and_tile())
@settings(max_examples=60, deadline=None)
def test_tiled_layout_matches_brute(case):
    kw, tile = case
    check_tiled_layout(kw, tile)


def test_tiled_layout_literal():
    # 4 x 4 canvas, blocked 2 x 2 windows (kernel = stride = 2) on 2 x 2 tiles: only the
    # diagonal blocks, full. A 3 x 3 canvas seen whole by every query, padded to 4 x 4:
    # the first tile is full, the tiles holding padding keys are partial.
    _, grid = check_tiled_layout(dict(canvas=(4, 4), kernel=2, stride=2), (2, 2))
    assert grid.tolist() == [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 2]]
    _, grid = check_tiled_layout(dict(canvas=(3, 3), kernel=3), (2, 2))
    assert grid.tolist() == [[2, 1, 1, 1]] * 4


@pytest.mark.parametrize("block_q, block_kv", [(4, 8), (8, 4), (16, 16)], ids=["q-not-a-tile", "kv-not-a-tile", "both"])
def test_tiled_layout_blocks_must_be_tiles(block_q, block_kv):
    tiled = Tiled(P.Neighborhood(canvas=(7, 9), kernel=3), (2, 4))
    with pytest.raises(ValueError, match="tile"):
        tiled.build(*tiled.default_lengths(), block_q=block_q, block_kv=block_kv)


# =============================================================================================
# Tiled attention equals the reference in raster order
# =============================================================================================

# (id, pattern kwargs, tile, heads (q, kv), canvas-shaped inputs)
ATTENTION_CASES = [
    ("2d-multiples", dict(canvas=(4, 8), kernel=3), (2, 4), (2, 2), False),
    ("2d-padded-canvas-shaped", dict(canvas=(5, 7), kernel=(3, 4)), (2, 4), (2, 2), True),
    ("2d-dilated-strided-causal-gqa",
     dict(canvas=(7, 6), kernel=(3, 2), dilation=(2, 1), stride=(2, 2), causal=(True, False)), (4, 4), (4, 2), True),
    ("2d-extra-kv-mqa", dict(canvas=(5, 6), kernel=3, extra_kv=3), (2, 4), (3, 1), False),
    ("2d-extra-kv-canvas-q",
     dict(canvas=(3, 9), kernel=(3, 5), causal=(False, True), extra_kv=2), (1, 8), (2, 1), True),
    ("2d-tile-larger-than-canvas", dict(canvas=(3, 4), kernel=(2, 3)), (4, 8), (2, 2), True),
    ("3d-padded", dict(canvas=(3, 5, 6), kernel=(2, 3, 3)), (4, 2, 2), (2, 2), True),
    ("3d-everything-gqa",
     dict(canvas=(4, 5, 5), kernel=(2, 2, 3), dilation=(1, 2, 1), stride=(2, 1, 3), causal=(True, False, True),
          extra_kv=1), (2, 2, 4), (4, 2), False),
]


def check_tiled_attention(gen, kw, tile, heads, canvas_shaped, batch=2, head_dim=5, head_dim_v=3):
    pattern = P.Neighborhood(**kw)
    canvas, extra = pattern.canvas, pattern.extra_kv
    n = math.prod(canvas)
    q, k, v = make_qkv(gen, batch=batch, heads_q=heads[0], heads_kv=heads[1], q_shape=(n,), kv_shape=(n + extra,),
                       head_dim=head_dim, head_dim_v=head_dim_v, dtype=F64)
    g_out = torch.randn(batch, heads[0], n, head_dim_v, generator=gen, dtype=F64)
    g_lse = torch.randn(batch, heads[0], n, generator=gen, dtype=F64)
    mask = brute.neighborhood_mask(**kw)

    def shaped(t, is_q):
        if canvas_shaped and len(canvas) > 1 and (is_q or not extra):
            return t.reshape(*t.shape[:2], *canvas, t.shape[-1])
        return t

    def grads(out, lse, leaves):
        """(dq, dk, dv) of a gradient into out, then of a gradient into lse."""
        by_out = torch.autograd.grad(out, leaves, g_out, retain_graph=True)
        by_lse = torch.autograd.grad(lse, leaves[:2], g_lse.to(lse.dtype))  # lse does not depend on v
        return (*by_out, *by_lse)

    def run(tile_arg):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        qi, ki, vi = (shaped(t, i == 0) for i, t in enumerate(leaves))
        out, lse = foveate.attention(qi, ki, vi, pattern, backend="reference", tile=tile_arg, return_lse=True)
        assert out.shape == (*qi.shape[:-1], head_dim_v) and lse.shape == qi.shape[:-1]
        out, lse = out.reshape(batch, heads[0], n, head_dim_v), lse.reshape(batch, heads[0], n)
        return out.detach(), lse.detach(), *grads(out, lse, leaves)

    tiled, raster = run(tile), run(None)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    n_out, n_lse = naive_attention(*leaves, mask)
    naive = (n_out.detach(), n_lse.detach(), *grads(n_out, n_lse, leaves))
    labels = ("out", "lse", "dq", "dk", "dv", "dq (lse)", "dk (lse)")
    for label, got, want, want_naive in zip(labels, tiled, raster, naive):
        # Permuted keys change the order of the sums: equal up to rounding. lse is float32,
        # and so is the gradient that flows back through it.
        tol = 2e-6 if "lse" in label else 1e-10
        torch.testing.assert_close(got, want, atol=tol, rtol=tol,
                                   msg=lambda m: f"tile={tile} vs tile=None, {label}: {m}")
        torch.testing.assert_close(got.to(F64), want_naive, atol=tol, rtol=tol,
                                   msg=lambda m: f"tile={tile} vs naive, {label}: {m}")


@pytest.mark.parametrize("name, kw, tile, heads, canvas_shaped", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_tiled_attention_examples(rng, name, kw, tile, heads, canvas_shaped):
    check_tiled_attention(rng, kw, tile, heads, canvas_shaped)


@given(
    neighborhood_and_tile(),
    st.sampled_from([(2, 2), (4, 2), (3, 1)]),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
@settings(max_examples=25, deadline=None)
def test_tiled_attention_matches_brute(case, heads, canvas_shaped, seed):
    kw, tile = case
    check_tiled_attention(torch.Generator().manual_seed(seed), kw, tile, heads, canvas_shaped, batch=1)


def test_tiled_attention_list_tile(rng):
    """A tile given as a list is the tuple."""
    pattern = P.Neighborhood(canvas=(5, 7), kernel=3)
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(35,), head_dim=4)
    a = foveate.attention(q, k, v, pattern, backend="reference", tile=[2, 4])
    b = foveate.attention(q, k, v, pattern, backend="reference", tile=None)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


FLEX_PATTERN = P.Neighborhood(canvas=(32, 24), kernel=3, stride=2)


@pytest.mark.flex
@pytest.mark.skipif("flex" not in foveate.backends.available(), reason="FlexAttention not available")
def test_flex_tile_auto_matches_reference(rng):
    block = foveate.backends.get("flex").block_size
    tile = choose_tile(FLEX_PATTERN, block_q=block, block_kv=block)
    assert tile is not None, "the case must be one where tile='auto' tiles"
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(32, 24), head_dim=16, dtype=torch.float32)
    out = foveate.attention(q, k, v, FLEX_PATTERN, backend="flex", tile="auto")
    ref = foveate.attention(q, k, v, FLEX_PATTERN, backend="reference", tile=None)
    assert out.shape == (1, 2, 32, 24, 16)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    mask = brute.neighborhood_mask((32, 24), 3, stride=2)
    n_out, _ = naive_attention(*(t.to(F64).flatten(2, 3) for t in (q, k, v)), mask)
    torch.testing.assert_close(out.to(F64).flatten(2, 3), n_out, atol=2e-5, rtol=2e-5)


# =============================================================================================
# Bad tiles
# =============================================================================================

NB2 = P.Neighborhood(canvas=(4, 6), kernel=3)
NB3 = P.Neighborhood(canvas=(2, 3, 4), kernel=2)


@pytest.mark.parametrize(
    "pattern, tile",
    [
        pytest.param(NB2, (2,), id="2d-one-entry"),
        pytest.param(NB2, (2, 2, 2), id="2d-three-entries"),
        pytest.param(NB3, (2, 2), id="3d-two-entries"),
        pytest.param(NB2, (), id="empty"),
        pytest.param(NB2, (0, 2), id="zero"),
        pytest.param(NB2, (2, -1), id="negative"),
        pytest.param(NB3, (1, 0, 1), id="3d-zero"),
        pytest.param(NB2, (2.0, 2), id="float"),
        pytest.param(NB2, (2, "2"), id="str-entry"),
        pytest.param(NB2, (True, 2), id="bool"),
        pytest.param(NB2, (2, None), id="none-entry"),
        pytest.param(P.Causal(), (4,), id="causal-1d-pattern"),
        pytest.param(P.SlidingWindow(3), (2,), id="sliding-1d-pattern"),
        pytest.param(NB2 | P.Sinks(2), (2, 2), id="union-with-sinks"),
        pytest.param(NB2 & P.Causal(), (2, 2), id="intersection-with-causal"),
    ],
)
def test_bad_tile_raises(rng, pattern, tile):
    canvas = pattern.canvas
    n = math.prod(canvas) if canvas else 12
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(n,), head_dim=4)
    before = [t.clone() for t in (q, k, v)]
    with pytest.raises(ValueError, match="tile"):
        foveate.attention(q, k, v, pattern, backend="reference", tile=tile)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), before)), "an input was modified"
    with pytest.raises(ValueError, match="tile"):
        Tiled(pattern, tile)
    if isinstance(pattern, P.Neighborhood):
        with pytest.raises(ValueError, match="tile"):
            pattern.build(*pattern.default_lengths(), block_q=4, block_kv=4, tile=tile)


@pytest.mark.parametrize("canvas", [pytest.param((4, 6), id="multiples"), pytest.param((5, 5), id="padded")])
@pytest.mark.parametrize("op", ["union", "intersection"])
def test_compositions_of_canvas_patterns_tile_exactly(canvas, op):
    """A composition of canvas patterns builds its tiled layout from its parts' tiled layouts,
    its undecided pairs evaluated by the tiled mask: block by block the brute-force layout of
    the tiled brute-force mask (padding, extra keys)."""
    a = P.Neighborhood(canvas=canvas, kernel=3, extra_kv=2)
    b = P.Neighborhood(canvas=canvas, kernel=(3, 1), causal=(True, False), extra_kv=2)
    comp = a | b if op == "union" else a & b
    tiled = Tiled(comp, (2, 2))
    q_len, kv_len = tiled.default_lengths()
    layout = comp.build(*comp.default_lengths(), block_q=4, block_kv=4, tile=(2, 2))
    check_layout(layout, brute.pattern_mask(tiled, q_len, kv_len), 4, 4, f"{op} tiled")


@pytest.mark.parametrize("tile", [(4, 4), (8, 8), (8, 32), (2, 32)], ids=["16", "64", "256", "64-long"])
@pytest.mark.skipif("flex" not in foveate.backends.available(), reason="FlexAttention not available")
def test_flex_tile_must_hold_a_block(rng, tile):
    block = foveate.backends.get("flex").block_size
    assert math.prod(tile) != block
    pattern = P.Neighborhood(canvas=(16, 16), kernel=3)
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(16, 16), head_dim=16, dtype=torch.float32)
    with pytest.raises(ValueError, match=rf"tile.*{block}"):
        foveate.attention(q, k, v, pattern, backend="flex", tile=tile)


# =============================================================================================
# candidate_tiles
# =============================================================================================


def next_power_of_two(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def brute_candidates(canvas, size) -> set[tuple[int, ...]]:
    """Every shape of ``size`` tokens whose sides are at most the canvas sides rounded up to
    a power of two (plain loops over all side lengths)."""
    limits = [min(next_power_of_two(n), size) for n in canvas]
    out = set()
    for head in itertools.product(*(range(1, lim + 1) for lim in limits[:-1])):
        rest, p = divmod(size, math.prod(head))
        if p == 0 and 1 <= rest <= limits[-1]:
            out.add(head + (rest,))
    return out


@pytest.mark.parametrize(
    "canvas, size",
    [
        pytest.param((64, 64), 128, id="64x64"),
        pytest.param((32, 24), 128, id="32x24"),
        pytest.param((5, 200), 128, id="thin"),
        pytest.param((3, 3), 128, id="too-small-for-a-block"),
        pytest.param((1, 1000), 64, id="one-row"),
        pytest.param((8, 32, 32), 128, id="3d"),
        pytest.param((3, 17, 9), 64, id="3d-odd"),
        pytest.param((4, 4, 4), 64, id="3d-whole-canvas"),
        pytest.param((6, 10), 12, id="not-a-power-of-two"),
        pytest.param((12,), 8, id="1d"),
    ],
)
def test_candidate_tiles(canvas, size):
    got = candidate_tiles(canvas, size)
    assert len(got) == len(set(got)), f"duplicates: {got}"
    for t in got:
        assert isinstance(t, tuple) and len(t) == len(canvas)
        assert all(isinstance(s, int) and s >= 1 for s in t)
        assert math.prod(t) == size, f"{t} does not hold {size} tokens"
        assert all(s <= next_power_of_two(n) for s, n in zip(t, canvas)), f"{t} does not fit {canvas}"
        if size & (size - 1) == 0:
            assert all(s & (s - 1) == 0 for s in t), f"{t}: sides must be powers of two"
    assert set(got) == brute_candidates(canvas, size)


@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple),
    st.sampled_from([1, 2, 8, 16, 32, 64, 128, 6, 24]),
)
@settings(max_examples=60, deadline=None)
def test_candidate_tiles_matches_brute(canvas, size):
    got = candidate_tiles(canvas, size)
    assert len(got) == len(set(got))
    assert all(math.prod(t) == size and len(t) == len(canvas) for t in got)
    assert set(got) == brute_candidates(canvas, size)


def test_candidate_tiles_default_size():
    assert set(candidate_tiles((16, 16))) == {(8, 16), (16, 8)}


def test_tile_keys_moves_the_canvas_and_keeps_the_extra_tokens():
    order = TiledOrder((5, 6), (4, 4))  # padded to 8 x 8
    x = torch.randn(2, 3, 30 + 7, 4)
    tiled = order.tile_keys(x)
    assert tiled.shape == (2, 3, 64 + 7, 4)
    assert torch.equal(tiled[:, :, :64], order.tile_tokens(x[:, :, :30]))
    assert torch.equal(tiled[:, :, 64:], x[:, :, 30:])
    assert torch.equal(order.untile_keys(tiled), x)
    assert torch.equal(order.untile_keys(order.tile_keys(x[:, :, :30])), x[:, :, :30])
