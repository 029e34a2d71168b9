"""``Softcap``: logit soft-capping (Gemma 2/3, Grok)."""

from __future__ import annotations

import torch

from .base import ScoreMod, positive_number


class Softcap(ScoreMod):
    """``score -> cap * tanh(score / cap)``: the scores squashed into ``(-cap, cap)`` (Gemma 2
    uses ``cap=50`` on attention logits). It caps what comes before it in a chain
    (``ALiBi() + Softcap(50)`` caps the biased score)."""

    additive = False

    def __init__(self, cap: float):
        self.cap = positive_number("cap", cap)

    def bind(self, q_len, kv_len, heads):
        cap = self.cap

        def score_mod(score, b, h, q_idx, kv_idx):
            return cap * torch.tanh(score / cap)

        return score_mod

    def __repr__(self) -> str:
        return f"Softcap({self.cap:g})"


__all__ = ["Softcap"]
