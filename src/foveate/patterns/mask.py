"""``Mask``: any FlexAttention-style ``mask_mod`` as a pattern."""

from __future__ import annotations

from dataclasses import dataclass

from .base import MaskMod, Pattern, set_ints


@dataclass(frozen=True)
class Mask(Pattern):
    """The pairs that ``fn(b, h, q_idx, kv_idx)`` allows: a user's mask, written as for
    FlexAttention (integer tensors in, a bool tensor out, broadcasting).

    Args:
        fn: the mask, for the lengths it is called with (queries and keys from 0, in the
            caller's order; with ``kv_len != q_len`` no alignment is implied: ``fn`` sees the raw
            indices).
        batch: ``None`` (the default): the mask is the same for every batch element, and ``fn``
            is called with ``b = 0``; an int: the mask differs per batch element, and the inputs
            must have that batch size (as FlexAttention's ``create_block_mask`` takes ``B``).
        heads: likewise for the query heads (``h``).

    The layout is built by evaluating ``fn`` on every block pair (``O(q_len * kv_len)`` mask
    evaluations, once per lengths: layouts are cached), and the Triton kernels mask its partial
    blocks with a packed bitmask evaluated from ``fn`` (:mod:`foveate.bitmask`). A pattern
    that knows its layout or its kernel mask does better as a :class:`Pattern` subclass with
    ``_build`` or ``kernel_mask``. Two ``Mask`` patterns are equal when their ``fn`` is the
    same object.
    """

    fn: MaskMod
    batch: int | None = None
    heads: int | None = None

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"fn must be callable as fn(b, h, q_idx, kv_idx), got {type(self.fn).__name__}")
        for name in ("batch", "heads"):
            if getattr(self, name) is not None:
                set_ints(self, **{name: 1})

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or type(self.fn).__name__
        extra = "".join(f", {n}={getattr(self, n)}" for n in ("batch", "heads") if getattr(self, n) is not None)
        return f"Mask({name}{extra})"

    def check_batch_heads(self, batch: int, heads: int) -> None:
        for name, want, got in (("batch", self.batch, batch), ("heads", self.heads, heads)):
            if want is not None and want != got:
                raise ValueError(f"{self!r} was made for {name}={want}, the inputs have {got}")

    def mask_mod(self, q_len: int, kv_len: int) -> MaskMod:
        self.check_lengths(q_len, kv_len)
        return self.fn

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        from ..layout import layout_from_mask_mod

        return layout_from_mask_mod(self.fn, q_len, kv_len, block_q=block_q, block_kv=block_kv, device=device,
                                    batch_heads=(self.batch or 1, self.heads or 1))
