"""``Causal``: each query sees the keys up to its own position (bottom-right aligned)."""

from __future__ import annotations

from dataclasses import dataclass

from .band import band_mask_mod, build_band_layout
from .base import Pattern
from .kernel_mask import Band


@dataclass(frozen=True)
class Causal(Pattern):
    """Key ``j`` allowed for query ``i`` when ``j <= i + (kv_len - q_len)``.

    With ``kv_len > q_len`` (decoding, chunked prefill) the queries are the last ``q_len``
    positions of the key sequence; with ``q_len > kv_len`` the first queries see no key.
    """

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        return band_mask_mod(q_len, kv_len, None, 0)

    def kernel_mask(self, q_len: int, kv_len: int) -> Band:
        self.check_lengths(q_len, kv_len)
        return Band(kv_len - q_len, None, 0)

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        return build_band_layout(
            q_len, kv_len, None, 0, block_q=block_q, block_kv=block_kv, device=device,
            mask_mod=self.mask_mod(q_len, kv_len),
        )
