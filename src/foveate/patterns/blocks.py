"""``Blocks``: static block-sparse attention from a boolean block matrix."""

from __future__ import annotations

import hashlib

import torch

from ..graph_constants import register_blocks
from ..layout import BlockLayout, block_areas
from .base import Pattern, as_int


class Blocks(Pattern):
    """Whole ``block_q x block_kv`` blocks selected by a boolean matrix.

    Args:
        mask: bool tensor ``(nq, nkv)`` or ``(B|1, H|1, nq, nkv)``: ``mask[b, h, i, j]`` selects
            the pairs of query block ``i`` and key block ``j`` for batch ``b`` and query head
            ``h`` (1 = the same for every batch / head). Every selected block is full.
        block_q: query block size; a layout backend must run blocks of exactly this size.
        block_kv: key block size, likewise.

    Lengths: ``ceil(q_len / block_q) == nq`` and ``ceil(kv_len / block_kv) == nkv``. The mask
    is copied: changing the caller's tensor later does not change the pattern. Two patterns
    are equal when their masks and block sizes are.
    """

    def __init__(self, mask: torch.Tensor, block_q: int = 128, block_kv: int = 128):
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a bool torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must have dtype torch.bool, got {mask.dtype}")
        if mask.dim() == 2:
            mask = mask[None, None]
        if mask.dim() != 4 or 0 in mask.shape:
            raise ValueError(
                f"mask must have shape (nq, nkv) or (B|1, H|1, nq, nkv), got {tuple(mask.shape)}"
            )
        self.mask = mask.detach().to("cpu", copy=True).contiguous()
        self.block_q = as_int("block_q", block_q, minimum=1)
        self.block_kv = as_int("block_kv", block_kv, minimum=1)
        digest = hashlib.sha1(self.mask.numpy().tobytes()).hexdigest()
        self._key = (tuple(self.mask.shape), self.block_q, self.block_kv, digest)
        register_blocks(self)  # findable by its key when a torch.compile graph is traced

    def __eq__(self, other) -> bool:
        return isinstance(other, Blocks) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        density = self.mask.float().mean().item()
        return (f"Blocks(shape={tuple(self.mask.shape)}, block=({self.block_q}, {self.block_kv}), "
                f"density={density:.3g})")

    @property
    def fixed_blocks(self) -> tuple[int, int]:  # type: ignore[override]
        return self.block_q, self.block_kv

    def check_lengths(self, q_len: int, kv_len: int) -> None:
        super().check_lengths(q_len, kv_len)
        nq, nkv = self.mask.shape[-2:]
        if (-(-q_len // self.block_q), -(-kv_len // self.block_kv)) != (nq, nkv):
            raise ValueError(
                f"q_len={q_len}, kv_len={kv_len} do not fit {self!r}: need ceil(q_len / {self.block_q}) "
                f"== {nq} and ceil(kv_len / {self.block_kv}) == {nkv}"
            )

    def check_batch_heads(self, batch: int, heads: int) -> None:
        b, h = self.mask.shape[:2]
        if b not in (1, batch) or h not in (1, heads):
            raise ValueError(
                f"{self!r}: its mask's leading axes {(b, h)} must be 1 or the batch size and query "
                f"heads {(batch, heads)}"
            )

    def _mask_mod_on(self, grid: torch.Tensor):
        per_batch, per_head = grid.shape[0] > 1, grid.shape[1] > 1
        bq, bkv = self.block_q, self.block_kv

        def mask_mod(b, h, q_idx, kv_idx):
            g = grid.to(q_idx.device)
            return g[b if per_batch else 0, h if per_head else 0, q_idx // bq, kv_idx // bkv]

        return mask_mod

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        return self._mask_mod_on(self.mask)

    def kernel_mask(self, q_len: int, kv_len: int) -> None:
        # Its own layout has no partial block (nothing to mask), but a description must allow
        # exactly what mask_mod allows, also inside a composition's partial blocks (``Blocks |
        # Causal``): no leaf kind holds a block grid, so the kernels take the composition's
        # bitmask.
        return None

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {self!r} has no canvas to tile")
        if (block_q, block_kv) != self.fixed_blocks:
            raise ValueError(
                f"{self!r} selects {self.block_q}x{self.block_kv} blocks; it cannot be built with "
                f"blocks ({block_q}, {block_kv})"
            )
        grid = self.mask.to(device)
        _, _, qb, kb = torch.nonzero(grid, as_tuple=True)
        dims = (block_q, block_kv, q_len, kv_len)
        return BlockLayout.from_block_grid(
            grid.to(torch.int8) * 2, block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
            mask_mod=self._mask_mod_on(grid), allowed_pairs=int(block_areas(qb, kb, dims).sum()),
        )
