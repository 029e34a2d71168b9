"""The ``triton`` backend's backward kernels (dq, dk, dv; also through ``lse``) against the
gradients of naive float64 attention on brute-force masks.

Runs in Triton's interpreter without a GPU (``conftest.py`` sets ``TRITON_INTERPRET=1``), so
shapes are small. float32 must match float64 within ~1e-4 (relative to the gradient's scale);
float16 follows the FlashAttention rule: the kernel's error is at most twice that of the same
naive computation done in float16, plus a small floor. A spy checks that the backward
kernels really ran (a silent fall-back would leave it empty).
"""

from __future__ import annotations

import math

import pytest
import torch

import foveate
from foveate import patterns as P
from foveate.backends.triton import bwd as bwd_module
from foveate.backends.triton import masks
from foveate.backends.triton.ops import run_sparse_attention
from foveate.layout import LIST_FIELDS, BlockLayout

from conftest import make_qkv
from naive import naive_attention
from kernel_spy import DEVICE, needs_triton
from triton_cases import BLOCK, CASES, brute_mask, flat, inputs, random_grid, token_mask

F64, F32, F16 = torch.float64, torch.float32, torch.float16

pytestmark = [needs_triton, pytest.mark.filterwarnings(
    "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning")]


@pytest.fixture
def bwd_spy(monkeypatch):
    """Counts the calls of ``attention_backward`` (through the custom operator)."""
    real = bwd_module.attention_backward
    calls = []

    def attention_backward(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(bwd_module, "attention_backward", attention_backward)
    return calls


def _naive_grads(q, k, v, mask, d_out, d_lse, scale=None, dtype=F64):
    """out, lse, dq, dk, dv of naive attention computed in ``dtype`` (float64: the truth)."""
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out, lse = naive_attention(q, k, v, mask, scale)
    loss = (out * d_out.to(dtype)).sum()
    if d_lse is not None:
        loss = loss + (torch.where(torch.isinf(lse), 0, lse) * d_lse.to(dtype)).sum()
    return (out, lse, *torch.autograd.grad(loss, (q, k, v)))


def _kernel_grads(run, q, k, v, d_out, d_lse):
    """``run(q, k, v) -> (out, lse)`` with leaf inputs; out, lse and their gradients."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, lse = run(q, k, v)
    loss = (out * d_out).sum()
    if d_lse is not None:
        loss = loss + (torch.where(torch.isinf(lse), 0, lse) * d_lse).sum()
    return (out, lse, *torch.autograd.grad(loss, (q, k, v)))


def _check_grads(got, q, k, v, mask, d_out, d_lse, scale=None):
    dtype = q.dtype
    want = _naive_grads(q.cpu(), k.cpu(), v.cpu(), mask, d_out.cpu(), None if d_lse is None else d_lse.cpu(), scale)
    low = None if dtype == F32 else _naive_grads(q.cpu(), k.cpu(), v.cpu(), mask, d_out.cpu(),
                                                  None if d_lse is None else d_lse.cpu(), scale, dtype=dtype)
    for i, name in enumerate(("out", "lse", "dq", "dk", "dv")):
        if name in ("out", "lse"):
            continue  # the forward tests own these
        g, w = got[i].detach().cpu(), want[i]
        assert g.dtype == dtype and g.shape == w.shape, name
        assert torch.isfinite(g).all(), name
        err = (g.to(F64) - w).abs().max().item()
        scale_of = w.abs().max().item() + 1e-6
        if dtype == F32:
            assert err <= 1e-4 * max(1.0, scale_of), f"{name}: error {err:.3g} (scale {scale_of:.3g})"
        else:
            low_err = (low[i].to(F64) - w).abs().max().item()
            assert err <= 2 * low_err + 1e-3 * max(1.0, scale_of), (
                f"{name}: kernel error {err:.3g} > 2 x naive {dtype} error {low_err:.3g}")


BWD_CASES = [c for c in CASES if c.id in {
    "dense-q200-kv333", "dense-q333-kv140-mqa", "causal-q300", "causal-q100-kv300-chunked-prefill",
    "causal-q300-kv100-empty-rows", "sliding-10-60-q150-kv400", "sliding-20-5-q300-kv130-empty-rows",
    "nbhd1d-k20-dil3-stride4-causal", "nbhd2d-dil-stride-causal-raster", "nbhd2d-extra7-raster-mqa-batch2",
    "nbhd2d-dil-causal-tile8x16-padded-gqa-batch2", "nbhd2d-extra5-tile8x16-padded",
    "nbhd3d-dil-stride-causal-tile2x8x8-padded-canvas-shaped", "nbhd3d-tile-auto"}]
BWD_RUNS = [pytest.param(case, dtype, id=f"{case.id}-{name}")
            for case in BWD_CASES for dtype, name in ((F32, "f32"), (F16, "f16")) if dtype == F32 or case.f16]


def test_the_backward_cases_cover_the_features():
    """The subset above keeps every feature: empty rows, GQA/MQA, extra keys, tiles, padding."""
    assert len(BWD_CASES) == 14
    assert any(c.empty_rows for c in BWD_CASES) and any(c.padded for c in BWD_CASES)
    assert any(c.tile == "auto" for c in BWD_CASES) and any(c.heads[1] == 1 for c in BWD_CASES)
    assert any(c.pattern is not None and getattr(c.pattern, "extra_kv", 0) for c in BWD_CASES)


@pytest.mark.parametrize("case,dtype", BWD_RUNS)
def test_gradients_match_naive(rng, bwd_spy, case, dtype):
    q, k, v = inputs(rng, case, dtype)
    d_out = torch.randn(*q.shape[:-1], case.dims[1], generator=rng).to(dtype).to(DEVICE)
    d_lse = torch.randn(q.shape[:-1], generator=rng).to(DEVICE)

    def run(q, k, v):
        return foveate.attention(q, k, v, case.pattern, backend="triton", tile=case.tile, return_lse=True)

    got = _kernel_grads(run, q, k, v, d_out, d_lse)
    assert len(bwd_spy) == 1, "the triton backward did not run exactly once"
    mask = brute_mask(case.pattern or P.Dense(), case.q_len, case.kv_len)
    grads = [flat(t) for t in got[2:]]
    _check_grads((None, None, *grads), flat(q), flat(k), flat(v), mask, flat(d_out),
                 d_lse.reshape(*d_lse.shape[:2], -1))


def test_gradient_without_lse_and_with_a_scale(rng, bwd_spy):
    """Only ``out`` used (lse's gradient is zero); an explicit scale."""
    q, k, v = (t.to(DEVICE) for t in make_qkv(rng, batch=1, heads_q=2, heads_kv=2, q_shape=(200,), kv_shape=(180,),
                                                head_dim=16, head_dim_v=24, dtype=F32))
    d_out = torch.randn(1, 2, 200, 24, generator=rng).to(DEVICE)

    def run(q, k, v):
        out = foveate.attention(q, k, v, P.SlidingWindow(30, 30), backend="triton", scale=0.3)
        return out, torch.zeros(out.shape[:-1])

    got = _kernel_grads(run, q, k, v, d_out, None)
    _check_grads(got, q, k, v, brute_mask(P.SlidingWindow(30, 30), 200, 180), d_out, None, scale=0.3)


def test_backward_is_deterministic(rng):
    """Two backward passes give bitwise equal gradients (GQA: dk/dv reduced in one program)."""
    q, k, v = (t.to(DEVICE) for t in make_qkv(rng, batch=1, heads_q=4, heads_kv=1, q_shape=(300,),
                                                head_dim=16, dtype=F32))
    d_out = torch.randn(1, 4, 300, 16, generator=rng).to(DEVICE)

    def grads():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = foveate.attention(*leaves, P.Causal(), backend="triton")
        return torch.autograd.grad(out, leaves, d_out)

    first, second = grads(), grads()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


LAYOUTS = [
    ("per-batch-head-full", (2, 4), (0, 2), P.Dense()),
    ("per-head-partial-causal", (1, 4), (0, 1, 2), P.Causal()),
    ("broadcast-partial-sliding", (1, 1), (0, 1, 2), P.SlidingWindow(40, 10)),
]


@pytest.mark.parametrize("name,lead,values,spec_pattern", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_backward_with_a_block_grid(rng, bwd_spy, name, lead, values, spec_pattern):
    """Layouts that vary per batch row and per query head, with GQA (4 query heads, 2 kv
    heads): dk/dv gather the transposed lists of every query head of a group."""
    q_len, kv_len = 300, 350
    q, k, v = (t.to(DEVICE) for t in make_qkv(rng, batch=2, heads_q=4, heads_kv=2, q_shape=(q_len,),
                                                kv_shape=(kv_len,), head_dim=16, head_dim_v=32, dtype=F32))
    nq, nkv = math.ceil(q_len / BLOCK), math.ceil(kv_len / BLOCK)
    grid = random_grid(rng, (*lead, nq, nkv), values)
    layout = BlockLayout.from_block_grid(grid.to(DEVICE), block_q=BLOCK, block_kv=BLOCK, q_len=q_len, kv_len=kv_len)
    spec = masks.mask_spec(spec_pattern, q_len, kv_len)
    d_out = torch.randn(2, 4, q_len, 32, generator=rng).to(DEVICE)
    d_lse = torch.randn(2, 4, q_len, generator=rng).to(DEVICE)
    got = _kernel_grads(lambda q, k, v: run_sparse_attention(q, k, v, layout, spec, 0.25), q, k, v, d_out, d_lse)
    assert len(bwd_spy) == 1
    mask = token_mask(grid == 2, q_len, kv_len) | (token_mask(grid == 1, q_len, kv_len)
                                                   & brute_mask(spec_pattern, q_len, kv_len))
    _check_grads(got, q, k, v, mask, d_out, d_lse, scale=0.25)


def test_mask_spec_round_trip():
    """The flat int form that the custom operator carries gives back the same spec."""
    from foveate.tiling import Tiled

    for pattern, n, m in ((P.Causal(), 100, 100), (P.SlidingWindow(3), 50, 50),
                          ((P.SlidingWindow(3) | P.Sinks(2)) & P.Causal(), 70, 70),
                          (P.Mask(lambda b, h, q, k: q >= k), 60, 60),
                          (Tiled(P.Neighborhood((12, 16), (3, 5), dilation=(2, 1), extra_kv=4), (4, 8)), 192, 196)):
        spec = masks.mask_spec(pattern, n, m)
        ints = spec.to_ints()
        assert masks.MaskSpec.from_ints(ints) == spec
    with pytest.raises(ValueError, match="ints"):
        masks.MaskSpec.from_ints([0, 1])


def test_custom_operator_is_registered_with_autograd(rng):
    """``torch.ops.foveate.sparse_attention`` exists, has a fake (meta) implementation, and
    differentiates through the backward operator."""
    q, k, v = (t.to(DEVICE) for t in make_qkv(rng, batch=1, heads_q=2, heads_kv=1, q_shape=(130,), head_dim=16,
                                                dtype=F32))
    layout = P.Causal().build(130, 130, block_q=BLOCK, block_kv=BLOCK, device=DEVICE)
    spec = masks.mask_spec(P.Causal(), 130, 130)
    lists = [getattr(layout, name) for name in LIST_FIELDS]  # (the full lists are built when first read)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        flay = [mode.from_tensor(t) for t in lists]
        out, lse = torch.ops.foveate.sparse_attention(fq, fk, fv, *flay, spec.to_ints(), 0.25, BLOCK, BLOCK)
        assert out.shape == (1, 2, 130, 16) and lse.shape == (1, 2, 130) and lse.dtype == F32
    torch.library.opcheck(torch.ops.foveate.sparse_attention,
                          (q, k, v, layout.kv_num_blocks, layout.kv_indices, layout.full_kv_num_blocks,
                           layout.full_kv_indices, layout.q_num_blocks, layout.q_indices, layout.full_q_num_blocks,
                           layout.full_q_indices, spec.to_ints(), 0.25, BLOCK, BLOCK),
                          test_utils=("test_schema", "test_faketensor"))


def test_autograd_function_only_when_gradients_are_recorded(rng, monkeypatch):
    """Eager calls go through the autograd Function only when a gradient can be asked for
    (grad mode on and an input that requires it); otherwise the launcher runs directly, with
    the same outputs."""
    from foveate.backends.triton import ops

    q_len = 200
    layout = P.Causal().build(q_len, q_len, block_q=BLOCK, block_kv=BLOCK, device=DEVICE)
    spec = masks.mask_spec(P.Causal(), q_len, q_len)
    q, k, v = (t.to(DEVICE) for t in make_qkv(rng, batch=1, heads_q=2, heads_kv=1, q_shape=(q_len,),
                                                kv_shape=(q_len,), head_dim=16, head_dim_v=16, dtype=F32))
    applied = []
    real = ops._EagerSparseAttention.apply
    monkeypatch.setattr(ops._EagerSparseAttention, "apply", lambda *a: applied.append(1) or real(*a))
    out, lse = run_sparse_attention(q, k, v, layout, spec, 0.25)
    leaf = q.clone().requires_grad_()
    with torch.no_grad():
        out_no_grad, _ = run_sparse_attention(leaf, k, v, layout, spec, 0.25)
    assert applied == [] and out.grad_fn is None and out_no_grad.grad_fn is None
    out_grad, lse_grad = run_sparse_attention(leaf, k, v, layout, spec, 0.25)
    assert applied == [1] and out_grad.grad_fn is not None
    assert torch.equal(out, out_no_grad) and torch.equal(out, out_grad.detach()) and torch.equal(lse, lse_grad)


TILED_RUNS = [pytest.param(case, id=case.id) for case in BWD_CASES if case.tile is not None]


@pytest.mark.parametrize("case", TILED_RUNS)
def test_tiled_canvas_backward_in_either_order(rng, monkeypatch, case):
    """A tiled canvas given in raster order: the backward on copies moved into the tiled
    order (the default) and the one that reads the raster rows in place give bitwise the
    same gradients (padding, extra keys, GQA, lse's gradient)."""
    assert len(TILED_RUNS) == 4
    q, k, v = inputs(rng, case, F32)
    d_out = torch.randn(*q.shape[:-1], case.dims[1], generator=rng).to(DEVICE)
    d_lse = torch.randn(q.shape[:-1], generator=rng).to(DEVICE)

    def run(q, k, v):
        return foveate.attention(q, k, v, case.pattern, backend="triton", tile=case.tile, return_lse=True)

    grads, moved = {}, []
    real = bwd_module._backward_in_tiled_order
    monkeypatch.setattr(bwd_module, "_backward_in_tiled_order", lambda *a: moved.append(1) or real(*a))
    # These small layouts visit few blocks; every layout visits at least one per row on
    # average, and one whose count is not known counts 0 (so this also checks it is known).
    for tiled_order in (True, False):
        with foveate.policy.override(tiled_order_backward=tiled_order, tiled_order_min_row_blocks=0.5):
            grads[tiled_order] = _kernel_grads(run, q, k, v, d_out, d_lse)
        assert len(moved) == 1  # the first run moved the tokens, the second did not
    for a, b in zip(grads[True], grads[False]):
        assert torch.equal(a, b)


def test_the_backward_moves_tokens_only_for_rows_with_enough_blocks():
    """The choice of :func:`bwd._in_tiled_order`: a raster-order tiled canvas whose layout's
    query blocks visit at least ``policy.tiled_order_min_row_blocks`` blocks on average; never for
    a layout whose row count is not known, nor for tensors already in the layout's order."""
    from types import SimpleNamespace

    from foveate.tiling import Tiled

    tiled = Tiled(P.Neighborhood((16, 24), 5), (4, 8))
    n = tiled.default_lengths()[0]
    raster, in_order = masks.mask_spec(tiled, n, n, raster_io=True), masks.mask_spec(tiled, n, n)
    least = foveate.policy.tiled_order_min_row_blocks
    assert bwd_module._in_tiled_order(raster, SimpleNamespace(row_blocks=least))
    assert not bwd_module._in_tiled_order(raster, SimpleNamespace(row_blocks=least - 0.5))
    assert not bwd_module._in_tiled_order(raster, SimpleNamespace(row_blocks=None))
    assert not bwd_module._in_tiled_order(in_order, SimpleNamespace(row_blocks=least))
    assert raster.in_tiled_order() == in_order and raster.tiled_order().tile == (4, 8)
