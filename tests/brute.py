"""Brute-force definitions of the pattern masks and of the block classification.

Written from docs/design.md ("Patterns (contract)", "Neighborhood", "Sequence patterns",
"BlockLayout (contract)") and from the docstring of ``foveate.tiling`` (the tiled token order)
with plain Python loops over coordinates, independently of foveate's own ``mask_mod`` /
``axis_window`` / ``TiledOrder``: the tests compare foveate against these.

Every mask function returns a dense ``torch.bool`` tensor of shape ``(q_len, kv_len)``;
``mask[i, j]`` says whether query ``i`` may see key ``j``.
"""

from __future__ import annotations

import itertools
import math

import torch

EMPTY, PARTIAL, FULL = 0, 1, 2


def _from_rows(rows: list[list[bool]], q_len: int, kv_len: int) -> torch.Tensor:
    mask = torch.tensor(rows, dtype=torch.bool) if rows else torch.zeros(0, kv_len, dtype=torch.bool)
    return mask.reshape(q_len, kv_len)


# -- 1-D sequence patterns (bottom-right alignment) ---------------------------------------


def position(i: int, q_len: int, kv_len: int) -> int:
    """Position of query ``i`` in the key sequence: ``p = i + (kv_len - q_len)``."""
    return i + (kv_len - q_len)


def dense_mask(q_len: int, kv_len: int) -> torch.Tensor:
    return _from_rows([[True for _ in range(kv_len)] for _ in range(q_len)], q_len, kv_len)


def causal_mask(q_len: int, kv_len: int) -> torch.Tensor:
    rows = []
    for i in range(q_len):
        p = position(i, q_len, kv_len)
        rows.append([j <= p for j in range(kv_len)])
    return _from_rows(rows, q_len, kv_len)


def sliding_window_mask(q_len: int, kv_len: int, left: int, right: int = 0) -> torch.Tensor:
    rows = []
    for i in range(q_len):
        p = position(i, q_len, kv_len)
        rows.append([p - left <= j <= p + right for j in range(kv_len)])
    return _from_rows(rows, q_len, kv_len)


# -- Neighborhood ---------------------------------------------------------------------------


def group_window(x_raw: int, length: int, kernel: int, dilation: int, stride: int, causal: bool):
    """docs/design.md's per-axis window of the query at raw coordinate ``x_raw``.

    Returns ``(group, start, end)``: the dilation group and the half-open window of group
    coordinates ``[start, end)``.
    """
    group = x_raw % dilation
    x = x_raw // dilation  # the query's coordinate inside its group
    lg = length // dilation + (1 if group < length % dilation else 0)
    w, s = kernel, stride
    left = w // 2
    right = w // 2 + (w % 2) - 1
    if causal:
        c = min((x // s) * s + s - 1, lg - 1)
        start = max(c - left - right, 0)
        end = min(x + 1, lg)
    else:
        c = min((x // s) * s + s // 2, lg - 1)
        start = max(c - left, 0) + (lg - right - c - 1 if c + right >= lg else 0)
        end = start + w
    return group, start, end


def axis_table(length: int, kernel: int, dilation: int, stride: int, causal: bool) -> list[list[bool]]:
    """``table[x][y]``: whether, on this axis, the query at raw coordinate ``x`` sees the key
    at raw coordinate ``y``."""
    table = []
    for x in range(length):
        group, start, end = group_window(x, length, kernel, dilation, stride, causal)
        row = []
        for y in range(length):
            row.append(y % dilation == group and start <= y // dilation < end)
        table.append(row)
    return table


def _per_axis(value, ndim: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim


def neighborhood_mask(
    canvas, kernel, dilation=1, stride=1, causal=False, extra_kv: int = 0
) -> torch.Tensor:
    """Mask of ``Neighborhood(canvas, kernel, dilation, stride, causal, extra_kv)``:
    ``(prod(canvas), prod(canvas) + extra_kv)``, tokens in row-major order."""
    canvas = _per_axis(canvas, 1)
    ndim = len(canvas)
    kernel, dilation, stride, causal = (_per_axis(v, ndim) for v in (kernel, dilation, stride, causal))
    tables = [
        axis_table(canvas[a], kernel[a], dilation[a], stride[a], causal[a]) for a in range(ndim)
    ]
    coords = list(itertools.product(*(range(n) for n in canvas)))  # row-major order
    n = len(coords)
    rows = []
    for qc in coords:
        row = []
        for kc in coords:
            row.append(all(tables[a][qc[a]][kc[a]] for a in range(ndim)))
        row.extend([True] * extra_kv)
        rows.append(row)
    return _from_rows(rows, n, n + extra_kv)


def neighborhood_mask_of(pattern) -> torch.Tensor:
    """The brute-force mask of a ``foveate`` Neighborhood (reads only its parameters)."""
    return neighborhood_mask(
        pattern.canvas, pattern.kernel, pattern.dilation, pattern.stride, pattern.causal,
        pattern.extra_kv,
    )


# -- blocks -----------------------------------------------------------------------------------


def block_grid(mask: torch.Tensor, block_q: int, block_kv: int) -> torch.Tensor:
    """``int8 (nq, nkv)``: 0 when no pair of the block is allowed, 2 when every *existing*
    pair is (the last block of each axis is short), 1 otherwise."""
    q_len, kv_len = mask.shape
    nq, nkv = math.ceil(q_len / block_q), math.ceil(kv_len / block_kv)
    rows = mask.tolist()
    grid = torch.zeros(nq, nkv, dtype=torch.int8)
    for qb in range(nq):
        for kb in range(nkv):
            allowed = existing = 0
            for i in range(qb * block_q, min((qb + 1) * block_q, q_len)):
                for j in range(kb * block_kv, min((kb + 1) * block_kv, kv_len)):
                    existing += 1
                    allowed += rows[i][j]
            grid[qb, kb] = EMPTY if allowed == 0 else FULL if allowed == existing else PARTIAL
    return grid


def block_areas(q_len: int, kv_len: int, block_q: int, block_kv: int) -> torch.Tensor:
    """``(nq, nkv)``: the number of existing pairs of each block (the last block of each axis
    is short)."""
    q_sizes = [min(block_q, q_len - i) for i in range(0, q_len, block_q)]
    kv_sizes = [min(block_kv, kv_len - j) for j in range(0, kv_len, block_kv)]
    return torch.tensor(q_sizes)[:, None] * torch.tensor(kv_sizes)[None, :]


# -- the tiled token order --------------------------------------------------------------------
#
# The canvas is padded up to whole tiles and its tokens are ordered tile by tile (tiles in
# raster order of the tile grid, raster order inside a tile). Padded keys are never allowed; a
# padded query acts as the canvas query at its coordinates clamped to the canvas; the
# ``extra_kv`` keys come after the padded canvas.


def padded_canvas(canvas, tile) -> tuple[int, ...]:
    return tuple(-(-n // t) * t for n, t in zip(canvas, tile))


def tiled_coords(canvas, tile) -> list[tuple[int, ...]]:
    """Canvas coordinates of every position of the tiled sequence (padding: past the canvas)."""
    grid = [-(-n // t) for n, t in zip(canvas, tile)]
    coords = []
    for g in itertools.product(*(range(x) for x in grid)):  # tiles in raster order of the grid
        for inner in itertools.product(*(range(t) for t in tile)):  # raster order inside a tile
            coords.append(tuple(ga * ta + ia for ga, ta, ia in zip(g, tile, inner)))
    return coords


def _raster_index(coord, canvas) -> int:
    flat = 0
    for c, n in zip(coord, canvas):
        flat = flat * n + c
    return flat


def _is_real(coord, canvas) -> bool:
    return all(c < n for c, n in zip(coord, canvas))


def tiled_permutation(canvas, tile) -> tuple[list[int], list[int]]:
    """``(tiled_to_raster, raster_to_tiled)`` as lists; ``-1`` at padding positions."""
    coords = tiled_coords(canvas, tile)
    tiled_to_raster = [_raster_index(c, canvas) if _is_real(c, canvas) else -1 for c in coords]
    raster_to_tiled = [-1] * math.prod(canvas)
    for p, r in enumerate(tiled_to_raster):
        if r >= 0:
            raster_to_tiled[r] = p
    return tiled_to_raster, raster_to_tiled


def tiled_mask(raster_mask: torch.Tensor, canvas, tile, extra_kv: int = 0) -> torch.Tensor:
    """The mask in tiled order, from the raster-order mask ``(N, N + extra_kv)``.

    Query ``p`` acts as the canvas query at its coordinates clamped to the canvas; key ``p``
    is allowed only if it is a canvas token; extra keys follow the padded canvas."""
    coords = tiled_coords(canvas, tile)
    n_canvas, n_tiled = math.prod(canvas), len(coords)
    assert raster_mask.shape == (n_canvas, n_canvas + extra_kv)
    rows = []
    for qc in coords:
        src = _raster_index(tuple(min(c, n - 1) for c, n in zip(qc, canvas)), canvas)
        row = []
        for kc in coords:
            row.append(bool(raster_mask[src, _raster_index(kc, canvas)]) if _is_real(kc, canvas) else False)
        row.extend(raster_mask[src, n_canvas:].tolist())
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool).reshape(n_tiled, n_tiled + extra_kv)


def tiled_mask_indexed(raster_mask: torch.Tensor, canvas, tile, extra_kv: int = 0) -> torch.Tensor:
    """:func:`tiled_mask` by indexing with the loop-built permutation (faster, for the larger
    brute-force searches); checked equal to it in ``test_tiling.check_tiled_mask``."""
    coords = tiled_coords(canvas, tile)
    n_canvas = math.prod(canvas)
    q_src = torch.tensor([_raster_index(tuple(min(c, n - 1) for c, n in zip(qc, canvas)), canvas) for qc in coords])
    k_real = torch.tensor([_is_real(kc, canvas) for kc in coords])
    k_src = torch.tensor([_raster_index(kc, canvas) if _is_real(kc, canvas) else 0 for kc in coords])
    rows = raster_mask[q_src]
    return torch.cat([rows[:, k_src] & k_real[None, :], rows[:, n_canvas:]], dim=1)


def sinks_mask(q_len: int, kv_len: int, n: int) -> torch.Tensor:
    """Every query sees the first ``n`` keys."""
    return _from_rows([[j < n for j in range(kv_len)] for _ in range(q_len)], q_len, kv_len)


# -- sequence patterns of issue #25 (prefix LM, global tokens, chunks, PowerAttention, S2) --------


def prefix_lm_mask(q_len: int, kv_len: int, prefix: int) -> torch.Tensor:
    """Keys up to the query's position, and the whole prefix for queries inside the prefix."""
    rows = []
    for i in range(q_len):
        p = position(i, q_len, kv_len)
        rows.append([j <= p or (p < prefix and j < prefix) for j in range(kv_len)])
    return _from_rows(rows, q_len, kv_len)


def global_mask(q_len: int, kv_len: int, n: int) -> torch.Tensor:
    """The first ``n`` positions see every key and are seen by every query."""
    rows = []
    for i in range(q_len):
        p = position(i, q_len, kv_len)
        rows.append([p < n or j < n for j in range(kv_len)])
    return _from_rows(rows, q_len, kv_len)


def chunk_causal_mask(q_len: int, kv_len: int, chunk: int) -> torch.Tensor:
    """A key is allowed when its chunk is not after the query's (queries at ``p < 0``: none)."""
    rows = []
    for i in range(q_len):
        p = position(i, q_len, kv_len)
        rows.append([p >= 0 and j // chunk <= p // chunk for j in range(kv_len)])
    return _from_rows(rows, q_len, kv_len)


def _powers_of_two(limit: int) -> set[int]:
    powers, d = set(), 1
    while d <= limit:
        powers.add(d)
        d *= 2
    return powers


def power_mask(q_len: int, kv_len: int, block: int, window: int, sink: int) -> torch.Tensor:
    """PowerAttention: causal; the key's block is a sink, within the window, or at a power-of-two
    distance (in blocks) from the query's block."""
    powers = _powers_of_two(kv_len)
    rows = []
    for i in range(q_len):
        p = position(i, q_len, kv_len)
        row = []
        for j in range(kv_len):
            d = p // block - j // block
            row.append(j <= p and (j // block < sink or d < window or d in powers))
        rows.append(row)
    return _from_rows(rows, q_len, kv_len)


def strided_heads_mask(q_len: int, kv_len: int, block: int, local: int, vertical: int, kv_heads: int,
                       group: int = 1, offset: int = 0) -> torch.Tensor:
    """S2-Attention, ``(kv_heads * group, q_len, kv_len)``: query head ``hq`` uses kv head ``hq //
    group``'s pattern; causal, and the key's block within ``local`` blocks of the query's or in
    the head's shard."""
    step = max(1, vertical // kv_heads)
    heads = []
    for hq in range(kv_heads * group):
        h = hq // group
        rows = []
        for i in range(q_len):
            p = position(i, q_len, kv_len)
            row = []
            for j in range(kv_len):
                near = p // block - j // block < local
                shard = (j // block + h * step + offset) % vertical == 0
                row.append(j <= p and (near or shard))
            rows.append(row)
        heads.append(_from_rows(rows, q_len, kv_len))
    return torch.stack(heads)


def user_mask(fn, q_len: int, kv_len: int, b: int = 0, h: int = 0) -> torch.Tensor:
    """A user's ``mask_mod`` (its own definition) on every (query, key) pair: an index grid."""
    q_idx, kv_idx = torch.arange(q_len)[:, None], torch.arange(kv_len)[None, :]
    return torch.broadcast_to(fn(torch.tensor(b), torch.tensor(h), q_idx, kv_idx), (q_len, kv_len)).clone()


def pattern_mask(pattern, q_len: int, kv_len: int) -> torch.Tensor:
    """The brute-force ``(q_len, kv_len)`` mask of a foveate Dense, Causal, SlidingWindow,
    Sinks, PrefixLM, Global, ChunkCausal, PowerAttention, Mask or Neighborhood (raster order), of
    unions and intersections of them, or of a
    Tiled Neighborhood or composition (tiled order); reads only the patterns' parameters."""
    name = type(pattern).__name__
    if name == "Dense":
        return dense_mask(q_len, kv_len)
    if name == "Causal":
        return causal_mask(q_len, kv_len)
    if name == "SlidingWindow":
        return sliding_window_mask(q_len, kv_len, pattern.left, pattern.right)
    if name == "Sinks":
        return sinks_mask(q_len, kv_len, pattern.n)
    if name == "Mask":
        return user_mask(pattern.fn, q_len, kv_len)
    if name == "PrefixLM":
        return prefix_lm_mask(q_len, kv_len, pattern.prefix)
    if name == "Global":
        return global_mask(q_len, kv_len, pattern.n)
    if name == "ChunkCausal":
        return chunk_causal_mask(q_len, kv_len, pattern.chunk)
    if name == "PowerAttention":
        return power_mask(q_len, kv_len, pattern.block, pattern.window, pattern.sink)
    if name in ("Union", "Intersection"):
        parts = [pattern_mask(p, q_len, kv_len) for p in pattern.parts]
        out = parts[0]
        for part in parts[1:]:
            out = (out | part) if name == "Union" else (out & part)
        return out
    if name == "Tiled":
        base = pattern.base
        n = math.prod(base.canvas)
        mask = tiled_mask(pattern_mask(base, n, n + base.extra_kv), base.canvas, pattern.tile, base.extra_kv)
    elif name == "Neighborhood":
        mask = neighborhood_mask_of(pattern)
    else:
        raise AssertionError(f"no brute-force mask for {pattern!r}")
    assert mask.shape == (q_len, kv_len), f"{pattern!r} has a {tuple(mask.shape)} mask, not {q_len} x {kv_len}"
    return mask


def classify_blocks(mask: torch.Tensor, block_q: int, block_kv: int) -> torch.Tensor:
    """The block states of a ``(B, H, q_len, kv_len)`` mask, ``int8 (B, H, nq, nkv)``: 0 no allowed pair, 2 every existing pair allowed, 1 otherwise."""
    b_, h_, q_len, kv_len = mask.shape
    nq, nkv = -(-q_len // block_q), -(-kv_len // block_kv)
    out = torch.zeros(b_, h_, nq, nkv, dtype=torch.int8)
    for i in range(nq):
        for j in range(nkv):
            blk = mask[:, :, i * block_q:(i + 1) * block_q, j * block_kv:(j + 1) * block_kv]
            allowed, existing = blk.flatten(2).sum(-1), blk[0, 0].numel()
            out[:, :, i, j] = torch.where(allowed == 0, 0, torch.where(allowed == existing, 2, 1)).to(torch.int8)
    return out
