"""Decayed linear attention (Lightning Attention-2, RetNet): :func:`decayed` (chunked),
:func:`decayed_step` (one token), :func:`default_decay`; the reference in :mod:`.naive`."""

from .chunked import decayed
from .defaults import default_decay
from .recurrent import decayed_step

__all__ = ["decayed", "decayed_step", "default_decay"]
