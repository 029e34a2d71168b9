"""Canvas patterns whose windows are intervals per axis, and their exact block layouts.

A pattern of this family is separable: on every canvas axis ``a`` a query at coordinate ``x``
sees the keys ``[start_a(x), end_a(x))``, and a (query, key) pair is allowed when it is allowed
on every axis (plus the ``extra_kv`` keys after the canvas, seen by every query). Subclasses
give :meth:`IntervalCanvas.axis_interval`; the mask, the tiled mask and the layout all come
from it.

The layout reuses the analytic builder of :mod:`.canvas_layout`, which classifies block pairs
from per-axis windows only (``_Axis`` with dilation 1: ``start``/``end`` tensors). Its
comparisons are exact for any windows that are

* non-empty (``start[x] < end[x]``),
* monotone (``start`` and ``end`` non-decreasing in ``x``),
* without gaps between neighbours (``start[x + 1] <= end[x]``), so the keys that a run of
  queries ``[x0, x1]`` sees are the one interval ``[start[x0], end[x1])``;

:func:`interval_axis` checks the three on every axis before building. Neighborhoods (dilation
1), HaloNet's blocked windows and Sliding Tile Attention's tile windows all satisfy them.
"""

from __future__ import annotations

import math

import torch

from ..layout import BlockLayout
from .base import Pattern, is_int


def check_canvas(canvas) -> tuple[int, ...]:
    """``canvas`` as a tuple of 1 to 3 positive Python ints (an int is a 1-D canvas)."""
    value = (canvas,) if is_int(canvas) else canvas
    if (
        not isinstance(value, (tuple, list))
        or not 1 <= len(value) <= 3
        or not all(is_int(n) and n >= 1 for n in value)
    ):
        raise ValueError(f"canvas must be 1 to 3 positive ints, got {canvas!r}")
    return tuple(int(n) for n in value)


def raster_coords(canvas: tuple[int, ...], idx: torch.Tensor) -> list[torch.Tensor]:
    """Canvas coordinates of raster indices ``idx`` (< prod(canvas)), one tensor per axis."""
    strides = [math.prod(canvas[a + 1 :]) for a in range(len(canvas))]
    # The outermost axis needs no modulo.
    return [idx // st if a == 0 else (idx // st) % n for a, (st, n) in enumerate(zip(strides, canvas))]


class IntervalCanvas(Pattern):
    """Base of the canvas patterns whose per-axis windows are intervals (see the module).

    Subclasses are frozen dataclasses with fields ``canvas`` and ``extra_kv`` and implement
    :meth:`axis_interval`.
    """

    def axis_interval(self, axis: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(start, end)``: the half-open interval of key coordinates that the query at
        coordinate ``x`` sees along ``axis`` (elementwise on integer tensors; also traced by
        ``torch.compile``)."""
        raise NotImplementedError

    def coords_allowed(self, q_coords, k_coords) -> torch.Tensor:
        """Elementwise: may the query at canvas coordinates ``q_coords`` see the canvas key at
        ``k_coords`` (one integer tensor per axis)? The extra keys are not covered here."""
        ok = None
        for a, (qx, kx) in enumerate(zip(q_coords, k_coords)):
            start, end = self.axis_interval(a, qx)
            ok_axis = (kx >= start) & (kx < end)
            ok = ok_axis if ok is None else ok & ok_axis
        return ok

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        canvas, extra = self.canvas, self.extra_kv
        n_canvas = math.prod(canvas)
        allowed = self.coords_allowed

        def mask_mod(b, h, q_idx, kv_idx):
            ok = allowed(raster_coords(canvas, q_idx), raster_coords(canvas, kv_idx))
            return ok | (kv_idx >= n_canvas) if extra else ok

        return mask_mod

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        return build_interval_layout(self, block_q=block_q, block_kv=block_kv, device=device, tile=tile)


def interval_axis(length: int, start: torch.Tensor, end: torch.Tensor, *, what="pattern"):
    """The per-axis windows ``[start[x], end[x])`` of the ``length`` queries of one axis, as
    :mod:`.canvas_layout`'s builder takes them; ``ValueError`` unless they are in the canvas,
    non-empty, monotone and without gaps (the conditions under which its block
    classification is exact)."""
    from .canvas_layout import _Axis

    start, end = start.to(torch.int64), end.to(torch.int64)
    ok = (
        start.shape == end.shape == (length,)
        and bool((start >= 0).all()) and bool((end <= length).all()) and bool((start < end).all())
        and bool((start[1:] >= start[:-1]).all()) and bool((end[1:] >= end[:-1]).all())
        and bool((start[1:] <= end[:-1]).all())
    )
    if not ok:
        raise ValueError(f"{what}: its per-axis windows are not non-empty, monotone intervals without gaps "
                         "inside the canvas; its layout cannot be built analytically")
    return _Axis(length, 1, start, end)


def build_interval_layout(
    pattern: IntervalCanvas, *, block_q: int, block_kv: int, device: torch.device, tile=None
) -> BlockLayout:
    """The exact BlockLayout of ``pattern`` in raster order (``tile=None``) or in the tiled
    order of ``tile`` (then blocks must be whole tiles), in time proportional to the visited
    blocks: no pair is evaluated."""
    from .canvas_layout import layout_of_axes

    axes = interval_axes(pattern, device)
    return layout_of_axes(pattern, axes, block_q=block_q, block_kv=block_kv, device=device, tile=tile)


def interval_axes(pattern, device: torch.device) -> list:
    """The per-axis windows of ``pattern`` (anything with ``canvas`` and ``axis_interval``) as
    :mod:`.canvas_layout`'s builder takes them, checked (:func:`interval_axis`)."""
    axes = []
    for a, n in enumerate(pattern.canvas):
        start, end = pattern.axis_interval(a, torch.arange(n, device=device, dtype=torch.int64))
        axes.append(interval_axis(n, start, end, what=repr(pattern)))
    return axes


__all__ = ["IntervalCanvas", "build_interval_layout", "check_canvas", "interval_axes", "interval_axis", "raster_coords"]
