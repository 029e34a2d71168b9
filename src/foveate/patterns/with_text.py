"""``WithText``: a pattern over the canvas (or sequence) tokens plus text tokens that are global."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import BlockLayout
from .base import Pattern, is_int
from .kernel_mask import AllOf, AnyOf, KernelMask, Rect


@dataclass(frozen=True)
class WithText(Pattern):
    """A pattern plus ``text`` tokens before or after its tokens: the joint layouts of video
    diffusion transformers (HunyuanVideo puts the text after the video tokens, CogVideoX before;
    Radial, Sliding Tile and CLEAR attention keep the text global).

    A query of the pattern's tokens sees the keys its pattern allows and every text key; a text
    query sees every key. Self-attention over ``N = n + text`` tokens, where ``n`` is the
    pattern's length (its canvas, or ``N - text`` for a sequence pattern); the text tokens are
    ``[0, text)`` (``first=True``) or ``[n, N)``.

    Args:
        pattern: a static pattern of this library or the user's (not selected from the inputs,
            without ``extra_kv``: the text is the extra).
        text: the number of text tokens, ``>= 1``.
        first: the text tokens come before the pattern's tokens.

    The layout is the pattern's own, moved by the text's offset, with the text's rows and columns
    added (visited, full where every pair is). With the text last, or first with ``text`` a
    multiple of the block size, it is exact; with the text first at another offset a block
    straddles the pattern's blocks, and is visited when one of those it overlaps is, full when all
    of them are: correct, not tight (it may be masked though full, or visited with no allowed
    pair). On the fused kernels the text-last
    form combines the pattern's kernel mask with two rectangles; the text-first form masks its
    partial blocks from a bitmask. :func:`foveate.nn.joint_attention` runs the same attention in
    two or three calls without a joint layout.
    """

    pattern: Pattern
    text: int
    first: bool = False

    def __post_init__(self):
        if not isinstance(self.pattern, Pattern):
            raise TypeError(f"pattern must be a foveate pattern, got {type(self.pattern).__name__}")
        p = self.pattern
        if p.content_dependent or not p.cacheable:
            raise ValueError(f"pattern={p!r}: its blocks are selected from the inputs; WithText takes a static "
                             "pattern")
        if p.extra_kv:
            raise ValueError(f"pattern={p!r} has extra_kv={p.extra_kv}: give the global tokens as text= instead")
        lengths = p.default_lengths()
        if lengths is not None and lengths[0] != lengths[1]:
            raise ValueError(f"pattern={p!r} has {lengths[0]} queries and {lengths[1]} keys: WithText is "
                             "self-attention over one set of tokens")
        if not is_int(self.text) or self.text < 1:
            raise ValueError(f"text must be an int >= 1, got {self.text!r}")
        if not isinstance(self.first, bool):
            raise TypeError(f"first must be a bool, got {type(self.first).__name__} {self.first!r}")
        object.__setattr__(self, "text", int(self.text))

    # -- lengths ----------------------------------------------------------------------------
    def default_lengths(self):
        inner = self.pattern.default_lengths()
        if inner is None:
            return None
        return inner[0] + self.text, inner[0] + self.text

    def check_lengths(self, q_len: int, kv_len: int) -> None:
        super().check_lengths(q_len, kv_len)
        if q_len != kv_len:
            raise ValueError(f"{self!r} is self-attention: q_len={q_len} and kv_len={kv_len} must be equal")
        if q_len <= self.text:
            raise ValueError(f"{self!r}: q_len={q_len} leaves no token for the pattern besides the {self.text} "
                             "text tokens")
        self.pattern.check_lengths(q_len - self.text, q_len - self.text)

    def check_batch_heads(self, batch: int, heads: int) -> None:
        self.pattern.check_batch_heads(batch, heads)

    def _offset(self) -> int:
        """Position of the pattern's first token."""
        return self.text if self.first else 0

    # -- the definition ---------------------------------------------------------------------
    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        n, o = q_len - self.text, self._offset()
        inner = self.pattern.mask_mod(n, n)

        def mask_mod(b, h, q_idx, kv_idx):
            q_in = (q_idx >= o) & (q_idx < o + n)
            kv_in = (kv_idx >= o) & (kv_idx < o + n)
            # (the inner mask sees clamped indices; its answer counts only inside the pattern)
            qi, ki = torch.clamp(q_idx - o, 0, n - 1), torch.clamp(kv_idx - o, 0, n - 1)
            return ~q_in | ~kv_in | inner(b, h, qi, ki)

        return mask_mod

    def kernel_mask(self, q_len: int, kv_len: int) -> KernelMask | None:
        self.check_lengths(q_len, kv_len)
        if self.first:
            return None  # the pattern's leaves take no position offset: the bitmask
        n = q_len - self.text
        inner = self.pattern.kernel_mask(n, n)
        if inner is None:
            return None
        # Inside the square the pattern's own mask; the text's columns and rows allowed.
        return AnyOf((AllOf((inner, Rect(0, n, 0, n))), Rect(0, n, n, kv_len), Rect(n, q_len, 0, kv_len)))

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {self!r} is built in its own token order (no tiling)")
        n, o, text = q_len - self.text, self._offset(), self.text
        inner = self.pattern.build(n, n, block_q=block_q, block_kv=block_kv, device=device)
        grid = inner.to_dense()  # (B|1, H|1, nq_in, nkv_in): 0 empty, 1 partial, 2 full
        rows = _Spans.of(q_len, block_q, o, n, device)
        cols = _Spans.of(kv_len, block_kv, o, n, device)
        # The pattern's part of each outer block: the (at most 2 x 2) inner blocks it overlaps.
        some = torch.zeros((*grid.shape[:2], rows.count, cols.count), dtype=torch.bool, device=device)
        every = torch.ones_like(some)
        for a, a_ok in rows.inner_blocks():
            for c, c_ok in cols.inner_blocks():
                ok = a_ok[:, None] & c_ok[None, :]
                g = grid[:, :, a][:, :, :, c]
                some |= ok & (g > 0)
                every &= ~ok | (g == 2)
        square = rows.has_inner[:, None] & cols.has_inner[None, :]
        text_pairs = rows.has_text[:, None] | (rows.has_inner[:, None] & cols.has_text[None, :])
        visited = text_pairs | (square & some)
        # Full: the text pairs of the block are all allowed; its square part must be too.
        full = visited & (~square | every)
        # (a text-free block is full only where its square part is; text rows and columns add
        # pairs that are always allowed, which keeps "every" exact)
        states = torch.where(full, 2, torch.where(visited, 1, 0)).to(torch.int8)
        b, h = grid.shape[:2]
        allowed = inner.allowed_pairs() + b * h * (text * q_len + n * text)
        return BlockLayout.from_block_grid(states, block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
                                           mask_mod=self.mask_mod(q_len, kv_len), allowed_pairs=allowed,
                                           method="torch")


class _Spans:
    """One axis of the outer block grid against the pattern's tokens ``[o, o + n)``: per outer
    block, whether it holds text and pattern tokens, and the inner blocks it overlaps."""

    def __init__(self, count, has_text, has_inner, first_block, last_block):
        self.count, self.has_text, self.has_inner = count, has_text, has_inner
        self.first_block, self.last_block = first_block, last_block

    @classmethod
    def of(cls, length: int, block: int, o: int, n: int, device) -> "_Spans":
        count = -(-length // block)
        start = torch.arange(count, device=device) * block
        end = torch.clamp(start + block, max=length)  # exclusive
        lo, hi = torch.clamp(start, min=o), torch.clamp(end, max=o + n)  # the pattern's tokens in it
        has_inner = lo < hi
        has_text = (end - start) > torch.clamp(hi - lo, min=0)
        first = torch.where(has_inner, (lo - o) // block, 0)
        last = torch.where(has_inner, (hi - 1 - o) // block, 0)
        return cls(count, has_text, has_inner, first, last)

    def inner_blocks(self):
        """``(index, valid)`` twice: the first inner block each outer block overlaps, then the
        second (valid where it overlaps two: the offset is not a multiple of the block)."""
        yield self.first_block, self.has_inner
        yield self.last_block, self.has_inner & (self.last_block != self.first_block)
