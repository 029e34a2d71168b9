"""Biases given as tensors: ``LowRankBias`` (FlashBias: two factors, never the Nq x Nkv bias) and
``DenseBias`` (a full bias tensor, the fallback for anything else)."""

from __future__ import annotations

import torch

from .base import ScoreMod, check_device


def _leading(name: str, t: torch.Tensor, batch: int, heads: int, heads_name: str = "query heads") -> None:
    if t.shape[0] not in (1, batch):
        raise ValueError(f"{name} has batch size {t.shape[0]}, the inputs have {batch} (give 1 or {batch})")
    if t.shape[1] not in (1, heads):
        raise ValueError(f"{name} has {t.shape[1]} heads, the inputs have {heads} {heads_name} (give 1 or {heads})")


class LowRankBias(ScoreMod):
    """``score + u[b, h, i] . w[b, h, j]``: a rank-``r`` bias given by its factors (FlashBias).

    ``u`` is ``(B|1, H|1, Nq, r)`` (per query head), ``w`` ``(B|1, H|1, Nkv, r)`` (per query head,
    or per kv head of grouped-query inputs, or one for all). The bias is never materialised: it
    is the product of features appended to the queries and keys, ``scale [q, u / scale] . [k,
    w]``, so every backend runs it with a head dim ``D + r`` (``r`` padded to a multiple of 8), and ``u`` and ``w`` receive their
    gradients through it. A chain may hold it only before any :class:`Softcap`.
    """

    def __init__(self, u: torch.Tensor, w: torch.Tensor):
        for name, t in (("u", u), ("w", w)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {type(t).__name__}")
            if t.dim() != 4:
                raise ValueError(f"{name} must be (B|1, H|1, N, r), got shape {tuple(t.shape)}")
        if u.shape[-1] != w.shape[-1]:
            raise ValueError(f"u and w must have the same rank (last dim), got {u.shape[-1]} and {w.shape[-1]}")
        self.u, self.w = u, w

    @property
    def rank(self) -> int:
        return self.u.shape[-1]

    def parameters(self):
        return (self.u, self.w)

    def check(self, batch, heads, q_len, kv_len, device):
        _leading("u", self.u, batch, heads)
        if self.w.shape[0] not in (1, batch):
            raise ValueError(f"w has batch size {self.w.shape[0]}, the inputs have {batch} (give 1 or {batch})")
        if self.u.shape[2] != q_len:
            raise ValueError(f"u has {self.u.shape[2]} rows, the inputs have q_len={q_len}")
        if self.w.shape[2] != kv_len:
            raise ValueError(f"w has {self.w.shape[2]} rows, the inputs have kv_len={kv_len}")
        for name, t in (("u", self.u), ("w", self.w)):
            check_device(name, t, device)

    def check_kv_heads(self, heads_q: int, heads_kv: int) -> None:
        if self.w.shape[1] not in (1, heads_kv, heads_q):
            raise ValueError(f"w has {self.w.shape[1]} heads; give 1, the kv heads ({heads_kv}) or the query heads "
                             f"({heads_q})")

    def bind(self, q_len, kv_len, heads):  # (the backends take it as features: :func:`append_low_rank`)
        u, w = self.u, self.w

        def score_mod(score, b, h, q_idx, kv_idx):
            bu = b if u.shape[0] > 1 else torch.zeros_like(b)
            bw = b if w.shape[0] > 1 else torch.zeros_like(b)
            hu = h if u.shape[1] > 1 else torch.zeros_like(h)
            hw = h // (heads // w.shape[1]) if w.shape[1] > 1 else torch.zeros_like(h)
            return score + (u[bu, hu, q_idx] * w[bw, hw, kv_idx]).sum(-1).to(score.dtype)

        return score_mod

    def __repr__(self) -> str:
        return f"LowRankBias(rank={self.rank})"


def append_low_rank(q, k, v, scale: float, bias: LowRankBias):
    """``(q', k', v', scale)``: the inputs with the bias's factors appended to the features, so
    that ``scale * q' . k' = scale * q . k + u . w`` (``u / scale`` appended to the queries, the
    queries themselves untouched), the rank padded with zeros to a multiple of 8. Keys and
    values are repeated per query head where ``w`` differs per query head of a grouped-query
    problem."""
    heads_q, heads_kv = q.shape[1], k.shape[1]
    u, w = bias.u.to(q.dtype), bias.w.to(k.dtype)
    if scale != 0:
        u = u / scale
    else:  # (no division: the scale folded into q instead, the bias beside it)
        q, scale = q * 0, 1.0
    pad = -bias.rank % 8
    if pad:
        u, w = torch.nn.functional.pad(u, (0, pad)), torch.nn.functional.pad(w, (0, pad))
    if w.shape[1] == heads_q and heads_q != heads_kv:
        group = heads_q // heads_kv
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    elif w.shape[1] not in (1, k.shape[1]):  # (keys already repeated per query head by an earlier bias)
        w = w.repeat_interleave(k.shape[1] // w.shape[1], dim=1)
    q2 = torch.cat([q, u.expand(q.shape[0], q.shape[1], -1, -1)], dim=-1)
    k2 = torch.cat([k, w.expand(k.shape[0], k.shape[1], -1, -1)], dim=-1)
    return q2, k2, v, scale


class DenseBias(ScoreMod):
    """``score + bias[b, h, i, j]``: a full bias tensor ``(B|1, H|1, Nq, Nkv)`` (the fallback for
    any bias without structure). Read only where the pattern allows pairs; it receives its
    gradient when it requires one."""

    def __init__(self, bias: torch.Tensor):
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise TypeError(f"bias must be a floating-point tensor, got {type(bias).__name__}")
        if bias.dim() != 4:
            raise ValueError(f"bias must be (B|1, H|1, Nq, Nkv), got shape {tuple(bias.shape)}")
        self.bias = bias

    def parameters(self):
        return (self.bias,)

    def check(self, batch, heads, q_len, kv_len, device):
        _leading("bias", self.bias, batch, heads)
        if tuple(self.bias.shape[2:]) != (q_len, kv_len):
            raise ValueError(f"bias covers {tuple(self.bias.shape[2:])} pairs, the inputs have ({q_len}, {kv_len})")
        check_device("bias", self.bias, device)

    def bind(self, q_len, kv_len, heads):
        bias = self.bias

        def score_mod(score, b, h, q_idx, kv_idx):
            bb = b if bias.shape[0] > 1 else torch.zeros_like(b)
            hh = h if bias.shape[1] > 1 else torch.zeros_like(h)
            return score + bias[bb, hh, q_idx, kv_idx].to(score.dtype)

        return score_mod

    def __repr__(self) -> str:
        return f"DenseBias({tuple(self.bias.shape)})"


__all__ = ["LowRankBias", "DenseBias", "append_low_rank"]
