"""The result of a content selection: :class:`SelectedBlocks`, an ordinary static pattern.

A content-selected pattern (:mod:`foveate.patterns.content_selected`: ``BlockTopK``,
``BlockTopP``, ``MoBA``, ``XAttention``) scores the key blocks of each query block from ``q`` and
``k`` and keeps the best; ``pattern.select(q, k)`` returns the blocks it kept as a
:class:`SelectedBlocks` for exactly those inputs (its layout, its block grid and its dense mask
can be inspected). On a canvas partition the blocks are taken in a padded tiled order, run as
:class:`_PaddedSelection`.
"""

from __future__ import annotations

import functools

import torch

from ..layout import EMPTY, FULL, PARTIAL, BlockLayout, grid_states
from ..selection import SelectionGeometry
from ..tiling.order import TiledOrder
from .tiled import Tiled
from .band import band_mask_mod
from .base import Pattern
from .kernel_mask import Band
from .causal import Causal
from .neighborhood import Neighborhood



class SelectedBlocks(Pattern):
    """The blocks a content-selected pattern chose for one set of inputs.

    ``selected`` is a bool tensor ``(B, H, nq, nkv)`` over query blocks of ``query_block`` tokens
    and key blocks of ``block`` tokens (``H`` = query heads); under ``causal``, the causal mask
    also applies inside the selected blocks. Layouts are built with block sizes that divide
    ``query_block`` and ``block``. Equality is identity (the object stands for one selection) and
    its layouts are not cached across calls.

    ``order``: the token order the blocks index. ``None``: the caller's order (a sequence, or a
    canvas in raster order). A :class:`~foveate.tiling.TiledOrder`: a canvas partition's tiled
    order, padding included; then ``q_len == kv_len == order.num_tokens``, ``mask_mod`` and
    ``build`` are in that order and never allow a padded key, and :meth:`dense_mask` gives the
    mask in the caller's raster order (or, with ``raster=False``, in the blocks' order). Given to
    :func:`foveate.attention` directly, such a selection takes ``q``, ``k``, ``v`` already in its
    order (``order.tile_tokens``), as :class:`~foveate.tiling.Tiled` patterns do; a
    content-selected pattern with a canvas permutes them itself.

    ``kv_lists``: the kv lists (``[counts, indices, full_counts, full_indices]``) of the layout
    at ``query_block x block`` blocks, when the selection kernel wrote them (then that layout's
    builder only adds the transposed lists, when the backward reads them).
    """

    cacheable = False

    def __init__(self, selected: torch.Tensor, *, q_len: int, kv_len: int, query_block: int, block: int,
                 causal: bool, source: Pattern | None = None, order: TiledOrder | None = None,
                 kv_lists: list[torch.Tensor] | None = None):
        if order is not None:
            if not isinstance(order, TiledOrder):
                raise TypeError(f"order must be a foveate.tiling.TiledOrder or None, got {type(order).__name__}")
            if (q_len, kv_len) != (order.num_tokens, order.num_tokens):
                raise ValueError(f"order={order!r} holds {order.num_tokens} tokens (padding included): q_len and "
                                 f"kv_len must both be that, got q_len={q_len}, kv_len={kv_len}")
            if causal:
                raise ValueError(f"causal=True: a selection in the tiled order {order!r} has no causal order")
        self.selected = selected
        self.q_len, self.kv_len = q_len, kv_len
        self.query_block, self.block = query_block, block
        self.causal = causal
        self.source = source
        self.order = order
        self._kv_lists = kv_lists
        self._layouts: dict = {}

    def __repr__(self) -> str:
        where = "" if self.order is None else f", order={self.order!r}"
        return (f"SelectedBlocks(shape={tuple(self.selected.shape)}, block=({self.query_block}, {self.block}), "
                f"causal={self.causal}{where}, from={self.source!r})")

    @property
    def runnable(self) -> Pattern:
        """The pattern the backends run for this selection: the selection itself, or, when its
        order pads the canvas, the same selection in the form of a tiled canvas pattern (same
        ``mask_mod`` and layouts; the Triton kernels then mask the padded keys of partial blocks
        with the canvas mask of :class:`~foveate.tiling.Tiled`). :func:`foveate.attention` hands
        the backends this."""
        if self.order is None or not self.order.has_padding:
            return self
        return _PaddedSelection(self)

    # -- the definition ------------------------------------------------------------------
    def check_lengths(self, q_len: int, kv_len: int) -> None:
        super().check_lengths(q_len, kv_len)
        if (q_len, kv_len) != (self.q_len, self.kv_len):
            raise ValueError(f"{self!r} was selected for q_len={self.q_len}, kv_len={self.kv_len}; "
                             f"got q_len={q_len}, kv_len={kv_len}")

    def check_batch_heads(self, batch: int, heads: int) -> None:
        b, h = self.selected.shape[:2]
        if b not in (1, batch) or h not in (1, heads):
            raise ValueError(f"{self!r}: selected for (batch, heads) = {(b, h)}, got {(batch, heads)}")

    def block_size_reason(self, block_q: int, block_kv: int) -> str | None:
        return _divisor_reason(self.query_block, self.block, block_q, block_kv)

    def _real_keys(self, device) -> torch.Tensor | None:
        """``(kv_len,)`` bool: the positions that are canvas tokens; ``None`` without padding."""
        if self.order is None or not self.order.has_padding:
            return None
        return self.order.permutation(device)[0] >= 0

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        sel = self.selected
        per_batch, per_head = sel.shape[0] > 1, sel.shape[1] > 1
        qb, kb = self.query_block, self.block
        causal = band_mask_mod(q_len, kv_len, None, 0) if self.causal else None
        real = self._real_keys(sel.device)

        def mask_mod(b, h, q_idx, kv_idx):
            s = sel.to(q_idx.device)
            out = s[b if per_batch else 0, h if per_head else 0, q_idx // qb, kv_idx // kb]
            if real is not None:  # a padded key is no token
                out = out & real.to(kv_idx.device)[kv_idx]
            return out & causal(b, h, q_idx, kv_idx) if causal is not None else out

        return mask_mod

    def kernel_mask(self, q_len: int, kv_len: int) -> Band | None:
        self.check_lengths(q_len, kv_len)
        if self.order is not None and self.order.has_padding:
            return None  # padded keys inside blocks: :attr:`runnable` masks them as a tiled canvas
        # whole blocks, causal inside when asked
        return Band(kv_len - q_len, None, 0 if self.causal else None)

    # -- compiled form -------------------------------------------------------------------
    def block_grid(self, block_q: int, block_kv: int) -> torch.Tensor:
        """``int8`` ``(B, H, nq, nkv)`` at these block sizes: 0 empty, 1 partial, 2 full."""
        return grid_states(*self._grid_and_states(block_q, block_kv))

    def _grid_and_states(self, block_q: int, block_kv: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`block_grid` in parts: the bool selection at these block sizes and the int8
        ``(nq, nkv)`` state of each block were it selected (``None``: every one full)."""
        reason = self.block_size_reason(block_q, block_kv)
        if reason is not None:
            raise ValueError(f"{self!r}: {reason}")
        nq, nkv = -(-self.q_len // block_q), -(-self.kv_len // block_kv)
        grid = self.selected
        if self.query_block != block_q:
            grid = grid.repeat_interleave(self.query_block // block_q, dim=2)[:, :, :nq]
        if self.block != block_kv:
            grid = grid.repeat_interleave(self.block // block_kv, dim=3)[:, :, :, :nkv]
        real = self._real_keys(grid.device)
        if real is not None:  # key blocks with padding are partial, of padding alone empty
            count = torch.nn.functional.pad(real.int(), (0, nkv * block_kv - self.kv_len)).view(nkv, block_kv).sum(-1)
            states = torch.where(count == block_kv, FULL, torch.where(count > 0, PARTIAL, EMPTY))
            return grid, states.to(torch.int8).expand(nq, nkv)  # (the same for every query block)
        if not self.causal:
            return grid, None
        return grid, _causal_block_states(self.q_len, self.kv_len, block_q, block_kv, str(grid.device))

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {self!r} has no canvas to tile")
        key = (block_q, block_kv, str(device))
        if key not in self._layouts:
            # The selection and its blocks' states go to the list builder apart (the combined
            # grid is never written), and the backward's transposed lists are built when it
            # first reads them: a forward alone (inference) never pays for them.
            grid, states = self._grid_and_states(block_q, block_kv)
            grid = grid.to(device)
            own_blocks = (block_q, block_kv) == (self.query_block, self.block)
            row_lists = (self._kv_lists if own_blocks and self._kv_lists is not None
                         and self._kv_lists[0].device == grid.device else None)
            self._layouts[key] = BlockLayout.from_block_grid(
                grid, states=None if states is None else states.to(device), block_q=block_q,
                block_kv=block_kv, q_len=q_len, kv_len=kv_len, mask_mod=self.mask_mod(q_len, kv_len),
                lazy_transposed=True, row_lists=row_lists,
            )
        return self._layouts[key]

    def dense_mask(self, *, raster: bool = True) -> torch.Tensor:
        """bool ``(B, H, Nq, Nkv)``: the pairs this selection allows (small inputs).

        ``raster=True``: in the caller's token order, ``Nq = Nkv = prod(canvas)`` for a tiled
        selection (canvas raster order). ``raster=False``: in the order of the blocks
        (``order``, padding included: ``q_len x kv_len``). The same without an ``order``."""
        b, h = self.selected.shape[:2]
        mm = self.mask_mod(self.q_len, self.kv_len)
        dev = self.selected.device
        q_idx, kv_idx = torch.arange(self.q_len, device=dev), torch.arange(self.kv_len, device=dev)
        if raster and self.order is not None:  # the tiled position of each raster token
            q_idx = kv_idx = self.order.permutation(dev)[1]
        mask = mm(torch.arange(b, device=dev)[:, None, None, None], torch.arange(h, device=dev)[None, :, None, None],
                  q_idx[:, None], kv_idx[None, :])
        return torch.broadcast_to(mask, (b, h, q_idx.numel(), kv_idx.numel()))

    def block_density(self) -> float:
        """Selected blocks over the blocks of the dense counterpart (the causal blocks when
        ``causal``; on a padded canvas, the blocks holding tokens), at the selection's own
        block sizes."""
        tiling = None if self.order is None else (self.order.canvas, self.order.tile)
        geometry = SelectionGeometry(self.q_len, self.kv_len, self.query_block, self.block, self.causal, 0, 0,
                                     tiling)
        total = geometry.candidates(self.selected.device).sum() * self.selected.shape[0] * self.selected.shape[1]
        return float(self.selected.sum() / total.clamp_min(1))


class _PaddedSelection(Tiled):
    """A :class:`SelectedBlocks` in a padded tiled order, as the backends run it: a
    :class:`~foveate.tiling.Tiled` dense canvas pattern (every real key, no padded one) restricted
    to the selected blocks. Its ``mask_mod`` and layouts are the selection's; being a tiled
    canvas pattern gives the Triton kernels the mask that leaves the padded keys of a partial
    block out (a plain selection's in-block mask allows every pair)."""

    cacheable = False

    def __init__(self, selection: SelectedBlocks):
        canvas = selection.order.canvas
        super().__init__(Neighborhood(canvas, kernel=canvas), selection.order.tile)
        object.__setattr__(self, "selection", selection)

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return repr(self.selection)

    def check_lengths(self, q_len: int, kv_len: int) -> None:
        self.selection.check_lengths(q_len, kv_len)

    def check_batch_heads(self, batch: int, heads: int) -> None:
        self.selection.check_batch_heads(batch, heads)

    def block_size_reason(self, block_q: int, block_kv: int) -> str | None:
        return self.selection.block_size_reason(block_q, block_kv)

    def mask_mod(self, q_len: int, kv_len: int):
        return self.selection.mask_mod(q_len, kv_len)

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        return self.selection._build(q_len, kv_len, block_q, block_kv, device, tile)


def _divisor_reason(query_block: int, block: int, block_q: int, block_kv: int) -> str | None:
    if query_block % block_q or block % block_kv:
        return (f"runs {block_q}x{block_kv} blocks, which do not divide the selection's "
                f"{query_block}x{block} blocks")
    return None


@functools.lru_cache(maxsize=16)
def _causal_block_states(q_len: int, kv_len: int, block_q: int, block_kv: int, device: str) -> torch.Tensor:
    """``(nq, nkv)`` int8: the block states (0 empty, 1 partial, 2 full) of the Causal pattern's
    own layout; memoised, as the same lengths come back at every layer."""
    layout = Causal().build(q_len, kv_len, block_q=block_q, block_kv=block_kv, device=device)
    return layout.to_dense()[0, 0]
