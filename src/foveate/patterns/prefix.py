"""``PrefixLM`` (a bidirectional prefix, causal after it) and ``Global`` (global tokens that see
and are seen by every token)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import BlockLayout
from .base import Pattern, set_ints
from .interval_layout import build_interval_layout
from .kernel_mask import AnyOf, Band, Rect


@dataclass(frozen=True)
class PrefixLM(Pattern):
    """Prefix language model (the prefix LM of T5 / UniLM): the first ``prefix`` positions
    attend to each other bidirectionally, every later position causally.

    Key ``j`` allowed for query ``i`` when ``j <= p`` or (``p < prefix`` and ``j < prefix``),
    ``p = i + (kv_len - q_len)`` (bottom-right alignment). Equivalently, query ``i`` sees the
    keys ``0 .. max(p, prefix - 1)``: queries inside the prefix see the whole prefix (and only
    it), the others are causal. With ``q_len > kv_len`` the queries at ``p < 0`` see the prefix.
    A ``prefix`` longer than the keys makes every pair allowed.

    Args:
        prefix: the length of the bidirectional prefix, ``>= 1`` (``PrefixLM(1)`` is causal).
    """

    prefix: int

    def __post_init__(self):
        set_ints(self, prefix=1)

    def _last_key(self, q_len: int, kv_len: int, device) -> torch.Tensor:
        p = torch.arange(q_len, device=device, dtype=torch.int64) + (kv_len - q_len)
        return torch.clamp(p, min=self.prefix - 1)

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        offset, prefix = kv_len - q_len, self.prefix

        def mask_mod(b, h, q_idx, kv_idx):
            p = q_idx + offset
            return (kv_idx <= p) | ((p < prefix) & (kv_idx < prefix))

        return mask_mod

    def kernel_mask(self, q_len: int, kv_len: int) -> AnyOf:
        self.check_lengths(q_len, kv_len)
        offset = kv_len - q_len
        in_prefix = max(0, min(self.prefix - offset, q_len))  # queries i with p < prefix
        return AnyOf((Band(offset, None, 0), Rect(0, in_prefix, 0, min(self.prefix, kv_len))))

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {self!r} has no canvas to tile")
        hi = self._last_key(q_len, kv_len, device)
        return build_interval_layout(q_len, kv_len, torch.zeros_like(hi), hi, block_q=block_q, block_kv=block_kv,
                                     device=device, mask_mod=self.mask_mod(q_len, kv_len))


@dataclass(frozen=True)
class Global(Pattern):
    """Global tokens (Longformer's global attention, BigBird's ITC global tokens): the first
    ``n`` positions see every key and are seen by every query.

    Key ``j`` allowed for query ``i`` when ``p < n`` or ``j < n``, ``p = i + (kv_len - q_len)``
    (bottom-right alignment: a query is global when its position is). Not causal by itself;
    Longformer's pattern is ``P.SlidingWindow(w, w) | P.Global(n)``, a causal variant ``(...) &
    P.Causal()``.

    Args:
        n: the number of global tokens, ``>= 1``.
    """

    n: int

    def __post_init__(self):
        set_ints(self, n=1)

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        offset, n = kv_len - q_len, self.n

        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx + offset < n) | (kv_idx < n)

        return mask_mod

    def _ranges(self, q_len: int, kv_len: int) -> tuple[int, int]:
        """``(global queries, global keys)``: queries ``i < the first`` see every key, keys ``j
        < the second`` are seen by every query."""
        return max(0, min(self.n - (kv_len - q_len), q_len)), min(self.n, kv_len)

    def kernel_mask(self, q_len: int, kv_len: int) -> AnyOf:
        self.check_lengths(q_len, kv_len)
        rows, cols = self._ranges(q_len, kv_len)
        return AnyOf((Rect(0, rows, 0, kv_len), Rect(0, q_len, 0, cols)))

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {self!r} has no canvas to tile")
        # A union of two rectangles, each block's state in closed form: a block is visited when
        # its first query is global or its first key is, full when all its queries are global
        # or all its keys are. Time proportional to the visited blocks.
        rows, cols = self._ranges(q_len, kv_len)
        nq, nkv = -(-q_len // block_q), -(-kv_len // block_kv)
        qb = torch.arange(nq, device=device)
        kb = torch.arange(nkv, device=device)
        q_last = torch.clamp((qb + 1) * block_q, max=q_len) - 1
        kv_last = torch.clamp((kb + 1) * block_kv, max=kv_len) - 1
        global_rows = qb * block_q < rows  # query blocks holding a global query: every kv block
        n_cols = -(-cols // block_kv)  # kv blocks holding a global key: every query block
        row_a = qb[global_rows].repeat_interleave(nkv)
        col_a = kb.repeat(int(global_rows.sum()))
        full_a = (q_last[row_a] < rows) | (kv_last[col_a] < cols)
        others = qb[~global_rows]
        row_b = others.repeat_interleave(n_cols)
        col_b = kb[:n_cols].repeat(others.numel())
        full_b = kv_last[col_b] < cols
        return BlockLayout.from_pairs(
            torch.cat([row_a, row_b]), torch.cat([col_a, col_b]), torch.cat([full_a, full_b]), block_q=block_q,
            block_kv=block_kv, q_len=q_len, kv_len=kv_len, mask_mod=self.mask_mod(q_len, kv_len),
            allowed_pairs=rows * kv_len + (q_len - rows) * cols,
        )
