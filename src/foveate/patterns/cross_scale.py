"""``CrossScale``: local attention from a query canvas to a key canvas of another resolution
(cross-resolution neighborhoods, as in MVAR's scale-to-scale attention).

Per axis, a query coordinate ``x`` of a canvas axis of ``Lq`` tokens lands in the key cell
``c = floor((x + 1/2) * Lk / Lq)`` of the key canvas axis of ``Lk`` tokens (the key cell holding
the query cell's centre), and sees the ``kernel`` keys starting at
``clamp(c - kernel // 2, 0, Lk - kernel)``: a neighborhood window moved inward at the borders.
The window start is non-decreasing in ``x``, so a run of queries ``[x0, x1]`` sees a union of
windows that is one interval, or, where neighbouring windows leave gaps (a query axis coarser
than the key axis by more than the kernel), a few intervals split at the gaps. The layout is
built from the raster blocks' boxes from these intervals, never from a pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..layout import BlockLayout
from .base import Pattern, as_int, is_int, per_axis
from .interval_canvas import raster_coords
from .kernel_mask import Window
from .segment_canvas import build_box_pair_layout, classify_per_axis


def _check_canvas(name: str, canvas) -> tuple[int, ...]:
    value = (canvas,) if is_int(canvas) else canvas
    if (
        not isinstance(value, (tuple, list))
        or not 1 <= len(value) <= 3
        or not all(is_int(n) and n >= 1 for n in value)
    ):
        raise ValueError(f"{name} must be 1 to 3 positive ints, got {canvas!r}")
    return tuple(int(n) for n in value)


def scaled_start(x: torch.Tensor, q_side: int, kv_side: int, kernel: int) -> torch.Tensor:
    """The first key coordinate of the window of query coordinate ``x`` along one axis
    (elementwise on integer tensors; also traced by ``torch.compile``): the key cell
    ``c = floor((x + 1/2) * kv_side / q_side)``, then ``clamp(c - kernel // 2, 0, kv_side - kernel)``."""
    centre = ((2 * x + 1) * kv_side) // (2 * q_side)
    return torch.clamp(centre - kernel // 2, min=0, max=kv_side - kernel)


@dataclass(frozen=True)
class CrossScale(Pattern):
    """Local attention across resolutions: the queries on one canvas, the keys on another
    (issue #28; MVAR's cross-scale local attention), each query seeing a window of keys
    around its position scaled to the key canvas.

    Per axis, with ``Lq`` query and ``Lk`` key tokens, the query coordinate ``x``
    (``0 <= x < Lq``) is centred on the key cell ``c = floor((x + 1/2) * Lk / Lq)`` (the one
    holding the query cell's centre), and sees the ``kernel`` keys
    ``[s, s + kernel)``, ``s = clamp(c - kernel // 2, 0, Lk - kernel)``: the window is moved
    inward at the borders, as a NATTEN neighborhood's is, so every query sees exactly
    ``prod(kernel)`` keys (an even kernel leans left). A key is seen when it is in the window on
    every axis. With ``q_canvas == kv_canvas`` this is ``Neighborhood(canvas, kernel)``.

    Args:
        q_canvas: shape of the query canvas, 1 to 3 axes (an int is a 1-D canvas); the queries
            are its tokens in raster order, ``q_len == prod(q_canvas)``.
        kv_canvas: shape of the key canvas, as many axes as ``q_canvas``, each side coarser,
            finer or equal; ``kv_len == prod(kv_canvas)``.
        kernel: window size per axis on the key canvas (an int applies to every axis),
            ``1 <= kernel <= kv_canvas`` on every axis.

    The pattern is not a canvas pattern for the rest of the library: its ``canvas`` is
    ``None`` (a pattern's ``canvas`` stands for one grid holding both the queries and the keys:
    the lengths ``prod(canvas)`` on both sides, canvas-shaped ``k`` and ``v``, tiled orders,
    compositions on one canvas, drawings of one grid, none of which holds here). It takes flat
    ``(B, H, N, D)`` tensors; :meth:`default_lengths` gives ``(prod(q_canvas),
    prod(kv_canvas))``; ``P.WithText`` does not take it (its text rows and columns assume one
    length on both sides). It runs in raster order only (``tile`` must be ``None``). Its layout is
    built from the raster blocks' boxes (at most ``2 D - 1`` per block) of both canvases, in time
    proportional to the visited blocks (plus, where neighbouring windows leave gaps, the number of
    separate windows a block reaches); no pair is evaluated. On the fused kernels it takes the
    neighborhood's kernel mask when the canvases are equal, else its partial blocks are masked
    from a bitmask.
    """

    q_canvas: tuple[int, ...] = field()
    kv_canvas: tuple[int, ...] = field()
    kernel: tuple[int, ...] = field()

    def __post_init__(self):
        q_canvas = _check_canvas("q_canvas", self.q_canvas)
        kv_canvas = _check_canvas("kv_canvas", self.kv_canvas)
        if len(q_canvas) != len(kv_canvas):
            raise ValueError(f"q_canvas={q_canvas} and kv_canvas={kv_canvas} must have the same number of axes")
        kernel = per_axis("kernel", self.kernel, len(q_canvas))
        for a, (w, n) in enumerate(zip(kernel, kv_canvas)):
            if not 1 <= w <= n:
                raise ValueError(f"kernel={kernel} does not fit kv_canvas={kv_canvas}: need 1 <= kernel <= "
                                 f"kv_canvas on every axis (axis {a}: {w} vs {n})")
        for name, value in (("q_canvas", q_canvas), ("kv_canvas", kv_canvas), ("kernel", kernel)):
            object.__setattr__(self, name, value)

    # -- lengths -----------------------------------------------------------------------
    def default_lengths(self) -> tuple[int, int]:
        return math.prod(self.q_canvas), math.prod(self.kv_canvas)

    def check_lengths(self, q_len: int, kv_len: int) -> None:
        q_len, kv_len = as_int("q_len", q_len, minimum=1), as_int("kv_len", kv_len, minimum=1)
        expected = self.default_lengths()
        if (q_len, kv_len) != expected:
            raise ValueError(f"{self!r} needs q_len={expected[0]} and kv_len={expected[1]} (prod(q_canvas) and "
                             f"prod(kv_canvas)); got q_len={q_len}, kv_len={kv_len}")

    # -- the definition ----------------------------------------------------------------
    def axis_start(self, axis: int, x: torch.Tensor) -> torch.Tensor:
        """The first key coordinate of the window of query coordinate ``x`` along ``axis``
        (the window is ``[start, start + kernel)``)."""
        return scaled_start(x, self.q_canvas[axis], self.kv_canvas[axis], self.kernel[axis])

    def coords_allowed(self, q_coords, k_coords) -> torch.Tensor:
        """Elementwise: may the query at ``q_coords`` (on the query canvas) see the key at
        ``k_coords`` (on the key canvas)? One integer tensor per axis."""
        ok = None
        for a, (qx, kx) in enumerate(zip(q_coords, k_coords)):
            start = self.axis_start(a, qx)
            ok_axis = (kx >= start) & (kx < start + self.kernel[a])
            ok = ok_axis if ok is None else ok & ok_axis
        return ok

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        q_canvas, kv_canvas, allowed = self.q_canvas, self.kv_canvas, self.coords_allowed

        def mask_mod(b, h, q_idx, kv_idx):
            return allowed(raster_coords(q_canvas, q_idx), raster_coords(kv_canvas, kv_idx))

        return mask_mod

    def allowed_pairs(self) -> int:
        """Allowed pairs: every query sees ``prod(kernel)`` keys (per axis ``Lq * kernel``
        pairs, multiplied over the axes)."""
        return math.prod(n * w for n, w in zip(self.q_canvas, self.kernel))

    # -- compiled form -----------------------------------------------------------------
    def kernel_mask(self, q_len: int, kv_len: int) -> Window | None:
        """The neighborhood's :class:`~foveate.patterns.kernel_mask.Window` when the canvases
        are equal (the same mask); else ``None`` (no node kind maps a query to a scaled
        window; the fused kernels read a bitmask)."""
        self.check_lengths(q_len, kv_len)
        if self.q_canvas != self.kv_canvas:
            return None
        return Window(self.q_canvas, tuple((w, 1, 1, False) for w in self.kernel), 0)

    def _check_tile(self, tile) -> None:
        raise ValueError(f"tile={tile!r}: {self!r} runs in raster order only (its queries and keys lie on "
                         "different canvases); use tile=None")

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile) -> BlockLayout:
        if tile is not None:
            self._check_tile(tile)
        axes = [_ScaleAxis.of(nq, nk, w, device) for nq, nk, w in zip(self.q_canvas, self.kv_canvas, self.kernel)]
        return _box_pair_layout(self, axes, block_q, block_kv, device)


# -- the layout --------------------------------------------------------------------------------


@dataclass
class _ScaleAxis:
    """One axis: the window start ``start[x]`` of each query coordinate (non-decreasing), the
    kernel, and the gaps: the coordinates ``g`` after whose window the next one starts past a
    key no window of ``g`` or ``g + 1`` holds (``start[g + 1] > start[g] + kernel``)."""

    start: torch.Tensor
    kernel: int
    gaps: torch.Tensor

    @classmethod
    def of(cls, q_side: int, kv_side: int, kernel: int, device) -> "_ScaleAxis":
        start = scaled_start(torch.arange(q_side, device=device, dtype=torch.int64), q_side, kv_side, kernel)
        gaps = torch.nonzero(start[1:] - start[:-1] > kernel).squeeze(1)
        return cls(start.contiguous(), kernel, gaps.contiguous())

    def any_allowed(self, x0, x1, y0, y1) -> torch.Tensor:
        """Whether some query in ``[x0, x1]`` sees some key in ``[y0, y1]`` (per element). The
        windows that meet ``[y0, y1]`` are those with ``y0 - kernel < start <= y1``; the first
        query in ``[x0, x1]`` past the lower bound decides, ``start`` being non-decreasing."""
        first = torch.searchsorted(self.start, (y0 - self.kernel + 1).contiguous())
        x = torch.maximum(first, x0)
        return (x <= x1) & (self.start[torch.clamp(x, max=self.start.numel() - 1)] <= y1)

    def all_allowed(self, x0, x1, y0, y1) -> torch.Tensor:
        """Whether every query in ``[x0, x1]`` sees every key in ``[y0, y1]``: the last window
        starts at or before ``y0`` and the first one ends after ``y1``."""
        return (self.start[x1] <= y0) & (self.start[x0] + self.kernel > y1)

    def pieces(self, x0: torch.Tensor, x1: torch.Tensor):
        """The keys that the queries of each range ``[x0[r], x1[r]]`` see along this axis, as
        disjoint intervals (the union of their windows split at the gaps). Returns ``(r, lo, hi)``:
        the range of each interval and its inclusive bounds, ordered by range."""
        start, w = self.start, self.kernel
        if self.gaps.numel() == 0:
            return torch.arange(x0.numel(), device=x0.device), start[x0], start[x1] + w - 1
        first = torch.searchsorted(self.gaps, x0.contiguous())  # gaps in [x0, x1 - 1]: gaps[first:stop]
        stop = torch.searchsorted(self.gaps, x1.contiguous())
        count = stop - first + 1
        r = torch.repeat_interleave(torch.arange(x0.numel(), device=x0.device), count)
        t = torch.arange(r.numel(), device=x0.device) - (torch.cumsum(count, 0) - count)[r]
        top = self.gaps.numel() - 1
        lo_x = torch.where(t == 0, x0[r], self.gaps[torch.clamp(first[r] + t - 1, 0, top)] + 1)
        hi_x = torch.where(t == count[r] - 1, x1[r], self.gaps[torch.clamp(first[r] + t, 0, top)])
        return r, start[lo_x], start[hi_x] + w - 1


def _box_pair_layout(pattern: CrossScale, axes: list[_ScaleAxis], block_q: int, block_kv: int,
                     device) -> BlockLayout:
    """The exact raster layout from box pairs (:func:`.segment_canvas.build_box_pair_layout`),
    the query blocks' boxes on the query canvas, the key blocks' on the key canvas. The
    candidate regions are products of per-axis intervals of keys seen by the query box, so
    every candidate kv block is visited; the classification decides which are full."""

    def key_regions(owner, x0, x1):
        lo = torch.empty(owner.numel(), 0, dtype=torch.int64, device=device)
        hi = lo
        for a, ax in enumerate(axes):
            r, p_lo, p_hi = ax.pieces(x0[:, a], x1[:, a])
            owner, x0, x1 = owner[r], x0[r], x1[r]
            lo = torch.cat([lo[r], p_lo[:, None]], 1)
            hi = torch.cat([hi[r], p_hi[:, None]], 1)
        return owner, lo, hi, torch.ones_like(lo)

    q_len, kv_len = pattern.default_lengths()
    return build_box_pair_layout(pattern.q_canvas, key_regions, classify_per_axis(axes), block_q=block_q,
                                 block_kv=block_kv, device=device, mask_mod=pattern.mask_mod(q_len, kv_len),
                                 allowed_pairs=pattern.allowed_pairs(), kv_canvas=pattern.kv_canvas)


__all__ = ["CrossScale"]
