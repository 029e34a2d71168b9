"""Linear attention: decayed (Lightning Attention-2 / RetNet), Based, Gated DeltaNet.

>>> import foveate.linear as L
>>> out = L.decayed(q, k, v)                                  # lambda_h: Lightning's ALiBi rule
>>> out = L.based(q_f, k_f, v, window=64)                     # q_f, k_f: (B, H, N, 16)
>>> out, state = L.gated_delta(q, k, v, alpha, beta, return_state=True)
>>> o, state = L.gated_delta_step(q1, k1, v1, alpha1, beta1, state=state)   # one more token

Tensors are ``(B, H, N, D)`` as for :func:`foveate.attention`; ``k`` and ``v`` may have fewer
heads than ``q`` (``Hq % Hkv == 0``, query head ``h`` reads kv head ``h // (Hq / Hkv)``).
Every op is causal (``decayed`` also takes ``causal=False``), returns ``q.dtype``, and keeps
its state and arithmetic in float32 (float64 for float64 inputs).

The ops (each a chunked algorithm in PyTorch ops, forward and autograd backward, on any
device, CPU included; fused Triton kernels are later work):

- :func:`decayed` ``(q, k, v, decay=None)``: ``o_t = scale sum_(s <= t) lambda_h^(t - s)
  (q_t . k_s) v_s``, no normaliser. ``decay``: ``(Hq,)`` in ``(0, 1]`` (learnable), one number,
  or ``None`` for Lightning Attention-2's ``lambda_h = exp(-m_h)`` with ``m_h`` ALiBi's slopes
  (:func:`default_decay`; ``rule="retnet"`` gives RetNet's ``1 - 2^(-5 - h)``).
  ``causal=False``: every key, decayed by ``lambda_h^|t - s|``. Chunked as Lightning
  Attention-2: exact decayed attention inside a chunk, a decayed state across chunks.
- :func:`based` ``(q, k, v, window=64)``: Based's Taylor linear attention
  (``phi(x) = [1, x, vec(x x^T) / sqrt(2)]`` on a small feature dim, with its normaliser) plus
  exact softmax attention over the last ``window`` keys (through :func:`foveate.attention`
  and ``P.SlidingWindow(window - 1)``), summed. The paper has the two in separate layers,
  the window one at the full head dim: pass its queries and keys as ``q_window``,
  ``k_window``, or ``window=0`` for the linear branch alone.
- :func:`gated_delta` ``(q, k, v, alpha, beta)``: Gated DeltaNet,
  ``S_t = alpha_t (I - beta_t k_t k_t^T) S_(t-1) + beta_t k_t v_t^T``, ``o_t = scale S_t^T q_t``,
  ``q`` and ``k`` L2-normalised inside; ``alpha, beta`` ``(B, Hq, N)``. Chunked in the WY / UT
  form.

Each takes ``scale``, ``chunk_size=64``, ``initial_state`` and ``return_state`` (chunked
prefill: two calls with the state carried equal one call), and has a one-token step for
decoding: :func:`decayed_step`, :func:`based_step`, :func:`gated_delta_step`, with tensors
``(B, H, D)`` and ``state=`` (``None`` starts a sequence), returning ``(out, state)``. States:
``(B, Hq, Dk, Dv)`` tensors for ``decayed`` and ``gated_delta`` (their decays and gates are
per query head); a :class:`BasedState` for ``based`` (per kv head, with the window's cache).

Each method is a folder, flash-linear-attention style: ``chunked.py`` (the op),
``recurrent.py`` (the step), ``naive.py`` (the sequential recurrence the tests compare every
output and gradient with, e.g. ``from foveate.linear.ops.decayed.naive import decayed_naive``).
The names :func:`decayed`, :func:`based` and :func:`gated_delta` of this module are the
functions, which hide the folders of the same name: import the folders' modules with
``from ... import``.

Bad input (shapes, dtypes, a decay or gate outside its range, ``chunk_size < 1``, heads that
do not divide) raises ``TypeError`` or ``ValueError`` naming the argument.
"""

from .ops.based import BasedState, based, based_step
from .ops.decayed import decayed, decayed_step, default_decay
from .ops.gated_delta import gated_delta, gated_delta_step

__all__ = ["decayed", "decayed_step", "default_decay", "based", "based_step", "BasedState", "gated_delta",
           "gated_delta_step"]
