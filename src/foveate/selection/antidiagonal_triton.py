"""XAttention's antidiagonal block mass as one fused Triton kernel (CUDA, or the interpreter).

Same definition as :func:`foveate.selection.scores.antidiagonal_mass` (which materialises the
reduced score matrix in chunks and is memory-bound): here each program takes ``BLOCK_M``
reduced query rows of one (batch, query head) and walks the reduced keys once (online softmax:
per-group exp-sums are kept in a scratch with the running maximum they were taken against, and
rescaled by the final maximum and normaliser at the end). A reduced
score is ``sum_i q[r*S + S-1-i] . k[c*S + i]``: ``S`` dot products of token rows taken every
``S`` tokens, so the reduced inputs are never formed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_launch import cdiv, launch
from .geometry import SelectionGeometry

_LOG2E = 1.4426950408889634

#: Tiles and warps of the launch (H100, bf16, D=128: measured best of a small sweep).
CONFIG = {"block_m": 64, "block_n": 128, "num_warps": 4, "num_stages": 2}


@triton.jit
def _scores(q_base, k_base, rows, cols, s_qn, s_kn, q_len, kv_len,
            S: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            PRECISION: tl.constexpr):
    dims = tl.arange(0, D)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(S):
        q_tok = rows * S + (S - 1 - i)
        k_tok = cols * S + i
        qi = tl.load(q_base + q_tok[:, None].to(tl.int64) * s_qn + dims[None, :], mask=(q_tok < q_len)[:, None],
                     other=0.0)
        ki = tl.load(k_base + k_tok[:, None].to(tl.int64) * s_kn + dims[None, :], mask=(k_tok < kv_len)[:, None],
                     other=0.0)
        acc += tl.dot(qi, tl.trans(ki), input_precision=PRECISION)
    return acc


@triton.jit
def _antidiagonal_kernel(
    Q, K, OUT, SUMS, MAXES, ROW_LIVE, COL_LIVE,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_ob, s_oh, s_om,
    bh_start, H, GROUP, q_len, kv_len, offset, n_cols, n_groups, n_tiles, qk_scale,
    S: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr, PADDED: tl.constexpr,
    GM: tl.constexpr, GN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    if CAUSAL:  # later row tiles walk more keys: the longest programs first (shorter tail)
        tile = tl.num_programs(0) - 1 - tile
    slot = tl.program_id(1)  # this program's place in the scratch (a chunk of heads)
    bh = bh_start + slot
    b, h = bh // H, bh % H
    q_base = Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
    k_base = K + b.to(tl.int64) * s_kb + (h // GROUP).to(tl.int64) * s_kh
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    # The last key position each reduced row may see (causal), and the columns to walk.
    last_pos = tl.minimum(rows * S + S, q_len) - 1 + offset
    hi = n_cols
    if CAUSAL:
        hi = tl.minimum(hi, (tl.max(last_pos, 0) // S) + 1)
    hi = tl.maximum(hi, 0)

    # One pass over the keys: per column tile, the rows' exp-sums per key group, taken against
    # the running row maximum of that moment, go to the scratch with that maximum; the final
    # maximum and normaliser rescale them afterwards (no second matmul).
    N_G: tl.constexpr = BLOCK_N // GN
    groups = tl.arange(0, N_G)
    sums_base = SUMS + slot.to(tl.int64) * n_groups * (tl.num_programs(0) * BLOCK_M)
    maxes_base = MAXES + slot.to(tl.int64) * n_tiles * (tl.num_programs(0) * BLOCK_M)
    m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        x = _scores(q_base, k_base, rows, cols, s_qn, s_kn, q_len, kv_len, S, D, BLOCK_M, BLOCK_N,
                   PRECISION) * qk_scale
        ok = (cols * S < kv_len)[None, :]
        if PADDED:  # canvas padding: groups of padding alone are no reduced keys
            ok = ok & (tl.load(COL_LIVE + cols, mask=cols * S < kv_len, other=0) != 0)[None, :]
        if CAUSAL:
            ok = ok & (cols[None, :] * S <= last_pos[:, None])
        x = tl.where(ok, x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 1))
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(x - safe[:, None])
        l = l * tl.exp2(m - safe) + tl.sum(p, 1)
        m = m_new
        group_sums = tl.sum(tl.reshape(p, (BLOCK_M, N_G, GN)), 2)
        tl.store(sums_base + rows[:, None].to(tl.int64) * n_groups + (start // GN + groups)[None, :], group_sums)
        tl.store(maxes_base + rows.to(tl.int64) * n_tiles + start // BLOCK_N, safe)
    tl.debug_barrier()

    # Rows that see nothing, or hold only padding, contribute no mass.
    live = (l > 0) & (rows * S < q_len)
    if PADDED:
        live = live & (tl.load(ROW_LIVE + rows, mask=rows * S < q_len, other=0) != 0)
    inv_l = tl.where(live, 1.0 / tl.where(live, l, 1.0), 0.0)
    m = tl.where(live, m, 0.0)
    out_rows = tile * (BLOCK_M // GM) + tl.arange(0, BLOCK_M // GM)
    out_base = OUT + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh
    for start in range(0, hi, BLOCK_N):
        group_sums = tl.load(sums_base + rows[:, None].to(tl.int64) * n_groups + (start // GN + groups)[None, :])
        then = tl.load(maxes_base + rows.to(tl.int64) * n_tiles + start // BLOCK_N)
        weight = tl.where(live, tl.exp2(then - m), 0.0) * inv_l
        probs = group_sums * weight[:, None]
        mass = tl.sum(tl.reshape(probs, (BLOCK_M // GM, GM, N_G)), 1)
        out_cols = start // GN + groups
        tl.store(out_base + out_rows[:, None].to(tl.int64) * s_om + out_cols[None, :], mass,
                 mask=(out_cols < n_cols // GN)[None, :])


def antidiagonal_mass_triton(q: torch.Tensor, k: torch.Tensor, geometry: SelectionGeometry, scale: float,
                             stride: int) -> torch.Tensor:
    """:func:`~foveate.selection.scores.antidiagonal_mass` by the fused kernel. Needs a head dim
    that is a power of two >= 16 and block sizes whose reduced sizes (``block / stride``) are
    powers of two (:func:`supported` says)."""
    g, s = geometry, stride
    batch, heads_q, _, dim = q.shape
    rows_per_q, cols_per_kv = g.query_block // s, g.block // s
    n_rows, n_cols = g.num_q_blocks * rows_per_q, g.num_kv_blocks * cols_per_kv
    block_m, block_n = CONFIG["block_m"], CONFIG["block_n"]
    gm, gn = min(rows_per_q, block_m), min(cols_per_kv, block_n)
    n_row_tiles, n_col_tiles = cdiv(n_rows, block_m), cdiv(n_cols, block_n)
    n_groups = n_col_tiles * (block_n // gn)
    fine = torch.zeros(batch, heads_q, n_row_tiles * block_m // gm, n_cols // gn, dtype=torch.float32,
                       device=q.device)
    # Scratch for a chunk of (batch, head) pairs at a time, about 256 MiB.
    per_head = n_row_tiles * block_m * (n_groups + n_col_tiles) * 4
    chunk = max(1, min(batch * heads_q, (256 << 20) // per_head))
    sums = torch.empty(chunk * n_row_tiles * block_m * n_groups, dtype=torch.float32, device=q.device)
    maxes = torch.empty(chunk * n_row_tiles * block_m * n_col_tiles, dtype=torch.float32, device=q.device)
    row_live = col_live = fine  # (unread unless the canvas is padded)
    if g.padded:
        row_live = g.live_groups(g.q_len, s, q.device).to(torch.int8)
        col_live = g.live_groups(g.kv_len, s, q.device).to(torch.int8)
    for bh_start in range(0, batch * heads_q, chunk):
        count = min(chunk, batch * heads_q - bh_start)
        launch(_antidiagonal_kernel, (n_row_tiles, count),
               (q, k, fine, sums, maxes, row_live, col_live, q.stride(0), q.stride(1), q.stride(2), k.stride(0),
                k.stride(1), k.stride(2), fine.stride(0), fine.stride(1), fine.stride(2),
                bh_start, heads_q, heads_q // k.shape[1], g.q_len, g.kv_len, g.kv_len - g.q_len, n_cols, n_groups,
                n_col_tiles, scale / s * _LOG2E),
               dict(S=s, D=dim, CAUSAL=g.causal, PADDED=g.padded, GM=gm, GN=gn, BLOCK_M=block_m, BLOCK_N=block_n,
                    # float32 inputs keep float32 accuracy (TF32 alone: errors of 1e-4 relative)
                    PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32"),
               num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
    fine = fine[:, :, : n_rows // gm]
    coarse = fine.view(batch, heads_q, g.num_q_blocks, rows_per_q // gm, g.num_kv_blocks, cols_per_kv // gn)
    if rows_per_q // gm == 1 and cols_per_kv // gn == 1:  # one kernel group per block: no sum to take
        coarse = coarse[:, :, :, 0, :, 0]
    else:
        coarse = coarse.sum((3, 5))
    return coarse / g.reduced_rows(s, q.device).clamp_min(1)[:, None]  # blocks of padding alone: 0


def supported(q: torch.Tensor, geometry: SelectionGeometry, stride: int) -> bool:
    """Whether the fused kernel takes these inputs (else use the chunked PyTorch version)."""
    dim = q.shape[-1]
    pow2 = lambda x: x >= 1 and x & (x - 1) == 0  # noqa: E731
    return (q.dtype in (torch.float16, torch.bfloat16, torch.float32) and pow2(dim) and 16 <= dim <= 256
            and pow2(geometry.query_block // stride) and pow2(geometry.block // stride)
            and q.stride(-1) == 1)
