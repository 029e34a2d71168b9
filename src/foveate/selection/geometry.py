"""Block geometry of a selection: the blocks a query block may pick and the ones it must keep.

Query block ``i`` holds queries ``[i * query_block, (i + 1) * query_block)`` and key block ``j``
keys ``[j * block, (j + 1) * block)`` (the last blocks are short). Queries sit at key position
``p = i + kv_len - q_len`` (bottom-right alignment, as for :class:`~foveate.patterns.Causal`).

On a canvas partition (:mod:`.partition`) the tokens are the canvas in a tiled order, padded up
to whole tiles: ``tiling = (canvas, tile)``. Padded positions are no tokens: they hold zeros,
count in no block's size, and a block made of padding alone is never a candidate.
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
    last position. ``tiling``: ``(canvas, tile)`` when queries and keys are the same canvas in
    ``TiledOrder(canvas, tile)`` (``q_len == kv_len ==`` its ``num_tokens``); ``None`` otherwise.
    """

    q_len: int
    kv_len: int
    query_block: int
    block: int
    causal: bool
    sink_blocks: int
    local_blocks: int
    tiling: tuple[tuple[int, ...], tuple[int, ...]] | None = None

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

    @property
    def padded(self) -> bool:
        """Whether some positions are canvas padding (a tiling whose tiles overhang the canvas)."""
        return self.tiling is not None and any(n % t for n, t in zip(*self.tiling))

    def real_tokens(self, device) -> torch.Tensor | None:
        """``(q_len,)`` bool: the positions that are canvas tokens (not padding); ``None`` when
        every position is a token (memoised: read only)."""
        return _real_tokens(self.tiling, str(torch.device(device))) if self.padded else None

    def _counts(self, length: int, block: int, device) -> torch.Tensor:
        """Tokens per block of ``block`` positions, float32 (padding left out)."""
        real = self.real_tokens(device)
        if real is None:
            j = torch.arange(-(-length // block), device=device)
            return (torch.clamp((j + 1) * block, max=length) - j * block).float()
        return _pad_to(real, block).view(-1, block).sum(-1).float()

    def _candidates(self, device) -> torch.Tensor:
        j = torch.arange(self.num_kv_blocks, device=device)
        nq, nkv = self.num_q_blocks, self.num_kv_blocks
        if self.causal:
            _, last = self._positions(device)
            out = (j * self.block)[None, :] <= last[:, None]
        else:
            out = torch.ones(nq, nkv, dtype=torch.bool, device=device)
        if self.padded:  # blocks of padding alone: no query to serve, no key to offer
            out = out & (self.q_counts(device) > 0)[:, None] & (self.kv_counts(device) > 0)[None, :]
        return out

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

    def live_groups(self, length: int, stride: int, device) -> torch.Tensor:
        """``(ceil(length / stride),)`` bool: the groups of ``stride`` positions that hold at least
        one token (the reduced rows or columns of the antidiagonal estimate)."""
        return self._counts(length, stride, device) > 0

    def reduced_rows(self, stride: int, device) -> torch.Tensor:
        """``(nq,)`` float32: per query block, the groups of ``stride`` queries holding at least
        one query (the rows of the antidiagonal estimate)."""
        if not self.padded:
            i = torch.arange(self.num_q_blocks, device=device)
            queries = torch.clamp((i + 1) * self.query_block, max=self.q_len) - i * self.query_block
            return ((queries + stride - 1) // stride).float()
        # (On a canvas partition, stride divides query_block: check_stride.)
        live = _pad_to(self.live_groups(self.q_len, stride, device), self.query_block // stride)
        return live.view(self.num_q_blocks, -1).sum(-1).float()

    def q_counts(self, device) -> torch.Tensor:
        """``(nq,)`` float32: queries per query block (the last one may be short; padding left
        out)."""
        return self._counts(self.q_len, self.query_block, device)

    def kv_counts(self, device) -> torch.Tensor:
        """``(nkv,)`` float32: keys per key block (the last one may be short; padding left out)."""
        return self._counts(self.kv_len, self.block, device)


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """A 1-D tensor padded with zeros (False) up to a multiple of ``multiple``."""
    pad = -x.shape[0] % multiple
    return torch.cat([x, x.new_zeros(pad)]) if pad else x


@functools.lru_cache(maxsize=8)
def _real_tokens(tiling: tuple[tuple[int, ...], tuple[int, ...]], device: str) -> torch.Tensor:
    from ..tiling.order import TiledOrder

    tiled_to_raster, _ = TiledOrder(*tiling).permutation(device)
    return tiled_to_raster >= 0


@functools.lru_cache(maxsize=32)
def _masks(geometry: SelectionGeometry, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # The same lengths come back at every layer and step: build the masks once per device.
    return geometry._candidates(device), geometry._forced(device)
