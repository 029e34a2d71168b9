"""Score modifications inside the Triton kernels: the subset of :mod:`foveate.score_mods` they
evaluate element by element (:class:`KernelScore`: a compile-time ``SCORE`` tuple, per-head
rates, a dense bias).

Taken: at most one 1-D distance bias (``ALiBi``, with the paper's slopes computed in the kernel
from the head index, or given slopes; ``DistanceDecay`` without a canvas) and at most one
``DenseBias``, in any order, then at most one ``Softcap``, last. ``SCORE = (SOFTCAP, DIST,
OFFSET, BELOW, LEARN, ON, BIAS, BIAS_LEARN)``: the cap (0.0: none); 0 no distance bias, 1 rates
read from ``RATES`` (one per head, or one for all: ``RATE_STRIDE`` 0), 2 ALiBi's slopes
(``BELOW``: the largest power of two not above the head count); ``OFFSET = kv_len - q_len``
(bottom-right alignment); ``LEARN``: the rates receive a gradient, accumulated by the dq kernel
into ``DRATES`` (``atomic_add``, one per program); ``ON``: any modification at all; ``BIAS``:
a dense bias ``(B|1, H|1, Nq, Nkv)`` read tile by tile on the visited blocks; ``BIAS_LEARN``:
its gradient is written by the dq kernel (each pair once) into a float32 ``(B, H, Nq, Nkv)``
tensor, then summed over the bias's broadcast axes.

In natural units, on the scaled score ``s = scale * q . k``: ``s - rate_h * |i + OFFSET - j| +
bias[b, h, i, j]``, then ``cap * tanh(s / cap)``. The backward multiplies the probabilities'
gradient by the softcap's derivative ``1 - (s' / cap)^2`` (``s'`` the capped score).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ...score_mods import ALiBi, DenseBias, DistanceDecay, Softcap

#: ``SCORE`` of no modification.
NO_SCORE = (0.0, 0, 0, 1, 0, 0, 0, 0)


@dataclass(frozen=True)
class KernelScore:
    """A score modification as the kernels take it: ``spec`` (``SCORE``), the rates (or
    ``None``), the dense bias (or ``None``)."""

    spec: tuple = NO_SCORE
    rates: torch.Tensor | None = None
    bias: torch.Tensor | None = None


def score_spec(score_mod, q_len: int, kv_len: int, heads: int) -> KernelScore | str:
    """The :class:`KernelScore` of a modification the kernels take, or a ``str`` saying why
    they do not."""
    parts = list(score_mod.parts())
    cap = 0.0
    if parts and isinstance(parts[-1], Softcap):
        cap = parts.pop().cap
    distances = [p for p in parts if isinstance(p, DistanceDecay) and p.canvas is None]
    biases = [p for p in parts if isinstance(p, DenseBias)]
    other = [p for p in parts if p not in distances and p not in biases]
    if other or len(distances) > 1 or len(biases) > 1:
        return (f"score_mod={score_mod!r}: the Triton kernels take one 1-D distance bias (ALiBi, DistanceDecay) and "
                "one DenseBias, then a Softcap; the reference and flex backends take the others")
    dist, rates, learn = 0, None, 0
    if distances:
        part = distances[0]
        if isinstance(part, ALiBi) and part._default:
            dist = 2
        else:
            dist, rates = 1, part.rate
            learn = int(rates.requires_grad)
    bias = biases[0].bias if biases else None
    below = 1 << (heads.bit_length() - 1)
    spec = (float(cap), dist, kv_len - q_len, below, learn, 1, int(bias is not None),
            int(bias is not None and bias.requires_grad))
    return KernelScore(spec, rates, bias)


def rate_operand(rates, placeholder):
    """The kernels' ``RATES, RATE_STRIDE`` arguments: the rates (one per head, or one for all:
    stride 0), or ``placeholder`` for none."""
    if rates is None:
        return placeholder, 0
    rates = rates.contiguous()  # (the rates' gradient is laid out the same way)
    return rates, (0 if rates.numel() == 1 else 1)


def bias_operand(bias, placeholder):
    """The kernels' ``BIAS`` argument and its four strides (0 on broadcast axes)."""
    if bias is None:
        return placeholder, 0, 0, 0, 0
    sb, sh, sm, sn = bias.stride()
    return bias, (0 if bias.shape[0] == 1 else sb), (0 if bias.shape[1] == 1 else sh), sm, sn


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
def bias_tile(BIAS, rows, cols, q_len, kv_len, s_m, s_n):
    """The bias of queries ``rows`` ``[M]`` by keys ``cols`` ``[N]`` (``BIAS`` at the program's
    batch and head), 0 past the lengths: ``[M, N]`` float32."""
    inside = (rows[:, None] < q_len) & (cols[None, :] < kv_len)
    return tl.load(BIAS + rows[:, None] * s_m + cols[None, :] * s_n, mask=inside, other=0.0).to(tl.float32)


@triton.jit
def modify(s, dist, rate, bias, SCORE: tl.constexpr):
    """The modified natural-unit scores of ``s`` (``dist``: :func:`distance` and ``bias``:
    :func:`bias_tile`, or their transposes for a transposed tile; either unused when off)."""
    if SCORE[1] != 0:
        s = s - rate * dist
    if SCORE[6]:
        s = s + bias
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


__all__ = ["NO_SCORE", "KernelScore", "score_spec", "rate_operand", "bias_operand", "bias_tile", "head_rate", "distance",
           "modify", "pre_cap"]
