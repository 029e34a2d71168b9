"""The Triton kernels' structured block masks (one leaf: band and window), element by element,
against brute-force masks.

The block forms run in a probe kernel over every (query block, key block) pair of a problem
(``mask_probe.py``); the assembled ``(q_len, kv_len)`` mask must equal the loop definitions of
``brute.py`` (band masks, the neighborhood mask in raster order, and ``brute.tiled_mask`` of it
for the tiled order), never foveate's own ``mask_mod``.

The cases reach every path of the leaves' block forms: the band forms, the split forms of
window masks (``SPLIT``: 1-D raster order, or tiles with power-of-two sides and blocks inside one
tile, including blocks that start inside a tile) and the fall-back to ``window.allowed`` (2-D/3-D
raster order, a tile side that is not a power of two, blocks larger than the tile). Compositions
and bitmasks: ``test_triton_kernel_masks.py``.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foveate import patterns as P
from foveate.backends.triton import masks
from foveate.backends.triton.masks import spec as S
from foveate.patterns.kernel_mask import Band
from foveate.tiling import Tiled

import brute
from kernel_spy import needs_triton
from mask_probe import assert_masks_equal, probe
from strategies import neighborhood_params

BLOCKS = (16, 32, 64)


# -- expected masks ----------------------------------------------------------------------------------


def lengths(pattern) -> tuple[int, int]:
    """``(q_len, kv_len)`` of a canvas pattern in the kernel's token order."""
    if isinstance(pattern, Tiled):
        return pattern.default_lengths()
    n = math.prod(pattern.canvas)
    return n, n + pattern.extra_kv


def check(spec: masks.MaskSpec, want, block: int, fixed: int = 64, fast: bool = True):
    """Both block forms equal ``want``: ``allowed_block`` walking key blocks of ``block`` for
    query blocks of ``fixed``, and ``allowed_block_t`` walking query blocks of ``block`` for key
    blocks of ``fixed`` (the walked block decides the path; the fixed side is any positions);
    with ``fast``, neither falls back to ``window.allowed`` (else both do)."""
    q_len, kv_len = want.shape
    for transposed, name, blocks in ((False, "allowed_block", (fixed, block)),
                                     (True, "allowed_block_t", (block, fixed))):
        what = f"{name}, blocks {blocks[0]}x{blocks[1]}"
        got, fallback = probe(spec, q_len, kv_len, *blocks, transposed)
        assert_masks_equal(got, want, what, spec)
        assert fallback in (None, not fast), f"{what}: not the {'fast' if fast else 'generic'} path; {spec.fields()}"



def check_pattern(pattern, block: int, fixed: int = 64, fast: bool = True, q_len=None, kv_len=None):
    """:func:`check` of ``pattern``'s spec (lengths: the given ones, else :func:`lengths`); the spec."""
    if q_len is None:
        q_len, kv_len = lengths(pattern)
    spec = masks.mask_spec(pattern, q_len, kv_len)
    check(spec, brute.pattern_mask(pattern, q_len, kv_len), block, fixed, fast)
    return spec


def split(spec: masks.MaskSpec) -> int:
    return spec.fields()["SPLIT"]


# -- band masks --------------------------------------------------------------------------------------

BAND_CASES = [
    ("dense-q100", P.Dense(), 100, 100),
    ("dense-q70-kv130", P.Dense(), 70, 130),
    ("dense-q130-kv70", P.Dense(), 130, 70),
    ("causal-q150", P.Causal(), 150, 150),
    ("causal-q60-kv150", P.Causal(), 60, 150),
    ("causal-q150-kv60", P.Causal(), 150, 60),
    ("window-left37", P.SlidingWindow(37), 150, 150),
    ("window-right29", P.SlidingWindow(0, 29), 150, 150),
    ("window-0-0", P.SlidingWindow(0, 0), 100, 100),
    ("window-20-45-q70-kv150", P.SlidingWindow(20, 45), 70, 150),
    ("window-33-10-q150-kv70", P.SlidingWindow(33, 10), 150, 70),
    # sides wider than int32: the spec clamps them to a width that still covers the sequences
    ("window-huge-left", P.SlidingWindow(10 ** 12, 5), 100, 130),
    ("window-huge-right", P.SlidingWindow(3, 10 ** 12), 130, 100),
    ("window-huge-both", P.SlidingWindow(2 ** 40, 2 ** 40), 90, 90),
]


@needs_triton
@pytest.mark.parametrize("block,fixed", [(16, 64), (32, 16), (64, 32)])
@pytest.mark.parametrize("pattern,q_len,kv_len", [c[1:] for c in BAND_CASES], ids=[c[0] for c in BAND_CASES])
def test_band(pattern, q_len, kv_len, block, fixed):
    assert check_pattern(pattern, block, fixed, q_len=q_len, kv_len=kv_len).kinds == ("band",)


@needs_triton
@pytest.mark.parametrize("q_len,kv_len", [(120, 120), (60, 130), (130, 60)])
def test_band_without_right_bound(q_len, kv_len):
    """The left-bounded band with no right bound (no pattern has it; the spec is built directly)."""
    spec = masks.lower(Band(kv_len - q_len, 25, None), q_len, kv_len)
    check(spec, brute.sliding_window_mask(q_len, kv_len, 25, q_len + kv_len), 16, 32)


# -- Neighborhood in raster order ----------------------------------------------------------------------

# (id, pattern, (block, fixed))
RASTER_CASES = [
    # 1-D: the split forms (the coordinate is the position)
    ("1d-k9", P.Neighborhood(canvas=150, kernel=9), (16, 32)),
    ("1d-k10-dil3-stride4-causal-extra5", P.Neighborhood(canvas=140, kernel=10, dilation=3, stride=4, causal=True,
                                                        extra_kv=5), (32, 16)),
    ("1d-k12-stride5-extra3", P.Neighborhood(canvas=100, kernel=12, stride=5, extra_kv=3), (64, 16)),
    ("1d-k7-dil2-causal", P.Neighborhood(canvas=90, kernel=7, dilation=2, causal=True), (16, 64)),
    # 2-D and 3-D: the fall-back (raster coordinates do not split into bit fields)
    ("2d-k5x7", P.Neighborhood(canvas=(12, 20), kernel=(5, 7)), (32, 64)),
    ("2d-dil-stride-causal-extra4", P.Neighborhood(canvas=(10, 14), kernel=(3, 5), dilation=(2, 1), stride=(1, 3),
                                                   causal=(False, True), extra_kv=4), (16, 64)),
    ("3d-dil-stride-causal", P.Neighborhood(canvas=(4, 6, 10), kernel=(3, 3, 5), dilation=(1, 2, 1),
                                            stride=(1, 1, 2), causal=(True, False, False)), (32, 64)),
]


@needs_triton
@pytest.mark.parametrize("pattern,blocks", [c[1:] for c in RASTER_CASES], ids=[c[0] for c in RASTER_CASES])
def test_neighborhood_raster(pattern, blocks):
    one_d = len(pattern.canvas) == 1
    assert split(check_pattern(pattern, *blocks, fast=one_d)) == one_d


# -- Neighborhood in tiled order ------------------------------------------------------------------------


def _tiled(tile, **kw) -> Tiled:
    return Tiled(P.Neighborhood(**kw), tile)


# The path of a case: (the spec's SPLIT, whether the block forms take their fast path).
FAST, SPLIT_BUT_GENERIC, GENERIC = (1, True), (1, False), (0, False)

# (id, pattern, (block, fixed), path)
TILED_CASES = [
    # blocks of one tile
    ("2d-tile4x4", _tiled((4, 4), canvas=(12, 16), kernel=(3, 5)), (16, 64), FAST),
    ("2d-tile8x8-padded-dil-causal", _tiled((8, 8), canvas=(13, 11), kernel=(3, 4), dilation=(2, 1),
                                            causal=(True, False)), (64, 64), FAST),
    ("2d-tile8x16-padded-stride-causal-block128", _tiled((8, 16), canvas=(12, 14), kernel=(5, 4), stride=(2, 1),
                                                         causal=(False, True), extra_kv=1), (128, 32), FAST),
    # blocks that start inside a tile (of 32 to 128 tokens)
    ("2d-tile8x8-padded-stride-extra3", _tiled((8, 8), canvas=(10, 14), kernel=(4, 5), stride=(2, 3),
                                               extra_kv=3), (16, 32), FAST),
    ("2d-tile4x16-padded-dil-stride-causal", _tiled((4, 16), canvas=(10, 20), kernel=(3, 5), dilation=(2, 1),
                                                    stride=(1, 3), causal=(False, True)), (32, 64), FAST),
    ("2d-tile8x16-padded-extra5", _tiled((8, 16), canvas=(12, 14), kernel=(3, 4), stride=(1, 2), extra_kv=5),
     (32, 64), FAST),
    ("3d-tile2x4x8-dil-stride-causal", _tiled((2, 4, 8), canvas=(4, 8, 8), kernel=(3, 3, 5), dilation=(1, 2, 1),
                                              stride=(1, 1, 2), causal=(True, False, False)), (16, 64), FAST),
    ("3d-tile2x4x4-padded-dil-causal-extra2", _tiled((2, 4, 4), canvas=(3, 6, 7), kernel=(2, 3, 3),
                                                     dilation=(1, 2, 2), stride=(2, 1, 1),
                                                     causal=(False, True, False), extra_kv=2), (16, 64), FAST),
    ("1d-tile32-padded-dil-stride-extra2", _tiled((32,), canvas=100, kernel=9, dilation=2, stride=3, extra_kv=2),
     (16, 32), FAST),
    # tile sides of 1
    ("2d-tile1x16-padded-causal", _tiled((1, 16), canvas=(5, 20), kernel=(3, 7), causal=(True, False)), (16, 16),
     FAST),
    # blocks larger than the tile: the fall-back, although SPLIT
    ("2d-tile4x4-block64", _tiled((4, 4), canvas=(10, 10), kernel=(3, 3), dilation=(1, 2), extra_kv=1), (64, 32),
     SPLIT_BUT_GENERIC),
    # a tile side that is not a power of two: the fall-back
    ("2d-tile3x8-padded-causal-extra2", _tiled((3, 8), canvas=(10, 12), kernel=(3, 5), causal=(False, True),
                                               extra_kv=2), (16, 64), GENERIC),
    ("3d-tile2x3x4-padded-dil", _tiled((2, 3, 4), canvas=(4, 5, 7), kernel=(3, 2, 3), dilation=(1, 2, 2)),
     (32, 64), GENERIC),
]


@needs_triton
@pytest.mark.parametrize("pattern,blocks,path", [c[1:] for c in TILED_CASES], ids=[c[0] for c in TILED_CASES])
def test_neighborhood_tiled(pattern, blocks, path):
    split_field, fast = path
    assert split(check_pattern(pattern, *blocks, fast=fast)) == split_field


#: Most tokens of the random tiled canvases (padding included): the interpreter is slow.
MAX_TOKENS = 256


@st.composite
def pow2_tiled(draw):
    """``(pattern, block, fixed)``: a random 2-D or 3-D :class:`Tiled` neighborhood whose tile
    sides are powers of two, of 16 to 64 tokens, on a canvas of at most :data:`MAX_TOKENS`
    padded tokens; a walked block of at most the tile (the split forms)."""
    ndim = draw(st.sampled_from((2, 3)))
    log_size = draw(st.sampled_from((6, 5, 4)))
    logs = []
    for _ in range(ndim - 1):
        logs.append(draw(st.integers(0, log_size - sum(logs))))
    logs.append(log_size - sum(logs))
    tile = tuple(2 ** e for e in draw(st.permutations(logs)))
    canvas, budget = [], MAX_TOKENS
    for a, t in enumerate(tile):  # each padded side leaves room for at least one tile of the later axes
        most = budget // math.prod(tile[a + 1:]) // t * t
        canvas.append(draw(st.integers(1, min(most, max(2 * t + 3, 6)))))
        budget //= -(-canvas[-1] // t) * t
    pattern = Tiled(P.Neighborhood(**draw(neighborhood_params(canvas=tuple(canvas)))), tile)
    block = draw(st.sampled_from([b for b in BLOCKS if b <= 2 ** log_size]))
    return pattern, block, draw(st.sampled_from((32, 64)))


@needs_triton
@settings(max_examples=25, deadline=None)
@given(pow2_tiled())
def test_neighborhood_tiled_random(case):
    pattern, block, fixed = case
    assert math.prod(pattern.order.padded) <= MAX_TOKENS
    assert split(check_pattern(pattern, block, fixed)) == 1


# -- the spec ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern,split_field", [
    (P.Neighborhood(canvas=50, kernel=5), 1),  # 1-D raster order
    (P.Neighborhood(canvas=(6, 8), kernel=3), 0),  # 2-D raster order: tiles of 1x1
    (P.Neighborhood(canvas=(4, 6, 8), kernel=3), 0),
    (_tiled((4, 8), canvas=(6, 8), kernel=3, extra_kv=2), 1),
    (_tiled((1, 8), canvas=(6, 8), kernel=3), 1),
    (_tiled((1, 1), canvas=(6, 8), kernel=3), 0),
    (_tiled((3, 8), canvas=(6, 8), kernel=3), 0),
    (_tiled((2, 4, 8), canvas=(4, 6, 8), kernel=3), 1),
    (_tiled((2, 6, 8), canvas=(4, 6, 8), kernel=3), 0),
    (_tiled((16,), canvas=50, kernel=5), 1),
    (_tiled((12,), canvas=50, kernel=5), 0),
])
def test_spec_split_and_round_trip(pattern, split_field):
    tiled = isinstance(pattern, Tiled)
    canvas = pattern.base.canvas if tiled else pattern.canvas
    for raster_io in (False, True) if tiled and split_field else (False,):
        spec = masks.mask_spec(pattern, *lengths(pattern), raster_io=raster_io)
        assert split(spec) == split_field
        ints = spec.to_ints()
        assert list(spec.constexpr) == ints and spec.kinds == ("window",)
        assert masks.MaskSpec.from_ints(ints) == spec
        # where the kernels read the fields of the flat tuple
        assert ints[S.SPLIT] == split_field and ints[S.RASTER_IO] == raster_io
        assert ints[S.AXES + S.AXIS_L] == canvas[0]
