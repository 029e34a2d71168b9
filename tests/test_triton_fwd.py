"""The ``triton`` backend's fused forward kernel against the naive float64 attention.

Without a GPU, ``conftest.py`` sets ``TRITON_INTERPRET=1`` and the kernel runs in Triton's
interpreter (slow: the shapes are small, a few 128-token blocks). The expected results never
come from the kernel: they are ``naive.naive_attention`` in float64 on the brute-force masks of
``brute.py`` (or on a block grid expanded to tokens, for layouts given directly).

Numerics (docs/design.md, "Numerics in tests"): float32 must match within ~1e-5; float16 follows the
FlashAttention rule, checked for ``out`` and ``lse`` separately: the kernel's error against
float64 is at most twice the error of the same naive computation done in float16, plus a small
floor. bfloat16 is not run here (the interpreter computes bf16 ``tl.dot`` wrongly).

Every test that runs the kernel also checks, through a spy on the kernel launch, that the
kernel really ran (a silent fall-back to another backend fails).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import foveate
from foveate import patterns as P
from foveate.backends import Problem, select
from foveate.backends.triton import common
from foveate.backends.triton import fwd as fwd_module
from foveate.backends.triton import masks
from foveate.layout import BlockLayout
from foveate.simulator import choose_tile

from conftest import make_qkv
from kernel_spy import DEVICE, KernelSpy, needs_triton
from triton_cases import (BLOCK, CASES, NB2, NB2_PAD_EXTRA, NB2_TALL, NB3_AUTO, NB3_PAD, brute_mask, flat, inputs,
                         random_grid, token_mask)
from naive import naive_attention

F64, F32, F16 = torch.float64, torch.float32, torch.float16
pytestmark = pytest.mark.filterwarnings(  # Triton 3.6's interpreter under NumPy 2.3
    "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning")
DTYPES = pytest.mark.parametrize("dtype", [F32, F16], ids=["f32", "f16"])


# -- spies: did the kernel run, with what --------------------------------------------------------


@pytest.fixture
def spy(monkeypatch):
    """Records the calls of ``attention_forward`` (its q/k/v, layout, spec) and the kernel
    launches. ``spy.calls``, ``spy.kernel.launches``."""
    kernel_spy = KernelSpy(fwd_module._fwd_kernel)
    monkeypatch.setattr(fwd_module, "_fwd_kernel", kernel_spy)
    # (on a Hopper GPU: these are the portable kernel's tests; the Hopper kernel has its own)
    monkeypatch.setattr(foveate.policy, "hopper_forward", False)  # (restored after the test)
    real_forward = fwd_module.attention_forward
    calls: list[dict] = []

    def attention_forward(q, k, v, layout, spec, scale, **kw):
        calls.append({"q": q, "k": k, "v": v, "layout": layout, "spec": spec, "scale": scale})
        return real_forward(q, k, v, layout, spec, scale, **kw)

    monkeypatch.setattr(fwd_module, "attention_forward", attention_forward)

    class Spy:
        pass

    s = Spy()
    s.calls, s.kernel = calls, kernel_spy
    return s


def _ran_once(spy):
    assert len(spy.calls) == 1, "the triton backend's attention_forward did not run exactly once"
    assert len(spy.kernel.launches) == 1, "the forward kernel was not launched exactly once"
    return spy.calls[0]


# -- expected results ------------------------------------------------------------------------------



def _check(out, lse, q, k, v, mask, scale=None):
    """``out``/``lse`` of the kernel (flat, on any device) against float64 naive attention of the
    flat ``q, k, v`` with ``mask`` (broadcastable to ``(B, Hq, Nq, Nkv)``), in the tolerance of
    ``q.dtype``. Rows with no allowed key: output exactly 0 and lse exactly -inf."""
    out, lse = out.detach().cpu(), lse.detach().cpu()
    q, k, v = (t.detach().cpu() for t in (q, k, v))
    dtype = q.dtype
    assert out.dtype == dtype and lse.dtype == F32
    assert out.shape == (*q.shape[:-1], v.shape[-1]) and lse.shape == q.shape[:-1]
    ref_out, ref_lse = naive_attention(q.to(F64), k.to(F64), v.to(F64), mask, scale)

    empty = torch.broadcast_to(~torch.broadcast_to(mask, (*lse.shape, k.shape[2])).any(-1), lse.shape)
    assert torch.isneginf(lse[empty]).all(), "a row with no allowed key must have lse -inf"
    assert (out[empty] == 0).all(), "a row with no allowed key must have output exactly 0"
    assert torch.isfinite(lse[~empty]).all() and torch.isfinite(out).all()
    assert (~empty).any()

    got_out, got_lse = out[~empty].to(F64), lse[~empty].to(F64)
    want_out, want_lse = ref_out[~empty], ref_lse[~empty]
    if dtype == F32:
        torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_lse, want_lse, rtol=1e-5, atol=1e-5)
        return
    # FlashAttention rule: at most twice the error of the same computation in low precision.
    low_out, low_lse = naive_attention(q, k, v, mask, scale)
    for name, got, want, low, floor in (
        ("out", got_out, want_out, low_out[~empty].to(F64), 1e-4),
        ("lse", got_lse, want_lse, low_lse[~empty].to(F64), 1e-5),
    ):
        err = (got - want).abs().max().item()
        low_err = (low - want).abs().max().item()
        assert err <= 2 * low_err + floor, (
            f"{name}: kernel error {err:.3g} > 2 x naive {dtype} error {low_err:.3g} + {floor}"
        )


# -- patterns through foveate.attention(backend="triton") ------------------------------------------


RUNS = [pytest.param(case, dtype, id=f"{case.id}-{name}")
        for case in CASES for dtype, name in ((F32, "f32"), (F16, "f16")) if dtype == F32 or case.f16]


@needs_triton
@pytest.mark.parametrize("case,dtype", RUNS)
def test_forward_matches_naive(rng, spy, case, dtype):
    q, k, v = inputs(rng, case, dtype)
    out, lse = foveate.attention(q, k, v, case.pattern, backend="triton", tile=case.tile, return_lse=True)
    assert out.shape == (*q.shape[:-1], case.dims[1]) and lse.shape == q.shape[:-1]

    mask = brute_mask(case.pattern or P.Dense(), case.q_len, case.kv_len)
    assert bool((~mask.any(-1)).any()) == case.empty_rows
    _check(flat(out), lse.reshape(*lse.shape[:2], -1), flat(q), flat(k), flat(v), mask)

    # What the kernel was given: the spec of the intended token order, and partial blocks
    # where the pattern needs mask work (so that the in-kernel mask is exercised).
    call = _ran_once(spy)
    kw, layout = call["spec"].fields(), call["layout"]
    assert kw["TILE_SIZE"] == (BLOCK if case.tiled else 1)
    assert kw["PADDED"] == case.padded
    # Tiled canvases run on the caller's raster-order tensors: the kernel gets them unpermuted.
    assert kw["RASTER_IO"] == case.tiled
    if case.tiled:
        assert call["q"].shape[2] == math.prod(case.pattern.canvas)
        assert call["q"].data_ptr() == q.data_ptr() and call["k"].data_ptr() == k.data_ptr()
    assert (int(layout.kv_num_blocks.sum()) > 0) == case.partial


def test_tile_auto_cases_really_tile():
    """The ``tile="auto"`` cases above are ones where the simulator picks a tile (they test
    the tiled path, not raster order under another name)."""
    autos = [case for case in CASES if case.tile == "auto"]
    assert {len(case.pattern.canvas) for case in autos} == {2, 3}
    for case in autos:
        assert choose_tile(case.pattern, block_q=BLOCK, block_kv=BLOCK) is not None, case.id


# -- head dims, scale, return_lse --------------------------------------------------------------------

HEAD_DIMS = [(8, 8), (8, 24), (16, 16), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256), (32, 64), (64, 16), (48, 80),
             (128, 24)]


@needs_triton
@DTYPES
@pytest.mark.parametrize("dims", HEAD_DIMS, ids=[f"d{d}-dv{dv}" for d, dv in HEAD_DIMS])
def test_head_dims(rng, spy, dims, dtype):
    q, k, v = make_qkv(rng, batch=1, heads_q=2, heads_kv=1, q_shape=(200,), kv_shape=(260,), head_dim=dims[0],
                       head_dim_v=dims[1], dtype=dtype)
    out, lse = foveate.attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), P.Causal(), backend="triton",
                                 return_lse=True)
    _check(out, lse, q, k, v, brute_mask(P.Causal(), 200, 260))
    _ran_once(spy)


@needs_triton
@pytest.mark.parametrize("scale,dtype", [(0.05, F32), (0.3, F32), (2.5, F32), (0.3, F16), (2.5, F16)],
                         ids=["scale0.05-f32", "scale0.3-f32", "scale2.5-f32", "scale0.3-f16", "scale2.5-f16"])
def test_custom_scale(rng, spy, scale, dtype):
    pattern = P.SlidingWindow(30, 70)
    q, k, v = make_qkv(rng, batch=2, heads_q=2, heads_kv=2, q_shape=(180,), kv_shape=(180,), head_dim=32,
                       dtype=dtype)
    out, lse = foveate.attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), pattern, scale=scale,
                                 backend="triton", return_lse=True)
    _check(out, lse, q, k, v, brute_mask(pattern, 180, 180), scale=scale)
    assert _ran_once(spy)["scale"] == scale


@needs_triton
def test_return_lse_false_gives_the_same_output(rng, spy):
    pattern = P.Neighborhood(canvas=(6, 20), kernel=(3, 7))
    q, k, v = (t.to(DEVICE) for t in make_qkv(rng, batch=1, heads_q=2, q_shape=(6, 20), head_dim=16, dtype=F32))
    out = foveate.attention(q, k, v, pattern, backend="triton", tile=(8, 16))
    assert isinstance(out, torch.Tensor) and out.shape == q.shape
    out2, lse = foveate.attention(q, k, v, pattern, backend="triton", tile=(8, 16), return_lse=True)
    assert torch.equal(out, out2)
    _check(flat(out), lse.flatten(2), flat(q), flat(k), flat(v), brute_mask(pattern, 120, 120))
    assert len(spy.kernel.launches) == 2


# -- strided (non-contiguous) inputs -----------------------------------------------------------------


def _strided_views(rng, kind: str, dtype, batch=2, heads_q=2, heads_kv=1, q_len=200, kv_len=300, d=32):
    """Non-contiguous q, k, v with the usual ``(B, H, N, D)`` shapes."""

    def draw(*shape):
        return torch.randn(*shape, generator=rng, dtype=F64).to(dtype).to(DEVICE)

    if kind == "bnhd-transposed":  # the layout of most models: (B, N, H, D) then .transpose(1, 2)
        q = draw(batch, q_len, heads_q, d).transpose(1, 2)
        k = draw(batch, kv_len, heads_kv, d).transpose(1, 2)
        v = draw(batch, kv_len, heads_kv, d).transpose(1, 2)
    elif kind == "packed-kv":  # k and v sliced out of one (B, N, 2, H, D) projection
        q = draw(batch, q_len, heads_q, d).transpose(1, 2)
        kv = draw(batch, kv_len, 2, heads_kv, d)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    elif kind == "head-dim-stride2":  # every other element of the last axis
        q = draw(batch, heads_q, q_len, 2 * d)[..., ::2]
        k = draw(batch, heads_kv, kv_len, 2 * d)[..., 1::2]
        v = draw(batch, kv_len, heads_kv, 2 * d).transpose(1, 2)[..., ::2]
    elif kind == "expanded-mqa-batch":  # one batch row broadcast (stride 0 on the batch axis)
        q = draw(1, heads_q, q_len, d).expand(batch, -1, -1, -1)
        k = draw(1, heads_kv, kv_len, d).expand(batch, -1, -1, -1)
        v = draw(1, heads_kv, kv_len, d).expand(batch, -1, -1, -1)
    else:
        raise AssertionError(kind)
    return q, k, v


# (kind, kv_len, dtype): kv_len a multiple of the block or not (two load paths in the kernel)
STRIDED = [pytest.param(kind, kv_len, dtype, id=f"{kind}-kv{kv_len}-{name}")
           for kind, kv_len, dtype, name in (
               ("bnhd-transposed", 300, F32, "f32"), ("bnhd-transposed", 256, F16, "f16"),
               ("packed-kv", 256, F32, "f32"),
               ("head-dim-stride2", 300, F32, "f32"), ("head-dim-stride2", 256, F32, "f32"),
               ("head-dim-stride2", 300, F16, "f16"),
               ("expanded-mqa-batch", 300, F32, "f32"))]


@needs_triton
@pytest.mark.parametrize("kind,kv_len,dtype", STRIDED)
def test_stridedinputs(rng, spy, kind, kv_len, dtype):
    pattern = P.SlidingWindow(60, 10)
    q, k, v = _strided_views(rng, kind, dtype, kv_len=kv_len)
    assert not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous())
    out, lse = foveate.attention(q, k, v, pattern, backend="triton", return_lse=True)
    _check(out, lse, q, k, v, brute_mask(pattern, q.shape[2], k.shape[2]))
    # Same result as on contiguous copies (bit for bit: same kernel, same numbers).
    contiguous = foveate.attention(q.contiguous(), k.contiguous(), v.contiguous(), pattern, backend="triton")
    assert torch.equal(out, contiguous)
    # The backend hands the kernel the caller's tensors, not copies.
    call = spy.calls[0]
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert call[name].data_ptr() == t.data_ptr() and call[name].stride() == t.stride(), f"{name} was copied"


# -- per-(batch, head) layouts through attention_forward directly -------------------------------------


# (id, grid's leading shape, grid values, spec pattern) for q (B=2, Hq=4), kv Hkv=2
LAYOUTS = [
    ("per-batch-head-full-blocks", (2, 4), (0, 2), P.Dense()),
    ("broadcast-1x1-full-blocks", (1, 1), (0, 2), P.Dense()),
    ("per-head-1xH", (1, 4), (0, 2), P.Dense()),
    ("per-batch-Bx1", (2, 1), (0, 2), P.Dense()),
    ("per-batch-head-partial-dense-spec", (2, 4), (0, 1, 2), P.Dense()),
    ("per-batch-head-partial-causal-spec", (2, 4), (0, 1, 2), P.Causal()),
]
LAYOUT_RUNS = [pytest.param(*case, dtype, id=f"{case[0]}-{name}")
               for case in LAYOUTS for dtype, name in ((F32, "f32"), (F16, "f16"))
               if dtype == F32 or case[0] in ("per-batch-head-full-blocks", "per-batch-head-partial-causal-spec")]


@needs_triton
@pytest.mark.parametrize("name,lead,values,spec_pattern,dtype", LAYOUT_RUNS)
def test_attention_forward_with_a_block_grid(rng, spy, name, lead, values, spec_pattern, dtype):
    """Layouts that vary per batch row and per query head (as content-selected patterns will
    produce). Full blocks are unmasked; partial blocks are masked by the spec only."""
    q_len, kv_len = 300, 350
    q, k, v = make_qkv(rng, batch=2, heads_q=4, heads_kv=2, q_shape=(q_len,), kv_shape=(kv_len,), head_dim=32,
                       head_dim_v=48, dtype=dtype)
    nq, nkv = math.ceil(q_len / BLOCK), math.ceil(kv_len / BLOCK)
    grid = random_grid(rng, (*lead, nq, nkv), values)
    rows = grid.flatten(0, 1)
    assert all(torch.equal(g, rows[0]) for g in rows) == (lead == (1, 1)), "the grid must vary per (b, h)"
    layout = BlockLayout.from_block_grid(grid.to(DEVICE), block_q=BLOCK, block_kv=BLOCK, q_len=q_len,
                                         kv_len=kv_len)
    assert torch.equal(layout.to_dense().cpu(), grid)
    spec = masks.mask_spec(spec_pattern, q_len, kv_len)
    scale = 0.2
    out, lse = fwd_module.attention_forward(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), layout, spec, scale)

    full = token_mask(grid == 2, q_len, kv_len)
    partial = token_mask(grid == 1, q_len, kv_len) & brute_mask(spec_pattern, q_len, kv_len)
    mask = full | partial
    _check(out, lse, q, k, v, mask, scale=scale)
    assert len(spy.kernel.launches) == 1


# -- tiled canvases on raster-order tensors (the permutation inside the kernel) ----------------------

# (id, pattern, tile): padding on every axis, extra keys, 2-D and 3-D, tiles of 128 tokens.
RASTER_IO = [
    ("2d-padded-extra", NB2_PAD_EXTRA, (8, 16)),
    ("2d-padded-tall-tile", NB2_TALL, (4, 32)),
    ("3d-padded", NB3_PAD, (2, 8, 8)),
    ("3d-auto-tile", NB3_AUTO, (4, 8, 4)),
]


# Kernel tiles of 128 everywhere, and of 64 (blocks that start halfway through a canvas tile,
# on its first axis) where that is worth the interpreter's time.
RASTER_IO_RUNS = [pytest.param(*case, 128, 128, id=f"{case[0]}-tiles128") for case in RASTER_IO] + [
    pytest.param(*case, 64, 64, id=f"{case[0]}-tiles64") for case in RASTER_IO
    if case[0] in ("2d-padded-extra", "3d-padded")]


@needs_triton
@pytest.mark.parametrize("name,pattern,tile,block_m,block_n", RASTER_IO_RUNS)
def test_raster_io_equals_the_permuted_run(rng, name, pattern, tile, block_m, block_n):
    """The kernel on raster-order tensors (``raster_io``) gives exactly what it gives on the
    same tokens permuted by ``TiledOrder``, permuted back: for kernel tiles smaller than a
    canvas tile too (blocks that start inside a tile)."""
    from foveate.tiling import Tiled

    tiled = Tiled(pattern, tile)
    order = tiled.order
    q_len, kv_len = tiled.default_lengths()
    n_canvas = order.num_canvas
    q, k, v = make_qkv(rng, batch=1, heads_q=2, heads_kv=1, q_shape=(n_canvas,),
                       kv_shape=(n_canvas + pattern.extra_kv,), head_dim=16, dtype=F32)
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    layout = tiled.build(q_len, kv_len, block_q=BLOCK, block_kv=BLOCK, device=DEVICE)
    kw = dict(block_m=block_m, block_n=block_n)
    out, lse = fwd_module.attention_forward(
        q, k, v, layout, masks.mask_spec(tiled, q_len, kv_len, raster_io=True), 0.3, **kw)

    def kv_tiles(x):
        return torch.cat([order.tile_tokens(x[:, :, :n_canvas]), x[:, :, n_canvas:]], dim=2)

    out_t, lse_t = fwd_module.attention_forward(order.tile_tokens(q), kv_tiles(k), kv_tiles(v), layout,
                                                masks.mask_spec(tiled, q_len, kv_len), 0.3, **kw)
    assert out.shape == q.shape and lse.shape == q.shape[:-1]
    torch.testing.assert_close(out, order.untile_tokens(out_t), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse, order.untile_tokens(lse_t), rtol=1e-6, atol=1e-6)


def test_raster_io_needs_a_tiled_pattern_with_power_of_two_sides():
    from foveate.tiling import Tiled

    with pytest.raises(ValueError, match=r"raster_io needs a pattern in a tiled order \(Tiled\)"):
        masks.mask_spec(NB2, 320, 320, raster_io=True)
    odd = Tiled(P.Neighborhood(canvas=(12, 12), kernel=(3, 3)), (3, 4))
    with pytest.raises(ValueError, match="powers of two"):
        masks.mask_spec(odd, *odd.default_lengths(), raster_io=True)
    spec = masks.mask_spec(Tiled(NB2_PAD_EXTRA, (8, 16)), 256, 261, raster_io=True)
    assert spec.raster_io and spec.padded_io and spec.positions(144, 149) == (256, 261)


# -- refusals and backend selection ------------------------------------------------------------------


def _problem(pattern=None, **kw):
    fields = {"batch": 1, "heads_q": 2, "heads_kv": 2, "q_len": 200, "kv_len": 200, "head_dim": 32,
              "head_dim_v": 32, "dtype": F32, "device": DEVICE, "requires_grad": False, "return_lse": False,
              "pattern": pattern or P.Causal()}
    fields.update(kw)
    known = {f.name for f in dataclasses.fields(Problem)}
    return Problem(**{n: value for n, value in fields.items() if n in known})


# (id, make_qkv keyword arguments, pattern, words the message must contain)
REFUSALS = [
    ("head-dim-20", {"head_dim": 20}, P.Causal(), r"head_dim=20.*multiple of 8"),
    ("head-dim-264", {"head_dim": 264}, P.Causal(), r"head_dim=264.*\[8, 256\]"),
    ("head-dim-v-36", {"head_dim_v": 36}, P.Dense(), r"head_dim_v=36.*multiple of 8"),
    ("float64", {"dtype": F64}, P.Causal(), r"dtype torch\.float64"),
]


@needs_triton
@pytest.mark.parametrize("name,kw,pattern,reason", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_triton_refuses(rng, spy, name, kw, pattern, reason):
    args = {"batch": 1, "heads_q": 2, "q_shape": (64,), "head_dim": 32, "dtype": F32}
    args.update(kw)
    q, k, v = (t.to(DEVICE) for t in make_qkv(rng, **args))
    before = [t.detach().clone() for t in (q, k, v)]
    with pytest.raises(ValueError, match=r"backend='triton' cannot run this problem: .*" + reason):
        foveate.attention(q, k, v, pattern, backend="triton")
    assert not spy.calls and not spy.kernel.launches, "nothing may be computed"
    for t, b in zip((q, k, v), before):
        assert torch.equal(t.detach(), b)


@needs_triton
def test_inputs_that_require_grad_under_no_grad_run(rng, spy):
    """Inference on tensors that require grad needs no backward: the kernel runs."""
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(150,), head_dim=32, dtype=F32, requires_grad=True)
    with torch.no_grad():
        out, lse = foveate.attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), P.Causal(), backend="triton",
                                     return_lse=True)
    assert not out.requires_grad
    _check(out, lse, q, k, v, brute_mask(P.Causal(), 150, 150))
    _ran_once(spy)


@needs_triton
def test_supports_reasons():
    triton_backend = foveate.backends.get("triton")
    assert triton_backend.supports(_problem()) is None
    for dtype in (F16, torch.bfloat16, F32):
        assert triton_backend.supports(_problem(dtype=dtype)) is None
    for pattern in (P.Dense(), P.SlidingWindow(3, 3), P.Neighborhood(canvas=(10, 20), kernel=3, extra_kv=2)):
        assert triton_backend.supports(_problem(pattern, q_len=200, kv_len=200 + (pattern.extra_kv or 0))) is None
    assert triton_backend.supports(_problem(requires_grad=True)) is None  # backward kernels: test_triton_bwd
    assert "float64" in triton_backend.supports(_problem(dtype=F64))
    assert "head_dim=12" in triton_backend.supports(_problem(head_dim=12))
    assert "head_dim=512" in triton_backend.supports(_problem(head_dim=512))
    assert "head_dim_v=20" in triton_backend.supports(_problem(head_dim_v=20))
    assert triton_backend.supports(_problem(P.Causal() & P.SlidingWindow(8))) is None  # composed in the kernel


@pytest.mark.skipif(torch.cuda.is_available(), reason="about CPU problems on a machine without a GPU")
@pytest.mark.parametrize(
    "kw", [{}, {"return_lse": True}, {"dtype": F16}, {"pattern": P.Neighborhood(canvas=(10, 20), kernel=3)}],
    ids=["causal", "lse", "f16", "nbhd"],
)
def test_auto_does_not_pick_triton_on_cpu(kw):
    problem = _problem(**kw)
    assert problem.device.type == "cpu"
    assert select(problem).name != "triton"
    assert select(problem, "auto").name != "triton"
    why = foveate.backends.reasons(problem)
    assert why["triton"] is not None
    if "triton" in foveate.backends.available():  # interpreter on: supported, but only when named
        assert foveate.backends.get("triton").supports(problem) is None
        assert "interpreter" in why["triton"]


def test_without_the_interpreter_triton_refuses_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    triton_backend = foveate.backends.get("triton")
    assert "TRITON_INTERPRET=1" in triton_backend.supports(_problem(device=torch.device("cpu")))
    if not torch.cuda.is_available():
        assert not triton_backend.available()
        assert "triton" not in foveate.backends.available()


# -- the interpreter really runs the kernel -----------------------------------------------------------


@needs_triton
def test_the_triton_kernel_really_runs(rng, spy):
    """``backend="triton"`` goes through ``attention_forward`` and launches the Triton kernel
    (interpreted on CPU); a fall-back to another backend would leave the spies empty."""
    if DEVICE.type == "cpu":
        from triton.runtime.interpreter import InterpretedFunction

        assert isinstance(spy.kernel.kernel, InterpretedFunction), "TRITON_INTERPRET=1 did not take effect"
    q, k, v = (t.to(DEVICE) for t in make_qkv(rng, batch=2, heads_q=2, heads_kv=1, q_shape=(200,), head_dim=16,
                                                dtype=F32))
    out = foveate.attention(q, k, v, P.Causal(), backend="triton")
    call = _ran_once(spy)
    launch = spy.kernel.launches[0]
    assert launch["grid"] == (2, 2 * 2)  # (q blocks, batch x query heads)
    fields = masks.MaskSpec.from_ints(launch["kwargs"]["MASK"]).fields()
    assert [leaf["KIND"] for leaf in fields["leaves"]] == ["band"] and fields["leaves"][0]["HAS_RIGHT"]
    assert call["q"] is q
    ref = foveate.attention(q, k, v, P.Causal(), backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # Twice: two launches (nothing cached in place of the computation).
    foveate.attention(q, k, v, P.Causal(), backend="triton")
    assert len(spy.kernel.launches) == 2


def test_block_lists_are_remembered_per_layout_tensors():
    """``block_lists`` gives the lists and their leading strides (0 on broadcast axes); a second
    call returns the remembered tuple, and a layout holding other tensors gets them anew."""
    layout = P.SlidingWindow(100, 0).build(300, 300, block_q=64, block_kv=64)
    for transposed in (False, True):
        lists, strides = common.block_lists(layout, transposed=transposed)
        prefix = "q" if transposed else "kv"
        assert lists[1] is getattr(layout, f"{prefix}_indices")
        assert strides == tuple(s for t in lists for s in common.layout_strides(t))
        assert strides[:3] == (0, 0, lists[0].stride(2))  # (1, 1, n) counts: broadcast batch, heads
        assert common.block_lists(layout, transposed=transposed) is common.block_lists(
            layout, transposed=transposed)
    wider = layout.kv_indices.expand(2, 3, -1, -1)  # a per-(batch, head) view in its place
    layout.kv_indices = wider
    lists, strides = common.block_lists(layout)
    assert lists[1] is wider and strides[3:6] == (wider.stride(0), wider.stride(1), wider.stride(2))


# -- full blocks walked as ranges -----------------------------------------------------------------


@pytest.mark.parametrize("pattern,q_len,kv_len,runs", [
    (P.Dense(), 300, 200, True),
    (P.Causal(), 200, 330, True),                  # the first rows have no full block
    (P.SlidingWindow(100, 40), 330, 330, True),
    (P.Neighborhood((300,), 101, stride=32), 300, 300, True),
    (P.Blocks(torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)[None, None], block_q=64, block_kv=64), 128,
     192, False),
], ids=["dense", "causal", "window", "1d-strided", "blocks-gaps"])
def test_full_runs_are_found(pattern, q_len, kv_len, runs):
    """``find_full_runs``: whether every query block's full kv blocks are consecutive, checked
    against the lists themselves; ``to`` keeps it."""
    if q_len is None:
        q_len, kv_len = pattern.default_lengths()
    layout = pattern.build(q_len, kv_len, block_q=64, block_kv=64)
    assert layout.full_runs is (True if layout.holds_runs else None)  # (bands hold their runs)
    counts = layout.full_kv_num_blocks.flatten().tolist()
    rows = layout.full_kv_indices.reshape(len(counts), -1).tolist()
    consecutive = all(row[:c] == list(range(row[0], row[0] + c)) for row, c in zip(rows, counts) if c)
    assert layout.find_full_runs() is runs is consecutive
    assert layout.to("cpu").full_runs is runs


@needs_triton
@pytest.mark.parametrize("pattern,q_len,kv_len", [
    (P.Causal(), 200, 330), (P.SlidingWindow(100, 40), 330, 330), (P.Neighborhood((300,), 101, stride=32), 300, 300),
    (P.Dense(), 200, 130),
], ids=["causal", "window", "1d-strided", "dense-ragged"])
def test_full_runs_walked_as_ranges_equal_the_lists(rng, spy, monkeypatch, pattern, q_len, kv_len):
    """A cached layout of runs launches the range walk (``FULL_RUNS``); its output is bitwise
    that of the list walk (the same blocks in the same order), and both are the reference's."""
    q, k, v = (t.to(DEVICE) for t in make_qkv(rng, batch=1, heads_q=2, q_shape=(q_len,), kv_shape=(kv_len,),
                                                head_dim=16, dtype=F32))
    outs = {}
    for ranges in (True, False):
        with foveate.policy.override(full_runs=ranges):
            outs[ranges] = foveate.attention(q, k, v, pattern, backend="triton")
        assert spy.kernel.launches[-1]["kwargs"]["FULL_RUNS"] is ranges
    assert torch.equal(outs[True], outs[False])
    torch.testing.assert_close(outs[True], foveate.attention(q, k, v, pattern, backend="reference"),
                               rtol=1e-5, atol=1e-5)


@needs_triton
def test_layouts_not_known_to_hold_runs_walk_the_lists(rng, spy):
    """A per-call layout (a selection: never searched, no host sync) and a layout with gaps
    take the list walk."""
    q, k, v = (t.to(DEVICE) for t in make_qkv(rng, batch=1, heads_q=2, q_shape=(256,), kv_shape=(512,),
                                                head_dim=16, dtype=F32))
    gaps = P.Blocks(torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)[None, None])
    foveate.attention(q, k, v, gaps, backend="triton")
    selection = P.BlockTopK(2, block=128, sink_blocks=0, local_blocks=1).select(q, k)
    foveate.attention(q, k, v, selection, backend="triton")
    assert [launch["kwargs"]["FULL_RUNS"] for launch in spy.kernel.launches] == [False, False]
