"""Kernel masks: what a pattern tells a fused kernel about the pairs inside its partial blocks.

A block layout says which blocks a query block visits and which of them are full; inside a
*partial* block a kernel still needs the mask of each (query, key) pair. A pattern hands it over
as a small, Triton-free description, returned by :meth:`Pattern.kernel_mask
<foveate.patterns.Pattern.kernel_mask>`: a tree of the node kinds below, plain integers in
its leaves. A backend lowers the tree to its own form (the Triton backend: coordinate
arithmetic, :mod:`foveate.backends.triton.lower`), and never looks at the pattern's class.

Positions are those of the pattern's token order (flat raster order for sequence and canvas
patterns, the tiled order under :class:`Tiles`), from 0; bottom-right alignment is folded into
the integers (``Band.offset``). Every description must allow exactly the pairs that the
pattern's ``mask_mod`` allows: the tests check each against brute force.

A pattern whose mask is none of these returns ``None``; the Triton backend then masks its
partial blocks with a packed bitmask evaluated from ``mask_mod`` (:mod:`foveate.bitmask`).
A new kind of mask is one node class here plus one predicate module in the backend.
"""

from __future__ import annotations

from dataclasses import dataclass


class KernelMask:
    """Base class of the node kinds (frozen dataclasses: equal trees compare equal)."""

    def leaves(self) -> tuple["KernelMask", ...]:
        """The leaf nodes, left to right."""
        return (self,)


@dataclass(frozen=True)
class Band(KernelMask):
    """Key ``j`` allowed for query ``i`` when ``p - left <= j <= p + right``, ``p = i + offset``;
    ``None`` leaves a side unbounded (``Band(offset, None, None)``: every pair)."""

    offset: int
    left: int | None
    right: int | None


@dataclass(frozen=True)
class Rect(KernelMask):
    """Queries in ``[q_start, q_end)`` with keys in ``[kv_start, kv_end)`` (half-open ranges of
    positions; an end past the sequence is the sequence end)."""

    q_start: int
    q_end: int
    kv_start: int
    kv_end: int


@dataclass(frozen=True)
class Window(KernelMask):
    """A neighborhood on a canvas (:class:`~foveate.patterns.Neighborhood`'s definition): per
    axis ``(kernel, dilation, stride, causal)`` over canvas coordinates, and the ``extra_kv``
    keys after the canvas seen by every query. Coordinates come from the token order: raster
    order of ``canvas``, or the tiles of an enclosing :class:`Tiles`."""

    canvas: tuple[int, ...]
    axes: tuple[tuple[int, int, int, bool], ...]
    extra_kv: int = 0


@dataclass(frozen=True)
class AnyOf(KernelMask):
    """Pairs allowed by any part (``a | b``)."""

    parts: tuple[KernelMask, ...]

    def leaves(self):
        return tuple(leaf for part in self.parts for leaf in part.leaves())


@dataclass(frozen=True)
class AllOf(KernelMask):
    """Pairs allowed by every part (``a & b``)."""

    parts: tuple[KernelMask, ...]

    def leaves(self):
        return tuple(leaf for part in self.parts for leaf in part.leaves())


@dataclass(frozen=True)
class Tiles(KernelMask):
    """``inner`` on the canvas seen in the tiled token order of ``tile``
    (:class:`~foveate.tiling.TiledOrder`): padded keys are never allowed, a padded query acts as
    the nearest canvas query, the ``extra_kv`` keys follow the padded canvas. Only at the root."""

    inner: KernelMask
    canvas: tuple[int, ...]
    tile: tuple[int, ...]
    extra_kv: int = 0

    def leaves(self):
        return self.inner.leaves()


__all__ = ["KernelMask", "Band", "Rect", "Window", "AnyOf", "AllOf", "Tiles"]
