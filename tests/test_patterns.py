"""Patterns: ``mask_mod`` against the brute-force definitions of ``brute.py``; composition;
equality, hashing and repr; constructor and length validation."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import brute
from foveate import patterns as P

from strategies import MAX_AXIS, lengths_1d, neighborhood_params, sequence_composition, sequence_pattern

# =============================================================================================
# Helpers
# =============================================================================================


def evaluate(pattern: P.Pattern, q_len: int, kv_len: int) -> torch.Tensor:
    """``pattern.mask_mod(q_len, kv_len)`` on broadcast index grids: ``(q_len, kv_len)`` bool."""
    mm = pattern.mask_mod(q_len, kv_len)
    b = h = torch.zeros((), dtype=torch.long)
    q_idx = torch.arange(q_len)[:, None]
    kv_idx = torch.arange(kv_len)[None, :]
    out = mm(b, h, q_idx, kv_idx)
    assert out.dtype == torch.bool, f"{pattern!r}: mask_mod returned {out.dtype}"
    assert tuple(out.shape) == (q_len, kv_len), (
        f"{pattern!r}: mask_mod on ({q_len}, 1) x (1, {kv_len}) grids returned shape {tuple(out.shape)}"
    )
    return out


def assert_same_mask(got: torch.Tensor, expected: torch.Tensor, what) -> None:
    """Equal masks, else a message naming the first differing (query, key) pairs."""
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    diff = (got != expected).nonzero().tolist()
    if diff:
        shown = ", ".join(
            f"(q={i}, kv={j}): got {bool(got[i, j])}, expected {bool(expected[i, j])}" for i, j in diff[:8]
        )
        pytest.fail(f"{what}: {len(diff)} pairs differ from the brute force, e.g. {shown}")


def neighborhood_kwargs(canvas, kernel, dilation=1, stride=1, causal=False, extra_kv=0) -> dict:
    return dict(canvas=canvas, kernel=kernel, dilation=dilation, stride=stride, causal=causal, extra_kv=extra_kv)


# =============================================================================================
# The brute force itself: literal examples read off docs/design.md, and properties it promises
# =============================================================================================


def axis_sets(length, kernel, dilation=1, stride=1, causal=False):
    table = brute.axis_table(length, kernel, dilation, stride, causal)
    return [{y for y in range(length) if table[x][y]} for x in range(length)]


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param((5, 3), [{0, 1, 2}, {0, 1, 2}, {1, 2, 3}, {2, 3, 4}, {2, 3, 4}], id="odd-kernel-clamped"),
        pytest.param(
            (6, 4), [{0, 1, 2, 3}] * 3 + [{1, 2, 3, 4}] + [{2, 3, 4, 5}] * 2, id="even-kernel-leans-left"
        ),
        pytest.param(
            (7, 2, 2), [{0, 2}, {1, 3}, {0, 2}, {1, 3}, {2, 4}, {3, 5}, {4, 6}], id="dilation-uneven-groups"
        ),
        pytest.param((6, 3, 1, 3), [{0, 1, 2}] * 3 + [{3, 4, 5}] * 3, id="stride-eq-kernel-blocked"),
        pytest.param(
            (7, 3, 1, 2), [{0, 1, 2}] * 2 + [{2, 3, 4}] * 2 + [{4, 5, 6}] * 3, id="stride-2-leader-clamped"
        ),
        pytest.param(
            (5, 3, 1, 1, True), [{0}, {0, 1}, {0, 1, 2}, {1, 2, 3}, {2, 3, 4}], id="causal"
        ),
        pytest.param(
            (6, 3, 1, 2, True), [{0}, {0, 1}, {1, 2}, {1, 2, 3}, {3, 4}, {3, 4, 5}], id="causal-stride"
        ),
    ],
)
def test_brute_axis_examples(args, expected):
    assert axis_sets(*args) == expected


@given(neighborhood_params(ndim=1, max_axis=30, extra_kv=0, int_form=True))
@settings(max_examples=200, deadline=None)
def test_brute_axis_properties(kw):
    first = lambda v: v[0] if isinstance(v, tuple) else v  # noqa: E731
    length, w, d, s, causal = (first(kw[k]) for k in ("canvas", "kernel", "dilation", "stride", "causal"))
    sets = axis_sets(length, w, d, s, causal)
    for x, keys in enumerate(sets):
        assert x in keys, "every query sees itself"
        assert all(y % d == x % d for y in keys), "only its own dilation group"
        if causal:
            assert all(y <= x for y in keys) and len(keys) <= w
        else:
            assert len(keys) == w, "clamped windows hold exactly `kernel` keys"
    for x in range(d, length):  # windows never move back as the query moves forward
        assert min(sets[x]) >= min(sets[x - d]) and max(sets[x]) >= max(sets[x - d])
    if not causal and s == w and d == 1 and length % w == 0:
        assert all(sets[x] == set(range(x // w * w, x // w * w + w)) for x in range(length))


def test_brute_kernel_eq_canvas_is_dense():
    assert bool(brute.neighborhood_mask((3, 4, 5), (3, 4, 5)).all())
    assert bool(brute.neighborhood_mask((7, 6), (7, 6), extra_kv=2).all())


# =============================================================================================
# 1-D patterns: Dense, Causal, SlidingWindow (bottom-right alignment)
# =============================================================================================


@pytest.mark.parametrize(
    "q_len, kv_len",
    [
        pytest.param(1, 1, id="1x1"),
        pytest.param(7, 7, id="square"),
        pytest.param(3, 10, id="q<kv-decoding"),
        pytest.param(10, 3, id="q>kv"),
        pytest.param(1, 17, id="single-query"),
    ],
)
@pytest.mark.parametrize(
    "pattern, expected",
    [
        pytest.param(P.Dense(), brute.dense_mask, id="dense"),
        pytest.param(P.Causal(), brute.causal_mask, id="causal"),
        pytest.param(P.SlidingWindow(2), lambda q, k: brute.sliding_window_mask(q, k, 2), id="window-2-0"),
        pytest.param(P.SlidingWindow(0, 0), lambda q, k: brute.sliding_window_mask(q, k, 0, 0), id="window-diag"),
        pytest.param(P.SlidingWindow(1, 3), lambda q, k: brute.sliding_window_mask(q, k, 1, 3), id="window-1-3"),
    ],
)
def test_sequence_pattern_examples(pattern, expected, q_len, kv_len):
    assert_same_mask(evaluate(pattern, q_len, kv_len), expected(q_len, kv_len), (pattern, q_len, kv_len))


def test_causal_alignment_literal():
    # q_len=2, kv_len=4: the queries are positions 2 and 3 of the keys.
    assert evaluate(P.Causal(), 2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    # q_len=4, kv_len=2: the first two queries see nothing.
    assert evaluate(P.Causal(), 4, 2).tolist() == [[False, False], [False, False], [True, False], [True, True]]
    # Mistral-style window: left + 1 keys, fewer at the start.
    assert evaluate(P.SlidingWindow(2), 5, 5).sum(dim=1).tolist() == [1, 2, 3, 3, 3]


@given(sequence_pattern(max_window=40), lengths_1d())
@settings(max_examples=300, deadline=None)
def test_sequence_pattern_matches_brute(pat, lengths):
    pattern, expected = pat
    q_len, kv_len = lengths
    assert_same_mask(evaluate(pattern, q_len, kv_len), expected(q_len, kv_len), (pattern, q_len, kv_len))


# =============================================================================================
# Neighborhood
# =============================================================================================

NEIGHBORHOOD_CASES = [
    pytest.param(neighborhood_kwargs((9,), 3), id="1d-odd"),
    pytest.param(neighborhood_kwargs((10,), 4), id="1d-even-kernel"),
    pytest.param(neighborhood_kwargs((11,), 3, dilation=3), id="1d-dilation-uneven-groups"),
    pytest.param(neighborhood_kwargs((12,), 5, stride=3), id="1d-stride"),
    pytest.param(neighborhood_kwargs((12,), 4, stride=4), id="1d-blocked"),
    pytest.param(neighborhood_kwargs((10,), 4, stride=4), id="1d-blocked-ragged"),
    pytest.param(neighborhood_kwargs((10,), 4, causal=True), id="1d-causal"),
    pytest.param(neighborhood_kwargs((13,), 3, dilation=2, stride=2, causal=True), id="1d-causal-dilated-strided"),
    pytest.param(neighborhood_kwargs((7,), 7), id="1d-kernel-eq-canvas"),
    pytest.param(neighborhood_kwargs((1,), 1), id="1d-single-token"),
    pytest.param(neighborhood_kwargs((8,), 3, extra_kv=3), id="1d-extra-kv"),
    pytest.param(neighborhood_kwargs((8, 8), 3), id="2d-square"),
    pytest.param(neighborhood_kwargs((7, 9), (2, 4)), id="2d-even-kernels"),
    pytest.param(neighborhood_kwargs((6, 8), (3, 5), causal=(True, False)), id="2d-causal-axis0"),
    pytest.param(neighborhood_kwargs((6, 8), (3, 5), causal=(False, True)), id="2d-causal-axis1"),
    pytest.param(neighborhood_kwargs((9, 10), (3, 2), dilation=(2, 3)), id="2d-dilation-per-axis"),
    pytest.param(neighborhood_kwargs((8, 9), (4, 3), stride=(2, 3)), id="2d-stride-per-axis"),
    pytest.param(neighborhood_kwargs((8, 8), 4, stride=4), id="2d-blocked"),
    pytest.param(neighborhood_kwargs((5, 6), (5, 6)), id="2d-kernel-eq-canvas"),
    pytest.param(neighborhood_kwargs((4, 5), 1), id="2d-kernel-1"),
    pytest.param(neighborhood_kwargs((1, 9), (1, 3)), id="2d-single-row"),
    pytest.param(
        neighborhood_kwargs((10, 11), (3, 4), dilation=2, stride=(2, 3), causal=(False, True), extra_kv=2),
        id="2d-everything",
    ),
    pytest.param(neighborhood_kwargs((4, 5, 6), 3), id="3d-cube"),
    pytest.param(neighborhood_kwargs((5, 4, 4), (2, 3, 3), causal=(True, False, False)), id="3d-causal-time"),
    pytest.param(
        neighborhood_kwargs((6, 6, 5), (2, 3, 2), dilation=(3, 2, 2), stride=(1, 2, 2), extra_kv=1),
        id="3d-dilated-strided-extra",
    ),
    pytest.param(neighborhood_kwargs((3, 3, 3), 3), id="3d-kernel-eq-canvas"),
]


@pytest.mark.parametrize("kw", NEIGHBORHOOD_CASES)
def test_neighborhood_examples(kw):
    pattern = P.Neighborhood(**kw)
    n = math.prod(kw["canvas"])
    assert_same_mask(evaluate(pattern, n, n + kw["extra_kv"]), brute.neighborhood_mask(**kw), pattern)


# Masks only (no block grids): 2-D canvases up to 10 x 10.
@given(neighborhood_params(max_axis={**MAX_AXIS, 2: 10}, int_form=True))
@settings(max_examples=400, deadline=None)
def test_neighborhood_matches_brute(kw):
    pattern = P.Neighborhood(**kw)
    n = math.prod(kw["canvas"])
    assert_same_mask(evaluate(pattern, n, n + kw["extra_kv"]), brute.neighborhood_mask(**kw), pattern)


@pytest.mark.parametrize(
    "canvas, extra_kv",
    [pytest.param((6,), 0, id="1d"), pytest.param((3, 4), 2, id="2d-extra"), pytest.param((2, 3, 4), 0, id="3d")],
)
def test_neighborhood_kernel_eq_canvas_is_dense(canvas, extra_kv):
    pattern = P.Neighborhood(canvas=canvas, kernel=canvas, extra_kv=extra_kv)
    n = math.prod(canvas)
    assert bool(evaluate(pattern, n, n + extra_kv).all())


def test_neighborhood_non_causal_queries_see_kernel_keys():
    # Clamped windows: every query sees exactly prod(kernel) canvas keys, plus the extras.
    pattern = P.Neighborhood(canvas=(7, 9), kernel=(3, 4), dilation=(2, 1), stride=(1, 2), extra_kv=3)
    assert evaluate(pattern, 63, 66).sum(dim=1).tolist() == [3 * 4 + 3] * 63


def test_neighborhood_mask_mod_scalar_arguments():
    # FlexAttention evaluates mask_mod on 0-dim tensors (under vmap); plain scalars must work too.
    kw = neighborhood_kwargs((5, 6), (3, 2), dilation=(1, 2), causal=(True, False), extra_kv=2)
    pattern = P.Neighborhood(**kw)
    expected = brute.neighborhood_mask(**kw)
    mm = pattern.mask_mod(30, 32)
    zero = torch.tensor(0)
    rng = random.Random(0)
    for _ in range(200):
        i, j = rng.randrange(30), rng.randrange(32)
        assert bool(mm(zero, zero, torch.tensor(i), torch.tensor(j))) == bool(expected[i, j]), (i, j)


# =============================================================================================
# Composition
# =============================================================================================


@given(sequence_composition(max_window=12), lengths_1d(24))
@settings(max_examples=150, deadline=None)
def test_sequence_composition_matches_brute(comp, lengths):
    pattern, expected = comp
    q_len, kv_len = lengths
    assert_same_mask(evaluate(pattern, q_len, kv_len), expected(q_len, kv_len), (pattern, q_len, kv_len))


@given(st.data())
@settings(max_examples=100, deadline=None)
def test_neighborhood_composition_matches_brute(data):
    kw_a = data.draw(neighborhood_params(max_axis=7, int_form=True))
    ndim = len(kw_a["canvas"])
    kw_b = data.draw(neighborhood_params(ndim=ndim, max_axis=7, int_form=True))
    kw_b = dict(kw_b, canvas=kw_a["canvas"], extra_kv=kw_a["extra_kv"])
    # Re-fit b's kernel/dilation/stride to a's canvas.
    per = lambda v: v if isinstance(v, tuple) else (v,) * ndim  # noqa: E731
    dil = tuple(min(d, n) for d, n in zip(per(kw_b["dilation"]), kw_a["canvas"]))
    ker = tuple(min(w, n // d) for w, d, n in zip(per(kw_b["kernel"]), dil, kw_a["canvas"]))
    kw_b.update(dilation=dil, kernel=ker, stride=tuple(min(s, w) for s, w in zip(per(kw_b["stride"]), ker)))
    a, b = P.Neighborhood(**kw_a), P.Neighborhood(**kw_b)
    ma, mb = brute.neighborhood_mask(**kw_a), brute.neighborhood_mask(**kw_b)
    n = math.prod(kw_a["canvas"])
    kv = n + kw_a["extra_kv"]
    mc = brute.causal_mask(n, kv)
    assert_same_mask(evaluate(a | b, n, kv), ma | mb, a | b)
    assert_same_mask(evaluate(a & b, n, kv), ma & mb, a & b)
    assert_same_mask(evaluate((a | b) & P.Causal(), n, kv), (ma | mb) & mc, "(a | b) & Causal")


def test_composition_flattens():
    a, b, c, d = P.Causal(), P.SlidingWindow(2), P.SlidingWindow(0, 3), P.Dense()
    assert isinstance(a | b, P.Union) and (a | b).parts == (a, b)
    assert ((a | b) | c).parts == (a, b, c)
    assert (a | (b | c)).parts == (a, b, c)
    assert ((a | b) | (c | d)).parts == (a, b, c, d)
    assert ((a & b) & c).parts == (a, b, c)
    assert isinstance(a & b, P.Intersection)
    # Different operators nest instead of flattening.
    mixed = (a & b) | c
    assert isinstance(mixed, P.Union) and mixed.parts == (a & b, c)
    mixed = (a | b) & (c | d)
    assert isinstance(mixed, P.Intersection) and mixed.parts == (a | b, c | d)


def test_composition_keeps_canvas():
    nb = P.Neighborhood(canvas=(4, 4), kernel=3, extra_kv=2)
    comp = P.Causal() | nb
    assert comp.canvas == (4, 4) and comp.extra_kv == 2
    assert comp.default_lengths() == (16, 18)


@pytest.mark.parametrize(
    "a, b",
    [
        pytest.param(
            P.Neighborhood(canvas=(4, 4), kernel=3), P.Neighborhood(canvas=(16,), kernel=3), id="canvas-shape"
        ),
        pytest.param(
            P.Neighborhood(canvas=(4, 4), kernel=3),
            P.Neighborhood(canvas=(4, 4), kernel=3, extra_kv=1),
            id="extra-kv",
        ),
    ],
)
@pytest.mark.parametrize("op", [pytest.param("or", id="union"), pytest.param("and", id="intersection")])
def test_composition_of_different_canvases_raises(a, b, op):
    with pytest.raises(ValueError, match="canvas"):
        (a | b) if op == "or" else (a & b)


@pytest.mark.parametrize("other", [pytest.param(3, id="int"), pytest.param("causal", id="str")])
def test_composition_with_non_pattern_raises(other):
    with pytest.raises(TypeError):
        P.Causal() | other
    with pytest.raises(TypeError):
        P.Causal() & other


# =============================================================================================
# Equality, hashing, repr, immutability
# =============================================================================================


def test_equality_and_hash():
    a = P.Neighborhood(canvas=(8, 8), kernel=3)
    same = [
        P.Neighborhood(canvas=(8, 8), kernel=(3, 3)),
        P.Neighborhood(canvas=[8, 8], kernel=[3, 3], dilation=(1, 1), stride=1, causal=(False, False)),
    ]
    for b in same:
        assert a == b and hash(a) == hash(b)
    different = [
        P.Neighborhood(canvas=(8, 8), kernel=5),
        P.Neighborhood(canvas=(8, 8), kernel=3, dilation=2),
        P.Neighborhood(canvas=(8, 8), kernel=3, stride=2),
        P.Neighborhood(canvas=(8, 8), kernel=3, causal=(True, False)),
        P.Neighborhood(canvas=(8, 8), kernel=3, extra_kv=1),
        P.Neighborhood(canvas=(8, 9), kernel=3),
        P.Neighborhood(canvas=(64,), kernel=3),
    ]
    for b in different:
        assert a != b, b
    assert P.Neighborhood(canvas=8, kernel=3) == P.Neighborhood(canvas=(8,), kernel=(3,))
    assert P.SlidingWindow(3) == P.SlidingWindow(3, 0) != P.SlidingWindow(0, 3)
    assert P.Dense() == P.Dense() != P.Causal()
    assert P.Causal() | P.Dense() == P.Causal() | P.Dense() != P.Dense() | P.Causal()
    assert P.Causal() | P.Dense() != P.Causal() & P.Dense()


def test_patterns_are_dict_keys():
    table = {
        P.Dense(): "dense",
        P.Causal(): "causal",
        P.SlidingWindow(4, 1): "window",
        P.Neighborhood(canvas=(8, 8), kernel=3): "nb",
        P.Causal() | P.SlidingWindow(2): "union",
        P.Causal() & P.SlidingWindow(2): "intersection",
    }
    assert len(table) == 6
    assert table[P.SlidingWindow(4, 1)] == "window"
    assert table[P.Neighborhood(canvas=(8, 8), kernel=(3, 3))] == "nb"
    assert table[P.Causal() | P.SlidingWindow(2)] == "union"
    assert table[P.Causal() & P.SlidingWindow(2)] == "intersection"


@pytest.mark.parametrize(
    "pattern, text",
    [
        pytest.param(
            P.Neighborhood(canvas=(64, 64), kernel=(13, 13)), "Neighborhood(canvas=(64, 64), kernel=(13, 13))",
            id="nb-defaults",
        ),
        pytest.param(
            P.Neighborhood(canvas=(64, 64), kernel=13), "Neighborhood(canvas=(64, 64), kernel=(13, 13))",
            id="nb-int-kernel",
        ),
        pytest.param(
            P.Neighborhood(canvas=(16, 32), kernel=(3, 5), dilation=2, causal=(True, False), extra_kv=4),
            "Neighborhood(canvas=(16, 32), kernel=(3, 5), dilation=(2, 2), causal=(True, False), extra_kv=4)",
            id="nb-options",
        ),
        pytest.param(P.Dense(), "Dense()", id="dense"),
        pytest.param(P.Causal(), "Causal()", id="causal"),
    ],
)
def test_repr_exact(pattern, text):
    assert repr(pattern) == text


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param(P.SlidingWindow(128, 4), id="window"),
        pytest.param(P.Neighborhood(canvas=(5, 6, 7), kernel=(3, 2, 3), stride=(1, 2, 3), causal=True), id="nb-3d"),
        pytest.param(P.Causal() | P.SlidingWindow(3, 1) | P.Dense(), id="union-3"),
        pytest.param((P.Causal() & P.SlidingWindow(3)) | P.SlidingWindow(0, 2), id="nested"),
    ],
)
def test_repr_round_trips(pattern):
    text = repr(pattern)
    assert "object at 0x" not in text
    assert eval(text, {name: getattr(P, name) for name in P.__all__}) == pattern


def test_union_repr_is_readable():
    assert repr(P.Causal() | P.SlidingWindow(2)) == "(Causal() | SlidingWindow(left=2, right=0))"
    assert repr(P.Causal() & P.Dense()) == "(Causal() & Dense())"


@pytest.mark.parametrize(
    "pattern, field",
    [
        pytest.param(P.SlidingWindow(3), "left", id="window"),
        pytest.param(P.Neighborhood(canvas=(8, 8), kernel=3), "kernel", id="nb"),
        pytest.param(P.Causal() | P.Dense(), "parts", id="union"),
    ],
)
def test_patterns_are_immutable(pattern, field):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(pattern, field, 1)


# =============================================================================================
# Validation
# =============================================================================================

NB_ERRORS = [
    # (kwargs, the argument that the message must name)
    pytest.param(dict(canvas=(8, 8), kernel=0), "kernel", id="kernel-0"),
    pytest.param(dict(canvas=(8, 8), kernel=(3, -1)), "kernel", id="kernel-negative"),
    pytest.param(dict(canvas=(8, 8), kernel=9), "kernel", id="kernel-gt-canvas"),
    pytest.param(dict(canvas=(8, 6), kernel=(3, 7)), "kernel", id="kernel-gt-canvas-axis1"),
    pytest.param(dict(canvas=(8, 8), kernel=5, dilation=2), "kernel", id="kernel-times-dilation-gt-canvas"),
    pytest.param(dict(canvas=(8, 8), kernel=3, dilation=0), "dilation", id="dilation-0"),
    pytest.param(dict(canvas=(8, 8), kernel=3, dilation=(1, -2)), "dilation", id="dilation-negative"),
    pytest.param(dict(canvas=(8, 8), kernel=3, stride=0), "stride", id="stride-0"),
    pytest.param(dict(canvas=(8, 8), kernel=3, stride=(1, 4)), "stride", id="stride-gt-kernel"),
    pytest.param(dict(canvas=(8, 8), kernel=(3, 3, 3)), "kernel", id="kernel-3-entries-on-2d"),
    pytest.param(dict(canvas=(8, 8, 8), kernel=(3, 3)), "kernel", id="kernel-2-entries-on-3d"),
    pytest.param(dict(canvas=(8, 8), kernel=3, dilation=(1,)), "dilation", id="dilation-1-entry-on-2d"),
    pytest.param(dict(canvas=(8, 8), kernel=3, stride=(1, 1, 1)), "stride", id="stride-3-entries"),
    pytest.param(dict(canvas=(8, 8), kernel=3, causal=(True,)), "causal", id="causal-1-entry"),
    pytest.param(dict(canvas=(8, 8), kernel=3.0), "kernel", id="kernel-float"),
    pytest.param(dict(canvas=(8, 8), kernel="3"), "kernel", id="kernel-str"),
    pytest.param(dict(canvas=(8, 8), kernel=True), "kernel", id="kernel-bool"),
    pytest.param(dict(canvas=(8, 8), kernel=(3, 2.0)), "kernel", id="kernel-float-entry"),
    pytest.param(dict(canvas=(8, 8), kernel=3, dilation=1.5), "dilation", id="dilation-float"),
    pytest.param(dict(canvas=(8, 8), kernel=3, stride="1"), "stride", id="stride-str"),
    pytest.param(dict(canvas=(8, 8), kernel=3, causal="yes"), "causal", id="causal-str"),
    pytest.param(dict(canvas=(8, 8), kernel=3, causal=None), "causal", id="causal-none"),
    pytest.param(dict(canvas=(8.0, 8), kernel=3), "canvas", id="canvas-float"),
    pytest.param(dict(canvas="8x8", kernel=3), "canvas", id="canvas-str"),
    pytest.param(dict(canvas=(), kernel=()), "canvas", id="canvas-0-axes"),
    pytest.param(dict(canvas=(4, 4, 4, 4), kernel=3), "canvas", id="canvas-4-axes"),
    pytest.param(dict(canvas=(8, 0), kernel=1), "canvas", id="canvas-axis-0"),
    pytest.param(dict(canvas=(8, -8), kernel=1), "canvas", id="canvas-axis-negative"),
    pytest.param(dict(canvas=(8, 8), kernel=3, extra_kv=-1), "extra_kv", id="extra-kv-negative"),
    pytest.param(dict(canvas=(8, 8), kernel=3, extra_kv=1.0), "extra_kv", id="extra-kv-float"),
]


@pytest.mark.parametrize("kwargs, name", NB_ERRORS)
def test_neighborhood_validation(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        P.Neighborhood(**kwargs)


def test_neighborhood_limits_are_accepted():
    # The boundary values of each requirement are valid.
    P.Neighborhood(canvas=(8, 8), kernel=(8, 1))
    P.Neighborhood(canvas=(8, 9), kernel=(4, 3), dilation=(2, 3), stride=(4, 3))
    P.Neighborhood(canvas=(1, 1, 1), kernel=1)
    P.Neighborhood(canvas=(3,), kernel=3, extra_kv=0)


@pytest.mark.parametrize(
    "args, name",
    [
        pytest.param((-1,), "left", id="left-negative"),
        pytest.param((3, -1), "right", id="right-negative"),
        pytest.param((2.5,), "left", id="left-float"),
        pytest.param((2, "1"), "right", id="right-str"),
        pytest.param((None,), "left", id="left-none"),
    ],
)
def test_sliding_window_validation(args, name):
    with pytest.raises((ValueError, TypeError), match=name):
        P.SlidingWindow(*args)


@pytest.mark.parametrize(
    "pattern, q_len, kv_len",
    [
        pytest.param(P.Neighborhood(canvas=(4, 4), kernel=3), 15, 15, id="q-and-kv-too-short"),
        pytest.param(P.Neighborhood(canvas=(4, 4), kernel=3), 16, 17, id="kv-too-long"),
        pytest.param(P.Neighborhood(canvas=(4, 4), kernel=3), 17, 16, id="q-too-long"),
        pytest.param(P.Neighborhood(canvas=(4, 4), kernel=3, extra_kv=2), 16, 16, id="extra-kv-missing"),
        pytest.param(P.Neighborhood(canvas=(4, 4), kernel=3, extra_kv=2), 18, 18, id="extra-kv-in-q"),
        pytest.param(P.Neighborhood(canvas=(2, 3, 4), kernel=2), 4096, 4096, id="3d-wrong"),
        pytest.param(P.Causal() | P.Neighborhood(canvas=(4, 4), kernel=3), 8, 8, id="composition"),
        pytest.param(P.Causal(), 0, 4, id="causal-q-0"),
        pytest.param(P.SlidingWindow(2), 4, 0, id="window-kv-0"),
        pytest.param(P.Dense(), -1, 4, id="dense-negative"),
    ],
)
def test_lengths_that_do_not_fit_raise(pattern, q_len, kv_len):
    with pytest.raises(ValueError, match="q_len|kv_len"):
        pattern.check_lengths(q_len, kv_len)
    with pytest.raises(ValueError, match="q_len|kv_len"):
        pattern.mask_mod(q_len, kv_len)


@pytest.mark.parametrize(
    "q_len, kv_len",
    [pytest.param(4.0, 4, id="float-q"), pytest.param(4, "4", id="str-kv"), pytest.param(True, 4, id="bool-q")],
)
def test_length_types_raise(q_len, kv_len):
    with pytest.raises(TypeError, match="q_len|kv_len"):
        P.Causal().mask_mod(q_len, kv_len)


def test_fitting_lengths_are_accepted():
    nb = P.Neighborhood(canvas=(4, 4), kernel=3, extra_kv=2)
    nb.check_lengths(16, 18)
    assert nb.default_lengths() == (16, 18)
    assert P.Causal().default_lengths() is None
    P.Causal().check_lengths(1, 1000)


def test_pattern_keys_rebuild_equal_patterns():
    """``pattern_key`` (what compiled graphs are traced with) holds Python constants only,
    and ``pattern_from_key`` rebuilds an equal pattern, for every static pattern kind."""
    from foveate.graph_constants import pattern_from_key, pattern_key
    from foveate.tiling import Tiled

    nb = P.Neighborhood((16, 24), (5, 7), dilation=(2, 1), stride=(1, 2), causal=(True, False), extra_kv=3)
    patterns = [P.Dense(), P.Causal(), P.SlidingWindow(100, 30), nb, Tiled(P.Neighborhood((16, 24), 5), (4, 8)),
                P.Neighborhood((16, 16), 5) | P.Causal(), P.Neighborhood((16, 16), 5) & P.SlidingWindow(40, 40),
                P.Blocks(torch.tensor([[True, False], [True, True]]))]

    def constants_only(x):
        if isinstance(x, tuple):
            return all(constants_only(y) for y in x)
        return x is None or isinstance(x, (int, float, str, type))

    for pattern in patterns:
        key = pattern_key(pattern)
        assert constants_only(key), key
        rebuilt = pattern_from_key(key)
        assert rebuilt == pattern and hash(rebuilt) == hash(pattern) and type(rebuilt) is type(pattern)


def test_pattern_key_refuses_non_dataclass_patterns():
    from foveate.graph_constants import pattern_key

    class Custom(P.Causal.__mro__[1]):  # a Pattern subclass that is not a dataclass
        pass

    with pytest.raises(TypeError, match="Custom patterns cannot run under torch.compile"):
        pattern_key(Custom())


def test_pattern_key_names_a_field_it_cannot_hold():
    import dataclasses as dc

    from foveate.graph_constants import pattern_key

    @dc.dataclass(frozen=True)
    class WithTensor(P.Causal.__mro__[1]):
        weights: object

    with pytest.raises(TypeError, match="WithTensor.weights holds a Tensor"):
        pattern_key(WithTensor(torch.ones(2)))
