"""Hypothesis strategies shared by the tests: 1-D patterns and their compositions (each with
its brute-force mask function from ``brute.py``), ``Neighborhood`` keyword arguments, block
sizes and tiles."""

from __future__ import annotations

import math

from hypothesis import strategies as st

import brute
from foveate import patterns as P

# -- 1-D patterns -----------------------------------------------------------------------------


def lengths_1d(max_len=32):
    """``(q_len, kv_len)``, each in ``[1, max_len]``."""
    return st.tuples(st.integers(1, max_len), st.integers(1, max_len))


@st.composite
def sequence_pattern(draw, max_window):
    """A 1-D pattern and its brute-force mask function ``(q_len, kv_len) -> mask``; window
    sides in ``[0, max_window]``."""
    kind = draw(st.sampled_from(["dense", "causal", "window"]))
    if kind == "dense":
        return P.Dense(), brute.dense_mask
    if kind == "causal":
        return P.Causal(), brute.causal_mask
    left, right = draw(st.integers(0, max_window)), draw(st.integers(0, max_window))
    return P.SlidingWindow(left, right), lambda q, k: brute.sliding_window_mask(q, k, left, right)


@st.composite
def sequence_composition(draw, max_window, depth=2):
    """A composed 1-D pattern (unions and intersections, nested up to ``depth``) and its
    brute-force mask function; the leaves are :func:`sequence_pattern` ``(max_window)``."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return draw(sequence_pattern(max_window))
    (a, fa), (b, fb) = (draw(sequence_composition(max_window, depth - 1)) for _ in range(2))
    if draw(st.booleans()):
        return a | b, lambda q, k: fa(q, k) | fb(q, k)
    return a & b, lambda q, k: fa(q, k) & fb(q, k)


@st.composite
def pattern_tree(draw, depth: int, max_side: int, masks: dict | None = None, arity=(2, 2)):
    """Unions and intersections, nested up to ``depth``, of 1-D patterns of every kind: Dense,
    Causal, SlidingWindow (sides up to ``max_side``), Sinks (up to ``max_side`` keys) and, with
    ``masks`` (name -> ``mask_mod``), ``P.Mask``; ``arity``: the parts per node."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        kind = draw(st.sampled_from(["dense", "causal", "window", "sinks"] + (["mask"] if masks else [])))
        if kind == "dense":
            return P.Dense()
        if kind == "causal":
            return P.Causal()
        if kind == "sinks":
            return P.Sinks(draw(st.integers(1, max_side)))
        if kind == "mask":
            return P.Mask(masks[draw(st.sampled_from(sorted(masks)))])
        return P.SlidingWindow(draw(st.integers(0, max_side)), draw(st.integers(0, max_side)))
    parts = [draw(pattern_tree(depth - 1, max_side, masks, arity)) for _ in range(draw(st.integers(*arity)))]
    out = parts[0]
    for part in parts[1:]:
        out = (out | part) if draw(st.booleans()) else (out & part)
    return out


# -- Neighborhood -----------------------------------------------------------------------------

#: Largest canvas side per number of canvas axes (keeps brute-force masks and grids small).
MAX_AXIS = {1: 24, 2: 9, 3: 5}


@st.composite
def neighborhood_params(draw, ndim=None, canvas=None, max_axis=None, extra_kv=None, int_form=False) -> dict:
    """Valid ``Neighborhood`` keyword arguments, every key present.

    ``canvas``: the given one, else ``ndim`` axes (drawn in ``[1, 3]`` when None), each side in
    ``[1, max_axis]``; ``max_axis`` is an int, or a dict by number of axes (None:
    :data:`MAX_AXIS`). ``extra_kv``: the given one, else drawn in ``[0, 3]``. With
    ``int_form``, a per-axis value that is the same on every axis is sometimes given as one
    int (the canvas is always a tuple)."""
    if canvas is None:
        ndim = ndim or draw(st.integers(1, 3))
        max_axis = MAX_AXIS if max_axis is None else max_axis
        limit = max_axis[ndim] if isinstance(max_axis, dict) else max_axis
        canvas = tuple(draw(st.integers(1, limit)) for _ in range(ndim))
    kernel, dilation, stride, causal = [], [], [], []
    for length in canvas:
        d = draw(st.integers(1, length))
        w = draw(st.integers(1, length // d))
        dilation.append(d)
        kernel.append(w)
        stride.append(draw(st.integers(1, w)))
        causal.append(draw(st.booleans()))

    def form(values):  # an int for all axes (sometimes, with int_form), or a tuple
        if int_form and len(set(values)) == 1 and draw(st.booleans()):
            return values[0]
        return tuple(values)

    kernel, dilation, stride, causal = form(kernel), form(dilation), form(stride), form(causal)
    extra = draw(st.integers(0, 3)) if extra_kv is None else extra_kv
    return dict(
        canvas=tuple(canvas), kernel=kernel, dilation=dilation, stride=stride, causal=causal, extra_kv=extra,
    )


# -- blocks and tiles -------------------------------------------------------------------------


def tile_blocks(canvas) -> list[int]:
    """Block sizes whose raster blocks are tiles of the canvas (the product path)."""
    sizes = set()
    for k in range(len(canvas)):
        inner = math.prod(canvas[k + 1 :])
        sizes |= {t * inner for t in range(1, canvas[k] + 1) if canvas[k] % t == 0}
    return sorted(sizes)


def block_size(canvas, n):
    """A block size: sometimes a tile of the canvas, sometimes anything (up to past the end)."""
    return st.one_of(st.sampled_from(tile_blocks(canvas)), st.integers(1, n + 4))


def raster_blocks(kw: dict):
    """``(block_q, block_kv)`` for a neighborhood in raster order: each a :func:`block_size`
    of the canvas, for the ``prod(canvas)`` queries and the ``prod(canvas) + extra_kv`` keys."""
    n = math.prod(kw["canvas"])
    return st.tuples(block_size(kw["canvas"], n), block_size(kw["canvas"], n + kw["extra_kv"]))


def tile_of(canvas, slack=1):
    """A tile for the canvas: each side in ``[1, canvas side + slack]`` (larger than the
    canvas too)."""
    return st.tuples(*(st.integers(1, n + slack) for n in canvas))


@st.composite
def neighborhood_and_tile(draw, ndims=(2, 3)):
    """:func:`neighborhood_params` of ``ndims`` axes and a :func:`tile_of` its canvas."""
    ndim = draw(st.sampled_from(ndims))
    kw = draw(neighborhood_params(ndim=ndim))
    return kw, draw(tile_of(kw["canvas"]))
