"""``LinearAttention``: projected self-attention running a :mod:`foveate.linear` method.

The projections are :class:`~foveate.nn.SelfAttention`'s (one ``qkv``, one ``proj``, ``proj_drop``;
for ``decayed`` and ``gated_delta`` without GQA its very layout, so its weights load), the mixer
one of :func:`foveate.linear.decayed` (Lightning Attention-2 / RetNet),
:func:`foveate.linear.gated_delta` (Gated DeltaNet) or :func:`foveate.linear.based` (Based).
A whole sequence runs the chunked op; one token with a state runs the op's step, for decoding:

```python
import torch
from foveate.nn import LinearAttention

attn = LinearAttention(256, 4, "gated_delta")
y, state = attn(torch.randn(2, 100, 256), return_state=True)    # prefill: (2, 100, 256)
y1, state = attn(torch.randn(2, 1, 256), state, return_state=True)   # one more token
```
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..linear import BasedState
from .mixed_heads import _MixedHeads


class LinearAttention(_MixedHeads):
    """Multi-head linear attention with :class:`~foveate.nn.SelfAttention`'s projections.

    ``y = proj_drop(proj(linear(q, k, v)))``, ``q, k, v`` from one projection ``qkv(x)``, whose
    outputs are, in order, ``q`` (``num_heads * Dqk``), ``k`` (``kv_heads * Dqk``), ``v``
    (``kv_heads * head_dim``) and, for Based with a window, ``q_window`` (``num_heads *
    head_dim``) and ``k_window`` (``kv_heads * head_dim``); ``Dqk`` is ``head_dim``, or Based's
    ``feature_dim``. Query head ``h`` reads kv head ``h // (num_heads / kv_heads)``. The method's
    own parameters live in the child module ``linear`` (``linear.A_log``, ...). The methods
    (``method=``):

    * ``"decayed"``: :func:`foveate.linear.decayed`, ``o_t = scale sum_(s <= t) lambda_h^(t - s)
      (q_t . k_s) v_s``. ``lambda_h`` fixed (the papers do not learn it): ``decay=None`` is
      Lightning Attention-2's ALiBi rule for ``num_heads`` heads
      (:func:`foveate.linear.default_decay`); or ``learn_decay=True``: a parameter
      ``linear.decay_log_rate`` ``(num_heads,)`` with ``lambda_h = exp(-exp(decay_log_rate_h))``,
      initialised at ``decay``. The only method with ``causal=False`` (decayed both ways).
    * ``"gated_delta"``: :func:`foveate.linear.gated_delta` with Gated DeltaNet's gates as the
      paper (and flash-linear-attention's layer) parameterise them, per query head:
      ``beta_t = sigmoid(b_proj(x_t))``, ``alpha_t = exp(-exp(A_log) softplus(a_proj(x_t) +
      dt_bias))`` (Mamba-2's form; ``log(alpha_t)`` clamped at -60 so that ``alpha_t > 0`` in
      float32). Parameters ``linear.a_proj``, ``linear.b_proj`` (``Linear(C, num_heads,
      bias=False)``), ``linear.A_log`` and ``linear.dt_bias`` (``(num_heads,)``, Mamba-2's
      initialisation). ``q`` and ``k`` are L2-normalised by the op.
    * ``"based"``: :func:`foveate.linear.based`: the Taylor linear attention on
      ``feature_dim``-dim (default 16) queries and keys, scale ``feature_dim ** -0.5``, plus
      exact softmax attention over the last ``window`` keys (default 64; ``0``: none) with its
      own head-dim queries and keys at ``qk_scale``; both read ``v``. (Based puts the two in
      separate layers; here one module sums them, as :func:`foveate.linear.based` does.)

    Not included (they belong to the surrounding block, or are later work): the papers'
    short convolutions and feature activations on ``q, k``, output gates and norms, and
    positional encodings (like :class:`~foveate.nn.SelfAttention`, none is applied).

    Input ``x`` ``(B, N, C)``; output the same shape. ``forward(x, state, return_state)``:
    with ``return_state`` it also returns the state after the last token (the op's: a
    ``(B, num_heads, Dqk, head_dim)`` float32 tensor for ``decayed`` and ``gated_delta``, a
    :class:`foveate.linear.BasedState` for ``based``); given a ``state``, the input continues
    that sequence (chunked prefill), and a one-token input runs the op's one-token step
    (decoding).

    Args:
        embed_dim: channels ``C`` of the input, ``num_heads * head_dim``.
        num_heads: query heads; must divide ``embed_dim``.
        method: ``"decayed"``, ``"gated_delta"`` or ``"based"``.
        kv_heads: key/value heads (grouped-query attention); must divide ``num_heads``;
            ``None``: ``num_heads``.
        causal: ``False`` only with ``method="decayed"`` (and then no state).
        decay: ``"decayed"`` only: ``lambda_h`` in ``(0, 1]`` per head (a ``(num_heads,)``
            tensor or sequence, or one number); ``None``: Lightning Attention-2's.
        learn_decay: ``"decayed"`` only: learn the decays (initialised at ``decay``).
        feature_dim: ``"based"`` only: the Taylor branch's query/key dim; ``None``: 16.
        window: ``"based"`` only: keys of the sliding-window branch; ``None``: 64.
        chunk_size: tokens per chunk of the chunked op.
        qkv_bias: a bias in the ``qkv`` projection.
        qk_scale: factor on ``q . k`` (``decayed``, ``gated_delta``, Based's window);
            ``None`` is ``head_dim ** -0.5``.
        proj_drop: dropout probability after the output projection.

    Raises:
        TypeError, ValueError: on bad arguments (here, or in ``forward`` for a bad input),
            naming the argument; an option of another method is a ``ValueError``.

    Example:
        ```python
        import torch
        from foveate.nn import LinearAttention

        attn = LinearAttention(512, 8, "decayed", kv_heads=2)   # Lightning Attention-2
        y = attn(torch.randn(2, 1000, 512))                     # (2, 1000, 512)
        ```
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        method: str,
        *,
        kv_heads: int | None = None,
        causal: bool = True,
        decay: torch.Tensor | Sequence[float] | float | None = None,
        learn_decay: bool = False,
        feature_dim: int | None = None,
        window: int | None = None,
        chunk_size: int = 64,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
    ):
        super().__init__(embed_dim, num_heads, softmax_heads=0, pattern=None, method=method, kv_heads=kv_heads,
                         causal=causal, decay=decay, learn_decay=learn_decay, feature_dim=feature_dim, window=window,
                         chunk_size=chunk_size, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=proj_drop,
                         backend="auto")

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor | BasedState | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | BasedState]:
        """Run the layer on ``x``, optionally continuing ``state``.

        Args:
            x: ``(B, N, C)``.
            state: the state returned by an earlier call (``None``: a new sequence). With
                ``N == 1`` the op's one-token step runs.
            return_state: also return the state after the last token.

        Returns:
            ``y`` ``(B, N, C)``; with ``return_state``, ``(y, state)``.
        """
        return super().forward(x, state, return_state)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kv_heads={self.kv_heads}, "
                f"method={self.method!r}, causal={self.causal}")
