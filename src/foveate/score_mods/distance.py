"""Biases that fall with the distance between query and key: ``DistanceDecay`` (learnable rates,
1-D or Manhattan on a canvas: RetNet-style and vision retention models) and ``ALiBi`` (its 1-D
form with the paper's fixed slopes)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..patterns.base import is_int
from .base import ScoreMod, check_canvas, check_canvas_pattern, check_device, check_heads, head_values, per_head


class DistanceDecay(ScoreMod):
    """``score - rate[h] * distance(query, key)``: ``|p - j|`` in 1-D (``p`` the query's position,
    bottom-right aligned), or the Manhattan distance between canvas coordinates when ``canvas``
    is given (raster order; keys past the canvas, ``extra_kv``, are at distance 0).

    Args:
        rate: one rate per query head, a tensor ``(H,)`` (learnable: it receives a gradient when
            it requires one), a sequence, or one number for every head.
        canvas: the canvas shape of 2-D/3-D (or 1-D) canvas inputs, else ``None``.
    """

    _name = "rate"  # (the argument's name in messages)

    def __init__(self, rate: torch.Tensor | float | Sequence[float], canvas: tuple[int, ...] | None = None):
        self.rate = per_head(self._name, rate)
        # Rates given as numbers are this object's: they follow the inputs to their device.
        self._owned = not isinstance(rate, torch.Tensor)
        if canvas is not None:
            canvas = tuple(canvas) if isinstance(canvas, (tuple, list)) else canvas
            if not isinstance(canvas, tuple) or not canvas or not all(is_int(n) and n >= 1 for n in canvas):
                raise ValueError(f"canvas must be a tuple of positive ints, got {canvas!r}")
            canvas = tuple(int(n) for n in canvas)
        self.canvas = canvas

    def parameters(self):
        return (self.rate,)

    def check(self, batch, heads, q_len, kv_len, device):
        check_heads(self._name, self.rate, heads)
        if not self._owned:
            check_device(self._name, self.rate, device)
        if self.canvas is not None:
            check_canvas(self.canvas, q_len, kv_len)

    def check_pattern(self, pattern) -> None:
        check_canvas_pattern(self.canvas, pattern)

    def _distance(self, q_len, kv_len):
        if self.canvas is None:
            offset = kv_len - q_len
            return lambda q_idx, kv_idx: (q_idx + offset - kv_idx).abs()
        canvas = self.canvas
        n = math.prod(canvas)
        strides = [math.prod(canvas[a + 1:]) for a in range(len(canvas))]

        def manhattan(q_idx, kv_idx):
            total = torch.zeros_like(q_idx + kv_idx)
            for stride, length in zip(strides, canvas):
                total = total + ((q_idx // stride) % length - (kv_idx // stride) % length).abs()
            return torch.where(kv_idx < n, total, 0)

        return manhattan

    def bind(self, q_len, kv_len, heads):
        rate, distance = self.rate, self._distance(q_len, kv_len)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score - head_values(rate.to(h.device), h).to(score.dtype) * distance(q_idx, kv_idx)

        return score_mod

    def __repr__(self) -> str:
        canvas = "" if self.canvas is None else f", canvas={self.canvas}"
        return f"{type(self).__name__}({self._rates_repr()}{canvas})"

    def _rates_repr(self) -> str:
        r = self.rate
        learn = ", learnable" if r.requires_grad else ""
        return f"rate={float(r[0].detach()):.4g}" if r.numel() == 1 else f"{r.numel()} rates{learn}"


def alibi_slopes(heads: int) -> torch.Tensor:
    """The ALiBi paper's slopes for ``heads`` heads: the geometric sequence ``2^(-8 i / n)``,
    ``i = 1 .. n``, for a power of two ``n``; otherwise those of the largest power of two
    below, then every other slope of the next one."""
    def powers(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if heads & (heads - 1) == 0:
        return torch.tensor(powers(heads))
    below = 1 << (heads.bit_length() - 1)
    return torch.tensor(powers(below) + powers(2 * below)[0::2][: heads - below])


class ALiBi(DistanceDecay):
    """ALiBi (Press et al., 2022): ``score - slope[h] * |p - j|``, one slope per query head.

    Args:
        slopes: ``None`` for the paper's slopes for the inputs' head count (:func:`alibi_slopes`),
            or slopes as :class:`DistanceDecay` takes rates (a tensor may be learnable).
    """

    _name = "slopes"

    def __init__(self, slopes: torch.Tensor | Sequence[float] | None = None):
        self._default = slopes is None
        super().__init__(1.0 if slopes is None else slopes)

    def parameters(self):
        return () if self._default else (self.rate,)

    def check(self, batch, heads, q_len, kv_len, device):
        if not self._default:
            super().check(batch, heads, q_len, kv_len, device)

    def bind(self, q_len, kv_len, heads):
        if not self._default:
            return super().bind(q_len, kv_len, heads)
        offset, below = kv_len - q_len, 1 << (heads.bit_length() - 1)

        def score_mod(score, b, h, q_idx, kv_idx):
            # alibi_slopes(heads)[h] in closed form (no tensor to carry to the device):
            # 2^(-8 (h + 1) / below), then every other slope of 2 * below.
            exponent = torch.where(h < below, (h + 1) / below, (2 * (h - below) + 1) / (2 * below))
            return score - torch.exp2(-8.0 * exponent.to(score.dtype)) * (q_idx + offset - kv_idx).abs()

        return score_mod

    def _rates_repr(self) -> str:
        return "slopes=paper" if self._default else "slopes=" + super()._rates_repr().split("=", 1)[-1]


__all__ = ["DistanceDecay", "ALiBi", "alibi_slopes"]
