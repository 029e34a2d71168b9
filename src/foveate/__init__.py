"""foveate: structured and dynamic sparse attention for PyTorch.

>>> import foveate
>>> from foveate import patterns as P
>>> out = foveate.attention(q, k, v, P.Neighborhood(canvas=(64, 64), kernel=(13, 13)))  # doctest: +SKIP
"""

from . import backends, decode, patterns, score_mods  # (decode imports no kernel until one runs)
from .api import attention
from .layout import BlockLayout
from .settings import policy
from .simulator import SimulationRecord, simulate

__version__ = "0.1.0"

__all__ = ["attention", "patterns", "score_mods", "backends", "decode", "simulate", "SimulationRecord", "BlockLayout",
           "policy", "__version__"]
