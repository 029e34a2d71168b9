"""Gated DeltaNet one token at a time, for decoding after :func:`.chunked.gated_delta`."""

from __future__ import annotations

import torch

from ... import _common as C
from .normalize import l2_normalize


def gated_delta_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    *,
    state: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of :func:`gated_delta`:
    ``S <- alpha (S - beta k (k^T S)) + beta k v^T``, ``o = scale S^T q`` (``q, k`` L2-normalised).

    Args:
        q: ``(B, Hq, Dk)``, one token (no length axis); k: ``(B, Hkv, Dk)``; v: ``(B, Hkv, Dv)``.
        alpha: ``(B, Hq)`` in ``(0, 1]``; beta: ``(B, Hq)`` in ``[0, 1]``.
        state: ``(B, Hq, Dk, Dv)`` (``None``: zeros, the start of a sequence).
        scale: defaults to ``Dk ** -0.5``.

    Returns:
        ``(out (B, Hq, Dv) in q.dtype, state (B, Hq, Dk, Dv))``, the state float32 (float64 for
        float64 inputs).
    """
    batch, heads_q, heads_kv, _, dk, dv = C.check_qkv(q, k, v, step=True)
    dtype = C.compute_dtype(q.dtype)
    alpha = C.check_gate("alpha", alpha, (batch, heads_q), q.device, dtype)[..., None, None]
    beta = C.check_gate("beta", beta, (batch, heads_q), q.device, dtype, low_open=False)[..., None, None]
    scale = C.resolve_scale(scale, dk)
    shape = (batch, heads_q, dk, dv)
    state = q.new_zeros(shape, dtype=dtype) if state is None else C.check_state("state", state, shape, q.device, dtype)
    group = heads_q // heads_kv
    kn = l2_normalize(C.expand_heads(k, group).to(dtype))[..., :, None]      # (B, Hq, Dk, 1)
    vc = C.expand_heads(v, group).to(dtype)[..., None, :]                    # (B, Hq, 1, Dv)
    state = alpha * (state - beta * kn * (kn.transpose(-1, -2) @ state)) + beta * kn * vc
    out = scale * torch.einsum("bhk,bhkv->bhv", l2_normalize(q.to(dtype)), state)
    return out.to(q.dtype), state
