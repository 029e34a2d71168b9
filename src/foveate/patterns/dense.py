"""``Dense``: every query sees every key."""

from __future__ import annotations

from dataclasses import dataclass

from .band import band_mask_mod, build_band_layout
from .base import Pattern
from .kernel_mask import Band


@dataclass(frozen=True)
class Dense(Pattern):
    """All pairs allowed; the same as ``pattern=None``."""

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        return band_mask_mod(q_len, kv_len, None, None)

    def kernel_mask(self, q_len: int, kv_len: int) -> Band:
        self.check_lengths(q_len, kv_len)
        return Band(kv_len - q_len, None, None)

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        return build_band_layout(
            q_len, kv_len, None, None, block_q=block_q, block_kv=block_kv, device=device,
            mask_mod=self.mask_mod(q_len, kv_len),
        )
