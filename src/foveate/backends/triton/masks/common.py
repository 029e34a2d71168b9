"""Comparisons the predicates share."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def below(d, width):
    """``0 <= d < width`` (int32 tensors, ``width >= 0``) as one unsigned comparison."""
    return d.to(tl.uint32, bitcast=True) < width.to(tl.uint32, bitcast=True)


@triton.jit
def below_width(d, WIDTH: tl.constexpr):
    """``0 <= d < WIDTH`` for a compile-time ``WIDTH >= 0``, as one unsigned comparison."""
    return d.to(tl.uint32, bitcast=True) < WIDTH
