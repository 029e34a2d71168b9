"""Content-selected block sparsity (MoBA, XAttention, SpargeAttn style).

:class:`BlockTopK` and :class:`BlockTopP` are patterns whose blocks depend on the inputs: for
each query block (and batch and query head) they score every key block from ``q`` and ``k`` and
keep the best. ``pattern.select(q, k)`` runs that selection and returns a
:class:`SelectedBlocks`, an ordinary static pattern for exactly those inputs (its layout, its
block grid and its dense mask can be inspected); :func:`foveate.attention` does this on every
call. The selection is not differentiated (as in MoBA): gradients flow through the attention on
the selected blocks.

On a video or image canvas (``canvas=(T, H, W)`` or ``(H, W)``), ``partition`` makes each key
block one piece of the canvas (VMoBA's 1-D, 2-D and 3-D partitions; :mod:`foveate.selection.partition`):
the tokens are put in the tiled order of that piece (:class:`foveate.tiling.TiledOrder`), the
selection and the attention run in that order, and :func:`foveate.attention` returns the output
in the caller's order.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch

from ..layout import EMPTY, FULL, PARTIAL, BlockLayout, grid_states
from ..selection import (
    SelectionGeometry,
    antidiagonal_mass,
    mean_mass,
    mean_topk,
    mean_topk_with_lists,
    select_topk,
    select_topp,
)
from ..selection.partition import PARTITIONS, partition_tile
from ..selection.scores import check_stride
from ..settings import policy
from ..tiling import Tiled, TiledOrder
from .band import band_mask_mod
from .base import Pattern, is_int, set_ints
from .kernel_mask import Band
from .causal import Causal
from .neighborhood import Neighborhood

_SCORES = ("mean", "antidiagonal")



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


@dataclass(frozen=True, kw_only=True, repr=False)
class _ContentSelected(Pattern):
    """What :class:`BlockTopK` and :class:`BlockTopP` share: block sizes, score, forced blocks,
    the canvas and its partition."""

    block: int = 128
    score: str = "mean"
    stride: int = 8
    sink_blocks: int = 1
    local_blocks: int = 1
    causal: bool = False
    query_block: int | None = None
    canvas: tuple[int, ...] | None = None
    partition: str | None = None

    content_dependent = True

    def __post_init__(self):
        set_ints(self, block=1, stride=1, sink_blocks=0, local_blocks=0)
        if self.query_block is not None:
            set_ints(self, query_block=1)
        if not isinstance(self.causal, bool):
            raise TypeError(f"causal must be a bool, got {type(self.causal).__name__} {self.causal!r}")
        if self.score not in _SCORES:
            raise ValueError(f"score={self.score!r}: expected one of {_SCORES}")
        if self.score == "antidiagonal":
            check_stride(self.stride, self.q_block, self.block)
        self._check_canvas()

    def _check_canvas(self) -> None:
        canvas, partition = self.canvas, self.partition
        if canvas is None:
            if partition is not None:
                raise ValueError(f"partition={partition!r} needs a canvas: give canvas=(T, H, W) or (H, W)")
            return
        if (not isinstance(canvas, (tuple, list)) or not 2 <= len(canvas) <= 3
                or not all(is_int(n) for n in canvas)):
            raise TypeError(f"canvas must be a tuple of 2 or 3 ints, (H, W) or (T, H, W), got {canvas!r}")
        if min(canvas) < 1:
            raise ValueError(f"canvas={tuple(canvas)}: every side must be >= 1")
        canvas = tuple(int(n) for n in canvas)
        if partition is None:
            partition = f"{len(canvas)}d"
        if not isinstance(partition, str) or partition not in PARTITIONS:
            raise ValueError(f"partition={partition!r}: expected one of {PARTITIONS}")
        if self.causal and partition != "1d":
            raise ValueError(f"causal=True needs partition='1d' (raster order); partition={partition!r} permutes "
                             f"the canvas tokens, which then have no causal order")
        partition_tile(canvas, partition, self.block)  # raises if the partition cannot be made
        object.__setattr__(self, "canvas", canvas)
        object.__setattr__(self, "partition", partition)

    def __repr__(self) -> str:
        # The budget first, then only the settings that differ from the defaults.
        fields = dataclasses.fields(self)
        budget = [f for f in fields if not f.kw_only]
        rest = [f"{f.name}={getattr(self, f.name)!r}" for f in fields
                if f.kw_only and getattr(self, f.name) != f.default]
        args = [repr(getattr(self, f.name)) for f in budget] + rest
        return f"{type(self).__name__}({', '.join(args)})"

    @property
    def q_block(self) -> int:
        """Query block size of the selection (``query_block``, defaulting to ``block``)."""
        return self.query_block if self.query_block is not None else self.block

    @property
    def tile(self) -> tuple[int, ...] | None:
        """The canvas tile of a key block under ``partition`` (``None``: raster order, i.e. no
        canvas or ``"1d"``)."""
        return None if self.canvas is None else partition_tile(self.canvas, self.partition, self.block)

    @property
    def order(self) -> TiledOrder | None:
        """The token order the blocks are taken in: ``TiledOrder(canvas, tile)``, or ``None``
        for the caller's own (raster) order."""
        tile = self.tile
        return None if tile is None else TiledOrder(self.canvas, tile)

    def _check_tile(self, tile) -> None:
        raise ValueError(f"tile={tile!r}: {self!r} orders the tokens by its partition; use tile='auto' or None")

    def mask_mod(self, q_len: int, kv_len: int):
        raise ValueError(f"{self!r} depends on the inputs: use pattern.select(q, k).mask_mod(q_len, kv_len)")

    def block_size_reason(self, block_q: int, block_kv: int) -> str | None:
        return _divisor_reason(self.q_block, self.block, block_q, block_kv)

    def build(self, q_len, kv_len, *, block_q=128, block_kv=128, device="cpu", tile=None, q=None, k=None):
        """The layout of ``self.select(q, k)``; with a canvas partition it is in the selection's
        tiled order (``order.num_tokens`` per side, padding included)."""
        if q is None or k is None:
            raise ValueError(f"{self!r} depends on the inputs: build it with q= and k=")
        selection = self.select(q, k)
        if selection.order is not None:
            self.check_lengths(q_len, kv_len)
            q_len, kv_len = selection.q_len, selection.kv_len
        return selection.build(q_len, kv_len, block_q=block_q, block_kv=block_kv, device=device, tile=tile)

    def geometry(self, q_len: int, kv_len: int) -> SelectionGeometry:
        """The selection's geometry for these lengths (in the blocks' order: with a tiled
        ``order``, its ``num_tokens``)."""
        order = self.order
        return SelectionGeometry(q_len, kv_len, self.q_block, self.block, self.causal,
                                 self.sink_blocks, self.local_blocks,
                                 None if order is None else (order.canvas, order.tile))

    def select(self, q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None,
               ordered: bool = False) -> SelectedBlocks:
        """Score and select the blocks for ``q`` ``(B, Hq, Nq, D)`` and ``k`` ``(B, Hkv, Nkv, D)``.

        ``scale`` is the attention's (default ``D ** -0.5``). Runs without autograd on the
        inputs' device; returns the per-(batch, query head) selection.

        With a canvas, ``q`` and ``k`` are the canvas tokens in raster order (``N = prod(canvas)``)
        and the selection's blocks are in :attr:`order` (see :class:`SelectedBlocks`);
        ``ordered=True`` says they are already in that order, padding included, as
        ``order.tile_tokens`` gives them (zeros at padding): what :func:`foveate.attention` does.
        """
        _check_inputs(q, k)
        order = self.order
        if ordered and order is not None:
            for name, t in (("q", q), ("k", k)):
                if t.shape[2] != order.num_tokens:
                    raise ValueError(f"{name} has {t.shape[2]} tokens; in {order!r} (ordered=True) {self!r} "
                                     f"needs {order.num_tokens}")
        else:
            self.check_lengths(q.shape[2], k.shape[2])
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        with torch.no_grad():
            q, k = q.detach(), k.detach()
            if order is not None and not ordered:
                q, k = order.tile_tokens(q), order.tile_tokens(k)
            q_len, kv_len = q.shape[2], k.shape[2]
            selected, kv_lists = self._choose(q, k, self.geometry(q_len, kv_len), scale)
        return SelectedBlocks(selected, q_len=q_len, kv_len=kv_len, query_block=self.q_block, block=self.block,
                              causal=self.causal, source=self, order=order, kv_lists=kv_lists)

    def _mass(self, q, k, geometry, scale):
        if self.score == "mean":
            return mean_mass(q, k, geometry, scale)
        return antidiagonal_mass(q, k, geometry, scale, self.stride)

    def _choose(self, q, k, geometry, scale) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """``(selected, the kv lists of its layout at the selection's block sizes or None)``."""
        raise NotImplementedError


@dataclass(frozen=True, repr=False)
class BlockTopK(_ContentSelected):
    """Per query block, keep the ``k`` highest-scoring key blocks (forced ones included).

    Args:
        k: blocks kept per query block, counting the sink and local blocks (which are always
            kept, even when there are more of them than ``k``).
        block: key block size (and query block size unless ``query_block`` is given); the
            triton and flex backends need multiples of 128.
        score: ``"mean"`` (pooled query . pooled key, MoBA / SpargeAttn) or ``"antidiagonal"``
            (XAttention's strided antidiagonal mass, every ``stride``).
        sink_blocks: first key blocks always kept. local_blocks: diagonal band always kept
            (see :class:`~foveate.selection.SelectionGeometry`). causal: causal attention inside
            the selection (bottom-right aligned).
        query_block: query block size of the selection, if not ``block`` (e.g. MoBA scores
            each 128-query block against 4096-key blocks).
        canvas: ``(T, H, W)`` (video) or ``(H, W)`` (image) when the tokens are a canvas, in
            raster order (``q_len == kv_len == prod(canvas)``); :func:`foveate.attention` then
            also takes ``q``, ``k``, ``v`` shaped ``(B, H, *canvas, D)``.
        partition: which piece of the canvas a key block is (VMoBA's partitions, which it
            alternates across layers; :mod:`foveate.selection.partition`): ``"1d"`` runs of
            ``block`` raster tokens (whole frames when ``block`` is a multiple of ``H * W``),
            ``"2d"`` a spatial tile through all frames (``(T, h, w)``; ``block`` a multiple of
            ``T``), ``"3d"`` a spatio-temporal ``(t, h, w)`` cube; each of ``block`` tokens (see
            :attr:`tile`). Defaults to ``"2d"`` on an image and ``"3d"`` on a video. Under
            ``"2d"`` and ``"3d"`` the selection runs in the tiled order of that tile (the canvas
            padded up to whole tiles; padding is never attended to), queries included, so the
            local block of a query block is its own tile; ``causal`` needs ``"1d"``.
    """

    k: int

    def __post_init__(self):
        set_ints(self, k=1)
        super().__post_init__()

    def _choose(self, q, k, geometry, scale):
        if self.score == "mean":  # fused on CUDA (foveate.policy.mean_topk_method)
            if self.order is not None and self.order.has_padding:  # (blocks with padding are partial)
                return mean_topk(q, k, geometry, scale, self.k, method=policy.mean_topk_method), None
            # The kernel also writes the forward's lists of the selection (its blocks full, or
            # under causal of their causal states): the layout builder then has no launch of
            # its own.
            states = (_causal_block_states(geometry.q_len, geometry.kv_len, self.q_block, self.block, str(q.device))
                      if self.causal else None)
            return mean_topk_with_lists(q, k, geometry, scale, self.k, states, method=policy.mean_topk_method)
        return select_topk(self._mass(q, k, geometry, scale), self.k, geometry.candidates(q.device),
                           geometry.forced(q.device)), None


@dataclass(frozen=True, repr=False)
class BlockTopP(_ContentSelected):
    """Per query block, keep the smallest set of key blocks (forced ones first, then by
    descending estimated mass) whose estimated softmax mass reaches ``mass``.

    Arguments as :class:`BlockTopK`, with ``mass`` in ``(0, 1]`` instead of ``k`` and the
    ``"antidiagonal"`` score by default (XAttention's threshold rule).
    """

    mass: float
    score: str = field(default="antidiagonal", kw_only=True)

    def __post_init__(self):
        if isinstance(self.mass, bool) or not isinstance(self.mass, (int, float)):
            raise TypeError(f"mass must be a float in (0, 1], got {type(self.mass).__name__} {self.mass!r}")
        if not 0 < self.mass <= 1:
            raise ValueError(f"mass must be in (0, 1], got {self.mass!r}")
        super().__post_init__()

    def _choose(self, q, k, geometry, scale):
        return select_topp(self._mass(q, k, geometry, scale), self.mass, geometry.candidates(q.device),
                           geometry.forced(q.device)), None


def MoBA(block: int = 4096, topk: int = 12, causal: bool = True, *, query_block: int = 128,
         canvas: tuple[int, ...] | None = None, partition: str | None = None) -> BlockTopK:
    """Mixture of Block Attention (Lu et al., 2025): each query attends to the ``topk`` key blocks
    whose mean key best matches it, the current block always among them, no sink.

    Defaults are those of MoonshotAI's released implementation (``moba_chunk_size=4096``,
    ``moba_topk=12``); the paper's scaling experiments used ``block=512, topk=3``. MoBA gates
    every query token; here each ``query_block`` of queries shares one choice, made from their
    mean (the granularity of a block-sparse kernel). ``canvas`` and ``partition`` as for
    :class:`BlockTopK` (VMoBA's setting on video: ``causal=False``).
    """
    return BlockTopK(topk, block=block, score="mean", sink_blocks=0, local_blocks=1, causal=causal,
                     query_block=query_block, canvas=canvas, partition=partition)


def XAttention(block: int = 128, stride: int = 8, threshold: float = 0.9, causal: bool = True, *,
               canvas: tuple[int, ...] | None = None, partition: str | None = None) -> BlockTopP:
    """XAttention (Xu et al., 2025): antidiagonal scoring at ``stride``, then per query block
    the fewest key blocks whose estimated mass reaches ``threshold``; the first and diagonal
    blocks always kept. Defaults are the paper's (block 128, stride 8, threshold 0.9).
    ``canvas`` and ``partition`` as for :class:`BlockTopK`."""
    return BlockTopP(threshold, block=block, score="antidiagonal", stride=stride, sink_blocks=1,
                     local_blocks=1, causal=causal, canvas=canvas, partition=partition)


def _check_inputs(q, k) -> None:
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, N, D), got {tuple(t.shape)}")
    if k.shape[0] != q.shape[0] or k.shape[-1] != q.shape[-1] or q.shape[1] % k.shape[1]:
        raise ValueError(f"k of shape {tuple(k.shape)} does not fit q of shape {tuple(q.shape)} "
                         f"(same batch and head dim, Hq % Hkv == 0)")
    if k.device != q.device:
        raise ValueError(f"k is on {k.device} but q is on {q.device}")


__all__ = ["BlockTopK", "BlockTopP", "MoBA", "SelectedBlocks", "XAttention"]
