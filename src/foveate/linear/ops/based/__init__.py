"""Based (Taylor linear attention beside a sliding window): :func:`based` (chunked),
:func:`based_step` (one token), :class:`BasedState`; the reference in :mod:`.naive`."""

from .chunked import based
from .feature_map import BasedState
from .recurrent import based_step

__all__ = ["based", "based_step", "BasedState"]
