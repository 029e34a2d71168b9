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

import torch


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
class Chunks(KernelMask):
    """Chunk-causal: key ``j`` allowed for query ``i`` when ``p >= 0`` and ``j // size <= p //
    size``, ``p = i + offset`` (the key's chunk is not after the query's)."""

    offset: int
    size: int


@dataclass(frozen=True)
class PowerBlocks(KernelMask):
    """PowerAttention's block rule: with ``d = p // block - j // block`` (``p = i + offset``),
    key ``j`` allowed for query ``i`` when ``d >= 0`` and (``j // block < sink``, or ``d <
    window``, or ``d`` is a power of two). Causality inside a block is a separate :class:`Band`."""

    offset: int
    block: int
    window: int
    sink: int


@dataclass(frozen=True)
class FrameBands(KernelMask):
    """Bands between frames whose width falls with the frame distance (Radial attention).
    Positions are ``frame`` tokens per frame: query ``i`` in frame ``i // frame`` at offset
    ``r = i % frame``, key ``j`` likewise (frame ``kf``, offset ``c``), frame distance ``d``,
    group ``g = d.bit_length()``. Key ``j`` allowed when ``kf < sink``, or ``|c - r| <=
    widths[g]`` and ``d % splits[g] == 0``. At most :data:`MAX_GROUPS` groups (frame
    distances below ``2 ** (MAX_GROUPS - 1)``); self-attention positions (no offset)."""

    frame: int
    sink: int
    widths: tuple[int, ...]
    splits: tuple[int, ...]

    MAX_GROUPS = 8

    def __post_init__(self):
        if len(self.widths) != len(self.splits) or not 1 <= len(self.widths) <= self.MAX_GROUPS:
            raise ValueError(f"FrameBands needs 1 to {self.MAX_GROUPS} groups of (width, split), got "
                             f"{len(self.widths)} widths and {len(self.splits)} splits")
        if min(self.splits) < 1:
            raise ValueError(f"FrameBands splits must be >= 1, got {self.splits}")


class TokenIds:
    """Per-token segment ids that a :class:`SegmentMask` mask reads from memory (the one kind of
    kernel mask with a tensor operand), with an optional rule table between segments.

    ``q_ids`` ``(B|1, q_len)`` and ``kv_ids`` ``(B|1, kv_len)``: non-negative integer ids per
    batch element (or one row for all); ``rules``: ``None`` (a key is allowed when its id equals
    the query's) or an int ``(S, S)`` table over ids ``0 .. S-1``, ``rules[a][b]`` for a query
    of segment ``a`` and a key of segment ``b``: :data:`NONE`, :data:`FULL` or :data:`CAUSAL`.
    Compared by identity: a pattern makes one and hands the same object out on every call.
    """

    NONE, FULL, CAUSAL = 0, 1, 2
    #: Ids past each end: the kernels read them for positions past the lengths (padded query
    #: rows, the last key block's tail), so their loads need no bounds.
    PAD = 512
    #: Segments a rule table may have on the kernels (2 bits per rule in one int32 word).
    MAX_SEGMENTS = 16

    def __init__(self, q_ids: torch.Tensor, kv_ids: torch.Tensor, rules: torch.Tensor | None = None):
        if q_ids.dim() != 2 or kv_ids.dim() != 2 or q_ids.shape[0] != kv_ids.shape[0]:
            raise ValueError(f"q_ids and kv_ids must be (B|1, length) with the same B, got {tuple(q_ids.shape)} "
                             f"and {tuple(kv_ids.shape)}")
        self.q_ids, self.kv_ids = q_ids.to(torch.int32).cpu(), kv_ids.to(torch.int32).cpu()
        self.rules = None if rules is None else rules.to(torch.int32).cpu()
        self._operands: dict = {}

    def __repr__(self) -> str:
        table = "" if self.rules is None else f", rules={self.n_segments}x{self.n_segments}"
        return f"TokenIds(batch={self.batch}, q_len={self.q_ids.shape[1]}, kv_len={self.kv_ids.shape[1]}{table})"

    @property
    def batch(self) -> int:
        return self.q_ids.shape[0]

    @property
    def n_segments(self) -> int:
        """``S``, the rule table's side (0 without a table)."""
        return 0 if self.rules is None else self.rules.shape[0]

    def packed_rules(self) -> torch.Tensor:
        """The table as the kernels read it: per query segment ``a`` one int32 word, bit ``b``
        set when ``rules[a][b]`` is full, bit ``16 + b`` when it is causal (at most
        :data:`MAX_SEGMENTS` segments)."""
        if self.n_segments > self.MAX_SEGMENTS:
            raise ValueError(f"{self.n_segments} segments: the kernels' table holds at most {self.MAX_SEGMENTS}")
        bits = 1 << torch.arange(self.n_segments, dtype=torch.int64)
        rules = self.rules.to(torch.int64)
        words = ((rules == self.FULL) * bits).sum(1) + (((rules == self.CAUSAL) * bits).sum(1) << 16)
        return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)

    def operand(self, device: torch.device | str) -> torch.Tensor:
        """The int32 ``(B|1, q_len + PAD + kv_len + PAD + S)`` tensor the kernels read: query
        ids (then -1), key ids (then -2), the packed rule table (:meth:`packed_rules`); kept per
        device."""
        device = torch.device(device)
        known = self._operands.get(device)
        if known is None:
            b = self.batch
            parts = [self.q_ids, torch.full((b, self.PAD), -1, dtype=torch.int32), self.kv_ids,
                     torch.full((b, self.PAD), -2, dtype=torch.int32)]
            if self.rules is not None:
                parts.append(self.packed_rules().reshape(1, -1).expand(b, -1))
            known = self._operands[device] = torch.cat(parts, dim=1).contiguous().to(device)
        return known


@dataclass(frozen=True)
class SegmentMask(KernelMask):
    """Key ``j`` allowed for query ``i`` by their segment ids (``ids``, a :class:`TokenIds`):
    when the ids are equal (no rule table), else by ``rules[id(i)][id(j)]``: none, full, or
    causal (``j <= i + offset``). A description holds at most one :class:`TokenIds`."""

    ids: TokenIds
    offset: int


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
class GroupWindow(KernelMask):
    """Windows of groups of queries, cut at the canvas borders (HaloNet's blocks with their
    halos, Swin's shifted windows in the original coordinates): per canvas axis ``(W, S, P,
    Q)``, the query at coordinate ``x`` is in group ``g = (x + P) // S`` and sees the keys
    ``[g * S - Q, g * S - Q + W)`` inside ``[0, L)`` (cut, not moved inward as a
    :class:`Window` is); a key is seen when it is on every axis, and the ``extra_kv`` keys
    after the canvas by every query. ``W >= 0``, ``S >= 1``, ``P >= 0``. Coordinates come from
    the token order, as a :class:`Window`'s."""

    canvas: tuple[int, ...]
    axes: tuple[tuple[int, int, int, int], ...]
    extra_kv: int = 0

    def __post_init__(self):
        if len(self.axes) != len(self.canvas) or any(
                len(axis) != 4 or axis[0] < 0 or axis[1] < 1 or axis[2] < 0 for axis in self.axes):
            raise ValueError(f"GroupWindow needs one (W >= 0, S >= 1, P >= 0, Q) per axis of canvas={self.canvas}, "
                             f"got {self.axes}")


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


__all__ = ["KernelMask", "Band", "Rect", "Chunks", "PowerBlocks", "TokenIds", "SegmentMask", "Window", "GroupWindow",
           "AnyOf", "AllOf", "Tiles"]
