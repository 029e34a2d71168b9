"""Split-KV decode attention in Triton (flash-decoding), on contiguous and paged caches.

One program per (sequence, kv head, split). It serves every query head of its kv head and
every new query at once: its ``GROUP * N_NEW`` rows (padded to at least 16 for ``tl.dot``)
share each load of K and V, which is the whole cost of decoding. The keys a sequence needs
are cut into blocks of ``BLOCK_N``; the program takes its split's share of those blocks,
runs an online softmax in base 2 with float32 accumulation, and writes a partial output and
log-sum-exp; :func:`_merge_kernel` combines the splits by their log-sum-exp. With one split
the first kernel writes the result itself.

Which keys are read (``WALK``):

* ``RANGES``: the rule of the pattern (:mod:`.rule`: per query at most two key intervals,
  affine in the query index and the sequence length, a compile-time ``RULE``) evaluated in
  registers from the sequence's length: the union over the queries of each interval gives
  at most two disjoint ranges of keys, the only ones read (a window and its sinks: two short
  ranges whatever the length). Nothing is computed on the host per call.
* ``PAGES``: the pages listed per (sequence, kv head) (query-aware selection, :mod:`.quest`),
  masked by the rule inside them.

Inside the blocks every key is masked exactly by the rule (bottom-right aligned on each
sequence's length) and by the range or page it was read for; keys past a sequence's length
are neither loaded nor counted. Paged caches are read through the block table per key, so a
block may span several small pages and ``BLOCK_N`` need not match ``page_size``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..triton_launch import cdiv, launch
from .rule import MAX_TERMS, SLOT_WIDTH, TERM_WIDTH, walk_tokens

LOG2E = 1.4426950408889634
RANGES, PAGES = 0, 1
# (the rule's layout, as the kernels index it)
_TERMS = tl.constexpr(MAX_TERMS)
_TW = tl.constexpr(TERM_WIDTH)
_SW = tl.constexpr(SLOT_WIDTH)


@dataclass(frozen=True)
class DecodeConfig:
    """The decode kernels' tiles and the split choice, as data.

    ``block_n`` keys per step; ``programs_per_sm``: splits are chosen so that ``batch * kv_heads
    * splits`` reaches this many programs per multiprocessor (a CPU counts as
    ``cpu_multiprocessors``), but a split gets at least ``min_split_tokens`` keys (a partial
    result costs a write and a read of ``rows * D`` floats) and there are at most ``max_splits``.
    """

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3
    programs_per_sm: int = 2
    min_split_tokens: int = 256
    max_splits: int = 128
    cpu_multiprocessors: int = 1


CONFIG = DecodeConfig()


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def choose_splits(batch: int, kv_heads: int, tokens: int, device: torch.device, *, page_size: int | None = None,
                  config: DecodeConfig = CONFIG) -> int:
    """Splits per (sequence, kv head) for ``tokens`` keys read per sequence (its longest): enough
    programs to fill the device, no split under ``min_split_tokens`` keys nor under a page."""
    sms = _multiprocessors(device) if device.type == "cuda" else config.cpu_multiprocessors
    want = cdiv(config.programs_per_sm * sms, batch * kv_heads)
    most = max(1, tokens // config.min_split_tokens)
    if page_size:
        most = min(most, max(1, cdiv(tokens, page_size)))
    return max(1, min(want, most, config.max_splits))


@triton.jit
def _slot_end(RULE: tl.constexpr, AT: tl.constexpr, i, length, LOWER: tl.constexpr):
    """``max(0, terms)`` (``LOWER``) or ``min(length, terms)`` of the rule's end at ``AT``, per
    query index ``i``."""
    if LOWER:
        value = i * 0
    else:
        value = i * 0 + length
    for t in tl.static_range(_TERMS):
        if RULE[AT + t * _TW]:
            x = RULE[AT + t * _TW + 1] + RULE[AT + t * _TW + 2] * i + RULE[AT + t * _TW + 3] * length
            if LOWER:
                value = tl.maximum(value, x)
            else:
                value = tl.minimum(value, x)
    return value


@triton.jit
def _slot(RULE: tl.constexpr, K: tl.constexpr, i, row_ok, length):
    """Slot ``K`` of the rule: per row its key interval ``[lo, hi)`` (empty where the slot does
    not apply) and the union over the rows, ``[start, end)`` (a superset of it: the ends are
    non-decreasing in the query index)."""
    BASE: tl.constexpr = 1 + K * _SW
    if K < RULE[0]:
        lo = _slot_end(RULE, BASE + 2, i, length, True)
        hi = _slot_end(RULE, BASE + 2 + _TERMS * _TW, i, length, False)
        ok = row_ok & (i >= RULE[BASE]) & (i < RULE[BASE + 1]) & (lo < hi)
        lo = tl.where(ok, lo, 0)
        hi = tl.where(ok, hi, 0)
        end = tl.max(hi, 0)
        start = tl.minimum(tl.min(tl.where(ok, lo, 2147483647), 0), end)
    else:
        lo = i * 0
        hi = i * 0
        start = tl.min(lo, 0)
        end = start
    return lo, hi, start, end


@triton.jit
def _block(acc, m_i, l_i, q, K, V, k_rows, v_rows, key_ok, pos, lo0, hi0, lo1, hi1, offs_d, d_ok, stride_kd,
           stride_vd, qk_scale, TWO: tl.constexpr, EVEN_D: tl.constexpr, IEEE: tl.constexpr):
    """Online-softmax update with one block of keys: ``k_rows`` / ``v_rows`` their memory rows
    (element offsets), ``key_ok`` the keys read (others load as 0 and count for no row),
    ``pos`` their positions, masked per row by the rule's intervals ``[lo0, hi0)`` (and
    ``[lo1, hi1)`` when ``TWO``)."""
    if EVEN_D:
        kmask = key_ok[None, :]
        vmask = key_ok[:, None]
    else:
        kmask = key_ok[None, :] & d_ok[:, None]
        vmask = key_ok[:, None] & d_ok[None, :]
    k = tl.load(K + k_rows[None, :] + offs_d[:, None] * stride_kd, mask=kmask, other=0.0)  # (D, BLOCK_N)
    v = tl.load(V + v_rows[:, None] + offs_d[None, :] * stride_vd, mask=vmask, other=0.0)  # (BLOCK_N, D)
    if IEEE:
        qk = tl.dot(q, k, input_precision="ieee")
    else:
        qk = tl.dot(q, k)
    ok = (pos[None, :] >= lo0[:, None]) & (pos[None, :] < hi0[:, None])
    if TWO:
        ok = ok | ((pos[None, :] >= lo1[:, None]) & (pos[None, :] < hi1[:, None]))
    ok = ok & key_ok[None, :]
    qk = tl.where(ok, qk * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    # a row with no key so far keeps m = -inf and takes 0 as its reference: exp2 gives 0, not NaN
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if IEEE:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def _contiguous_rows(b, hk, pos, stride_b, stride_h, stride_n):
    return b.to(tl.int64) * stride_b + hk * stride_h + pos * stride_n


@triton.jit
def _paged_rows(TABLE, b, hk, pos, key_ok, stride_tb, stride_tp, stride_p, stride_h, stride_n, PAGE: tl.constexpr):
    page = tl.load(TABLE + b * stride_tb + (pos // PAGE) * stride_tp, mask=key_ok, other=0)
    return page.to(tl.int64) * stride_p + hk * stride_h + (pos % PAGE) * stride_n


@triton.jit
def _decode_kernel(
    Q, K, V, O, LSE, LENGTHS, TABLE, PAGE_LIST, COUNTS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_os, stride_od,
    stride_lb, stride_lh, stride_lm, stride_ls,
    stride_tb, stride_tp, stride_pb, stride_ph, stride_pe, stride_cb, stride_ch,
    n_splits, qk_scale,
    N_NEW: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr, WALK: tl.constexpr, RULE: tl.constexpr,
    PARTIAL: tl.constexpr, IEEE: tl.constexpr,
):
    """Program ``(b, hk, split)``. ``K``/``V``: ``(B, Hkv, max_len, D)`` (``PAGE == 0``) or pools
    ``(num_pages, Hkv, PAGE, D)`` read through ``TABLE``; ``O``/``LSE``: the result ``(B, Hq,
    n_new, D)`` / ``(B, Hq, n_new)`` (natural log), or with ``PARTIAL`` the split's ``(B, Hq,
    n_new, S, D)`` normalised output and ``(B, Hq, n_new, S)`` base-2 log-sum-exp."""
    b = tl.program_id(0)
    hk = tl.program_id(1)
    split = tl.program_id(2)
    length = tl.load(LENGTHS + b)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    i = offs_m % N_NEW  # the row's query, of its head hk * GROUP + offs_m // N_NEW
    row_ok = offs_m < GROUP * N_NEW
    h = hk * GROUP + offs_m // N_NEW
    q_ptrs = (Q + b.to(tl.int64) * stride_qb + h[:, None] * stride_qh + i[:, None] * stride_qm
              + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    lo0, hi0, s0, e0 = _slot(RULE, 0, i, row_ok, length)
    lo1, hi1, s1, e1 = _slot(RULE, 1, i, row_ok, length)
    TWO: tl.constexpr = RULE[0] > 1

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    if WALK == 0:  # RANGES: the slots' ranges, sorted and made disjoint, cut in aligned blocks
        swap = s1 < s0
        a_s = tl.where(swap, s1, s0)
        a_e = tl.where(swap, e1, e0)
        b_s = tl.where(swap, s0, s1)
        b_e = tl.where(swap, e0, e1)
        b_s = tl.maximum(b_s, a_e)
        b_e = tl.maximum(b_e, b_s)
        nb_a = tl.where(a_e > a_s, tl.cdiv(a_e, BLOCK_N) - a_s // BLOCK_N, 0)
        nb_b = tl.where(b_e > b_s, tl.cdiv(b_e, BLOCK_N) - b_s // BLOCK_N, 0)
        chunk = tl.cdiv(nb_a + nb_b, n_splits)
        f0 = split * chunk
        f1 = tl.minimum(nb_a + nb_b, f0 + chunk)
        for blk in range(f0, tl.minimum(f1, nb_a)):
            pos = (a_s // BLOCK_N + blk) * BLOCK_N + offs_n
            key_ok = (pos >= a_s) & (pos < a_e)
            if PAGE == 0:
                k_rows = _contiguous_rows(b, hk, pos, stride_kb, stride_kh, stride_kn)
                v_rows = _contiguous_rows(b, hk, pos, stride_vb, stride_vh, stride_vn)
            else:
                k_rows = _paged_rows(TABLE, b, hk, pos, key_ok, stride_tb, stride_tp, stride_kb, stride_kh,
                                     stride_kn, PAGE)
                v_rows = _paged_rows(TABLE, b, hk, pos, key_ok, stride_tb, stride_tp, stride_vb, stride_vh,
                                     stride_vn, PAGE)
            acc, m_i, l_i = _block(acc, m_i, l_i, q, K, V, k_rows, v_rows, key_ok, pos, lo0, hi0, lo1, hi1, offs_d,
                                   d_ok, stride_kd, stride_vd, qk_scale, TWO, EVEN_D, IEEE)
        for blk in range(tl.maximum(f0 - nb_a, 0), f1 - nb_a):
            pos = (b_s // BLOCK_N + blk) * BLOCK_N + offs_n
            key_ok = (pos >= b_s) & (pos < b_e)
            if PAGE == 0:
                k_rows = _contiguous_rows(b, hk, pos, stride_kb, stride_kh, stride_kn)
                v_rows = _contiguous_rows(b, hk, pos, stride_vb, stride_vh, stride_vn)
            else:
                k_rows = _paged_rows(TABLE, b, hk, pos, key_ok, stride_tb, stride_tp, stride_kb, stride_kh,
                                     stride_kn, PAGE)
                v_rows = _paged_rows(TABLE, b, hk, pos, key_ok, stride_tb, stride_tp, stride_vb, stride_vh,
                                     stride_vn, PAGE)
            acc, m_i, l_i = _block(acc, m_i, l_i, q, K, V, k_rows, v_rows, key_ok, pos, lo0, hi0, lo1, hi1, offs_d,
                                   d_ok, stride_kd, stride_vd, qk_scale, TWO, EVEN_D, IEEE)
    else:  # PAGES: the listed pages of (b, hk), as one run of keys cut in blocks
        count = tl.load(COUNTS + b * stride_cb + hk * stride_ch)
        n_keys = count * PAGE
        chunk = tl.cdiv(tl.cdiv(n_keys, BLOCK_N), n_splits)
        f0 = split * chunk
        f1 = tl.minimum(tl.cdiv(n_keys, BLOCK_N), f0 + chunk)
        row = PAGE_LIST + b.to(tl.int64) * stride_pb + hk * stride_ph
        for blk in range(f0, f1):
            f = blk * BLOCK_N + offs_n  # index in the run of listed keys
            listed = f < n_keys
            pos = tl.load(row + (f // PAGE) * stride_pe, mask=listed, other=0) * PAGE + f % PAGE
            key_ok = listed & (pos < length)
            k_rows = _paged_rows(TABLE, b, hk, pos, key_ok, stride_tb, stride_tp, stride_kb, stride_kh, stride_kn,
                                 PAGE)
            v_rows = _paged_rows(TABLE, b, hk, pos, key_ok, stride_tb, stride_tp, stride_vb, stride_vh, stride_vn,
                                 PAGE)
            acc, m_i, l_i = _block(acc, m_i, l_i, q, K, V, k_rows, v_rows, key_ok, pos, lo0, hi0, lo1, hi1, offs_d,
                                   d_ok, stride_kd, stride_vd, qk_scale, TWO, EVEN_D, IEEE)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    o_ptrs = (O + b.to(tl.int64) * stride_ob + h[:, None] * stride_oh + i[:, None] * stride_om + split * stride_os
              + offs_d[None, :] * stride_od)
    l_ptrs = LSE + b.to(tl.int64) * stride_lb + h * stride_lh + i * stride_lm + split * stride_ls
    if PARTIAL:
        tl.store(o_ptrs, out, mask=row_ok[:, None] & d_ok[None, :])
        tl.store(l_ptrs, lse2, mask=row_ok)
    else:
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
        tl.store(l_ptrs, lse2 * 0.6931471805599453, mask=row_ok)


@triton.jit
def _merge_kernel(OP, LSEP, O, LSE, n_splits, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_S: tl.constexpr):
    """One program per (sequence, query head, query): the splits' outputs ``OP`` ``(rows, S, D)``
    weighted by their base-2 log-sum-exp ``LSEP`` ``(rows, S)`` into ``O`` ``(rows, D)`` and the
    natural-log ``LSE`` ``(rows,)`` (all contiguous). A split without keys has ``-inf``."""
    r = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < n_splits
    lse = tl.load(LSEP + r * n_splits + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse - m_ref)
    total = tl.sum(w, 0)
    o = tl.load(OP + (r * n_splits + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                mask=s_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    out = tl.sum(o * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(O + r * HEAD_DIM + offs_d, out.to(O.dtype.element_ty), mask=offs_d < HEAD_DIM)
    lse = (m_ref + tl.math.log2(tl.where(total == 0.0, 1.0, total))) * 0.6931471805599453
    tl.store(LSE + r, tl.where(total == 0.0, float("-inf"), lse))


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << (n - 1).bit_length())


def decode_forward(q: torch.Tensor, cache, rule: tuple[int, ...], scale: float, *, pages=None,
                   splits: int | None = None, config: DecodeConfig = CONFIG) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the decode kernels. ``q`` ``(B, Hq, n_new, D)``, ``cache`` a
    :class:`~.cache.KVCache` or :class:`~.cache.PagedKVCache` (inputs already validated),
    ``rule`` the lowered pattern (:func:`.rule.lower`), ``pages`` a
    :class:`~.quest.PageSelection` (paged caches) or ``None`` (the rule's ranges), ``splits``
    per (sequence, kv head) or ``None`` (:func:`choose_splits`). Returns ``out`` ``(B, Hq,
    n_new, D)`` in ``q.dtype`` and ``lse`` ``(B, Hq, n_new)`` float32 (natural log)."""
    batch, hq, n_new, d = q.shape
    hkv = cache.kv_heads
    group = hq // hkv
    paged = hasattr(cache, "block_table")
    page = cache.page_size if paged else 0
    device = q.device
    if pages is not None:
        tokens = pages.pages.shape[2] * page
    else:
        tokens = walk_tokens(rule, n_new, cache.max_length)
    if splits is None:
        splits = choose_splits(batch, hkv, tokens, device, page_size=page or None, config=config)
    out = torch.empty(batch, hq, n_new, d, dtype=q.dtype, device=device)
    lse = torch.empty(batch, hq, n_new, dtype=torch.float32, device=device)
    if splits > 1:
        o_buf = torch.empty(batch, hq, n_new, splits, d, dtype=torch.float32, device=device)
        l_buf = torch.empty(batch, hq, n_new, splits, dtype=torch.float32, device=device)
        o_strides, l_strides = o_buf.stride(), l_buf.stride()
    else:
        o_buf, l_buf = out, lse
        o_strides = (*out.stride()[:3], 0, out.stride(3))
        l_strides = (*lse.stride(), 0)
    table = cache.block_table if paged else cache.lengths  # (a placeholder the kernel does not read)
    t_strides = table.stride() if paged else (0, 0)
    if pages is not None:
        page_list, counts = pages.pages, pages.counts
        p_strides, c_strides = page_list.stride(), counts.stride()
    else:
        page_list = counts = cache.lengths
        p_strides, c_strides = (0, 0, 0), (0, 0)
    launch(_decode_kernel, (batch, hkv, splits),
           (q, cache.k, cache.v, o_buf, l_buf, cache.lengths, table, page_list, counts,
            *q.stride(), *cache.k.stride(), *cache.v.stride(), *o_strides, *l_strides, *t_strides, *p_strides,
            *c_strides, splits, scale * LOG2E),
           dict(N_NEW=n_new, GROUP=group, HEAD_DIM=d, BLOCK_D=_pow2(d), BLOCK_M=_pow2(group * n_new),
                BLOCK_N=config.block_n, PAGE=page, WALK=PAGES if pages is not None else RANGES, RULE=rule,
                PARTIAL=splits > 1, IEEE=q.dtype == torch.float32),
           num_warps=config.num_warps, num_stages=config.num_stages)
    if splits > 1:
        launch(_merge_kernel, (batch * hq * n_new,), (o_buf, l_buf, out, lse, splits),
               dict(HEAD_DIM=d, BLOCK_D=_pow2(d), BLOCK_S=_pow2(splits, 1)), num_warps=4, num_stages=1)
    return out, lse


__all__ = ["CONFIG", "DecodeConfig", "choose_splits", "decode_forward"]
