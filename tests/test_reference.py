"""The ``reference`` backend against the naive float64 masked attention of ``naive.py``.

The reference backend is the oracle of every other backend, so it is checked here against
a textbook computation: forward (out, lse), backward (dq, dk, dv, also with a gradient
flowing into lse), GQA/MQA, empty rows, chunking, canvas-shaped inputs and low precision.
The masks come from the patterns' ``mask_mod`` (whose semantics are tested elsewhere).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import foveate
from foveate import patterns as P
from foveate.backends import reference as reference_module
from foveate.backends.reference import reference_attention

from conftest import leaf, make_qkv
from naive import dense_mask, mask_from_mod, naive_attention

F64 = torch.float64

# (id, pattern, q_len, kv_len)
CASES = [
    ("dense", P.Dense(), 13, 13),
    ("dense-q<kv", P.Dense(), 5, 11),
    ("dense-q>kv", P.Dense(), 11, 4),
    ("causal", P.Causal(), 17, 17),
    ("causal-q<kv", P.Causal(), 7, 19),
    ("causal-q>kv-empty-rows", P.Causal(), 19, 7),
    ("sliding-left4", P.SlidingWindow(4), 21, 21),
    ("sliding-3-2-q<kv", P.SlidingWindow(3, 2), 15, 23),
    ("sliding-2-5-q>kv", P.SlidingWindow(2, 5), 23, 15),
    ("nbhd1d", P.Neighborhood(canvas=19, kernel=5), 19, 19),
    ("nbhd1d-even-dil-stride-causal",
     P.Neighborhood(canvas=19, kernel=4, dilation=2, stride=3, causal=True), 19, 19),
    ("nbhd2d", P.Neighborhood(canvas=(6, 7), kernel=(3, 4)), 42, 42),
    ("nbhd2d-dil-stride-causal",
     P.Neighborhood(canvas=(6, 7), kernel=3, dilation=(2, 1), stride=(1, 2), causal=(True, False)), 42, 42),
    ("nbhd3d", P.Neighborhood(canvas=(3, 4, 5), kernel=(2, 3, 3), stride=(1, 2, 1)), 60, 60),
    ("nbhd3d-causal", P.Neighborhood(canvas=(3, 4, 5), kernel=(3, 2, 3), causal=(True, False, True)), 60, 60),
    ("nbhd2d-extra-kv", P.Neighborhood(canvas=(4, 5), kernel=3, extra_kv=3), 20, 23),
    ("union-axial",
     P.Neighborhood(canvas=(5, 6), kernel=(1, 6)) | P.Neighborhood(canvas=(5, 6), kernel=(5, 1)), 30, 30),
    ("union-sliding", P.SlidingWindow(1) | P.SlidingWindow(0, 2), 14, 14),
    ("intersect-sliding-causal", P.SlidingWindow(5, 5) & P.Causal(), 16, 20),
    ("intersect-nbhd-causal", P.Neighborhood(canvas=24, kernel=7) & P.Causal(), 24, 24),
    # Disjoint windows for the first queries: rows 0..3 see no key.
    ("intersect-disjoint-empty-rows", P.SlidingWindow(0) & P.Neighborhood(canvas=8, kernel=3, extra_kv=4), 8, 12),
]
CASE_IDS = [c[0] for c in CASES]


def _naive64(q, k, v, mask, scale=None):
    return naive_attention(q.detach().to(F64), k.detach().to(F64), v.detach().to(F64), mask, scale)


def _assert_empty_rows(mask, out, lse):
    """Rows without an allowed key: output exactly 0, lse exactly -inf; others finite."""
    empty = ~mask.any(dim=-1)  # (Nq,) or broadcastable to lse
    empty = torch.broadcast_to(empty, lse.shape)
    assert torch.isneginf(lse[empty]).all()
    assert torch.isfinite(lse[~empty]).all()
    assert (out[empty] == 0).all()
    assert torch.isfinite(out).all()


# -- forward ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,pattern,q_len,kv_len", CASES, ids=CASE_IDS)
def test_forward_matches_naive(rng, name, pattern, q_len, kv_len, dtype):
    q, k, v = make_qkv(rng, batch=2, heads_q=4, heads_kv=2, q_shape=(q_len,), kv_shape=(kv_len,),
                       head_dim=8, head_dim_v=6, dtype=dtype)
    out, lse = foveate.attention(q, k, v, pattern, backend="reference", return_lse=True)
    mask = dense_mask(pattern, q_len, kv_len)
    ref_out, ref_lse = _naive64(q, k, v, mask)

    assert out.shape == (2, 4, q_len, 6) and out.dtype == dtype
    assert lse.shape == (2, 4, q_len) and lse.dtype == torch.float32
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(out.to(F64), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.to(F64), ref_lse, atol=2e-6, rtol=2e-6)
    _assert_empty_rows(mask, out, lse)


@pytest.mark.parametrize("name,pattern,q_len,kv_len", CASES[::3], ids=CASE_IDS[::3])
def test_reference_attention_function_matches_naive(rng, name, pattern, q_len, kv_len):
    """The backend's function called directly with a mask_mod (no attention() in between)."""
    q, k, v = make_qkv(rng, batch=1, heads_q=3, q_shape=(q_len,), kv_shape=(kv_len,), head_dim=5)
    out, lse = reference_attention(q, k, v, pattern.mask_mod(q_len, kv_len), 0.7)
    ref_out, ref_lse = _naive64(q, k, v, dense_mask(pattern, q_len, kv_len), 0.7)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse.to(F64), ref_lse, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize(
    "heads_q,heads_kv", [(4, 4), (4, 2), (6, 3), (4, 1), (1, 1)], ids=["mha", "gqa2", "gqa3-6", "mqa", "single"]
)
def test_grouped_query_heads(rng, heads_q, heads_kv):
    pattern = P.SlidingWindow(3, 1)
    q, k, v = make_qkv(rng, batch=2, heads_q=heads_q, heads_kv=heads_kv, q_shape=(9,), kv_shape=(12,),
                       head_dim=4, head_dim_v=3)
    out, lse = foveate.attention(q, k, v, pattern, backend="reference", return_lse=True)
    ref_out, ref_lse = _naive64(q, k, v, dense_mask(pattern, 9, 12))
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse.to(F64), ref_lse, atol=2e-6, rtol=2e-6)


def test_gqa_uses_kv_head_of_its_group(rng):
    """Query head h must use kv head h // (Hq // Hkv) (as repeat_interleave does), not h % Hkv."""
    q, k, v = make_qkv(rng, batch=1, heads_q=4, heads_kv=2, q_shape=(5,), head_dim=4)
    v = torch.zeros_like(v)
    v[:, 1] = 1.0  # kv head 1 holds ones, kv head 0 zeros
    out = foveate.attention(q, k, v, backend="reference")
    assert (out[:, :2] == 0).all() and torch.allclose(out[:, 2:], torch.ones_like(out[:, 2:]))


def test_mask_mod_sees_batch_and_query_head_indices(rng):
    """A mask_mod that depends on b and on the *query* head (GQA 6/2), and has empty rows."""

    def mask_mod(b, h, q_idx, kv_idx):
        return ((kv_idx + b + h) % 3 != 0) & (kv_idx <= q_idx + h - 2)

    q, k, v = make_qkv(rng, batch=2, heads_q=6, heads_kv=2, q_shape=(7,), kv_shape=(9,), head_dim=4)
    out, lse = reference_attention(q, k, v, mask_mod, 0.5)
    mask = mask_from_mod(mask_mod, 2, 6, 7, 9)
    assert (~mask.any(-1)).any(), "the case must contain empty rows"
    ref_out, ref_lse = _naive64(q, k, v, mask, 0.5)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse.to(F64), ref_lse, atol=2e-6, rtol=2e-6)
    _assert_empty_rows(mask, out, lse)


@pytest.mark.parametrize("scale", [0.3, 2.5, -1.0, 0.0], ids=lambda s: f"scale={s}")
def test_custom_scale(rng, scale):
    pattern = P.Causal()
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(8,), kv_shape=(10,), head_dim=4)
    out, lse = foveate.attention(q, k, v, pattern, scale=scale, backend="reference", return_lse=True)
    mask = dense_mask(pattern, 8, 10)
    ref_out, ref_lse = _naive64(q, k, v, mask, scale)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse.to(F64), ref_lse, atol=2e-6, rtol=2e-6)
    if scale == 0.0:
        # Uniform weights: the mean of the allowed values, lse = log(number of allowed keys).
        counts = mask.sum(-1)
        expected = (mask.to(F64) @ v[0].to(F64)) / counts[:, None]
        torch.testing.assert_close(out[0], expected, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(lse[0].to(F64), torch.log(counts.to(F64)).expand(2, -1), atol=1e-6, rtol=1e-6)


def test_default_scale_is_inverse_sqrt_head_dim(rng):
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(6,), head_dim=9)
    out = foveate.attention(q, k, v, backend="reference")
    explicit = foveate.attention(q, k, v, scale=1 / 3, backend="reference")
    other = foveate.attention(q, k, v, scale=1.0, backend="reference")
    torch.testing.assert_close(out, explicit, atol=1e-14, rtol=1e-14)
    assert not torch.allclose(out, other)


def test_non_contiguous_inputs(rng):
    """(B, N, H, D) tensors transposed to (B, H, N, D), as models usually hold them."""
    pattern = P.SlidingWindow(2, 2)
    q, k, v = make_qkv(rng, batch=2, heads_q=4, heads_kv=2, q_shape=(11,), head_dim=6)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not qt.is_contiguous()
    out = foveate.attention(qt, kt, vt, pattern, backend="reference")
    ref_out, _ = _naive64(q, k, v, dense_mask(pattern, 11, 11))
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)


# -- canvas-shaped inputs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        P.Neighborhood(canvas=(5, 7), kernel=(3, 5)),
        P.Neighborhood(canvas=(3, 4, 5), kernel=(3, 3, 2), dilation=(1, 1, 2), causal=(False, True, False)),
    ],
    ids=["2d", "3d"],
)
@pytest.mark.parametrize("layouts", ["canvas/canvas", "canvas/flat", "flat/canvas"])
def test_canvas_shaped_inputs_equal_flat(rng, pattern, layouts):
    canvas, n = pattern.canvas, math.prod(pattern.canvas)
    q, k, v = make_qkv(rng, batch=2, heads_q=2, heads_kv=1, q_shape=(n,), head_dim=4, head_dim_v=3)
    flat_out, flat_lse = foveate.attention(q, k, v, pattern, backend="reference", return_lse=True)
    ref_out, _ = _naive64(q, k, v, dense_mask(pattern, n, n))
    torch.testing.assert_close(flat_out, ref_out, atol=1e-12, rtol=1e-12)

    q_layout, kv_layout = layouts.split("/")
    q_in = q.reshape(2, 2, *canvas, 4) if q_layout == "canvas" else q
    k_in = k.reshape(2, 1, *canvas, 4) if kv_layout == "canvas" else k
    v_in = v.reshape(2, 1, *canvas, 3) if kv_layout == "canvas" else v
    out, lse = foveate.attention(q_in, k_in, v_in, pattern, backend="reference", return_lse=True)
    assert out.shape == (*q_in.shape[:-1], 3)
    assert lse.shape == q_in.shape[:-1]
    torch.testing.assert_close(out.reshape(flat_out.shape), flat_out, atol=0, rtol=0)
    torch.testing.assert_close(lse.reshape(flat_lse.shape), flat_lse, atol=0, rtol=0)


def test_canvas_shaped_gradients_have_input_shapes(rng):
    pattern = P.Neighborhood(canvas=(4, 6), kernel=3)
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(4, 6), head_dim=4, requires_grad=True)
    out = foveate.attention(q, k, v, pattern, backend="reference")
    do = torch.randn(out.shape, generator=rng, dtype=F64)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape

    qn, kn, vn = (leaf(t.reshape(1, 2, 24, 4)) for t in (q, k, v))
    ref_out, _ = naive_attention(qn, kn, vn, dense_mask(pattern, 24, 24))
    ref = torch.autograd.grad(ref_out, (qn, kn, vn), do.reshape(1, 2, 24, 4))
    for got, want in zip((dq, dk, dv), ref):
        torch.testing.assert_close(got.reshape(want.shape), want, atol=1e-12, rtol=1e-12)


# -- backward --------------------------------------------------------------------------------


def _grads(out, lse, inputs, do, dlse):
    outputs, grads = [out], [do]
    if dlse is not None:
        outputs.append(lse)
        grads.append(dlse)
    return torch.autograd.grad(outputs, inputs, grads)


@pytest.mark.parametrize("lse_grad", [False, True], ids=["out-grad", "out+lse-grad"])
@pytest.mark.parametrize("name,pattern,q_len,kv_len", CASES, ids=CASE_IDS)
def test_backward_matches_naive(rng, name, pattern, q_len, kv_len, lse_grad):
    q, k, v = make_qkv(rng, batch=2, heads_q=4, heads_kv=2, q_shape=(q_len,), kv_shape=(kv_len,),
                       head_dim=5, head_dim_v=3, requires_grad=True)
    out, lse = foveate.attention(q, k, v, pattern, backend="reference", return_lse=True)
    do = torch.randn(out.shape, generator=rng, dtype=F64)
    # lse is float32: its incoming gradient too (finite also on empty rows).
    dlse = torch.randn(lse.shape, generator=rng, dtype=torch.float32) if lse_grad else None
    got = _grads(out, lse, (q, k, v), do, dlse)

    mask = dense_mask(pattern, q_len, kv_len)
    qn, kn, vn = (leaf(t) for t in (q, k, v))
    ref_out, ref_lse = naive_attention(qn, kn, vn, mask)
    want = _grads(ref_out, ref_lse, (qn, kn, vn), do, None if dlse is None else dlse.to(F64))

    for label, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.dtype == F64
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10, msg=lambda m: f"{label}: {m}")
    empty = ~mask.any(-1)
    assert (got[0][:, :, empty] == 0).all(), "queries without keys must get zero gradient"


def test_gradcheck_out_and_lse():
    """Finite differences through out and lse (float64, GQA, Dv != D, a masked pattern)."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = make_qkv(gen, batch=1, heads_q=2, heads_kv=1, q_shape=(5,), kv_shape=(6,),
                       head_dim=3, head_dim_v=2, requires_grad=True)
    mm = P.SlidingWindow(2, 1).mask_mod(5, 6)

    def out_fn(q, k, v):
        return reference_attention(q, k, v, mm, 0.8, chunk=2)[0]

    def lse_fn(q, k, v):
        return reference_attention(q, k, v, mm, 0.8, chunk=2)[1].double()

    assert torch.autograd.gradcheck(out_fn, (q, k, v), eps=1e-6, atol=1e-7)
    # lse is float32: finite differences need a larger step and tolerance.
    assert torch.autograd.gradcheck(lse_fn, (q, k, v), eps=1e-2, atol=2e-3, rtol=1e-2)


def test_lse_only_gradient(rng):
    """A loss on lse alone (out unused): gradients from lse only."""
    pattern = P.SlidingWindow(3, 1)
    q, k, v = make_qkv(rng, batch=1, heads_q=4, heads_kv=2, q_shape=(10,), kv_shape=(12,), head_dim=4,
                       requires_grad=True)
    _, lse = foveate.attention(q, k, v, pattern, backend="reference", return_lse=True)
    dq, dk, dv = torch.autograd.grad(lse.square().sum(), (q, k, v), allow_unused=True)
    qn, kn, vn = (leaf(t) for t in (q, k, v))
    _, ref_lse = naive_attention(qn, kn, vn, dense_mask(pattern, 10, 12))
    want_q, want_k = torch.autograd.grad(ref_lse.float().double().square().sum(), (qn, kn))
    torch.testing.assert_close(dq, want_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dk, want_k, atol=1e-5, rtol=1e-5)
    assert dv is None or (dv == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_large_scores_are_stable(rng, dtype):
    """Scores in the hundreds (exp of them overflows float32 and float16): still accurate."""
    pattern = P.Causal()
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(12,), head_dim=16)
    q, k = q * 30, k * 30
    q, k, v = (t.to(dtype) for t in (q, k, v))
    out, lse = foveate.attention(q, k, v, pattern, backend="reference", return_lse=True)
    ref_out, ref_lse = _naive64(q, k, v, dense_mask(pattern, 12, 12))
    assert ref_lse.abs().max() > 300
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.to(F64), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.to(F64), ref_lse, atol=1e-4, rtol=1e-5)


# -- empty rows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern,q_len,kv_len",
    [(P.Causal(), 10, 6), (P.SlidingWindow(0) & P.Neighborhood(canvas=8, kernel=3, extra_kv=4), 8, 12)],
    ids=["causal-q>kv", "intersect-disjoint"],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=["f64", "f32", "f16", "bf16"])
def test_empty_rows_zero_output_neginf_lse_zero_grad(rng, pattern, q_len, kv_len, dtype):
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(q_len,), kv_shape=(kv_len,), head_dim=4,
                       dtype=dtype, requires_grad=True)
    mask = dense_mask(pattern, q_len, kv_len)
    empty = ~mask.any(-1)
    assert empty.any() and not empty.all()
    out, lse = foveate.attention(q, k, v, pattern, backend="reference", return_lse=True)
    _assert_empty_rows(mask, out, lse)

    # A gradient into out and into lse, also on the empty rows.
    do = torch.randn(out.shape, generator=rng, dtype=F64).to(dtype)
    dlse = torch.randn(lse.shape, generator=rng, dtype=torch.float32)
    dq, dk, dv = torch.autograd.grad((out, lse), (q, k, v), (do, dlse))
    for g in (dq, dk, dv):
        assert torch.isfinite(g).all()
    assert (dq[:, :, empty] == 0).all()
    # Keys that no query sees get no gradient either.
    unseen = ~mask.any(0)
    assert (dk[:, :, unseen] == 0).all() and (dv[:, :, unseen] == 0).all()


def test_fully_masked_problem(rng):
    """Every row empty (a mask_mod that allows nothing): all zeros, all -inf, zero grads."""
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(4,), kv_shape=(3,), head_dim=2, requires_grad=True)
    out, lse = reference_attention(q, k, v, lambda b, h, qi, ki: qi < 0, 1.0)
    assert (out == 0).all() and torch.isneginf(lse).all()
    grads = torch.autograd.grad((out, lse), (q, k, v), (torch.ones_like(out), torch.ones_like(lse)))
    for g in grads:
        assert (g == 0).all()


# -- chunking --------------------------------------------------------------------------------


class _SpyMask:
    """Wraps a mask_mod and records the number of queries in each call."""

    def __init__(self, mask_mod):
        self.mask_mod = mask_mod
        self.queries: list[int] = []

    def __call__(self, b, h, q_idx, kv_idx):
        self.queries.append(q_idx.numel())
        return self.mask_mod(b, h, q_idx, kv_idx)


@pytest.mark.parametrize("chunk", [1, 2, 5, 16], ids=lambda c: f"chunk={c}")
def test_chunked_equals_one_chunk(rng, chunk):
    pattern = P.Neighborhood(canvas=(3, 5), kernel=(3, 3), extra_kv=2)
    q, k, v = make_qkv(rng, batch=2, heads_q=4, heads_kv=2, q_shape=(15,), kv_shape=(17,), head_dim=4,
                       requires_grad=True)
    mm = pattern.mask_mod(15, 17)
    do = torch.randn(2, 4, 15, 4, generator=rng, dtype=F64)
    dlse = torch.randn(2, 4, 15, generator=rng, dtype=torch.float32)

    one_out, one_lse = reference_attention(q, k, v, mm, 0.5, chunk=15)
    one_grads = torch.autograd.grad((one_out, one_lse), (q, k, v), (do, dlse))
    spy = _SpyMask(mm)
    out, lse = reference_attention(q, k, v, spy, 0.5, chunk=chunk)
    grads = torch.autograd.grad((out, lse), (q, k, v), (do, dlse))

    assert spy.queries and max(spy.queries) <= chunk, "mask evaluated on more queries than the chunk"
    assert sum(spy.queries) >= 2 * 15, "backward must recompute the mask per chunk"
    torch.testing.assert_close(out, one_out, atol=1e-13, rtol=1e-13)
    torch.testing.assert_close(lse, one_lse, atol=0, rtol=0)
    for g, w in zip(grads, one_grads):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("elements", [1, 2 * 4 * 17 * 3], ids=["one-query", "three-queries"])
def test_chunk_elements_bounds_the_chunk(rng, monkeypatch, elements):
    """CHUNK_ELEMENTS (score elements at once) sets the chunk when none is given."""
    monkeypatch.setattr(reference_module, "CHUNK_ELEMENTS", elements)
    expected_chunk = max(1, elements // (2 * 4 * 17))
    pattern = P.Causal()
    q, k, v = make_qkv(rng, batch=2, heads_q=4, heads_kv=2, q_shape=(13,), kv_shape=(17,), head_dim=4,
                       requires_grad=True)
    mm = pattern.mask_mod(13, 17)
    spy = _SpyMask(mm)
    out, lse = reference_attention(q, k, v, spy, 0.5)
    dq, dk, dv = torch.autograd.grad(out.sum() + lse.sum(), (q, k, v))
    assert max(spy.queries) == expected_chunk

    # And through attention(): same result as without chunking.
    chunked = foveate.attention(q, k, v, pattern, backend="reference")
    monkeypatch.setattr(reference_module, "CHUNK_ELEMENTS", 1 << 30)
    whole = foveate.attention(q, k, v, pattern, backend="reference")
    torch.testing.assert_close(chunked, whole, atol=1e-13, rtol=1e-13)
    ref_out, ref_lse = _naive64(q, k, v, dense_mask(pattern, 13, 17), 0.5)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)


# -- low precision (the FlashAttention rule) -------------------------------------------------

#: Absolute floor added to twice the error of the same naive computation in low precision.
LOW_FLOOR = {torch.float16: 1e-4, torch.bfloat16: 1e-3}


def _check_rule(label, got, low, ref, floor):
    """``|got - ref| <= 2 |low - ref| + floor`` (max over the finite entries of ``ref``)."""
    got, low, ref = got.detach().to(F64), low.detach().to(F64), ref.detach().to(F64)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(got), finite), f"{label}: non-finite values where the reference is finite"
    assert torch.equal(got[~finite], ref[~finite]), f"{label}: -inf entries differ"
    err = (got - ref)[finite].abs().max().item()
    base = (low - ref)[finite].abs().max().item()
    assert err <= 2 * base + floor, f"{label}: error {err:.3g} > 2 * {base:.3g} (naive in low precision) + {floor}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize(
    "pattern,q_shape,kv_shape,heads",
    [
        (P.Causal(), (70,), (90,), (4, 2)),
        (P.Causal(), (50,), (30,), (2, 2)),  # empty rows
        (P.Neighborhood(canvas=(8, 9), kernel=(5, 3), extra_kv=2), (72,), (74,), (4, 1)),
        (P.Dense(), (40,), (40,), (2, 1)),
    ],
    ids=["causal-gqa", "causal-q>kv", "nbhd2d-extra-mqa", "dense"],
)
def test_low_precision_flash_rule(rng, dtype, pattern, q_shape, kv_shape, heads):
    q64, k64, v64 = make_qkv(rng, batch=2, heads_q=heads[0], heads_kv=heads[1], q_shape=q_shape,
                             kv_shape=kv_shape, head_dim=16)
    # The low-precision inputs, and the float64 ground truth on exactly those (rounded) values.
    ql, kl, vl = (leaf(t, dtype) for t in (q64, k64, v64))
    qr, kr, vr = (leaf(t, F64) for t in (ql, kl, vl))
    qn, kn, vn = (leaf(t) for t in (ql, kl, vl))
    mask = dense_mask(pattern, q_shape[0], kv_shape[0])

    out, lse = foveate.attention(ql, kl, vl, pattern, backend="reference", return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref_out, ref_lse = naive_attention(qr, kr, vr, mask)
    low_out, low_lse = naive_attention(qn, kn, vn, mask)

    do = torch.randn(out.shape, generator=rng, dtype=F64).to(dtype)
    dlse = torch.randn(lse.shape, generator=rng, dtype=F64).to(dtype)
    got = torch.autograd.grad((out, lse), (ql, kl, vl), (do, dlse.float()))
    ref = torch.autograd.grad((ref_out, ref_lse), (qr, kr, vr), (do.to(F64), dlse.to(F64)))
    low = torch.autograd.grad((low_out, low_lse), (qn, kn, vn), (do, dlse))

    floor = LOW_FLOOR[dtype]
    _check_rule("out", out, low_out, ref_out, floor)
    _check_rule("lse", lse, low_lse, ref_lse, floor)
    for label, g, lo, r in zip(("dq", "dk", "dv"), got, low, ref):
        assert g.dtype == dtype
        _check_rule(label, g, lo, r, floor)


# -- random problems -------------------------------------------------------------------------


@st.composite
def _problems(draw):
    heads_kv = draw(st.integers(1, 3))
    heads_q = heads_kv * draw(st.integers(1, 3))
    q_len, kv_len = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    kind = draw(st.sampled_from(["dense", "causal", "sliding", "sliding&causal", "sliding|sliding"]))
    left, right = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    pattern = {
        "dense": P.Dense(),
        "causal": P.Causal(),
        "sliding": P.SlidingWindow(left, right),
        "sliding&causal": P.SlidingWindow(left, right) & P.Causal(),
        "sliding|sliding": P.SlidingWindow(left) | P.SlidingWindow(0, right),
    }[kind]
    return dict(
        batch=draw(st.integers(1, 2)), heads_q=heads_q, heads_kv=heads_kv, q_len=q_len, kv_len=kv_len,
        head_dim=draw(st.integers(1, 6)), head_dim_v=draw(st.integers(1, 6)), pattern=pattern,
        chunk=draw(st.integers(1, 8)), seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=40, deadline=None)
@given(_problems())
def test_random_problems_match_naive(problem):
    gen = torch.Generator().manual_seed(problem["seed"])
    q, k, v = make_qkv(gen, batch=problem["batch"], heads_q=problem["heads_q"], heads_kv=problem["heads_kv"],
                       q_shape=(problem["q_len"],), kv_shape=(problem["kv_len"],), head_dim=problem["head_dim"],
                       head_dim_v=problem["head_dim_v"], requires_grad=True)
    pattern = problem["pattern"]
    mask = dense_mask(pattern, problem["q_len"], problem["kv_len"])
    out, lse = reference_attention(q, k, v, pattern.mask_mod(problem["q_len"], problem["kv_len"]), 0.6,
                                   chunk=problem["chunk"])
    qn, kn, vn = (leaf(t) for t in (q, k, v))
    ref_out, ref_lse = naive_attention(qn, kn, vn, mask, 0.6)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse.to(F64), ref_lse, atol=2e-6, rtol=2e-6)

    do = torch.randn(out.shape, generator=gen, dtype=F64)
    got = torch.autograd.grad(out, (q, k, v), do)
    want = torch.autograd.grad(ref_out, (qn, kn, vn), do)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
