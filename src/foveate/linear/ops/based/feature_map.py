"""Based's feature map and state: the second-order Taylor expansion of ``exp``."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


def taylor(x: torch.Tensor) -> torch.Tensor:
    """``phi(x) = [1, x, vec(x x^T) / sqrt(2)]`` on the last axis: ``F`` features become
    ``1 + F + F^2``, and ``phi(a) . phi(b) = 1 + a.b + (a.b)^2 / 2``. (The scale goes into the
    query before the map: ``phi(scale q) . phi(k)`` is the Taylor expansion of
    ``exp(scale q.k)``.)"""
    square = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2)
    return torch.cat([torch.ones_like(x[..., :1]), x, square], dim=-1)


def features(feature_dim: int) -> int:
    """The size of :func:`taylor`'s output for ``feature_dim`` inputs."""
    return 1 + feature_dim + feature_dim ** 2


class BasedState(NamedTuple):
    """The state of :func:`foveate.linear.based` after some tokens (``Hkv`` heads: without a
    decay, the state depends on the keys and values only, so query heads of a group share it).

    Attributes:
        kv: ``(B, Hkv, 1 + F + F^2, Dv)``, ``sum_s phi(k_s) v_s^T``; float32 (float64 for
            float64 inputs).
        z: ``(B, Hkv, 1 + F + F^2)``, ``sum_s phi(k_s)`` (the normaliser's); same dtype.
        keys: ``(B, Hkv, m, Dw)``, the window branch's last ``m = min(window - 1, tokens)``
            keys (``k_window``, or ``k`` without it), in the inputs' dtype; ``None`` when the
            state was made with ``window=0``.
        values: ``(B, Hkv, m, Dv)``, their values; ``None`` with ``keys``.
    """

    kv: torch.Tensor
    z: torch.Tensor
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
