"""Exact block layouts of canvas patterns made of per-axis equivalence classes.

A pattern of this family gives each canvas axis ``a`` a class id ``f_a(y)`` of the
coordinate ``y`` and allows a (query, key) pair when the ids are equal on every axis
(:class:`~foveate.patterns.windows.Windows`, :class:`~foveate.patterns.windows.Axial`,
:class:`~foveate.patterns.windows.Grid`). Every such id here has the form

    ``f(y) = g(y) mod n``  with  ``g(y) = (y + offset) // width``

(``n = 0``: no modulo): ``g`` is non-decreasing, so the ids of a coordinate range
``[x0, x1]`` are the integers ``[g(x0), g(x1)]`` (taken mod ``n``: a cyclic interval). Hence,
for a box of queries and a box of keys, per axis:

* some pair shares a class  <=>  the two (cyclic) intervals of ids intersect;
* every pair shares one     <=>  both intervals hold a single id, the same one.

The mask being separable, a box pair has some (every) pair allowed when it has on every axis.
A raster block is a union of at most ``2 D - 1`` boxes (:class:`~foveate.tiling.raster.RasterOrder`),
so each candidate block pair is classified exactly with tensor arithmetic. The candidates
are the kv blocks covering the keys that each query box reaches (per axis: one interval,
a few intervals wrapped around the axis, or a strided set), a superset of the visited blocks
that is at most a small factor larger: the build takes time in proportion to the visited
blocks and never evaluates the mask per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..layout import BlockLayout
from ..tiling.raster import RasterOrder

#: Strided key sets (classes ``y mod period`` with a period much smaller than the axis) are
#: enumerated one residue at a time up to this many residues; wider ranges take the whole axis
#: as candidates (still exact after the classification).
_MAX_RESIDUES = 8
#: Wrapped key intervals are enumerated as pieces when the axis holds at most this many periods.
_MAX_PIECES = 4


@dataclass(frozen=True)
class ClassAxis:
    """One canvas axis of length ``length``: the class of ``y`` is
    ``((y + offset) // width) mod modulus`` (``modulus == 0``: no modulo)."""

    length: int
    offset: int
    width: int
    modulus: int = 0

    @property
    def period(self) -> int | None:
        """Coordinates ``period`` apart share a class (``None``: no period)."""
        return self.width * self.modulus if self.modulus else None

    def g(self, y):
        return (y + self.offset) // self.width

    def ids(self, y: torch.Tensor) -> torch.Tensor:
        """The class ids of coordinates ``y`` (elementwise; also inside ``torch.compile``)."""
        g = self.g(y)
        return torch.remainder(g, self.modulus) if self.modulus else g

    @property
    def trivial(self) -> bool:
        """Every coordinate in one class (the axis does not restrict anything)."""
        return self.modulus == 1 or (self.modulus == 0 and self.g(0) == self.g(self.length - 1))

    def class_sizes(self) -> torch.Tensor:
        """How many coordinates each class holds (classes that occur)."""
        ids = self.ids(torch.arange(self.length))
        return torch.unique(ids, return_counts=True)[1]

    # -- box against box -------------------------------------------------------------------
    def any_allowed(self, x0, x1, y0, y1) -> torch.Tensor:
        """Whether some query in ``[x0, x1]`` shares a class with some key in ``[y0, y1]``."""
        a0, a1, b0, b1 = self.g(x0), self.g(x1), self.g(y0), self.g(y1)
        n = self.modulus
        if n == 0:
            return (a0 <= b1) & (b0 <= a1)
        wide = (a1 - a0 + 1 >= n) | (b1 - b0 + 1 >= n)
        # Two cyclic intervals meet iff one's start lies in the other.
        return wide | (torch.remainder(b0 - a0, n) <= a1 - a0) | (torch.remainder(a0 - b0, n) <= b1 - b0)

    def all_allowed(self, x0, x1, y0, y1) -> torch.Tensor:
        """Whether every query in ``[x0, x1]`` shares a class with every key in ``[y0, y1]``."""
        a0, a1, b0, b1 = self.g(x0), self.g(x1), self.g(y0), self.g(y1)
        n = self.modulus
        if n == 1:
            return torch.ones_like(a0, dtype=torch.bool)
        same = (a0 == b0) if n == 0 else (torch.remainder(a0 - b0, n) == 0)
        return (a0 == a1) & (b0 == b1) & same

    # -- the keys a range of queries reaches ------------------------------------------------
    def key_slots(self, x0: torch.Tensor, x1: torch.Tensor, last: bool):
        """Regions of key coordinates covering every key that a query in ``[x0, x1]`` shares a
        class with (a superset). Returns ``(lo, hi, step, valid)`` of shape ``(R, S)``: ``S``
        slots per range, each the coordinates ``lo + step * t <= hi``; ``step`` is only used on
        outer axes (``last``: the last axis, taken contiguous)."""
        L, w, c = self.length, self.width, self.offset
        a0, a1 = self.g(x0), self.g(x1)
        lo0 = a0 * w - c  # the coordinates of classes [a0, a1], unwrapped
        hi0 = (a1 + 1) * w - c - 1
        period = self.period
        ones = torch.ones_like(x0)
        if period is None or (period * _MAX_PIECES >= L) or last:
            if period is None:
                shifts = [0]
            elif period * _MAX_PIECES >= L:
                # The pieces ``j * period`` apart that meet the axis (``-period < lo0 < L``).
                reach = -(-L // period)
                shifts = [j * period for j in range(-reach, reach + 1)]
            else:  # the last axis, many periods: the whole axis
                z = torch.zeros_like(x0)
                return z[:, None], (z + L - 1)[:, None], ones[:, None], ones.bool()[:, None]
            lo = torch.stack([torch.clamp(lo0 + s, min=0) for s in shifts], 1)
            hi = torch.stack([torch.clamp(hi0 + s, max=L - 1) for s in shifts], 1)
            return lo, hi, torch.ones_like(lo), lo <= hi
        # Many periods on an outer axis: one strided slot per residue (few residues), else the
        # whole axis.
        span = hi0 - lo0 + 1
        few = span <= _MAX_RESIDUES
        res = torch.arange(_MAX_RESIDUES, device=x0.device)
        lo = torch.remainder(lo0[:, None] + res, period)
        hi = torch.full_like(lo, L - 1)
        valid = few[:, None] & (res < span[:, None])
        lo = torch.cat([lo, torch.zeros_like(x0)[:, None]], 1)
        hi = torch.cat([hi, torch.full_like(x0, L - 1)[:, None]], 1)
        step = torch.cat([torch.full_like(lo[:, :-1], period), ones[:, None]], 1)
        valid = torch.cat([valid, ~few[:, None]], 1)
        return lo, hi, step, valid


def flat_coords(canvas: tuple[int, ...], idx: torch.Tensor) -> list[torch.Tensor]:
    """Canvas coordinates of raster indices ``idx`` (canvas tokens)."""
    strides = [math.prod(canvas[a + 1:]) for a in range(len(canvas))]
    return [idx // st if a == 0 else (idx // st) % n for a, (st, n) in enumerate(zip(strides, canvas))]


def classes_allowed(axes: tuple[ClassAxis, ...], q_coords, k_coords) -> torch.Tensor:
    """Elementwise: do the canvas coordinates ``q_coords`` and ``k_coords`` share a class on
    every axis?"""
    ok = None
    for ax, qx, kx in zip(axes, q_coords, k_coords):
        if ax.trivial:
            continue
        same = ax.ids(qx) == ax.ids(kx)
        ok = same if ok is None else ok & same
    if ok is None:  # (no axis restricts anything)
        ok = torch.ones_like(q_coords[0] == k_coords[0])
    return ok


def classes_mask_mod(canvas: tuple[int, ...], axes: tuple[ClassAxis, ...]):
    """The FlexAttention-style ``mask_mod`` of the classes, on raster indices."""

    def mask_mod(b, h, q_idx, kv_idx):
        return classes_allowed(axes, flat_coords(canvas, q_idx), flat_coords(canvas, kv_idx))

    return mask_mod


def classes_allowed_pairs(axes: tuple[ClassAxis, ...]) -> int:
    """Allowed pairs: per axis the sum over classes of its size squared, multiplied."""
    total = 1
    for ax in axes:
        total *= int((ax.class_sizes() ** 2).sum())
    return total


def build_classes_layout(
    canvas: tuple[int, ...], axes: tuple[ClassAxis, ...], *, block_q: int, block_kv: int,
    device: torch.device, mask_mod,
) -> BlockLayout:
    """The exact BlockLayout, in raster order, of the pattern whose pairs are allowed when their
    classes agree on every axis."""
    ndim = len(canvas)

    def key_regions(owner, x0, x1):
        # Regions of keys reached by each query box, axis by axis (a superset).
        lo = torch.empty(owner.numel(), 0, dtype=torch.int64, device=device)
        hi, step = lo, lo
        for a, ax in enumerate(axes):
            s_lo, s_hi, s_step, s_valid = ax.key_slots(x0[:, a], x1[:, a], last=a == ndim - 1)
            r, k = torch.nonzero(s_valid, as_tuple=True)
            owner, x0, x1 = owner[r], x0[r], x1[r]
            lo = torch.cat([lo[r], s_lo[r, k, None]], 1)
            hi = torch.cat([hi[r], s_hi[r, k, None]], 1)
            step = torch.cat([step[r], s_step[r, k, None]], 1)
        return owner, lo, hi, step

    return build_box_pair_layout(canvas, key_regions, classify_per_axis(axes), block_q=block_q, block_kv=block_kv,
                                 device=device, mask_mod=mask_mod, allowed_pairs=classes_allowed_pairs(axes))


def classify_per_axis(axes):
    """The ``classify`` of :func:`build_box_pair_layout` for a pattern that allows a pair when
    every axis does: per axis, ``any_allowed`` / ``all_allowed(q_lo, q_hi, k_lo, k_hi)`` on the
    boxes' bounds along it, combined over the axes."""

    def classify(q_lo, q_hi, k_lo, k_hi):
        some = torch.ones(q_lo.shape[0], dtype=torch.bool, device=q_lo.device)
        every = torch.ones_like(some)
        for a, ax in enumerate(axes):
            bounds = q_lo[:, a], q_hi[:, a], k_lo[:, a], k_hi[:, a]
            some &= ax.any_allowed(*bounds)
            every &= ax.all_allowed(*bounds)
        return some, every

    return classify


def build_box_pair_layout(canvas: tuple[int, ...], key_regions, classify, *, block_q: int, block_kv: int,
                          device: torch.device, mask_mod, allowed_pairs: int,
                          kv_canvas: tuple[int, ...] | None = None) -> BlockLayout:
    """The exact BlockLayout, in raster order, of a canvas pattern that can answer for a box of
    queries and a box of keys whether some, and whether every, pair is allowed.

    A raster block is a union of at most ``2 D - 1`` boxes (:class:`RasterOrder`). ``key_regions(
    owner, x0, x1)`` gives, for query boxes ``[x0, x1]`` (inclusive, ``(R, D)``), regions holding
    every key they may see: ``(owner, lo, hi, step)`` as :meth:`RasterOrder.blocks_in_regions`
    takes them (``owner``: the query block of each region); the kv blocks of those regions are
    the candidates (a superset of the visited blocks). ``classify(q_lo, q_hi, k_lo, k_hi)`` answers
    ``(some, every)`` per box pair (inclusive ``(S, D)`` bounds). A block pair is visited when
    some box pair has an allowed pair, full when every box pair is all allowed. ``kv_canvas``:
    the keys' canvas when it is not the queries' (same number of axes; cross-attention)."""
    kv_canvas = canvas if kv_canvas is None else kv_canvas
    q_order, order = RasterOrder(canvas), RasterOrder(kv_canvas)
    q_lo, q_hi, q_valid = q_order.block_boxes(block_q, device)
    k_lo, k_hi, k_valid = order.block_boxes(block_kv, device)
    nkv = k_lo.shape[0]

    box_q, box_i = torch.nonzero(q_valid, as_tuple=True)
    owner, lo, hi, step = key_regions(box_q, q_lo[box_q, box_i], q_hi[box_q, box_i])
    region, kb = order.blocks_in_regions(lo, hi, step, block_kv)
    key = torch.unique(owner[region] * nkv + kb)
    qb, kb = key // nkv, key % nkv

    some = torch.zeros(qb.numel(), dtype=torch.bool, device=device)
    every = torch.ones_like(some)
    for i in range(q_lo.shape[1]):
        for j in range(k_lo.shape[1]):
            sel = torch.nonzero(q_valid[qb, i] & k_valid[kb, j]).squeeze(1)
            if sel.numel() == 0:
                continue
            qs, ks = qb[sel], kb[sel]
            pair_some, pair_every = classify(q_lo[qs, i], q_hi[qs, i], k_lo[ks, j], k_hi[ks, j])
            some[sel] |= pair_some
            every[sel] &= pair_every
    qb, kb, full = qb[some], kb[some], every[some]
    return BlockLayout.from_pairs(
        qb, kb, full, block_q=block_q, block_kv=block_kv, q_len=math.prod(canvas), kv_len=math.prod(kv_canvas),
        mask_mod=mask_mod, allowed_pairs=allowed_pairs,
    )
