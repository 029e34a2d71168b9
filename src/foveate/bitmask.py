"""Packed bitmasks of a layout's partial blocks: the kernels' mask for any ``mask_mod``.

A pattern without a kernel mask description (:meth:`Pattern.kernel_mask
<foveate.patterns.Pattern.kernel_mask>` is ``None``: a user's ``mask_mod``, a composition
with such a part) still runs on the fused kernels: full blocks need no mask at all, and each
partial block gets its mask as bits, ``block_q`` rows of ``ceil(block_kv / 32)`` int32 words
(bit ``c % 32`` of word ``c // 32`` of row ``r``: query ``r`` and key ``c`` of the block, from
its first position). The bits are evaluated from ``mask_mod`` on the device, over the partial
blocks only (never an ``Nq x Nkv`` tensor), so memory is proportional to the partial blocks:
``block_q * block_kv / 8`` bytes each (2 KiB at 128 x 128), plus one int32 per query block
and per transposed list entry to find them.

Blocks are numbered in the order of the layout's partial lists (row by row, each row's blocks
ascending): a forward or dq program finds its ``j``-th partial block at ``row_start[b, h, qb]
+ j``; a dk/dv program, walking the transposed lists, at ``col_slot[b, h, kb, i]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

#: Elements of the boolean scratch evaluated at once (as the layout builders do).
_EVAL_ELEMS = 1 << 23


@dataclass(frozen=True)
class PartialBitmask:
    """The bits of a layout's partial blocks.

    ``words``: int32 ``(n_partial, block_q, ceil(block_kv / 32))``; ``row_start``: int32, the
    shape of ``kv_num_blocks`` ``(B|1, H|1, nq)``, the number of the first partial block of each
    row; ``col_slot``: int32, the shape of ``q_indices`` ``(B|1, H|1, nkv, width)``, the number
    of each listed block of the transposed partial lists (0 past a list's count)."""

    words: torch.Tensor
    row_start: torch.Tensor
    col_slot: torch.Tensor

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(words, row_start, col_slot)``, as the custom operators take them."""
        return self.words, self.row_start, self.col_slot

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)


def words_per_row(block_kv: int) -> int:
    """int32 words of one query row of a block."""
    return -(-block_kv // 32)


def bitmask_bytes(layout) -> int:
    """The memory :func:`build_bitmask` takes for ``layout``, without building it (one host
    sync, remembered on the layout)."""
    n_partial = layout.__dict__.get("_n_partial")
    if n_partial is None:
        n_partial = layout.__dict__["_n_partial"] = int(layout.kv_num_blocks.sum())
    words = n_partial * layout.block_q * words_per_row(layout.block_kv) * 4
    return words + layout.kv_num_blocks.numel() * 4 + layout.q_indices.numel() * 4


def build_bitmask(layout, mask_mod=None, *, compiled: bool = False) -> PartialBitmask:
    """The bits of ``layout``'s partial blocks, evaluated from ``mask_mod`` (default: the
    layout's own) on the layout's device, in chunks of bounded memory. ``compiled``: each
    chunk's evaluation and packing fused by ``torch.compile`` into one kernel (compiled once
    per ``mask_mod`` and block shape; falls back to eager evaluation if it cannot compile)."""
    mask_mod = layout.mask_mod if mask_mod is None else mask_mod
    if mask_mod is None:
        raise ValueError("build_bitmask needs a mask_mod: the layout has none")
    device = layout.device
    bq, bkv, q_len, kv_len = layout.block_q, layout.block_kv, layout.q_len, layout.kv_len
    nq, nkv = layout.num_q_blocks, layout.num_kv_blocks
    heads = layout.batch_heads[1]
    width = words_per_row(bkv)

    counts = layout.kv_num_blocks.reshape(-1).long()
    idx = layout.kv_indices.reshape(counts.numel(), -1).long()
    listed = torch.arange(idx.shape[1], device=device)[None, :] < counts[:, None]
    row, j = listed.nonzero(as_tuple=True)  # slot order: row by row, each row's list in order
    kb = idx[row, j]
    row_start = (torch.cumsum(counts, 0) - counts).to(torch.int32).view(layout.kv_num_blocks.shape)

    n = row.numel()
    words = torch.empty(n, bq, width, dtype=torch.int32, device=device)
    step = max(1, min(n, _EVAL_ELEMS // (bq * width * 32)))
    dims = (bq, bkv, width, q_len, kv_len, nq, heads)
    evaluate = _compiled_chunk if compiled else _chunk_words
    rows32, kb32 = row.to(torch.int32), kb.to(torch.int32)
    for lo in range(0, n, step):
        r, k = rows32[lo:lo + step], kb32[lo:lo + step]
        if r.numel() < step:  # the last chunk padded to the others' size (one compiled shape)
            r, k = (torch.nn.functional.pad(t, (0, step - t.numel())) for t in (r, k))
        words[lo:lo + step] = evaluate(mask_mod, r, k, dims)[:min(step, n - lo)]

    # Transposed lists: the number of each (q block, kv block) pair, found among the forward's
    # pairs (which are in ascending (row, kv block) order, the order of the slots).
    fwd_keys = row * nkv + kb
    t_counts = layout.q_num_blocks.reshape(-1).long()
    t_idx = layout.q_indices.reshape(t_counts.numel(), -1).long()
    t_listed = torch.arange(t_idx.shape[1], device=device)[None, :] < t_counts[:, None]
    t_row = torch.arange(t_counts.numel(), device=device)[:, None]  # (b * H + h) * nkv + kv block
    t_keys = ((t_row // nkv) * nq + t_idx) * nkv + t_row % nkv
    found = torch.searchsorted(fwd_keys, t_keys.clamp(max=fwd_keys[-1] if fwd_keys.numel() else 0))
    col_slot = torch.where(t_listed, found, 0).to(torch.int32).view(layout.q_indices.shape)
    return PartialBitmask(words.contiguous(), row_start.contiguous(), col_slot.contiguous())


def _chunk_words(mask_mod, rows: torch.Tensor, kv_blocks: torch.Tensor, dims) -> torch.Tensor:
    """int32 ``(S, block_q, width)``: the packed bits of the block pairs ``rows`` (``(b * H + h)
    * nq + q block``) x ``kv_blocks`` (int32 ``(S,)`` each)."""
    bq, bkv, width, q_len, kv_len, nq, heads = dims
    q_off = torch.arange(bq, device=rows.device, dtype=torch.int32)[None, :, None]
    k_off = torch.arange(width * 32, device=rows.device, dtype=torch.int32)[None, None, :]
    r = rows[:, None, None]
    qi = (r % nq) * bq + q_off
    ki = kv_blocks[:, None, None] * bkv + k_off
    bh = r // nq
    inside = (qi < q_len) & (ki < kv_len) & (k_off < bkv)
    allowed = mask_mod(bh // heads, bh % heads, qi.clamp(max=q_len - 1), ki.clamp(max=kv_len - 1))
    bits = (allowed & inside).to(torch.int64).reshape(-1, bq, width, 32)
    # bit b of word w holds key 32 w + b; the int64 sum fits 32 bits, moved into int32's range
    packed = (bits << torch.arange(32, device=rows.device, dtype=torch.int64)).sum(-1)
    return (packed - ((packed >> 31) << 32)).to(torch.int32)


_compiled_chunk_words = None  # torch.compile(_chunk_words), made on first use
_EAGER_ONLY: set = set()  # the mask_mods that did not compile (ids)


def _compiled_chunk(mask_mod, rows, kv_blocks, dims):
    """:func:`_chunk_words` through ``torch.compile`` (one fused kernel per chunk), or eagerly
    when this ``mask_mod`` does not compile."""
    global _compiled_chunk_words
    if _compiled_chunk_words is None:
        _compiled_chunk_words = torch.compile(_chunk_words, dynamic=False)
    if id(mask_mod) not in _EAGER_ONLY:
        try:
            return _compiled_chunk_words(mask_mod, rows, kv_blocks, dims)
        except Exception as error:  # noqa: BLE001 - any mask_mod inductor cannot take runs eagerly
            logging.getLogger("foveate").debug("bitmask build of %r runs eagerly: %s", mask_mod, error)
            _EAGER_ONLY.add(id(mask_mod))
    return _chunk_words(mask_mod, rows, kv_blocks, dims)


__all__ = ["PartialBitmask", "bitmask_bytes", "build_bitmask", "words_per_row"]
