"""``Halo`` (HaloNet) and ``TileNeighborhood`` (Sliding Tile Attention): masks against
brute-force definitions written here with loops over coordinates, exact layouts (raster and,
for STA, tiled), attention on the torch and triton backends against the reference, argument
checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import foveate
from foveate.patterns import Neighborhood
from foveate.patterns.canvas_layout import block_counts
from foveate.patterns.halo import Halo
from foveate.patterns.kernel_mask import GroupWindow
from foveate.patterns.tile_neighborhood import TileNeighborhood
from foveate.simulator import choose_tile
from foveate.tiling import Tiled

import brute
from kernel_spy import needs_triton
from layout_checks import check_layout
from naive import mask_from_mod

# -- brute force: loops over canvas coordinates ------------------------------------------------


def _coords(canvas):
    return list(itertools.product(*(range(n) for n in canvas)))  # raster order


def _mask_from_axis_rule(canvas, seen, extra_kv=0):
    """``(N, N + extra_kv)``: ``seen(axis, y_query, y_key)`` on every axis; extra keys always."""
    coords = _coords(canvas)
    rows = []
    for qc in coords:
        row = [all(seen(a, qc[a], kc[a]) for a in range(len(canvas))) for kc in coords]
        rows.append(row + [True] * extra_kv)
    return torch.tensor(rows, dtype=torch.bool).reshape(len(coords), len(coords) + extra_kv)


def halo_brute(canvas, block, halo, extra_kv=0):
    """HaloNet: the query's block extended by the halo, clipped at the border."""
    ndim = len(canvas)
    block = (block,) * ndim if isinstance(block, int) else block
    halo = (halo,) * ndim if isinstance(halo, int) else halo

    def seen(a, y, k):
        first = (y // block[a]) * block[a]
        keys = [x for x in range(first - halo[a], first + block[a] + halo[a]) if 0 <= x < canvas[a]]
        return k in keys

    return _mask_from_axis_rule(canvas, seen, extra_kv)


def sta_brute(canvas, tile, window, extra_kv=0):
    """STA's released mask: the window's centre tile clamped to ``window // 2`` tiles from the
    grid's borders; keys in tiles within ``window // 2`` of the centre."""
    ndim = len(canvas)
    tile = (tile,) * ndim if isinstance(tile, int) else tile
    window = (window,) * ndim if isinstance(window, int) else window

    def seen(a, y, k):
        grid, r = canvas[a] // tile[a], window[a] // 2
        centre = min(max(y // tile[a], r), grid - 1 - r)
        return abs(centre - k // tile[a]) <= r

    return _mask_from_axis_rule(canvas, seen, extra_kv)


def _mask_of(pattern, q_len=None, kv_len=None):
    if q_len is None:
        q_len, kv_len = pattern.default_lengths()
    return mask_from_mod(pattern.mask_mod(q_len, kv_len), 1, 1, q_len, kv_len)[0, 0]


HALOS = [  # canvas, block, halo
    ((13,), 4, 2),
    ((11,), 3, 0),
    ((5,), 8, 1),  # one block larger than the canvas
    ((7, 9), (3, 4), (1, 2)),
    ((9, 10), 4, 5),  # halo larger than the block
    ((6, 8), 2, 1),
    ((4, 5, 6), (2, 3, 4), (1, 0, 2)),
    ((3, 4, 5), 2, 1),
]

STAS = [  # canvas, tile, window
    ((24,), 4, 3),
    ((20,), 5, 1),
    ((12, 16), (3, 4), (3, 1)),
    ((8, 12), (2, 3), (3, 3)),
    ((8, 12), (4, 2), 1),
    ((4, 6, 8), (2, 2, 2), (1, 3, 3)),
    ((6, 4, 8), (2, 2, 4), (3, 1, 1)),
]


# -- masks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("canvas, block, halo", HALOS)
def test_halo_mask(canvas, block, halo):
    assert torch.equal(_mask_of(Halo(canvas, block, halo)), halo_brute(canvas, block, halo))


@pytest.mark.parametrize("canvas, tile, window", STAS)
def test_tile_neighborhood_mask(canvas, tile, window):
    pattern = TileNeighborhood(canvas, tile, window)
    expected = sta_brute(canvas, tile, window)
    assert torch.equal(_mask_of(pattern), expected)
    # GNA's view: the neighborhood of kernel window * tile and stride tile has the same keys.
    t, w = pattern.tile, pattern.window
    same = Neighborhood(canvas, tuple(a * b for a, b in zip(w, t)), stride=t)
    assert torch.equal(_mask_of(same), expected)


def test_extra_kv():
    halo, sta = Halo((5, 6), 2, 1, extra_kv=3), TileNeighborhood((4, 6), 2, (1, 3), extra_kv=5)
    assert halo.default_lengths() == (30, 33) and sta.default_lengths() == (24, 29)
    assert torch.equal(_mask_of(halo), halo_brute((5, 6), 2, 1, extra_kv=3))
    assert torch.equal(_mask_of(sta), sta_brute((4, 6), 2, (1, 3), extra_kv=5))


# -- layouts ---------------------------------------------------------------------------------------


BLOCKS = [(8, 8), (16, 16), (13, 7), (32, 16), (64, 64)]


@pytest.mark.parametrize("canvas, block, halo", HALOS)
def test_halo_layout(canvas, block, halo):
    pattern = Halo(canvas, block, halo)
    mask = halo_brute(canvas, block, halo)
    n = math.prod(canvas)
    # + whole rows (the product path): blocks of canvas[-1] tokens
    for bq, bkv in BLOCKS + [(canvas[-1], canvas[-1]), (canvas[-1], 2 * canvas[-1])]:
        layout = pattern.build(n, n, block_q=bq, block_kv=bkv)
        check_layout(layout, mask, bq, bkv, f"{pattern} blocks {bq}x{bkv}")


@pytest.mark.parametrize("canvas, tile, window", STAS)
def test_tile_neighborhood_layout_raster(canvas, tile, window):
    pattern = TileNeighborhood(canvas, tile, window)
    mask = sta_brute(canvas, tile, window)
    n = math.prod(canvas)
    for bq, bkv in BLOCKS + [(canvas[-1], canvas[-1])]:
        layout = pattern.build(n, n, block_q=bq, block_kv=bkv)
        check_layout(layout, mask, bq, bkv, f"{pattern} blocks {bq}x{bkv}")


def _tiled_orders(pattern):
    """The STA tile itself and, per axis, a divisor of it (tiles inside STA's tiles), then a
    tile that does not divide the canvas (padding)."""
    own = pattern.tile
    half = tuple(t // 2 if t % 2 == 0 else t for t in own)
    return [own, half, tuple(t + 1 for t in own)]


@pytest.mark.parametrize("canvas, tile, window", STAS)
def test_tile_neighborhood_layout_tiled(canvas, tile, window):
    pattern = TileNeighborhood(canvas, tile, window)
    raster = sta_brute(canvas, tile, window)
    for order_tile in _tiled_orders(pattern):
        block = math.prod(order_tile)
        tiled = Tiled(pattern, order_tile)
        q_len, kv_len = tiled.default_lengths()
        mask = brute.tiled_mask(raster, canvas, order_tile)
        assert torch.equal(_mask_of(tiled), mask)
        layout = tiled.build(q_len, kv_len, block_q=block, block_kv=block)
        what = f"{pattern} in tiles {order_tile}"
        expected = check_layout(layout, mask, block, block, what)
        assert block_counts(pattern, block_q=block, block_kv=block, tile=order_tile) == (
            int((expected > 0).sum()), int((expected == brute.FULL).sum()))
        inside = all(t % o == 0 for t, o in zip(pattern.tile, order_tile))
        if inside:  # blocks inside STA's tiles: every visited block full, no mask work
            assert layout.num_full() == layout.num_visited() > 0, what


def test_tile_neighborhood_with_extra_kv_tiled():
    pattern = TileNeighborhood((4, 8), (2, 4), (1, 1), extra_kv=8)
    raster = sta_brute((4, 8), (2, 4), (1, 1), extra_kv=8)
    layout = pattern.build(32, 40, block_q=8, block_kv=8, tile=(2, 4))
    check_layout(layout, brute.tiled_mask(raster, (4, 8), (2, 4), extra_kv=8), 8, 8, "extra kv, tiled")
    assert layout.num_full() == layout.num_visited()
    check_layout(Halo((5, 6), 2, 1, extra_kv=3).build(30, 33, block_q=8, block_kv=8),
                 halo_brute((5, 6), 2, 1, extra_kv=3), 8, 8, "halo, extra kv")


def test_tile_choice():
    # 128-token tiles inside STA's (4, 8, 8) tiles exist: the simulator takes one of them.
    pattern = TileNeighborhood((8, 16, 16), (4, 8, 8), 1)
    chosen = choose_tile(pattern)
    assert chosen is not None and all(t % c == 0 for t, c in zip(pattern.tile, chosen))
    assert choose_tile(Halo((16, 16), 4, 1)) is None  # no tile beats raster order's 4 blocks
    assert choose_tile(Halo((32, 32), (8, 16), 0)) == (8, 16)  # blocked attention: one tile per block


def test_halo_is_tiled():
    """Halo runs in tiled orders (tests/test_group_window.py); blocks must be whole tiles."""
    pattern = Halo((8, 8), 4, 1)
    assert pattern.can_tile
    check_layout(pattern.build(64, 64, block_q=16, block_kv=16, tile=(4, 4)),
                 brute.tiled_mask(halo_brute((8, 8), 4, 1), (8, 8), (4, 4)), 16, 16, "halo, tiled")
    with pytest.raises(ValueError, match="tile"):
        pattern.build(64, 64, block_q=32, block_kv=32, tile=(4, 4))


# -- attention ---------------------------------------------------------------------------------------


def _check_attention(pattern, backend, tile, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q_len, kv_len = pattern.default_lengths()
    q = torch.randn(1, 2, q_len, 16, generator=gen)
    k = torch.randn(1, 2, kv_len, 16, generator=gen)
    v = torch.randn(1, 2, kv_len, 16, generator=gen)
    d_out = torch.randn(1, 2, q_len, 16, generator=gen)

    def run(backend, tile):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = foveate.attention(*leaves, pattern, backend=backend, tile=tile)
        (out * d_out).sum().backward()
        return [out.detach()] + [t.grad for t in leaves]

    got, want = run(backend, tile), run("reference", None)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


ATTENTION = [
    (Halo((200,), 16, 5), None),
    (Halo((13, 11), (4, 3), (1, 2)), "auto"),
    (Halo((3, 5, 9), 2, 1), None),
    (TileNeighborhood((300,), 20, 5), None),
    (TileNeighborhood((24, 32), (8, 16), (3, 1)), None),  # raster: partial blocks
    (TileNeighborhood((24, 32), (8, 16), (3, 1)), (8, 16)),  # STA's tiles as blocks: all full
    (TileNeighborhood((4, 8, 8), (4, 4, 4), (1, 1, 1)), "auto"),
]


@pytest.mark.parametrize("pattern, tile", ATTENTION, ids=lambda x: repr(x))
def test_attention_torch(pattern, tile):
    _check_attention(pattern, "torch", tile)


@needs_triton
@pytest.mark.parametrize("pattern, tile", ATTENTION, ids=lambda x: repr(x))
def test_attention_triton(pattern, tile):
    _check_attention(pattern, "triton", tile)


# -- arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, error, name", [
    (lambda: Halo((0, 4), 2, 1), ValueError, "canvas"),
    (lambda: Halo((2, 2, 2, 2), 2, 1), ValueError, "canvas"),
    (lambda: Halo((4, 4), 0, 1), ValueError, "block"),
    (lambda: Halo((4, 4), (2, 0), 1), ValueError, "block"),
    (lambda: Halo((4, 4), 2, -1), ValueError, "halo"),
    (lambda: Halo((4, 4), "2", 1), TypeError, "block"),
    (lambda: Halo((4, 4), 2, (1, 1, 1)), TypeError, "halo"),
    (lambda: Halo((4, 4), 2, 1.5), TypeError, "halo"),
    (lambda: Halo((4, 4), 2, 1, extra_kv=-1), ValueError, "extra_kv"),
    (lambda: TileNeighborhood((8, 9), (2, 2), 1), ValueError, "tile"),
    (lambda: TileNeighborhood((8, 8), 0, 1), ValueError, "tile"),
    (lambda: TileNeighborhood((8, 8), (2, 2), (2, 1)), ValueError, "window"),
    (lambda: TileNeighborhood((8, 8), (2, 2), 5), ValueError, "window"),
    (lambda: TileNeighborhood((8, 8), (2, 2), 0), ValueError, "window"),
    (lambda: TileNeighborhood((8, 8), True, 1), TypeError, "tile"),
    (lambda: TileNeighborhood((8, 8), 2, [1]), TypeError, "window"),
    (lambda: TileNeighborhood(8.0, 2, 1), ValueError, "canvas"),
])
def test_bad_arguments(make, error, name):
    with pytest.raises(error, match=name):
        make()


def test_values_and_lengths():
    a, b = Halo((8, 8), 4, 1), Halo([8, 8], (4, 4), (1, 1))
    assert a == b and hash(a) == hash(b) and a != Halo((8, 8), 4, 2)
    assert TileNeighborhood(12, 3, 3) == TileNeighborhood((12,), (3,), (3,))
    assert TileNeighborhood((8, 8), 2, 3).grid == (4, 4)
    assert a.kernel_mask(64, 64) == GroupWindow((8, 8), ((6, 4, 0, 1), (6, 4, 0, 1)))  # block + 2 halo, from -halo
    sta = TileNeighborhood((8, 12), (2, 4), (3, 1), extra_kv=2)
    assert sta.kernel_mask(96, 98) == Neighborhood((8, 12), (6, 4), stride=(2, 4), extra_kv=2).kernel_mask(96, 98)
    with pytest.raises(ValueError, match="q_len"):
        a.mask_mod(63, 63)
    with pytest.raises(ValueError, match="q_len"):
        TileNeighborhood(12, 3, 3).build(12, 13)
