"""``Sinks``: every query sees the first ``n`` keys (attention sinks, StreamingLLM)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Pattern, set_ints
from .kernel_mask import Rect
from .rect import build_rect_layout, rect_mask_mod


@dataclass(frozen=True)
class Sinks(Pattern):
    """Key ``j`` allowed for every query when ``j < n`` (the first ``n`` keys).

    Not causal by itself; StreamingLLM's streaming attention (sinks beside a causal window) is
    ``(P.SlidingWindow(w - 1) | P.Sinks(4)) & P.Causal()``.
    """

    n: int

    def __post_init__(self):
        set_ints(self, n=1)

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        return rect_mask_mod(0, q_len, 0, self.n)

    def kernel_mask(self, q_len: int, kv_len: int) -> Rect:
        self.check_lengths(q_len, kv_len)
        return Rect(0, q_len, 0, min(self.n, kv_len))

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        return build_rect_layout(q_len, kv_len, 0, q_len, 0, self.n, block_q=block_q, block_kv=block_kv,
                                 device=device, mask_mod=self.mask_mod(q_len, kv_len))
