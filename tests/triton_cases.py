"""The cases and helpers that the tests of the Triton forward and backward share.

``CASES``: patterns through ``foveate.attention(backend="triton")`` with their shapes and the
paths they must take; ``inputs`` draws their tensors; the expected masks come from ``brute.py``
(never from foveate's own ``mask_mod``). Small shapes: the kernels run in Triton's interpreter
on a CPU.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from foveate import patterns as P

import brute
from conftest import make_qkv
from kernel_spy import DEVICE

F32, F16 = torch.float32, torch.float16
#: The block size of the layouts the tests hand the kernels directly.
BLOCK = 128


@functools.cache
def brute_mask(pattern, q_len: int, kv_len: int) -> torch.Tensor:
    """The raster-order ``(q_len, kv_len)`` mask, from brute.py's loops (not foveate's mask_mod)."""
    return brute.pattern_mask(pattern, q_len, kv_len)


def flat(t: torch.Tensor) -> torch.Tensor:
    """``(B, H, *canvas, D)`` -> ``(B, H, N, D)``."""
    return t.reshape(t.shape[0], t.shape[1], -1, t.shape[-1])


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    pattern: P.Pattern | None
    q_len: int
    kv_len: int
    tile: object = None  # attention()'s tile argument
    canvas_shaped: bool = False  # q (and k, v without extra_kv) as (B, H, *canvas, D)
    heads: tuple[int, int] = (4, 2)
    batch: int = 2
    dims: tuple[int, int] = (32, 32)
    empty_rows: bool = False  # some queries see no key
    tiled: bool = False  # the kernel must run in a tiled order (TILE_SIZE == 128)
    padded: bool = False  # ... on a canvas padded up to whole tiles
    partial: bool = True  # the layout has partial blocks (the in-kernel mask runs)
    f16: bool = False  # also run in float16 (a subset: the interpreter is slow)


def nbhd(**kw) -> P.Neighborhood:
    return P.Neighborhood(**kw)


# Canvas cases run with one batch row and GQA 2:1 heads (batch > 1, 4:2 and 4:1 heads are
# covered by the 1-D cases and a few canvas ones); tiled canvases stay at 2-4 blocks.
CANVAS = {"batch": 1, "heads": (2, 1)}
NB2 = nbhd(canvas=(16, 20), kernel=(5, 7))
NB2_DIL = nbhd(canvas=(14, 20), kernel=(3, 5), dilation=(2, 1), stride=(1, 3), causal=(False, True))
NB3 = nbhd(canvas=(4, 8, 10), kernel=(3, 3, 5), dilation=(1, 2, 1), stride=(1, 1, 2), causal=(True, False, False))
NB2_EXTRA = nbhd(canvas=(10, 15), kernel=(3, 5), extra_kv=7)
NB2_SQ = nbhd(canvas=(16, 16), kernel=(5, 7))
NB2_SMALL = nbhd(canvas=(8, 20), kernel=(5, 7))
NB2_PAD = nbhd(canvas=(12, 14), kernel=(5, 7), dilation=(1, 2), causal=(True, False))
NB2_TALL = nbhd(canvas=(10, 20), kernel=(3, 5), dilation=(2, 1), stride=(1, 3), causal=(False, True))
NB2_PAD_EXTRA = nbhd(canvas=(12, 12), kernel=(3, 4), stride=(1, 2), extra_kv=5)
NB3_TILE = nbhd(canvas=(4, 8, 8), kernel=(3, 3, 5), dilation=(1, 2, 1), stride=(1, 1, 2), causal=(True, False, False))
NB3_PAD = nbhd(canvas=(3, 6, 10), kernel=(2, 3, 3), dilation=(1, 2, 3), stride=(2, 1, 1), causal=(False, True, False))
NB3_AUTO = nbhd(canvas=(4, 8, 16), kernel=(3, 5, 5))  # auto: tile (4, 8, 4)
NB2_AUTO = nbhd(canvas=(12, 24), kernel=(7, 7))  # auto: tile (4, 32), padded

CASES = [
    # -- 1-D band patterns (bottom-right alignment when q_len != kv_len)
    Case("dense-q300", None, 300, 300, heads=(2, 2), partial=False),
    Case("dense-q200-kv333", P.Dense(), 200, 333, partial=False, f16=True),
    Case("dense-q333-kv140-mqa", P.Dense(), 333, 140, heads=(4, 1), batch=1, partial=False),
    Case("causal-q256", P.Causal(), 256, 256),
    Case("causal-q300", P.Causal(), 300, 300, f16=True),
    Case("causal-q100-kv300-chunked-prefill", P.Causal(), 100, 300, f16=True),
    Case("causal-q1-kv300-decode", P.Causal(), 1, 300, heads=(4, 1), partial=False),
    Case("causal-q300-kv100-empty-rows", P.Causal(), 300, 100, empty_rows=True, f16=True),
    Case("sliding-left50", P.SlidingWindow(50), 300, 300, f16=True),
    Case("sliding-centred-40-40", P.SlidingWindow(40, 40), 300, 300, batch=1),
    Case("sliding-0-0-diagonal", P.SlidingWindow(0, 0), 200, 200, heads=(2, 2)),
    Case("sliding-10-60-q150-kv400", P.SlidingWindow(10, 60), 150, 400),
    Case("sliding-20-5-q300-kv130-empty-rows", P.SlidingWindow(20, 5), 300, 130, empty_rows=True, f16=True),
    Case("sliding-left-wider-than-int32", P.SlidingWindow(10 ** 12, 5), 300, 300, batch=1),
    # -- Neighborhood in raster order (tile=None)
    Case("nbhd1d-k31", nbhd(canvas=300, kernel=31), 300, 300, **CANVAS),
    Case("nbhd1d-k20-dil3-stride4-causal", nbhd(canvas=300, kernel=20, dilation=3, stride=4, causal=True), 300,
         300, **CANVAS, f16=True),
    Case("nbhd2d-raster", NB2, 320, 320, **CANVAS),
    Case("nbhd2d-dil-stride-causal-raster", NB2_DIL, 280, 280, **CANVAS),
    Case("nbhd3d-dil-stride-causal-raster-canvas-shaped", NB3, 320, 320, canvas_shaped=True, **CANVAS, f16=True),
    Case("nbhd2d-extra7-raster-mqa-batch2", NB2_EXTRA, 150, 157, heads=(4, 1)),
    # -- Neighborhood in tiled order: explicit tiles of 128 tokens, padded canvases, "auto"
    Case("nbhd2d-tile16x8", NB2_SQ, 256, 256, tile=(16, 8), tiled=True, **CANVAS),
    Case("nbhd2d-tile8x16-padded-canvas-shaped", NB2_SMALL, 160, 160, tile=(8, 16), canvas_shaped=True, tiled=True,
         padded=True, **CANVAS),
    Case("nbhd2d-dil-causal-tile8x16-padded-gqa-batch2", NB2_PAD, 168, 168, tile=(8, 16), tiled=True, padded=True,
         f16=True),
    Case("nbhd2d-dil-stride-causal-tile4x32-padded", NB2_TALL, 200, 200, tile=(4, 32), tiled=True, padded=True,
         **CANVAS),
    Case("nbhd2d-extra5-tile8x16-padded", NB2_PAD_EXTRA, 144, 149, tile=(8, 16), tiled=True, padded=True,
         **CANVAS, f16=True),
    Case("nbhd3d-dil-stride-causal-tile2x8x8", NB3_TILE, 256, 256, tile=(2, 8, 8), tiled=True, **CANVAS),
    Case("nbhd3d-dil-stride-causal-tile2x8x8-padded-canvas-shaped", NB3_PAD, 180, 180, tile=(2, 8, 8),
         canvas_shaped=True, tiled=True, padded=True, **CANVAS, f16=True),
    Case("nbhd3d-tile-auto", NB3_AUTO, 512, 512, tile="auto", tiled=True, batch=1, heads=(1, 1)),
    Case("nbhd2d-tile-auto-padded-canvas-shaped", NB2_AUTO, 288, 288, tile="auto", canvas_shaped=True, tiled=True,
         padded=True, **CANVAS),
]


def inputs(rng, case: Case, dtype):
    pattern = case.pattern
    canvas = pattern.canvas if pattern is not None else None
    if case.canvas_shaped:
        q_shape = tuple(canvas)
        kv_shape = tuple(canvas) if not pattern.extra_kv else (case.kv_len,)
    else:
        q_shape, kv_shape = (case.q_len,), (case.kv_len,)
    q, k, v = make_qkv(rng, batch=case.batch, heads_q=case.heads[0], heads_kv=case.heads[1], q_shape=q_shape,
                       kv_shape=kv_shape, head_dim=case.dims[0], head_dim_v=case.dims[1], dtype=dtype)
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


def random_grid(gen, shape, values=(0, 2), empty_row=True) -> torch.Tensor:
    vals = torch.tensor(values, dtype=torch.int8)
    grid = vals[torch.randint(len(values), shape, generator=gen)]
    if empty_row:  # one q block that visits nothing: its queries get output 0, lse -inf
        grid[0, -1, 1, :] = 0
    grid[..., 0, 0] = values[-1]  # and at least one visited block
    return grid


def token_mask(grid: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """The block grid expanded to a ``(B|1, H|1, q_len, kv_len)`` token mask (visited = allowed)."""
    tokens = grid.repeat_interleave(BLOCK, dim=2).repeat_interleave(BLOCK, dim=3)
    return tokens[:, :, :q_len, :kv_len]
