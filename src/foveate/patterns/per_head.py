"""``PerHead``: a different static pattern for each query head."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import stack_layouts
from .base import Pattern
from .parts import OfParts


def _varies(pattern: Pattern) -> bool:
    """Whether a pattern differs per batch element or head: it refuses some batch size or head
    count (a static pattern takes any; one made for a number of heads or a batch takes that
    number only)."""
    try:
        pattern.check_batch_heads(1, 1)
        pattern.check_batch_heads(2, 3)
    except ValueError:
        return True
    return False


@dataclass(frozen=True)
class PerHead(OfParts, Pattern):
    """One pattern per *query* head: query head ``h`` attends with ``patterns[h]`` (every batch
    element alike). Mixed-head designs put local heads beside global or strided ones (e.g.
    ``P.PerHead([P.SlidingWindow(255)] * 6 + [P.Causal()] * 2)``).

    The heads are query heads, ``len(patterns)`` of them, and the inputs must have that many
    (``check_batch_heads``). Under GQA the query heads of a kv head need not share a pattern;
    to give a kv head's group one pattern, repeat it for each of the group's query heads
    (``[a] * group + [b] * group + ...``).

    Args:
        patterns: a non-empty list or tuple of static patterns of this library or the user's
            (not selected from the inputs, not themselves differing per batch element or head:
            ``ValueError``), on no canvas or on one common canvas (the lengths are then the
            canvas's; patterns without a canvas apply to those lengths too), and with the same
            block sizes if they are block masks (``Blocks``).

    The layout has a head axis of ``len(patterns)``; each distinct pattern's layout is built
    once. The kernel mask is the patterns' common one when every head's is the same
    description, else ``None`` (the Triton kernels then read a per-head bitmask).
    """

    patterns: tuple

    def __post_init__(self):
        patterns = self.patterns
        if isinstance(patterns, Pattern) or not isinstance(patterns, (list, tuple)):
            raise TypeError(f"patterns must be a list or tuple of patterns (one per query head), got "
                            f"{type(patterns).__name__}")
        patterns = tuple(patterns)
        if not patterns:
            raise ValueError("patterns must hold at least one pattern (one per query head), got none")
        for h, p in enumerate(patterns):
            if not isinstance(p, Pattern):
                raise TypeError(f"patterns[{h}] must be a pattern, got {type(p).__name__} {p!r}")
            if p.content_dependent or not p.cacheable:
                raise ValueError(f"patterns[{h}] = {p!r}: its blocks are selected from the inputs; PerHead takes "
                                 "static patterns")
            if _varies(p):
                raise ValueError(f"patterns[{h}] = {p!r} differs per batch element or head itself; PerHead takes "
                                 "patterns that are the same for every head")
        canvases = {(p.canvas, p.extra_kv) for p in patterns if p.canvas is not None}
        if len(canvases) > 1:
            raise ValueError(f"patterns: the patterns are on different canvases {sorted(canvases, key=repr)}")
        fixed = {p.fixed_blocks for p in patterns if p.fixed_blocks is not None}
        if len(fixed) > 1:
            raise ValueError(f"patterns: block masks of different block sizes {sorted(fixed)}")
        object.__setattr__(self, "patterns", patterns)

    # -- heads ----------------------------------------------------------------------------------
    @property
    def heads(self) -> int:
        """The number of query heads, ``len(patterns)``."""
        return len(self.patterns)

    def _distinct(self) -> tuple[list[Pattern], torch.Tensor]:
        """The distinct patterns (in order of first use) and, per head, the index of its own."""
        distinct = list(dict.fromkeys(self.patterns))
        index = {p: u for u, p in enumerate(distinct)}
        return distinct, torch.tensor([index[p] for p in self.patterns], dtype=torch.int64)

    def check_batch_heads(self, batch: int, heads: int) -> None:
        if heads != self.heads:
            raise ValueError(f"PerHead has {self.heads} patterns, one per query head; the inputs have {heads} "
                             "query heads")

    # -- shape ----------------------------------------------------------------------------------
    def _parts(self) -> tuple[Pattern, ...]:
        return self.patterns

    def check_lengths(self, q_len: int, kv_len: int) -> None:
        super().check_lengths(q_len, kv_len)
        for p in dict.fromkeys(self.patterns):
            p.check_lengths(q_len, kv_len)

    # -- the definition -------------------------------------------------------------------------
    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        distinct, of_head = self._distinct()
        mods = [p.mask_mod(q_len, kv_len) for p in distinct]
        if len(mods) == 1:  # (the same pattern on every head)
            return mods[0]

        def mask_mod(b, h, q_idx, kv_idx):
            which = of_head.to(q_idx.device)[h]
            out = mods[0](b, h, q_idx, kv_idx)
            for u in range(1, len(mods)):
                out = torch.where(which == u, mods[u](b, h, q_idx, kv_idx), out)
            return out

        return mask_mod

    def kernel_mask(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        masks = {p.kernel_mask(q_len, kv_len) for p in dict.fromkeys(self.patterns)}
        return masks.pop() if len(masks) == 1 else None  # (None when some pattern has none)

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        if tile is not None:
            raise ValueError(f"tile={tile!r}: {self!r} cannot be tiled")
        distinct, of_head = self._distinct()
        layouts = []
        for p in distinct:
            layout = p.build(q_len, kv_len, block_q=block_q, block_kv=block_kv, device=device)
            if layout.batch_heads != (1, 1):  # (refused by the constructor; a guard for odd user patterns)
                raise ValueError(f"{p!r} built a layout with batch/head axes {layout.batch_heads}; PerHead takes "
                                 "patterns that are the same for every head")
            layouts.append(layout)
        allowed = sum(int((of_head == u).sum()) * lay.allowed_pairs() for u, lay in enumerate(layouts))
        return stack_layouts(layouts, of_head, axis=1, mask_mod=self.mask_mod(q_len, kv_len), allowed_pairs=allowed)
