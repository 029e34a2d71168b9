"""The score-modification protocol: what a modification of the scores before the softmax is, and
how several chain.

A modification acts on the scaled scores ``s = scale * q . k`` of every (query, key) pair, before
the pattern's mask and the softmax, in FlexAttention's ``score_mod`` form: ``fn(score, b, h,
q_idx, kv_idx) -> score`` on broadcasting tensors (``h`` the query head; indices from 0 in the
caller's token order). Positions align bottom-right as the patterns do: query ``i`` sits at key
position ``p = i + (kv_len - q_len)``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

#: ``fn(score, b, h, q_idx, kv_idx) -> score`` (broadcasting tensors; FlexAttention's form).
ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class ScoreMod:
    """Base class of the modifications. Subclasses implement :meth:`bind`, and
    :meth:`check` / :meth:`parameters` when they hold tensors.

    ``a + b`` applies ``a``, then ``b`` (biases add up in any order; a :class:`Softcap` caps
    what comes before it).
    """

    #: Whether the modification adds a term to the score (a bias), rather than transforming it.
    additive: bool = True

    def bind(self, q_len: int, kv_len: int, heads: int) -> ScoreFn:
        """The modification for these lengths and query heads, as a ``score_mod`` function."""
        raise NotImplementedError

    def parameters(self) -> tuple[torch.Tensor, ...]:
        """The tensors the modification reads (learnable ones receive gradients)."""
        return ()

    def check(self, batch: int, heads: int, q_len: int, kv_len: int, device: torch.device) -> None:
        """Raise ``ValueError``/``TypeError`` (naming the argument) unless the modification fits
        these inputs; nothing by default."""

    def parts(self) -> tuple["ScoreMod", ...]:
        """The modifications of a chain, in order (itself for one)."""
        return (self,)

    def __add__(self, other: "ScoreMod") -> "ScoreMod":
        if not isinstance(other, ScoreMod):
            return NotImplemented
        return Chain(self.parts() + other.parts())


class Chain(ScoreMod):
    """Modifications applied one after the other (``a + b + ...``)."""

    def __init__(self, parts: tuple[ScoreMod, ...]):
        self._parts = tuple(parts)

    @property
    def additive(self) -> bool:  # type: ignore[override]
        return all(p.additive for p in self._parts)

    def parts(self):
        return self._parts

    def bind(self, q_len, kv_len, heads):
        fns = [p.bind(q_len, kv_len, heads) for p in self._parts]

        def score_mod(score, b, h, q_idx, kv_idx):
            for fn in fns:
                score = fn(score, b, h, q_idx, kv_idx)
            return score

        return score_mod

    def parameters(self):
        return tuple(t for p in self._parts for t in p.parameters())

    def check(self, batch, heads, q_len, kv_len, device):
        for p in self._parts:
            p.check(batch, heads, q_len, kv_len, device)

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self._parts)


def chain(parts) -> ScoreMod | None:
    """One modification of ``parts`` (``None`` for none)."""
    parts = tuple(parts)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Chain(parts)


class Reordered(ScoreMod):
    """``inner`` (defined on a canvas in raster order) seen from the tiled order of ``order``
    (:class:`~foveate.tiling.TiledOrder`), with ``extra_kv`` keys after the canvas: what a
    backend running a canvas pattern in its tiled order applies. Padding positions take the
    nearest canvas token (they are masked out)."""

    def __init__(self, inner: ScoreMod, order, extra_kv: int = 0):
        self.inner, self.order, self.extra_kv = inner, order, extra_kv
        self.additive = inner.additive

    def bind(self, q_len, kv_len, heads):
        order, n_canvas = self.order, self.order.num_canvas
        fn = self.inner.bind(n_canvas, n_canvas + self.extra_kv, heads)
        padded = order.num_tokens

        def score_mod(score, b, h, q_idx, kv_idx):
            q_raster = order.to_raster(q_idx, clamp=True)[0]
            k_canvas = order.to_raster(torch.clamp(kv_idx, max=padded - 1), clamp=True)[0]
            k_raster = torch.where(kv_idx < padded, k_canvas, n_canvas + kv_idx - padded)
            return fn(score, b, h, q_raster, k_raster)

        return score_mod

    def parameters(self):
        return self.inner.parameters()

    def __repr__(self) -> str:
        return f"Reordered({self.inner!r}, {self.order!r})"


# -- argument checks shared by the modifications -------------------------------------------------------


def positive_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def per_head(name: str, value, *, allow_none: bool = False) -> torch.Tensor | None:
    """A per-head float tensor ``(H,)`` from a tensor (kept as given: it may be a learnable
    parameter), a sequence or a number (``(1,)``: every head)."""
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if value.dim() > 1:
            raise ValueError(f"{name} must be one value per head (H,), got shape {tuple(value.shape)}")
        return value.reshape(-1)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.tensor([float(value)], dtype=torch.float64)  # (cast to the scores' dtype when applied)
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(x, numbers.Real) and not isinstance(x, bool) for x in value):
        return torch.tensor([float(x) for x in value], dtype=torch.float64)
    raise TypeError(f"{name} must be a number, a sequence of numbers or a tensor (H,), got {value!r}")


def check_heads(name: str, t: torch.Tensor, heads: int) -> None:
    if t.shape[0] not in (1, heads):
        raise ValueError(f"{name} has {t.shape[0]} values, the inputs have {heads} query heads (give 1 or {heads})")


def check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}")


def check_canvas(canvas: tuple[int, ...], q_len: int, kv_len: int) -> None:
    """A canvas modification's inputs: ``q_len`` is the canvas, ``kv_len`` at least that."""
    n = math.prod(canvas)
    if q_len != n or kv_len < n:
        raise ValueError(f"canvas={canvas} holds {n} tokens; the inputs have q_len={q_len}, kv_len={kv_len} "
                         f"(q_len must be {n}, kv_len at least {n})")


def check_canvas_pattern(canvas: tuple[int, ...] | None, pattern) -> None:
    """A canvas modification must be on the pattern's canvas (the same size is not enough: the
    coordinates would differ)."""
    theirs = getattr(pattern, "canvas", None)
    if canvas is not None and theirs is not None and tuple(theirs) != tuple(canvas):
        raise ValueError(f"canvas={canvas} differs from the pattern's canvas {tuple(theirs)}")


def head_values(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``t[h]`` of a per-head tensor (one value for every head when ``t`` has one)."""
    return t[torch.zeros_like(h)] if t.shape[0] == 1 else t[h]


__all__ = ["ScoreMod", "ScoreFn", "Chain", "Reordered", "chain"]
