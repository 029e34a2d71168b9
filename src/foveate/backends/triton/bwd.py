"""The fused block-sparse attention backward kernels.

Three launches, as in FlashAttention-2, over the same layout as the forward:

* ``_delta_kernel``: ``delta = rowsum(dO * O) - dlse`` per query (float32); the ``dlse`` term
  carries gradients that reach ``lse`` directly (``d lse / d s = p``).
* ``_dq_kernel``: one program per ``BLOCK_M`` query rows and (batch x query head); walks the
  query block's full then partial kv lists (like the forward) and accumulates ``dq``.
* ``_dkdv_kernel``: one program per ``BLOCK_N`` key rows and (batch x **kv** head); walks the
  transposed lists (the q blocks that visit this kv block) of every query head of its group,
  so grouped-query ``dk``/``dv`` are reduced inside one program: deterministic, no atomics.
  (Adding dq from this kernel by float32 atomics, FlashAttention-2's way, was 0.86-0.94x as
  fast forward+backward on an H200: ``docs/benchmarks.md``.)

Probabilities are recomputed from the forward's ``lse`` (``p = exp(s - lse)``; rows with no
allowed key have ``lse = -inf`` and get ``p = 0``). Full blocks skip the mask; partial blocks
apply :func:`masks.allowed_block` (dk/dv: :func:`masks.allowed_block_t`, its transpose) as
coordinate arithmetic. Positions and memory rows as in the forward (:func:`masks.token_rows`);
``lse`` and ``delta`` are per memory row.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ...settings import policy
from ...triton_launch import cdiv, launch as fast_launch
from .common import LOG2E, block_lists, bounds_flags, head_block, mask_operands
from . import score as score_terms
from .masks import HAS_BITS, HAS_IDS, MaskSpec, allowed_block, allowed_block_t, block_bits, tile_rows, token_rows
from .tiles import load_tile, store_tile
from .tuning import backward_config, launch


@triton.jit
def _delta_kernel(O, DO, DLSE, DELTA,
                  stride_ob, stride_oh, stride_om, stride_od,
                  stride_dob, stride_doh, stride_dom, stride_dod,
                  stride_lb, stride_lh, stride_lm,
                  H, n_rows,
                  HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
                  HAS_DLSE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask = (offs_m[:, None] < n_rows) & (offs_dv[None, :] < HEAD_DIM_V)
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
                mask=mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                 mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    # DELTA has the strides of lse (contiguous (B, H, Nq)); DLSE too (made so by the caller).
    lse_off = b * stride_lb + h * stride_lh + offs_m * stride_lm
    if HAS_DLSE:
        delta -= tl.load(DLSE + lse_off, mask=offs_m < n_rows, other=0.0)
    tl.store(DELTA + lse_off, delta, mask=offs_m < n_rows)


@triton.jit
def _dq_update(dq, q, do, lse2, delta, K, V, start_n, offs_m, offs_n0, rows_n0, offs_d, offs_dv,
               stride_kn, stride_kd, stride_vn, stride_vd, kv_len, kv_rows, qk_scale,
               HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, EVEN_N: tl.constexpr, PAD_KEYS: tl.constexpr,
               IEEE: tl.constexpr, MASKED: tl.constexpr, MASK: tl.constexpr, BITS, rate, drate, BIAS, DBIAS,
               q_len, bias_sm, bias_sn, dbias_sm, SCORE: tl.constexpr):
    """dq's update with the ``BLOCK_N`` keys from ``start_n``; with a score modification
    (``SCORE``), also its rate's gradient ``drate`` (a scalar) and its bias's (written to
    ``DBIAS``, rows of ``dbias_sm``; each pair is visited once)."""
    offs_n = start_n + offs_n0
    pad: tl.constexpr = MASKED and PAD_KEYS
    rows_n = token_rows(start_n, offs_n0, rows_n0, kv_rows, MASK, pad)
    even_rows: tl.constexpr = EVEN_N and not pad
    k = load_tile(K + rows_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, rows_n, offs_d, kv_rows, HEAD_DIM,
                  even_rows, HEAD_DIM == offs_d.shape[0])
    v = load_tile(V + rows_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd, rows_n, offs_dv, kv_rows,
                  HEAD_DIM_V, even_rows, HEAD_DIM_V == offs_dv.shape[0])
    if IEEE:
        qk = tl.dot(q, tl.trans(k), input_precision="ieee")
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    else:
        qk = tl.dot(q, tl.trans(k))
        dp = tl.dot(do, tl.trans(v))
    if SCORE[5]:  # (the modified scores, recomputed in natural units)
        dist = score_terms.distance(offs_m, offs_n, SCORE)
        if SCORE[6]:
            bias = score_terms.bias_tile(BIAS, offs_m, offs_n, q_len, kv_len, bias_sm, bias_sn)
        else:
            bias = 0.0
        s_mod = score_terms.modify(qk * (qk_scale * 0.6931471805599453), dist, rate, bias, SCORE)
        p = tl.math.exp2(s_mod * 1.4426950408889634 - lse2[:, None])
    else:
        p = tl.math.exp2(qk * qk_scale - lse2[:, None])
    if MASKED:
        p = tl.where(allowed_block(offs_m, start_n, offs_n0, MASK, BITS), p, 0.0)
    if not EVEN_N:
        p = tl.where(offs_n[None, :] < kv_len, p, 0.0)
    ds = p * (dp - delta[:, None])
    if SCORE[5]:
        ds = score_terms.pre_cap(ds, s_mod, SCORE)
        if SCORE[4]:  # d rate = sum of -distance * d score
            drate -= tl.sum(tl.sum(ds * dist, 1), 0)
        if SCORE[7]:  # d bias = d score, where the rows and keys exist
            inside = (offs_m[:, None] < q_len) & (offs_n[None, :] < kv_len)
            tl.store(DBIAS + offs_m[:, None] * dbias_sm + offs_n[None, :], ds, mask=inside)
    if IEEE:
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision="ieee")
    else:
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq, drate


@triton.jit
def _dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA,
    KV_NUM, KV_IDX, FULL_NUM, FULL_IDX, BITS, BIT_ROWS, RATES, DRATES, BIAS, DBIAS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_lb, stride_lh, stride_lm,
    num_sb, num_sh, num_sm, idx_sb, idx_sh, idx_sm, fnum_sb, fnum_sh, fnum_sm, fidx_sb, fidx_sh, fidx_sm,
    bits_sb, bits_sh, bits_sm, rate_stride, bias_sb, bias_sh, bias_sm, bias_sn, dbias_sh, dbias_sm,
    H, GROUP, q_len, kv_len, q_rows, kv_rows, qk_scale, scale,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    LAYOUT_BLOCK_Q: tl.constexpr, LAYOUT_BLOCK_KV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, PAD_KEYS: tl.constexpr, IEEE: tl.constexpr, MASK: tl.constexpr,
    SCORE: tl.constexpr = score_terms.NO_SCORE,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    qb = pid_m * BLOCK_M // LAYOUT_BLOCK_Q
    if MASK[HAS_IDS]:  # the batch element's segment ids
        BITS += b * bits_sb
    rate = score_terms.head_rate(RATES, h, rate_stride, SCORE)
    drate = tl.sum(tl.zeros([1], tl.float32), 0)  # (a float32 scalar: carried through the loops)
    BIAS += b * bias_sb + h * bias_sh
    DBIAS += (b * H + h) * dbias_sh  # (float32, (B, H, Nq, Nkv), contiguous)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_m = pid_m * BLOCK_M + offs_m0
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n0 = tl.arange(0, BLOCK_N)
    rows_n0 = tile_rows(offs_n0, MASK)
    even_d: tl.constexpr = HEAD_DIM == BLOCK_D

    rows_m = token_rows(pid_m * BLOCK_M, offs_m0, tile_rows(offs_m0, MASK), q_rows, MASK, True)
    q = load_tile(Q + b * stride_qb + h * stride_qh + rows_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                  rows_m, offs_d, q_rows, HEAD_DIM, EVEN_M, even_d)
    do = load_tile(DO + b * stride_dob + h * stride_doh + rows_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                   rows_m, offs_dv, q_rows, HEAD_DIM_V, EVEN_M, HEAD_DIM_V == BLOCK_DV)
    lse_off = b * stride_lb + h * stride_lh + rows_m * stride_lm
    lse = tl.load(LSE + lse_off, mask=rows_m < q_rows, other=float("inf"))
    # A row with no allowed key (lse = -inf) gets p = exp2(qk - inf) = 0.
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + lse_off, mask=rows_m < q_rows, other=0.0)
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    n_full = tl.load(FULL_NUM + b * fnum_sb + h * fnum_sh + qb * fnum_sm)
    n_part = tl.load(KV_NUM + b * num_sb + h * num_sh + qb * num_sm)
    full_row = FULL_IDX + b * fidx_sb + h * fidx_sh + qb * fidx_sm
    part_row = KV_IDX + b * idx_sb + h * idx_sh + qb * idx_sm
    for j in range(0, n_full):
        kv_start = tl.load(full_row + j) * LAYOUT_BLOCK_KV
        for sub in tl.static_range(LAYOUT_BLOCK_KV // BLOCK_N):
            dq, drate = _dq_update(dq, q, do, lse2, delta, K, V, kv_start + sub * BLOCK_N, offs_m, offs_n0, rows_n0,
                                   offs_d, offs_dv, stride_kn, stride_kd, stride_vn, stride_vd, kv_len, kv_rows,
                                   qk_scale, HEAD_DIM, HEAD_DIM_V, EVEN_N, PAD_KEYS, IEEE, False, MASK, BITS, rate,
                                   drate, BIAS, DBIAS, q_len, bias_sm, bias_sn, dbias_sm, SCORE)
    if MASK[HAS_BITS]:  # the row's partial blocks have consecutive bits, from this one
        BITS = block_bits(BITS, tl.load(BIT_ROWS + b * bits_sb + h * bits_sh + qb * bits_sm), MASK)
    for j in range(0, n_part):
        kv_start = tl.load(part_row + j) * LAYOUT_BLOCK_KV
        for sub in tl.static_range(LAYOUT_BLOCK_KV // BLOCK_N):
            dq, drate = _dq_update(dq, q, do, lse2, delta, K, V, kv_start + sub * BLOCK_N, offs_m, offs_n0, rows_n0,
                                   offs_d, offs_dv, stride_kn, stride_kd, stride_vn, stride_vd, kv_len, kv_rows,
                                   qk_scale, HEAD_DIM, HEAD_DIM_V, EVEN_N, PAD_KEYS, IEEE, True, MASK,
                                   block_bits(BITS, j, MASK), rate, drate, BIAS, DBIAS, q_len, bias_sm, bias_sn,
                                   dbias_sm, SCORE)
    if SCORE[4]:  # (one atomic add per program: the rate's gradient is not bitwise deterministic)
        tl.atomic_add(DRATES + h * rate_stride, drate)
    dq = dq * scale
    store_tile(DQ + b * stride_dqb + h * stride_dqh + rows_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
               dq.to(DQ.dtype.element_ty), rows_m, offs_d, q_rows, HEAD_DIM, EVEN_M, even_d)


@triton.jit
def _dkdv_update(dk, dv, k, v, Q, DO, LSE, DELTA, start_m, offs_n, offs_m0, rows_m0, offs_d, offs_dv,
                 stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, q_rows, qk_scale,
                 HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, EVEN_M: tl.constexpr, IEEE: tl.constexpr,
                 MASKED: tl.constexpr, MASK: tl.constexpr, BITS, rate, BIAS, kv_len, bias_sm, bias_sn,
                 SCORE: tl.constexpr):
    rows_m = token_rows(start_m, offs_m0, rows_m0, q_rows, MASK, True)
    q = load_tile(Q + rows_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, rows_m, offs_d, q_rows, HEAD_DIM,
                  EVEN_M, HEAD_DIM == offs_d.shape[0])
    do = load_tile(DO + rows_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod, rows_m, offs_dv, q_rows,
                   HEAD_DIM_V, EVEN_M, HEAD_DIM_V == offs_dv.shape[0])
    if EVEN_M:
        lse = tl.load(LSE + rows_m * stride_lm)
        delta = tl.load(DELTA + rows_m * stride_lm)
    else:  # rows without a token: q = dO = 0 and p = 0, so they add nothing
        lse = tl.load(LSE + rows_m * stride_lm, mask=rows_m < q_rows, other=float("inf"))
        delta = tl.load(DELTA + rows_m * stride_lm, mask=rows_m < q_rows, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    # Transposed tiles [keys, queries]: dk and dv rows are this program's keys.
    if IEEE:
        qk_t = tl.dot(k, tl.trans(q), input_precision="ieee")
    else:
        qk_t = tl.dot(k, tl.trans(q))
    if SCORE[5]:  # (transposed: keys by queries)
        dist_t = tl.trans(score_terms.distance(start_m + offs_m0, offs_n, SCORE))
        if SCORE[6]:
            bias_t = tl.trans(score_terms.bias_tile(BIAS, start_m + offs_m0, offs_n, q_rows, kv_len, bias_sm, bias_sn))
        else:
            bias_t = 0.0
        s_t = score_terms.modify(qk_t * (qk_scale * 0.6931471805599453), dist_t, rate, bias_t, SCORE)
        p_t = tl.math.exp2(s_t * 1.4426950408889634 - lse2[None, :])
    else:
        p_t = tl.math.exp2(qk_t * qk_scale - lse2[None, :])
    if MASKED:
        p_t = tl.where(allowed_block_t(start_m, offs_m0, offs_n, MASK, BITS), p_t, 0.0)
    if IEEE:
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision="ieee")
        dp_t = tl.dot(v, tl.trans(do), input_precision="ieee")
    else:
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        dp_t = tl.dot(v, tl.trans(do))
    ds_t = p_t * (dp_t - delta[None, :])
    if SCORE[5]:
        ds_t = score_terms.pre_cap(ds_t, s_t, SCORE)
    if IEEE:
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision="ieee")
    else:
        dk = tl.dot(ds_t.to(q.dtype), q, dk)
    return dk, dv


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA,
    Q_NUM, Q_IDX, FULL_NUM, FULL_IDX, BITS, BIT_COLS, RATES, BIAS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_lb, stride_lh, stride_lm,
    num_sb, num_sh, num_sn, idx_sb, idx_sh, idx_sn, fnum_sb, fnum_sh, fnum_sn, fidx_sb, fidx_sh, fidx_sn,
    bits_sb, bits_sh, bits_sn, rate_stride, bias_sb, bias_sh, bias_sm, bias_sn,
    H_KV, GROUP, q_len, kv_len, q_rows, kv_rows, qk_scale, scale,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    LAYOUT_BLOCK_Q: tl.constexpr, LAYOUT_BLOCK_KV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, PAD_KEYS: tl.constexpr, IEEE: tl.constexpr, MASK: tl.constexpr,
    SCORE: tl.constexpr = score_terms.NO_SCORE,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H_KV
    hk = pid_bh % H_KV
    kvb = pid_n * BLOCK_N // LAYOUT_BLOCK_KV
    if MASK[HAS_IDS]:  # the batch element's segment ids
        BITS += b * bits_sb
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_n = pid_n * BLOCK_N + offs_n0
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_m0 = tl.arange(0, BLOCK_M)
    rows_m0 = tile_rows(offs_m0, MASK)
    even_d: tl.constexpr = HEAD_DIM == BLOCK_D
    even_dv: tl.constexpr = HEAD_DIM_V == BLOCK_DV

    # Keys past kv_len (or canvas padding) load as 0; their dk/dv rows are never stored and
    # feed nothing else.
    rows_n = token_rows(pid_n * BLOCK_N, offs_n0, tile_rows(offs_n0, MASK), kv_rows, MASK, PAD_KEYS)
    even_n: tl.constexpr = EVEN_N and not PAD_KEYS
    k = load_tile(K + b * stride_kb + hk * stride_kh + rows_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                  rows_n, offs_d, kv_rows, HEAD_DIM, even_n, even_d)
    v = load_tile(V + b * stride_vb + hk * stride_vh + rows_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                  rows_n, offs_dv, kv_rows, HEAD_DIM_V, even_n, even_dv)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)

    for g in range(0, GROUP):  # the query heads that share this kv head, in order
        h = hk * GROUP + g
        rate = score_terms.head_rate(RATES, h, rate_stride, SCORE)
        BIASh = BIAS + b * bias_sb + h * bias_sh
        Qh = Q + b * stride_qb + h * stride_qh
        DOh = DO + b * stride_dob + h * stride_doh
        LSEh = LSE + b * stride_lb + h * stride_lh
        DELTAh = DELTA + b * stride_lb + h * stride_lh
        n_full = tl.load(FULL_NUM + b * fnum_sb + h * fnum_sh + kvb * fnum_sn)
        n_part = tl.load(Q_NUM + b * num_sb + h * num_sh + kvb * num_sn)
        full_row = FULL_IDX + b * fidx_sb + h * fidx_sh + kvb * fidx_sn
        part_row = Q_IDX + b * idx_sb + h * idx_sh + kvb * idx_sn
        for i in range(0, n_full):
            q_start = tl.load(full_row + i) * LAYOUT_BLOCK_Q
            for sub in tl.static_range(LAYOUT_BLOCK_Q // BLOCK_M):
                dk, dv = _dkdv_update(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, q_start + sub * BLOCK_M, offs_n,
                                      offs_m0, rows_m0, offs_d, offs_dv, stride_qm, stride_qd, stride_dom, stride_dod,
                                      stride_lm, q_rows, qk_scale, HEAD_DIM, HEAD_DIM_V, EVEN_M, IEEE, False, MASK,
                                      BITS, rate, BIASh, kv_len, bias_sm, bias_sn, SCORE)
        bit_cols = BIT_COLS + b * bits_sb + h * bits_sh + kvb * bits_sn
        for i in range(0, n_part):
            q_start = tl.load(part_row + i) * LAYOUT_BLOCK_Q
            if MASK[HAS_BITS]:  # the block's bits, by its number in the forward's order
                bits_i = block_bits(BITS, tl.load(bit_cols + i), MASK)
            else:
                bits_i = BITS
            for sub in tl.static_range(LAYOUT_BLOCK_Q // BLOCK_M):
                dk, dv = _dkdv_update(dk, dv, k, v, Qh, DOh, LSEh, DELTAh, q_start + sub * BLOCK_M, offs_n,
                                      offs_m0, rows_m0, offs_d, offs_dv, stride_qm, stride_qd, stride_dom, stride_dod,
                                      stride_lm, q_rows, qk_scale, HEAD_DIM, HEAD_DIM_V, EVEN_M, IEEE, True, MASK,
                                      bits_i, rate, BIASh, kv_len, bias_sm, bias_sn, SCORE)
    dk = dk * scale
    store_tile(DK + b * stride_dkb + hk * stride_dkh + rows_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
               dk.to(DK.dtype.element_ty), rows_n, offs_d, kv_rows, HEAD_DIM, even_n, even_d)
    store_tile(DV + b * stride_dvb + hk * stride_dvh + rows_n[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd,
               dv.to(DV.dtype.element_ty), rows_n, offs_dv, kv_rows, HEAD_DIM_V, even_n, even_dv)


def attention_backward(dout, dlse, q, k, v, out, lse, layout, spec: MaskSpec, scale: float,
                       score: score_terms.KernelScore | None = None, drates=None, dbias=None):
    """Gradients of the forward's ``(out, lse)``: returns ``dq, dk, dv`` with the shapes and
    dtypes of ``q, k, v``. ``dlse`` may be ``None`` (no gradient reaches ``lse``). ``layout``
    is the forward's, with its transposed (``q_*``) lists. ``score``: the forward's score
    modification (:class:`.score.KernelScore`); the rates' gradient is added into ``drates``
    (float32 zeros) and the bias's written into ``dbias`` (float32 zeros ``(B, H, Nq, Nkv)``)
    when its ``SCORE`` says they learn."""
    if _in_tiled_order(spec, layout):
        return _backward_in_tiled_order(dout, dlse, q, k, v, out, lse, layout, spec, scale)
    return _backward_kernels(dout, dlse, q, k, v, out, lse, layout, spec, scale, score, drates, dbias)


def _backward_kernels(dout, dlse, q, k, v, out, lse, layout, spec: MaskSpec, scale: float,
                      score: score_terms.KernelScore | None = None, drates=None, dbias=None):
    """:func:`attention_backward`'s three launches (the tensors in the order ``spec`` says)."""
    batch, heads, q_rows, head_dim = q.shape
    heads_kv, kv_rows, head_dim_v = k.shape[1], k.shape[2], v.shape[3]
    q_len, kv_len = spec.positions(q_rows, kv_rows)
    group = heads // heads_kv
    cfg = backward_config(q.device, head_dim, head_dim_v, layout.block_q, layout.block_kv, q.dtype)
    ieee = q.dtype == torch.float32
    bd, bdv = head_block(head_dim), head_block(head_dim_v)

    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    if dlse is not None:
        dlse = dlse.to(torch.float32).contiguous()
    delta_block = 64
    fast_launch(_delta_kernel, (cdiv(q_rows, delta_block), batch * heads),
                (out, dout, dlse if dlse is not None else delta, delta,
                 *out.stride(), *dout.stride(), *lse.stride(), heads, q_rows),
                dict(HEAD_DIM_V=head_dim_v, BLOCK_DV=bdv, BLOCK_M=delta_block, HAS_DLSE=dlse is not None),
                num_warps=4, num_stages=3)

    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    score = score or score_terms.KernelScore()
    rates, rate_stride = score_terms.rate_operand(score.rates, lse)
    bias, *bias_strides = score_terms.bias_operand(score.bias, lse)
    drates = lse if drates is None else drates
    dbias_strides = (0, 0) if dbias is None else (dbias.stride(1), dbias.stride(2))
    dbias = lse if dbias is None else dbias
    common = dict(HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v, BLOCK_D=bd, BLOCK_DV=bdv,
                  LAYOUT_BLOCK_Q=layout.block_q, LAYOUT_BLOCK_KV=layout.block_kv, IEEE=ieee, MASK=spec.constexpr,
                  SCORE=score.spec)
    qk_scale = scale * LOG2E
    kv_lists, kv_strides = block_lists(layout)
    q_lists, q_strides = block_lists(layout, transposed=True)
    bits, bit_rows, *bit_row_strides = mask_operands(layout, spec, q.device)
    _, bit_cols, *bit_col_strides = mask_operands(layout, spec, q.device, transposed=True)
    flags = bounds_flags(spec, q_len, kv_len, layout.block_q, layout.block_kv)
    concurrent = (policy.concurrent_dq and q.is_cuda
                  and cdiv(q_len, cfg.dq.block_m) * batch * heads >= policy.concurrent_min_programs)
    side = _side_stream(q.device) if concurrent else None
    if side is not None:  # dq on a second stream, beside dk/dv: each fills the other's tail
        side.wait_stream(torch.cuda.current_stream(q.device))
    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
        launch(_dq_kernel, cfg.dq, lambda c: (cdiv(q_len, c.block_m), batch * heads),
               (q, k, v, dout, dq, lse, delta, *kv_lists, bits, bit_rows, rates, drates, bias, dbias,
                *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(), *lse.stride(), *kv_strides,
                *bit_row_strides, rate_stride, *bias_strides, *dbias_strides, heads, group, q_len, kv_len, q_rows, kv_rows, qk_scale, scale),
               dict(common, **flags), inner="n")
    launch(_dkdv_kernel, cfg.dkdv, lambda c: (cdiv(kv_len, c.block_n), batch * heads_kv),
           (q, k, v, dout, dk, dv, lse, delta, *q_lists, bits, bit_cols, rates, bias,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(), *lse.stride(),
            *q_strides, *bit_col_strides, rate_stride, *bias_strides,
            heads_kv, group, q_len, kv_len, q_rows, kv_rows, qk_scale, scale),
           dict(common, **flags), inner="m")
    if side is not None:
        # The caller's stream waits for dq: later work on it (and the reuse of any tensor
        # freed there, the caching allocator's stream) comes after the side stream's reads.
        torch.cuda.current_stream(q.device).wait_stream(side)
    return dq, dk, dv


def _in_tiled_order(spec: MaskSpec, layout) -> bool:
    """Whether the backward moves a raster-order tiled canvas into the tiled order (below)."""
    row_blocks = getattr(layout, "row_blocks", None) or 0.0
    return spec.raster_io and policy.tiled_order_backward and row_blocks >= policy.tiled_order_min_row_blocks


def _backward_in_tiled_order(dout, dlse, q, k, v, out, lse, layout, spec: MaskSpec, scale: float):
    """:func:`attention_backward` of a raster-order tiled canvas run on tensors moved into
    the tiled order and back: the same blocks in the same order, bitwise the same gradients."""
    order = spec.tiled_order()
    # (padding positions get q = dO = 0 and lse = 0: p = exp(0 - 0) times 0 adds nothing to
    # dk, dv, and their dq rows are dropped)
    dout_t, q_t, out_t, lse_t = (order.tile_tokens(x) for x in (dout, q, out, lse))
    k_t, v_t = order.tile_keys(k), order.tile_keys(v)
    dlse_t = order.tile_tokens(dlse) if dlse is not None else None
    dq, dk, dv = _backward_kernels(dout_t, dlse_t, q_t, k_t, v_t, out_t, lse_t, layout, spec.in_tiled_order(), scale)
    return order.untile_tokens(dq), order.untile_keys(dk), order.untile_keys(dv)



_SIDE_STREAMS: dict = {}


def _side_stream(device: torch.device):
    """The second stream of ``device`` for the dq kernel (one per device, made once)."""
    stream = _SIDE_STREAMS.get(device)
    if stream is None:
        stream = _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return stream


__all__ = ["attention_backward"]
