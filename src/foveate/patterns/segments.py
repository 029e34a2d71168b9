"""``Segments``: per-token segment ids and a rule table between segments."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import BlockLayout
from .base import Pattern
from .kernel_mask import SegmentMask, TokenIds
from .token_ids import DeviceTensors, TokenRows, int_rows

#: The rules, by name, and their codes in the table the kernels read.
RULES = {"none": TokenIds.NONE, "full": TokenIds.FULL, "causal": TokenIds.CAUSAL}


@dataclass(frozen=True, eq=False)
class Segments(TokenRows, Pattern):
    """Segment rules: token ``t`` belongs to segment ``ids[t]``, and a query of segment ``a``
    may see a key of segment ``b`` as ``rules[a][b]`` says: ``"none"`` (never), ``"full"``
    (always) or ``"causal"`` (when the key is not after the query: ``kv_idx <= q_idx``).

    Segments need not be contiguous. The table covers, for example: a prefix LM with documents
    (instruction ``full`` to itself, each document ``causal`` to itself and ``full`` to the
    instruction), share-question layouts, BlockRank's in-context ranking (``k <= q`` and (key
    in segment 0, or the same segment, or the query in the last segment): ``rules[a][b] =
    "causal"`` where ``b == 0 or b == a or a == last``), and text beside video tokens.

    Args:
        ids: per-token segment ids in ``0 .. S-1``: a list or 1-D int tensor (the same for every
            batch element), or one row per batch element (a list of lists or a 2-D tensor).
        rules: an ``S x S`` table (a list of lists) of ``"none"``, ``"full"``, ``"causal"``.

    Self-attention only (``q_len == kv_len == len(ids)``). The layout is exact, found at the
    level of blocks from each block's first and last position of every segment (``O(blocks^2
    x rules)`` host work, no per-token mask evaluation); on the fused kernels partial blocks
    read the tokens' ids and the table from memory (up to 16 segments; a larger table runs
    from a bitmask of the partial blocks).
    """

    ids: tuple
    rules: tuple

    _rows_noun = "ids"

    def __post_init__(self):
        rows, per_batch = int_rows("ids", self.ids, minimum=0)
        if len({len(r) for r in rows}) > 1:
            raise ValueError(f"ids: every batch element needs the same length, got {sorted({len(r) for r in rows})}")
        if not isinstance(self.rules, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in self.rules):
            raise TypeError(f"rules must be a list of lists (an S x S table), got {self.rules!r}")
        n = len(self.rules)
        if n == 0 or any(len(r) != n for r in self.rules):
            raise ValueError(f"rules must be a square S x S table, got rows of lengths {[len(r) for r in self.rules]}")
        bad = next((x for r in self.rules for x in r if x not in RULES), None)
        if bad is not None:
            raise ValueError(f"rules: each entry must be one of {sorted(RULES)}, got {bad!r}")
        top = max(max(r) for r in rows)
        if top >= n:
            raise ValueError(f"ids: segment id {top} has no row in the {n} x {n} rules table")
        object.__setattr__(self, "ids", rows if per_batch else rows[0])
        object.__setattr__(self, "rules", tuple(tuple(r) for r in self.rules))
        self._set_rows(rows, per_batch)
        self._hash_fields()

    def __repr__(self) -> str:
        return (f"Segments({len(self._rows[0])} tokens, {len(self.rules)} segments"
                f"{f', batch={len(self._rows)}' if self._per_batch else ''})")

    # -- shape ----------------------------------------------------------------------------------
    def default_lengths(self):
        n = len(self._rows[0])
        return n, n

    # -- tensors ---------------------------------------------------------------------------------
    def _make_tensors(self) -> DeviceTensors:
        table = torch.tensor([[RULES[x] for x in r] for r in self.rules], dtype=torch.int64)
        return DeviceTensors(ids=torch.tensor(self._rows, dtype=torch.int64), table=table)

    def _make_token_ids(self, cpu: dict) -> TokenIds:
        return TokenIds(cpu["ids"], cpu["ids"], cpu["table"])

    # -- the definition ------------------------------------------------------------------------
    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        tensors, per_batch, last = self._tensors(), self._per_batch, q_len - 1

        def mask_mod(b, h, q_idx, kv_idx):
            t = tensors.on(q_idx.device)
            row = b if per_batch else 0
            q, k = q_idx.clamp(0, last), kv_idx.clamp(0, last)
            rule = t["table"][t["ids"][row, q], t["ids"][row, k]]
            return (rule == TokenIds.FULL) | ((rule == TokenIds.CAUSAL) & (k <= q))

        return mask_mod

    def kernel_mask(self, q_len: int, kv_len: int) -> SegmentMask | None:
        self.check_lengths(q_len, kv_len)
        if len(self.rules) > TokenIds.MAX_SEGMENTS:
            return None  # (a table past what the kernels hold: the bitmask)
        return SegmentMask(self._token_ids(), 0)

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {type(self).__name__} has no canvas to tile")
        t = self._tensors().on(torch.device("cpu"))
        nq = -(-q_len // block_q)
        rows, cols, fulls = [], [], []
        for b in range(t["ids"].shape[0]):
            row, col, full = _segment_block_pairs(t["ids"][b], t["table"], block_q, block_kv)
            rows.append(row + b * nq)
            cols.append(col)
            fulls.append(full)
        return BlockLayout.from_pairs(
            torch.cat(rows).to(device), torch.cat(cols).to(device), torch.cat(fulls).to(device),
            batch_heads=(t["ids"].shape[0], 1), block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
            mask_mod=self.mask_mod(q_len, kv_len),
        )


def _segment_spans(ids: torch.Tensor, n_seg: int, block: int):
    """Per block and segment: whether present, and its first and last position there
    (``(n_blocks, S)`` each)."""
    n = ids.numel()
    n_blocks = -(-n // block)
    pos = torch.arange(n)
    slot = (pos // block) * n_seg + ids
    first = torch.full((n_blocks * n_seg,), n, dtype=torch.int64).scatter_reduce(0, slot, pos, "amin")
    last = torch.full((n_blocks * n_seg,), -1, dtype=torch.int64).scatter_reduce(0, slot, pos, "amax")
    present = last >= 0
    return (present.view(n_blocks, n_seg), first.view(n_blocks, n_seg), last.view(n_blocks, n_seg))


def _segment_block_pairs(ids: torch.Tensor, table: torch.Tensor, block_q: int, block_kv: int):
    """The visited block pairs of one batch element, exact: a block pair holds, for every pair
    of segments present in its query and key blocks, some query and key of those segments, so
    the rule of each such pair decides: a ``none`` rule makes the block partial at most, a
    ``full`` rule visited; a ``causal`` rule allows some pair when the segment's first key
    there is not after its last query there, and all of them when its last key is not after
    its first query."""
    n_seg = table.shape[0]
    pq, q_first, q_last = _segment_spans(ids, n_seg, block_q)
    pk, k_first, k_last = _segment_spans(ids, n_seg, block_kv)
    full_rule = (table == TokenIds.FULL).double()
    none_rule = (table == TokenIds.NONE).double()
    ca, cb = torch.nonzero(table == TokenIds.CAUSAL, as_tuple=True)
    nq, nk = pq.shape[0], pk.shape[0]
    step = max(1, (1 << 24) // (nk * max(1, ca.numel())))
    rows, cols, fulls = [], [], []
    for r0 in range(0, nq, step):
        sl = slice(r0, min(nq, r0 + step))
        q_present = pq[sl].double()
        any_full = (q_present @ full_rule @ pk.double().T) > 0
        any_none = (q_present @ none_rule @ pk.double().T) > 0
        visited, blocked = any_full, any_none
        if ca.numel():
            both = pq[sl][:, None, ca] & pk[None, :, cb]  # (rows, nk, causal rules)
            some = both & (k_first[None, :, cb] <= q_last[sl][:, None, ca])
            not_all = both & (k_last[None, :, cb] > q_first[sl][:, None, ca])
            visited = visited | some.any(-1)
            blocked = blocked | not_all.any(-1)
        qb, kb = torch.nonzero(visited, as_tuple=True)
        rows.append(qb + r0)
        cols.append(kb)
        fulls.append(~blocked[qb, kb])
    return torch.cat(rows), torch.cat(cols), torch.cat(fulls)


__all__ = ["Segments", "RULES"]
