"""``P.CrossScale`` (cross-resolution neighborhoods, issue #28) against its definition written as
loops: the mask, the allowed pairs, the layout block by block, the attention on the torch and
Triton backends against the reference, and its equality with ``P.Neighborhood`` on one canvas."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import torch

import foveate
from foveate import patterns as P
from foveate.backends.triton import bwd as bwd_module
from foveate.backends.triton import fwd as fwd_module
from kernel_spy import DEVICE, KernelSpy, needs_triton
from layout_checks import check_layout

F64, F32, F16 = torch.float64, torch.float32, torch.float16


def _window_start(x, q_side, kv_side, kernel):
    """The window of query coordinate x: centred on the key cell holding the query cell's centre
    (x + 1/2) * kv_side / q_side, kernel keys, moved inward at the borders."""
    centre = int(Fraction(2 * x + 1, 2) * Fraction(kv_side, q_side))  # floor (non-negative)
    return min(max(centre - kernel // 2, 0), kv_side - kernel)


def _brute(q_canvas, kv_canvas, kernel):
    kernel = (kernel,) * len(q_canvas) if isinstance(kernel, int) else kernel
    q_coords = list(itertools.product(*(range(n) for n in q_canvas)))
    k_coords = list(itertools.product(*(range(n) for n in kv_canvas)))
    mask = torch.zeros(len(q_coords), len(k_coords), dtype=torch.bool)
    for i, x in enumerate(q_coords):
        starts = [_window_start(xa, nq, nk, w) for xa, nq, nk, w in zip(x, q_canvas, kv_canvas, kernel)]
        for j, y in enumerate(k_coords):
            mask[i, j] = all(s <= ya < s + w for ya, s, w in zip(y, starts, kernel))
    return mask


CASES = [
    ((7,), (19,), 3),  # q coarser, windows overlap
    ((19,), (7,), 2),  # q finer, even kernel
    ((5,), (37,), 2),  # q coarser, gaps between windows
    ((13,), (13,), 4),
    ((5, 6), (11, 13), (3, 4)),
    ((12, 9), (5, 4), (2, 3)),
    ((3, 4), (17, 19), 2),  # gaps on both axes
    ((7, 3), (3, 8), (3, 1)),  # finer on one axis, coarser on the other
    ((6, 8), (6, 8), (3, 5)),
    ((3, 4, 5), (5, 7, 9), (3, 2, 3)),
    ((6, 5, 4), (3, 3, 2), (1, 2, 2)),
    ((2, 3, 2), (7, 4, 9), (2, 4, 1)),  # gaps on two axes, the whole axis on one
]
BLOCKS = [(8, 8), (16, 8), (13, 7), (5, 11), (64, 64)]


@pytest.mark.parametrize("q_canvas,kv_canvas,kernel", CASES)
def test_mask_pairs_and_layout_are_the_definition(q_canvas, kv_canvas, kernel):
    p = P.CrossScale(q_canvas, kv_canvas, kernel)
    mask = _brute(q_canvas, kv_canvas, kernel)
    nq, nk = mask.shape
    assert p.default_lengths() == (nq, nk)
    got = p.mask_mod(nq, nk)(0, 0, torch.arange(nq)[:, None], torch.arange(nk)[None, :])
    assert torch.equal(got, mask)
    assert p.allowed_pairs() == int(mask.sum())
    for bq, bkv in BLOCKS:
        check_layout(p.build(nq, nk, block_q=bq, block_kv=bkv), mask, bq, bkv, f"{p!r} blocks {bq}x{bkv}")


@pytest.mark.parametrize("canvas,kernel", [((13,), 4), ((6, 8), (3, 5)), ((5, 4, 6), (3, 2, 4))])
def test_equal_canvases_are_the_neighborhood(canvas, kernel):
    p, nb = P.CrossScale(canvas, canvas, kernel), P.Neighborhood(canvas, kernel)
    n = nb.default_lengths()[0]
    assert p.default_lengths() == (n, n)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    assert torch.equal(p.mask_mod(n, n)(0, 0, i, j), nb.mask_mod(n, n)(0, 0, i, j))
    assert p.kernel_mask(n, n) == nb.kernel_mask(n, n)
    for bq, bkv in ((8, 8), (16, 8), (13, 7)):
        got, want = p.build(n, n, block_q=bq, block_kv=bkv), nb.build(n, n, block_q=bq, block_kv=bkv)
        assert torch.equal(got.to_dense(), want.to_dense())
        assert got.allowed_pairs() == want.allowed_pairs()


def test_kernel_mask_is_none_across_scales():
    p = P.CrossScale((4, 6), (8, 12), 3)
    assert p.kernel_mask(24, 96) is None


def _run(p, backend, dtype, q, k, v, d_out):
    leaves = [t.to(dtype).to(DEVICE if backend == "triton" else "cpu").requires_grad_() for t in (q, k, v)]
    out = foveate.attention(*leaves, p, backend=backend)
    grads = torch.autograd.grad(out, leaves, d_out.to(dtype).to(out.device))
    return [t.detach().cpu().to(F64) for t in (out, *grads)]


def _spy(monkeypatch):
    """Spies on the portable Triton kernels (a silent fallback fails the test) and records the
    mask path of each forward call."""
    monkeypatch.setattr(foveate.policy, "hopper_forward", False)
    spies = {}
    for name, module, kernel in (("fwd", fwd_module, "_fwd_kernel"), ("dq", bwd_module, "_dq_kernel"),
                                 ("dkdv", bwd_module, "_dkdv_kernel")):
        spies[name] = KernelSpy(getattr(module, kernel))
        monkeypatch.setattr(module, kernel, spies[name])
    paths, real = [], fwd_module.attention_forward

    def attention_forward(q, k, v, layout, spec, scale, **kw):
        paths.append(spec.path)
        return real(q, k, v, layout, spec, scale, **kw)

    monkeypatch.setattr(fwd_module, "attention_forward", attention_forward)
    return spies, paths


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("q_canvas,kv_canvas,kernel", [((6, 7), (9, 11), (3, 4)), ((9, 11), (5, 4), 3),
                                                        ((3, 4), (13, 17), 2), ((7, 6), (7, 6), 3)])
def test_attention_equals_the_reference(backend, q_canvas, kv_canvas, kernel, monkeypatch):
    p = P.CrossScale(q_canvas, kv_canvas, kernel)
    nq, nk = p.default_lengths()
    gen = torch.Generator().manual_seed(0)
    q, d_out = (torch.randn(1, 2, nq, 16, generator=gen, dtype=F64) for _ in range(2))
    k, v = (torch.randn(1, 2, nk, 16, generator=gen, dtype=F64) for _ in range(2))
    want = _run(p, "reference", F64, q, k, v, d_out)
    spies, paths = _spy(monkeypatch) if backend == "triton" else (None, None)
    for dtype in (F32, F16):
        got = _run(p, backend, dtype, q, k, v, d_out)
        low = _run(p, "reference", dtype, q, k, v, d_out) if dtype == F16 else None
        for i, name in enumerate(("out", "dq", "dk", "dv")):
            err, size = (got[i] - want[i]).abs().max().item(), max(1.0, want[i].abs().max().item())
            if dtype == F32:
                assert err <= 1e-4 * size, f"{dtype} {name}: error {err:.3g}"
            else:  # the FlashAttention rule: twice the error of the same computation in float16
                assert err <= 2 * (low[i] - want[i]).abs().max().item() + 1e-3 * size, f"{dtype} {name}: {err:.3g}"
    if backend == "triton":  # the scaled windows from the bitmask; one canvas: the neighborhood's Window
        assert paths == ["structured" if q_canvas == kv_canvas else "bitmask"] * 2, paths
        assert all(spy.launches for spy in spies.values())


def test_tile_is_refused():
    p = P.CrossScale((8, 8), (16, 16), 3)
    with pytest.raises(ValueError, match="tile"):
        p.build(64, 256, block_q=16, block_kv=16, tile=(4, 4))
    q, k = torch.randn(1, 1, 64, 8), torch.randn(1, 1, 256, 8)
    with pytest.raises(ValueError, match="tile"):
        foveate.attention(q, k, k, p, tile=(4, 4))
    out = foveate.attention(q, k, k, p, tile="auto")  # auto: raster order
    torch.testing.assert_close(out, foveate.attention(q, k, k, p, backend="reference"))


def test_lengths():
    p = P.CrossScale((4, 6), (8, 12), 3)
    assert p.canvas is None and p.extra_kv == 0
    p.check_lengths(24, 96)
    for q_len, kv_len in ((24, 24), (96, 96), (96, 24), (25, 96)):
        with pytest.raises(ValueError, match="q_canvas"):
            p.check_lengths(q_len, kv_len)
    with pytest.raises(TypeError, match="q_len"):
        p.check_lengths(24.0, 96)
    with pytest.raises(ValueError, match="kv_len"):
        p.mask_mod(24, 0)
    q, k = torch.randn(1, 1, 24, 8), torch.randn(1, 1, 24, 8)
    with pytest.raises(ValueError):
        foveate.attention(q, k, k, p)


def test_arguments_are_normalised():
    p = P.CrossScale(7, [19], 3)
    assert (p.q_canvas, p.kv_canvas, p.kernel) == ((7,), (19,), (3,))
    assert p == P.CrossScale((7,), (19,), (3,)) and hash(p) == hash(P.CrossScale((7,), (19,), (3,)))
    assert P.CrossScale((4, 5), (8, 9), 2).kernel == (2, 2)


@pytest.mark.parametrize("bad,error,name", [
    (dict(q_canvas=(0, 4), kv_canvas=(4, 4), kernel=1), ValueError, "q_canvas"),
    (dict(q_canvas=(4, 4, 4, 4), kv_canvas=(4, 4, 4, 4), kernel=1), ValueError, "q_canvas"),
    (dict(q_canvas="ab", kv_canvas=(4, 4), kernel=1), ValueError, "q_canvas"),
    (dict(q_canvas=(4, 4), kv_canvas=(4, 2.0), kernel=1), ValueError, "kv_canvas"),
    (dict(q_canvas=(4, 4), kv_canvas=(), kernel=1), ValueError, "kv_canvas"),
    (dict(q_canvas=(4, 4), kv_canvas=(8,), kernel=1), ValueError, "kv_canvas"),
    (dict(q_canvas=(4, 4), kv_canvas=(8, 8), kernel=9), ValueError, "kernel"),
    (dict(q_canvas=(4, 4), kv_canvas=(8, 8), kernel=(3, 0)), ValueError, "kernel"),
    (dict(q_canvas=(4, 4), kv_canvas=(8, 8), kernel=(3, 3, 3)), TypeError, "kernel"),
    (dict(q_canvas=(4, 4), kv_canvas=(8, 8), kernel=2.5), TypeError, "kernel"),
    (dict(q_canvas=(4, 4), kv_canvas=(8, 8), kernel=True), TypeError, "kernel"),
])
def test_bad_arguments(bad, error, name):
    with pytest.raises(error, match=name):
        P.CrossScale(**bad)
