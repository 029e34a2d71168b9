"""Checks and small helpers shared by the linear-attention ops.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (wrong shape or
range) naming the argument, before anything is computed.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

#: The dtypes ``q``, ``k``, ``v`` may have.
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_qkv(q, k, v, *, step: bool = False) -> tuple[int, int, int, int, int, int]:
    """``(B, Hq, Hkv, N, Dk, Dv)`` of ``q (B, Hq, N, Dk)``, ``k (B, Hkv, N, Dk)``,
    ``v (B, Hkv, N, Dv)``; with ``step``, one token without the length axis (``N = 1``)."""
    rank, layout = (3, "(B, H, D)") if step else (4, "(B, H, N, D)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOATS:
            raise TypeError(f"{name}.dtype must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.dim() != rank:
            raise ValueError(f"{name} must be {layout}, got shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}.dtype={t.dtype} must match q.dtype={q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}: all must be on one device")
    batch, heads_q, heads_kv = q.shape[0], q.shape[1], k.shape[1]
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"q, k and v must share the batch size, got {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    if v.shape[1] != heads_kv:
        raise ValueError(f"v must have k's {heads_kv} heads, got {v.shape[1]}")
    if heads_kv < 1 or heads_q % heads_kv:
        raise ValueError(f"q's heads ({heads_q}) must be a multiple of k's and v's heads ({heads_kv}) "
                         f"(grouped-query attention)")
    if not step and not q.shape[2] == k.shape[2] == v.shape[2]:
        raise ValueError(f"q, k and v must have one length N, got {q.shape[2]}, {k.shape[2]}, {v.shape[2]}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k's last dim ({k.shape[-1]}) must equal q's ({q.shape[-1]})")
    if q.shape[-1] < 1 or v.shape[-1] < 1:
        raise ValueError(f"q and v need a last dim of at least 1, got {q.shape[-1]} and {v.shape[-1]}")
    length = 1 if step else q.shape[2]
    return batch, heads_q, heads_kv, length, q.shape[-1], v.shape[-1]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the state and of the arithmetic: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def resolve_scale(scale, dim: int, name: str = "scale") -> float:
    """``scale`` checked; ``None`` is ``dim ** -0.5``."""
    if scale is None:
        return dim ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name} must be a real number or None, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"{name} must be finite, got {scale!r}")
    return float(scale)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_state(name: str, state, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A state tensor of exactly ``shape``, any float dtype, returned in ``dtype``."""
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(state).__name__}")
    if not state.is_floating_point():
        raise TypeError(f"{name}.dtype must be a floating-point type, got {state.dtype}")
    if tuple(state.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(state.shape)}")
    if state.device != device:
        raise ValueError(f"{name} is on {state.device} but q is on {device}")
    return state.to(dtype)


def check_gate(name: str, gate, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
               low_open: bool = True) -> torch.Tensor:
    """A per-(batch, head, token) gate tensor of ``shape`` with values in ``(0, 1]`` (``[0, 1]``
    when not ``low_open``), returned in ``dtype``."""
    if not isinstance(gate, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(gate).__name__}")
    if not gate.is_floating_point():
        raise TypeError(f"{name}.dtype must be a floating-point type, got {gate.dtype}")
    if tuple(gate.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (B, Hq{', N' if len(shape) == 3 else ''}), "
                         f"got {tuple(gate.shape)}")
    if gate.device != device:
        raise ValueError(f"{name} is on {gate.device} but q is on {device}")
    with torch.no_grad():
        low = gate > 0 if low_open else gate >= 0
        if not bool((low & (gate <= 1)).all()):
            interval = "(0, 1]" if low_open else "[0, 1]"
            raise ValueError(f"{name} must lie in {interval}, got values from {float(gate.min())} to "
                             f"{float(gate.max())}")
    return gate.to(dtype)


def expand_heads(t: torch.Tensor, group: int) -> torch.Tensor:
    """``(B, Hkv, ...)`` -> ``(B, Hkv * group, ...)``: query head ``h`` reads kv head ``h // group``
    (as :func:`foveate.attention`)."""
    return t if group == 1 else t.repeat_interleave(group, dim=1)


def over_chunks(run: Callable, tensors: tuple[torch.Tensor, ...], state, chunk_size: int, axis: int = 2):
    """The chunked algorithm's outer loop: ``run(*chunks, state) -> (outputs, state)`` on the
    tensors cut along ``axis`` into a chunk axis at ``axis`` and a position axis after it,
    first on the full chunks (all at once), then on the shorter tail (one chunk). Returns the
    outputs (a tuple, each with the length axis back) and the final state."""
    length = tensors[0].shape[axis]
    full = length - length % chunk_size
    parts = []
    for start, stop, chunk in ((0, full, chunk_size), (full, length, length - full)):
        if stop > start:
            pieces = [t.narrow(axis, start, stop - start).unflatten(axis, (-1, chunk)) for t in tensors]
            outputs, state = run(*pieces, state)
            parts.append(tuple(o.flatten(axis, axis + 1) for o in outputs))
    if not parts:
        return None, state
    return tuple(torch.cat(list(group), axis) for group in zip(*parts)), state
