"""Attention over a pattern's tokens plus extra tokens that see, and are seen by, everything.

Text beside video (HunyuanVideo puts the text after the video tokens, CogVideoX before),
class and register tokens beside an image's patches (timm's prefix tokens): the pattern
covers the canvas tokens; each extra token is a key every canvas query sees and a query that
sees every key. ``joint_attention`` runs that with any pattern:

* the canvas queries attend their pattern's keys and every extra key. A pattern that takes
  ``extra_kv`` itself (:class:`~foveate.patterns.Neighborhood`) runs it in one call on the
  canvas-then-extra keys; any other pattern runs twice (its own keys, then the extra keys
  densely) and the two results are merged by their log-sum-exp, which is exact and keeps
  gradients (the kernels take a gradient into ``lse``);
* the extra queries attend every key densely (few rows: one dense call).
"""

from __future__ import annotations

import dataclasses

import torch

from ..api import attention
from ..patterns.base import Pattern


def joint_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | None,
    *,
    extra: int,
    extra_first: bool = False,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention where ``pattern`` covers the canvas tokens and ``extra`` tokens are global.

    Args:
        q: ``(B, Hq, N, D)`` with ``N = n_canvas + extra``: the extra tokens first
            (``extra_first=True``) or last; the canvas tokens in the pattern's order.
        k: ``(B, Hkv, N, D)``, the same token order (``Hq % Hkv == 0``).
        v: ``(B, Hkv, N, Dv)``.
        pattern: the canvas tokens' pattern (``q_len == kv_len == n_canvas``); ``None`` is
            dense attention over all tokens.
        extra: how many extra tokens (0 is ``attention(q, k, v, pattern)``).
        extra_first: the extra tokens come before the canvas tokens.
        scale: as in :func:`foveate.attention`.
        backend: as in :func:`foveate.attention`.

    Returns:
        ``(B, Hq, N, Dv)`` in ``q.dtype``: a canvas query attends its pattern's keys and every
        extra key; an extra query attends every key.
    """
    if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
        raise TypeError(f"extra must be a non-negative int, got {extra!r}")
    if not isinstance(extra_first, bool):
        raise TypeError(f"extra_first must be a bool, got {type(extra_first).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a (B, H, N, D) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    n = q.shape[2]
    if k.shape[2] != n or v.shape[2] != n:
        raise ValueError(f"q, k and v must have the same tokens, got {n}, {k.shape[2]} and {v.shape[2]}")
    if extra > n:
        raise ValueError(f"extra={extra} is more than the {n} tokens")
    if pattern is None or extra == 0:
        return attention(q, k, v, pattern, scale=scale, backend=backend)

    canvas = slice(extra, n) if extra_first else slice(0, n - extra)
    glob = slice(0, extra) if extra_first else slice(n - extra, n)
    if n - extra == 0:
        return attention(q, k, v, None, scale=scale, backend=backend)
    qc, kc, vc = q[:, :, canvas], k[:, :, canvas], v[:, :, canvas]
    kg, vg = k[:, :, glob], v[:, :, glob]

    if (dataclasses.is_dataclass(pattern) and any(f.name == "extra_kv" for f in dataclasses.fields(pattern))
            and pattern.extra_kv == 0):
        # The pattern takes the extra keys itself: one call, the keys canvas-then-extra.
        with_extra = dataclasses.replace(pattern, extra_kv=extra)
        out_c = attention(qc, torch.cat([kc, kg], 2), torch.cat([vc, vg], 2), with_extra, scale=scale,
                          backend=backend)
    else:
        out_p, lse_p = attention(qc, kc, vc, pattern, scale=scale, backend=backend, return_lse=True)
        out_g, lse_g = attention(qc, kg, vg, None, scale=scale, backend=backend, return_lse=True)
        out_c = _merge(out_p, lse_p, out_g, lse_g)
    # The extra queries see everything.
    out_e = attention(q[:, :, glob], k, v, None, scale=scale, backend=backend)
    parts = (out_e, out_c) if extra_first else (out_c, out_e)
    return torch.cat(parts, 2)


def _merge(out_a, lse_a, out_b, lse_b):
    """Two attentions over disjoint key sets merged into one, by their log-sum-exp.

    ``lse_b`` is finite (the extra keys are dense), so the total is finite; a query whose
    pattern allows no key has ``lse_a = -inf`` and takes ``out_b`` alone."""
    lse = torch.logaddexp(lse_a, lse_b)
    w_a = torch.exp(lse_a - lse).unsqueeze(-1)
    w_b = torch.exp(lse_b - lse).unsqueeze(-1)
    return (out_a.float() * w_a + out_b.float() * w_b).to(out_a.dtype)
