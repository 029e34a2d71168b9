"""The pattern protocol and its composition (``a | b``, ``a & b``).

A pattern is an immutable, hashable description of which (query, key) pairs may interact.
Its one source of truth is :meth:`Pattern.mask_mod`; everything else (block layouts, kernel
masks, drawings, the simulator) is derived from it or checked against it.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from ..layout import BlockLayout
from .kernel_mask import KernelMask

#: ``mask_mod(b, h, q_idx, kv_idx) -> BoolTensor``; the arguments are integer tensors that
#: broadcast against each other (flat token indices in raster order, from 0).
MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Pattern:
    """Base class of all attention patterns.

    Subclasses are frozen dataclasses (equality, hashing and ``repr`` come from their
    fields) and implement :meth:`check_lengths`, :meth:`mask_mod` and :meth:`_build`.
    """

    #: Canvas shape for patterns defined on a 1-, 2- or 3-D grid of tokens; ``None`` for
    #: sequence patterns.
    canvas: tuple[int, ...] | None = None
    #: Keys after the canvas tokens that every query may see.
    extra_kv: int = 0
    #: Whether the layout depends on the inputs (content-selected patterns).
    content_dependent: bool = False
    #: ``(block_q, block_kv)`` a pattern must be built with (block-sparse masks), else ``None``.
    fixed_blocks: tuple[int, int] | None = None
    #: Whether layouts may be memoised per (pattern, lengths, blocks) across calls; ``False``
    #: for one-off patterns such as a content selection.
    cacheable: bool = True

    # -- lengths -----------------------------------------------------------------------
    def default_lengths(self) -> tuple[int, int] | None:
        """``(q_len, kv_len)`` implied by the pattern itself (canvas patterns), else ``None``."""
        if self.canvas is None:
            return None
        n = math.prod(self.canvas)
        return n, n + self.extra_kv

    def check_lengths(self, q_len: int, kv_len: int) -> None:
        """Raise ``ValueError`` unless the pattern can be applied to these lengths."""
        _check_length("q_len", q_len)
        _check_length("kv_len", kv_len)
        expected = self.default_lengths()
        if expected is not None and (q_len, kv_len) != expected:
            raise ValueError(
                f"{self!r} needs q_len={expected[0]} and kv_len={expected[1]} "
                f"(prod(canvas) and prod(canvas) + extra_kv); got q_len={q_len}, kv_len={kv_len}"
            )

    def check_batch_heads(self, batch: int, heads: int) -> None:
        """Raise ``ValueError`` unless the pattern fits this batch size and query head count
        (patterns that differ per batch or head); nothing to check by default."""

    def block_size_reason(self, block_q: int, block_kv: int) -> str | None:
        """Why the pattern cannot be built with these block sizes (``None`` if it can)."""
        fixed = self.fixed_blocks
        if fixed is not None and fixed != (block_q, block_kv):
            return f"runs {block_q}x{block_kv} blocks, the pattern has {fixed[0]}x{fixed[1]}"
        return None

    # -- the definition ----------------------------------------------------------------
    def mask_mod(self, q_len: int, kv_len: int) -> MaskMod:
        """The FlexAttention-style mask for these lengths: ``mm(b, h, q_idx, kv_idx) -> bool``."""
        raise NotImplementedError

    def kernel_mask(self, q_len: int, kv_len: int) -> "KernelMask | None":
        """The mask of the pairs inside partial blocks, as fused kernels take it: a
        :mod:`~foveate.patterns.kernel_mask` description (kinds and integers), or ``None`` when
        the pattern has none (the Triton backend then evaluates :meth:`mask_mod` into a packed
        bitmask of its partial blocks). It must allow exactly what :meth:`mask_mod` allows."""
        return None

    @property
    def can_tile(self) -> bool:
        """Whether :meth:`build` takes a ``tile`` (canvas patterns whose layouts know the tiled
        order: Neighborhood, TileNeighborhood, Halo, non-cyclic Windows and compositions of
        them)."""
        return False

    # -- compiled form -----------------------------------------------------------------
    def build(
        self,
        q_len: int,
        kv_len: int,
        *,
        block_q: int = 128,
        block_kv: int = 128,
        device: torch.device | str = "cpu",
        tile: tuple[int, ...] | None = None,
        q: torch.Tensor | None = None,
        k: torch.Tensor | None = None,
    ) -> BlockLayout:
        """Compile the pattern into a :class:`~foveate.layout.BlockLayout`.

        Blocks index tokens in raster order, or in tiled order when ``tile`` is given
        (Neighborhood patterns only): then the layout covers the tiled sequence, the canvas
        padded up to whole tiles (``layout.q_len`` may exceed ``q_len``), its ``mask_mod`` is
        the tiled mask (:class:`foveate.tiling.Tiled`) and ``block_q``/``block_kv`` must equal
        the tile size. Static patterns ignore ``q`` and ``k``.
        """
        self.check_lengths(q_len, kv_len)
        _check_length("block_q", block_q)
        _check_length("block_kv", block_kv)
        if tile is not None:
            self._check_tile(tile)
        return self._build(q_len, kv_len, block_q, block_kv, torch.device(device), tile)

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile) -> BlockLayout:
        # Generic fallback: evaluate mask_mod per block pair (bounded memory).
        from ..layout import layout_from_mask_mod

        if tile is not None:
            raise ValueError(f"tile={tile!r}: {type(self).__name__} has no canvas to tile")
        return layout_from_mask_mod(
            self.mask_mod(q_len, kv_len), q_len, kv_len, block_q=block_q, block_kv=block_kv,
            device=device,
        )

    def _check_tile(self, tile) -> None:
        if self.canvas is None:
            raise ValueError(f"tile={tile!r}: {self!r} is not a canvas pattern; use tile=None")
        if not self.can_tile:
            raise ValueError(f"tile={tile!r}: {self!r} cannot be tiled (every part of a composition must be a "
                             "canvas pattern); use tile=None")
        if (
            not isinstance(tile, tuple)
            or len(tile) != len(self.canvas)
            or not all(is_int(t) and t >= 1 for t in tile)
        ):
            raise ValueError(
                f"tile={tile!r}: expected a tuple of {len(self.canvas)} positive ints "
                f"(one per canvas axis of {self.canvas})"
            )

    # -- composition -------------------------------------------------------------------
    def __or__(self, other: "Pattern") -> "Pattern":
        from .compose import Union

        return Union.of(self, other)

    def __and__(self, other: "Pattern") -> "Pattern":
        from .compose import Intersection

        return Intersection.of(self, other)


def is_int(value) -> bool:
    """Whether ``value`` is an integer: a Python or NumPy int (any ``numbers.Integral``), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_length(name: str, value) -> None:
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def as_int(name: str, value, *, minimum: int | None = None) -> int:
    """Validate a scalar int argument (``bool`` is refused) and return it as a Python int."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def set_ints(pattern, **minimums) -> None:
    """Validate the named int fields of a frozen dataclass pattern (``None`` minimum: any
    value) and store them as Python ints (NumPy ints would otherwise reach hashes and reprs)."""
    for name, minimum in minimums.items():
        object.__setattr__(pattern, name, as_int(name, getattr(pattern, name), minimum=minimum))


def per_axis(name: str, value, ndim: int, kind: type = int) -> tuple:
    """Broadcast an int (or bool) or a per-axis tuple to a tuple of ``ndim`` entries."""
    if kind is bool:
        ok = lambda x: isinstance(x, bool)  # noqa: E731
    else:
        ok = is_int
    if ok(value):
        return (kind(value),) * ndim
    if isinstance(value, (tuple, list)) and len(value) == ndim and all(ok(x) for x in value):
        return tuple(kind(x) for x in value)
    raise TypeError(
        f"{name} must be {'a bool' if kind is bool else 'an int'} or a tuple of {ndim} "
        f"(one per canvas axis), got {value!r}"
    )
