"""Based one token at a time, for decoding after :func:`.chunked.based`."""

from __future__ import annotations

import torch

from ... import _common as C
from . import inputs
from .feature_map import BasedState, taylor


def based_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int = 64,
    *,
    q_window: torch.Tensor | None = None,
    k_window: torch.Tensor | None = None,
    state: BasedState | None = None,
    scale: float | None = None,
    window_scale: float | None = None,
) -> tuple[torch.Tensor, BasedState]:
    """One token of :func:`based`: the state takes ``phi(k) v^T`` and ``phi(k)``, the window
    cache ``k`` (or ``k_window``) and ``v``; the output reads both.

    Args:
        q: ``(B, Hq, F)``, one token (no length axis).
        k: ``(B, Hkv, F)``.
        v: ``(B, Hkv, Dv)``.
        window: as :func:`based` takes it (the same as the call that made ``state``).
        q_window: ``(B, Hq, Dw)`` (with ``k_window``) or ``None``.
        k_window: ``(B, Hkv, Dw)`` or ``None``.
        state: a :class:`BasedState` (``None``: the start of a sequence).
        scale: as :func:`based` takes it.
        window_scale: as :func:`based` takes it.

    Returns:
        ``(out (B, Hq, Dv) in q.dtype, state)``.
    """
    batch, heads_q, heads_kv, _, feature_dim, dv = C.check_qkv(q, k, v, step=True)
    dtype = C.compute_dtype(q.dtype)
    window = inputs.check_window(window)
    qw, kw = inputs.window_inputs(q, k, q_window, k_window, window, step=True)
    scale = C.resolve_scale(scale, feature_dim)
    window_scale = C.resolve_scale(window_scale, qw.shape[-1], "window_scale")
    state = inputs.initial_state(state, "state", batch=batch, heads_kv=heads_kv, feature_dim=feature_dim, dv=dv,
                                 window=window, keys_like=kw, dtype=dtype)
    group = heads_q // heads_kv
    fk, vc = taylor(k.to(dtype)), v.to(dtype)
    kv = state.kv + fk[..., :, None] * vc[..., None, :]
    z = state.z + fk
    fq = taylor(q.to(dtype) * scale).unflatten(1, (heads_kv, group))          # (B, Hkv, G, F')
    out = (torch.einsum("bhgf,bhfd->bhgd", fq, kv) / torch.einsum("bhgf,bhf->bhg", fq, z)[..., None]).flatten(1, 2)
    keys, values = state.keys, state.values
    if window:
        keys, values = torch.cat([keys, kw[:, :, None]], 2), torch.cat([values, v[:, :, None]], 2)
        scores = torch.einsum("bhgd,bhnd->bhgn", qw.unflatten(1, (heads_kv, group)).to(dtype), keys.to(dtype))
        weights = (window_scale * scores).softmax(-1)
        out = out + torch.einsum("bhgn,bhnd->bhgd", weights, values.to(dtype)).flatten(1, 2)
        keys, values = inputs.last_keys(keys, values, window)
    return out.to(q.dtype), BasedState(kv, z, keys, values)
