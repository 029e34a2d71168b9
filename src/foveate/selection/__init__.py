"""Content-selected block sparsity: score (query block, key block) pairs from the inputs, keep
the best, hand the result to the block-sparse kernels as a per-(batch, head) layout.

- :mod:`.geometry`: which blocks a query block may pick (causal candidates) and must keep
  (sink and local blocks), from the lengths alone;
- :mod:`.scores`: the fast block scores, ``"mean"`` (MoBA / SpargeAttn: pooled queries against
  pooled keys) and ``"antidiagonal"`` (XAttention: strided antidiagonal sums, softmax, pooled);
- :mod:`.mean_topk_triton`, :mod:`.antidiagonal_triton`: the same scores (and, for the mean,
  its top-k) as fused Triton kernels, used on CUDA;
- :mod:`.select`: top-k and top-p (mass) selection over those scores;
- :mod:`.partition`: canvas partitions (VMoBA's 1-D, 2-D, 3-D key blocks) and their tiles;
- :mod:`.naive`: brute-force definitions of the scores, the oracle of the tests.

The patterns built on these are in :mod:`foveate.patterns.content_selected`.
"""

from .geometry import SelectionGeometry
from .partition import PARTITIONS, partition_tile
from .scores import antidiagonal_mass, mean_logits, mean_mass, mean_topk, mean_topk_with_lists
from .select import select_topk, select_topp

__all__ = ["PARTITIONS", "SelectionGeometry", "antidiagonal_mass", "mean_logits", "mean_mass", "mean_topk",
           "mean_topk_with_lists", "partition_tile", "select_topk", "select_topp"]
