"""``StridedHeads``: S2-Attention's heterogeneous context sharding, a different strided shard
of key blocks per kv head beside a shared local window."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..layout import BlockLayout
from .base import Pattern, set_ints
from .block_rule import candidates_from_ranges, classify, row_positions


@dataclass(frozen=True)
class StridedHeads(Pattern):
    """S2-Attention (Lin et al., 2024, "S2-Attention: Hardware-Aware Context Sharding Among
    Attention Heads"): causal attention over blocks of ``block`` positions where every kv head
    sees the ``local`` nearest key blocks (its own included) and, beyond them, one shard of the
    key blocks: every ``vertical``-th block, at an offset that differs per head, so that the
    heads together cover the whole context.

    For kv head ``h`` (``0 <= h < kv_heads``), with ``p = i + (kv_len - q_len)`` (bottom-right
    alignment) and ``step = max(1, vertical // kv_heads)``, key ``j`` is allowed for query ``i``
    when ``j <= p`` and (``p // block - j // block < local`` or ``(j // block + h * step +
    offset) % vertical == 0``). Blocks are counted from the first key.

    Heads: the pattern differs per head. ``mask_mod(b, h, ...)`` and the layout's head axis
    index the *query* heads, ``kv_heads * group`` of them; query head ``h`` belongs to kv head
    ``h // group`` (as in GQA, where query heads ``g * group .. (g + 1) * group - 1`` share kv
    head ``g``) and shares its pattern. Inputs must have ``kv_heads * group`` query heads
    (``check_batch_heads``); for the kv heads to be the inputs' kv heads, give ``group = Hq //
    Hkv`` (the pattern cannot see ``k``'s head count).

    Args:
        block: the pattern's block size in positions, ``>= 1``.
        local: local key blocks per query block, its own included, ``>= 0``.
        vertical: the stride of each head's shard, in blocks, ``>= 1``.
        kv_heads: (keyword) the number of kv heads, ``>= 1``: it sets ``step``.
        group: (keyword) query heads per kv head, ``>= 1`` (1: no GQA).
        offset: (keyword) shifts every head's shard, ``>= 0``.

    The Triton kernels mask its partial blocks with a per-head bitmask (no kernel mask
    description).
    """

    block: int = 64
    local: int = 16
    vertical: int = 8
    kv_heads: int = field(kw_only=True)
    group: int = field(default=1, kw_only=True)
    offset: int = field(default=0, kw_only=True)

    def __post_init__(self):
        set_ints(self, block=1, local=0, vertical=1, kv_heads=1, group=1, offset=0)

    @property
    def heads(self) -> int:
        """The number of query heads, ``kv_heads * group``."""
        return self.kv_heads * self.group

    @property
    def step(self) -> int:
        return max(1, self.vertical // self.kv_heads)

    def check_batch_heads(self, batch: int, heads: int) -> None:
        if heads != self.heads:
            raise ValueError(f"{self!r} is made for {self.heads} query heads (kv_heads={self.kv_heads} x "
                             f"group={self.group}), the inputs have {heads}")

    def _shard(self, kv_head: int) -> int:
        """The residue of the blocks in the shard of ``kv_head``: ``j // block`` with
        ``(j // block + kv_head * step + offset) % vertical == 0``."""
        return -(kv_head * self.step + self.offset) % self.vertical

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        offset, block, local, vertical = kv_len - q_len, self.block, self.local, self.vertical
        group, step, shift = self.group, self.step, self.offset

        def mask_mod(b, h, q_idx, kv_idx):
            p = q_idx + offset
            kb = torch.div(kv_idx, block, rounding_mode="floor")
            near = torch.div(p, block, rounding_mode="floor") - kb < local
            kv_head = torch.div(h, group, rounding_mode="floor")
            return (kv_idx <= p) & (near | ((kb + kv_head * step + shift) % vertical == 0))

        return mask_mod

    def _selected(self, shard: int):
        local, vertical = self.local, self.vertical
        return lambda pr, pc: (pr - pc < local) | (pc % vertical == shard)

    def candidates(self, q_len: int, kv_len: int, block_q: int, block_kv: int, device, kv_head: int) -> tuple:
        """``(query blocks, kv blocks)`` of kv head ``kv_head``: a superset of its visited
        block pairs, per query block the keys of its local window and of each block of its
        shard up to the block's last position."""
        qb, first, last = row_positions(q_len, kv_len, block_q, device)
        B, shard = self.block, self._shard(kv_head)
        lo, hi = first.div(B, rounding_mode="floor"), last.div(B, rounding_mode="floor")
        starts, ends = [], []
        if self.local:
            starts.append(torch.clamp(lo - self.local + 1, min=0)[:, None] * B)
            ends.append(last[:, None])
        top = int(hi.max()) if hi.numel() else -1
        c = torch.arange(shard, max(shard, top + 1), self.vertical, device=last.device)[None, :]  # the shard's blocks
        starts.append((c * B).expand(last.numel(), -1))
        ends.append(torch.minimum((c + 1) * B - 1, last[:, None]))
        return candidates_from_ranges(qb, torch.cat(starts, 1), torch.cat(ends, 1), block_kv, -(-kv_len // block_kv))

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {self!r} has no canvas to tile")
        nq = -(-q_len // block_q)
        per_shard: dict[int, tuple] = {}  # kv heads of one shard have one layout
        rows, cols, fulls, allowed = [], [], [], 0
        for kv_head in range(self.kv_heads):
            shard = self._shard(kv_head)
            if shard not in per_shard:
                qb, kb = self.candidates(q_len, kv_len, block_q, block_kv, device, kv_head)
                qb, kb, full, counts = classify(self._selected(shard), qb, kb, q_len=q_len, kv_len=kv_len,
                                                block_q=block_q, block_kv=block_kv, block=self.block)
                per_shard[shard] = qb, kb, full, int(counts.sum())
            qb, kb, full, count = per_shard[shard]
            for h in range(kv_head * self.group, (kv_head + 1) * self.group):  # its query heads
                rows.append(h * nq + qb)
                cols.append(kb)
                fulls.append(full)
                allowed += count
        return BlockLayout.from_pairs(
            torch.cat(rows), torch.cat(cols), torch.cat(fulls), batch_heads=(1, self.heads), block_q=block_q,
            block_kv=block_kv, q_len=q_len, kv_len=kv_len, mask_mod=self.mask_mod(q_len, kv_len),
            allowed_pairs=allowed,
        )
