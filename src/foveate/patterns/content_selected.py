"""Content-selected block sparsity (MoBA, XAttention, SpargeAttn style).

:class:`BlockTopK` and :class:`BlockTopP` are patterns whose blocks depend on the inputs: for
each query block (and batch and query head) they score every key block from ``q`` and ``k`` and
keep the best. ``pattern.select(q, k)`` runs that selection and returns a
:class:`~foveate.patterns.selected.SelectedBlocks`, an ordinary static pattern for exactly
those inputs; :func:`foveate.attention` does this on every call. The selection is not
differentiated (as in MoBA): gradients flow through the attention on the selected blocks.
:func:`MoBA` and :func:`XAttention` are those patterns with the papers' settings.

On a video or image canvas (``canvas=(T, H, W)`` or ``(H, W)``), ``partition`` makes each key
block one piece of the canvas (VMoBA's 1-D, 2-D and 3-D partitions; :mod:`foveate.selection.partition`):
the tokens are put in the tiled order of that piece (:class:`foveate.tiling.TiledOrder`), the
selection and the attention run in that order, and :func:`foveate.attention` returns the output
in the caller's order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

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
from ..tiling.order import TiledOrder
from .base import Pattern, is_int, set_ints
from .selected import SelectedBlocks, _causal_block_states, _divisor_reason

_SCORES = ("mean", "antidiagonal")


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
