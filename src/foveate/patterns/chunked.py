"""``ChunkCausal``: causal between chunks of tokens, bidirectional inside a chunk
(block-causal attention)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Pattern, set_ints
from .interval_layout import build_interval_layout
from .kernel_mask import Chunks


@dataclass(frozen=True)
class ChunkCausal(Pattern):
    """Chunk-causal (block-causal) attention: the sequence is cut into chunks of ``chunk``
    positions; a query sees every key of its own chunk and of the chunks before it, none
    after (autoregressive video models that generate a frame or a group of frames at a time:
    Light Forcing, CausVid; the "block causal" mask of chunked generation).

    Key ``j`` allowed for query ``i`` when ``p >= 0`` and ``j // chunk <= p // chunk``, ``p = i +
    (kv_len - q_len)`` (bottom-right alignment: chunks are counted from the first key, so with
    ``kv_len != q_len`` a query's chunk is that of its position among the keys; queries at ``p <
    0`` see nothing). Query ``i`` sees the keys ``0 .. (p // chunk + 1) * chunk - 1``.

    Args:
        chunk: the chunk length, ``>= 1`` (``ChunkCausal(1)`` is causal).
    """

    chunk: int

    def __post_init__(self):
        set_ints(self, chunk=1)

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        offset, chunk = kv_len - q_len, self.chunk

        def mask_mod(b, h, q_idx, kv_idx):
            p = q_idx + offset
            return (p >= 0) & (torch.div(kv_idx, chunk, rounding_mode="floor")
                               <= torch.div(p, chunk, rounding_mode="floor"))

        return mask_mod

    def kernel_mask(self, q_len: int, kv_len: int) -> Chunks:
        self.check_lengths(q_len, kv_len)
        return Chunks(offset=kv_len - q_len, size=self.chunk)

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {self!r} has no canvas to tile")
        p = torch.arange(q_len, device=device, dtype=torch.int64) + (kv_len - q_len)
        chunk = self.chunk
        hi = torch.where(p >= 0, (torch.div(p, chunk, rounding_mode="floor") + 1) * chunk - 1, -1)
        return build_interval_layout(q_len, kv_len, torch.zeros_like(hi), hi, block_q=block_q, block_kv=block_kv,
                                     device=device, mask_mod=self.mask_mod(q_len, kv_len))
