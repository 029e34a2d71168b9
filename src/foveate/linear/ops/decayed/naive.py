"""The reference of decayed linear attention: the sequential recurrence, token by token.

Short and obviously correct rather than fast: the tests' oracle for :mod:`.chunked` and
:mod:`.recurrent`, meant for float64 on a CPU. No checks beyond what the ops do.
"""

from __future__ import annotations

import torch


def decayed_naive(q, k, v, decay, *, causal=True, scale=None, initial_state=None):
    """``S_t = lambda_h S_(t-1) + k_t v_t^T``, ``o_t = scale S_t^T q_t``, in ``q``'s dtype.

    Args:
        q: ``(B, Hq, N, Dk)``; k: ``(B, Hkv, N, Dk)``; v: ``(B, Hkv, N, Dv)``, ``Hq % Hkv == 0``.
        decay: ``(Hq,)`` tensor of ``lambda_h`` in ``(0, 1]``.
        causal: ``False`` for ``o_t = scale sum_s lambda_h^|t - s| (q_t . k_s) v_s`` over every
            ``s`` (computed densely from that formula; no state).
        initial_state: ``(B, Hq, Dk, Dv)`` or ``None`` (zeros).

    Returns:
        ``(out (B, Hq, N, Dv), state (B, Hq, Dk, Dv))``; ``state`` is ``None`` when not causal.
    """
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    lam = decay.to(q.dtype)
    n = q.shape[2]
    if not causal:
        t = torch.arange(n, device=q.device)
        weights = lam[:, None, None] ** (t[:, None] - t[None, :]).abs().to(q.dtype)  # (Hq, N, N)
        return scale * (q @ k.transpose(-1, -2) * weights) @ v, None
    state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1]) if initial_state is None \
        else initial_state.to(q.dtype)
    outs = []
    for t in range(n):
        state = lam[:, None, None] * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, :, t], state))
    out = torch.stack(outs, 2) if outs else q.new_zeros(*q.shape[:3], v.shape[-1])
    return out, state
