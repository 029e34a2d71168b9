"""Score modifications inside the Triton kernels: the subset of :mod:`foveate.score_mods` they
evaluate element by element, as a compile-time ``SCORE`` tuple and a per-head ``RATES`` tensor.

Taken: at most one distance bias in 1-D (``ALiBi``, with the paper's slopes computed in the
kernel from the head index, or given slopes; ``DistanceDecay`` without a canvas), then at
most one ``Softcap``, last. ``SCORE = (SOFTCAP, DIST, OFFSET, BELOW, LEARN, ON)``: the cap (0.0:
none); 0 no distance bias, 1 rates read from ``RATES`` (one per head, or one for all:
``RATE_STRIDE`` 0), 2 ALiBi's slopes (``BELOW``: the largest power of two not above the head
count); ``OFFSET = kv_len - q_len`` (bottom-right alignment); ``LEARN``: the rates receive a
gradient, accumulated by the dq kernel into ``DRATES`` (``atomic_add``, one per program);
``ON``: any modification at all.

In natural units, on the scaled score ``s = scale * q . k``: ``s - rate_h * |i + OFFSET - j|``,
then ``cap * tanh(s / cap)``. The backward multiplies the probabilities' gradient by the
softcap's derivative ``1 - (s' / cap)^2`` (``s'`` the capped score).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ...score_mods import ALiBi, DistanceDecay, Softcap

#: ``SCORE`` of no modification.
NO_SCORE = (0.0, 0, 0, 1, 0, 0)


def score_spec(score_mod, q_len: int, kv_len: int, heads: int):
    """``(SCORE tuple, rates tensor or None)`` of a modification the kernels take, or a ``str``
    saying why they do not."""
    parts = list(score_mod.parts())
    cap = 0.0
    if parts and isinstance(parts[-1], Softcap):
        cap = parts.pop().cap
    if len(parts) > 1:
        return f"score_mod={score_mod!r}: the Triton kernels take one distance bias, then a softcap"
    dist, rates, learn = 0, None, 0
    if parts:
        part = parts[0]
        if not isinstance(part, DistanceDecay) or part.canvas is not None:
            return (f"score_mod={score_mod!r}: the Triton kernels take Softcap, ALiBi and 1-D DistanceDecay "
                    f"({type(part).__name__}{' on a canvas' if isinstance(part, DistanceDecay) else ''} runs on "
                    "the reference and flex backends)")
        if isinstance(part, ALiBi) and part._default:
            dist = 2
        else:
            dist, rates = 1, part.rate
            learn = int(rates.requires_grad)
    below = 1 << (heads.bit_length() - 1)
    return (float(cap), dist, kv_len - q_len, below, learn, 1), rates


def rate_operand(rates, placeholder):
    """The kernels' ``RATES, RATE_STRIDE`` arguments: the rates (one per head, or one for all:
    stride 0), or ``placeholder`` for none."""
    if rates is None:
        return placeholder, 0
    return rates, (0 if rates.numel() == 1 else rates.stride(0))


@triton.jit
def _tanh(x):
    # (tanh from exp2, for every backend and the interpreter; exact at +-inf)
    e = tl.math.exp2(-2.8853900817779268 * tl.abs(x))  # exp(-2|x|)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def head_rate(RATES, h, rate_stride, SCORE: tl.constexpr):
    """The distance rate of query head ``h`` (0.0 without a distance bias)."""
    if SCORE[1] == 1:
        return tl.load(RATES + h * rate_stride).to(tl.float32)
    elif SCORE[1] == 2:  # ALiBi: 2^(-8 (h + 1) / below), then every other slope of 2 * below
        below = SCORE[3]
        e = tl.where(h < below, (h + 1) / below, (2 * (h - below) + 1) / (2 * below))
        return tl.math.exp2(-8.0 * e)
    else:
        return 0.0


@triton.jit
def distance(rows, cols, SCORE: tl.constexpr):
    """``|i + OFFSET - j|`` of query positions ``rows`` ``[M]`` and keys ``cols`` ``[N]``: ``[M, N]``."""
    return tl.abs(rows[:, None] + SCORE[2] - cols[None, :]).to(tl.float32)


@triton.jit
def modify(s, dist, rate, SCORE: tl.constexpr):
    """The modified natural-unit scores of ``s`` (``dist``: :func:`distance`, or its transpose
    for a transposed tile)."""
    if SCORE[1] != 0:
        s = s - rate * dist
    if SCORE[0] > 0:
        s = SCORE[0] * _tanh(s / SCORE[0])
    return s


@triton.jit
def pre_cap(ds, s_mod, SCORE: tl.constexpr):
    """The gradient before the softcap of ``ds`` taken after it (``s_mod``: the capped scores)."""
    if SCORE[0] > 0:
        t = s_mod / SCORE[0]
        ds = ds * (1.0 - t * t)
    return ds


__all__ = ["NO_SCORE", "score_spec", "rate_operand", "head_rate", "distance", "modify", "pre_cap"]
