"""``P.Circular`` (CLEAR's circular windows) against its definition written as loops."""

from __future__ import annotations

import itertools

import pytest
import torch

import foveate
from foveate import patterns as P
from layout_checks import check_layout

F64 = torch.float64


def _brute(canvas, radius):
    """Key y allowed for query x when sum (y - x)^2 < radius^2, coordinate by coordinate."""
    coords = list(itertools.product(*(range(n) for n in canvas)))
    mask = torch.zeros(len(coords), len(coords), dtype=torch.bool)
    for i, x in enumerate(coords):
        for j, y in enumerate(coords):
            mask[i, j] = sum((a - b) ** 2 for a, b in zip(x, y)) < radius ** 2
    return mask


CASES = [((37,), 5), ((11, 13), 3.5), ((9, 10), 1), ((12, 7), 20), ((5, 6, 7), 2.2), ((4, 9, 8), 3)]


@pytest.mark.parametrize("canvas,radius", CASES)
def test_mask_and_layout_are_the_definition(canvas, radius):
    p = P.Circular(canvas, radius)
    mask = _brute(canvas, radius)
    n = mask.shape[0]
    got = p.mask_mod(n, n)(0, 0, torch.arange(n)[:, None], torch.arange(n)[None, :])
    assert torch.equal(got, mask)
    assert p.allowed_pairs() == int(mask.sum())
    for bq, bkv in ((8, 8), (16, 8), (13, 7), (64, 64)):
        check_layout(p.build(n, n, block_q=bq, block_kv=bkv), mask, bq, bkv, f"{p!r} blocks {bq}x{bkv}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_attention_equals_the_reference(backend):
    p = P.Circular((9, 11), 3.2)
    gen = torch.Generator().manual_seed(0)
    q, k, v, d_out = (torch.randn(2, 2, 99, 16, generator=gen, dtype=F64) for _ in range(4))

    def grads(backend, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = foveate.attention(*leaves, p, backend=backend)
        return [out.detach().to(F64), *(g.to(F64) for g in torch.autograd.grad(out, leaves, d_out.to(dtype)))]

    want, got = grads("reference", F64), grads(backend, torch.float32)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert (g - w).abs().max().item() < 1e-4 * max(1.0, w.abs().max().item()), name


def test_canvas_shaped_inputs_and_simulate():
    p = P.Circular((16, 16), 4)
    q = torch.randn(1, 2, 16, 16, 8)
    torch.testing.assert_close(foveate.attention(q, q, q, p), foveate.attention(q, q, q, p, backend="reference"))
    record = foveate.simulate(P.Circular((64, 64), 4))  # 32 blocks a side: most are skipped
    assert 0 < record.density < 1 and record.speedup_bound > 5


@pytest.mark.parametrize("bad", [dict(canvas=(0, 4), radius=2), dict(canvas=(4, 4, 4, 4), radius=2),
                                 dict(canvas=(4, 4), radius=0), dict(canvas=(4, 4), radius=float("inf")),
                                 dict(canvas=(4, 4), radius=True)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match="canvas" if "radius" in bad and bad["radius"] == 2 else "radius"):
        P.Circular(**bad)
