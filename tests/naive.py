"""A short, obviously correct masked attention: the oracle of the backend tests.

Everything is computed in the dtype of the inputs (call it with float64 tensors for the
ground truth, with float16/bfloat16 tensors for "the same computation in low precision").
It is differentiable by plain autograd, and rows with no allowed key give output 0,
lse -inf and zero gradients (never NaN).
"""

from __future__ import annotations

import torch


def dense_mask(pattern, q_len: int, kv_len: int, device="cpu") -> torch.Tensor:
    """The boolean ``(q_len, kv_len)`` mask of ``pattern``, from its ``mask_mod``."""
    mm = pattern.mask_mod(q_len, kv_len)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    q_idx = torch.arange(q_len, device=device).view(-1, 1)
    kv_idx = torch.arange(kv_len, device=device).view(1, -1)
    mask = mm(zero, zero, q_idx, kv_idx)
    return torch.broadcast_to(mask, (q_len, kv_len)).clone()


def mask_from_mod(mask_mod, batch: int, heads: int, q_len: int, kv_len: int) -> torch.Tensor:
    """``(B, H, q_len, kv_len)`` mask of an arbitrary ``mask_mod(b, h, q_idx, kv_idx)``."""
    b = torch.arange(batch).view(-1, 1, 1, 1)
    h = torch.arange(heads).view(1, -1, 1, 1)
    q_idx = torch.arange(q_len).view(1, 1, -1, 1)
    kv_idx = torch.arange(kv_len).view(1, 1, 1, -1)
    return torch.broadcast_to(mask_mod(b, h, q_idx, kv_idx), (batch, heads, q_len, kv_len)).clone()


def naive_attention(q, k, v, mask=None, scale=None):
    """Masked softmax attention, the textbook way.

    q: ``(B, Hq, Nq, D)``, k: ``(B, Hkv, Nkv, D)``, v: ``(B, Hkv, Nkv, Dv)``, ``Hq % Hkv == 0``.
    mask: bool, broadcastable to ``(B, Hq, Nq, Nkv)`` (True = allowed); ``None`` = all pairs.
    Returns ``(out, lse)``: ``(B, Hq, Nq, Dv)`` and ``(B, Hq, Nq)``, both in q's dtype.
    """
    hq, hkv = q.shape[1], k.shape[1]
    assert hq % hkv == 0
    # GQA / MQA: query head h uses kv head h // (Hq // Hkv).
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    s = (q @ k.transpose(-1, -2)) * scale  # (B, H, Nq, Nkv)
    if mask is None:
        mask = torch.ones((), dtype=torch.bool)
    mask = torch.broadcast_to(mask.to(s.device), s.shape)
    has_key = mask.any(dim=-1, keepdim=True)  # (B, H, Nq, 1)

    s = s.masked_fill(~mask, float("-inf"))
    # Row maximum, for stability only: the result does not depend on it, so no gradient.
    m = s.detach().amax(dim=-1, keepdim=True)
    m = torch.where(has_key, m, torch.zeros_like(m))  # finite everywhere
    e = torch.exp(s - m)  # exactly 0 where masked (exp(-inf)), and so is its gradient
    denom = e.sum(dim=-1, keepdim=True)  # 0 on rows with no key
    p = e / torch.where(has_key, denom, torch.ones_like(denom))  # rows with no key: p = 0
    out = p @ v
    # log of 1 (not of 0) on empty rows, so that the unused branch has no 0/0 gradient.
    lse = torch.log(torch.where(has_key, denom, torch.ones_like(denom))) + m
    lse = torch.where(has_key, lse, torch.full_like(lse, float("-inf")))
    return out, lse[..., 0]
