"""Score modifications: changes of the scaled scores ``scale * q . k`` before the pattern's mask
and the softmax, given to :func:`foveate.attention` as ``score_mod=``. Several chain with ``+``
(applied left to right). Each composes with every pattern; learnable tensors receive their
gradients.

* :class:`Softcap` (Gemma 2/3, Grok), :class:`ALiBi`, :class:`DistanceDecay` (1-D or Manhattan
  on a canvas; learnable rates), :class:`RelativePositionBias` (T5 buckets; Swin's windowed
  tables on 2-D/3-D canvases), :class:`LowRankBias` (FlashBias: two factors),
  :class:`DenseBias` (a full tensor), and any FlexAttention-style function
  (:class:`ScoreFunction`, or the function itself).
"""

from .base import ScoreFn, ScoreMod
from .bias import DenseBias, LowRankBias
from .distance import ALiBi, DistanceDecay, alibi_slopes
from .function import ScoreFunction
from .relative import RelativePositionBias
from .softcap import Softcap

__all__ = ["ScoreMod", "ScoreFn", "Softcap", "ALiBi", "DistanceDecay", "RelativePositionBias", "LowRankBias",
           "DenseBias", "ScoreFunction", "alibi_slopes"]
