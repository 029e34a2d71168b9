"""The fused block-sparse attention forward kernel.

One program per ``BLOCK_M`` query rows (a layout query block or a part of one) and
(batch x query head). It walks the layout's **full** kv blocks first, with no mask work at
all (only the sequence-end bound when ``kv_len`` is not a multiple of the block), as a range
of positions when the layout is known to hold each row's full blocks as one run
(``BlockLayout.full_runs``: 5-15 % faster on dense, causal and windowed rows on an H200, the
list's index loads gone from the loop), then the **partial** ones, masked by the pattern's
mask spec as coordinate arithmetic (:func:`masks.allowed_block`); online softmax in base 2,
float32 accumulation; writes ``out`` and the natural-log ``lse`` (``-inf`` and output 0 where
a query sees no key). Grouped-query attention maps query head ``h`` to kv head ``h // group``.

On Hopper GPUs :func:`attention_forward` runs the warp-specialized kernel of
:mod:`.fwd_hopper` instead wherever that kernel takes the inputs (same lists, masks and
results; FlashAttention-3's schedule, which ``tl`` code does not reach in Triton 3.6).

The kernel walks *positions* (the layout's token order); every load and store goes through
:func:`masks.token_rows` to the memory row of a position, which is the position itself except
for a tiled canvas run on raster-order tensors (``MaskSpec.raster_io``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...settings import policy
from ...triton_launch import cdiv
from .common import LOG2E, block_lists, bounds_flags, head_block, mask_operands
from . import score as score_terms
from .masks import HAS_BITS, HAS_IDS, MaskSpec, allowed_block, block_bits, tile_rows, token_rows
from .tiles import load_tile, store_tile
from .tuning import KernelConfig, forward_config, launch


@triton.jit
def _block_update(acc, m_i, l_i, q, K, V, start_n, offs_m, offs_n0, rows_n0, offs_d, offs_dv,
                  stride_kn, stride_kd, stride_vn, stride_vd, kv_len, kv_rows, qk_scale,
                  HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, EVEN_N: tl.constexpr, PAD_KEYS: tl.constexpr,
                  BLOCK_N: tl.constexpr, IEEE: tl.constexpr, MASKED: tl.constexpr, MASK: tl.constexpr, BITS,
                  rate, BIAS, q_len, bias_sm, bias_sn, SCORE: tl.constexpr):
    """Online-softmax update with the ``BLOCK_N`` keys from position ``start_n``; ``MASKED``:
    they belong to a partial block (whose bits, for a bitmask spec, are at ``BITS``). ``SCORE``,
    ``rate``, ``BIAS`` (at the program's batch and head): the score modification (:mod:`.score`).
    ``PAD_KEYS``: partial blocks may hold canvas padding, which has no memory row (full blocks
    never do). ``rows_n0 = tile_rows(offs_n0)``."""
    offs_n = start_n + offs_n0
    pad: tl.constexpr = MASKED and PAD_KEYS
    rows_n = token_rows(start_n, offs_n0, rows_n0, kv_rows, MASK, pad)
    even_rows: tl.constexpr = EVEN_N and not pad
    # k as (D, BLOCK_N), v as (BLOCK_N, Dv)
    k = load_tile(K + offs_d[:, None] * stride_kd + rows_n[None, :] * stride_kn, offs_d, rows_n, HEAD_DIM, kv_rows,
                  HEAD_DIM == offs_d.shape[0], even_rows)
    v = load_tile(V + rows_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd, rows_n, offs_dv, kv_rows,
                  HEAD_DIM_V, even_rows, HEAD_DIM_V == offs_dv.shape[0])
    if IEEE:
        qk = tl.dot(q, k, input_precision="ieee")
    else:
        qk = tl.dot(q, k)
    if MASKED or not EVEN_N or SCORE[5]:
        # Masked keys get -inf; a row with no allowed key so far keeps m = -inf, and uses 0
        # as its reference so that exp2 gives 0, not NaN.
        if SCORE[5]:  # (modified in natural units, then back to base 2)
            dist = score_terms.distance(offs_m, offs_n, SCORE)
            if SCORE[6]:
                bias = score_terms.bias_tile(BIAS, offs_m, offs_n, q_len, kv_len, bias_sm, bias_sn)
            else:
                bias = 0.0
            qk = score_terms.modify(qk * (qk_scale * 0.6931471805599453), dist, rate, bias, SCORE) * 1.4426950408889634
        else:
            qk = qk * qk_scale
        if MASKED:
            qk = tl.where(allowed_block(offs_m, start_n, offs_n0, MASK, BITS), qk, float("-inf"))
        if not EVEN_N:
            qk = tl.where(offs_n[None, :] < kv_len, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_ref[:, None])
    else:
        # Every key counts: the row maximum is finite, and the scale folds into one FMA per
        # element (qk * scale - m).
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_ref = m_new
        p = tl.math.exp2(qk * qk_scale - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if IEEE:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,
    KV_NUM, KV_IDX, FULL_NUM, FULL_IDX, BITS, BIT_ROWS, RATES, BIAS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh, stride_lm,
    num_sb, num_sh, num_sm, idx_sb, idx_sh, idx_sm, fnum_sb, fnum_sh, fnum_sm, fidx_sb, fidx_sh, fidx_sm,
    bits_sb, bits_sh, bits_sm, rate_stride, bias_sb, bias_sh, bias_sm, bias_sn,
    H, GROUP, q_len, kv_len, q_rows, kv_rows, qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    LAYOUT_BLOCK_Q: tl.constexpr, LAYOUT_BLOCK_KV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, PAD_KEYS: tl.constexpr,
    IEEE: tl.constexpr, MASK: tl.constexpr, FULL_RUNS: tl.constexpr, SCORE: tl.constexpr = score_terms.NO_SCORE,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    qb = pid_m * BLOCK_M // LAYOUT_BLOCK_Q  # the layout's query block of these rows
    if MASK[HAS_IDS]:  # the batch element's segment ids
        BITS += b * bits_sb
    rate = score_terms.head_rate(RATES, h, rate_stride, SCORE)
    BIAS += b * bias_sb + h * bias_sh
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_m = pid_m * BLOCK_M + offs_m0
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n0 = tl.arange(0, BLOCK_N)
    rows_n0 = tile_rows(offs_n0, MASK)

    rows_m = token_rows(pid_m * BLOCK_M, offs_m0, tile_rows(offs_m0, MASK), q_rows, MASK, True)
    q_ptrs = Q + b * stride_qb + h * stride_qh + rows_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = load_tile(q_ptrs, rows_m, offs_d, q_rows, HEAD_DIM, EVEN_M, HEAD_DIM == BLOCK_D)
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    n_full = tl.load(FULL_NUM + b * fnum_sb + h * fnum_sh + qb * fnum_sm)
    n_part = tl.load(KV_NUM + b * num_sb + h * num_sh + qb * num_sm)
    full_row = FULL_IDX + b * fidx_sb + h * fidx_sh + qb * fidx_sm
    part_row = KV_IDX + b * idx_sb + h * idx_sh + qb * idx_sm
    # Full blocks, no mask work. When every row's full blocks are one run of consecutive blocks
    # (dense, causal, windowed rows: FULL_RUNS), they are walked as a range, the list unread
    # but for its first entry.
    if FULL_RUNS:
        first = tl.load(full_row) * LAYOUT_BLOCK_KV
        for kv_start in range(first, first + n_full * LAYOUT_BLOCK_KV, BLOCK_N):
            acc, m_i, l_i = _block_update(
                acc, m_i, l_i, q, K, V, kv_start, offs_m, offs_n0, rows_n0, offs_d, offs_dv,
                stride_kn, stride_kd, stride_vn, stride_vd, kv_len, kv_rows, qk_scale,
                HEAD_DIM, HEAD_DIM_V, EVEN_N, PAD_KEYS, BLOCK_N, IEEE, False, MASK, BITS, rate, BIAS, q_len, bias_sm,
                bias_sn, SCORE)
    else:
        for j in range(0, n_full):
            kv_start = tl.load(full_row + j) * LAYOUT_BLOCK_KV
            for sub in tl.static_range(LAYOUT_BLOCK_KV // BLOCK_N):
                acc, m_i, l_i = _block_update(
                    acc, m_i, l_i, q, K, V, kv_start + sub * BLOCK_N, offs_m, offs_n0, rows_n0, offs_d, offs_dv,
                    stride_kn, stride_kd, stride_vn, stride_vd, kv_len, kv_rows, qk_scale,
                    HEAD_DIM, HEAD_DIM_V, EVEN_N, PAD_KEYS, BLOCK_N, IEEE, False, MASK, BITS, rate, BIAS, q_len, bias_sm,
                bias_sn, SCORE)
    if MASK[HAS_BITS]:  # the row's partial blocks have consecutive bits, from this one
        BITS = block_bits(BITS, tl.load(BIT_ROWS + b * bits_sb + h * bits_sh + qb * bits_sm), MASK)
    for j in range(0, n_part):  # partial blocks: the pattern's mask
        kv_start = tl.load(part_row + j) * LAYOUT_BLOCK_KV
        for sub in tl.static_range(LAYOUT_BLOCK_KV // BLOCK_N):
            acc, m_i, l_i = _block_update(
                acc, m_i, l_i, q, K, V, kv_start + sub * BLOCK_N, offs_m, offs_n0, rows_n0, offs_d, offs_dv,
                stride_kn, stride_kd, stride_vn, stride_vd, kv_len, kv_rows, qk_scale,
                HEAD_DIM, HEAD_DIM_V, EVEN_N, PAD_KEYS, BLOCK_N, IEEE, True, MASK, block_bits(BITS, j, MASK), rate,
                BIAS, q_len, bias_sm, bias_sn, SCORE)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + rows_m[:, None] * stride_om + offs_dv[None, :] * stride_od
    store_tile(o_ptrs, out.to(O.dtype.element_ty), rows_m, offs_dv, q_rows, HEAD_DIM_V, EVEN_M, HEAD_DIM_V == BLOCK_DV)
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    if EVEN_M:
        tl.store(LSE + b * stride_lb + h * stride_lh + rows_m * stride_lm, lse)
    else:
        tl.store(LSE + b * stride_lb + h * stride_lh + rows_m * stride_lm, lse, mask=rows_m < q_rows)


def attention_forward(q, k, v, layout, spec: MaskSpec, scale: float, *, block_m: int | None = None,
                      block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                      kernel: str = "auto", score: score_terms.KernelScore | None = None):
    """Launch the forward kernel. ``q`` ``(B, Hq, Nq, D)``, ``k`` ``(B, Hkv, Nkv, D)``, ``v``
    ``(B, Hkv, Nkv, Dv)``; ``layout``'s blocks are multiples of the kernel's tiles: ``block_m``
    query rows per program, ``block_n`` keys per step (defaults: :func:`tuning.forward_config`).
    Returns ``out`` ``(B, Hq, Nq, Dv)`` (q's dtype) and ``lse`` ``(B, Hq, Nq)`` float32, in the
    order of ``q`` (raster order under ``spec.raster_io``, the layout being in tiled order).

    ``kernel``: ``"auto"`` runs the warp-specialized Hopper kernel (:mod:`.fwd_hopper`) on the
    inputs it takes when no tile is given, else this module's kernel; ``"portable"`` always
    this module's; ``"hopper"`` the Hopper kernel or a ``ValueError`` saying why not.
    ``score``: a score modification (:class:`.score.KernelScore`; this module's kernel only)."""
    if kernel not in FORWARD_KERNELS:
        raise ValueError(f"kernel must be one of {FORWARD_KERNELS}, got {kernel!r}")
    score = score or score_terms.KernelScore()
    if kernel == "auto" and (not policy.hopper_forward or score.spec[5]):
        kernel = "portable"
    if kernel == "hopper" and score.spec[5]:
        raise ValueError("kernel='hopper' cannot run these inputs: it takes no score modification")
    if kernel != "portable":
        if any(x is not None for x in (block_m, block_n, num_warps, num_stages)):
            why = "its tiles and warps are fixed"
        elif not q.is_cuda:
            why = "not a CUDA tensor"
        else:
            from .fwd_hopper import attention_forward_hopper, hopper_reason

            why = hopper_reason(q, k, v, layout, spec)
            if why is None:
                return attention_forward_hopper(q, k, v, layout, spec, scale)
        if kernel == "hopper":
            raise ValueError(f"kernel='hopper' cannot run these inputs: {why}")
    batch, heads, q_rows, head_dim = q.shape
    kv_rows, head_dim_v = k.shape[2], v.shape[3]
    q_len, kv_len = spec.positions(q_rows, kv_rows)
    out = torch.empty(batch, heads, q_rows, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, heads, q_rows, dtype=torch.float32, device=q.device)
    cfg = forward_config(q.device, head_dim, head_dim_v, layout.block_q, layout.block_kv, q.dtype)
    bm, bn = block_m or cfg.block_m, block_n or cfg.block_n
    num_warps, num_stages = num_warps or cfg.num_warps, num_stages or cfg.num_stages
    if layout.block_q % bm or layout.block_kv % bn:
        raise ValueError(f"kernel tiles {bm}x{bn} must divide the layout's blocks {layout.block_q}x{layout.block_kv}")
    lists, list_strides = block_lists(layout)
    bits, bit_rows, *bit_strides = mask_operands(layout, spec, q.device)
    rates, rate_stride = score_terms.rate_operand(score.rates, bits)
    bias, *bias_strides = score_terms.bias_operand(score.bias, bits)
    # IEEE: Triton's fp32 dot would use tf32 on GPUs; fp32 inputs keep full precision.
    launch(_fwd_kernel, KernelConfig(bm, bn, num_warps, num_stages),
           lambda c: (cdiv(q_len, c.block_m), batch * heads),
           (q, k, v, out, lse, *lists, bits, bit_rows, rates, bias,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(), *list_strides, *bit_strides,
            rate_stride, *bias_strides, heads, heads // k.shape[1], q_len, kv_len, q_rows, kv_rows, scale * LOG2E),
           dict(HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v, BLOCK_D=head_block(head_dim),
                BLOCK_DV=head_block(head_dim_v), LAYOUT_BLOCK_Q=layout.block_q, LAYOUT_BLOCK_KV=layout.block_kv,
                **bounds_flags(spec, q_len, kv_len, bm, layout.block_kv), IEEE=q.dtype == torch.float32,
                MASK=spec.constexpr, FULL_RUNS=policy.full_runs and getattr(layout, "full_runs", None) is True,
                SCORE=score.spec))
    return out, lse


#: What ``attention_forward(kernel=...)`` may be.
FORWARD_KERNELS = ("auto", "portable", "hopper")


__all__ = ["FORWARD_KERNELS", "attention_forward"]
