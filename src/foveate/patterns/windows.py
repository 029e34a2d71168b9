"""Canvas patterns of per-axis equivalence classes: ``Windows`` (Swin's windows, shifted or
cyclic), ``Axial`` (axial attention) and ``Grid`` (MaxViT's grid attention).

Each gives every canvas axis a class id of the coordinate and allows a (query, key) pair when
their ids agree on every axis; their layouts come from one exact builder
(:mod:`foveate.patterns.segment_canvas`), and their fused kernels mask partial blocks from the
bitmask of :meth:`mask_mod`. Non-cyclic ``Windows`` are intervals per axis instead: windows
cut at the borders (a :class:`~foveate.patterns.kernel_mask.GroupWindow`; a
``TileNeighborhood`` when aligned), built by :mod:`foveate.patterns.interval_canvas` in raster
or tiled orders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import Pattern, is_int, per_axis
from .interval_canvas import build_interval_layout
from .kernel_mask import GroupWindow
from .segment_canvas import ClassAxis, build_classes_layout, classes_allowed, classes_mask_mod
from .tile_neighborhood import TileNeighborhood


def _canvas(value) -> tuple[int, ...]:
    canvas = (value,) if is_int(value) else value
    if (
        not isinstance(canvas, (tuple, list))
        or not 1 <= len(canvas) <= 3
        or not all(is_int(n) and n >= 1 for n in canvas)
    ):
        raise ValueError(f"canvas must be 1 to 3 positive ints, got {value!r}")
    return tuple(int(n) for n in canvas)


class _ClassPattern(Pattern):
    """What the three patterns share: ``class_axes`` (one :class:`ClassAxis` per canvas axis)
    define everything else."""

    canvas: tuple[int, ...]

    @property
    def class_axes(self) -> tuple[ClassAxis, ...]:
        raise NotImplementedError

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        return classes_mask_mod(self.canvas, self.class_axes)

    def coords_allowed(self, q_coords, k_coords):
        """Elementwise: may the query at canvas coordinates ``q_coords`` see the key at
        ``k_coords`` (one integer tensor per axis)?"""
        return classes_allowed(self.class_axes, q_coords, k_coords)

    def kernel_mask(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        return None

    @property
    def can_tile(self) -> bool:
        # Raster order here (non-cyclic Windows override it: interval windows per axis).
        return False

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        return build_classes_layout(
            self.canvas, self.class_axes, block_q=block_q, block_kv=block_kv, device=device,
            mask_mod=self.mask_mod(q_len, kv_len),
        )


@dataclass(frozen=True, repr=False)
class Windows(_ClassPattern):
    """Non-overlapping windows on a canvas: each query sees the keys of its own window.

    Swin Transformer (Liu et al., 2021) partitions the canvas into windows of ``window``
    tokens per axis; its *shifted* windows roll the canvas by ``-shift`` before the partition
    and mask, inside each window, the tokens that the roll brought from the other end (the
    "region mask"). Both together are non-overlapping windows starting at ``shift - window``:
    per axis of length ``L`` (window ``M``, shift ``s``), a pair is allowed iff
    ``floor((y_q + M - s) / M) == floor((y_k + M - s) / M)``, i.e. the segments
    ``[0, s), [s, s + M), ..., [.., L)`` (the first and last may be short).

    ``cyclic=True`` keeps the roll and drops the region mask (HiDiffusion's shifted windows,
    Swin without its mask): the windows wrap around the canvas, allowed iff
    ``floor(((y_q - s) mod L) / M) == floor(((y_k - s) mod L) / M)``; it needs ``L % M == 0``.

    A pair is allowed iff it is allowed on every axis.

    Args:
        canvas: canvas shape, 1 to 3 axes; tokens are flat in raster (row-major) order.
        window: window size ``M`` per axis (an int applies to every axis); ``1 <= M <= L``.
        shift: per axis, ``0 <= s < M``.
        cyclic: per axis, whether the windows wrap around (then ``L % M == 0``).

    Lengths: ``q_len == kv_len == prod(canvas)``.

    Unshifted, non-cyclic windows that divide the canvas are ``TileNeighborhood(canvas,
    tile=window, window=1)``: they take its kernel mask and its tiled orders (``tile="auto"``
    makes every visited block full when a block holds whole windows or fits in one). Other
    non-cyclic windows (shifted, or not dividing the canvas) are per axis the interval
    :meth:`axis_interval`: their kernel mask is a
    :class:`~foveate.patterns.kernel_mask.GroupWindow`, and they run in tiled orders too. The
    layouts of non-cyclic windows come from :mod:`.interval_canvas`, those of cyclic ones from
    :mod:`.segment_canvas`; cyclic windows run in raster order, their partial blocks masked
    from a bitmask.
    """

    canvas: tuple[int, ...] = field()
    window: tuple[int, ...] = field()
    shift: tuple[int, ...] = 0  # type: ignore[assignment]
    cyclic: tuple[bool, ...] = False  # type: ignore[assignment]

    def __post_init__(self):
        canvas = _canvas(self.canvas)
        ndim = len(canvas)
        window = per_axis("window", self.window, ndim)
        shift = per_axis("shift", self.shift, ndim)
        cyclic = per_axis("cyclic", self.cyclic, ndim, kind=bool)
        for a, (n, m, s, c) in enumerate(zip(canvas, window, shift, cyclic)):
            if not 1 <= m <= n:
                raise ValueError(f"window={window}: need 1 <= window <= canvas on every axis "
                                 f"(axis {a}: {m} vs {n})")
            if not 0 <= s < m:
                raise ValueError(f"shift={shift}: need 0 <= shift < window on every axis (axis {a}: {s} vs {m})")
            if c and n % m:
                raise ValueError(f"cyclic={cyclic}: cyclic windows need canvas % window == 0 "
                                 f"(axis {a}: {n} % {m} = {n % m})")
        for name, value in (("canvas", canvas), ("window", window), ("shift", shift), ("cyclic", cyclic)):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        parts = [f"canvas={self.canvas}", f"window={self.window}"]
        if any(self.shift):
            parts.append(f"shift={self.shift}")
        if any(self.cyclic):
            parts.append(f"cyclic={self.cyclic}")
        return f"Windows({', '.join(parts)})"

    @classmethod
    def rolled(cls, canvas, window, shift) -> Pattern:
        """Swin's shifted windows on tokens already rolled by ``-shift`` (what Swin's code does
        before its window partition: ``torch.roll(x, -shift)``): aligned windows of ``window``,
        the last one per axis split by Swin's region mask at ``L - shift``. The mask of
        ``Windows(canvas, window, shift)`` with every coordinate moved by ``-shift`` (mod ``L``),
        as ``Windows(canvas, window) & Windows(canvas, L - shift)``: its windows start on block
        boundaries, so its tiled orders leave few partial blocks (16x64x64, 8x8x8, shift 4: 1440
        blocks, 180 partial, 0.94 of the ideal by the simulator, against 3600 partial blocks for
        the unrolled form). The canvas must be a multiple of the window on every axis."""
        plain = cls(canvas, window)
        if plain.aligned is None:
            raise ValueError(f"canvas={plain.canvas}, window={plain.window}: rolled windows need canvas % window == 0 "
                             "on every axis")
        shift = per_axis("shift", shift, len(plain.canvas))
        for a, (m, s) in enumerate(zip(plain.window, shift)):
            if not 0 <= s < m:
                raise ValueError(f"shift={shift}: need 0 <= shift < window on every axis (axis {a}: {s} vs {m})")
        if not any(shift):
            return plain
        return plain & cls(plain.canvas, tuple(n - s if s else n for n, s in zip(plain.canvas, shift)))

    @property
    def aligned(self) -> TileNeighborhood | None:
        """The same keys as a :class:`TileNeighborhood` (one tile per window), when the windows
        are unshifted, not cyclic and divide the canvas; else ``None``."""
        if any(self.shift) or any(self.cyclic) or any(n % m for n, m in zip(self.canvas, self.window)):
            return None
        return TileNeighborhood(self.canvas, self.window, 1)

    @property
    def can_tile(self) -> bool:  # type: ignore[override]
        return not any(self.cyclic)

    @property
    def axes(self):
        """The equivalent neighborhood's axes (aligned windows: :attr:`aligned`), what the
        tile choice reads; ``None`` for other windows (it reads their :meth:`axis_interval`)."""
        aligned = self.aligned
        return None if aligned is None else aligned.axes

    def axis_interval(self, axis: int, x: torch.Tensor):
        """``(start, end)``: the segment of key coordinates of the query at coordinate ``x``
        along ``axis`` (non-cyclic windows: the window of ``M`` from ``s - M``, cut at the
        borders)."""
        n, m, s = self.canvas[axis], self.window[axis], self.shift[axis]
        if self.cyclic[axis]:
            raise ValueError(f"{self!r}: cyclic windows are not an interval on axis {axis}")
        first = ((x + (m - s)) // m) * m - (m - s)
        return torch.clamp(first, min=0), torch.clamp(first + m, max=n)

    def kernel_mask(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        aligned = self.aligned
        if aligned is not None:
            return aligned.kernel_mask(q_len, kv_len)
        if any(self.cyclic):
            return None
        # Per axis (W, S, P, Q): groups of M from s - M (P = M - s), each seeing its own window.
        return GroupWindow(self.canvas, tuple((m, m, (m - s) % m, (m - s) % m)
                                              for m, s in zip(self.window, self.shift)))

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if any(self.cyclic):  # (raster order: can_tile is False)
            return super()._build(q_len, kv_len, block_q, block_kv, device, tile)
        # Intervals per axis: the interval builder, raster or tiled (the same layout as the class
        # builder's in raster order, and faster: a product of per-axis lists where blocks are tiles).
        return build_interval_layout(self, block_q=block_q, block_kv=block_kv, device=device, tile=tile)

    @property
    def class_axes(self) -> tuple[ClassAxis, ...]:
        return tuple(
            ClassAxis(n, n - s, m, n // m) if c else ClassAxis(n, m - s, m)
            for n, m, s, c in zip(self.canvas, self.window, self.shift, self.cyclic)
        )


@dataclass(frozen=True, repr=False)
class Axial(_ClassPattern):
    """Axial attention (Ho et al., 2019; Wang et al., 2020): each query sees the keys that
    share all its coordinates except along ``axes``, e.g. ``axes=(1,)`` on ``(H, W)`` is its
    row, ``axes=(0,)`` its column, ``axes=(0, 2)`` on ``(T, H, W)`` the plane of its row.

    Args:
        canvas: canvas shape, 1 to 3 axes; tokens are flat in raster (row-major) order.
        axes: the attended axes, an int or a tuple of distinct ints in ``[-ndim, ndim)``.

    Lengths: ``q_len == kv_len == prod(canvas)``.
    """

    canvas: tuple[int, ...] = field()
    axes: tuple[int, ...] = field()

    def __post_init__(self):
        canvas = _canvas(self.canvas)
        ndim = len(canvas)
        axes = (self.axes,) if is_int(self.axes) else self.axes
        if not isinstance(axes, (tuple, list)) or not all(is_int(a) for a in axes):
            raise TypeError(f"axes must be an int or a tuple of ints, got {self.axes!r}")
        if not axes or not all(-ndim <= a < ndim for a in axes):
            raise ValueError(f"axes={self.axes!r}: need one or more axes in [-{ndim}, {ndim}) for canvas={canvas}")
        norm = tuple(sorted(int(a) % ndim for a in axes))
        if len(set(norm)) != len(norm):
            raise ValueError(f"axes={self.axes!r}: an axis is named twice")
        object.__setattr__(self, "canvas", canvas)
        object.__setattr__(self, "axes", norm)

    def __repr__(self) -> str:
        return f"Axial(canvas={self.canvas}, axes={self.axes})"

    @property
    def class_axes(self) -> tuple[ClassAxis, ...]:
        # An attended axis: one class (y // L == 0); any other: the coordinate itself.
        return tuple(ClassAxis(n, 0, n if a in self.axes else 1) for a, n in enumerate(self.canvas))


@dataclass(frozen=True, repr=False)
class Grid(_ClassPattern):
    """MaxViT's grid attention (Tu et al., 2022): the canvas is split into a ``grid`` of
    ``G`` cells per axis, each of ``L / G`` tokens, and a query sees the keys at the same
    place in every cell: per axis, ``y_q = y_k (mod L / G)`` (a sparse, global mixing; the
    same as ``Neighborhood(canvas, kernel=G, dilation=L // G)``).

    Args:
        canvas: canvas shape, 1 to 3 axes; tokens are flat in raster (row-major) order.
        grid: ``G`` per axis (an int applies to every axis); ``1 <= G`` and ``L % G == 0``.

    Lengths: ``q_len == kv_len == prod(canvas)``.
    """

    canvas: tuple[int, ...] = field()
    grid: tuple[int, ...] = field()

    def __post_init__(self):
        canvas = _canvas(self.canvas)
        grid = per_axis("grid", self.grid, len(canvas))
        for a, (n, g) in enumerate(zip(canvas, grid)):
            if g < 1 or n % g:
                raise ValueError(f"grid={grid}: need grid >= 1 dividing the canvas on every axis "
                                 f"(axis {a}: {g} vs {n})")
        object.__setattr__(self, "canvas", canvas)
        object.__setattr__(self, "grid", grid)

    def __repr__(self) -> str:
        return f"Grid(canvas={self.canvas}, grid={self.grid})"

    @property
    def class_axes(self) -> tuple[ClassAxis, ...]:
        return tuple(ClassAxis(n, 0, 1, n // g) for n, g in zip(self.canvas, self.grid))


__all__ = ["Windows", "Axial", "Grid"]
