"""Checks of Based's own arguments (the window branch's inputs and the state)."""

from __future__ import annotations

import torch

from ..._common import check_int, check_state
from .feature_map import BasedState, features


def check_window(window) -> int:
    return check_int("window", window, 0)


def window_inputs(q, k, q_window, k_window, window: int, step: bool = False):
    """The window branch's ``(queries, keys)``: ``q_window, k_window`` checked against ``q``,
    ``k``, or ``q, k`` themselves when both are ``None``."""
    if (q_window is None) != (k_window is None):
        raise ValueError("q_window and k_window must be given together (or neither: the window reads q and k)")
    if q_window is None:
        return q, k
    if window == 0:
        raise ValueError("q_window and k_window are the window branch's: they need window >= 1")
    layout = "(B, H, D)" if step else "(B, H, N, D)"
    for name, t, like in (("q_window", q_window, q), ("k_window", k_window, k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name}.dtype={t.dtype} must match q.dtype={q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
        if t.dim() != like.dim() or t.shape[:-1] != like.shape[:-1]:
            want = "q" if name == "q_window" else "k"
            raise ValueError(f"{name} must be {layout} with {want}'s leading dims {tuple(like.shape[:-1])}, "
                             f"got shape {tuple(t.shape)}")
    if q_window.shape[-1] != k_window.shape[-1] or q_window.shape[-1] < 1:
        raise ValueError(f"q_window and k_window must share a last dim >= 1, got {q_window.shape[-1]} and "
                         f"{k_window.shape[-1]}")
    return q_window, k_window


def initial_state(state, name: str, *, batch: int, heads_kv: int, feature_dim: int, dv: int, window: int,
                  keys_like: torch.Tensor, dtype: torch.dtype) -> BasedState:
    """``state`` checked (``None``: the empty state), in the compute ``dtype``; the window
    caches in the inputs' dtype, empty when ``window >= 1`` and there are none yet."""
    device, dw = keys_like.device, keys_like.shape[-1]
    size = features(feature_dim)
    empty = keys_like.new_zeros(batch, heads_kv, 0, dw), keys_like.new_zeros(batch, heads_kv, 0, dv)
    if state is None:
        keys, values = empty if window else (None, None)
        return BasedState(keys_like.new_zeros(batch, heads_kv, size, dv, dtype=dtype),
                          keys_like.new_zeros(batch, heads_kv, size, dtype=dtype), keys, values)
    if not isinstance(state, BasedState):
        raise TypeError(f"{name} must be a foveate.linear.BasedState or None, got {type(state).__name__}")
    kv = check_state(f"{name}.kv", state.kv, (batch, heads_kv, size, dv), device, dtype)
    z = check_state(f"{name}.z", state.z, (batch, heads_kv, size), device, dtype)
    if not window:
        return BasedState(kv, z)
    if state.keys is None or state.values is None:
        raise ValueError(f"{name} has no window cache (it was made with window=0) but window={window}")
    length = state.keys.shape[2] if state.keys.dim() == 4 else -1
    keys = check_state(f"{name}.keys", state.keys, (batch, heads_kv, length, dw), device, keys_like.dtype)
    values = check_state(f"{name}.values", state.values, (batch, heads_kv, length, dv), device, keys_like.dtype)
    if length > window - 1:
        raise ValueError(f"{name} caches {length} keys, more than window - 1 = {window - 1}: "
                         f"was it made with a larger window?")
    return BasedState(kv, z, keys, values)


def last_keys(keys: torch.Tensor, values: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window cache after ``keys``: their last ``window - 1``."""
    start = max(0, keys.shape[2] - (window - 1))
    return keys[:, :, start:], values[:, :, start:]
