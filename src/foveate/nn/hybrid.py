"""``HybridAttention``: some heads sparse softmax attention, the others linear, in one module.

One shared ``qkv`` projection; heads ``0 .. softmax_heads - 1`` run :func:`foveate.attention`
with a pattern, the rest a :mod:`foveate.linear` method; their outputs are concatenated head
by head (in head order) into one ``proj``. For hybrids across layers instead (a linear layer
here, a softmax layer there) see :mod:`foveate.nn.schedule`.

```python
import torch
from foveate import patterns as P
from foveate.nn import HybridAttention

# 8 heads: 2 of causal sliding-window softmax attention (512 keys), 6 of Gated DeltaNet
attn = HybridAttention(512, 8, 2, P.SlidingWindow(511) & P.Causal(), "gated_delta", kv_heads=4)
y = attn(torch.randn(2, 1000, 512))   # (2, 1000, 512)
```
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..patterns.base import Pattern
from .mixed_heads import HybridState, _MixedHeads


class HybridAttention(_MixedHeads):
    """Per-head hybrid: ``softmax_heads`` heads of sparse softmax attention, the other
    ``num_heads - softmax_heads`` heads of a linear method, from one ``qkv``, into one ``proj``.

    Which heads are which: query heads ``0 .. softmax_heads - 1`` are the softmax heads
    (``foveate.attention(q, k, v, pattern)``), query heads ``softmax_heads .. num_heads - 1``
    the linear heads (the ``method`` of :class:`~foveate.nn.LinearAttention`, its parameters on
    these heads only: ``linear.A_log`` has ``num_heads - softmax_heads`` entries). With
    ``kv_heads`` (grouped-query attention, ``G = num_heads / kv_heads``), kv heads
    ``0 .. softmax_heads / G - 1`` serve the softmax heads and the rest the linear heads:
    ``softmax_heads`` must be a multiple of ``G``. The output channels of head ``h`` are
    ``h * head_dim .. (h + 1) * head_dim - 1`` of ``proj``'s input, as in
    :class:`~foveate.nn.SelfAttention`.

    ``qkv``'s outputs, in order: ``q`` (softmax heads' ``softmax_heads * head_dim``, then the
    linear heads' ``(num_heads - softmax_heads) * Dqk``), ``k`` (likewise per kv head), ``v``
    (every kv head, ``head_dim`` each) and, for Based with a window, the linear heads'
    ``q_window`` and ``k_window``. ``Dqk`` is ``head_dim``, or Based's ``feature_dim``. So for
    ``decayed`` and ``gated_delta`` without GQA, ``qkv`` and ``proj`` have
    :class:`~foveate.nn.SelfAttention`'s shapes and layout: a softmax layer's weights load into
    a hybrid (``strict=False`` for the method's own parameters), each head keeping its weights.

    Input ``x`` ``(B, N, C)`` (a canvas pattern's tokens flat, in raster order); output the
    same shape. ``forward(x, state, return_state)``: with ``return_state`` it also returns a
    :class:`HybridState` (the linear heads' state and the softmax heads' keys and values so
    far); given a ``state``, the input continues that sequence: the softmax heads attend the
    cached keys and the new ones with ``pattern`` aligned bottom-right (as for any
    ``q_len < kv_len``, so a 1-D pattern: ``P.Causal()``, ``P.SlidingWindow(w)``, ...), and a
    one-token input runs the linear op's one-token step. The cache keeps every key (the
    pattern decides which are read).

    Args:
        embed_dim: channels ``C`` of the input, ``num_heads * head_dim``.
        num_heads: query heads; must divide ``embed_dim``.
        softmax_heads: heads of softmax attention, ``1 .. num_heads - 1``.
        pattern: the softmax heads' :mod:`foveate.patterns` pattern (e.g.
            ``P.SlidingWindow(511) & P.Causal()``, ``P.Causal()``), without ``extra_kv``;
            ``None`` is dense attention. It may be replaced later (``module.pattern = ...``).
        method: the linear heads' method, ``"decayed"``, ``"gated_delta"`` or ``"based"`` (as
            :class:`~foveate.nn.LinearAttention` takes it).
        kv_heads: key/value heads; must divide ``num_heads``; ``None``: ``num_heads``.
        causal: the linear heads' causality (``False`` only with ``"decayed"``); the softmax
            heads follow ``pattern``.
        decay: as :class:`~foveate.nn.LinearAttention` takes it, one per linear head; ``None``:
            Lightning Attention-2's rule for ``num_heads - softmax_heads`` heads.
        learn_decay: as :class:`~foveate.nn.LinearAttention` takes it.
        feature_dim: as :class:`~foveate.nn.LinearAttention` takes it.
        window: as :class:`~foveate.nn.LinearAttention` takes it (Based's own window branch,
            beside the softmax heads).
        chunk_size: tokens per chunk of the linear op.
        qkv_bias: a bias in the ``qkv`` projection.
        qk_scale: factor on ``q . k`` of every head (but Based's Taylor branch);
            ``None`` is ``head_dim ** -0.5``.
        proj_drop: dropout probability after the output projection.
        backend: the softmax heads' backend, as in :func:`foveate.attention`.

    Raises:
        TypeError, ValueError: on bad arguments (here, or in ``forward`` for a bad input),
            naming the argument.
    """

    _hybrid = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        softmax_heads: int,
        pattern: Pattern | None,
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
        backend: str = "auto",
    ):
        super().__init__(embed_dim, num_heads, softmax_heads=softmax_heads, pattern=pattern, method=method,
                         kv_heads=kv_heads, causal=causal, decay=decay, learn_decay=learn_decay,
                         feature_dim=feature_dim, window=window, chunk_size=chunk_size, qkv_bias=qkv_bias,
                         qk_scale=qk_scale, proj_drop=proj_drop, backend=backend)

    def forward(
        self,
        x: torch.Tensor,
        state: HybridState | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, HybridState]:
        """Run the layer on ``x``, optionally continuing ``state``.

        Args:
            x: ``(B, N, C)``.
            state: the :class:`HybridState` returned by an earlier call (``None``: a new
                sequence). With ``N == 1`` the linear op's one-token step runs.
            return_state: also return the state after the last token.

        Returns:
            ``y`` ``(B, N, C)``; with ``return_state``, ``(y, HybridState)``.
        """
        return super().forward(x, state, return_state)
