"""The linear-attention methods of :class:`~foveate.nn.LinearAttention` and
:class:`~foveate.nn.HybridAttention`: each method's own parameters (decays, gates) and its calls
into :mod:`foveate.linear` (the chunked op for a prefill, the one-token step for decoding).

A method receives the linear heads' ``q, k, v`` (and Based's window queries and keys) already
projected by the module's shared ``qkv``; it owns no projection of its own except Gated
DeltaNet's gate projections. Each is a small ``nn.Module`` registered as the module's
``linear`` child, so its parameters are ``linear.<name>`` in the state dict.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import linear as L
from ..linear._common import check_int, compute_dtype
from ..linear.ops.decayed.chunked import decay_logs

#: The methods, by the name ``method=`` takes.
METHODS = ("decayed", "gated_delta", "based")

#: Gated DeltaNet's ``log(alpha)`` is clamped here (``alpha >= e^-60``): ``alpha`` stays
#: positive in float32 (as :func:`foveate.linear.gated_delta` requires), and a gate that small
#: forgets the state completely anyway.
LOG_ALPHA_MIN = -60.0

#: A fixed decay of exactly 1 made learnable starts from this rate (``-log(lambda)``).
MIN_RATE = 1e-12


class _Method(nn.Module):
    """What every method shares: the linear heads' counts, dims, scale and chunk size.

    ``extra`` lists the projections a method reads beside ``q, k, v`` as ``(name, kind, dim)``
    with ``kind`` ``"q"`` (one per linear query head) or ``"kv"`` (one per linear kv head)."""

    name = ""
    causal_only = True

    def __init__(self, heads: int, kv_heads: int, head_dim: int, scale: float, chunk_size: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.scale, self.chunk_size = scale, chunk_size
        self.qk_dim = head_dim
        self.extra: tuple[tuple[str, str, int], ...] = ()

    def forward(self, x, q, k, v, extra: dict, state, causal: bool):
        """The prefill: ``x (B, N, C)`` (for gates), ``q (B, Hl, N, Dqk)``, ``k (B, Hlkv, N, Dqk)``,
        ``v (B, Hlkv, N, D)``; returns ``(out (B, Hl, N, D), state)`` (state ``None`` when not
        causal)."""
        raise NotImplementedError

    def step(self, x, q, k, v, extra: dict, state):
        """One token: ``x (B, C)``, ``q (B, Hl, Dqk)``, ... ; returns ``(out (B, Hl, D), state)``."""
        raise NotImplementedError


class Decayed(_Method):
    """Lightning Attention-2 / RetNet (:func:`foveate.linear.decayed`): a per-head decay
    ``lambda_h``, fixed (the papers') or learnable as ``lambda_h = exp(-exp(decay_log_rate_h))``
    (a positive rate, so ``lambda_h`` stays in ``(0, 1]``)."""

    name = "decayed"
    causal_only = False

    def __init__(self, heads, kv_heads, head_dim, scale, chunk_size, *, decay, learn_decay: bool):
        super().__init__(heads, kv_heads, head_dim, scale, chunk_size)
        if isinstance(decay, torch.Tensor):
            decay = decay.detach()
        values = torch.exp(decay_logs(decay, heads, torch.device("cpu"), torch.float64))
        self.learn_decay = learn_decay
        if learn_decay:
            rate = (-torch.log(values)).clamp(min=MIN_RATE)
            self.decay_log_rate = nn.Parameter(torch.log(rate).to(torch.get_default_dtype()))
        else:
            # Python floats, not a buffer: ``module.half()`` would round decays near 1 to 1.
            self.fixed_decay = tuple(float(d) for d in values)

    def decay(self, dtype: torch.dtype):
        """``lambda_h`` as :func:`foveate.linear.decayed` takes it: a ``(Hl,)`` tensor (learnable)
        or a tuple of floats (fixed)."""
        if self.learn_decay:
            return torch.exp(-torch.exp(self.decay_log_rate.to(dtype)))
        return self.fixed_decay

    def forward(self, x, q, k, v, extra, state, causal):
        decay = self.decay(compute_dtype(q.dtype))
        if not causal:
            return L.decayed(q, k, v, decay, causal=False, scale=self.scale, chunk_size=self.chunk_size), None
        return L.decayed(q, k, v, decay, scale=self.scale, chunk_size=self.chunk_size, initial_state=state,
                         return_state=True)

    def step(self, x, q, k, v, extra, state):
        return L.decayed_step(q, k, v, self.decay(compute_dtype(q.dtype)), state=state, scale=self.scale)

    def extra_repr(self) -> str:
        return "decay=learned" if self.learn_decay else f"decay={[round(d, 6) for d in self.fixed_decay]}"


class GatedDelta(_Method):
    """Gated DeltaNet (:func:`foveate.linear.gated_delta`) with the paper's gates (as
    flash-linear-attention's ``GatedDeltaNet`` layer computes them), per linear query head:

    - ``beta_t = sigmoid(b_proj(x_t))``;
    - ``alpha_t = exp(-exp(A_log) * softplus(a_proj(x_t) + dt_bias))`` (Mamba-2's
      parameterisation), its log clamped at ``LOG_ALPHA_MIN = -60``.

    ``a_proj``, ``b_proj``: ``Linear(C, Hl, bias=False)``; ``A_log``, ``dt_bias``: ``(Hl,)``,
    initialised as Mamba-2 does (``A`` uniform in ``[1, 16]``, ``softplus(dt_bias)`` log-uniform
    in ``[0.001, 0.1]``). The gates are computed in float32 (float64 for float64 inputs)."""

    name = "gated_delta"

    def __init__(self, heads, kv_heads, head_dim, scale, chunk_size, *, embed_dim: int):
        super().__init__(heads, kv_heads, head_dim, scale, chunk_size)
        self.a_proj = nn.Linear(embed_dim, heads, bias=False)
        self.b_proj = nn.Linear(embed_dim, heads, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))
        dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, beta)`` from ``x`` ``(B, N, C)`` as ``(B, Hl, N)`` each (``x (B, C)``: ``(B, Hl)``)."""
        dtype = compute_dtype(x.dtype)
        a, b = self.a_proj(x).to(dtype), self.b_proj(x).to(dtype)
        log_alpha = -torch.exp(self.A_log.to(dtype)) * F.softplus(a + self.dt_bias.to(dtype))
        alpha, beta = torch.exp(log_alpha.clamp(min=LOG_ALPHA_MIN)), torch.sigmoid(b)
        return alpha.movedim(-1, 1), beta.movedim(-1, 1)

    def forward(self, x, q, k, v, extra, state, causal):
        alpha, beta = self.gates(x)
        return L.gated_delta(q, k, v, alpha, beta, scale=self.scale, chunk_size=self.chunk_size,
                             initial_state=state, return_state=True)

    def step(self, x, q, k, v, extra, state):
        alpha, beta = self.gates(x)
        return L.gated_delta_step(q, k, v, alpha, beta, state=state, scale=self.scale)


class Based(_Method):
    """Based (:func:`foveate.linear.based`): the Taylor branch on ``feature_dim``-dim queries and
    keys (its scale ``feature_dim ** -0.5``, Based's), plus, with ``window >= 1``, exact softmax
    attention over the last ``window`` keys with its own head-dim queries and keys
    (``q_window``, ``k_window``, at the module's scale). Both read the same values. No parameters
    of its own: every projection is in the module's ``qkv``."""

    name = "based"

    def __init__(self, heads, kv_heads, head_dim, scale, chunk_size, *, feature_dim: int, window: int):
        super().__init__(heads, kv_heads, head_dim, scale, chunk_size)
        self.qk_dim, self.window = feature_dim, window
        if window:
            self.extra = (("q_window", "q", head_dim), ("k_window", "kv", head_dim))

    def _windows(self, extra):
        return extra.get("q_window"), extra.get("k_window")

    def forward(self, x, q, k, v, extra, state, causal):
        qw, kw = self._windows(extra)
        return L.based(q, k, v, self.window, q_window=qw, k_window=kw, window_scale=self.scale,
                       chunk_size=self.chunk_size, initial_state=state, return_state=True)

    def step(self, x, q, k, v, extra, state):
        qw, kw = self._windows(extra)
        return L.based_step(q, k, v, self.window, q_window=qw, k_window=kw, state=state, window_scale=self.scale)

    def extra_repr(self) -> str:
        return f"feature_dim={self.qk_dim}, window={self.window}"


def make_method(method, *, embed_dim: int, heads: int, kv_heads: int, head_dim: int, scale: float, causal: bool,
                chunk_size, decay, learn_decay, feature_dim, window) -> _Method:
    """The method module named ``method`` for ``heads`` linear query heads (``kv_heads`` kv
    heads), its options checked: an option of another method raises ``ValueError``."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, one of {METHODS}, got {type(method).__name__} {method!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    given = {"decay": decay is not None, "learn_decay": learn_decay is not False,
             "feature_dim": feature_dim is not None, "window": window is not None}
    owners = {"decay": "decayed", "learn_decay": "decayed", "feature_dim": "based", "window": "based"}
    for option, owner in owners.items():
        if given[option] and owner != method:
            raise ValueError(f"{option} is an option of method={owner!r}, not of method={method!r}")
    if not isinstance(learn_decay, bool):
        raise TypeError(f"learn_decay must be a bool, got {type(learn_decay).__name__} {learn_decay!r}")
    chunk_size = check_int("chunk_size", chunk_size, 1)
    common = (heads, kv_heads, head_dim, scale, chunk_size)
    if method == "decayed":
        return Decayed(*common, decay=decay, learn_decay=learn_decay)
    if not causal:
        raise ValueError(f"method={method!r} is causal only: causal=False needs method='decayed'")
    if method == "gated_delta":
        return GatedDelta(*common, embed_dim=embed_dim)
    feature_dim = 16 if feature_dim is None else check_int("feature_dim", feature_dim, 1)
    window = 64 if window is None else check_int("window", window, 0)
    return Based(*common, feature_dim=feature_dim, window=window)
