"""``Documents``: packed documents (varlen attention), a pattern inside each document."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..layout import BlockLayout, layout_from_mask_mod, stack_layouts
from .base import Pattern
from .causal import Causal
from .interval_layout import build_interval_layout
from .kernel_mask import AllOf, Band, KernelMask, SegmentMask, TokenIds
from .token_ids import DeviceTensors, TokenRows, int_rows


@dataclass(frozen=True, eq=False)
class Documents(TokenRows, Pattern):
    """Packed documents: a query sees only keys of its own document, and among them the pairs
    that ``inner`` allows in the document's own coordinates (positions from the document's
    start, the document's length for both ``q_len`` and ``kv_len``).

    This is varlen attention without padding, in one call: the documents of one sequence (or of
    each batch element) are concatenated, and ``lengths`` says where each ends.

    Args:
        lengths: the documents' lengths in order, summing to the sequence length: a list or a
            1-D int tensor (the same packing for every batch element), or a list of lists /
            2-D tensor with one row per batch element (each row summing to the same length).
        inner: the pattern inside each document (default :class:`Causal`): a sequence pattern
            (``Dense``, ``Causal``, ``SlidingWindow``, compositions of them, ...) whose mask is
            the same for every length (queries and keys of a document align at its start).

    ``Documents.from_ids(ids)`` takes per-token document ids instead (each document one run of
    equal ids). Self-attention only: ``q_len == kv_len ==`` the total length. On the fused
    kernels a banded ``inner`` (dense, causal, windowed) masks partial blocks from the tokens'
    document ids (read from memory, a few bytes per token); any other ``inner`` from a bitmask.
    """

    lengths: tuple
    inner: Pattern = field(default_factory=Causal)

    _rows_noun = "documents"

    def __post_init__(self):
        rows, per_batch = int_rows("lengths", self.lengths, minimum=1)
        totals = {sum(r) for r in rows}
        if len(totals) > 1:
            raise ValueError(f"lengths: every batch element's documents must sum to the same length, got "
                             f"{sorted(totals)}")
        if not isinstance(self.inner, Pattern):
            raise TypeError(f"inner must be a pattern, got {type(self.inner).__name__} {self.inner!r}")
        inner = self.inner
        if inner.content_dependent or not inner.cacheable or inner.canvas is not None or inner.fixed_blocks:
            raise ValueError(f"inner must be a static sequence pattern (no canvas, no block mask, not selected "
                             f"from the inputs), got {inner!r}")
        try:
            inner.check_batch_heads(1, 1)
        except ValueError as e:
            raise ValueError(f"inner must be the same for every batch element and head: {e}") from None
        object.__setattr__(self, "lengths", rows if per_batch else rows[0])
        self._set_rows(rows, per_batch)
        self._hash_fields()

    @classmethod
    def from_ids(cls, ids, inner: Pattern | None = None) -> "Documents":
        """The documents of per-token ids (1-D, or 2-D per batch element): each maximal run of
        equal consecutive ids is one document; an id may not come back after another one
        (``ValueError``: that is a segment mask, :class:`~foveate.patterns.SegmentMask`)."""
        rows, per_batch = int_rows("ids", ids, minimum=0)
        lengths = []
        for r in rows:
            t = torch.tensor(r)
            values, counts = torch.unique_consecutive(t, return_counts=True)
            if values.numel() != torch.unique(values).numel():
                raise ValueError("ids: a document id comes back after another one; documents must be contiguous "
                                 "(P.SegmentMask takes any per-token ids with a rule table)")
            lengths.append(tuple(counts.tolist()))
        return cls(tuple(lengths) if per_batch else lengths[0], Causal() if inner is None else inner)

    def __repr__(self) -> str:
        shown = [list(r[:4]) + (["..."] if len(r) > 4 else []) for r in self._rows]
        text = ", ".join(str(s).replace("'", "") for s in shown)
        rows = f"[{text}]" if self._per_batch else text
        return f"Documents({len(self._rows[0])} documents: {rows}, total={self.total}, inner={self.inner!r})"

    # -- shape ----------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """The sequence length: the sum of the lengths."""
        return sum(self._rows[0])

    def default_lengths(self):
        return self.total, self.total

    # -- per-token tensors -----------------------------------------------------------------------
    def _make_tensors(self) -> DeviceTensors:
        docs, starts, ends = [], [], []
        for row in self._rows:
            length = torch.tensor(row, dtype=torch.int64)
            start = torch.cumsum(length, 0) - length
            docs.append(torch.repeat_interleave(torch.arange(len(row)), length))
            starts.append(torch.repeat_interleave(start, length))
            ends.append(torch.repeat_interleave(start + length, length))
        return DeviceTensors(docs=torch.stack(docs), starts=torch.stack(starts), ends=torch.stack(ends))

    def _make_token_ids(self, cpu: dict) -> TokenIds:
        return TokenIds(cpu["docs"], cpu["docs"])

    # -- the definition ------------------------------------------------------------------------
    def _inner_mod(self):
        n = max(max(r) for r in self._rows)
        return self.inner.mask_mod(n, n)

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        inner, tensors, per_batch, last = self._inner_mod(), self._tensors(), self._per_batch, self.total - 1

        def mask_mod(b, h, q_idx, kv_idx):
            t = tensors.on(q_idx.device)
            row = b if per_batch else 0
            q, k = q_idx.clamp(0, last), kv_idx.clamp(0, last)
            start_q, start_k = t["starts"][row, q], t["starts"][row, k]
            return (start_q == start_k) & inner(b, h, q - start_q, k - start_k)

        return mask_mod

    def _inner_band(self) -> Band | None:
        """The inner pattern's band when it is one around the diagonal (then the mask inside a
        document is that band in global positions)."""
        n = max(max(r) for r in self._rows)
        band = self.inner.kernel_mask(n, n)
        if not isinstance(band, Band) or band.offset != 0:
            return None
        if any(side is not None and side < 0 for side in (band.left, band.right)):
            return None
        return band

    def kernel_mask(self, q_len: int, kv_len: int) -> KernelMask | None:
        self.check_lengths(q_len, kv_len)
        band = self._inner_band()
        if band is None:
            return None  # (the kernels evaluate mask_mod into a bitmask)
        same = SegmentMask(self._token_ids(), 0)
        return same if band.left is None and band.right is None else AllOf((same, band))

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {type(self).__name__} has no canvas to tile")
        t = self._tensors().on(torch.device("cpu"))
        i = torch.arange(q_len)
        band = self._inner_band()
        mask_mod = self.mask_mod(q_len, kv_len)
        if band is not None:
            lo = t["starts"] if band.left is None else torch.maximum(t["starts"], i - band.left)
            hi = t["ends"] - 1 if band.right is None else torch.minimum(t["ends"] - 1, i + band.right)
            return _per_batch_intervals(lo, hi, q_len, kv_len, block_q, block_kv, device, mask_mod)
        # Any other inner pattern: its pairs lie inside the documents' squares, whose block
        # pairs are those of the dense intervals; each is then classified by the mask.
        squares = _per_batch_intervals(t["starts"], t["ends"] - 1, q_len, kv_len, block_q, block_kv, device, None)
        row, col, _ = squares.pairs()
        nq, nk = squares.num_q_blocks, squares.num_kv_blocks
        pair = torch.unique((row % nq) * nk + col)  # (the candidates of every batch element)
        return layout_from_mask_mod(mask_mod, q_len, kv_len, block_q=block_q, block_kv=block_kv, device=device,
                                    candidates=(pair // nk, pair % nk), batch_heads=(t["starts"].shape[0], 1))


def _per_batch_intervals(lo, hi, q_len, kv_len, block_q, block_kv, device, mask_mod) -> BlockLayout:
    """The interval layout of each batch row of ``lo``, ``hi`` (``(B, q_len)``), stacked on the
    layout's batch axis."""
    layouts = [build_interval_layout(q_len, kv_len, lo[b], hi[b], block_q=block_q, block_kv=block_kv,
                                     device=device, mask_mod=mask_mod) for b in range(lo.shape[0])]
    if len(layouts) == 1:
        return layouts[0]
    return stack_layouts(layouts, torch.arange(len(layouts)), axis=0, mask_mod=mask_mod,
                         allowed_pairs=int((hi - lo + 1).sum()))


__all__ = ["Documents"]
