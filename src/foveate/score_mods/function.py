"""A user's ``score_mod`` function, in FlexAttention's form."""

from __future__ import annotations

from .base import ScoreMod


class ScoreFunction(ScoreMod):
    """``fn(score, b, h, q_idx, kv_idx) -> score`` as written for FlexAttention (indices in the
    caller's token order, no alignment implied). Runs where a function can: the ``flex`` and
    ``reference`` backends. Tensors it closes over receive gradients on the reference backend
    only when passed as ``parameters``."""

    additive = False

    def __init__(self, fn, parameters=()):
        if not callable(fn):
            raise TypeError(f"score_mod must be a ScoreMod or callable as fn(score, b, h, q_idx, kv_idx), "
                            f"got {type(fn).__name__}")
        self.fn, self._parameters = fn, tuple(parameters)

    def bind(self, q_len, kv_len, heads):
        return self.fn

    def parameters(self):
        return self._parameters

    def __repr__(self) -> str:
        return f"ScoreFunction({getattr(self.fn, '__qualname__', type(self.fn).__name__)})"


__all__ = ["ScoreFunction"]
