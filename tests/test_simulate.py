"""The simulator (``foveate.simulate``), ``block_counts`` and the tile choice, against brute
force: block grids of the brute-force masks of ``brute.py`` (in raster order, or in its
brute-force tiled order) and the layouts' ``to_dense()``.

docs/design.md ("Simulator"): ``blocks_total`` is the dense block count on the caller's lengths;
``blocks_full`` / ``blocks_partial`` the visited blocks of the layout (in tiled order, padding
included); ``pairs_useful`` the allowed pairs of the pattern (caller's order);
``pairs_computed`` the pairs inside visited blocks, clipped at the sequence ends (in tiled
order, the padded sequence); ``speedup_bound = blocks_total / visited``.
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
from foveate.patterns.canvas_layout import block_counts
from foveate.simulator import SimulationRecord, choose_tile, simulate
from foveate.tiling import Tiled, candidate_tiles

from strategies import neighborhood_and_tile, neighborhood_params, raster_blocks, tile_blocks, tile_of

# =============================================================================================
# Brute force
# =============================================================================================


def grid_counts(grid: torch.Tensor, q_len: int, kv_len: int, block_q: int, block_kv: int) -> dict:
    """Full / partial blocks and the pairs inside visited blocks of an int8 block grid."""
    areas = brute.block_areas(q_len, kv_len, block_q, block_kv)
    assert areas.shape == grid.shape
    return dict(
        blocks_full=int((grid == brute.FULL).sum()),
        blocks_partial=int((grid == brute.PARTIAL).sum()),
        pairs_computed=int(areas[grid > 0].sum()),
    )


def fast_block_grid(mask: torch.Tensor, block_q: int, block_kv: int) -> torch.Tensor:
    """``brute.block_grid`` with tensor sums (for the larger searches); checked equal to it
    in :func:`test_fast_block_grid_is_brute_block_grid`."""
    q_len, kv_len = mask.shape
    nq, nkv = -(-q_len // block_q), -(-kv_len // block_kv)
    padded = torch.zeros(nq * block_q, nkv * block_kv, dtype=torch.int64)
    exists = torch.zeros_like(padded)
    padded[:q_len, :kv_len] = mask.long()
    exists[:q_len, :kv_len] = 1
    allowed = padded.view(nq, block_q, nkv, block_kv).sum(dim=(1, 3))
    existing = exists.view(nq, block_q, nkv, block_kv).sum(dim=(1, 3))
    grid = torch.where(allowed == existing, brute.FULL, brute.PARTIAL)
    return torch.where(allowed == 0, brute.EMPTY, grid).to(torch.int8)


def expected_record(caller_mask, order_mask, block_q, block_kv) -> dict:
    """The record's counts from the masks: ``caller_mask`` in the caller's order and lengths,
    ``order_mask`` in the order the kernel runs (the same mask in raster order; the padded
    tiled mask in tiled order)."""
    q_len, kv_len = caller_mask.shape
    t_q, t_kv = order_mask.shape
    counts = grid_counts(brute.block_grid(order_mask, block_q, block_kv), t_q, t_kv, block_q, block_kv)
    total = math.ceil(q_len / block_q) * math.ceil(kv_len / block_kv)
    visited = counts["blocks_full"] + counts["blocks_partial"]
    return dict(
        q_len=q_len, kv_len=kv_len, block_q=block_q, block_kv=block_kv, blocks_total=total,
        pairs_useful=int(caller_mask.sum()), speedup_bound=total / visited if visited else math.inf, **counts,
    )


def layout_counts(layout) -> dict:
    """The same counts read from a built layout's ``to_dense()``."""
    return grid_counts(layout.to_dense()[0, 0], layout.q_len, layout.kv_len, layout.block_q, layout.block_kv)


def check_record(rec: SimulationRecord, expected: dict, layout, what) -> None:
    for name, want in expected.items():
        got = getattr(rec, name)
        if name == "speedup_bound":
            assert got == pytest.approx(want), f"{what}: speedup_bound {got} != {want}"
        else:
            assert got == want, f"{what}: {name} {got} != brute force {want}"
    for name, want in layout_counts(layout).items():
        assert getattr(rec, name) == want, f"{what}: {name} {getattr(rec, name)} != {want} from to_dense()"
    visited = expected["blocks_full"] + expected["blocks_partial"]
    assert rec.blocks_visited == visited
    assert rec.density == pytest.approx(expected["pairs_useful"] / (expected["q_len"] * expected["kv_len"]))
    if expected["pairs_computed"]:
        assert rec.block_efficiency == pytest.approx(expected["pairs_useful"] / expected["pairs_computed"])
    assert expected["pairs_useful"] <= expected["pairs_computed"]
    d = rec.as_dict()
    assert d["blocks_visited"] == visited and d["pairs_useful"] == expected["pairs_useful"]


def simulate_sequence(pattern, mask, block_q, block_kv):
    q_len, kv_len = mask.shape
    rec = simulate(pattern, q_len=q_len, kv_len=kv_len, block_q=block_q, block_kv=block_kv)
    assert rec.tile is None and rec.pattern == repr(pattern)
    layout = pattern.build(q_len, kv_len, block_q=block_q, block_kv=block_kv)
    check_record(rec, expected_record(mask, mask, block_q, block_kv), layout, f"{pattern!r} ({q_len}, {kv_len})")
    return rec


def simulate_canvas(kw, block_q, block_kv, tile=None):
    """simulate() of a neighborhood in raster order (``tile=None``) or tiled order."""
    pattern = P.Neighborhood(**kw)
    mask = brute.neighborhood_mask(**kw)
    rec = simulate(pattern, block_q=block_q, block_kv=block_kv, tile=tile)
    assert rec.tile == tile
    if tile is None:
        order_mask = mask
        layout = pattern.build(*mask.shape, block_q=block_q, block_kv=block_kv)
    else:
        order_mask = brute.tiled_mask(mask, kw["canvas"], tile, kw.get("extra_kv", 0))
        tiled = Tiled(pattern, tile)
        layout = tiled.build(*tiled.default_lengths(), block_q=block_q, block_kv=block_kv)
    check_record(rec, expected_record(mask, order_mask, block_q, block_kv), layout, f"{pattern!r}, tile={tile}")
    return rec


# =============================================================================================
# simulate(): 1-D patterns
# =============================================================================================

SEQUENCE_CASES = [
    pytest.param(P.Causal(), lambda q, k: brute.causal_mask(q, k), 32, 32, 8, 8, id="causal"),
    pytest.param(P.Causal(), lambda q, k: brute.causal_mask(q, k), 13, 30, 4, 8, id="causal-q<kv"),
    pytest.param(P.Causal(), lambda q, k: brute.causal_mask(q, k), 30, 13, 8, 4, id="causal-q>kv-empty-rows"),
    pytest.param(P.SlidingWindow(5), lambda q, k: brute.sliding_window_mask(q, k, 5), 37, 37, 8, 8, id="window-5"),
    pytest.param(
        P.SlidingWindow(3, 6), lambda q, k: brute.sliding_window_mask(q, k, 3, 6), 21, 45, 7, 16, id="window-3-6-q<kv"
    ),
    pytest.param(
        P.SlidingWindow(2, 1), lambda q, k: brute.sliding_window_mask(q, k, 2, 1), 40, 17, 16, 3, id="window-2-1-q>kv"
    ),
    pytest.param(P.Dense(), lambda q, k: brute.dense_mask(q, k), 20, 9, 64, 4, id="dense-block-past-the-end"),
]


@pytest.mark.parametrize("pattern, mask_fn, q_len, kv_len, block_q, block_kv", SEQUENCE_CASES)
def test_simulate_sequence_examples(pattern, mask_fn, q_len, kv_len, block_q, block_kv):
    simulate_sequence(pattern, mask_fn(q_len, kv_len), block_q, block_kv)


@given(
    st.sampled_from(["causal", "window"]), st.integers(0, 12), st.integers(0, 12),
    st.integers(1, 40), st.integers(1, 40), st.integers(1, 20), st.integers(1, 20),
)
@settings(max_examples=80, deadline=None)
def test_simulate_sequence_matches_brute(kind, left, right, q_len, kv_len, block_q, block_kv):
    if kind == "causal":
        pattern, mask = P.Causal(), brute.causal_mask(q_len, kv_len)
    else:
        pattern, mask = P.SlidingWindow(left, right), brute.sliding_window_mask(q_len, kv_len, left, right)
    simulate_sequence(pattern, mask, block_q, block_kv)


def test_simulate_literal():
    # 8 x 8 causal, blocks of 4: 3 of 4 blocks visited (2 partial on the diagonal, 1 full).
    rec = simulate(P.Causal(), q_len=8, block_q=4, block_kv=4)
    assert (rec.q_len, rec.kv_len) == (8, 8)  # kv_len defaults to q_len
    assert (rec.blocks_total, rec.blocks_full, rec.blocks_partial) == (4, 1, 2)
    assert (rec.pairs_useful, rec.pairs_computed) == (36, 48)
    assert rec.speedup_bound == pytest.approx(4 / 3)
    # Blocks past the end are clipped: 5 x 3 dense, blocks of 4: 2 x 1 blocks, 15 pairs.
    rec = simulate(P.Dense(), q_len=5, kv_len=3, block_q=4, block_kv=4)
    assert (rec.blocks_total, rec.blocks_full, rec.pairs_computed, rec.pairs_useful) == (2, 2, 15, 15)


# =============================================================================================
# simulate(): neighborhoods, raster and tiled
# =============================================================================================

CANVAS_CASES = [
    pytest.param(dict(canvas=(8, 16), kernel=(3, 5)), 16, 16, None, id="2d-raster-product"),
    pytest.param(dict(canvas=(7, 9), kernel=3), 5, 7, None, id="2d-raster-box-odd"),
    pytest.param(dict(canvas=(7, 9), kernel=(3, 4), dilation=(2, 1), extra_kv=3), 8, 8, None, id="2d-raster-extra"),
    pytest.param(dict(canvas=(7, 9), kernel=3), 8, 8, (2, 4), id="2d-tiled-padded"),
    pytest.param(
        dict(canvas=(7, 9), kernel=(3, 4), stride=(3, 2), causal=(True, False), extra_kv=3), 8, 8, (4, 2),
        id="2d-tiled-padded-causal-extra",
    ),
    pytest.param(dict(canvas=(5, 16), kernel=(3, 7)), 8, 8, (1, 8), id="2d-tiled-1x8"),
    pytest.param(dict(canvas=(5, 6, 7), kernel=3), 11, 13, None, id="3d-raster-box-odd"),
    pytest.param(dict(canvas=(4, 8, 8), kernel=(2, 3, 3), causal=(True, False, False)), 64, 32, None,
                 id="3d-raster-product"),
    pytest.param(dict(canvas=(3, 5, 7), kernel=(2, 3, 3), dilation=(1, 1, 2)), 16, 16, (4, 2, 2), id="3d-tiled-padded"),
    pytest.param(dict(canvas=(3, 4), kernel=2, extra_kv=5), 32, 32, (4, 8), id="2d-one-tile-past-the-canvas"),
    pytest.param(dict(canvas=(13,), kernel=4, dilation=3, stride=2, causal=True), 4, 5, None, id="1d-neighborhood"),
]


@pytest.mark.parametrize("kw, block_q, block_kv, tile", CANVAS_CASES)
def test_simulate_canvas_examples(kw, block_q, block_kv, tile):
    simulate_canvas(kw, block_q, block_kv, tile)


@given(st.data())
@settings(max_examples=50, deadline=None)
def test_simulate_raster_matches_brute(data):
    kw = data.draw(neighborhood_params(ndim=data.draw(st.sampled_from([2, 3]), label="ndim")))
    block_q, block_kv = data.draw(raster_blocks(kw), label="block_q, block_kv")
    simulate_canvas(kw, block_q, block_kv)


@given(neighborhood_and_tile())
@settings(max_examples=40, deadline=None)
def test_simulate_tiled_matches_brute(case):
    kw, tile = case
    block = math.prod(tile)
    simulate_canvas(kw, block, block, tile)


def test_simulate_tiled_literal():
    # 3 x 3 canvas seen whole by every query, 2 x 2 tiles: padded to 4 x 4 (16 tokens); the
    # first tile is full, the 3 tiles holding padding keys partial, for each of the 4 q tiles.
    rec = simulate(P.Neighborhood(canvas=(3, 3), kernel=3), block_q=4, block_kv=4, tile=(2, 2))
    assert rec.blocks_total == 3 * 3  # the caller's 9 tokens in blocks of 4
    assert (rec.blocks_full, rec.blocks_partial) == (4, 12)
    assert rec.pairs_useful == 81 and rec.pairs_computed == 256
    assert rec.speedup_bound == pytest.approx(9 / 16)


def test_simulate_tile_auto_is_choose_tile():
    pattern = P.Neighborhood(canvas=(32, 24), kernel=3, stride=2)
    tile = choose_tile(pattern)
    assert tile is not None
    auto = simulate(pattern, tile="auto")
    assert auto == simulate(pattern, tile=tile) and auto.tile == tile
    # Patterns that are not tiled stay in raster order.
    assert simulate(P.Causal(), q_len=300, tile="auto").tile is None
    assert simulate(P.Neighborhood(canvas=(300,), kernel=9), tile="auto").tile is None


def test_simulate_is_public():
    """docs/design.md: ``foveate.simulate(pattern, ...)`` is a public name of the package."""
    assert callable(foveate.simulate), f"foveate.simulate is {foveate.simulate!r}, not the simulator"
    assert foveate.simulate(P.Causal(), q_len=8, block_q=4, block_kv=4).blocks_partial == 2


# =============================================================================================
# block_counts()
# =============================================================================================


def raster_blocks_are_tiles(canvas, block: int) -> bool:
    """Whether every block of ``block`` raster tokens is a box of the canvas, all of one shape."""
    coords = list(itertools.product(*(range(n) for n in canvas)))
    shapes = set()
    for start in range(0, len(coords), block):
        part = coords[start : start + block]
        shape = tuple(max(c[a] for c in part) - min(c[a] for c in part) + 1 for a in range(len(canvas)))
        if math.prod(shape) != len(part):  # distinct coordinates fill their bounding box
            return False
        shapes.add(shape)
    return len(shapes) == 1


def check_block_counts(kw, block_q, block_kv, tile):
    pattern = P.Neighborhood(**kw)
    got = block_counts(pattern, block_q=block_q, block_kv=block_kv, tile=tile)
    n, extra = math.prod(kw["canvas"]), kw["extra_kv"]
    if tile is None:
        q_tiles = raster_blocks_are_tiles(kw["canvas"], block_q)
        # A kv block is a tile of the canvas, and none holds canvas and extra tokens.
        kv_tiles = raster_blocks_are_tiles(kw["canvas"], block_kv) and (extra == 0 or n % block_kv == 0)
    else:
        q_tiles = kv_tiles = block_q == block_kv == math.prod(tile)
    what = f"{pattern!r}, blocks ({block_q}, {block_kv}), tile={tile}"
    if not (q_tiles and kv_tiles):
        assert got is None, f"{what}: blocks are not tiles, block_counts gave {got}"
        return
    assert got is not None, f"{what}: blocks are tiles, block_counts gave None"
    mask = brute.neighborhood_mask(**kw)
    if tile is None:
        layout = pattern.build(n, n + extra, block_q=block_q, block_kv=block_kv)
    else:
        mask = brute.tiled_mask_indexed(mask, kw["canvas"], tile, extra)
        layout = pattern.build(n, n + extra, block_q=block_q, block_kv=block_kv, tile=tile)
    grid = brute.block_grid(mask, block_q, block_kv)
    expected = (int((grid > 0).sum()), int((grid == brute.FULL).sum()))
    assert got == expected, f"{what}: block_counts {got} != brute force (visited, full) {expected}"
    dense = layout.to_dense()[0, 0]
    assert got == (int((dense > 0).sum()), int((dense == brute.FULL).sum()))
    assert got == (layout.num_visited(), int(layout.full_kv_num_blocks.sum()))


BLOCK_COUNT_CASES = [
    pytest.param(dict(canvas=(8, 16), kernel=(3, 5), extra_kv=0), 16, 32, None, id="raster-rows"),
    pytest.param(dict(canvas=(8, 16), kernel=3, extra_kv=0), 24, 16, None, id="raster-q-not-a-tile"),
    pytest.param(dict(canvas=(8, 16), kernel=3, extra_kv=0), 16, 8, None, id="raster-half-rows"),
    pytest.param(dict(canvas=(8, 16), kernel=3, extra_kv=0), 200, 300, None, id="raster-whole-canvas"),
    pytest.param(dict(canvas=(8, 8), kernel=3, extra_kv=8), 16, 16, None, id="raster-extra-whole-block"),
    pytest.param(dict(canvas=(8, 8), kernel=3, extra_kv=5), 16, 16, None, id="raster-extra-short-block"),
    pytest.param(dict(canvas=(8, 8), kernel=3, extra_kv=5), 16, 24, None, id="raster-extra-straddling-block"),
    pytest.param(dict(canvas=(7, 9), kernel=3, extra_kv=0), 9, 9, None, id="raster-odd-rows"),
    pytest.param(dict(canvas=(7, 9), kernel=3, extra_kv=0), 5, 5, None, id="raster-not-tiles"),
    pytest.param(dict(canvas=(4, 6, 6), kernel=3, extra_kv=2), 72, 36, None, id="raster-3d-planes"),
    pytest.param(dict(canvas=(7, 9), kernel=(3, 4), dilation=(2, 1), extra_kv=3), 8, 8, (2, 4), id="tiled-padded"),
    pytest.param(dict(canvas=(7, 9), kernel=3, extra_kv=0), 8, 16, (2, 4), id="tiled-kv-not-the-tile"),
    pytest.param(dict(canvas=(3, 5, 7), kernel=(2, 3, 3), extra_kv=1), 16, 16, (4, 2, 2), id="tiled-3d-padded"),
]


@pytest.mark.parametrize("kw, block_q, block_kv, tile", BLOCK_COUNT_CASES)
def test_block_counts_examples(kw, block_q, block_kv, tile):
    check_block_counts(kw, block_q, block_kv, tile)


@given(st.data())
@settings(max_examples=120, deadline=None)
def test_block_counts_matches_brute(data):
    kw = data.draw(neighborhood_params())
    if len(kw["canvas"]) > 1 and data.draw(st.booleans(), label="tiled"):
        tile = data.draw(tile_of(kw["canvas"]), label="tile")
        size = math.prod(tile)
        block_q = data.draw(st.sampled_from([size, size, size + 1]), label="block_q")
        block_kv = data.draw(st.sampled_from([size, size, 2 * size]), label="block_kv")
    else:
        tile = None
        block_q, block_kv = data.draw(raster_blocks(kw), label="block_q, block_kv")
    check_block_counts(kw, block_q, block_kv, tile)


def test_raster_blocks_are_tiles_brute_force():
    """The brute-force tile test of this file, on hand-checked cases."""
    assert raster_blocks_are_tiles((8, 16), 32)  # 2 rows
    assert raster_blocks_are_tiles((8, 16), 8)  # half rows
    assert not raster_blocks_are_tiles((8, 16), 24)  # 1.5 rows
    assert not raster_blocks_are_tiles((6, 4), 16)  # 4 rows, then 2 rows
    assert raster_blocks_are_tiles((6, 4), 100)  # one block: the whole canvas
    assert raster_blocks_are_tiles((4, 6, 6), 72)  # 2 planes
    assert set(tile_blocks((8, 16))) <= {b for b in range(1, 129) if raster_blocks_are_tiles((8, 16), b)}


# =============================================================================================
# choose_tile()
# =============================================================================================


def brute_cost(kw, block, tile):
    """(visited, partial) blocks of the neighborhood in raster (``tile=None``) or tiled order."""
    mask = brute.neighborhood_mask(**kw)
    if tile is not None:
        mask = brute.tiled_mask_indexed(mask, kw["canvas"], tile, kw.get("extra_kv", 0))
    grid = fast_block_grid(mask, block, block)
    return int((grid > 0).sum()), int((grid == brute.PARTIAL).sum())


def check_choose_tile(kw, block):
    pattern = P.Neighborhood(**kw)
    got = choose_tile(pattern, block_q=block, block_kv=block)
    costs = {None: brute_cost(kw, block, None)}
    for tile in candidate_tiles(kw["canvas"], block):
        costs[tile] = brute_cost(kw, block, tile)
    best = min(costs.values())
    what = f"choose_tile({pattern!r}, block={block}) = {got}; costs {costs}"
    if costs[None] == best:
        assert got is None, f"{what}: no tile beats raster order"
    else:
        assert got in costs and got is not None, f"{what}: a tile beats raster order"
        assert costs[got] == best, f"{what}: not the best (fewest visited, then fewest partial)"
    return got, costs


CHOOSE_CASES = [
    # (pattern kwargs, block, whether a tile beats raster order: the premise of the case)
    pytest.param(dict(canvas=(16, 16), kernel=5), 16, False, id="16x16-k5-b16-raster"),
    pytest.param(dict(canvas=(12, 20), kernel=(3, 7), extra_kv=3), 16, False, id="12x20-extra-b16-raster"),
    pytest.param(dict(canvas=(9, 13), kernel=3, stride=2, causal=(True, False)), 8, True,
                 id="9x13-causal-strided-b8-tiled"),
    pytest.param(dict(canvas=(8, 12), kernel=(1, 5)), 16, True, id="8x12-rows-b16-tiled"),
    pytest.param(dict(canvas=(4, 8, 8), kernel=3), 16, True, id="3d-4x8x8-b16-tiled"),
    pytest.param(dict(canvas=(5, 6, 7), kernel=(2, 3, 3), dilation=(1, 2, 1)), 8, True, id="3d-odd-dilated-b8-tiled"),
]


@pytest.mark.parametrize("kw, block, tiles", CHOOSE_CASES)
def test_choose_tile_examples(kw, block, tiles):
    got, costs = check_choose_tile(kw, block)
    assert (got is not None) == tiles, f"premise: a tile {'beats' if tiles else 'does not beat'} raster, {costs}"


@given(st.data())
@settings(max_examples=40, deadline=None)
def test_choose_tile_is_optimal(data):
    ndim = data.draw(st.sampled_from([2, 3]), label="ndim")
    kw = data.draw(neighborhood_params(ndim=ndim))
    block = data.draw(st.sampled_from([4, 8, 16]), label="block")
    check_choose_tile(kw, block)


@pytest.mark.parametrize(
    "pattern, block_q, block_kv",
    [
        pytest.param(P.Neighborhood(canvas=(512,), kernel=33), 128, 128, id="1d-canvas"),
        pytest.param(P.Neighborhood(canvas=(64,), kernel=5), 8, 8, id="1d-canvas-small-blocks"),
        pytest.param(P.Causal(), 128, 128, id="causal"),
        pytest.param(P.SlidingWindow(64), 128, 128, id="sliding"),
        pytest.param(P.Neighborhood(canvas=(32, 24), kernel=3, stride=2) | P.Causal(), 128, 128,
                     id="composition-with-a-sequence-part"),
        pytest.param(P.Neighborhood(canvas=(32, 24), kernel=3, stride=2), 128, 64, id="block-q!=block-kv"),
        pytest.param(P.Neighborhood(canvas=(32, 24), kernel=3, stride=2), 64, 128, id="block-q<block-kv"),
    ],
)
def test_choose_tile_none(pattern, block_q, block_kv):
    assert choose_tile(pattern, block_q=block_q, block_kv=block_kv) is None


def test_fast_block_grid_is_brute_block_grid():
    gen = torch.Generator().manual_seed(0)
    for q_len, kv_len, bq, bkv in [(13, 17, 4, 5), (8, 8, 8, 8), (20, 9, 3, 16), (5, 30, 7, 1)]:
        for density in (0.0, 0.3, 1.0):
            mask = torch.rand(q_len, kv_len, generator=gen) < density
            assert torch.equal(fast_block_grid(mask, bq, bkv), brute.block_grid(mask, bq, bkv))
    mask = brute.neighborhood_mask((7, 9), 3, extra_kv=2)
    assert torch.equal(fast_block_grid(mask, 8, 8), brute.block_grid(mask, 8, 8))


# =============================================================================================
# Bad arguments
# =============================================================================================


@pytest.mark.parametrize(
    "pattern, kwargs, match",
    [
        pytest.param(P.Causal(), {}, "q_len", id="causal-no-lengths"),
        pytest.param(P.SlidingWindow(4), dict(kv_len=16), "q_len", id="window-kv-len-only"),
        pytest.param(P.Neighborhood(canvas=(4, 6), kernel=3), dict(tile="best"), "tile", id="unknown-tile-string"),
        pytest.param(P.Neighborhood(canvas=(4, 6), kernel=3), dict(tile=""), "tile", id="empty-tile-string"),
        pytest.param(P.Neighborhood(canvas=(4, 6), kernel=3), dict(tile=(2, 2, 2)), "tile", id="tile-wrong-length"),
        pytest.param(P.Neighborhood(canvas=(4, 6), kernel=3), dict(tile=(0, 4)), "tile", id="tile-zero"),
        pytest.param(P.Neighborhood(canvas=(4, 6), kernel=3), dict(tile=(2, 2)), "tile", id="tile-not-the-block"),
        pytest.param(P.Causal(), dict(q_len=16, tile=(4,)), "tile", id="tile-on-causal"),
        pytest.param(P.Neighborhood(canvas=(4, 6), kernel=3), dict(q_len=20), "q_len", id="canvas-wrong-length"),
    ],
)
def test_simulate_bad_arguments(pattern, kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate(pattern, **kwargs)


def test_simulate_sums_every_head_of_a_selection():
    """A layout with several (batch, head) slots counts all of them, the dense total
    included: the bound and the density are those of the whole selection."""
    from foveate.patterns import SelectedBlocks

    gen = torch.Generator().manual_seed(3)
    selected = torch.rand(2, 3, 4, 6, generator=gen) < 0.4
    selected[..., 0] = True  # every query block sees a key
    q_len, kv_len = 4 * 32 - 5, 6 * 32
    whole = SelectedBlocks(selected, q_len=q_len, kv_len=kv_len, query_block=32, block=32, causal=False)
    record = simulate(whole, q_len=q_len, kv_len=kv_len, block_q=32, block_kv=32)
    parts = [simulate(SelectedBlocks(selected[b:b + 1, h:h + 1], q_len=q_len, kv_len=kv_len, query_block=32,
                                     block=32, causal=False), q_len=q_len, kv_len=kv_len, block_q=32, block_kv=32)
             for b in range(2) for h in range(3)]
    assert record.heads == 6 and all(p.heads == 1 for p in parts)
    for name in ("blocks_total", "blocks_full", "blocks_partial", "pairs_useful", "pairs_computed"):
        assert getattr(record, name) == sum(getattr(p, name) for p in parts), name
    assert record.blocks_total == 6 * 4 * 6
    assert record.blocks_visited == int(selected.sum())
    assert record.speedup_bound == pytest.approx(6 * 4 * 6 / int(selected.sum()))
    assert record.density == pytest.approx(sum(p.pairs_useful for p in parts) / (6 * q_len * kv_len))
