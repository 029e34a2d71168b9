"""Composition of patterns: ``a | b`` (union) and ``a & b`` (intersection).

The layout of a composition comes from its parts' layouts: a block pair's state is known
from the parts' states except where it is not (two partial blocks), and only those pairs
are evaluated with the combined ``mask_mod``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import BlockLayout, block_areas, count_allowed
from .base import Pattern


@dataclass(frozen=True, repr=False)
class _Composite(Pattern):
    parts: tuple[Pattern, ...]

    _symbol = "?"

    @classmethod
    def of(cls, *patterns: Pattern) -> "_Composite":
        parts: list[Pattern] = []
        for p in patterns:
            if not isinstance(p, Pattern):
                raise TypeError(f"cannot compose {type(p).__name__} {p!r} with a pattern")
            if p.content_dependent or not p.cacheable:
                raise ValueError(f"cannot compose {p!r}: its blocks are selected from the inputs")
            if p.fixed_blocks is not None:
                raise ValueError(f"cannot compose {p!r}: combine block masks before making the pattern")
            parts.extend(p.parts if type(p) is cls else (p,))
        canvases = {p.canvas for p in parts if p.canvas is not None}
        extras = {p.extra_kv for p in parts if p.canvas is not None}
        if len(canvases) > 1 or len(extras) > 1:
            raise ValueError(f"cannot compose patterns on different canvases: {patterns!r}")
        return cls(tuple(parts))

    @property
    def canvas(self):  # type: ignore[override]
        return next((p.canvas for p in self.parts if p.canvas is not None), None)

    @property
    def extra_kv(self):  # type: ignore[override]
        return next((p.extra_kv for p in self.parts if p.canvas is not None), 0)

    def __repr__(self) -> str:
        return "(" + f" {self._symbol} ".join(repr(p) for p in self.parts) + ")"

    def check_lengths(self, q_len: int, kv_len: int) -> None:
        for p in self.parts:
            p.check_lengths(q_len, kv_len)

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        mods = [p.mask_mod(q_len, kv_len) for p in self.parts]
        combine = self._combine

        def mask_mod(b, h, q_idx, kv_idx):
            out = mods[0](b, h, q_idx, kv_idx)
            for m in mods[1:]:
                out = combine(out, m(b, h, q_idx, kv_idx))
            return out

        return mask_mod

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            # The parts would be tiled but the combined mask (and its evaluation of partial
            # blocks) is in raster order.
            raise ValueError(f"tile={tile!r}: compositions cannot be tiled, only Neighborhood patterns")
        layouts = [
            p.build(q_len, kv_len, block_q=block_q, block_kv=block_kv, device=device, tile=tile)
            for p in self.parts
        ]
        nkv = layouts[0].num_kv_blocks
        # Per pair over all parts: how many parts list it, and how many list it as full.
        keys, fulls = [], []
        for lay in layouts:
            row, col, full = lay.pairs()
            keys.append(row * nkv + col)
            fulls.append(full)
        key, inverse = torch.unique(torch.cat(keys), return_inverse=True)
        listed = torch.zeros(key.numel(), dtype=torch.int64, device=key.device)
        listed.index_add_(0, inverse, torch.ones_like(inverse))
        full_in = torch.zeros_like(listed)
        full_in.index_add_(0, inverse, torch.cat(fulls).long())
        qb, kb = key // nkv, key % nkv
        full, keep, unknown = self._decide(listed, full_in, len(layouts))
        mask_mod = self.mask_mod(q_len, kv_len)
        dims = (block_q, block_kv, q_len, kv_len)
        if unknown.any():
            count = count_allowed(mask_mod, qb[unknown], kb[unknown], dims)
            keep[unknown] = count > 0
            full[unknown] = count == block_areas(qb[unknown], kb[unknown], dims)
        return BlockLayout.from_pairs(
            qb[keep], kb[keep], full[keep], block_q=block_q, block_kv=block_kv,
            q_len=q_len, kv_len=kv_len, mask_mod=mask_mod,
        )


@dataclass(frozen=True, repr=False)
class Union(_Composite):
    """Pairs allowed by any part."""

    _symbol = "|"

    @staticmethod
    def _combine(a, b):
        return a | b

    @staticmethod
    def _decide(listed, full_in, n_parts):
        full = full_in > 0
        keep = listed > 0
        # Two partial blocks may together cover the block: evaluate those.
        return full, keep, (full_in == 0) & (listed > 1)


@dataclass(frozen=True, repr=False)
class Intersection(_Composite):
    """Pairs allowed by every part."""

    _symbol = "&"

    @staticmethod
    def _combine(a, b):
        return a & b

    @staticmethod
    def _decide(listed, full_in, n_parts):
        keep = listed == n_parts
        full = keep & (full_in == n_parts)
        # Full blocks intersected with one partial block stay partial; two partial blocks
        # may not overlap at all: evaluate those.
        return full, keep, keep & (n_parts - full_in > 1)
