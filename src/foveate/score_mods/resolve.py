"""What :func:`foveate.attention` does with a ``score_mod``: take a function or a modification,
check it against the inputs, and fold low-rank biases into the features (FlashBias), so that
backends see only what is left."""

from __future__ import annotations

import torch

from .base import ScoreMod, chain
from .bias import LowRankBias, append_low_rank
from .function import ScoreFunction


def as_score_mod(score_mod) -> ScoreMod | None:
    """``None``, a :class:`ScoreMod`, or a FlexAttention-style function (a :class:`ScoreFunction`)."""
    if score_mod is None or isinstance(score_mod, ScoreMod):
        return score_mod
    if callable(score_mod):
        return ScoreFunction(score_mod)
    raise TypeError(f"score_mod must be a foveate.score_mods modification or a function fn(score, b, h, q_idx, "
                    f"kv_idx), got {type(score_mod).__name__} {score_mod!r:.80}")


def check_score_mod(score_mod: ScoreMod, q: torch.Tensor, k: torch.Tensor, pattern) -> None:
    """``ValueError``/``TypeError`` (naming the argument) unless ``score_mod`` fits the flat
    inputs and the pattern."""
    batch, heads_q, q_len, _ = q.shape
    parts = score_mod.parts()
    for part in parts:
        part.check(batch, heads_q, q_len, k.shape[2], q.device)
        if hasattr(part, "check_pattern"):
            part.check_pattern(pattern)
        if isinstance(part, LowRankBias):
            part.check_kv_heads(heads_q, k.shape[1])
    transformed = False
    for part in parts:
        if isinstance(part, LowRankBias) and transformed:
            raise ValueError(f"score_mod={score_mod!r}: a LowRankBias may not follow a modification that is not a "
                             "bias (it is added to the raw scores): put it first")
        transformed = transformed or not part.additive


def fold_low_rank(score_mod: ScoreMod, q, k, v, scale: float):
    """``(q, k, v, scale, rest)``: the low-rank biases of ``score_mod`` appended to the features
    (their rank padded with zeros to a multiple of 8, which kernels want), and the rest of the
    modification (``None`` when nothing is left)."""
    rest = []
    for part in score_mod.parts():
        if isinstance(part, LowRankBias):
            q, k, v, scale = append_low_rank(q, k, v, scale, part)
        else:
            rest.append(part)
    return q, k, v, scale, chain(rest)


__all__ = ["as_score_mod", "check_score_mod", "fold_low_rank"]
