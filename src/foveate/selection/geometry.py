"""Block geometry of a selection: the blocks a query block may pick and the ones it must keep.

Query block ``i`` holds queries ``[i * query_block, (i + 1) * query_block)`` and key block ``j``
keys ``[j * block, (j + 1) * block)`` (the last blocks are short). Queries sit at key position
``p = i + kv_len - q_len`` (bottom-right alignment, as for :class:`~foveate.patterns.Causal`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SelectionGeometry:
    """Lengths, block sizes and the rules that do not depend on the inputs.

    ``sink_blocks``: the first key blocks, always kept (attention sinks). ``local_blocks``: the
    band around the diagonal, always kept: the key blocks holding the query block's own positions
    and ``local_blocks - 1`` more before them (and after them when not causal); 0 keeps none.
    ``causal``: a key block is a candidate only if it has a key at or before the query block's
    last position.
    """

    q_len: int
    kv_len: int
    query_block: int
    block: int
    causal: bool
    sink_blocks: int
    local_blocks: int

    @property
    def num_q_blocks(self) -> int:
        return -(-self.q_len // self.query_block)

    @property
    def num_kv_blocks(self) -> int:
        return -(-self.kv_len // self.block)

    def _positions(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Key positions of the first and last query of every query block, ``(nq,)`` each."""
        i = torch.arange(self.num_q_blocks, device=device)
        offset = self.kv_len - self.q_len
        first = i * self.query_block + offset
        last = torch.clamp((i + 1) * self.query_block, max=self.q_len) - 1 + offset
        return first, last

    def candidates(self, device) -> torch.Tensor:
        """``(nq, nkv)`` bool: the key blocks each query block may select (memoised and shared
        between calls: read only)."""
        return _masks(self, str(torch.device(device)))[0]

    def forced(self, device) -> torch.Tensor:
        """``(nq, nkv)`` bool: the sink and local blocks, always kept (within the candidates;
        memoised and shared between calls: read only)."""
        return _masks(self, str(torch.device(device)))[1]

    def _candidates(self, device) -> torch.Tensor:
        j = torch.arange(self.num_kv_blocks, device=device)
        nq, nkv = self.num_q_blocks, self.num_kv_blocks
        if not self.causal:
            return torch.ones(nq, nkv, dtype=torch.bool, device=device)
        _, last = self._positions(device)
        return (j * self.block)[None, :] <= last[:, None]

    def _forced(self, device) -> torch.Tensor:
        j = torch.arange(self.num_kv_blocks, device=device)[None, :]
        first, last = self._positions(device)
        keep = j < self.sink_blocks
        if self.local_blocks > 0:
            lo = torch.div(first, self.block, rounding_mode="floor") - (self.local_blocks - 1)
            hi = torch.div(last, self.block, rounding_mode="floor")
            if not self.causal:
                hi = hi + (self.local_blocks - 1)
            keep = keep | ((j >= lo[:, None]) & (j <= hi[:, None]))
        return keep & self._candidates(device)

    def reduced_rows(self, stride: int, device) -> torch.Tensor:
        """``(nq,)`` float32: per query block, the groups of ``stride`` queries holding at least
        one query (the rows of the antidiagonal estimate)."""
        i = torch.arange(self.num_q_blocks, device=device)
        queries = torch.clamp((i + 1) * self.query_block, max=self.q_len) - i * self.query_block
        return ((queries + stride - 1) // stride).float()

    def kv_counts(self, device) -> torch.Tensor:
        """``(nkv,)`` float32: keys per key block (the last one may be short)."""
        j = torch.arange(self.num_kv_blocks, device=device)
        return (torch.clamp((j + 1) * self.block, max=self.kv_len) - j * self.block).float()


@functools.lru_cache(maxsize=32)
def _masks(geometry: SelectionGeometry, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # The same lengths come back at every layer and step: build the masks once per device.
    return geometry._candidates(device), geometry._forced(device)
