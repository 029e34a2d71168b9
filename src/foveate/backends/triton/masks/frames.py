"""``FRAMES`` leaves: bands between frames whose width falls with the frame distance (Radial
attention). Positions hold ``FRAME`` tokens per frame; with query frame ``qf``, key frame
``kf``, their in-frame offsets ``r`` and ``c``, distance ``d = |qf - kf|`` and group ``g =
d.bit_length()``, key allowed when ``kf < SINK``, or ``|c - r| <= W[g]`` and ``d % S[g] == 0``.

Leaf fields (after the kind): ``FRAME, SINK, GROUPS``, then ``W0 .. W7`` and ``S0 .. S7`` (the
widths and splits of the groups, :data:`.spec.FRAME_GROUPS` slots each). Frames and offsets are
computed once per row and per column; the per-element work is a subtraction, a compare per
group, and a remainder only for groups whose split is not 1.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .spec import FRAME_GROUPS

_GROUPS = tl.constexpr(FRAME_GROUPS)


@triton.jit
def _rule(qf, r, kf, c, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Broadcasting query frames/offsets ``qf, r`` against key frames/offsets ``kf, c``."""
    d = tl.abs(qf - kf)
    off = tl.abs(c - r)
    width = d * 0  # (zeros_like would need a layout under Gluon: the Hopper forward calls this too)
    on = d >= 0
    for g in tl.static_range(MASK[LEAF + 3]):
        W: tl.constexpr = MASK[LEAF + 4 + g]
        S: tl.constexpr = MASK[LEAF + 4 + _GROUPS + g]
        if g == 0:
            width = tl.where(d == 0, W, width)
        else:
            width = tl.where(d >= (1 << (g - 1)), W, width)
            if S > 1:
                in_group = (d >= (1 << (g - 1))) & (d < (1 << g))
                on = on & ~(in_group & (d % S != 0))
    return (kf < MASK[LEAF + 2]) | ((off <= width) & on)


@triton.jit
def block(rows, start, offs, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``rows`` by keys ``start + offs``: ``[M, N]``."""
    FRAME: tl.constexpr = MASK[LEAF + 1]
    qf = rows // FRAME
    kf = (start + offs) // FRAME
    return _rule(qf[:, None], (rows - qf * FRAME)[:, None], kf[None, :], (start + offs - kf * FRAME)[None, :],
                 MASK, LEAF)


@triton.jit
def block_t(start, offs, cols, MASK: tl.constexpr, LEAF: tl.constexpr):
    """Queries ``start + offs`` by keys ``cols``, transposed: ``[N, M]``."""
    FRAME: tl.constexpr = MASK[LEAF + 1]
    qf = (start + offs) // FRAME
    kf = cols // FRAME
    return _rule(qf[None, :], (start + offs - qf * FRAME)[None, :], kf[:, None], (cols - kf * FRAME)[:, None],
                 MASK, LEAF)
