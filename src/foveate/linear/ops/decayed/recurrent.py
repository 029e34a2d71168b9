"""Decayed linear attention one token at a time, for decoding after :func:`.chunked.decayed`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..._common import check_qkv, check_state, compute_dtype, expand_heads, resolve_scale
from .chunked import decay_logs


def decayed_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay: torch.Tensor | Sequence[float] | float | None = None,
    *,
    state: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of :func:`decayed`: ``S <- lambda_h S + k v^T``, ``o = scale S^T q``.

    Args:
        q: ``(B, Hq, Dk)``, one token (no length axis).
        k: ``(B, Hkv, Dk)``; v: ``(B, Hkv, Dv)``, ``Hq % Hkv == 0``.
        decay: as :func:`decayed` takes it.
        state: ``(B, Hq, Dk, Dv)`` (``None``: zeros, the start of a sequence).
        scale: factor on ``q . k``; defaults to ``Dk ** -0.5``.

    Returns:
        ``(out (B, Hq, Dv) in q.dtype, state (B, Hq, Dk, Dv))``, the state float32 (float64 for
        float64 inputs).
    """
    batch, heads_q, heads_kv, _, dk, dv = check_qkv(q, k, v, step=True)
    dtype = compute_dtype(q.dtype)
    scale = resolve_scale(scale, dk)
    lam = torch.exp(decay_logs(decay, heads_q, q.device, dtype))
    shape = (batch, heads_q, dk, dv)
    state = q.new_zeros(shape, dtype=dtype) if state is None else check_state("state", state, shape, q.device, dtype)
    group = heads_q // heads_kv
    k, v = (expand_heads(t, group).to(dtype) for t in (k, v))
    state = lam[:, None, None] * state + k[..., :, None] * v[..., None, :]
    out = scale * torch.einsum("bhk,bhkv->bhv", q.to(dtype), state)
    return out.to(q.dtype), state
