"""Probes of the Triton kernels' block masks: the masks as the kernels' loops compute them,
assembled into dense ``(q_len, kv_len)`` tensors for the tests to compare with brute force.

``masks.allowed_block(rows, start, offs, MASK, BITS)`` (queries ``rows`` against the key block
``start + offs``: the forward and dq loops) and ``masks.allowed_block_t(start, offs, cols, MASK,
BITS)`` (the query block ``start + offs`` against keys ``cols``, keys by queries: the dk/dv
loops) run in a probe kernel over every (query block, key block) pair of a problem
(:func:`probe`), or over the partial blocks of a layout, finding each block's bits as the
kernels do (:func:`probe_partial`: a bitmask spec). Without a GPU the probes run in Triton's
interpreter (``conftest.py``).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from foveate.backends.triton import masks
from foveate.backends.triton.masks import window
from kernel_spy import DEVICE



@triton.jit
def _probe_kernel(out_ptr, stride, BITS, MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  TRANSPOSED: tl.constexpr):
    """Block (pid_m, pid_n) of the mask, as the kernels' loops compute it, into ``out`` (queries
    by keys)."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    start_m = tl.program_id(0) * BLOCK_M
    start_n = tl.program_id(1) * BLOCK_N
    rows = start_m + offs_m
    cols = start_n + offs_n
    if TRANSPOSED:  # [BLOCK_N, BLOCK_M], stored transposed
        ok = masks.allowed_block_t(start_m, offs_m, cols, MASK, BITS)
        tl.store(out_ptr + rows[None, :] * stride + cols[:, None], ok.to(tl.int8))
    else:  # [BLOCK_M, BLOCK_N]
        ok = masks.allowed_block(rows, start_n, offs_n, MASK, BITS)
        tl.store(out_ptr + rows[:, None] * stride + cols[None, :], ok.to(tl.int8))


@contextlib.contextmanager
def _fallback_calls():
    """Counts the calls of the generic ``window.allowed`` (the fall-back of the window's block
    forms) while the probe runs; ``None`` on a GPU (compiled kernels are not Python calls)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield None
        return
    calls = []
    real = window.allowed

    def counted(*args, **kwargs):
        calls.append(real)
        return real(*args, **kwargs)

    try:
        window.allowed = counted
        yield calls
    finally:
        window.allowed = real


def probe(spec: masks.MaskSpec, q_len: int, kv_len: int, block_m: int, block_n: int, transposed: bool,
          ids: torch.Tensor | None = None):
    """``(mask, fallback)``: the ``(q_len, kv_len)`` bool mask of ``allowed_block`` (or
    ``allowed_block_t``) over whole blocks of ``block_m`` queries and ``block_n`` keys, cropped
    to the lengths, and whether a window leaf fell back to ``window.allowed`` (``None``:
    unknown). The spec reads no bits; ``ids``: the one row of segment ids of a spec that reads
    them (:meth:`TokenIds.operand <foveate.patterns.kernel_mask.TokenIds.operand>`)."""
    assert not spec.uses_bits, "a bitmask spec is probed on a layout's partial blocks: probe_partial"
    assert spec.uses_ids == (ids is not None), "segment ids go with a spec that reads them"
    q_pad, kv_pad = triton.cdiv(q_len, block_m) * block_m, triton.cdiv(kv_len, block_n) * block_n
    out = torch.full((q_pad, kv_pad), -1, dtype=torch.int8, device=DEVICE)
    no_bits = torch.zeros(1, dtype=torch.int32, device=DEVICE) if ids is None else ids.reshape(-1).to(DEVICE)
    with _fallback_calls() as calls:
        _probe_kernel[(q_pad // block_m, kv_pad // block_n)](
            out, kv_pad, no_bits, MASK=spec.constexpr, BLOCK_M=block_m, BLOCK_N=block_n, TRANSPOSED=transposed)
    out = out.cpu()
    assert ((out == 0) | (out == 1)).all(), "the probe left elements unwritten"
    return out[:q_len, :kv_len].bool(), None if calls is None else bool(calls)


@triton.jit
def _partial_kernel(out_ptr, stride, NUM, IDX, SLOTS, BITS, nq, width, MASK: tl.constexpr, LAYOUT_BLOCK_Q: tl.constexpr,
                    LAYOUT_BLOCK_KV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    TRANSPOSED: tl.constexpr):
    """Partial block ``j`` of layout row ``r`` (program ``(r, j)``): of query block ``r`` in the
    kv lists, or of kv block ``r`` in the transposed lists, each of its kernel tiles masked as
    the forward / dq (dk/dv) loops mask them, its bits found as they find them."""
    r = tl.program_id(0)
    j = tl.program_id(1)
    if j < tl.load(NUM + r):
        other = tl.load(IDX + r * width + j)
        if TRANSPOSED:  # dk/dv: kv block r, query block `other`, bits by the block's number
            bits = masks.block_bits(BITS, tl.load(SLOTS + r * width + j), MASK)
            for sub_n in tl.static_range(LAYOUT_BLOCK_KV // BLOCK_N):
                cols = r * LAYOUT_BLOCK_KV + sub_n * BLOCK_N + tl.arange(0, BLOCK_N)
                for sub_m in tl.static_range(LAYOUT_BLOCK_Q // BLOCK_M):
                    start = other * LAYOUT_BLOCK_Q + sub_m * BLOCK_M
                    offs = tl.arange(0, BLOCK_M)
                    ok = masks.allowed_block_t(start, offs, cols, MASK, bits)
                    tl.store(out_ptr + (start + offs)[None, :] * stride + cols[:, None], ok.to(tl.int8))
        else:  # forward / dq: query block r, kv block `other`, bits from the row's first one
            bits = masks.block_bits(masks.block_bits(BITS, tl.load(SLOTS + r), MASK), j, MASK)
            for sub_m in tl.static_range(LAYOUT_BLOCK_Q // BLOCK_M):
                rows = r * LAYOUT_BLOCK_Q + sub_m * BLOCK_M + tl.arange(0, BLOCK_M)
                for sub_n in tl.static_range(LAYOUT_BLOCK_KV // BLOCK_N):
                    start = other * LAYOUT_BLOCK_KV + sub_n * BLOCK_N
                    offs = tl.arange(0, BLOCK_N)
                    ok = masks.allowed_block(rows, start, offs, MASK, bits)
                    tl.store(out_ptr + rows[:, None] * stride + (start + offs)[None, :], ok.to(tl.int8))


def probe_partial(spec: masks.MaskSpec, layout, block_m: int, block_n: int, transposed: bool) -> torch.Tensor:
    """The int8 ``(q_len, kv_len)`` mask of ``layout``'s partial blocks as the kernels compute
    them from ``spec`` (a bitmask spec: the bits of :meth:`BlockLayout.partial_bitmask`),
    walking the kv lists (``transposed``: the transposed lists, with the blocks' numbers) in
    kernel tiles of ``block_m`` x ``block_n``; -1 outside partial blocks. Layouts of one
    ``(batch, head)`` slot."""
    assert layout.batch_heads == (1, 1)
    bq, bkv = layout.block_q, layout.block_kv
    q_pad, kv_pad = layout.num_q_blocks * bq, layout.num_kv_blocks * bkv
    out = torch.full((q_pad, kv_pad), -1, dtype=torch.int8, device=DEVICE)
    bits = layout.partial_bitmask()
    if transposed:
        num, idx, slots = layout.q_num_blocks, layout.q_indices, bits.col_slot
    else:
        num, idx, slots = layout.kv_num_blocks, layout.kv_indices, bits.row_start
    num, idx, slots = (t.reshape(t.shape[2], -1).contiguous().to(DEVICE) for t in (num, idx, slots))
    _partial_kernel[(num.shape[0], max(idx.shape[1], 1))](
        out, kv_pad, num, idx, slots, bits.words.to(DEVICE), layout.num_q_blocks, idx.shape[1],
        MASK=spec.constexpr, LAYOUT_BLOCK_Q=bq, LAYOUT_BLOCK_KV=bkv, BLOCK_M=block_m, BLOCK_N=block_n,
        TRANSPOSED=transposed)
    return out.cpu()[:layout.q_len, :layout.kv_len]


def assert_masks_equal(got: torch.Tensor, want: torch.Tensor, what: str, spec: masks.MaskSpec):
    assert got.shape == want.shape, what
    wrong = (got != want).nonzero().tolist()
    assert not wrong, (f"{what}: {len(wrong)} of {want.numel()} elements differ; first (query, key, expected): "
                       f"{[(i, j, bool(want[i, j])) for i, j in wrong[:8]]}; spec {spec.fields()}")
