"""What :class:`~foveate.nn.LinearAttention` and :class:`~foveate.nn.HybridAttention` share:
one ``qkv`` projection split into softmax heads and linear heads, their outputs concatenated
head by head into one ``proj``; prefill, chunked prefill and one-token decoding.

The ``qkv`` outputs, in order (``S`` softmax heads, ``Hl = num_heads - S`` linear heads,
``Skv`` and ``Hlkv`` kv heads, ``D = head_dim``, ``Dqk`` the linear heads' query/key dim:
``D``, or Based's ``feature_dim``)::

    q:  S * D  then  Hl * Dqk          (query head h at position h)
    k:  Skv * D  then  Hlkv * Dqk
    v:  Skv * D  then  Hlkv * D
    Based with window >= 1: q_window Hl * D, then k_window Hlkv * D

With ``Dqk = D`` and no GQA this is :class:`~foveate.nn.SelfAttention`'s ``(3, heads, head_dim)``
layout, so its ``qkv`` and ``proj`` weights load unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..api import attention
from ..linear import BasedState
from ..linear._common import check_bool
from ..patterns.base import is_int
from .attention import _ProjectedAttention, _check_pattern, _positive_int
from .linear_methods import make_method


class HybridState(NamedTuple):
    """The state of a :class:`~foveate.nn.HybridAttention` after some tokens.

    Attributes:
        linear: the linear heads' state, as their :mod:`foveate.linear` op returns it: a
            ``(B, Hl, Dqk, D)`` tensor for ``decayed`` and ``gated_delta``, a
            :class:`foveate.linear.BasedState` for ``based``.
        keys: ``(B, Skv, M, D)``, every key of the softmax heads so far (``M`` tokens), in the
            input's dtype.
        values: ``(B, Skv, M, D)``, their values.
    """

    linear: torch.Tensor | BasedState
    keys: torch.Tensor
    values: torch.Tensor


class _MixedHeads(_ProjectedAttention):
    """``softmax_heads`` heads of softmax attention through ``pattern`` beside linear heads of
    ``method``, from one ``qkv``, into one ``proj`` (see the module's docstring for the layout).
    A hybrid (``_hybrid``) needs both kinds of heads."""

    _hybrid = False

    def __init__(self, embed_dim, num_heads, *, softmax_heads: int, pattern, method, kv_heads, causal, decay,
                 learn_decay, feature_dim, window, chunk_size, qkv_bias, qk_scale, proj_drop, backend):
        super().__init__(embed_dim, num_heads, qkv_bias, qk_scale, proj_drop, backend)
        if self._hybrid:
            softmax_heads = _check_softmax_heads(softmax_heads, self.num_heads)
        kv_heads = self.num_heads if kv_heads is None else _positive_int("kv_heads", kv_heads)
        if self.num_heads % kv_heads:
            raise ValueError(f"kv_heads={kv_heads} must divide num_heads={self.num_heads} (grouped-query attention: "
                             f"query head h reads kv head h // (num_heads / kv_heads))")
        group = self.num_heads // kv_heads
        if softmax_heads % group:
            raise ValueError(f"softmax_heads={softmax_heads} must be a multiple of num_heads / kv_heads = {group}, "
                             f"so that no kv head serves both kinds of heads")
        causal = check_bool("causal", causal)
        _check_pattern(pattern)
        self.kv_heads = kv_heads
        self.softmax_heads, self.softmax_kv_heads = softmax_heads, softmax_heads // group
        self.linear_heads, self.linear_kv_heads = self.num_heads - softmax_heads, kv_heads - softmax_heads // group
        self.pattern = pattern
        self.causal = causal
        self.method = method
        self.linear = make_method(method, embed_dim=self.embed_dim, heads=self.linear_heads,
                                  kv_heads=self.linear_kv_heads, head_dim=self.head_dim, scale=self.scale,
                                  causal=causal, chunk_size=chunk_size, decay=decay, learn_decay=learn_decay,
                                  feature_dim=feature_dim, window=window)
        self.splits = self._splits()
        # Replaces the base's Linear(C, 3C) (same place in the state dict) by the split's width.
        self.qkv = nn.Linear(self.embed_dim, sum(h * d for _, h, d in self.splits), bias=qkv_bias)

    def _splits(self) -> tuple[tuple[str, int, int], ...]:
        """``(name, heads, dim)`` of each piece of the ``qkv`` outputs, in order."""
        d, dqk = self.head_dim, self.linear.qk_dim
        s, skv, hl, hlkv = self.softmax_heads, self.softmax_kv_heads, self.linear_heads, self.linear_kv_heads
        pieces = [("q_softmax", s, d), ("q", hl, dqk), ("k_softmax", skv, d), ("k", hlkv, dqk),
                  ("v_softmax", skv, d), ("v", hlkv, d)]
        pieces += [(name, hl if kind == "q" else hlkv, dim) for name, kind, dim in self.linear.extra]
        return tuple(piece for piece in pieces if piece[1])

    def _parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pieces of ``qkv(x)``, each ``(B, heads, N, dim)`` (views)."""
        pieces = self.qkv(x).split([h * d for _, h, d in self.splits], dim=-1)
        return {name: t.unflatten(-1, (h, d)).transpose(1, 2) for (name, h, d), t in zip(self.splits, pieces)}

    def forward(self, x: torch.Tensor, state=None, return_state: bool = False):
        name = type(self).__name__
        self._check_input(x, 3, "(B, N, C)")
        return_state = check_bool("return_state", return_state)
        if not self.causal and (state is not None or return_state):
            raise ValueError(f"{name}: state and return_state need causal=True (a non-causal layer has no state)")
        linear_state, cache = self._unpack(state, x)
        parts = self._parts(x)
        outs = []
        if self.softmax_heads:
            _check_pattern(self.pattern)  # (it may have been replaced since __init__)
            keys, values = parts["k_softmax"], parts["v_softmax"]
            if cache is not None:
                keys, values = torch.cat([cache[0], keys], 2), torch.cat([cache[1], values], 2)
            outs.append(attention(parts["q_softmax"], keys, values, self.pattern, scale=self.scale,
                                  backend=self.backend).to(x.dtype))
        extra = {piece: parts[piece] for piece, _, _ in self.linear.extra}
        if x.shape[1] == 1 and state is not None:  # decoding: the one-token step
            tokens = [t[:, :, 0] for t in (parts["q"], parts["k"], parts["v"])]
            out, linear_state = self.linear.step(x[:, 0], *tokens, {p: t[:, :, 0] for p, t in extra.items()},
                                                 linear_state)
            out = out[:, :, None]
        else:
            out, linear_state = self.linear(x, parts["q"], parts["k"], parts["v"], extra, linear_state, self.causal)
        outs.append(out.to(x.dtype))
        y = self._output(torch.cat(outs, 1), x.shape)
        if not return_state:
            return y
        if not self.softmax_heads:
            return y, linear_state
        # (contiguous: a view would keep the whole qkv output alive in the cache)
        return y, HybridState(linear_state, keys.contiguous(), values.contiguous())

    def _unpack(self, state, x: torch.Tensor):
        """``(linear state, (keys, values) or None)`` of ``state``, the cache checked."""
        if state is None or not self.softmax_heads:
            return state, None
        name = type(self).__name__
        if not isinstance(state, HybridState):
            raise TypeError(f"{name}: state must be a foveate.nn.HybridState or None, got {type(state).__name__}")
        keys, values = state.keys, state.values
        for field, t in (("keys", keys), ("values", values)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: state.{field} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 4 or t.shape[:2] != (x.shape[0], self.softmax_kv_heads) or t.shape[3] != self.head_dim \
                    or t.shape[2] != keys.shape[2]:
                raise ValueError(f"{name}: state.{field} must be (B={x.shape[0]}, softmax kv heads="
                                 f"{self.softmax_kv_heads}, M, head_dim={self.head_dim}) with one M for keys and "
                                 f"values, got {tuple(t.shape)}")
            if t.dtype != x.dtype:
                raise TypeError(f"{name}: state.{field}.dtype={t.dtype} must match x.dtype={x.dtype}")
            if t.device != x.device:
                raise ValueError(f"{name}: state.{field} is on {t.device} but x is on {x.device}")
        return state.linear, (keys, values)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kv_heads={self.kv_heads}, "
                f"softmax_heads={self.softmax_heads}, pattern={self.pattern!r}, method={self.method!r}, "
                f"causal={self.causal}, backend={self.backend!r}")


def _check_softmax_heads(softmax_heads, num_heads: int) -> int:
    """``softmax_heads`` of a hybrid: an int in ``[1, num_heads - 1]``."""
    if not is_int(softmax_heads):
        raise TypeError(f"softmax_heads must be an int, got {type(softmax_heads).__name__} {softmax_heads!r}")
    if not 1 <= softmax_heads <= num_heads - 1:
        raise ValueError(f"softmax_heads must be between 1 and num_heads - 1 = {num_heads - 1}, got {softmax_heads} "
                         f"(all heads linear: LinearAttention; all softmax: SelfAttention)")
    return int(softmax_heads)
