"""The one rule for functions that have a fused Triton path beside a PyTorch one.

Such functions take ``method``: ``"triton"`` (the kernel: CUDA, or the CPU under
``TRITON_INTERPRET=1``), ``"torch"`` (the PyTorch path, any device: the reference), or
``"auto"``: the kernel for CUDA tensors it supports, else PyTorch.
"""

from __future__ import annotations

from typing import Callable

import torch

METHODS = ("auto", "torch", "triton")


def use_triton(method: str, x: torch.Tensor, supported: Callable[[], bool] = lambda: True) -> bool:
    """Whether to run the Triton kernel on ``x`` for ``method``. ``supported()`` (asked only
    under ``"auto"`` for a CUDA tensor) says whether the kernel takes these inputs. Raises
    ``ValueError`` for an unknown ``method``."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected 'auto', 'torch' or 'triton'")
    if method != "auto":
        return method == "triton"
    return x.is_cuda and supported()


def triton_importable() -> bool:
    """Whether Triton is installed (``"auto"`` falls back to PyTorch without it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
