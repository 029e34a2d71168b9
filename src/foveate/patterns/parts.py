"""``OfParts``: the shape of a pattern made of other patterns (compositions, one per head)."""

from __future__ import annotations


class OfParts:
    """Mixin for a pattern made of parts (``_parts()``), which have been checked to share one
    canvas (with its ``extra_kv``) and one block size if they are block masks: the pattern's
    canvas, extra keys and fixed block sizes are those of its parts."""

    def _parts(self) -> tuple:
        raise NotImplementedError

    @property
    def canvas(self):  # type: ignore[override]
        return next((p.canvas for p in self._parts() if p.canvas is not None), None)

    @property
    def extra_kv(self):  # type: ignore[override]
        return next((p.extra_kv for p in self._parts() if p.canvas is not None), 0)

    @property
    def fixed_blocks(self):  # type: ignore[override]
        """The block sizes of its block-mask parts (``Blocks``), which it must be built with."""
        return next((p.fixed_blocks for p in self._parts() if p.fixed_blocks is not None), None)
