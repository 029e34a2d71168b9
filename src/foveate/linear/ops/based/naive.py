"""The reference of Based: its two branches token by token, from their definitions.

Short and obviously correct rather than fast: the tests' oracle for :mod:`.chunked` and
:mod:`.recurrent`, meant for float64 on a CPU. No checks beyond what the ops do.
"""

from __future__ import annotations

import torch

from .feature_map import BasedState, taylor


def based_naive(q, k, v, window=64, *, q_window=None, k_window=None, scale=None, window_scale=None,
                initial_state=None):
    """``out_t = phi(scale q_t)^T S_t / phi(scale q_t)^T z_t`` with ``S_t = S_(t-1) + phi(k_t) v_t^T``,
    ``z_t = z_(t-1) + phi(k_t)``, plus softmax attention of ``q_window_t`` (or ``q_t``) over the
    last ``window`` keys (the cached ones of ``initial_state`` first). Shapes as
    :func:`foveate.linear.based`; returns ``(out, BasedState)`` in ``q``'s dtype."""
    heads_q, heads_kv, dv = q.shape[1], k.shape[1], v.shape[-1]
    group = heads_q // heads_kv
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    size = 1 + q.shape[-1] + q.shape[-1] ** 2
    if initial_state is None:
        kv, z = q.new_zeros(q.shape[0], heads_q, size, dv), q.new_zeros(q.shape[0], heads_q, size)
    else:
        kv, z = (t.to(q.dtype).repeat_interleave(group, 1) for t in initial_state[:2])
    ke, ve = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    outs = []
    for t in range(q.shape[2]):
        fk, fq = taylor(ke[:, :, t]), taylor(scale * q[:, :, t])
        kv = kv + fk[..., :, None] * ve[:, :, t, None, :]
        z = z + fk
        outs.append(torch.einsum("bhf,bhfd->bhd", fq, kv) / torch.einsum("bhf,bhf->bh", fq, z)[..., None])
    out = torch.stack(outs, 2) if outs else q.new_zeros(*q.shape[:3], dv)
    state = BasedState(kv[:, ::group], z[:, ::group])
    if not window:
        return out, state

    qw, kw = (q, k) if q_window is None else (q_window, k_window)
    window_scale = qw.shape[-1] ** -0.5 if window_scale is None else window_scale
    keys, values = kw, v
    if initial_state is not None:
        keys, values = torch.cat([initial_state.keys, kw], 2), torch.cat([initial_state.values, v], 2)
    before = keys.shape[2] - q.shape[2]
    keys_e, values_e = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
    outs = []
    for t in range(q.shape[2]):
        p = before + t
        seen = slice(max(0, p - window + 1), p + 1)
        weights = (window_scale * torch.einsum("bhd,bhnd->bhn", qw[:, :, t], keys_e[:, :, seen])).softmax(-1)
        outs.append(torch.einsum("bhn,bhnd->bhd", weights, values_e[:, :, seen]))
    if outs:
        out = out + torch.stack(outs, 2)
    start = max(0, keys.shape[2] - (window - 1))
    return out, BasedState(state.kv, state.z, keys[:, :, start:], values[:, :, start:])
