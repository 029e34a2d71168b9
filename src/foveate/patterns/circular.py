"""``Circular``: keys within a Euclidean radius on a canvas (CLEAR's circular windows)."""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass, field

import torch

from .base import Pattern, is_int
from .segment_canvas import build_box_pair_layout, flat_coords


@dataclass(frozen=True)
class Circular(Pattern):
    """Keys within a radius of the query on a canvas: key ``y`` allowed for query ``x`` when
    ``sum_a (y_a - x_a)^2 < radius^2``, truncated at the borders (a query near an edge sees fewer
    keys; the window is not moved inward). CLEAR ("CLEAR: Conv-Like Linearization Revs
    Pre-Trained Diffusion Transformers Up") restricts a DiT's attention to such circular windows
    on the latent's 2-D grid.

    Args:
        canvas: canvas shape, 1 to 3 axes (tokens in raster order).
        radius: a positive real; ``radius=1`` is each token alone.

    The layout is built from the raster blocks' boxes (at most ``2 D - 1`` per block): a box pair
    holds an allowed pair when the squared gaps between the boxes, summed over the axes, are
    below ``radius^2``, and only allowed pairs when the squared farthest distances are; no pair is
    evaluated. Partial blocks are masked from a bitmask on the fused kernels.
    """

    # field(): no default, although the base class has a class-level `canvas = None`.
    canvas: tuple[int, ...] = field()
    radius: float = field()

    def __post_init__(self):
        canvas = self.canvas
        if is_int(canvas):
            canvas = (canvas,)
        if (not isinstance(canvas, (tuple, list)) or not 1 <= len(canvas) <= 3
                or not all(is_int(n) and n >= 1 for n in canvas)):
            raise ValueError(f"canvas must be 1 to 3 positive ints, got {self.canvas!r}")
        r = self.radius
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or r <= 0:
            raise ValueError(f"radius must be a positive finite number, got {self.radius!r}")
        object.__setattr__(self, "canvas", tuple(int(n) for n in canvas))
        object.__setattr__(self, "radius", float(r))

    @property
    def reach(self) -> int:
        """The largest offset along one axis: ``ceil(radius) - 1``."""
        return math.ceil(self.radius) - 1

    def coords_allowed(self, q_coords, k_coords) -> torch.Tensor:
        d2 = sum((k - q) ** 2 for q, k in zip(q_coords, k_coords))
        return d2 < self.radius ** 2

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        canvas = self.canvas

        def mask_mod(b, h, q_idx, kv_idx):
            return self.coords_allowed(flat_coords(canvas, q_idx), flat_coords(canvas, kv_idx))

        return mask_mod

    def allowed_pairs(self) -> int:
        """Allowed pairs, counted per offset: each offset ``d`` inside the radius is allowed for
        ``prod_a (L_a - |d_a|)`` queries."""
        m, r2 = self.reach, self.radius ** 2
        total = 0
        for d in itertools.product(*(range(-min(m, n - 1), min(m, n - 1) + 1) for n in self.canvas)):
            if sum(x * x for x in d) < r2:
                total += math.prod(n - abs(x) for n, x in zip(self.canvas, d))
        return total

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {self!r} is built in raster order only")
        canvas, m, r2 = self.canvas, self.reach, self.radius ** 2
        upper = torch.tensor(canvas, device=device) - 1

        def key_regions(owner, x0, x1):  # the bounding box of the circles of the query box
            lo = torch.clamp(x0 - m, min=0)
            hi = torch.minimum(x1 + m, upper)
            return owner, lo, hi, torch.ones_like(lo)

        def classify(q_lo, q_hi, k_lo, k_hi):
            gap = torch.clamp(torch.maximum(k_lo - q_hi, q_lo - k_hi), min=0)
            far = torch.maximum(k_hi - q_lo, q_hi - k_lo)
            return (gap ** 2).sum(1) < r2, (far ** 2).sum(1) < r2

        return build_box_pair_layout(canvas, key_regions, classify, block_q=block_q, block_kv=block_kv,
                                     device=device, mask_mod=self.mask_mod(q_len, kv_len),
                                     allowed_pairs=self.allowed_pairs())
