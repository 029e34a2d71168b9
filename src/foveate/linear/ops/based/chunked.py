"""Based (Arora et al., 2024), chunked in PyTorch ops: Taylor linear attention with its
normaliser, plus exact causal sliding-window softmax attention through :func:`foveate.attention`.

The linear branch, chunk by chunk: inside a chunk, the scores ``1 + x + x^2 / 2`` with
``x = scale q.k`` directly (no feature expansion); across chunks, the state
``(sum phi(k) v^T, sum phi(k))`` read by ``phi(scale q)``. Without a decay, the states before
the chunks are a prefix sum: every chunk is computed at once. Autograd goes through the
PyTorch ops (a fused Triton kernel is later work).
"""

from __future__ import annotations

import torch

from ... import _common as C
from ....api import attention
from ....patterns import SlidingWindow
from . import inputs
from .feature_map import BasedState, taylor


def based(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int = 64,
    *,
    q_window: torch.Tensor | None = None,
    k_window: torch.Tensor | None = None,
    scale: float | None = None,
    window_scale: float | None = None,
    chunk_size: int = 64,
    initial_state: BasedState | None = None,
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, BasedState]:
    """Based's mixers on one sequence, causal: Taylor linear attention plus a sliding window.

    ``out = linear + window_out`` where

    - ``linear_t = sum_(s <= t) a_ts v_s / sum_(s <= t) a_ts``, ``a_ts = phi(scale q_t) . phi(k_s)
      = 1 + x + x^2 / 2``, ``x = scale q_t . k_s``: Based's second-order Taylor feature map
      ``phi(x) = [1, x, vec(x x^T) / sqrt(2)]`` on a small feature dim ``F`` (the paper: 16).
      ``a_ts >= 1/2``, so the normaliser is positive: no epsilon.
    - ``window_out_t = softmax_s(window_scale qw_t . kw_s) v_s`` over the ``window`` keys
      ``t - window + 1 .. t``, i.e. :func:`foveate.attention` with
      ``P.SlidingWindow(window - 1)``, with ``qw, kw = q_window, k_window`` or, without them,
      ``q, k``.

    The paper puts the two in separate layers (its linear-attention layers have their own
    ``F``-dim projections; its sliding-window layers, full-head-dim ones): pass that layer's
    queries and keys as ``q_window, k_window``, or ``window=0`` for the linear branch alone
    (and call :func:`foveate.attention` yourself for a window layer).

    Args:
        q: ``(B, Hq, N, F)``, the linear branch's queries.
        k: ``(B, Hkv, N, F)``, ``Hq % Hkv == 0`` (grouped-query attention).
        v: ``(B, Hkv, N, Dv)``, both branches' values.
        window: keys per query in the window branch (itself included); ``0``: none.
        q_window: ``(B, Hq, N, Dw)``, the window branch's queries (with ``k_window``, or neither:
            then ``q`` and ``k``).
        k_window: ``(B, Hkv, N, Dw)``, the window branch's keys.
        scale: the linear branch's factor on ``q . k``; defaults to ``F ** -0.5`` (Based's).
        window_scale: the window branch's; defaults to ``Dw ** -0.5``.
        chunk_size: tokens per chunk of the linear branch.
        initial_state: a :class:`BasedState` from an earlier call or :func:`based_step` made
            with the same ``window`` (its window cache holds the last ``window - 1`` keys).
        return_state: also return the :class:`BasedState` after the last token.

    Returns:
        ``out (B, Hq, N, Dv)`` in ``q.dtype``; with ``return_state``, also the state. The
        linear branch computes in float32 (float64 for float64 inputs).

    Raises:
        TypeError, ValueError: on bad input, naming the argument.
    """
    batch, heads_q, heads_kv, length, feature_dim, dv = C.check_qkv(q, k, v)
    dtype = C.compute_dtype(q.dtype)
    window = inputs.check_window(window)
    qw, kw = inputs.window_inputs(q, k, q_window, k_window, window)
    scale = C.resolve_scale(scale, feature_dim)
    window_scale = C.resolve_scale(window_scale, qw.shape[-1], "window_scale")
    chunk_size = C.check_int("chunk_size", chunk_size, 1)
    return_state = C.check_bool("return_state", return_state)
    state = inputs.initial_state(initial_state, "initial_state", batch=batch, heads_kv=heads_kv,
                                 feature_dim=feature_dim, dv=dv, window=window, keys_like=kw, dtype=dtype)

    # The linear branch, a query head's group beside its position: (B, Hkv, N, G, F).
    group = heads_q // heads_kv
    qg = (q.to(dtype) * scale).unflatten(1, (heads_kv, group)).transpose(2, 3)
    outputs, (kv, z) = C.over_chunks(_chunks, (qg, k.to(dtype), v.to(dtype)), (state.kv, state.z), chunk_size)
    if outputs is None:
        out = q.new_zeros(batch, heads_q, 0, dv, dtype=dtype)
    else:
        num, den = outputs
        out = (num / den[..., None]).transpose(2, 3).flatten(1, 2)

    keys, values = state.keys, state.values
    if window and length:
        keys, values = torch.cat([keys, kw], 2), torch.cat([values, v], 2)
        out = out + attention(qw, keys, values, SlidingWindow(window - 1), scale=window_scale).to(dtype)
        keys, values = inputs.last_keys(keys, values, window)
    out = out.to(q.dtype)
    return (out, BasedState(kv, z, keys, values)) if return_state else out


def _chunks(q, k, v, state):
    """Chunks of one length ``c``: ``q (B, Hkv, n, c, G, F)`` (scaled), ``k (B, Hkv, n, c, F)``,
    ``v (B, Hkv, n, c, Dv)``; ``((numerator, denominator), state)``."""
    kv, z = state
    c = q.shape[3]
    x = torch.einsum("bhnigf,bhnjf->bhngij", q, k)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    scores = torch.where(causal, 1 + x + 0.5 * x * x, 0.0)
    num = torch.einsum("bhngij,bhnjd->bhnigd", scores, v)
    den = scores.sum(-1).transpose(-1, -2)                               # (B, Hkv, n, c, G)
    # Each chunk's writes; the state before each chunk is the sum of those before it.
    fk = taylor(k)
    writes, counts = torch.einsum("bhncf,bhncd->bhnfd", fk, v), fk.sum(3)
    kv_before = kv[:, :, None] + torch.cat([torch.zeros_like(writes[:, :, :1]), writes[:, :, :-1]], 2).cumsum(2)
    z_before = z[:, :, None] + torch.cat([torch.zeros_like(counts[:, :, :1]), counts[:, :, :-1]], 2).cumsum(2)
    fq = taylor(q)
    num = num + torch.einsum("bhnigf,bhnfd->bhnigd", fq, kv_before)
    den = den + torch.einsum("bhnigf,bhnf->bhnig", fq, z_before)
    return (num, den), (kv + writes.sum(2), z + counts.sum(2))
