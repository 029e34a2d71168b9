"""``GroupWindow`` kernel masks (``Halo``, non-cyclic ``Windows``): windows of groups cut at the
canvas borders, in raster and tiled token orders.

* The description: brute-force loops that read the node's integers allow exactly the pairs of
  the patterns' definitions (written here as loops: HaloNet's block plus halo, the segments of
  shifted windows, Swin's rolled windows and region labels).
* The kernels' predicate, element by element, in both block forms (``mask_probe.py``), raster
  and tiled (padded canvases, extra keys), alone and composed; the block forms take the split
  path (no per-element coordinates) wherever the order allows it.
* Layouts in tiled order, block by block, against the brute-force tiled mask.
* Attention on the torch and triton backends (forward and backward) against the reference,
  with ``tile="auto"`` and an explicit tile; the tile choice.
"""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch

import foveate
from foveate import patterns as P
from foveate.backends.triton import masks
from foveate.backends.triton.masks import group_window
from foveate.backends.triton.masks import spec as S
from foveate.patterns.canvas_layout import block_counts
from foveate.patterns.kernel_mask import AllOf, AnyOf, GroupWindow, Tiles
from foveate.simulator import choose_tile
from foveate.tiling import Tiled

import brute
from conftest import grads_of, make_qkv
from kernel_spy import needs_triton
from layout_checks import check_layout
from mask_probe import assert_masks_equal, probe

# -- brute force: loops over canvas coordinates --------------------------------------------------


def _per_axis(value, ndim):
    return (value,) * ndim if isinstance(value, int) else tuple(value)


def _axis_rule_mask(canvas, seen, extra_kv=0) -> torch.Tensor:
    """Raster ``(N, N + extra_kv)``: ``seen(axis, query coordinate, key coordinate)`` on every
    axis; the extra keys seen by every query."""
    coords = list(itertools.product(*(range(n) for n in canvas)))
    rows = [[all(seen(a, qc[a], kc[a]) for a in range(len(canvas))) for kc in coords] + [True] * extra_kv
            for qc in coords]
    return torch.tensor(rows, dtype=torch.bool).reshape(len(coords), len(coords) + extra_kv)


def halo_mask(canvas, block, halo, extra_kv=0):
    """HaloNet: the query's block, extended by the halo on each side, cut at the borders."""
    block, halo = _per_axis(block, len(canvas)), _per_axis(halo, len(canvas))

    def seen(a, y, k):
        first = (y // block[a]) * block[a]
        return k in range(max(first - halo[a], 0), min(first + block[a] + halo[a], canvas[a]))

    return _axis_rule_mask(canvas, seen, extra_kv)


def windows_mask(canvas, window, shift):
    """Shifted windows as segments ``[0, s), [s, s + M), ...`` per axis (any length)."""
    window, shift = _per_axis(window, len(canvas)), _per_axis(shift, len(canvas))

    def segment(y, m, s):  # the number of segment starts s, s + M, ... (but 0) at or before y
        return sum(1 for b in range(s, y + 1, m) if b > 0)

    return _axis_rule_mask(canvas, lambda a, y, k: segment(y, window[a], shift[a]) == segment(k, window[a], shift[a]))


def swin_rolled_mask(canvas, window, shift):
    """Swin's shifted-window mask on the rolled canvas (its coordinates): same window of ``M``
    and same region label, the regions ``[0, L - M), [L - M, L - s), [L - s, L)`` per axis."""
    window, shift = _per_axis(window, len(canvas)), _per_axis(shift, len(canvas))

    def region(r, n, m, s):
        return 0 if (s == 0 or r < n - m) else (1 if r < n - s else 2)

    def seen(a, y, k):
        n, m, s = canvas[a], window[a], shift[a]
        return y // m == k // m and region(y, n, m, s) == region(k, n, m, s)

    return _axis_rule_mask(canvas, seen)


def node_mask(node: GroupWindow) -> torch.Tensor:
    """A :class:`GroupWindow`'s pairs, read from its integers as its docstring defines them."""

    def seen(a, y, k):
        w, s, p, q = node.axes[a]
        start = ((y + p) // s) * s - q
        return start <= k < start + w and 0 <= k < node.canvas[a]

    return _axis_rule_mask(node.canvas, seen, node.extra_kv)


def brute_mask(pattern) -> torch.Tensor:
    """The brute-force mask of Halo, Windows, Neighborhood, their compositions, and of those in
    a tiled order (``Tiled``), in the pattern's token order."""
    name = type(pattern).__name__
    if name == "Halo":
        return halo_mask(pattern.canvas, pattern.block, pattern.halo, pattern.extra_kv)
    if name == "Windows":
        assert not any(pattern.cyclic)
        return windows_mask(pattern.canvas, pattern.window, pattern.shift)
    if name == "Tiled":
        base = pattern.base
        return brute.tiled_mask(brute_mask(base), base.canvas, pattern.tile, base.extra_kv)
    if name in ("Union", "Intersection"):
        parts = [brute_mask(p) for p in pattern.parts]
        out = parts[0]
        for part in parts[1:]:
            out = (out | part) if name == "Union" else (out & part)
        return out
    return brute.pattern_mask(pattern, *pattern.default_lengths())


# -- the description ---------------------------------------------------------------------------------

DESCRIBED = [
    P.Halo((13,), 4, 2), P.Halo((11,), 3, 0), P.Halo((5,), 8, 1), P.Halo((9, 10), 4, 5),
    P.Halo((7, 9), (3, 4), (1, 2), extra_kv=3), P.Halo((4, 5, 6), (2, 3, 4), (1, 0, 2)),
    P.Halo((6,), 2, 40),  # a halo past the canvas on both sides
    P.Windows((13,), 4, 1), P.Windows((10,), 10, 9), P.Windows((12,), 5), P.Windows((7, 9), (3, 4), (1, 2)),
    P.Windows((9, 11), (4, 5), (0, 3)), P.Windows((5, 6, 7), (2, 4, 3), (1, 3, 2)), P.Windows((4, 6), (1, 4)),
]


@pytest.mark.parametrize("pattern", DESCRIBED, ids=repr)
def test_description_is_the_definition(pattern):
    """The node's integers, read by loops, allow what the pattern's definition and its
    ``mask_mod`` allow."""
    n, kv = pattern.default_lengths()
    node = pattern.kernel_mask(n, kv)
    assert isinstance(node, GroupWindow) and pattern.can_tile
    want = brute_mask(pattern)
    assert torch.equal(node_mask(node), want)
    i, j = torch.arange(n)[:, None], torch.arange(kv)[None, :]
    assert torch.equal(pattern.mask_mod(n, kv)(0, 0, i, j).expand(n, kv), want)


def test_what_keeps_its_own_kernel_mask():
    """Aligned windows stay a TileNeighborhood's Window; cyclic ones (and Axial, Grid) have none."""
    aligned = P.Windows((8, 12), (4, 6))
    assert aligned.kernel_mask(96, 96) == P.TileNeighborhood((8, 12), (4, 6), 1).kernel_mask(96, 96)
    assert aligned.axes == P.TileNeighborhood((8, 12), (4, 6), 1).axes
    assert P.Windows((8, 12), (4, 6), (1, 0)).axes is None
    for p in (P.Windows((8, 12), 4, 1, cyclic=True), P.Windows((8, 12), 4, (1, 0), cyclic=(False, True)),
              P.Axial((8, 12), 1), P.Grid((8, 12), 2)):
        assert p.kernel_mask(96, 96) is None and not p.can_tile
    assert P.Windows((8, 9), (4, 3), (2, 1)).kernel_mask(72, 72) == GroupWindow((8, 9), ((4, 4, 2, 2), (3, 3, 2, 2)))
    assert P.Halo((8, 9), 4, (1, 2), extra_kv=2).kernel_mask(72, 74) == GroupWindow(
        (8, 9), ((6, 4, 0, 1), (8, 4, 0, 2)), 2)
    with pytest.raises(ValueError, match="GroupWindow"):
        GroupWindow((8, 9), ((4, 0, 0, 0), (3, 3, 0, 0)))
    with pytest.raises(ValueError, match="GroupWindow"):
        GroupWindow((8, 9), ((4, 4, 0, 0),))


# -- the kernels' predicate -----------------------------------------------------------------------------


@pytest.fixture
def fallbacks(monkeypatch):
    """Calls of ``group_window.allowed`` (the block forms' fall-back with per-element
    coordinates), counted in the interpreter (on a GPU compiled kernels make no Python calls:
    ``None``)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return None
    calls = []
    real = group_window.allowed

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(group_window, "allowed", counted)
    return calls


def check_predicate(pattern, blocks, fallbacks=None, split=None):
    """Both block forms of ``pattern``'s spec, element by element, equal its brute-force mask;
    ``split``: whether the block forms must (or must not) take the split path. The spec."""
    q_len, kv_len = pattern.default_lengths()
    spec = masks.mask_spec(pattern, q_len, kv_len)
    assert not spec.uses_bits, spec.fields()
    want = brute_mask(pattern)
    for transposed, b in ((False, blocks), (True, blocks[::-1])):
        if fallbacks is not None:
            fallbacks.clear()
        got, _ = probe(spec, q_len, kv_len, *b, transposed)
        assert_masks_equal(got, want, f"{pattern!r}, transposed={transposed}, blocks {b}", spec)
        if fallbacks is not None and split is not None:
            assert bool(fallbacks) != split, f"{pattern!r}: split path {'not ' if split else ''}taken"
    return spec


RASTER = [  # (pattern, blocks): 1-D raster splits (position = coordinate), 2-D/3-D raster does not
    (P.Halo((37,), 5, 3), (16, 8), True),
    (P.Halo((6,), 2, 40), (8, 4), True),
    (P.Halo((40,), 4, 2, extra_kv=5), (16, 32), True),
    (P.Windows((37,), 8, 3), (16, 8), True),
    (P.Windows((30,), 7), (8, 16), True),
    (P.Halo((7, 9), (3, 4), (1, 2), extra_kv=3), (16, 32), False),
    (P.Halo((9, 10), 4, 5), (32, 16), False),
    (P.Windows((7, 9), (3, 4), (1, 2)), (16, 32), False),
    (P.Windows((4, 6, 7), (2, 4, 3), (1, 3, 0)), (32, 16), False),
]


@needs_triton
@pytest.mark.parametrize("pattern,blocks,split", RASTER, ids=[repr(c[0]) for c in RASTER])
def test_predicate_raster(pattern, blocks, split, fallbacks):
    spec = check_predicate(pattern, blocks, fallbacks, split)
    assert spec.kinds == ("group_window",) and spec.path == "structured"
    assert spec.fields()["TILE_SIZE"] == 1 and spec.fields()["EXTRA"] == int(pattern.extra_kv > 0)


TILED = [  # (pattern, blocks): blocks inside power-of-two tiles split; padded canvases, extra keys
    (Tiled(P.Halo((8, 16), (3, 4), (1, 2)), (4, 8)), (32, 16), True),
    (Tiled(P.Halo((10, 13), (3, 4), (1, 2), extra_kv=2), (4, 8)), (16, 32), True),  # padded, extra keys
    (Tiled(P.Windows((10, 13), (4, 5), (1, 3)), (4, 8)), (32, 32), True),  # padded
    (Tiled(P.Windows((5, 6, 7), (2, 4, 3), (1, 3, 2)), (2, 4, 4)), (32, 32), True),  # padded
    (Tiled(P.Halo((4, 6, 8), 2, 1, extra_kv=3), (2, 4, 4)), (32, 32), True),
    (Tiled(P.Windows((9, 10), (4, 5), (2, 0)), (3, 5)), (16, 16), False),  # tiles of 15: no split
]


@needs_triton
@pytest.mark.parametrize("pattern,blocks,split", TILED, ids=[repr(c[0]) for c in TILED])
def test_predicate_tiled(pattern, blocks, split, fallbacks):
    spec = check_predicate(pattern, blocks, fallbacks, split)
    assert spec.kinds == ("group_window",) and spec.fields()["TILE_SIZE"] == math.prod(pattern.tile)
    assert isinstance(pattern.kernel_mask(*pattern.default_lengths()), Tiles)
    if split:  # the same predicate when the kernels read raster-order tensors
        raster_io = masks.mask_spec(pattern, *pattern.default_lengths(), raster_io=True)
        assert raster_io.in_tiled_order() == spec


SWIN = P.Windows((8, 12), 4) & P.Windows((8, 12), (6, 9))  # Swin, shift (2, 3), in rolled coordinates
SWIN_3D = P.Windows((4, 8, 8), (2, 4, 4)) & P.Windows((4, 8, 8), (3, 6, 6))  # shift (1, 2, 2)
COMPOSED = [
    (SWIN, (32, 16), "group_window window"),
    (Tiled(SWIN, (4, 4)), (16, 16), "group_window window"),
    (Tiled(SWIN_3D, (2, 4, 4)), (32, 32), "group_window window"),
    (P.Halo((9, 10), 3, 1) | P.Neighborhood((9, 10), 5), (16, 32), "group_window window"),
    (Tiled(P.Halo((10, 13), 4, 1, extra_kv=2) | P.Neighborhood((10, 13), (3, 7), extra_kv=2), (4, 8)), (32, 32),
     "group_window window"),
    (Tiled(P.Windows((10, 12), 4, 1) & P.Halo((10, 12), 2, 3), (4, 4)), (16, 16), "group_window group_window"),
]


@needs_triton
@pytest.mark.parametrize("pattern,blocks,kinds", COMPOSED, ids=[repr(c[0]) for c in COMPOSED])
def test_predicate_composed(pattern, blocks, kinds):
    spec = check_predicate(pattern, blocks)
    assert sorted(spec.kinds) == sorted(kinds.split()) and spec.path == "composed"


def test_swin_in_rolled_coordinates():
    """``Windows(c, M) & Windows(c, L - s)`` is Swin's shifted-window mask on the rolled canvas."""
    for canvas, window, shift, pattern in [((8, 12), 4, (2, 3), SWIN), ((4, 8, 8), (2, 4, 4), (1, 2, 2), SWIN_3D)]:
        assert torch.equal(brute_mask(pattern), swin_rolled_mask(canvas, window, shift))
        n = math.prod(canvas)
        i = torch.arange(n)
        assert torch.equal(pattern.mask_mod(n, n)(0, 0, i[:, None], i[None, :]),
                           swin_rolled_mask(canvas, window, shift))
        assert isinstance(pattern.kernel_mask(n, n), AllOf) and pattern.can_tile


def test_order_from_a_group_window_leaf():
    """Without Tiles, the spec's token order is the raster order of the canvas of a leaf that
    has one, GroupWindow included, wherever it sits in the tree."""
    node = GroupWindow((6, 10), ((3, 3, 0, 0), (5, 5, 0, 0)), 2)
    spec = masks.lower(AnyOf((P.Sinks(1).kernel_mask(60, 62), node)), 60, 62)
    fields = spec.fields()
    assert (fields["NDIM"], fields["L0"], fields["L1"], fields["EXTRA"]) == (2, 6, 10, 1)
    assert spec.kinds == ("rect", "group_window")
    leaf = dict(spec.fields()["leaves"][1])
    assert [leaf[k] for k in ("W0", "S0", "P0", "Q0", "W1", "S1", "P1", "Q1")] == [3, 3, 0, 0, 5, 5, 0, 0]
    assert len(S.LEAF_FIELDS[S.GROUP_WINDOW]) + 1 <= S.LEAF_WIDTH


def test_lowering_keeps_integers_small():
    """A window wider than the canvas, or groups past it, lowers to int32-sized fields with
    the same keys (checked by the predicate's own arithmetic on every coordinate)."""
    huge = 10**12
    for axis, length in [((huge, 4, 0, huge // 2), 9), ((3, huge, 5, 1), 7), ((5, 3, 2 * huge + 1, -4), 8),
                         ((2, 3, 1, -huge), 6), ((7, 2, 1, huge), 5)]:
        node = GroupWindow((length,), (axis,))
        spec = masks.lower(node, length, length)
        w, s, p, q = spec.leaves[0][1:5]
        assert max(abs(w), s, p, abs(q)) < 4 * length
        for x in range(length):
            start = ((x + p) // s) * s - q
            width = max(min(start + w, length) - start, 0)
            got = [y for y in range(length) if 0 <= y - start < width]
            assert got == node_mask(node)[x].nonzero().flatten().tolist(), (axis, x)
    with pytest.raises(ValueError, match="int32"):  # two groups 10**12 apart: not made small
        masks.lower(GroupWindow((7,), ((3, huge, huge - 3, 0),)), 7, 7)


# -- layouts ----------------------------------------------------------------------------------------

LAYOUTS = [  # (tiled pattern): blocks are whole tiles
    Tiled(P.Halo((8, 16), (3, 4), (1, 2)), (4, 8)),
    Tiled(P.Halo((10, 13), (3, 4), (1, 2), extra_kv=8), (4, 8)),  # padded, extra keys
    Tiled(P.Halo((5, 6, 7), 2, 1), (2, 2, 4)),
    Tiled(P.Windows((10, 13), (4, 5), (1, 3)), (4, 8)),
    Tiled(P.Windows((9, 10), (4, 5), (2, 0)), (3, 5)),
    Tiled(P.Windows((5, 6, 7), (2, 4, 3), (1, 3, 2)), (2, 4, 4)),
    Tiled(P.Windows((12, 16), (4, 8), (0, 4)), (4, 4)),  # every visited block full
    Tiled(SWIN, (4, 4)),
    Tiled(SWIN_3D, (2, 4, 4)),
    Tiled(P.Halo((10, 13), 4, 1, extra_kv=2) | P.Neighborhood((10, 13), (3, 7), extra_kv=2), (2, 4)),
]


@pytest.mark.parametrize("pattern", LAYOUTS, ids=repr)
def test_tiled_layout_exact(pattern):
    block = math.prod(pattern.tile)
    layout = pattern.build(*pattern.default_lengths(), block_q=block, block_kv=block)
    check_layout(layout, brute_mask(pattern), block, block, repr(pattern))


def test_aligned_tiles_make_full_blocks():
    layout = Tiled(P.Windows((12, 16), (4, 8), (0, 4)), (4, 4)).build(192, 192, block_q=16, block_kv=16)
    # segments [0, 4), [4, 12), [12, 16) on the last axis: its tiles see 1, 2, 2, 1 tiles; 3 rows of tiles
    assert layout.num_full() == layout.num_visited() == 3 * (1 + 2 + 2 + 1)
    halo = P.Halo((16, 16), 8, 0)  # HaloNet without halos: blocked attention
    layout = halo.build(256, 256, block_q=64, block_kv=64, tile=(8, 8))
    assert layout.num_full() == layout.num_visited() == 4


# -- the tile choice ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern,full", [
    (P.Windows((8, 32, 32), 8, (0, 4, 4)), True),  # tiles inside the windows: every block full
    (P.Windows((16, 64, 64), 8, (0, 4, 4)), True),
    (P.Windows((16, 64, 64), 8, 4), False),  # Swin's shifted windows: 3600 blocks (raster: 11520)
    (P.Windows((8, 32, 32), (8, 12, 12), (0, 5, 5)), False),
    (P.Halo((32, 32), (8, 16), 0), True),  # blocked attention: the tile of a block
    (P.Halo((64, 64), 8, 3), False),
    (P.Windows((8, 32, 32), 8) & P.Windows((8, 32, 32), (8, 28, 28)), False),  # Swin, shift (0, 4, 4)
])
def test_tile_choice_beats_raster(pattern, full):
    tile = choose_tile(pattern)
    assert tile is not None and math.prod(tile) == 128
    raster, tiled = foveate.simulate(pattern), foveate.simulate(pattern, tile="auto")
    assert tiled.tile == tile and tiled.kernel_mask and raster.kernel_mask
    assert (tiled.blocks_full + tiled.blocks_partial, tiled.blocks_partial) < (
        raster.blocks_full + raster.blocks_partial, raster.blocks_partial)
    assert tiled.pairs_useful == raster.pairs_useful
    if full:
        assert tiled.blocks_partial == 0


@pytest.mark.parametrize("pattern", [
    P.Windows((8, 32, 32), 8, (1, 4, 4)), P.Windows((9, 20, 24), (4, 7, 8), (1, 2, 3)), P.Halo((40, 24), (8, 6), 3),
    P.Halo((10, 13), (3, 4), (1, 2), extra_kv=5),
], ids=repr)
def test_block_counts_are_the_built_layouts(pattern, monkeypatch):
    """The tile choice counts interval patterns' blocks per axis (products, nothing built):
    the counts of the layouts that are built; without per-axis counts (the general fall-back
    of any pattern that can be tiled) it builds them."""
    from foveate import simulator

    for tile in [None, *simulator.candidate_tiles(pattern.canvas, 128)]:
        layout = pattern.build(*pattern.default_lengths(), tile=tile)
        built = layout.num_visited(), layout.num_full()
        if tile is not None:
            assert block_counts(pattern, block_q=128, block_kv=128, tile=tile) == built, tile
        assert simulator._tile_counts(pattern, tile, 128) == built, tile
    monkeypatch.setattr(simulator, "block_counts", lambda *args, **kwargs: None)
    for tile in simulator.candidate_tiles(pattern.canvas, 128)[:4]:
        layout = pattern.build(*pattern.default_lengths(), tile=tile)
        assert simulator._tile_counts(pattern, tile, 128) == (layout.num_visited(), layout.num_full())


# -- attention ---------------------------------------------------------------------------------------

ATTENTION = [  # (pattern, tile): tiles of 128 tokens, the backends' blocks
    (P.Windows((4, 16, 16), (4, 8, 8), (0, 4, 4)), (2, 8, 8)),
    (P.Windows((4, 16, 16), (4, 8, 8), (1, 4, 4)), "auto"),
    (P.Halo((4, 16, 16), (2, 8, 8), 1, extra_kv=3), (2, 8, 8)),
    (P.Halo((3, 12, 20), (2, 4, 8), (0, 2, 1)), (2, 8, 8)),  # padded canvas
    (P.Windows((16, 40), (8, 16), (4, 8)), "auto"),
    (P.Windows((4, 16, 16), (2, 8, 8)) & P.Windows((4, 16, 16), (3, 12, 12)), (2, 8, 8)),  # Swin, rolled
]


def _compare(pattern, backend, tile):
    gen = torch.Generator().manual_seed(0)
    q, k, v = make_qkv(gen, batch=1, heads_q=2, q_shape=(math.prod(pattern.canvas),), head_dim=16,
                       dtype=torch.float32)
    if pattern.extra_kv:
        k, v = make_qkv(gen, batch=1, heads_q=2, q_shape=(pattern.default_lengths()[1],), head_dim=16,
                        dtype=torch.float32)[1:]
    d_out, d_lse = torch.randn(q.shape, generator=gen), torch.randn(q.shape[:-1], generator=gen)

    def run(backend, tile):
        return lambda q, k, v: foveate.attention(q, k, v, pattern, backend=backend, tile=tile, return_lse=True)

    want = grads_of(run("reference", None), q, k, v, d_out, d_lse)
    got = grads_of(run(backend, tile), q, k, v, d_out, d_lse)
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{pattern!r} {name}: {m}")


def test_auto_tiles_the_attention_cases():
    for pattern, tile in ATTENTION:
        if tile == "auto":
            assert choose_tile(pattern) is not None, pattern


@pytest.mark.parametrize("pattern,tile", ATTENTION, ids=[f"{c[0]!r}-{c[1]}" for c in ATTENTION])
def test_attention_torch(pattern, tile):
    _compare(pattern, "torch", tile)


@needs_triton
@pytest.mark.parametrize("pattern,tile", ATTENTION, ids=[f"{c[0]!r}-{c[1]}" for c in ATTENTION])
def test_attention_triton(pattern, tile, triton_spy):
    _compare(pattern, "triton", tile)
    assert triton_spy["fwd"] >= 1 and triton_spy["bwd"] >= 1
