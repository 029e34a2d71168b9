"""The forward kernel for Hopper, warp-specialized (Gluon): the speed path of dense-class rows.

The portable forward (:mod:`.fwd`) is Triton ``tl`` code: each program's warps load a key
block, wait for ``Q K^T``, do the softmax, then ``P V``, and the tensor cores idle during the
softmax. This kernel is FlashAttention-3's schedule written in Triton's Gluon layer:

* a **loader** warp streams the row's kv tiles into a ring of shared-memory stages with TMA,
  each operand of a stage guarded by a *ready* barrier (the TMA's bytes landed) and an *empty*
  one (both consumers are done with it);
* two **consumer** warpgroups take 64 query rows each of the program's 128, and each overlaps
  its softmax of tile ``i`` with the ``P V`` of tile ``i - 1``: ``S_i = Q K_i^T`` and
  ``O += P_{i-1} V_{i-1}`` are issued asynchronously, the softmax of ``S_i`` runs while ``P V``
  is in flight, and ``O`` is rescaled after it lands. Nothing orders the two warpgroups'
  matmuls (FlashAttention-3 alternates them with named barriers); the warp schedulers
  interleave them as they come.

K and V have separate *empty* barriers: a K stage is refilled as soon as ``Q K^T`` has read it,
not after the ``P V`` of the same tile (that ordering left every K load exposed: 0.84x the
portable kernel on dense 8K, against 1.19x; H200, docs/benchmarks.md). The output leaves
through the query tile's shared memory (TMA store), which the row no longer reads.

Semantics are those of :mod:`.fwd` (same block lists, same masks from the pattern's
:class:`~.masks.MaskSpec` on partial tiles, base-2 online softmax, natural-log ``lse``, ``-inf``
and output 0 for a row without keys). What it needs is narrower (:func:`hopper_reason`):
sm90, fp16/bf16, a head dim of 64 or 128 (equal for q/k and v), tensors in position order
(no ``raster_io``) with TMA-compatible strides, layout blocks that are multiples of 128.
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ...triton_launch import cdiv
from ...triton_launch import launch as fast_launch
from .common import LOG2E, block_lists, mask_operands
from .masks import HAS_BITS, HAS_IDS, MaskSpec, allowed_block, block_bits
from .tuning import _capability

BLOCK_M = gl.constexpr(128)  # query rows per program: two consumer warpgroups of HALF_M rows
HALF_M = gl.constexpr(64)
BLOCK_N = gl.constexpr(128)  # keys per tile
#: kv stages in shared memory: (K + V) tiles of 32 KiB each at D=128, beside the two query tiles.
STAGES = 2


class _Constants:
    """A mask spec's flat tuple (:attr:`.masks.MaskSpec.constexpr`) as one opaque constant:
    Gluon turns a tuple in a partition's arguments into tensors, an object it keeps as is."""

    def __init__(self, values: tuple):
        self.values = tuple(values)

    def __getitem__(self, index):
        return self.values[getattr(index, "value", index)]

    def __hash__(self):
        return hash(self.values)

    def __eq__(self, other):
        return isinstance(other, _Constants) and other.values == self.values

    def __repr__(self):  # part of the kernel's cache key
        return f"MaskConstants{self.values}"


@gluon.jit
def _tile_start(i, n_full_tiles, full_row, part_row, LAYOUT_BLOCK_KV: gl.constexpr, FULL_RUNS: gl.constexpr):
    """First key position of the row's ``i``-th kv tile: the full blocks' tiles first, then the
    partial blocks' (a layout block holds ``LAYOUT_BLOCK_KV // BLOCK_N`` tiles)."""
    SUB: gl.constexpr = LAYOUT_BLOCK_KV // BLOCK_N
    if i < n_full_tiles:
        if FULL_RUNS:
            blk = gl.load(full_row) + i // SUB
        else:
            blk = gl.load(full_row + i // SUB)
        start = blk * LAYOUT_BLOCK_KV + (i % SUB) * BLOCK_N
    else:
        j = i - n_full_tiles
        start = gl.load(part_row + j // SUB) * LAYOUT_BLOCK_KV + (j % SUB) * BLOCK_N
    return start


@gluon.jit
def _loader(q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_ready, k_ready, v_ready, k_empty, v_empty,
            b, h, hk, m0, n_tiles, n_full_tiles, full_row, part_row,
            LAYOUT_BLOCK_KV: gl.constexpr, FULL_RUNS: gl.constexpr, STAGES: gl.constexpr):
    """The loader partition: both query halves once, then the row's kv tiles into the ring."""
    for half in gl.static_range(2):
        mbarrier.expect(q_ready.index(half), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [b, h, m0 + half * HALF_M, 0], q_ready.index(half),
                                        q_bufs.index(half))
    for i in range(n_tiles):
        stage = i % STAGES
        # A fresh barrier counts as having completed the phase before its first: the first
        # round of stages passes at once.
        free = ((i // STAGES) & 1) ^ 1
        start = _tile_start(i, n_full_tiles, full_row, part_row, LAYOUT_BLOCK_KV, FULL_RUNS)
        mbarrier.wait(k_empty.index(stage), free)
        mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [b, hk, start, 0], k_ready.index(stage), k_bufs.index(stage))
        mbarrier.wait(v_empty.index(stage), free)
        mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [b, hk, start, 0], v_ready.index(stage), v_bufs.index(stage))


@gluon.jit
def _softmax_step(s, m_i, l_i, i, rows, offs_n, n_full_tiles, full_row, part_row, bits_row, kv_len, qk_scale,
                  LAYOUT_BLOCK_KV: gl.constexpr, FULL_RUNS: gl.constexpr, EVEN_N: gl.constexpr,
                  MASK: gl.constexpr):
    """Online softmax of tile ``i``'s scores ``s``: ``(p, m_new, alpha, l_new)``, ``alpha`` the
    factor that moves the running output from ``m_i`` to ``m_new``. Partial tiles (and the tile
    that crosses ``kv_len``) are masked; full tiles take the scale in one FMA per element.
    ``bits_row``: the bits of the row's first partial block (a bitmask spec)."""
    masked = i >= n_full_tiles
    if not EVEN_N:
        start = _tile_start(i, n_full_tiles, full_row, part_row, LAYOUT_BLOCK_KV, FULL_RUNS)
        masked = masked | (start + BLOCK_N > kv_len)
    if masked:
        start = _tile_start(i, n_full_tiles, full_row, part_row, LAYOUT_BLOCK_KV, FULL_RUNS)
        in_range = ((start + offs_n) < kv_len)[None, :]
        if MASK[HAS_BITS]:
            # only partial blocks have bits: a full tile masked for crossing kv_len reads none
            ok = (rows[:, None] >= 0) & in_range
            if i >= n_full_tiles:
                bits = block_bits(bits_row, (i - n_full_tiles) // (LAYOUT_BLOCK_KV // BLOCK_N), MASK)
                ok = ok & allowed_block(rows, start, offs_n, MASK, bits)
        else:
            ok = allowed_block(rows, start, offs_n, MASK, bits_row) & in_range
        s = gl.where(ok, s * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        m_ref = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(s - m_ref[:, None])
    else:
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        m_ref = m_new
        p = gl.exp2(s * qk_scale - m_ref[:, None])
    alpha = gl.exp2(m_i - m_ref)
    l_new = l_i * alpha + gl.sum(p, 1)
    return p, m_new, alpha, l_new


@gluon.jit
def _consumer(o_desc, q_bufs, k_bufs, v_bufs, q_ready, k_ready, v_ready, k_empty, v_empty,
              LSE, stride_lb, stride_lh, stride_lm, b, h, m0, n_tiles, n_full_tiles, full_row, part_row, bits_row,
              q_len, kv_len, qk_scale, HALF: gl.constexpr, HEAD_DIM: gl.constexpr, HEAD_DIM_V: gl.constexpr,
              LAYOUT_BLOCK_KV: gl.constexpr, FULL_RUNS: gl.constexpr, EVEN_N: gl.constexpr, MASK: gl.constexpr,
              STAGES: gl.constexpr):
    """One consumer warpgroup: query rows ``m0 + HALF * HALF_M`` onwards, ``HALF_M`` of them."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM_V, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    dtype: gl.constexpr = q_bufs.dtype

    first = m0 + HALF * HALF_M
    rows = first + gl.arange(0, HALF_M, row_layout)
    offs_n = gl.arange(0, BLOCK_N, gl.SliceLayout(0, s_layout))
    m_i = gl.full([HALF_M], float("-inf"), gl.float32, row_layout)
    l_i = gl.zeros([HALF_M], gl.float32, row_layout)
    acc = gl.zeros([HALF_M, HEAD_DIM_V], gl.float32, o_layout)
    q = q_bufs.index(HALF).reshape([HALF_M, HEAD_DIM])

    # (also when the row has no tile: the output goes out through the query's buffer, which
    # must have landed first)
    mbarrier.wait(q_ready.index(HALF), 0)
    if n_tiles > 0:
        mbarrier.wait(k_ready.index(0), 0)
        s = warpgroup_mma(q, k_bufs.index(0).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)),
                          gl.zeros([HALF_M, BLOCK_N], gl.float32, s_layout),
                          use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=(s, ))
        mbarrier.arrive(k_empty.index(0), count=1)
        p, m_i, alpha, l_i = _softmax_step(s, m_i, l_i, 0, rows, offs_n, n_full_tiles, full_row, part_row,
                                           bits_row, kv_len, qk_scale, LAYOUT_BLOCK_KV, FULL_RUNS, EVEN_N, MASK)
        for i in range(1, n_tiles):
            stage = i % STAGES
            prev = (i - 1) % STAGES
            # S_i = Q K_i^T and O += P_{i-1} V_{i-1}, both in flight; wait for S_i alone.
            mbarrier.wait(k_ready.index(stage), (i // STAGES) & 1)
            s = warpgroup_mma(q, k_bufs.index(stage).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)),
                              gl.zeros([HALF_M, BLOCK_N], gl.float32, s_layout),
                              use_acc=False, is_async=True)
            mbarrier.wait(v_ready.index(prev), ((i - 1) // STAGES) & 1)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            acc = warpgroup_mma(p_op, v_bufs.index(prev).reshape([BLOCK_N, HEAD_DIM_V]), acc, is_async=True)
            s = warpgroup_mma_wait(1, deps=(s, ))
            mbarrier.arrive(k_empty.index(stage), count=1)
            p, m_i, alpha, l_i = _softmax_step(s, m_i, l_i, i, rows, offs_n, n_full_tiles, full_row, part_row,
                                               bits_row, kv_len, qk_scale, LAYOUT_BLOCK_KV, FULL_RUNS, EVEN_N, MASK)
            acc, p_op = warpgroup_mma_wait(0, deps=(acc, p_op))
            mbarrier.arrive(v_empty.index(prev), count=1)
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        last = (n_tiles - 1) % STAGES
        mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        acc = warpgroup_mma(p_op, v_bufs.index(last).reshape([BLOCK_N, HEAD_DIM_V]), acc, is_async=True)
        acc, p_op = warpgroup_mma_wait(0, deps=(acc, p_op))
        mbarrier.arrive(v_empty.index(last), count=1)

    empty = l_i == 0.0
    l_safe = gl.where(empty, 1.0, l_i)
    out = acc / gl.convert_layout(l_safe, gl.SliceLayout(1, o_layout))[:, None]
    o_smem = q_bufs.index(HALF)  # the query tile is no longer read: the output goes out through it
    o_smem.reshape([HALF_M, HEAD_DIM_V]).store(out.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [b, h, first, 0], o_smem)
    lse = gl.where(empty, float("-inf"), (m_i + gl.log2(l_safe)) * 0.6931471805599453)
    gl.store(LSE + b * stride_lb + h * stride_lh + rows * stride_lm, lse, mask=rows < q_len)
    tma.store_wait(0)


@gluon.jit
def _fwd_kernel(q_desc, k_desc, v_desc, o_desc, LSE, KV_NUM, KV_IDX, FULL_NUM, FULL_IDX, BITS, BIT_ROWS,
                stride_lb, stride_lh, stride_lm,
                num_sb, num_sh, num_sm, idx_sb, idx_sh, idx_sm, fnum_sb, fnum_sh, fnum_sm, fidx_sb, fidx_sh, fidx_sm,
                bits_sb, bits_sh, bits_sm, H, GROUP, q_len, kv_len, qk_scale,
                HEAD_DIM: gl.constexpr, HEAD_DIM_V: gl.constexpr, LAYOUT_BLOCK_Q: gl.constexpr,
                LAYOUT_BLOCK_KV: gl.constexpr, EVEN_N: gl.constexpr, MASK: gl.constexpr, FULL_RUNS: gl.constexpr,
                STAGES: gl.constexpr):
    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    m0 = pid_m * BLOCK_M
    qb = m0 // LAYOUT_BLOCK_Q
    if MASK[HAS_IDS]:  # the batch element's segment ids
        BITS += b * bits_sb
    SUB: gl.constexpr = LAYOUT_BLOCK_KV // BLOCK_N
    n_full_tiles = gl.load(FULL_NUM + b * fnum_sb + h * fnum_sh + qb * fnum_sm) * SUB
    n_tiles = n_full_tiles + gl.load(KV_NUM + b * num_sb + h * num_sh + qb * num_sm) * SUB
    full_row = FULL_IDX + b * fidx_sb + h * fidx_sh + qb * fidx_sm
    part_row = KV_IDX + b * idx_sb + h * idx_sh + qb * idx_sm
    if MASK[HAS_BITS]:  # the row's partial blocks have consecutive bits, from this one
        bits_row = block_bits(BITS, gl.load(BIT_ROWS + b * bits_sb + h * bits_sh + qb * bits_sm), MASK)
    else:
        bits_row = BITS

    dtype: gl.constexpr = q_desc.dtype
    q_bufs = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_ready.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)  # one arrival per consumer
        mbarrier.init(v_empty.index(i), count=2)

    gl.warp_specialize([
        (_consumer, (o_desc, q_bufs, k_bufs, v_bufs, q_ready, k_ready, v_ready, k_empty, v_empty,
                     LSE, stride_lb, stride_lh, stride_lm, b, h, m0, n_tiles, n_full_tiles, full_row, part_row,
                     bits_row, q_len, kv_len, qk_scale, 0, HEAD_DIM, HEAD_DIM_V, LAYOUT_BLOCK_KV, FULL_RUNS, EVEN_N, MASK,
                     STAGES)),
        (_consumer, (o_desc, q_bufs, k_bufs, v_bufs, q_ready, k_ready, v_ready, k_empty, v_empty,
                     LSE, stride_lb, stride_lh, stride_lm, b, h, m0, n_tiles, n_full_tiles, full_row, part_row,
                     bits_row, q_len, kv_len, qk_scale, 1, HEAD_DIM, HEAD_DIM_V, LAYOUT_BLOCK_KV, FULL_RUNS, EVEN_N, MASK,
                     STAGES)),
        (_loader, (q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_ready, k_ready, v_ready, k_empty, v_empty,
                   b, h, hk, m0, n_tiles, n_full_tiles, full_row, part_row, LAYOUT_BLOCK_KV, FULL_RUNS, STAGES)),
    ], [4, 1], [240, 24])


_GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}


def _descriptor(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """A TMA descriptor over ``t`` ``(B, H, N, D)`` moving ``(1, 1, rows, D)`` boxes; rows past
    ``N`` read as 0 and are not written."""
    block, layout = _box(t.dtype, rows, t.shape[3])
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block, layout)


@functools.lru_cache(maxsize=None)
def _box(dtype: torch.dtype, rows: int, dim: int):
    block = [1, 1, rows, dim]
    return block, gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[dtype])


def _tma_ready(t: torch.Tensor) -> bool:
    elem = t.element_size()
    return (t.stride(3) == 1 and t.data_ptr() % 16 == 0
            and all((s * elem) % 16 == 0 for s in t.stride()[:3]))


def hopper_reason(q, k, v, layout, spec: MaskSpec, capability: tuple[int, int] | None = None) -> str | None:
    """Why this kernel cannot run these inputs, or ``None``: it can. ``capability``: the GPU's
    (default: that of ``q``'s device; given, the device is not looked at)."""
    if capability is None:
        if q.device.type != "cuda":
            return "not a CUDA tensor"
        capability = _capability(q.device)
    if capability[0] != 9:
        return f"compute capability {capability[0]}.{capability[1]} is not Hopper's 9.x"
    if q.dtype not in _GL_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype} (float16 and bfloat16 only)"
    if not q.shape[3] == k.shape[3] == v.shape[3] or q.shape[3] not in (64, 128):
        return f"head dims {q.shape[3]}/{v.shape[3]} (64 or 128, the same for q, k and v)"
    if spec.raster_io:
        return "tiled positions on raster-order tensors (its loads are TMA boxes of consecutive rows)"
    if layout.block_q % BLOCK_M.value or layout.block_kv % BLOCK_N.value:
        return f"layout blocks {layout.block_q}x{layout.block_kv} (multiples of {BLOCK_M.value}x{BLOCK_N.value})"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not _tma_ready(t):
            return f"{name}'s strides {t.stride()} (TMA: last dim contiguous, 16-byte aligned base and strides)"
    return None


def attention_forward_hopper(q, k, v, layout, spec: MaskSpec, scale: float, *, stages: int = STAGES):
    """:func:`.fwd.attention_forward` on Hopper (inputs :func:`hopper_reason` accepts):
    ``out`` ``(B, Hq, Nq, Dv)`` and ``lse`` ``(B, Hq, Nq)`` float32."""
    batch, heads, q_len, head_dim = q.shape
    kv_len, head_dim_v = k.shape[2], v.shape[3]
    out = torch.empty(batch, heads, q_len, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, heads, q_len, dtype=torch.float32, device=q.device)
    lists, list_strides = block_lists(layout)
    bits, bit_rows, *bit_strides = mask_operands(layout, spec, q.device)
    fast_launch(
        _fwd_kernel, (cdiv(q_len, BLOCK_M.value), batch * heads),
        (_descriptor(q, HALF_M.value), _descriptor(k, BLOCK_N.value), _descriptor(v, BLOCK_N.value),
         _descriptor(out, HALF_M.value), lse, *lists, bits, bit_rows, *lse.stride(), *list_strides, *bit_strides,
         heads, heads // k.shape[1], q_len, kv_len, scale * LOG2E),
        dict(HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v, LAYOUT_BLOCK_Q=layout.block_q, LAYOUT_BLOCK_KV=layout.block_kv,
             EVEN_N=kv_len % BLOCK_N.value == 0, MASK=_mask_constants(spec),
             FULL_RUNS=getattr(layout, "full_runs", None) is True, STAGES=stages),
        num_warps=4, num_stages=1)  # (the stages are the kernel's own; num_stages is unused by Gluon)
    return out, lse


@functools.lru_cache(maxsize=256)
def _mask_constants(spec: MaskSpec) -> _Constants:
    # (bits read one word per element: the word-spreading form needs a layout-free arange)
    return _Constants(spec.with_gathered_bits().constexpr)
