"""``Halo``: blocked local attention with halos (HaloNet)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import per_axis, set_ints
from .interval_canvas import IntervalCanvas, check_canvas
from .kernel_mask import GroupWindow


@dataclass(frozen=True)
class Halo(IntervalCanvas):
    """Blocked local self-attention with halos, from HaloNet (Vaswani et al., "Scaling Local
    Self-Attention for Parameter Efficient Visual Backbones", CVPR 2021).

    The canvas is cut into non-overlapping query blocks of ``block`` tokens per axis; every
    query of a block sees the keys of its block extended by ``halo`` tokens on each side, the
    extension clipped at the canvas borders (keys past a border do not exist; the window is
    not shifted inward as a neighborhood's is). Per axis of length ``L``, the query at
    coordinate ``y`` (block start ``s = block * (y // block)``) sees the keys

        ``max(s - halo, 0) <= y' < min(s + block + halo, L)``

    and a key is seen when it is seen on every axis. A last block cut short by the border
    (``L`` not a multiple of ``block``) keeps the same rule.

    Args:
        canvas: canvas shape, 1 to 3 axes; tokens are flat in row-major (raster) order, so
            ``q_len == prod(canvas)`` and ``kv_len == prod(canvas) + extra_kv``.
        block: query block size per axis (an int applies to every axis), ``>= 1``.
        halo: halo width per axis, ``>= 0`` (0: non-overlapping blocked attention).
        extra_kv: keys after the canvas tokens (text, register or class tokens) that every
            query sees.

    Layouts are built analytically (:mod:`.interval_canvas`), in raster or tiled order
    (``tile=``, ``"auto"``: the tile whose layout visits the fewest blocks). Its kernel mask is
    a :class:`~foveate.patterns.kernel_mask.GroupWindow` (per axis: groups of ``block``, the
    window ``block + 2 * halo`` from ``halo`` before the group, cut at the borders).
    """

    # field(): no default, although the base class has a class-level `canvas = None`.
    canvas: tuple[int, ...] = field()
    block: tuple[int, ...] = field()
    halo: tuple[int, ...] = field()
    extra_kv: int = 0

    def __post_init__(self):
        canvas = check_canvas(self.canvas)
        ndim = len(canvas)
        block = per_axis("block", self.block, ndim)
        halo = per_axis("halo", self.halo, ndim)
        set_ints(self, extra_kv=0)
        for a, (b, h) in enumerate(zip(block, halo)):
            if b < 1:
                raise ValueError(f"block={block}: must be >= 1 on every axis (axis {a}: {b})")
            if h < 0:
                raise ValueError(f"halo={halo}: must be >= 0 on every axis (axis {a}: {h})")
        for name, value in (("canvas", canvas), ("block", block), ("halo", halo)):
            object.__setattr__(self, name, value)

    def axis_interval(self, axis: int, x: torch.Tensor):
        b, h, n = self.block[axis], self.halo[axis], self.canvas[axis]
        first = (x // b) * b
        return torch.clamp(first - h, min=0), torch.clamp(first + (b + h), max=n)

    can_tile = True

    def kernel_mask(self, q_len: int, kv_len: int) -> GroupWindow:
        self.check_lengths(q_len, kv_len)
        return GroupWindow(self.canvas, tuple((b + 2 * h, b, 0, h) for b, h in zip(self.block, self.halo)),
                           self.extra_kv)


__all__ = ["Halo"]
