"""The fused block-sparse attention forward kernel.

One program per (query block, batch x query head). It walks the layout's **full** kv blocks
first, with no mask work at all (only the sequence-end bound when ``kv_len`` is not a
multiple of the block), then the **partial** ones, masked by the pattern's mask spec as
coordinate arithmetic; online softmax in base 2, float32 accumulation; writes ``out`` and
the natural-log ``lse`` (``-inf`` and output 0 where a query sees no key). Grouped-query
attention maps query head ``h`` to kv head ``h // group``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .masks import MaskSpec

LOG2E = 1.4426950408889634


@triton.jit
def _axis_allowed(x, y, L: tl.constexpr, W: tl.constexpr, DIL: tl.constexpr, S: tl.constexpr,
                  C: tl.constexpr):
    """May query coordinate x see key coordinate y along one axis (foveate's axis_window)."""
    if DIL == 1:
        xg = x
        yg = y
        lg = L
    else:
        xg = x // DIL
        yg = y // DIL
        lg = L // DIL + ((x % DIL) < (L % DIL)).to(tl.int32)
    if C:
        if S == 1:
            leader = xg
        else:
            leader = tl.minimum((xg // S) * S + (S - 1), lg - 1)
        start = tl.maximum(leader - (W - 1), 0)
        ok = (yg >= start) & (yg <= xg)
    else:
        if S == 1:
            leader = xg
        else:
            leader = tl.minimum((xg // S) * S + S // 2, lg - 1)
        start = tl.minimum(tl.maximum(leader - W // 2, 0), lg - W)
        ok = (yg >= start) & (yg < start + W)
    if DIL != 1:
        ok = ok & ((y % DIL) == (x % DIL))
    return ok


@triton.jit
def _coord(idx, T: tl.constexpr, G: tl.constexpr, GS: tl.constexpr, TS: tl.constexpr,
           TILE_SIZE: tl.constexpr):
    """Canvas coordinate along one axis of tiled position idx (raster order: 1x..x1 tiles)."""
    if TILE_SIZE == 1:
        return (idx // GS) % G
    return ((idx // TILE_SIZE) // GS % G) * T + (idx % TILE_SIZE) // TS % T


@triton.jit
def _allowed(rows, cols, MASK_KIND: tl.constexpr,
             OFFSET: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
             HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
             NDIM: tl.constexpr, TILE_SIZE: tl.constexpr, N_TOKENS: tl.constexpr,
             EXTRA: tl.constexpr, PADDED: tl.constexpr,
             L0: tl.constexpr, W0: tl.constexpr, DIL0: tl.constexpr, S0: tl.constexpr, C0: tl.constexpr,
             T0: tl.constexpr, G0: tl.constexpr, GS0: tl.constexpr, TS0: tl.constexpr,
             L1: tl.constexpr, W1: tl.constexpr, DIL1: tl.constexpr, S1: tl.constexpr, C1: tl.constexpr,
             T1: tl.constexpr, G1: tl.constexpr, GS1: tl.constexpr, TS1: tl.constexpr,
             L2: tl.constexpr, W2: tl.constexpr, DIL2: tl.constexpr, S2: tl.constexpr, C2: tl.constexpr,
             T2: tl.constexpr, G2: tl.constexpr, GS2: tl.constexpr, TS2: tl.constexpr):
    """The pattern's mask on a [BLOCK_M, BLOCK_N] tile: rows[:, None], cols[None, :]."""
    q = rows[:, None]
    k = cols[None, :]
    if MASK_KIND == 0:  # band
        p = q + OFFSET
        ok = (k >= 0) & (q >= 0)
        if HAS_LEFT:
            ok = ok & (k >= p - LEFT)
        if HAS_RIGHT:
            ok = ok & (k <= p + RIGHT)
        return ok
    # canvas (neighborhood), raster or tiled order
    qx = _coord(q, T0, G0, GS0, TS0, TILE_SIZE)
    kx = _coord(k, T0, G0, GS0, TS0, TILE_SIZE)
    if PADDED:
        real = kx < L0
        qx = tl.minimum(qx, L0 - 1)
    ok = _axis_allowed(qx, kx, L0, W0, DIL0, S0, C0)
    if NDIM >= 2:
        qy = _coord(q, T1, G1, GS1, TS1, TILE_SIZE)
        ky = _coord(k, T1, G1, GS1, TS1, TILE_SIZE)
        if PADDED:
            real = real & (ky < L1)
            qy = tl.minimum(qy, L1 - 1)
        ok = ok & _axis_allowed(qy, ky, L1, W1, DIL1, S1, C1)
    if NDIM >= 3:
        qz = _coord(q, T2, G2, GS2, TS2, TILE_SIZE)
        kz = _coord(k, T2, G2, GS2, TS2, TILE_SIZE)
        if PADDED:
            real = real & (kz < L2)
            qz = tl.minimum(qz, L2 - 1)
        ok = ok & _axis_allowed(qz, kz, L2, W2, DIL2, S2, C2)
    if PADDED:
        ok = ok & real
    if EXTRA:
        ok = ok | (k >= N_TOKENS)
    return ok


@triton.jit
def _block_update(acc, m_i, l_i, q, K, V, idx_row, j, offs_m, offs_n0, offs_d, offs_dv,
                  stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale,
                  HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, EVEN_N: tl.constexpr,
                  BLOCK_N: tl.constexpr, IEEE: tl.constexpr, MASKED: tl.constexpr,
                  MASK_KIND: tl.constexpr, OFFSET: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
                  HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                  NDIM: tl.constexpr, TILE_SIZE: tl.constexpr, N_TOKENS: tl.constexpr, EXTRA: tl.constexpr,
                  PADDED: tl.constexpr,
                  L0: tl.constexpr, W0: tl.constexpr, DIL0: tl.constexpr, S0: tl.constexpr, C0: tl.constexpr,
                  T0: tl.constexpr, G0: tl.constexpr, GS0: tl.constexpr, TS0: tl.constexpr,
                  L1: tl.constexpr, W1: tl.constexpr, DIL1: tl.constexpr, S1: tl.constexpr, C1: tl.constexpr,
                  T1: tl.constexpr, G1: tl.constexpr, GS1: tl.constexpr, TS1: tl.constexpr,
                  L2: tl.constexpr, W2: tl.constexpr, DIL2: tl.constexpr, S2: tl.constexpr, C2: tl.constexpr,
                  T2: tl.constexpr, G2: tl.constexpr, GS2: tl.constexpr, TS2: tl.constexpr,):
    """Online-softmax update with the j-th kv block of a list; ``MASKED``: a partial block."""
    kb = tl.load(idx_row + j)
    offs_n = kb * BLOCK_N + offs_n0
    if EVEN_N:
        k = tl.load(K + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                    mask=offs_d[:, None] < HEAD_DIM, other=0.0)
        v = tl.load(V + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                    mask=offs_dv[None, :] < HEAD_DIM_V, other=0.0)
    else:
        k = tl.load(K + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                    mask=(offs_n[None, :] < kv_len) & (offs_d[:, None] < HEAD_DIM), other=0.0)
        v = tl.load(V + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                    mask=(offs_n[:, None] < kv_len) & (offs_dv[None, :] < HEAD_DIM_V), other=0.0)
    if IEEE:
        qk = tl.dot(q, k, input_precision="ieee") * qk_scale
    else:
        qk = tl.dot(q, k) * qk_scale
    if MASKED:
        ok = _allowed(offs_m, offs_n, MASK_KIND, OFFSET, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT,
                      NDIM, TILE_SIZE, N_TOKENS, EXTRA, PADDED,
                      L0, W0, DIL0, S0, C0, T0, G0, GS0, TS0,
                      L1, W1, DIL1, S1, C1, T1, G1, GS1, TS1,
                      L2, W2, DIL2, S2, C2, T2, G2, GS2, TS2)
        qk = tl.where(ok, qk, float("-inf"))
    if not EVEN_N:
        qk = tl.where(offs_n[None, :] < kv_len, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    # A row with no allowed key so far keeps m = -inf: use 0 so that exp2 gives 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _walk(acc, m_i, l_i, q, K, V, idx_row, n, offs_m, offs_n0, offs_d, offs_dv,
          stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale,
          HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, EVEN_N: tl.constexpr,
          BLOCK_N: tl.constexpr, IEEE: tl.constexpr, MASKED: tl.constexpr,
          MASK_KIND: tl.constexpr, OFFSET: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
          HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
          NDIM: tl.constexpr, TILE_SIZE: tl.constexpr, N_TOKENS: tl.constexpr, EXTRA: tl.constexpr,
          PADDED: tl.constexpr,
          L0: tl.constexpr, W0: tl.constexpr, DIL0: tl.constexpr, S0: tl.constexpr, C0: tl.constexpr,
          T0: tl.constexpr, G0: tl.constexpr, GS0: tl.constexpr, TS0: tl.constexpr,
          L1: tl.constexpr, W1: tl.constexpr, DIL1: tl.constexpr, S1: tl.constexpr, C1: tl.constexpr,
          T1: tl.constexpr, G1: tl.constexpr, GS1: tl.constexpr, TS1: tl.constexpr,
          L2: tl.constexpr, W2: tl.constexpr, DIL2: tl.constexpr, S2: tl.constexpr, C2: tl.constexpr,
          T2: tl.constexpr, G2: tl.constexpr, GS2: tl.constexpr, TS2: tl.constexpr,):
    """Attend to the ``n`` kv blocks listed at ``idx_row``."""
    for j in range(0, n):
        acc, m_i, l_i = _block_update(
            acc, m_i, l_i, q, K, V, idx_row, j, offs_m, offs_n0, offs_d, offs_dv,
            stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale,
            HEAD_DIM, HEAD_DIM_V, EVEN_N, BLOCK_N, IEEE, MASKED,
            MASK_KIND, OFFSET, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT,
            NDIM, TILE_SIZE, N_TOKENS, EXTRA, PADDED,
            L0, W0, DIL0, S0, C0, T0, G0, GS0, TS0,
            L1, W1, DIL1, S1, C1, T1, G1, GS1, TS1,
            L2, W2, DIL2, S2, C2, T2, G2, GS2, TS2)
    return acc, m_i, l_i


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,
    KV_NUM, KV_IDX, FULL_NUM, FULL_IDX,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh, stride_lm,
    num_sb, num_sh, num_sm, idx_sb, idx_sh, idx_sm, fnum_sb, fnum_sh, fnum_sm, fidx_sb, fidx_sh, fidx_sm,
    H, GROUP, q_len, kv_len, qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr, IEEE: tl.constexpr,
    MASK_KIND: tl.constexpr, OFFSET: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    NDIM: tl.constexpr, TILE_SIZE: tl.constexpr, N_TOKENS: tl.constexpr, EXTRA: tl.constexpr,
    PADDED: tl.constexpr,
    L0: tl.constexpr, W0: tl.constexpr, DIL0: tl.constexpr, S0: tl.constexpr, C0: tl.constexpr,
    T0: tl.constexpr, G0: tl.constexpr, GS0: tl.constexpr, TS0: tl.constexpr,
    L1: tl.constexpr, W1: tl.constexpr, DIL1: tl.constexpr, S1: tl.constexpr, C1: tl.constexpr,
    T1: tl.constexpr, G1: tl.constexpr, GS1: tl.constexpr, TS1: tl.constexpr,
    L2: tl.constexpr, W2: tl.constexpr, DIL2: tl.constexpr, S2: tl.constexpr, C2: tl.constexpr,
    T2: tl.constexpr, G2: tl.constexpr, GS2: tl.constexpr, TS2: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n0 = tl.arange(0, BLOCK_N)

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < q_len) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    n_full = tl.load(FULL_NUM + b * fnum_sb + h * fnum_sh + pid_m * fnum_sm)
    n_part = tl.load(KV_NUM + b * num_sb + h * num_sh + pid_m * num_sm)
    full_row = FULL_IDX + b * fidx_sb + h * fidx_sh + pid_m * fidx_sm
    part_row = KV_IDX + b * idx_sb + h * idx_sh + pid_m * idx_sm
    acc, m_i, l_i = _walk(  # full blocks: no mask work
        acc, m_i, l_i, q, K, V, full_row, n_full, offs_m, offs_n0, offs_d, offs_dv,
        stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale,
        HEAD_DIM, HEAD_DIM_V, EVEN_N, BLOCK_N, IEEE, False,
        MASK_KIND, OFFSET, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT,
        NDIM, TILE_SIZE, N_TOKENS, EXTRA, PADDED,
        L0, W0, DIL0, S0, C0, T0, G0, GS0, TS0,
        L1, W1, DIL1, S1, C1, T1, G1, GS1, TS1,
        L2, W2, DIL2, S2, C2, T2, G2, GS2, TS2)
    acc, m_i, l_i = _walk(  # partial blocks: the pattern's mask
        acc, m_i, l_i, q, K, V, part_row, n_part, offs_m, offs_n0, offs_d, offs_dv,
        stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale,
        HEAD_DIM, HEAD_DIM_V, EVEN_N, BLOCK_N, IEEE, True,
        MASK_KIND, OFFSET, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT,
        NDIM, TILE_SIZE, N_TOKENS, EXTRA, PADDED,
        L0, W0, DIL0, S0, C0, T0, G0, GS0, TS0,
        L1, W1, DIL1, S1, C1, T1, G1, GS1, TS1,
        L2, W2, DIL2, S2, C2, T2, G2, GS2, TS2)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m[:, None] < q_len) & (offs_dv[None, :] < HEAD_DIM_V))
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(LSE + b * stride_lb + h * stride_lh + offs_m * stride_lm, lse, mask=offs_m < q_len)


def _layout_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """Strides of the (B|1, H|1, nq, ...) leading axes, 0 on broadcast axes."""
    return tuple(0 if t.shape[i] == 1 else t.stride(i) for i in range(3))


def attention_forward(q, k, v, layout, spec: MaskSpec, scale: float, *, num_warps: int = 4,
                      num_stages: int = 2):
    """Launch the forward kernel. ``q`` ``(B, Hq, Nq, D)``, ``k`` ``(B, Hkv, Nkv, D)``, ``v``
    ``(B, Hkv, Nkv, Dv)``; ``layout`` with ``block_q``/``block_kv`` the kernel tiles.
    Returns ``out`` ``(B, Hq, Nq, Dv)`` (q's dtype) and ``lse`` ``(B, Hq, Nq)`` float32."""
    batch, heads, q_len, head_dim = q.shape
    kv_len, head_dim_v = k.shape[2], v.shape[3]
    out = torch.empty(batch, heads, q_len, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, heads, q_len, dtype=torch.float32, device=q.device)
    bm, bn = layout.block_q, layout.block_kv
    grid = (layout.num_q_blocks, batch * heads)
    # IEEE: Triton's fp32 dot would use tf32 on GPUs; fp32 inputs keep full precision.
    _fwd_kernel[grid](
        q, k, v, out, lse,
        layout.kv_num_blocks, layout.kv_indices, layout.full_kv_num_blocks, layout.full_kv_indices,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(),
        *_layout_strides(layout.kv_num_blocks), *_layout_strides(layout.kv_indices),
        *_layout_strides(layout.full_kv_num_blocks), *_layout_strides(layout.full_kv_indices),
        heads, heads // k.shape[1], q_len, kv_len, scale * LOG2E,
        HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_DV=max(16, triton.next_power_of_2(head_dim_v)),
        BLOCK_M=bm, BLOCK_N=bn, EVEN_N=kv_len % bn == 0, IEEE=q.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages, **spec.kwargs(),
    )
    return out, lse


__all__ = ["attention_forward"]
