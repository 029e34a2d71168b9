"""``SlidingWindow``: a band of keys around each query's position (bottom-right aligned)."""

from __future__ import annotations

from dataclasses import dataclass

from .band import band_mask_mod, build_band_layout
from .base import Pattern, set_ints
from .kernel_mask import Band


@dataclass(frozen=True)
class SlidingWindow(Pattern):
    """Key ``j`` allowed for query ``i`` when ``p - left <= j <= p + right``,
    ``p = i + (kv_len - q_len)``.

    ``right=0`` is the causal window of Mistral-style models (``left + 1`` keys per query);
    ``SlidingWindow(1024, 1024)`` is a centred window of 2049 keys. Queries near the borders
    see fewer keys (unlike :class:`Neighborhood`, whose windows are clamped).
    """

    left: int
    right: int = 0

    def __post_init__(self):
        set_ints(self, left=0, right=0)

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        return band_mask_mod(q_len, kv_len, self.left, self.right)

    def kernel_mask(self, q_len: int, kv_len: int) -> Band:
        self.check_lengths(q_len, kv_len)
        return Band(kv_len - q_len, self.left, self.right)

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        return build_band_layout(
            q_len, kv_len, self.left, self.right, block_q=block_q, block_kv=block_kv,
            device=device, mask_mod=self.mask_mod(q_len, kv_len),
        )
