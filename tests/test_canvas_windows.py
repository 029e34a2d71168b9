"""``Windows`` (Swin's shifted windows, HiDiffusion's cyclic windows), ``Axial`` and ``Grid``
(MaxViT): masks against brute-force definitions written here from the papers' code, exact
layouts, attention on the torch and triton backends against the reference, ``Grid`` against
the dilated ``Neighborhood``, argument validation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import foveate
from foveate import patterns as P
from foveate.patterns.kernel_mask import GroupWindow
from foveate.patterns.windows import Axial, Grid, Windows

from conftest import grads_of, make_qkv
from kernel_spy import needs_triton
from layout_checks import check_layout


def _flat_mask(pattern) -> torch.Tensor:
    n = math.prod(pattern.canvas)
    i = torch.arange(n)
    return pattern.mask_mod(n, n)(0, 0, i[:, None], i[None, :]).expand(n, n)


def _per_axis(value, ndim):
    return (value,) * ndim if isinstance(value, int) else tuple(value)


# -- brute force -----------------------------------------------------------------------------


def swin_mask(canvas, window, shift) -> torch.Tensor:
    """Swin's shifted-window attention, literally: roll the canvas by ``-shift``, label the
    regions of the rolled canvas with slices ``[0, -M), [-M, -s), [-s, None)`` per axis (one
    region on an unshifted axis), partition into windows; two tokens interact when they share
    a window and a region label. Indices are the original (raster) token indices."""
    ndim = len(canvas)
    window, shift = _per_axis(window, ndim), _per_axis(shift, ndim)
    n = math.prod(canvas)
    ids = torch.arange(n).reshape(canvas)
    rolled = torch.roll(ids, shifts=tuple(-s for s in shift), dims=tuple(range(ndim)))
    img_mask = torch.zeros(canvas, dtype=torch.long)
    cnt = 0
    per_axis_slices = [
        (slice(0, -m), slice(-m, -s), slice(-s, None)) if s else (slice(None),) for m, s in zip(window, shift)
    ]
    for slices in itertools.product(*per_axis_slices):
        img_mask[slices] = cnt
        cnt += 1
    # Window partition of the rolled canvas: the window of each rolled position.
    win = torch.zeros(canvas, dtype=torch.long)
    for a, m in enumerate(window):
        pos = torch.arange(canvas[a]).reshape([-1 if b == a else 1 for b in range(ndim)])
        win = win * (canvas[a] // m + 1) + pos // m
    label_win = torch.empty(n, dtype=torch.long)
    label_reg = torch.empty(n, dtype=torch.long)
    label_win[rolled.reshape(-1)] = win.reshape(-1)
    label_reg[rolled.reshape(-1)] = img_mask.reshape(-1)
    return (label_win[:, None] == label_win[None, :]) & (label_reg[:, None] == label_reg[None, :])


def cyclic_mask(canvas, window, shift) -> torch.Tensor:
    """HiDiffusion's shifted windows: roll by ``-shift`` and partition, no region mask."""
    ndim = len(canvas)
    window, shift = _per_axis(window, ndim), _per_axis(shift, ndim)
    n = math.prod(canvas)
    rolled = torch.roll(torch.arange(n).reshape(canvas), shifts=tuple(-s for s in shift), dims=tuple(range(ndim)))
    win = torch.zeros(canvas, dtype=torch.long)
    for a, m in enumerate(window):
        pos = torch.arange(canvas[a]).reshape([-1 if b == a else 1 for b in range(ndim)])
        win = win * (canvas[a] // m + 1) + pos // m
    label = torch.empty(n, dtype=torch.long)
    label[rolled.reshape(-1)] = win.reshape(-1)
    return label[:, None] == label[None, :]


def _coords(canvas):
    return list(itertools.product(*(range(n) for n in canvas)))


def segments_mask(canvas, window, shift) -> torch.Tensor:
    """The shifted windows as segments ``[0, s), [s, s + M), ...`` per axis (any length)."""
    ndim = len(canvas)
    window, shift = _per_axis(window, ndim), _per_axis(shift, ndim)

    def segment(y, m, s):  # which segment holds y: count the boundaries s, s + M, ... <= y
        return sum(1 for b in range(s, y + 1, m) if b <= y and (b > 0 or s == 0))

    coords = _coords(canvas)
    rows = [[all(segment(q, m, s) == segment(k, m, s) for q, k, m, s in zip(cq, ck, window, shift))
             for ck in coords] for cq in coords]
    return torch.tensor(rows, dtype=torch.bool)


def axial_mask(canvas, axes) -> torch.Tensor:
    axes = (axes,) if isinstance(axes, int) else axes
    coords = _coords(canvas)
    rows = [[all(a in axes or cq[a] == ck[a] for a in range(len(canvas))) for ck in coords] for cq in coords]
    return torch.tensor(rows, dtype=torch.bool)


def grid_mask(canvas, grid) -> torch.Tensor:
    grid = _per_axis(grid, len(canvas))
    coords = _coords(canvas)
    rows = [[all(q % (n // g) == k % (n // g) for q, k, n, g in zip(cq, ck, canvas, grid)) for ck in coords]
            for cq in coords]
    return torch.tensor(rows, dtype=torch.bool)


# -- masks -------------------------------------------------------------------------------------

# (canvas, window, shift): shifted axes have L % M == 0 (Swin pads the canvas to whole windows
# before it rolls); canvases are not multiples of the blocks used below.
SWIN = [
    ((12,), 4, 0), ((12,), 4, 1), ((15,), 5, 3), ((21,), 7, 6),
    ((8, 9), 4, (2, 0)), ((9, 12), 3, 1), ((6, 10), (3, 5), (2, 4)), ((5, 7), (5, 7), 0),
    ((4, 6, 9), (2, 3, 3), (1, 1, 2)), ((3, 5, 6), (3, 5, 2), (0, 2, 1)),
]


@pytest.mark.parametrize("canvas,window,shift", SWIN)
def test_swin_shifted_windows_mask(canvas, window, shift):
    pattern = Windows(canvas, window, shift)
    assert torch.equal(_flat_mask(pattern), swin_mask(canvas, window, shift))


@pytest.mark.parametrize("canvas,window,shift", [
    ((13,), 4, 1), ((11,), 3, 2), ((7, 9), (3, 4), (1, 2)), ((5, 6, 7), (2, 4, 3), (1, 3, 2)), ((10,), 10, 9),
])
def test_shifted_windows_any_length(canvas, window, shift):
    """Lengths that are not multiples of the window: segments [0, s), [s, s + M), ... ."""
    assert torch.equal(_flat_mask(Windows(canvas, window, shift)), segments_mask(canvas, window, shift))


CYCLIC = [
    ((12,), 4, 1), ((12,), 3, 0), ((8, 12), (4, 3), (2, 1)), ((6, 8), 2, 1), ((4, 6, 8), (2, 3, 4), (1, 2, 3)),
    ((4, 6, 6), (4, 3, 6), (3, 0, 5)),
]


@pytest.mark.parametrize("canvas,window,shift", CYCLIC)
def test_cyclic_windows_mask(canvas, window, shift):
    pattern = Windows(canvas, window, shift, cyclic=True)
    assert torch.equal(_flat_mask(pattern), cyclic_mask(canvas, window, shift))


def test_cyclic_per_axis():
    """cyclic per axis: wrapped windows on one axis, Swin's on the other."""
    canvas, window, shift = (8, 9), (4, 3), (1, 2)
    expected = cyclic_mask((8, 1), (4, 1), (1, 0)).reshape(8, 1, 8, 1) & swin_mask((1, 9), (1, 3), (0, 2)).reshape(
        1, 9, 1, 9)
    got = _flat_mask(Windows(canvas, window, shift, cyclic=(True, False)))
    assert torch.equal(got, expected.reshape(72, 72))


AXIAL = [((9,), 0), ((5, 7), 1), ((5, 7), (0,)), ((5, 7), (0, 1)), ((3, 4, 5), (0, 2)), ((3, 4, 5), 1),
         ((3, 4, 5), -1)]


@pytest.mark.parametrize("canvas,axes", AXIAL)
def test_axial_mask(canvas, axes):
    norm = tuple(a % len(canvas) for a in ((axes,) if isinstance(axes, int) else axes))
    assert torch.equal(_flat_mask(Axial(canvas, axes)), axial_mask(canvas, norm))


GRID = [((12,), 3), ((12,), 12), ((12,), 1), ((8, 12), (4, 3)), ((6, 10), 2), ((4, 6, 9), (2, 3, 3)),
        ((4, 6, 8), (4, 1, 2))]


@pytest.mark.parametrize("canvas,grid", GRID)
def test_grid_mask(canvas, grid):
    assert torch.equal(_flat_mask(Grid(canvas, grid)), grid_mask(canvas, grid))


# -- layouts -----------------------------------------------------------------------------------

BLOCKS = [(16, 16), (8, 32), (7, 5), (64, 64), (1, 3), (200, 200)]

LAYOUT_PATTERNS = [
    Windows((13,), 4, 1), Windows((7, 9), (3, 4), (1, 2)), Windows((5, 6, 7), (2, 3, 4), (1, 2, 3)),
    Windows((8, 12), (4, 3), (2, 1), cyclic=True), Windows((4, 6, 8), (2, 3, 4), (1, 2, 3), cyclic=True),
    Windows((6, 10), (3, 5), (2, 4), cyclic=(False, True)), Windows((9, 11), 9, 0),
    Axial((5, 7), 1), Axial((5, 7), 0), Axial((3, 5, 7), (0, 2)), Axial((3, 5, 7), (1,)),
    # Grid: periods that wrap a few times (pieces), many times on an outer axis (strided rows, and
    # the whole axis when a block spans more than 8 rows), many times on the last axis.
    Grid((24,), 8), Grid((8, 12), (4, 3)), Grid((20, 6), (5, 2)), Grid((40, 2), (10, 1)), Grid((4, 6, 8), 2),
    Grid((2, 20, 3), (1, 5, 1)),
]


@pytest.mark.parametrize("pattern", LAYOUT_PATTERNS, ids=repr)
def test_layout_exact(pattern):
    mask = _flat_mask(pattern)
    n = mask.shape[0]
    for block_q, block_kv in BLOCKS:
        layout = pattern.build(n, n, block_q=block_q, block_kv=block_kv)
        check_layout(layout, mask, block_q, block_kv, f"{pattern!r} blocks {(block_q, block_kv)}")


@pytest.mark.parametrize("combine", ["|", "&"])
def test_compositions(combine):
    a, b = Windows((6, 10), (3, 5), (1, 2)), Axial((6, 10), 0)
    pattern = (a | b) if combine == "|" else (a & Grid((6, 10), (2, 1)))
    mask = _flat_mask(pattern)
    check_layout(pattern.build(60, 60, block_q=16, block_kv=8), mask, 16, 8, repr(pattern))


def test_full_blocks_marked_full():
    """Windows that hold whole blocks: those blocks are listed full (no mask work)."""
    pattern = Windows((8, 16), (4, 16))  # 64-token windows of raster rows
    layout = pattern.build(128, 128, block_q=32, block_kv=32)
    assert layout.num_full() == layout.num_visited() == 8
    pattern = Axial((4, 8, 8), 0)  # blocks of one row: a row's keys in the 4 planes
    layout = pattern.build(256, 256, block_q=8, block_kv=8)
    assert layout.num_visited() == 32 * 4 and layout.num_full() == 0
    grid = Grid((4, 8), (1, 8))  # a row sees its whole row: blocks of whole rows are full
    assert grid.build(32, 32, block_q=8, block_kv=8).num_full() == 4


@pytest.mark.parametrize("canvas,grid", GRID + [((16, 24), (4, 6)), ((6, 8, 10), (3, 4, 5))])
def test_grid_is_dilated_neighborhood(canvas, grid):
    pattern = Grid(canvas, grid)
    g = _per_axis(grid, len(canvas))
    nb = P.Neighborhood(canvas, kernel=g, dilation=tuple(n // k for n, k in zip(canvas, g)))
    n = math.prod(canvas)
    assert torch.equal(_flat_mask(pattern), _flat_mask(nb))
    for block_q, block_kv in [(16, 16), (7, 12)]:
        a = pattern.build(n, n, block_q=block_q, block_kv=block_kv)
        b = nb.build(n, n, block_q=block_q, block_kv=block_kv)
        assert torch.equal(a.to_dense(), b.to_dense())
        assert a.allowed_pairs() == b.allowed_pairs()


# -- attention -----------------------------------------------------------------------------------

ATTENTION = [
    Windows((37,), 8, 3), Windows((9, 13), (4, 5), (2, 1)), Windows((8, 12), 4, 2, cyclic=True),
    Windows((3, 5, 6), (2, 3, 3), (1, 1, 2)), Axial((9, 13), 1), Axial((3, 5, 6), (0, 2)),
    Grid((8, 12), (2, 3)), Grid((4, 6, 4), 2),
]


def _run(pattern, backend):
    def run(q, k, v):
        return foveate.attention(q, k, v, pattern, backend=backend, tile=None, return_lse=True)

    return run


def _compare(pattern, backend, rtol, atol):
    gen = torch.Generator().manual_seed(0)
    q, k, v = make_qkv(gen, batch=1, heads_q=2, q_shape=pattern.canvas, head_dim=16, dtype=torch.float32)
    d_out = torch.randn(q.shape, generator=gen)
    d_lse = torch.randn(q.shape[:-1], generator=gen)
    want = grads_of(_run(pattern, "reference"), q, k, v, d_out, d_lse)
    got = grads_of(_run(pattern, backend), q, k, v, d_out, d_lse)
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{pattern!r} {name}: {m}")


@pytest.mark.parametrize("pattern", ATTENTION, ids=repr)
def test_attention_torch(pattern):
    _compare(pattern, "torch", 1e-5, 1e-5)


@needs_triton
@pytest.mark.parametrize("pattern", ATTENTION[:3] + ATTENTION[4:5] + ATTENTION[-1:], ids=repr)
def test_attention_triton(pattern, triton_spy):
    _compare(pattern, "triton", 1e-4, 1e-4)
    assert triton_spy["fwd"] >= 1 and triton_spy["bwd"] >= 1


def test_reference_matches_brute_force_mask():
    """The reference backend applies exactly the brute-force mask (dense masked softmax)."""
    pattern = Windows((6, 8), (3, 4), (1, 2))
    gen = torch.Generator().manual_seed(1)
    q, k, v = make_qkv(gen, batch=1, heads_q=1, q_shape=(48,), head_dim=8, dtype=torch.float64)
    out = foveate.attention(q, k, v, pattern, backend="reference")
    scores = (q @ k.transpose(-1, -2)) * 8 ** -0.5
    scores = scores.masked_fill(~swin_mask((6, 8), (3, 4), (1, 2)), float("-inf"))
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ v)


# -- the pattern objects ---------------------------------------------------------------------------


def test_value_semantics_and_repr():
    assert Windows(8, 4) == Windows((8,), (4,), 0, False)
    assert Windows((8, 8), 4, 2) == Windows([8, 8], (4, 4), (2, 2))
    assert hash(Windows((8, 8), 4, 2)) == hash(Windows((8, 8), (4, 4), (2, 2)))
    assert Windows((8, 8), 4, 2) != Windows((8, 8), 4, 2, cyclic=True)
    assert Axial((4, 5), 1) == Axial((4, 5), (-1,))
    assert Grid((8, 8), 2) == Grid((8, 8), (2, 2))
    assert repr(Windows((8, 8), 4)) == "Windows(canvas=(8, 8), window=(4, 4))"
    assert repr(Windows((8, 8), 4, (2, 0), cyclic=True)) == (
        "Windows(canvas=(8, 8), window=(4, 4), shift=(2, 0), cyclic=(True, True))")
    assert repr(Axial((3, 4, 5), (2, 0))) == "Axial(canvas=(3, 4, 5), axes=(0, 2))"
    assert repr(Grid((8, 8), 2)) == "Grid(canvas=(8, 8), grid=(2, 2))"
    for p in (Windows((8, 8), 4, cyclic=True), Axial((8, 8), 1), Grid((8, 8), 2)):
        assert p.kernel_mask(64, 64) is None and not p.can_tile
        assert p.default_lengths() == (64, 64)
        with pytest.raises(ValueError, match="q_len"):
            p.check_lengths(64, 65)
        with pytest.raises(ValueError, match="tile"):
            p.build(*p.default_lengths(), tile=(4, 4))
    # Non-cyclic windows, shifted or not dividing the canvas: windows cut at the borders, tiled
    # orders (tests/test_group_window.py).
    for p in (Windows((8, 8), 4, 1), Windows((9, 8), 4)):
        n = p.default_lengths()[0]
        assert isinstance(p.kernel_mask(n, n), GroupWindow) and p.can_tile and p.axes is None
        assert p.build(n, n, block_q=16, block_kv=16, tile=(4, 4)).num_visited() > 0
        with pytest.raises(ValueError, match="tile"):
            p.build(n, n, tile=(4, 4))  # (128-token blocks are not 16-token tiles)


def test_aligned_windows_are_a_tile_neighborhood():
    """Unshifted windows that divide the canvas take the TileNeighborhood's kernel mask and tiled
    orders: in a window-aligned tile every visited block is full."""
    w = Windows((8, 16, 16), (4, 8, 8))
    tn = P.TileNeighborhood((8, 16, 16), (4, 8, 8), 1)
    n = w.default_lengths()[0]
    assert w.can_tile and w.kernel_mask(n, n) == tn.kernel_mask(n, n)
    assert torch.equal(_flat_mask(w), _flat_mask(tn))
    record = foveate.simulate(w, tile="auto")
    assert record.tile is not None and record.blocks_partial == 0 and record.speedup_bound == 8.0
    layout = w.build(n, n, block_q=128, block_kv=128, tile=record.tile)
    assert layout.num_visited() == int(layout.full_kv_num_blocks.sum())


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_aligned_windows_tiled_attention(backend):
    pattern = Windows((4, 16, 16), (2, 8, 8))  # (tiles of 128 tokens: the backends' blocks)
    gen = torch.Generator().manual_seed(3)
    q, k, v = make_qkv(gen, batch=1, heads_q=2, q_shape=pattern.canvas, head_dim=16, dtype=torch.float32)
    want = foveate.attention(q, k, v, pattern, backend="reference")
    got = foveate.attention(q, k, v, pattern, backend=backend, tile=(2, 8, 8))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,exc,name", [
    (lambda: Windows((8, 8), 0), ValueError, "window"),
    (lambda: Windows((8, 8), 9), ValueError, "window"),
    (lambda: Windows((8, 8), (4, 9)), ValueError, "window"),
    (lambda: Windows((8, 8), 4, 4), ValueError, "shift"),
    (lambda: Windows((8, 8), 4, -1), ValueError, "shift"),
    (lambda: Windows((8, 9), 4, cyclic=True), ValueError, "cyclic"),
    (lambda: Windows((8, 8), 4.0), TypeError, "window"),
    (lambda: Windows((8, 8), (4, 4, 4)), TypeError, "window"),
    (lambda: Windows((8, 8), 4, cyclic=1), TypeError, "cyclic"),
    (lambda: Windows((8, 8, 8, 8), 4), ValueError, "canvas"),
    (lambda: Windows((0, 8), 1), ValueError, "canvas"),
    (lambda: Axial((8, 8), 2), ValueError, "axes"),
    (lambda: Axial((8, 8), ()), ValueError, "axes"),
    (lambda: Axial((8, 8), (1, -1)), ValueError, "axes"),
    (lambda: Axial((8, 8), 1.0), TypeError, "axes"),
    (lambda: Grid((8, 8), 3), ValueError, "grid"),
    (lambda: Grid((8, 8), 0), ValueError, "grid"),
    (lambda: Grid((8, 8), (2, True)), TypeError, "grid"),
])
def test_bad_arguments(make, exc, name):
    with pytest.raises(exc, match=name):
        make()


@pytest.mark.parametrize("canvas,window,shift", [((16,), 4, 1), ((8, 12), (4, 4), (2, 1)), ((4, 8, 8), 4, (0, 2, 3))])
def test_rolled_windows_are_the_shifted_ones_on_rolled_tokens(canvas, window, shift):
    """``Windows.rolled``: Swin's shifted windows on tokens rolled by -shift (torch.roll), checked
    by rolling the coordinates of the unrolled pattern's brute-force mask."""
    rolled = Windows.rolled(canvas, window, shift)
    ndim = len(canvas)
    shifts = _per_axis(shift, ndim)
    coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in canvas), indexing="ij"), -1).reshape(-1, ndim)
    original = (coords + torch.tensor(shifts)) % torch.tensor(canvas)  # rolled token y' holds x[(y' + s) mod L]
    flat = sum(original[:, a] * math.prod(canvas[a + 1:]) for a in range(ndim))
    want = swin_mask(canvas, window, shift)[flat][:, flat]
    assert torch.equal(_flat_mask(rolled), want)
    assert rolled.can_tile and rolled.kernel_mask(*rolled.default_lengths()) is not None


def test_rolled_windows_bad_arguments():
    with pytest.raises(ValueError, match="canvas % window"):
        Windows.rolled((10, 8), 4, 2)
    with pytest.raises(ValueError, match="shift"):
        Windows.rolled((8, 8), 4, 4)
