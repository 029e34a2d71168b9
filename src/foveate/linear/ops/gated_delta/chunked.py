"""Gated DeltaNet, chunked in the WY / UT form (Yang et al., 2024), in PyTorch ops.

With ``g_t`` the cumulative product of ``alpha`` inside a chunk (from its first token) and
``S`` the state before the chunk, the recurrence unrolls to
``S_t = g_t S + sum_(j <= t) (g_t / g_j) k_j u_j^T`` with pseudo-values ``u`` that solve a unit
lower-triangular system (the UT transform):
``(I + L) U = diag(beta) V - diag(beta g) K S``, ``L_tj = beta_t (g_t / g_j) k_t . k_j`` (``j < t``).
So ``U = U0 - W S`` with ``U0 = (I + L)^-1 diag(beta) V`` and ``W = (I + L)^-1 diag(beta g) K``,
both computed for every chunk at once; then chunk by chunk
``O = diag(g) Q S + (Q K^T * Gamma) U``, ``S <- g_c S + K^T diag(g_c / g) U``.
Every ratio ``g_t / g_j`` (``j <= t``) is at most 1 (from log-space differences);
``(I + L)^-1`` comes from :func:`.triangular.unit_lower_inverse`. Autograd goes through the
PyTorch ops (a fused Triton kernel is later work).
"""

from __future__ import annotations

import torch

from ... import _common as C
from .normalize import l2_normalize
from .triangular import unit_lower_inverse


def gated_delta(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Gated DeltaNet (Yang, Kautz and Hatamizadeh, 2024), causal:
    ``S_t = alpha_t (I - beta_t k_t k_t^T) S_(t-1) + beta_t k_t v_t^T``, ``o_t = scale S_t^T q_t``.

    ``q`` and ``k`` are L2-normalised here (``x / max(||x||, 1e-6)``, as the paper and
    flash-linear-attention's ``use_qk_l2norm_in_kernel`` do); pass them unnormalised or
    normalised, the result is the same.

    Args:
        q: ``(B, Hq, N, Dk)``.
        k: ``(B, Hkv, N, Dk)``, ``Hq % Hkv == 0``: query head ``h`` reads kv head
            ``h // (Hq / Hkv)`` (grouped-query attention).
        v: ``(B, Hkv, N, Dv)``.
        alpha: ``(B, Hq, N)``, the decay gate, in ``(0, 1]`` (may require grad).
        beta: ``(B, Hq, N)``, the write strength, in ``[0, 1]`` (may require grad).
        scale: factor on the read ``S_t^T q_t``; defaults to ``Dk ** -0.5``.
        chunk_size: tokens per chunk (any ``N`` works; the last chunk may be shorter).
        initial_state: ``(B, Hq, Dk, Dv)`` (``None``: zeros), from an earlier call or
            :func:`gated_delta_step`.
        return_state: also return the state after the last token.

    Returns:
        ``out (B, Hq, N, Dv)`` in ``q.dtype``; with ``return_state`` also the state
        ``(B, Hq, Dk, Dv)``, float32 (float64 for float64 inputs), the dtype of the arithmetic.

    Raises:
        TypeError, ValueError: on bad input, naming the argument.
    """
    batch, heads_q, heads_kv, length, dk, dv = C.check_qkv(q, k, v)
    dtype = C.compute_dtype(q.dtype)
    alpha = C.check_gate("alpha", alpha, (batch, heads_q, length), q.device, dtype)
    beta = C.check_gate("beta", beta, (batch, heads_q, length), q.device, dtype, low_open=False)
    scale = C.resolve_scale(scale, dk)
    chunk_size = C.check_int("chunk_size", chunk_size, 1)
    return_state = C.check_bool("return_state", return_state)
    shape = (batch, heads_q, dk, dv)
    state = q.new_zeros(shape, dtype=dtype) if initial_state is None else \
        C.check_state("initial_state", initial_state, shape, q.device, dtype)
    group = heads_q // heads_kv
    qn = l2_normalize(q.to(dtype)) * scale
    kn = l2_normalize(C.expand_heads(k, group).to(dtype))
    vc = C.expand_heads(v, group).to(dtype)
    outputs, state = C.over_chunks(_chunks, (qn, kn, vc, torch.log(alpha), beta), state, chunk_size)
    out = (q.new_zeros(batch, heads_q, 0, dv) if outputs is None else outputs[0]).to(q.dtype)
    return (out, state) if return_state else out


def _chunks(q, k, v, log_alpha, beta, state):
    """Chunks of one length ``c``: ``q, k (B, H, n, c, Dk)`` (normalised, ``q`` scaled),
    ``v (B, H, n, c, Dv)``, ``log_alpha, beta (B, H, n, c)``."""
    c = q.shape[3]
    g = log_alpha.cumsum(-1)                                              # log g_t
    pos = torch.arange(c, device=q.device)
    inclusive, strict = pos[:, None] >= pos[None, :], pos[:, None] > pos[None, :]
    gap = g[..., :, None] - g[..., None, :]
    # g_t / g_j for j <= t (at most 1); the masked exponent keeps exp finite, gradients too.
    ratio = torch.where(inclusive, torch.exp(torch.where(inclusive, gap, 0.0)), 0.0)   # (B, H, n, c, c)
    lower = torch.where(strict, beta[..., :, None] * (k @ k.transpose(-1, -2)) * ratio, 0.0)
    inverse = unit_lower_inverse(lower)                                   # (I + L)^-1, unit diagonal implied
    w, u0 = inverse @ ((beta * g.exp())[..., None] * k), inverse @ (beta[..., None] * v)
    scores = q @ k.transpose(-1, -2) * ratio
    q_start = q * g.exp()[..., None]
    k_end = k * (g[..., -1:] - g).exp()[..., None]
    across = g[..., -1].exp()[..., None, None]                            # (B, H, n, 1, 1)
    outs = []
    # (unbind: one backward for all chunks, not one per chunk)
    per_chunk = (t.unbind(2) for t in (u0, w, q_start, scores, k_end, across))
    for u0_i, w_i, q_i, scores_i, k_i, across_i in zip(*per_chunk):
        u = u0_i - w_i @ state
        outs.append(q_i @ state + scores_i @ u)
        state = across_i * state + k_i.transpose(-1, -2) @ u
    return (torch.stack(outs, 2),), state
