"""Content selection on canvases: ``BlockTopK`` / ``BlockTopP`` with ``canvas=`` and
``partition="1d" | "2d" | "3d"`` (VMoBA's temporal, spatial and spatio-temporal key blocks).

Every expectation comes from a definition written here: the key blocks of each partition as
boxes of canvas coordinates, VMoBA's re-arrangement of the token axis (on canvases its chunks
divide), the documented tile choice by exhaustive search, planted inputs whose right selection
is known by construction, the mask of a selection expanded from its block grid by coordinates,
and naive float64 attention (``naive.py``) on that mask in the caller's raster order. The Triton
cases run in Triton's interpreter without a GPU: small shapes, float32 and float16.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import brute
import pytest
import torch
from layout_checks import check_structure
from naive import naive_attention
from conftest import grads_of
from kernel_spy import DEVICE, needs_triton

import foveate
from foveate import patterns as P
from foveate.selection import SelectionGeometry, antidiagonal_mass, mean_logits
from foveate.selection.naive import naive_antidiagonal_mass, naive_mean_logits
from foveate.tiling import Tiled, TiledOrder

F64, F32, F16 = torch.float64, torch.float32, torch.float16


# -- definitions ---------------------------------------------------------------------------------


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def brute_tile(canvas, partition, block):
    """The documented tile choice, by trying every side length: ``None`` for ``"1d"``; else the
    free sides (``(h, w)`` through all ``T`` frames under ``"2d"`` on a video) of product
    ``block`` (``block / T``), each at most the canvas side rounded up to a power of two, of
    least ``padded tokens x sum(1 / side)``, then least padding, then lexicographically first."""
    if partition == "1d":
        return None
    lead, plane, size = (), tuple(canvas), block
    if partition == "2d" and len(canvas) == 3:
        lead, plane, size = (canvas[0],), tuple(canvas[1:]), block // canvas[0]
    best = None
    for tile in itertools.product(*(range(1, _pow2_ceil(n) + 1) for n in plane)):
        if math.prod(tile) != size:
            continue
        padded = math.prod(-(-n // t) * t for n, t in zip(plane, tile))
        key = (padded * sum(Fraction(1, t) for t in tile), padded, tile)
        best = key if best is None or key < best else best
    return lead + best[2]


def brute_blocks(canvas, partition, block, tile):
    """The key blocks by definition, each a list of ``block`` positions: the canvas coordinates
    of its tokens in order, ``None`` for padding. ``"1d"``: runs of the raster order (the last
    one short). ``"2d"``/``"3d"``: the boxes ``tile`` cuts the canvas into (through every frame
    under ``"2d"``), boxes in raster order of their corners, tokens in raster order inside."""
    if partition == "1d":
        coords = list(itertools.product(*(range(n) for n in canvas)))
        return [coords[i:i + block] for i in range(0, len(coords), block)]
    corners = itertools.product(*(range(0, n, t) for n, t in zip(canvas, tile)))
    blocks = []
    for corner in corners:
        box = itertools.product(*(range(c, c + t) for c, t in zip(corner, tile)))
        blocks.append([x if all(a < n for a, n in zip(x, canvas)) else None for x in box])
    return blocks


def vmoba_rearrange(x: torch.Tensor, canvas, partition, tile) -> torch.Tensor:
    """VMoBA's re-arrangement of the token axis (axis 1 of ``(B, N, ...)``) for its 2-D chunks
    ``(ch, cw)`` (``(t nch ch ncw cw) -> (nch ncw t ch cw)``) and 3-D chunks ``(ct, ch, cw)``
    (``(nct ct nch ch ncw cw) -> (nct nch ncw ct ch cw)``); 1-D chunks keep the order."""
    if partition == "1d":
        return x
    b, rest = x.shape[0], x.shape[2:]
    t, h, w = canvas
    if partition == "2d":
        ch, cw = tile[1:]
        y = x.reshape(b, t, h // ch, ch, w // cw, cw, *rest)
        return y.permute(0, 2, 4, 1, 3, 5, *range(6, y.dim())).reshape(x.shape)
    ct, ch, cw = tile
    y = x.reshape(b, t // ct, ct, h // ch, ch, w // cw, cw, *rest)
    return y.permute(0, 1, 3, 5, 2, 4, 6, *range(7, y.dim())).reshape(x.shape)


def block_of_raster(pattern, n: int, size: int) -> list[int]:
    """For each raster token of the canvas, the index of its block of ``size`` positions in the
    pattern's block order (from :func:`brute_blocks` for key blocks of ``block`` tokens; query
    blocks of ``query_block`` tokens cut the same position sequence)."""
    canvas = pattern.canvas
    blocks = brute_blocks(canvas, pattern.partition, pattern.block, brute_tile(canvas, pattern.partition,
                                                                               pattern.block))
    out = [-1] * n
    for position, coord in enumerate(x for blk in blocks for x in blk):
        if coord is not None:
            out[brute._raster_index(coord, canvas)] = position // size
    return out


def expand_by_coordinates(selected, pattern) -> torch.Tensor:
    """The raster-order token mask ``(B, H, N, N)`` of a canvas selection, from its block grid:
    a pair is allowed iff the query's query block and the key's key block are selected."""
    n = math.prod(pattern.canvas)
    qb = torch.tensor(block_of_raster(pattern, n, pattern.q_block))
    kb = torch.tensor(block_of_raster(pattern, n, pattern.block))
    return selected.cpu()[:, :, qb[:, None], kb[None, :]]


# -- 1. the partition: tiles and permutation ---------------------------------------------------------


PERMUTATION_CASES = [
    ((4, 8, 8), "1d", 64), ((4, 8, 8), "2d", 64), ((4, 8, 8), "3d", 32), ((4, 8, 8), "3d", 128),
    ((3, 5, 7), "1d", 16), ((3, 5, 7), "2d", 12), ((3, 5, 7), "3d", 16), ((2, 5, 13), "3d", 16),
    ((5, 7, 9), "3d", 16), ((3, 10, 12), "2d", 24), ((2, 9, 11), "2d", 128), ((3, 10, 12), "3d", 128),
    ((6, 10), "1d", 8), ((6, 10), "2d", 8), ((32, 16), "2d", 128), ((13, 5), "2d", 16),
]


@pytest.mark.parametrize("canvas,partition,block", PERMUTATION_CASES,
                         ids=[f"{'x'.join(map(str, c))}-{p}-b{b}" for c, p, b in PERMUTATION_CASES])
def test_partition_blocks_are_the_defined_pieces_of_the_canvas(canvas, partition, block):
    pattern = P.BlockTopK(2, block=block, canvas=canvas, partition=partition)
    tile = brute_tile(canvas, partition, block)
    assert pattern.tile == tile
    if tile is not None:
        assert math.prod(tile) == block
        if partition == "2d" and len(canvas) == 3:
            assert tile[0] == canvas[0], "a 2-D block spans every frame"
    n = math.prod(canvas)
    order = pattern.order
    if partition == "1d":
        assert order is None  # the caller's raster order
        positions = list(range(n))
    else:
        assert isinstance(order, TiledOrder) and (order.canvas, order.tile) == (canvas, tile)
        positions = order.permutation()[0].tolist()  # tiled position -> raster token (-1: padding)
        assert order.num_tokens % block == 0
    want = [brute._raster_index(x, canvas) if x is not None else -1 for blk in brute_blocks(canvas, partition, block, tile)
            for x in blk]
    assert positions == want
    # The blocks of the tiled order are whole pieces: a 2-D piece holds a spatial tile of every
    # frame, a 3-D piece a (t, h, w) box; every canvas token lies in exactly one.
    seen = sorted(p for p in positions if p >= 0)
    assert seen == list(range(n))


@pytest.mark.parametrize("canvas,partition,block", [
    ((4, 8, 8), "2d", 64), ((4, 8, 8), "3d", 32), ((6, 8, 4), "3d", 16), ((2, 4, 8), "2d", 16), ((4, 8, 8), "1d", 64),
], ids=["2d", "3d", "3d-b16", "2d-b16", "1d"])
def test_partition_order_is_vmobas_rearrangement(canvas, partition, block):
    """On canvases the chunks divide, the token order is exactly VMoBA's (the key blocks are its
    chunks, each of ``block`` tokens)."""
    pattern = P.BlockTopK(2, block=block, canvas=canvas, partition=partition)
    x = torch.arange(2 * math.prod(canvas) * 3).reshape(2, math.prod(canvas), 3)
    want = vmoba_rearrange(x, canvas, partition, pattern.tile)
    got = x if pattern.order is None else pattern.order.tile_tokens(x[:, None])[:, 0]
    assert torch.equal(got, want)


def test_default_partition_tiles_the_canvas_in_its_own_dimension():
    assert P.BlockTopK(4, canvas=(16, 32, 32)).partition == "3d"
    assert P.BlockTopK(4, canvas=(32, 32)).partition == "2d"
    assert P.BlockTopK(4, canvas=(16, 32, 32)).tile == (4, 4, 8)
    assert P.BlockTopK(4, canvas=(16, 32, 32), partition="2d").tile == (16, 2, 4)
    assert P.BlockTopK(4, canvas=(30, 52), partition="2d").tile == (16, 8)


# -- 2. geometry and scores on a padded canvas ------------------------------------------------------


@pytest.mark.parametrize("canvas,tile,query_block,block,stride", [
    ((3, 5, 7), (2, 2, 4), 16, 16, 4),
    ((3, 5, 7), (2, 2, 4), 8, 16, 4),   # query blocks of padding alone (the second half of a tile)
    ((3, 5, 7), (2, 2, 4), 32, 16, 2),
    ((6, 10), (2, 4), 8, 8, 2),
], ids=["aligned", "qb8", "qb32", "image"])
def test_scores_leave_the_padding_out(canvas, tile, query_block, block, stride):
    """Padded positions (zeros) count in no block: block means average the tokens, the
    antidiagonal estimate drops groups of padding alone, blocks of padding alone are no
    candidates; each query block holding a token spreads mass 1."""
    gen = torch.Generator().manual_seed(3)
    order = TiledOrder(canvas, tile)
    n = order.num_tokens
    q = order.tile_tokens(torch.randn(2, 2, order.num_canvas, 16, generator=gen))
    k = order.tile_tokens(torch.randn(2, 1, order.num_canvas, 16, generator=gen))
    g = SelectionGeometry(n, n, query_block, block, False, 0, 0, (canvas, tile))
    real = order.permutation()[0] >= 0
    assert g.padded and torch.equal(g.real_tokens("cpu"), real)
    q_counts = [int(real[i:i + query_block].sum()) for i in range(0, n, query_block)]
    kv_counts = [int(real[j:j + block].sum()) for j in range(0, n, block)]
    assert g.q_counts("cpu").tolist() == q_counts and g.kv_counts("cpu").tolist() == kv_counts
    want_cand = (torch.tensor(q_counts)[:, None] > 0) & (torch.tensor(kv_counts)[None, :] > 0)
    assert torch.equal(g.candidates("cpu"), want_cand)
    torch.testing.assert_close(mean_logits(q, k, g, 0.3).double(), naive_mean_logits(q, k, g, 0.3),
                               rtol=1e-5, atol=1e-6)
    want = naive_antidiagonal_mass(q, k, g, 0.3, stride)
    got = antidiagonal_mass(q, k, g, 0.3, stride, method="torch")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    sums = want.sum(-1)
    live = torch.tensor(q_counts) > 0
    torch.testing.assert_close(sums[..., live], torch.ones_like(sums[..., live]))
    assert (sums[..., ~live] == 0).all()


@needs_triton
def test_fused_antidiagonal_kernel_leaves_the_padding_out():
    """The fused kernel (interpreter) against the PyTorch version on a padded tiled canvas."""
    gen = torch.Generator().manual_seed(4)
    order = TiledOrder((3, 10, 12), (2, 4, 16))  # pads 3 -> 4 frames, 10 -> 12 rows, 12 -> 16 columns
    n = order.num_tokens
    q = order.tile_tokens(torch.randn(1, 2, order.num_canvas, 16, generator=gen)).to(DEVICE)
    k = order.tile_tokens(torch.randn(1, 1, order.num_canvas, 16, generator=gen)).to(DEVICE)
    g = SelectionGeometry(n, n, 64, 128, False, 0, 0, (order.canvas, order.tile))
    got = antidiagonal_mass(q, k, g, 0.3, 8, method="triton").cpu()
    want = antidiagonal_mass(q.cpu(), k.cpu(), g, 0.3, 8, method="torch")
    # (On a GPU, float32 tl.dot runs in TF32.)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 if got.device != q.device else 1e-6)
    # Query blocks of padding alone (the last frame's half tiles: 3 frames padded to 4) get 0.
    live = g.q_counts("cpu") > 0
    assert not live.all()
    torch.testing.assert_close(got.sum(-1), live.float().expand(1, 2, -1), rtol=0, atol=1e-4)


# -- 3. selection: planted structure ----------------------------------------------------------------


def planted_canvas(pattern, *, batch, heads_q, heads_kv, dim=32, seed=0):
    """Raster-order ``q``, ``k`` on ``pattern.canvas`` where each (batch, query head, query block)
    matches a known set of key blocks (blocks as :func:`brute_blocks` defines them).

    Per (batch, key head), key block ``j`` gets its own direction ``u_j`` (orthonormal); its keys
    are ``40 u_j`` plus small noise. The queries of a query block are ``4 * sum(u_j)`` over a
    random set of ``k - |forced|`` of the other blocks, plus small noise. Forced: the first
    ``sink_blocks`` key blocks and, for a query block lying in key block ``d`` (query blocks cut
    the same order), the blocks ``|j - d| < local_blocks``. A query block of padding alone
    selects nothing. Returns ``q, k`` and the expected selection ``(B, Hq, nq, nkv)``."""
    gen = torch.Generator().manual_seed(seed)
    n = math.prod(pattern.canvas)
    qb_of, kb_of = block_of_raster(pattern, n, pattern.q_block), block_of_raster(pattern, n, pattern.block)
    positions = n if pattern.order is None else pattern.order.num_tokens
    nq, nkv = -(-positions // pattern.q_block), -(-positions // pattern.block)
    assert nkv <= dim and pattern.block % pattern.q_block == 0
    has_query = [i in qb_of for i in range(nq)]
    forced = torch.zeros(nq, nkv, dtype=torch.bool)
    for i in range(nq):
        d = i * pattern.q_block // pattern.block
        for j in range(nkv):
            forced[i, j] = has_query[i] and (j < pattern.sink_blocks or abs(j - d) < pattern.local_blocks)
    q = 0.01 * torch.randn(batch, heads_q, n, dim, generator=gen, dtype=F64)
    k = 0.01 * torch.randn(batch, heads_kv, n, dim, generator=gen, dtype=F64)
    expected = forced.expand(batch, heads_q, nq, nkv).clone()
    kb, qb = torch.tensor(kb_of), torch.tensor(qb_of)
    directions = {}
    for b in range(batch):
        for kh in range(heads_kv):
            u = torch.linalg.qr(torch.randn(dim, nkv, generator=gen, dtype=F64))[0].T
            directions[b, kh] = u
            k[b, kh] += 40 * u[kb]
    for b in range(batch):
        for h in range(heads_q):
            u = directions[b, h // (heads_q // heads_kv)]
            for i in range(nq):
                free = [j for j in range(nkv) if not forced[i, j]]
                m = max(0, min(pattern.k - int(forced[i].sum()), len(free))) if has_query[i] else 0
                for j in [free[t] for t in torch.randperm(len(free), generator=gen)[:m].tolist()]:
                    q[b, h, qb == i] += 4 * u[j]
                    expected[b, h, i, j] = True
    return q.float(), k.float(), expected


PLANTED = [
    pytest.param({"k": 4, "block": 16, "canvas": (3, 5, 7), "partition": "3d"}, id="3d-padded"),
    pytest.param({"k": 3, "block": 24, "canvas": (3, 10, 12), "partition": "2d", "sink_blocks": 0}, id="2d-video"),
    # (Stride 3: the tiles (3, 2, 2) end in a padded column, every other position of their
    # border tiles is padding, and stride 2 would pair padding with tokens only: the
    # antidiagonal estimate is then blind there. See docs/usage.md.)
    pytest.param({"k": 3, "block": 12, "canvas": (3, 5, 7), "partition": "2d", "query_block": 6, "stride": 3},
                 id="2d-padded-qb6"),
    pytest.param({"k": 3, "block": 16, "canvas": (3, 5, 7), "partition": "1d", "local_blocks": 2}, id="1d-ragged"),
    pytest.param({"k": 3, "block": 8, "canvas": (6, 10), "partition": "2d", "sink_blocks": 0}, id="image-padded"),
    pytest.param({"k": 5, "block": 32, "canvas": (4, 6, 10), "partition": "3d", "local_blocks": 0, "sink_blocks": 0},
                 id="3d-no-forced"),
]


@pytest.mark.parametrize("score", ["mean", "antidiagonal"])
@pytest.mark.parametrize("kw", PLANTED)
def test_topk_finds_the_planted_blocks_on_a_canvas(kw, score):
    pattern = P.BlockTopK(score=score, **{"stride": 2, **kw})
    q, k, expected = planted_canvas(pattern, batch=2, heads_q=4, heads_kv=2)
    sb = pattern.select(q, k)
    assert sb.order is None if pattern.partition == "1d" else sb.order.tile == pattern.tile
    assert torch.equal(sb.selected, expected)


def test_the_local_block_is_the_query_tile():
    """With only the local block (k = 1, no sink), a query sees exactly the keys of its own piece
    of the canvas (VMoBA's self chunk)."""
    gen = torch.Generator().manual_seed(1)
    for kw in ({"block": 16, "canvas": (3, 5, 7), "partition": "3d"}, {"block": 12, "canvas": (3, 5, 7),
                                                                          "partition": "2d"}):
        pattern = P.BlockTopK(1, sink_blocks=0, local_blocks=1, **kw)
        q, k = torch.randn(1, 2, 105, 8, generator=gen), torch.randn(1, 2, 105, 8, generator=gen)
        blocks = brute_blocks(pattern.canvas, pattern.partition, pattern.block, pattern.tile)
        piece = torch.zeros(105, dtype=torch.int64)
        for j, blk in enumerate(blocks):
            for x in blk:
                if x is not None:
                    piece[brute._raster_index(x, pattern.canvas)] = j
        want = piece[:, None] == piece[None, :]
        assert torch.equal(pattern.select(q, k).dense_mask(), want.expand(1, 2, 105, 105))


def test_1d_partition_is_the_sequence_selection():
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 2, 105, 8, generator=gen), torch.randn(2, 1, 105, 8, generator=gen)
    for score in ("mean", "antidiagonal"):
        canvas = P.BlockTopK(3, block=16, canvas=(3, 5, 7), partition="1d", score=score, stride=4, causal=True)
        plain = P.BlockTopK(3, block=16, score=score, stride=4, causal=True)
        a, b = canvas.select(q, k), plain.select(q, k)
        assert a.order is None and torch.equal(a.selected, b.selected)


# -- 4. the selection's pattern ------------------------------------------------------------------------


@pytest.mark.parametrize("kw,block_q,block_kv", [
    ({"block": 16, "canvas": (3, 5, 7), "partition": "3d"}, 16, 16),
    ({"block": 16, "canvas": (3, 5, 7), "partition": "3d"}, 8, 4),
    ({"block": 12, "query_block": 6, "canvas": (3, 5, 7), "partition": "2d"}, 3, 6),
    ({"block": 8, "canvas": (6, 10), "partition": "2d"}, 8, 8),
    ({"block": 64, "canvas": (4, 8, 8), "partition": "2d"}, 32, 16),  # no padding
], ids=["3d", "3d-small-blocks", "2d-qb6", "image", "unpadded"])
def test_canvas_selection_masks_and_layouts(kw, block_q, block_kv):
    """``dense_mask()`` is the selection expanded by coordinates in raster order; in the blocks'
    order (``raster=False``) it never allows a padded key and is what ``mask_mod`` says; the
    layout classifies that mask exactly (blocks with padded keys are partial)."""
    gen = torch.Generator().manual_seed(5)
    pattern = P.BlockTopP(0.6, score="mean", sink_blocks=0, **kw)
    n = math.prod(pattern.canvas)
    q, k = torch.randn(2, 3, n, 8, generator=gen), torch.randn(2, 3, n, 8, generator=gen)
    sb = pattern.select(q, k)
    order = sb.order
    assert (sb.q_len, sb.kv_len) == (order.num_tokens,) * 2
    raster = sb.dense_mask()
    assert raster.shape == (2, 3, n, n)
    assert torch.equal(raster, expand_by_coordinates(sb.selected, pattern))
    assert not raster.all() and raster.any()
    tiled = sb.dense_mask(raster=False)
    assert tiled.shape == (2, 3, sb.q_len, sb.kv_len)
    t2r, r2t = order.permutation()
    assert not tiled[..., t2r < 0].any(), "a padded key is allowed"
    assert torch.equal(tiled[:, :, r2t][:, :, :, r2t], raster)
    layout = sb.build(sb.q_len, sb.kv_len, block_q=block_q, block_kv=block_kv)
    assert torch.equal(check_structure(layout), brute.classify_blocks(tiled, block_q, block_kv))
    if order.has_padding:
        run = sb.runnable
        assert isinstance(run, Tiled) and run.tile == order.tile and run != sb.runnable
        assert run.build(sb.q_len, sb.kv_len, block_q=block_q, block_kv=block_kv) is layout
    else:
        assert sb.runnable is sb
    # Block density: selected over the blocks holding tokens.
    g = pattern.geometry(sb.q_len, sb.kv_len)
    assert sb.block_density() == pytest.approx(int(sb.selected.sum()) / (6 * int(g.candidates("cpu").sum())))


# -- 5. attention --------------------------------------------------------------------------------------


REFERENCE_CASES = [
    pytest.param(P.BlockTopK(3, block=16, canvas=(3, 5, 7), partition="3d"), (4, 2), False, id="3d-padded-gqa"),
    pytest.param(P.BlockTopP(0.6, block=12, query_block=6, stride=3, canvas=(3, 5, 7), partition="2d"), (2, 2), True,
                 id="2d-topp-antidiag-qb6-shaped"),
    pytest.param(P.BlockTopK(2, block=8, score="antidiagonal", stride=4, canvas=(6, 10), partition="2d",
                             sink_blocks=0), (2, 1), True, id="image-mqa-shaped"),
    pytest.param(P.BlockTopK(2, block=16, canvas=(3, 5, 7), partition="1d", causal=True), (2, 2), True,
                 id="1d-causal-shaped"),
    pytest.param(P.BlockTopK(3, block=32, query_block=8, canvas=(4, 6, 10), partition="3d", sink_blocks=0), (2, 2),
                 False, id="3d-qb8-empty-query-blocks"),
]


@pytest.mark.parametrize("pattern,heads,shaped", REFERENCE_CASES)
def test_reference_attention_is_naive_attention_on_the_raster_mask(pattern, heads, shaped):
    """Forward and backward (out, lse, dq, dk, dv) in float64 equal naive attention with the
    selection's dense mask in the caller's raster order; canvas-shaped inputs give canvas-shaped
    outputs; the inputs are not modified."""
    gen = torch.Generator().manual_seed(11)
    canvas, n = pattern.canvas, math.prod(pattern.canvas)
    q = torch.randn(2, heads[0], n, 16, generator=gen, dtype=F64)
    k, v = (torch.randn(2, heads[1], n, 16, generator=gen, dtype=F64) for _ in range(2))
    d_out = torch.randn(2, heads[0], n, 16, generator=gen, dtype=F64)
    d_lse = torch.randn(2, heads[0], n, generator=gen, dtype=F64)
    mask = pattern.select(q, k).dense_mask()
    assert mask.shape == (2, heads[0], n, n) and not mask.all()

    def shape(t):
        return t.reshape(*t.shape[:2], *canvas, t.shape[-1]) if shaped else t

    def run(q, k, v):
        out, lse = foveate.attention(shape(q), shape(k), shape(v), pattern, backend="reference", return_lse=True)
        assert out.shape == shape(q).shape and lse.shape == shape(q).shape[:-1]
        return out.reshape(q.shape), lse.reshape(q.shape[:-1])

    clones = [t.clone() for t in (q, k, v)]
    got = grads_of(run, q, k, v, d_out, d_lse)
    want = grads_of(lambda q, k, v: naive_attention(q, k, v, mask), q, k, v, d_out, d_lse)
    assert all(torch.equal(a, b) for a, b in zip(clones, (q, k, v))), "attention() modified its inputs"
    out, lse = got[:2]
    assert torch.equal(torch.isinf(lse), torch.isinf(want[1]))
    fin = torch.isfinite(want[1])
    torch.testing.assert_close(out, want[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lse[fin].double(), want[1][fin], rtol=1e-6, atol=1e-6)
    for name, g, w in zip(("dq", "dk", "dv"), got[2:], want[2:]):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-7, msg=name)


def test_a_canvas_selection_given_directly_takes_its_own_order():
    """A ``SelectedBlocks`` with an order is a pattern in that order (as ``Tiled`` patterns are):
    given to attention() directly it takes tiled inputs; ``build(q=, k=)`` of the pattern is the
    selection's layout in that order."""
    gen = torch.Generator().manual_seed(6)
    pattern = P.BlockTopK(2, block=16, canvas=(6, 10), partition="2d", sink_blocks=0)
    q, k, v = (torch.randn(1, 2, 60, 8, generator=gen, dtype=F64) for _ in range(3))
    sb = pattern.select(q, k)
    order = sb.order
    assert order.tile == (4, 4) and order.num_tokens == 96  # (6, 10) padded to (8, 12)
    tiled = foveate.attention(*(order.tile_tokens(t) for t in (q, k, v)), sb, backend="reference")
    want = foveate.attention(q, k, v, pattern, backend="reference")
    torch.testing.assert_close(order.untile_tokens(tiled), want, rtol=0, atol=0)
    layout = pattern.build(60, 60, block_q=8, block_kv=8, q=q, k=k)
    assert (layout.q_len, layout.kv_len) == (96, 96)
    assert torch.equal(layout.to_dense(), sb.build(96, 96, block_q=8, block_kv=8).to_dense())
    with pytest.raises(ValueError, match="needs q_len=60"):
        pattern.build(96, 96, block_q=8, block_kv=8, q=q, k=k)


def test_float32_reference_attention_on_a_canvas():
    gen = torch.Generator().manual_seed(12)
    pattern = P.BlockTopK(3, block=16, canvas=(5, 7, 9), partition="3d")
    q, k, v = (torch.randn(1, 2, 5, 7, 9, 16, generator=gen) for _ in range(3))
    mask = pattern.select(q.flatten(2, 4), k.flatten(2, 4)).dense_mask()
    out = foveate.attention(q, k, v, pattern, backend="reference")
    want, _ = naive_attention(*(t.flatten(2, 4).double() for t in (q, k, v)), mask)
    torch.testing.assert_close(out.flatten(2, 4).double(), want, rtol=1e-5, atol=1e-5)


TRITON_CASES = [
    # A video, 3-D cubes (4, 8, 4) on a canvas padded 3 -> 4 frames and 7 -> 8 rows, 9 -> 12
    # columns (every block has padded keys: partial), GQA.
    pytest.param(P.BlockTopK(2, block=128, canvas=(3, 7, 9), partition="3d", sink_blocks=0), (2, 1), F32,
                 id="3d-padded-gqa-f32"),
    # Spatial tiles through both frames, (2, 4, 16), mean-score top-p, half the canvas padding.
    pytest.param(P.BlockTopP(0.5, block=128, score="mean", canvas=(2, 9, 11), partition="2d"), (1, 1), F16,
                 id="2d-padded-topp-f16"),
    # An image the tiles divide: no padding, every selected block full.
    pytest.param(P.BlockTopK(2, block=128, canvas=(32, 16), partition="2d", sink_blocks=0), (1, 1), F16,
                 id="image-unpadded-f16"),
]


@needs_triton
@pytest.mark.parametrize("pattern,heads,dtype", TRITON_CASES)
def test_triton_matches_naive_attention_on_canvas_selections(triton_spy, pattern, heads, dtype):  # noqa: F811
    """The fused kernels on a canvas selection (tokens in the partition's tiled order, padded keys
    masked inside partial blocks), forward and backward, against naive float64 attention on the
    raster mask: float32 within 1e-4, float16 within twice naive float16's error plus 1e-3."""
    gen = torch.Generator().manual_seed(13)
    canvas, n = pattern.canvas, math.prod(pattern.canvas)

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).to(dtype).to(DEVICE)

    q, k, v = draw(1, heads[0], *canvas, 32), draw(1, heads[1], *canvas, 32), draw(1, heads[1], *canvas, 32)
    d_out, d_lse = draw(1, heads[0], *canvas, 32), draw(1, heads[0], *canvas).float()
    mask = pattern.select(q.flatten(2, -2), k.flatten(2, -2)).dense_mask().cpu()
    assert mask.any() and not mask.all()

    tri = grads_of(lambda q, k, v: foveate.attention(q, k, v, pattern, backend="triton", return_lse=True),
                 q, k, v, d_out, d_lse)
    assert triton_spy == {"fwd": 1, "bwd": 1}, f"the triton kernels did not run: {triton_spy}"
    assert tri[0].shape == q.shape and tri[1].shape == q.shape[:-1]
    tri = [t.cpu().reshape(t.shape[0], t.shape[1], n, -1).squeeze(-1) if i == 1 else
           t.cpu().reshape(t.shape[0], t.shape[1], n, t.shape[-1]) for i, t in enumerate(tri)]
    cpu = [t.cpu().flatten(2, -2) for t in (q, k, v, d_out)] + [d_lse.cpu().flatten(2)]
    truth = grads_of(lambda q, k, v: naive_attention(q, k, v, mask), *(t.double() for t in cpu))
    low = None if dtype == F32 else grads_of(lambda q, k, v: naive_attention(q, k, v, mask), *cpu)
    for i, name in enumerate(("out", "lse", "dq", "dk", "dv")):
        t, w = tri[i].double(), truth[i]
        assert t.shape == w.shape and torch.isfinite(t).all(), name
        size = w.abs().max().item() + 1e-6
        err = (t - w).abs().max().item()
        if dtype == F32:
            assert err <= 1e-4 * max(1.0, size), f"{name}: triton error {err:.3g}"
        else:
            err_low = (low[i].double() - w).abs().max().item()
            assert err <= 2 * err_low + 1e-3 * max(1.0, size), f"{name}: {err:.3g} > 2 x naive f16 {err_low:.3g}"


@pytest.mark.flex
def test_flex_matches_reference_on_a_padded_canvas_selection():
    if "flex" not in foveate.backends.available():
        pytest.skip("FlexAttention not available")
    gen = torch.Generator().manual_seed(14)
    pattern = P.BlockTopK(2, block=128, canvas=(20, 13), partition="2d", sink_blocks=0)
    q, k, v = (torch.randn(1, 2, 20, 13, 16, generator=gen) for _ in range(3))
    with torch.no_grad():
        out = foveate.attention(q, k, v, pattern, backend="flex")
    ref = foveate.attention(q, k, v, pattern, backend="reference")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


# -- 6. bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,error,match", [
    (lambda: P.BlockTopK(2, canvas=(4, 8, 8), partition="4d"), ValueError, r"^partition='4d': expected one of"),
    (lambda: P.BlockTopK(2, canvas=(4, 8, 8), partition="2D"), ValueError, r"^partition='2D'"),
    (lambda: P.BlockTopP(0.9, canvas=(4, 8, 8), partition=2), ValueError, r"^partition=2"),
    (lambda: P.BlockTopK(2, partition="2d"), ValueError, r"^partition='2d' needs a canvas"),
    (lambda: P.BlockTopP(0.9, partition="1d"), ValueError, r"^partition='1d' needs a canvas"),
    (lambda: P.BlockTopK(2, canvas=(64,)), TypeError, r"^canvas must be a tuple of 2 or 3 ints"),
    (lambda: P.BlockTopK(2, canvas=(2, 4, 8, 8)), TypeError, r"^canvas must be"),
    (lambda: P.BlockTopK(2, canvas=(4.0, 8)), TypeError, r"^canvas must be"),
    (lambda: P.BlockTopK(2, canvas=64), TypeError, r"^canvas must be"),
    (lambda: P.BlockTopK(2, canvas=(0, 8)), ValueError, r"^canvas=\(0, 8\)"),
    (lambda: P.BlockTopK(2, canvas=(32, 32), partition="3d"), ValueError, r"^partition='3d' needs a 3-D canvas"),
    (lambda: P.BlockTopK(2, canvas=(3, 32, 32), partition="2d"), ValueError,
     r"^block=128: partition='2d' tiles span all 3 frames"),
    (lambda: P.BlockTopK(2, canvas=(2, 4, 4), partition="3d"), ValueError, r"^block=128: no 3d tile"),
    (lambda: P.BlockTopK(2, canvas=(4, 8, 8), partition="2d", causal=True), ValueError,
     r"^causal=True needs partition='1d'"),
    (lambda: P.BlockTopP(0.9, canvas=(8, 8), causal=True), ValueError, r"^causal=True needs partition='1d'"),
])
def test_bad_canvas_arguments_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_inputs_that_do_not_fit_the_canvas_are_refused_and_left_alone():
    gen = torch.Generator().manual_seed(9)
    pattern = P.BlockTopK(2, block=16, canvas=(3, 5, 7), partition="3d")
    q, k, v = (torch.randn(1, 2, 100, 8, generator=gen) for _ in range(3))
    shaped = [torch.randn(1, 2, 3, 7, 5, 8, generator=gen) for _ in range(3)]
    saved = [t.clone() for t in (q, k, v, *shaped)]
    with pytest.raises(ValueError, match=r"^q has 100 tokens but BlockTopK\(.*\) needs 105"):
        foveate.attention(q, k, v, pattern, backend="reference")
    with pytest.raises(ValueError, match=r"^q has canvas axes \(3, 7, 5\) but the pattern's canvas is \(3, 5, 7\)"):
        foveate.attention(*shaped, pattern, backend="reference")
    with pytest.raises(ValueError, match=r"needs q_len=105 and kv_len=105"):
        pattern.select(q, k)
    with pytest.raises(ValueError, match=r"^q has 100 tokens; in TiledOrder"):
        pattern.select(q, k, ordered=True)
    q105 = torch.randn(1, 2, 105, 8, generator=gen)
    with pytest.raises(ValueError, match=r"^tile=\(1, 2, 8\): BlockTopK"):
        foveate.attention(q105, q105, q105, pattern, backend="reference", tile=(1, 2, 8))
    with pytest.raises(ValueError, match=r"^tile='x'"):
        foveate.attention(q105, q105, q105, pattern, backend="reference", tile="x")
    assert all(torch.equal(a, b) for a, b in zip(saved, (q, k, v, *shaped)))


def test_selected_blocks_check_their_order():
    order = TiledOrder((3, 5, 7), (1, 2, 8))
    sel = torch.ones(1, 1, 9, 9, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^order=TiledOrder.* holds 144 tokens"):
        P.SelectedBlocks(sel, q_len=105, kv_len=105, query_block=16, block=16, causal=False, order=order)
    with pytest.raises(ValueError, match=r"^causal=True"):
        P.SelectedBlocks(sel, q_len=144, kv_len=144, query_block=16, block=16, causal=True, order=order)
    with pytest.raises(TypeError, match=r"^order must be"):
        P.SelectedBlocks(sel, q_len=144, kv_len=144, query_block=16, block=16, causal=False, order=(1, 2, 8))


# -- 7. value semantics --------------------------------------------------------------------------------


def test_canvas_patterns_are_values():
    a = P.BlockTopK(4, canvas=[4, 8, 8])
    assert a.canvas == (4, 8, 8) and a.partition == "3d"
    assert a == P.BlockTopK(4, canvas=(4, 8, 8), partition="3d") and hash(a) == hash(P.BlockTopK(4, canvas=(4, 8, 8)))
    assert a != P.BlockTopK(4, canvas=(4, 8, 8), partition="1d") != P.BlockTopK(4)
    assert repr(a) == "BlockTopK(4, canvas=(4, 8, 8), partition='3d')"
    for p in (a, P.BlockTopP(0.5, block=64, canvas=(4, 8, 8), partition="2d"), P.BlockTopK(2, canvas=(8, 16))):
        assert eval(repr(p), {"BlockTopK": P.BlockTopK, "BlockTopP": P.BlockTopP}) == p
    assert P.BlockTopK(4, canvas=(4, 8, 8)).default_lengths() == (256, 256)
    # The presets take a canvas too.
    assert P.MoBA(block=128, topk=3, causal=False, canvas=(4, 8, 8), partition="2d") == P.BlockTopK(
        3, block=128, sink_blocks=0, query_block=128, canvas=(4, 8, 8), partition="2d")
    assert P.XAttention(causal=False, canvas=(32, 32)).tile == (8, 16)
    with pytest.raises(ValueError, match=r"^causal=True needs partition='1d'"):
        P.MoBA(block=128, canvas=(4, 8, 8))
