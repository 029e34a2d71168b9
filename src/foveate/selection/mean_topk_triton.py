"""The ``"mean"`` score's top-k selection (MoBA, ``BlockTopK(score="mean")``) as fused Triton
kernels (CUDA, or the interpreter).

Computes exactly what :func:`foveate.selection.scores.mean_topk`'s PyTorch path does,
``select_topk(mean_logits(q, k, geometry, scale), k_blocks, candidates, forced)``, for ``q``
``(B, Hq, Nq, D)`` and ``k`` ``(B, Hkv, Nkv, D)`` (``Hq % Hkv == 0``, ``D <= 256``, any float
dtype, any strides): a bool ``(B, Hq, nq, nkv)``. In two launches:

- :func:`block_means_pair` (queries and keys in one launch): float32 ``(B, H, ceil(N / block),
  D)`` mean token of each block, one program per (batch, head, block) (and slice of the head
  dim, when there are few blocks), one read of the input;
- :func:`_select_kernel`: per (batch, query head) and ``BLOCK_M`` query blocks, the scores
  ``scale * qmean . kmean`` against every key block of the group's key head, then the top-k
  over each row, written as the row of ``selected`` and (:func:`mean_topk_lists`) as the
  row's partial and full lists of the layout, so that no layout builder runs after it.

The selection kernel also takes scores computed elsewhere (:func:`topk_select`: the
antidiagonal score's top-k, in one launch).

Why: the PyTorch path is some fifteen small operations; at 32K tokens on a GPU they cost
0.4-0.8 ms of launches for about 0.1 ms of memory traffic, more than the project's budget for a
selection (under 10% of the sparse attention it drives). GPU time on an H200 (32K tokens, 16
heads, D=128, bf16, 256 x 256 blocks; ``benchmarks/selection_cost.py``, 2026-12-01): block means
67-71 us for q and k (268 MB read; 68 us at copy bandwidth), selection 22 us (24-25 us with
the lists, which save the layout builder's 11 us launch). Before the single block-means
launch, per-chunk reductions on one warp and the TF32x3 products: 107 and 54.5 us.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..layout_triton import append_to_lists, list_buffers
from ..triton_launch import cdiv, launch
from .geometry import SelectionGeometry

#: Largest head dim the kernels take (the D axis is padded to a power of two in registers).
MAX_HEAD_DIM = 256

#: Query blocks per program of the selection kernel (``tl.dot`` needs 16 rows or more).
BLOCK_M = 16

#: Launch settings. The selection kernel scores at most ``max_block_n`` key blocks at a time (and
#: at most 8192 elements of key means in registers), and its threshold search holds a row of up
#: to ``max_chunk`` keys in registers (longer rows are counted a chunk at a time from the
#: scratch). The block-means kernel splits the head dim across programs until a launch has
#: about ``mean_programs`` of them (few long blocks, as MoBA's keys, would leave SMs idle).
#: Tests shrink them to run the loops over chunks and the split on small inputs.
CONFIG = {"max_block_n": 128, "max_chunk": 512, "mean_programs": 1024}

#: Scratch of ordered score keys, per launch of the selection kernel (a chunk of heads at a time).
SCRATCH_BYTES = 256 << 20

_NONE = tl.constexpr(-(2 ** 31))  # the key of a block not free to choose (below every float's)
_LO = tl.constexpr(-(2 ** 31) + 1)  # the smallest key of a free block
_HI = tl.constexpr(2 ** 31 - 1)


@triton.jit
def _block_mean(X, OUT, COUNTS, s_xb, s_xh, s_xn, s_xd, H, n, block, n_blocks, dim, index,
                HAS_COUNTS: tl.constexpr, ROWS: tl.constexpr, DC: tl.constexpr):
    """The mean of block ``index % n_blocks`` of (batch, head) ``index // n_blocks`` of ``X``
    (this program's slice of the head dim)."""
    bh, j = index // n_blocks, index % n_blocks
    b, h = bh // H, bh % H
    base = X + b.to(tl.int64) * s_xb + h.to(tl.int64) * s_xh
    dims = tl.program_id(1) * DC + tl.arange(0, DC)
    d_ok = dims < dim
    start = j * block
    stop = tl.minimum(start + block, n)
    # Each chunk of rows reduced as it arrives: a (DC,) accumulator leaves the registers to the
    # loads (one warp per program, many programs per SM: bandwidth from loads in flight).
    acc = tl.zeros((DC,), dtype=tl.float32)
    for r0 in range(start, stop, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        x = tl.load(base + rows[:, None].to(tl.int64) * s_xn + dims[None, :] * s_xd,
                    mask=(rows < stop)[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(x.to(tl.float32), 0)
    if HAS_COUNTS:  # padding positions (zeros) are in the sum but not in the count
        count = tl.load(COUNTS + j)
    else:
        count = (stop - start).to(tl.float32)
    mean = acc / tl.maximum(count, 1.0)  # a block of padding alone: 0
    tl.store(OUT + index.to(tl.int64) * dim + dims, mean, mask=d_ok)


@triton.jit
def _block_means_kernel(
    X, OUT, COUNTS, s_xb, s_xh, s_xn, s_xd, H, n, block, n_blocks,
    Y, OUT_Y, COUNTS_Y, s_yb, s_yh, s_yn, s_yd, H_Y, n_y, block_y, n_blocks_y,
    x_programs, dim,
    HAS_COUNTS: tl.constexpr, HAS_COUNTS_Y: tl.constexpr, ROWS: tl.constexpr, DC: tl.constexpr,
):
    """Programs ``(i, d)``: block means of ``X`` for ``i < x_programs`` (its (batch, head,
    block)s in order), then of ``Y``; ``d``: the slice of the head dim."""
    i = tl.program_id(0)
    if i < x_programs:
        _block_mean(X, OUT, COUNTS, s_xb, s_xh, s_xn, s_xd, H, n, block, n_blocks, dim, i, HAS_COUNTS, ROWS, DC)
    else:
        _block_mean(Y, OUT_Y, COUNTS_Y, s_yb, s_yh, s_yn, s_yd, H_Y, n_y, block_y, n_blocks_y, dim, i - x_programs,
                    HAS_COUNTS_Y, ROWS, DC)


@triton.jit
def _count_above(key, threshold):
    """Per row of the int32 tile ``key``, the keys ``> threshold`` (int32 ``(BLOCK_M,)``)."""
    return tl.sum((key > threshold[:, None]).to(tl.int32), 1)


@triton.jit
def _count_above_chunked(keys, offsets, ok, nkv, threshold, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
    """:func:`_count_above` over a row of the scratch, a chunk at a time."""
    count = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for start in range(0, nkv, CHUNK):
        cols = start + tl.arange(0, CHUNK)
        key = tl.load(keys + offsets + cols[None, :], mask=ok & (cols < nkv)[None, :], other=_NONE)
        count += _count_above(key, threshold)
    return count


@triton.jit
def _select_kernel(
    QM, KM, CAND, FORCED, KEYS, OUT, STATES, COUNTS, INDICES, FULL_COUNTS, FULL_INDICES,
    bh_start, H, GROUP, nq, nkv, dim, k_blocks, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, RESIDENT: tl.constexpr,
    DP: tl.constexpr, GIVEN: tl.constexpr, LISTS: tl.constexpr, HAS_STATES: tl.constexpr,
):
    """``GIVEN``: ``QM`` holds the float32 scores ``(B * H, nq, nkv)`` themselves (``KM``,
    ``dim`` and ``scale`` unread): the top-k of any score. ``LISTS``: also write the
    partial and full lists of each row (``COUNTS`` ``(B * H, nq)``, ``INDICES`` ``(B * H, nq,
    nkv)``, and the full ones), a chosen block being of state ``STATES`` ``(nq, nkv)`` int8
    (``HAS_STATES``) or full."""
    tile = tl.program_id(0)
    slot = tl.program_id(1)  # this program's (batch, head) within the launch's chunk of them
    bh = bh_start + slot
    b, h = bh // H, bh % H
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < nq
    dims = tl.arange(0, DP)
    d_ok = dims < dim
    if not GIVEN:
        qm = tl.load(QM + (bh.to(tl.int64) * nq + rows[:, None]) * dim + dims[None, :],
                     mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    km_base = KM + (b.to(tl.int64) * (H // GROUP) + h // GROUP) * nkv * dim
    keys = KEYS + slot.to(tl.int64) * nq * nkv
    offsets = rows[:, None] * nkv  # row starts in the (nq, nkv) masks, scratch and output
    row_mask = row_ok[:, None]

    # 1. Scores, as order-preserving int32 keys of their float32 bits (a float's order is its
    #    keys' signed-integer order), to the scratch; blocks not free to choose (non-candidates
    #    and forced ones) get _NONE. Products as three TF32 products on the tensor cores
    #    ("tf32x3", float32 accuracy: the same selections as torch.matmul's float32 products on
    #    32K-token inputs; "ieee" runs on the FMA units, 2.4x slower for the whole kernel).
    n_forced = tl.zeros((BLOCK_M,), dtype=tl.int32)
    n_free = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for start in range(0, nkv, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < nkv
        ok = row_mask & col_ok[None, :]
        if GIVEN:
            score = tl.load(QM + bh.to(tl.int64) * nq * nkv + offsets + cols[None, :], mask=ok, other=0.0)
        else:
            km = tl.load(km_base + cols[:, None] * dim + dims[None, :], mask=col_ok[:, None] & d_ok[None, :],
                         other=0.0)
            score = tl.dot(qm, tl.trans(km), input_precision="tf32x3") * scale
        cand = tl.load(CAND + offsets + cols[None, :], mask=ok, other=0) != 0
        forced = tl.load(FORCED + offsets + cols[None, :], mask=ok, other=0) != 0
        free = cand & ~forced
        bits = score.to(tl.int32, bitcast=True)
        key = tl.where(free, bits ^ ((bits >> 31) & 0x7FFFFFFF), _NONE)
        tl.store(keys + offsets + cols[None, :], key, mask=ok)
        n_forced += tl.sum(forced.to(tl.int32), 1)
        n_free += tl.sum(free.to(tl.int32), 1)
    tl.debug_barrier()  # the scratch rows are read back by other threads of the program

    # 2. Top-k by a threshold search: the forced blocks are kept, so each row takes the `want`
    #    best free blocks, i.e. those above the want-th largest key `t` and, of the keys equal to
    #    `t`, the first ones in block order. `t` is the largest key with at least `want` keys at
    #    or above it (more than `want` above t - 1), found by bisecting the 2^32 keys: 32
    #    counting passes over the row, whatever k (k rounds of argmax cost k passes; a sort,
    #    log^2 of the row length compare-exchange stages, and chunks to merge past one tile).
    #    A row of up to CHUNK keys is read from the scratch once and searched in registers
    #    (RESIDENT), a longer one is counted a chunk at a time. Rows that want nothing end at
    #    t = _HI, and select no free block.
    want = tl.minimum(tl.maximum(k_blocks - n_forced, 0), n_free)
    cols = tl.arange(0, CHUNK)
    row_keys = tl.full((BLOCK_M, CHUNK), _NONE, dtype=tl.int32)
    if RESIDENT:
        row_keys = tl.load(keys + offsets + cols[None, :], mask=row_mask & (cols < nkv)[None, :], other=_NONE)
    lo = tl.full((BLOCK_M,), _LO, dtype=tl.int32)
    hi = tl.full((BLOCK_M,), _HI, dtype=tl.int32)
    for _ in range(32):
        mid = ((lo.to(tl.int64) + hi + 1) >> 1).to(tl.int32)  # in (lo, hi] while lo < hi
        if RESIDENT:
            enough = _count_above(row_keys, mid - 1) >= want
        else:
            enough = _count_above_chunked(keys, offsets, row_mask, nkv, mid - 1, BLOCK_M, CHUNK) >= want
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid - 1)
    if RESIDENT:
        ties_wanted = want - _count_above(row_keys, lo)
    else:
        ties_wanted = want - _count_above_chunked(keys, offsets, row_mask, nkv, lo, BLOCK_M, CHUNK)

    # 3. The rows of `selected`: forced, above the threshold, or among the first tied ones;
    #    with LISTS, also the layout's lists of the rows (the chosen blocks by their STATES).
    out = OUT + bh.to(tl.int64) * nq * nkv
    ties_seen = tl.zeros((BLOCK_M,), dtype=tl.int32)
    n_part = tl.zeros((BLOCK_M,), dtype=tl.int32)
    n_full = tl.zeros((BLOCK_M,), dtype=tl.int32)
    list_rows = (bh.to(tl.int64) * nq + rows) * nkv
    for start in range(0, nkv, CHUNK):
        cols = start + tl.arange(0, CHUNK)
        ok = row_mask & (cols < nkv)[None, :]
        key = row_keys
        if not RESIDENT:
            key = tl.load(keys + offsets + cols[None, :], mask=ok, other=_NONE)
        forced = tl.load(FORCED + offsets + cols[None, :], mask=ok, other=0) != 0
        tie = key == lo[:, None]
        rank = ties_seen[:, None] + tl.cumsum(tie.to(tl.int32), 1)  # 1 for the first tie of the row
        chosen = forced | (key > lo[:, None]) | (tie & (rank <= ties_wanted[:, None]))
        tl.store(out + offsets + cols[None, :], chosen.to(tl.int8), mask=ok)
        ties_seen += tl.sum(tie.to(tl.int32), 1)
        if LISTS:
            if HAS_STATES:
                state = tl.load(STATES + offsets + cols[None, :], mask=ok, other=0)
            else:
                state = tl.full((BLOCK_M, CHUNK), 2, dtype=tl.int8)  # full
            state = tl.where(chosen, state, 0)
            n_part, n_full = append_to_lists(state, cols, n_part, n_full, list_rows, INDICES, FULL_INDICES)
    if LISTS:
        tl.store(COUNTS + bh * nq + rows, n_part, mask=row_ok)
        tl.store(FULL_COUNTS + bh * nq + rows, n_full, mask=row_ok)


def _pow2(n: int, least: int = 1) -> int:
    return max(least, triton.next_power_of_2(max(n, 1)))


def block_means_triton(x: torch.Tensor, block: int, counts: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`~foveate.selection.scores.block_means` by the kernel: ``(B, H, N, D)`` (any float
    dtype and strides, ``D <= 256``) -> float32 ``(B, H, ceil(N / block), D)``, each block's sum
    in float32 over its token count (``counts`` ``(ceil(N / block),)`` when some positions are
    padding; otherwise ``block``, less for the last block)."""
    return block_means_pair(x, block, counts)[0]


def block_means_pair(x: torch.Tensor, block: int, counts: torch.Tensor | None = None,
                     y: torch.Tensor | None = None, block_y: int = 1,
                     counts_y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`block_means_triton` of ``x`` and of ``y`` (queries and keys: same batch and head
    dim, heads and lengths their own) in one launch; ``(x means, y means or None)``."""
    parts = [(x, block, counts)] + ([] if y is None else [(y, block_y, counts_y)])
    dim = x.shape[-1]
    outs, args, flags, programs = [], [], [], []
    for name, (t, blk, cnt) in zip(("x", "y"), parts):
        batch, heads, n, d = t.shape
        if d > MAX_HEAD_DIM:
            raise ValueError(f"{name} has head dim {d}; the block-means kernel takes up to {MAX_HEAD_DIM}")
        if d != dim:
            raise ValueError(f"y has head dim {d}, x has {dim}; expected the same")
        n_blocks = -(-n // blk)
        out = torch.empty(batch, heads, n_blocks, d, dtype=torch.float32, device=t.device)
        if cnt is not None:
            if cnt.shape != (n_blocks,):
                raise ValueError(f"counts has shape {tuple(cnt.shape)}; expected ({n_blocks},), one per block")
            cnt = cnt.to(device=t.device, dtype=torch.float32).contiguous()
        outs.append(out)
        args += [t, out, out if cnt is None else cnt, *t.stride(), heads, n, blk, n_blocks]
        flags.append(cnt is not None)
        programs.append(batch * heads * n_blocks)
    if y is None:  # a second part of no programs (never read)
        args += args[:11]
        flags.append(False)
        programs.append(0)
    total = sum(programs)
    if total:
        dc = _pow2(dim)
        while dc > 16 and total * cdiv(dim, dc) < CONFIG["mean_programs"]:
            dc //= 2
        rows = min(_pow2(max(p[1] for p in parts)), 64, max(1, 8192 // dc))  # chunks of (rows, DC) inputs
        launch(_block_means_kernel, (total, cdiv(dim, dc)), (*args, programs[0], dim),
               dict(HAS_COUNTS=flags[0], HAS_COUNTS_Y=flags[1], ROWS=rows, DC=dc), num_warps=1, num_stages=1)
    return outs[0], (outs[1] if y is not None else None)


def mean_topk_select(q: torch.Tensor, k: torch.Tensor, geometry: SelectionGeometry, scale: float,
                     k_blocks: int) -> torch.Tensor:
    """bool ``(B, Hq, nq, nkv)``: per (batch, query head, query block), the forced blocks and the
    ``k_blocks`` best candidates by ``scale * mean(q block) . mean(k block)`` (fewer when there
    are fewer candidates, none beyond the forced ones when those reach ``k_blocks``); the key
    blocks are those of key head ``h // (Hq // Hkv)``. Of candidates scoring the same at the
    cut, the first ones in block order are kept (float32 sums in another order than PyTorch's
    can decide near-ties differently). Raises ``ValueError`` for inputs the kernels do not take
    (:func:`unsupported_reason`)."""
    return _mean_topk(q, k, geometry, scale, k_blocks, lists=False, states=None)[0]


def mean_topk_lists(q: torch.Tensor, k: torch.Tensor, geometry: SelectionGeometry, scale: float, k_blocks: int,
                    states: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`mean_topk_select` and, from the same launch, the layout's lists of the selection
    at its own block sizes: ``[counts, indices, full_counts, full_indices]`` (counts ``(B, Hq,
    nq)`` int32, indices ``(B, Hq, nq, nkv)`` int32, entries past a count unspecified), a
    selected block being partial or full as ``states`` (int8 ``(nq, nkv)``, e.g. the causal
    states of the blocks) says, or full when ``states`` is ``None``. This saves the layout
    builder its own launch over the selection."""
    g = geometry
    if states is not None and (states.shape != (g.num_q_blocks, g.num_kv_blocks) or states.dtype != torch.int8):
        raise ValueError(f"states must be int8 of shape {(g.num_q_blocks, g.num_kv_blocks)}, got {states.dtype} "
                         f"{tuple(states.shape)}")
    return _mean_topk(q, k, geometry, scale, k_blocks, lists=True, states=states)


def _mean_topk(q, k, geometry, scale, k_blocks, *, lists: bool, states):
    reason = unsupported_reason(q, geometry)
    if reason is not None:
        raise ValueError(f"method='triton': {reason}")
    _check_inputs(q, k, geometry, k_blocks)
    g = geometry
    batch, heads_q, _, dim = q.shape
    nq, nkv = g.num_q_blocks, g.num_kv_blocks
    q_counts = g.q_counts(q.device) if g.padded else None  # else in-kernel: block, or the tail
    kv_counts = g.kv_counts(q.device) if g.padded else None
    qm, km = block_means_pair(q, g.query_block, q_counts, k, g.block, kv_counts)
    return _select(qm, km, g.candidates(q.device), g.forced(q.device), (batch, heads_q, nq, nkv),
                   heads_q // k.shape[1], int(k_blocks), float(scale), given=False, lists=lists, states=states)


def topk_select(scores: torch.Tensor, k_blocks: int, candidates: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """:func:`~foveate.selection.select.select_topk` by the selection kernel's threshold search:
    ``scores`` float ``(B, H, nq, nkv)``, ``candidates`` and ``forced`` bool ``(nq, nkv)`` ->
    bool ``(B, H, nq, nkv)`` (of scores tied at the cut, the first blocks in order). One launch
    where the PyTorch path takes about eight (``topk``, ``scatter``, masks)."""
    if scores.dim() != 4 or candidates.shape != scores.shape[2:] or forced.shape != scores.shape[2:]:
        raise ValueError(f"scores of shape {tuple(scores.shape)} need candidates and forced of shape "
                         f"{tuple(scores.shape[2:])}; got {tuple(candidates.shape)}, {tuple(forced.shape)}")
    if isinstance(k_blocks, bool) or not isinstance(k_blocks, int) or k_blocks < 1:
        raise ValueError(f"k_blocks must be an int >= 1, got {k_blocks!r}")
    scores = scores.float().contiguous()
    return _select(scores, scores, candidates, forced, tuple(scores.shape), 1, k_blocks, 1.0, given=True)[0]


def _select(qm, km, candidates, forced, shape, group, k_blocks, scale, *, given: bool, lists: bool = False,
            states: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Launch the selection kernel on block means (``given=False``) or scores (``True``):
    ``(selected, the lists or None)`` (see :func:`mean_topk_lists`)."""
    batch, heads_q, nq, nkv = shape
    dim = qm.shape[-1] if not given else 16
    # bool masks read as bytes (views: the memoised masks are not copied)
    candidates = candidates.contiguous().view(torch.uint8)
    forced = forced.contiguous().view(torch.uint8)
    out = torch.empty(batch, heads_q, nq, nkv, dtype=torch.int8, device=qm.device)
    row_lists = list_buffers([(batch, heads_q, nq), (batch, heads_q, nq, nkv)] * 2, qm.device) if lists else None
    if out.numel() == 0:
        return out.view(torch.bool), row_lists
    states = states.contiguous() if states is not None else out
    dp = _pow2(dim, least=16)  # (tl.dot takes 16 or more along each axis)
    block_n = max(16, min(CONFIG["max_block_n"], 8192 // dp, _pow2(nkv)))  # (BLOCK_N, D) float32 key means
    chunk = max(16, min(CONFIG["max_chunk"], _pow2(nkv)))  # the threshold search's row (or chunk of it)
    per_head = nq * nkv * 4
    heads_per_launch = max(1, min(batch * heads_q, SCRATCH_BYTES // per_head))
    keys = torch.empty(heads_per_launch * nq * nkv, dtype=torch.int32, device=qm.device)
    list_args = row_lists if lists else [out] * 4
    for bh_start in range(0, batch * heads_q, heads_per_launch):
        count = min(heads_per_launch, batch * heads_q - bh_start)
        launch(_select_kernel, (cdiv(nq, BLOCK_M), count),
               (qm, km, candidates, forced, keys, out, states, *list_args, bh_start, heads_q, group, nq, nkv, dim,
                k_blocks, scale),
               dict(BLOCK_M=BLOCK_M, BLOCK_N=block_n, CHUNK=chunk, RESIDENT=chunk >= nkv, DP=dp, GIVEN=given,
                    LISTS=lists, HAS_STATES=states is not out),
               num_warps=4, num_stages=3)
    return out.view(torch.bool), row_lists


def _check_inputs(q: torch.Tensor, k: torch.Tensor, geometry: SelectionGeometry, k_blocks: int) -> None:
    g = geometry
    if k.dim() != 4 or k.shape[0] != q.shape[0] or k.shape[-1] != q.shape[-1] or q.shape[1] % k.shape[1]:
        raise ValueError(f"k of shape {tuple(k.shape)} does not fit q of shape {tuple(q.shape)} "
                         f"(same batch and head dim, Hq % Hkv == 0)")
    if (q.shape[2], k.shape[2]) != (g.q_len, g.kv_len):
        raise ValueError(f"q and k hold {q.shape[2]} and {k.shape[2]} tokens; geometry has q_len={g.q_len}, "
                         f"kv_len={g.kv_len}")
    if k.device != q.device:
        raise ValueError(f"k is on {k.device} but q is on {q.device}")
    if isinstance(k_blocks, bool) or not isinstance(k_blocks, int) or k_blocks < 1:
        raise ValueError(f"k_blocks must be an int >= 1, got {k_blocks!r}")


def unsupported_reason(q: torch.Tensor, geometry: SelectionGeometry) -> str | None:
    """Why the kernels cannot select for ``q`` (``None`` when they can)."""
    if q.dim() != 4:
        return f"q has shape {tuple(q.shape)}; expected (B, H, N, D)"
    if not q.is_floating_point():
        return f"q has dtype {q.dtype}; expected a floating-point dtype"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"q has head dim {q.shape[-1]}; the mean top-k kernels take up to {MAX_HEAD_DIM}"
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return f"q is on {q.device}; the kernels need CUDA tensors (or TRITON_INTERPRET=1)"
    return None


def supported(q: torch.Tensor, geometry: SelectionGeometry) -> bool:
    """Whether the kernels take these inputs (else use the PyTorch path)."""
    return unsupported_reason(q, geometry) is None
