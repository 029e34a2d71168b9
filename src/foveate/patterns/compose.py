"""Composition of patterns: ``a | b`` (union) and ``a & b`` (intersection).

The layout of a composition comes from its parts' layouts: a block pair's state is known
from the parts' states except where it is not (two partial blocks), and only those pairs
are evaluated with the combined ``mask_mod``. A composition of canvas patterns can be tiled
(its parts' tiled layouts combined the same way). Its kernel mask combines its parts' (any
part without one leaves the composition without one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import BlockLayout, block_areas, count_allowed
from .base import Pattern
from .parts import OfParts
from .band import build_band_layout
from .kernel_mask import AllOf, AnyOf, Band, KernelMask


@dataclass(frozen=True, repr=False)
class _Composite(OfParts, Pattern):
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
            parts.extend(p.parts if type(p) is cls else (p,))
        fixed = {p.fixed_blocks for p in parts if p.fixed_blocks is not None}
        if len(fixed) > 1:
            raise ValueError(f"cannot compose block masks of different block sizes {sorted(fixed)}: {patterns!r}")
        canvases = {p.canvas for p in parts if p.canvas is not None}
        extras = {p.extra_kv for p in parts if p.canvas is not None}
        if len(canvases) > 1 or len(extras) > 1:
            raise ValueError(f"cannot compose patterns on different canvases: {patterns!r}")
        return cls(tuple(parts))

    def _parts(self) -> tuple[Pattern, ...]:
        return self.parts

    def check_batch_heads(self, batch: int, heads: int) -> None:
        for p in self.parts:
            p.check_batch_heads(batch, heads)

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

    @property
    def can_tile(self) -> bool:  # type: ignore[override]
        return self.canvas is not None and all(p.can_tile for p in self.parts)

    def coords_allowed(self, q_coords, k_coords) -> torch.Tensor:
        """Elementwise on canvas coordinates (every part a canvas pattern): the parts'
        ``coords_allowed`` combined."""
        out = self.parts[0].coords_allowed(q_coords, k_coords)
        for p in self.parts[1:]:
            out = self._combine(out, p.coords_allowed(q_coords, k_coords))
        return out

    def kernel_mask(self, q_len: int, kv_len: int) -> KernelMask | None:
        masks = [p.kernel_mask(q_len, kv_len) for p in self.parts]
        if any(m is None for m in masks):
            return None  # the kernels then evaluate the composed mask_mod into a bitmask
        return _one_band(masks, self._widest) or self._node(tuple(masks))

    def _part_layouts(self, q_len, kv_len, block_q, block_kv, device, tile):
        return [p.build(q_len, kv_len, block_q=block_q, block_kv=block_kv, device=device, tile=tile)
                for p in self.parts]

    def _combined_pairs(self, layouts):
        """The block pairs of the composition from its parts' layouts: ``(row, kv block, full,
        keep, unknown)`` per pair listed by any part, ``row`` as in
        :meth:`~foveate.layout.BlockLayout.from_pairs` over the parts' common (batch, head)
        axes (:func:`_batch_heads`); ``unknown`` pairs (their state is not decided by the parts'
        states) are kept and partial until evaluated."""
        nkv = layouts[0].num_kv_blocks
        batch_heads = _batch_heads(layouts)
        # Per pair over all parts: how many parts list it, and how many list it as full.
        keys, fulls = [], []
        for lay in layouts:
            row, col, full = _broadcast_pairs(lay, batch_heads)
            keys.append(row * nkv + col)
            fulls.append(full)
        key, inverse = torch.unique(torch.cat(keys), return_inverse=True)
        listed = torch.zeros(key.numel(), dtype=torch.int64, device=key.device)
        listed.index_add_(0, inverse, torch.ones_like(inverse))
        full_in = torch.zeros_like(listed)
        full_in.index_add_(0, inverse, torch.cat(fulls).long())
        full, keep, unknown = self._decide(listed, full_in, len(layouts))
        return key // nkv, key % nkv, full, keep, unknown

    def listed_block_counts(self, *, block: int = 128, tile=None) -> tuple[int, int]:
        """``(visited, full)`` blocks of the layout (canvas lengths, ``block`` x ``block``) before
        the pairs its parts leave undecided are evaluated: those count as visited and partial
        (an upper bound of the visited blocks, cheap: no mask is evaluated here; the tile
        choice ranks tiles by it)."""
        q_len, kv_len = self.default_lengths()
        _, _, full, keep, unknown = self._combined_pairs(
            self._part_layouts(q_len, kv_len, block, block, torch.device("cpu"), tile))
        return int(keep.sum()), int((full & keep & ~unknown).sum())

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        band = None if tile is not None else self.kernel_mask(q_len, kv_len)
        if isinstance(band, Band):  # bands around one diagonal compose into a band: analytic
            return build_band_layout(q_len, kv_len, band.left, band.right, block_q=block_q, block_kv=block_kv,
                                     device=device, mask_mod=self.mask_mod(q_len, kv_len))
        layouts = self._part_layouts(q_len, kv_len, block_q, block_kv, device, tile)
        # (in the tiled order the layouts cover the padded canvas; the combined mask is then
        # the tiled one)
        q_len, kv_len = layouts[0].q_len, layouts[0].kv_len
        if tile is None:
            mask_mod = self.mask_mod(q_len, kv_len)
        else:
            from .tiled import Tiled

            mask_mod = Tiled(self, tile).mask_mod(q_len, kv_len)
        row, kb, full, keep, unknown = self._combined_pairs(layouts)
        batch_heads = _batch_heads(layouts)
        nq = layouts[0].num_q_blocks
        dims = (block_q, block_kv, q_len, kv_len)
        if unknown.any():
            qb = row[unknown] % nq
            count = count_allowed(mask_mod, qb, kb[unknown], dims, heads=row[unknown] // nq,
                                  num_heads=batch_heads[1])
            keep[unknown] = count > 0
            full[unknown] = count == block_areas(qb, kb[unknown], dims)
        return BlockLayout.from_pairs(
            row[keep], kb[keep], full[keep], batch_heads=batch_heads, block_q=block_q, block_kv=block_kv,
            q_len=q_len, kv_len=kv_len, mask_mod=mask_mod,
        )


def _one_band(masks, widest: bool) -> Band | None:
    """The one band that bands around the same diagonal compose into (``widest``: their union,
    else their intersection); ``None`` unless every mask is such a band. Both sides of each
    band reach the diagonal, so the union of the intervals is an interval."""
    if not all(isinstance(m, Band) for m in masks) or len({m.offset for m in masks}) != 1:
        return None
    sides = []
    for side in ("left", "right"):
        values = [getattr(m, side) for m in masks]
        if any(v is not None and v < 0 for v in values):
            return None
        bounded = [v for v in values if v is not None]
        if widest:
            sides.append(None if len(bounded) < len(values) else max(bounded))
        else:
            sides.append(min(bounded) if bounded else None)
    return Band(masks[0].offset, *sides)


def _batch_heads(layouts) -> tuple[int, int]:
    """The (batch, head) axes of a composition's layout: per batch / head where any part is."""
    return (max(lay.batch_heads[0] for lay in layouts), max(lay.batch_heads[1] for lay in layouts))


def _broadcast_pairs(layout: BlockLayout, batch_heads: tuple[int, int]):
    """``layout.pairs()`` with rows over ``batch_heads`` (a part shared by every batch element
    or head repeated for each)."""
    row, col, full = layout.pairs()
    (b, h), (tb, th) = layout.batch_heads, batch_heads
    if (b, h) == (tb, th):
        return row, col, full
    nq, n, dev = layout.num_q_blocks, row.numel(), row.device
    qb, bh = row % nq, row // nq
    b_idx = torch.arange(tb, device=dev).view(-1, 1, 1) if b == 1 else (bh // h).view(1, 1, -1)
    h_idx = torch.arange(th, device=dev).view(1, -1, 1) if h == 1 else (bh % h).view(1, 1, -1)
    shape = (tb if b == 1 else 1, th if h == 1 else 1, n)

    def spread(x):
        return x.view(1, 1, -1).expand(shape).reshape(-1)

    return ((b_idx * th + h_idx) * nq + qb).expand(shape).reshape(-1), spread(col), spread(full)


@dataclass(frozen=True, repr=False)
class Union(_Composite):
    """Pairs allowed by any part."""

    _symbol = "|"
    _node = AnyOf
    _widest = True

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
    _node = AllOf
    _widest = False

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
