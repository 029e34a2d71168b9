"""Decayed linear attention, chunked (Lightning Attention-2's algorithm) in PyTorch ops.

Inside a chunk of ``c`` tokens the output is exact attention with the decay matrix
``D_ij = lambda^(i - j)`` (``j <= i``); across chunks a state carries the rest:
``o_i += lambda^(i + 1) q_i^T S``, then ``S <- lambda^c S + sum_j lambda^(c - 1 - j) k_j v_j^T``.
All chunks' inner parts are computed at once; only the state's update runs chunk by chunk.
Autograd goes through the PyTorch ops (a fused Triton kernel is later work).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from ..._common import (check_bool, check_int, check_qkv, check_state, compute_dtype, expand_heads, over_chunks,
                       resolve_scale)
from .defaults import default_decay


def decayed(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor | Sequence[float] | float | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decayed linear attention (Lightning Attention-2, RetNet's retention without its norm):
    ``o_t = scale sum_(s <= t) lambda_h^(t - s) (q_t . k_s) v_s``, no normaliser.

    As a recurrence: ``S_t = lambda_h S_(t-1) + k_t v_t^T``, ``o_t = scale S_t^T q_t`` with the
    state ``S`` of shape ``(Dk, Dv)`` per query head (:func:`decayed_step` runs it one token at
    a time).

    Args:
        q: ``(B, Hq, N, Dk)``.
        k: ``(B, Hkv, N, Dk)``, ``Hq % Hkv == 0``: query head ``h`` reads kv head
            ``h // (Hq / Hkv)`` (grouped-query attention).
        v: ``(B, Hkv, N, Dv)``.
        decay: ``lambda_h`` in ``(0, 1]``: a ``(Hq,)`` tensor (may require grad), a sequence of
            ``Hq`` numbers, one number for every head, or ``None`` for Lightning Attention's
            ALiBi-slope decays (:func:`default_decay`). ``1`` is plain linear attention.
        causal: ``False`` sums over every key with ``lambda_h^|t - s|`` (a decay both ways;
            ``initial_state`` and ``return_state`` then do not apply).
        scale: factor on ``q . k``; defaults to ``Dk ** -0.5``.
        chunk_size: tokens per chunk (any ``N`` works; the last chunk may be shorter).
        initial_state: ``(B, Hq, Dk, Dv)``, the state before the first token (``None``: zeros),
            as returned by an earlier call or :func:`decayed_step`.
        return_state: also return the state after the last token.

    Returns:
        ``out (B, Hq, N, Dv)`` in ``q.dtype``; with ``return_state`` also the state
        ``(B, Hq, Dk, Dv)``, float32 (float64 for float64 inputs). The arithmetic is in that
        dtype too.

    Raises:
        TypeError, ValueError: on bad input, naming the argument.
    """
    batch, heads_q, heads_kv, _, dk, dv = check_qkv(q, k, v)
    dtype = compute_dtype(q.dtype)
    causal, return_state = check_bool("causal", causal), check_bool("return_state", return_state)
    scale = resolve_scale(scale, dk)
    chunk_size = check_int("chunk_size", chunk_size, 1)
    log_decay = decay_logs(decay, heads_q, q.device, dtype)
    if not causal and (initial_state is not None or return_state):
        raise ValueError("initial_state and return_state need causal=True (a non-causal call has no state)")
    shape = (batch, heads_q, dk, dv)
    state = q.new_zeros(shape, dtype=dtype) if initial_state is None else \
        check_state("initial_state", initial_state, shape, q.device, dtype)
    group = heads_q // heads_kv
    qc = q.to(dtype) * scale
    kc, vc = (expand_heads(t, group).to(dtype) for t in (k, v))
    out, state = _causal(qc, kc, vc, log_decay, state, chunk_size)
    if not causal:
        # Keys after the query: the causal form on the reversed sequence; the diagonal once.
        after, _ = _causal(qc.flip(2), kc.flip(2), vc.flip(2), log_decay, torch.zeros_like(state), chunk_size)
        out = out + after.flip(2) - (qc * kc).sum(-1, keepdim=True) * vc
    out = out.to(q.dtype)
    return (out, state) if return_state else out


def decay_logs(decay, heads: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``log(lambda_h)``, ``(heads,)`` in ``dtype``, from what :func:`decayed` takes (checked)."""
    if decay is None:
        decay = default_decay(heads)
    elif isinstance(decay, bool):
        raise TypeError(f"decay must be a tensor, a sequence of numbers, a number or None, got {decay!r}")
    elif isinstance(decay, numbers.Real):
        decay = torch.full((heads,), float(decay), dtype=torch.float64)
    elif not isinstance(decay, torch.Tensor):
        if not isinstance(decay, Sequence) or not all(
                isinstance(x, numbers.Real) and not isinstance(x, bool) for x in decay):
            raise TypeError(f"decay must be a tensor, a sequence of numbers, a number or None, "
                            f"got {type(decay).__name__}")
        decay = torch.tensor([float(x) for x in decay], dtype=torch.float64)
    if not decay.is_floating_point():
        raise TypeError(f"decay.dtype must be a floating-point type, got {decay.dtype}")
    if tuple(decay.shape) != (heads,):
        raise ValueError(f"decay must have one value per query head, shape ({heads},), got {tuple(decay.shape)}")
    with torch.no_grad():
        if not bool(((decay > 0) & (decay <= 1)).all()):
            raise ValueError(f"decay must lie in (0, 1], got {decay.tolist()}")
    return torch.log(decay.to(device=device, dtype=dtype))


def _causal(q, k, v, log_decay, state, chunk_size):
    """The causal form on ``(B, H, N, D)`` inputs (``q`` already scaled), ``(out, state)``."""
    outputs, state = over_chunks(lambda qc, kc, vc, s: _chunks(qc, kc, vc, log_decay, s), (q, k, v), state,
                                 chunk_size)
    out = q.new_zeros(*q.shape[:3], v.shape[-1]) if outputs is None else outputs[0]
    return out, state


def _chunks(q, k, v, log_decay, state):
    """Chunks of one length ``c``: ``q, k (B, H, n, c, Dk)``, ``v (B, H, n, c, Dv)``."""
    c = q.shape[3]
    g = log_decay[:, None]                                              # (H, 1)
    pos = torch.arange(c, device=q.device, dtype=q.dtype)
    gap = pos[:, None] - pos[None, :]                                   # i - j
    inside = torch.where(gap >= 0, torch.exp(g[:, :, None] * gap.clamp(min=0)), 0.0)  # (H, c, c)
    out = (q @ k.transpose(-1, -2) * inside[:, None]) @ v
    # The state before each chunk; then what each chunk adds to it, decayed to its end.
    writes = (k * torch.exp(g * (c - 1 - pos))[:, None, :, None]).transpose(-1, -2) @ v  # (B, H, n, Dk, Dv)
    across = torch.exp(log_decay * c)[:, None, None]
    befores = []
    for write in writes.unbind(2):  # (unbind: one backward for all chunks, not one per chunk)
        befores.append(state)
        state = across * state + write
    out = out + (q * torch.exp(g * (pos + 1))[:, None, :, None]) @ torch.stack(befores, 2)
    return (out,), state
