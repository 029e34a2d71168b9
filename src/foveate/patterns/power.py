"""``PowerAttention``: sinks, a local window and power-of-two distances, in blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import BlockLayout
from .base import Pattern, set_ints
from .block_rule import candidates_from_ranges, classify, row_positions
from .kernel_mask import AllOf, Band, PowerBlocks


def _power_of_two(d):
    return (d > 0) & ((d & (d - 1)) == 0)


@dataclass(frozen=True)
class PowerAttention(Pattern):
    """PowerAttention (Chen et al., 2025, "PowerAttention: Exponentially Scaling of Receptive
    Fields for Effective Sparse Attention", Algorithm 1): causal attention over blocks of
    ``block`` positions, where a query block sees the ``sink`` first key blocks, the ``window``
    nearest key blocks (its own included) and the key blocks at distances that are powers of
    two; the receptive field grows exponentially with depth at ``O(log N)`` blocks per query.

    With ``d = p // block - j // block`` (``p = i + (kv_len - q_len)``, bottom-right alignment),
    key ``j`` is allowed for query ``i`` when ``j <= p`` and (``j // block < sink``, or ``d <
    window``, or ``d`` is a power of two: 1, 2, 4, ...). Blocks are counted from the first key.
    Inside the diagonal block the mask is causal.

    Args:
        block: the pattern's block size in positions, ``>= 1`` (any size: the kernels' blocks
            need not match it).
        window: local key blocks per query block, its own included, ``>= 0`` (0: the own block
            only when it is a sink; distances 1, 2, 4, ... still count).
        sink: the first key blocks, seen by every query (causally), ``>= 0``.
    """

    block: int = 256
    window: int = 5
    sink: int = 1

    def __post_init__(self):
        set_ints(self, block=1, window=0, sink=0)

    def _selected(self, pr, pc):
        d = pr - pc
        return (pc < self.sink) | (d < self.window) | _power_of_two(d)

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        offset, block, window, sink = kv_len - q_len, self.block, self.window, self.sink

        def mask_mod(b, h, q_idx, kv_idx):
            p = q_idx + offset
            kb = torch.div(kv_idx, block, rounding_mode="floor")
            d = torch.div(p, block, rounding_mode="floor") - kb
            return (kv_idx <= p) & ((kb < sink) | (d < window) | _power_of_two(d))

        return mask_mod

    def kernel_mask(self, q_len: int, kv_len: int) -> AllOf:
        self.check_lengths(q_len, kv_len)
        offset = kv_len - q_len
        return AllOf((PowerBlocks(offset, self.block, self.window, self.sink), Band(offset, None, 0)))

    def candidates(self, q_len: int, kv_len: int, block_q: int, block_kv: int, device) -> tuple:
        """``(query blocks, kv blocks)``: a superset of the visited block pairs, per query
        block the keys of its sink blocks, its window and each power-of-two distance (``2 +
        log2(kv_len / block)`` ranges)."""
        qb, first, last = row_positions(q_len, kv_len, block_q, device)
        B = self.block
        lo, hi = first.div(B, rounding_mode="floor"), last.div(B, rounding_mode="floor")  # pattern rows
        starts, ends = [], []

        def cols(c_lo, c_hi):  # pattern columns c_lo .. c_hi (causal: up to `last`)
            starts.append(torch.clamp(c_lo, min=0) * B)
            ends.append(torch.minimum((c_hi + 1) * B - 1, last))

        if self.sink:
            cols(torch.zeros_like(lo), torch.full_like(hi, self.sink - 1))
        if self.window:
            cols(lo - self.window + 1, hi)
        top = int(hi.max()) if hi.numel() else 0
        d = 1
        while d <= top:
            cols(lo - d, hi - d)
            d *= 2
        if not starts:
            return qb[:0], qb[:0]
        nkv = -(-kv_len // block_kv)
        return candidates_from_ranges(qb, torch.stack(starts, 1), torch.stack(ends, 1), block_kv, nkv)

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {self!r} has no canvas to tile")
        qb, kb = self.candidates(q_len, kv_len, block_q, block_kv, device)
        qb, kb, full, allowed = classify(self._selected, qb, kb, q_len=q_len, kv_len=kv_len, block_q=block_q,
                                         block_kv=block_kv, block=self.block)
        return BlockLayout.from_pairs(qb, kb, full, block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
                                      mask_mod=self.mask_mod(q_len, kv_len), allowed_pairs=int(allowed.sum()))
