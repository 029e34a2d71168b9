"""The reference of Gated DeltaNet: the sequential recurrence, token by token.

Short and obviously correct rather than fast: the tests' oracle for :mod:`.chunked` and
:mod:`.recurrent`, meant for float64 on a CPU. No checks beyond what the ops do.
"""

from __future__ import annotations

import torch

from .normalize import l2_normalize


def gated_delta_naive(q, k, v, alpha, beta, *, scale=None, initial_state=None):
    """``S_t = alpha_t (I - beta_t k_t k_t^T) S_(t-1) + beta_t k_t v_t^T``, ``o_t = scale S_t^T q_t``
    with ``q_t, k_t`` L2-normalised; shapes as :func:`foveate.linear.gated_delta`. Returns
    ``(out (B, Hq, N, Dv), state (B, Hq, Dk, Dv))`` in ``q``'s dtype."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k = l2_normalize(q), l2_normalize(k)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1]) if initial_state is None \
        else initial_state.to(q.dtype)
    outs = []
    for t in range(q.shape[2]):
        a, b = alpha[:, :, t, None, None], beta[:, :, t, None, None]
        kt = k[:, :, t]
        state = a * (eye - b * kt[..., :, None] * kt[..., None, :]) @ state + b * kt[..., :, None] * v[:, :, t, None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, :, t], state))
    out = torch.stack(outs, 2) if outs else q.new_zeros(*q.shape[:3], v.shape[-1])
    return out, state
