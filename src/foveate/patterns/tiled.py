"""``Tiled``: a canvas pattern seen in the tiled token order of a tile shape
(:class:`foveate.tiling.TiledOrder`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..tiling.order import TiledOrder
from .base import Pattern
from .kernel_mask import Tiles


@dataclass(frozen=True, repr=False)
class Tiled(Pattern):
    """``base`` (a canvas pattern that can be tiled, ``base.can_tile``: a Neighborhood, Halo,
    non-cyclic Windows, or a composition of them) seen in the tiled token order of ``tile``.

    Lengths: ``q_len = prod(padded canvas)``, ``kv_len = q_len + base.extra_kv``; ``k`` and
    ``v`` are the padded canvas in tiled order followed by the extra tokens.
    """

    base: Pattern = field()
    tile: tuple[int, ...] = field()

    def __post_init__(self):
        if not isinstance(self.base, Pattern) or not self.base.can_tile:
            raise ValueError(f"tile={self.tile!r}: only canvas patterns (Neighborhood, Halo, non-cyclic Windows and "
                             f"compositions of them) can be tiled, not {self.base!r}")
        tile = tuple(self.tile) if isinstance(self.tile, list) else self.tile
        self.base._check_tile(tile)
        object.__setattr__(self, "tile", tile)

    def __repr__(self) -> str:
        return f"Tiled({self.base!r}, tile={self.tile})"

    @property
    def order(self) -> TiledOrder:
        return TiledOrder(self.base.canvas, self.tile)

    def default_lengths(self) -> tuple[int, int]:
        n = self.order.num_tokens
        return n, n + self.base.extra_kv

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        order = self.order
        n_tiled = order.num_tokens
        allowed = self.base.coords_allowed
        canvas, padded, extra = order.canvas, order.has_padding, self.base.extra_kv

        def mask_mod(b, h, q_idx, kv_idx):
            q_coords = order.coords(q_idx)
            k_coords = order.coords(kv_idx)
            if padded:  # a padded query acts as its nearest canvas query
                q_coords = [torch.clamp(c, max=n - 1) for c, n in zip(q_coords, canvas)]
            ok = allowed(q_coords, k_coords)
            if padded:  # padding keys are never allowed
                for c, n in zip(k_coords, canvas):
                    ok = ok & (c < n)
            return ok | (kv_idx >= n_tiled) if extra else ok

        return mask_mod

    def kernel_mask(self, q_len: int, kv_len: int) -> Tiles | None:
        self.check_lengths(q_len, kv_len)
        n_canvas = self.order.num_canvas
        inner = self.base.kernel_mask(n_canvas, n_canvas + self.base.extra_kv)
        return None if inner is None else Tiles(inner, self.base.canvas, self.tile, self.base.extra_kv)

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {self!r} is already tiled")
        n_canvas = self.order.num_canvas
        return self.base.build(
            n_canvas, n_canvas + self.base.extra_kv, block_q=block_q, block_kv=block_kv,
            device=device, tile=self.tile,
        )
