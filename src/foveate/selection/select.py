"""Top-k and top-p selection of key blocks per query block.

Both take per-(batch, head) block scores ``(B, H, nq, nkv)`` and the geometry's ``candidates``
and ``forced`` masks ``(nq, nkv)``, and return the selected blocks as a bool tensor of the
scores' shape. Forced blocks are always selected; non-candidates never are.
"""

from __future__ import annotations

import importlib

import torch

from ..kernel_choice import triton_importable, use_triton


def select_topk(scores: torch.Tensor, k: int, candidates: torch.Tensor, forced: torch.Tensor, *,
                method: str = "auto") -> torch.Tensor:
    """Keep ``k`` blocks per query block: the forced ones first, then the highest scores.

    A query block with fewer than ``k`` candidates keeps all of them; one with more than ``k``
    forced blocks keeps all the forced ones. ``method``: ``"torch"`` (``topk`` and masks),
    ``"triton"`` (one launch of the selection kernel's threshold search,
    :func:`~foveate.selection.mean_topk_triton.topk_select`: of scores tied at the cut, the
    first blocks in order) or ``"auto"`` (triton for CUDA scores).
    """
    if use_triton(method, scores, triton_importable):
        kernels = importlib.import_module(".mean_topk_triton", __package__)
        return kernels.topk_select(scores, k, candidates, forced)
    key = scores.float().masked_fill(~candidates, float("-inf")).masked_fill(forced, float("inf"))
    top = key.topk(min(k, key.shape[-1]), dim=-1).indices
    chosen = torch.zeros_like(key, dtype=torch.bool).scatter_(-1, top, True)
    return (chosen & candidates) | forced


def select_topp(mass: torch.Tensor, p: float, candidates: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of blocks, forced ones included, whose mass reaches ``p``.

    ``mass`` is a non-negative estimate of each block's share of its query block's softmax mass;
    it is renormalised over the candidates. The forced blocks are taken first, then blocks in
    descending mass until the kept mass reaches ``p`` (``p >= 1`` keeps every candidate with
    mass).
    """
    mass = mass.float().masked_fill(~candidates, 0.0)
    if p >= 1:  # every block with mass (no ranking: a float32 running sum can reach 1 early)
        return (mass > 0) | forced
    mass = mass / mass.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    order = mass.masked_fill(forced, float("inf")).argsort(dim=-1, descending=True)
    ranked = mass.gather(-1, order)
    before = ranked.cumsum(-1) - ranked  # mass kept before taking this block
    keep = torch.zeros_like(mass, dtype=torch.bool).scatter_(-1, order, before < p)
    return (keep & candidates & (mass > 0)) | forced
