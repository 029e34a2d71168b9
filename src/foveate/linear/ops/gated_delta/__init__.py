"""Gated DeltaNet: :func:`gated_delta` (chunked, WY / UT form), :func:`gated_delta_step`
(one token); the reference in :mod:`.naive`."""

from .chunked import gated_delta
from .recurrent import gated_delta_step

__all__ = ["gated_delta", "gated_delta_step"]
