"""``P.WithText``: a pattern plus global text tokens, against a brute-force definition and against
``foveate.nn.joint_attention`` (which runs the same attention without a joint layout)."""

from __future__ import annotations

import pytest
import torch

import brute
import foveate
from foveate import patterns as P
from foveate.nn import joint_attention
from layout_checks import check_layout, check_structure

F64 = torch.float64


def _brute(pattern: P.Pattern, n: int, text: int, first: bool) -> torch.Tensor:
    """The definition, written out: the pattern's own (n, n) mask placed at the pattern's
    tokens, every pair with a text token allowed."""
    inner = pattern.mask_mod(n, n)(torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long),
                                   torch.arange(n)[:, None], torch.arange(n)[None, :])
    total = n + text
    mask = torch.ones(total, total, dtype=torch.bool)
    o = text if first else 0
    mask[o:o + n, o:o + n] = inner.expand(n, n)
    return mask


INNERS = {
    "causal": (P.Causal(), 50),
    "window": (P.SlidingWindow(7, 3), 61),
    "2d": (P.Neighborhood((7, 9), (3, 5)), None),
    "3d-dilated": (P.Neighborhood((4, 6, 5), (3, 3, 3), dilation=(1, 2, 1)), None),
    "windows": (P.Windows((8, 12), 4, shift=2), None),
    "union": (P.Neighborhood((6, 8), 3) | P.Causal(), None),
}


def _lengths(pattern, n):
    return pattern.default_lengths()[0] if n is None else n


@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("text", [1, 5, 16])
@pytest.mark.parametrize("inner", list(INNERS))
def test_mask_and_layout_are_the_definition(inner, text, first):
    pattern, n = INNERS[inner]
    n = _lengths(pattern, n)
    p = P.WithText(pattern, text, first=first)
    total = n + text
    mask = _brute(pattern, n, text, first)
    got = p.mask_mod(total, total)(0, 0, torch.arange(total)[:, None], torch.arange(total)[None, :])
    assert torch.equal(got.expand(total, total), mask)
    for bq, bkv in ((8, 8), (16, 8), (13, 7)):
        layout = p.build(total, total, block_q=bq, block_kv=bkv)
        aligned = not first or (text % bq == 0 and text % bkv == 0)
        if aligned:
            check_layout(layout, mask, bq, bkv, f"{p!r} blocks {bq}x{bkv}")
        else:
            # Offset blocks: a correct layout, not a tight one: a block marked full is full, and
            # every block with an allowed pair is visited; the allowed pairs are exact.
            grid = check_structure(layout)[0, 0]
            expected = brute.block_grid(mask, bq, bkv)
            assert bool((expected[grid == 2] == 2).all()), "a block marked full is full"
            assert bool((grid[expected > 0] > 0).all()), "every block with an allowed pair is visited"
            assert layout.allowed_pairs() == int(mask.sum())


def test_kernel_mask_kinds():
    n = 63
    last = P.WithText(P.Neighborhood((7, 9), 3), 9)
    assert last.kernel_mask(n + 9, n + 9) is not None  # the pattern's leaves with two rectangles
    assert P.WithText(P.Neighborhood((7, 9), 3), 9, first=True).kernel_mask(n + 9, n + 9) is None  # bitmask
    assert P.WithText(P.Mask(lambda b, h, q, k: k <= q), 9).kernel_mask(50, 50) is None


def _qkv(n, *, dtype=torch.float32, heads=(2, 1), dim=16):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(2, h, n, dim, generator=gen, dtype=F64).to(dtype) for h in (heads[0], heads[1], heads[1])]


def _grads(fn, q, k, v, d_out):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, d_out.to(out.dtype))
    return [out.detach().to(F64), *(g.to(F64) for g in grads)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("inner,first", [("2d", False), ("2d", True), ("window", False), ("3d-dilated", True)])
def test_attention_equals_the_reference_and_joint_attention(backend, inner, first):
    """Forward and backward on the fused kernels (Triton's interpreter here) and the torch
    backend against the reference, and equal to ``joint_attention`` of the same pattern."""
    pattern, n = INNERS[inner]
    n = _lengths(pattern, n)
    text = 6
    p = P.WithText(pattern, text, first=first)
    q, k, v = _qkv(n + text)
    d_out = torch.randn(2, 2, n + text, 16, generator=torch.Generator().manual_seed(1), dtype=F64)
    want = _grads(lambda q, k, v: foveate.attention(q, k, v, p, backend="reference"), q.to(F64), k.to(F64),
                  v.to(F64), d_out)
    joint = _grads(lambda q, k, v: joint_attention(q, k, v, pattern, extra=text, extra_first=first,
                                                   backend="reference"), q.to(F64), k.to(F64), v.to(F64), d_out)
    got = _grads(lambda q, k, v: foveate.attention(q, k, v, p, backend=backend), q, k, v, d_out)
    for name, g, w, j in zip(("out", "dq", "dk", "dv"), got, want, joint):
        assert (j - w).abs().max().item() < 1e-5, f"joint_attention {name}"
        assert (g - w).abs().max().item() < 1e-4 * max(1.0, w.abs().max().item()), f"{backend} {name}"


def test_bad_arguments():
    with pytest.raises(TypeError, match="pattern"):
        P.WithText("causal", 4)
    with pytest.raises(ValueError, match="text"):
        P.WithText(P.Causal(), 0)
    with pytest.raises(TypeError, match="first"):
        P.WithText(P.Causal(), 3, first=1)
    with pytest.raises(ValueError, match="extra_kv"):
        P.WithText(P.Neighborhood((4, 4), 3, extra_kv=2), 3)
    with pytest.raises(ValueError, match="selected"):
        P.WithText(P.BlockTopK(2, block=16), 3)
    with pytest.raises(ValueError, match="pattern=.* 64 queries and 256 keys"):
        P.WithText(P.CrossScale((8, 8), (16, 16), 3), 3)
    p = P.WithText(P.Neighborhood((4, 4), 3), 3)
    assert p.default_lengths() == (19, 19)
    with pytest.raises(ValueError):
        p.check_lengths(20, 20)
    with pytest.raises(ValueError, match="self-attention"):
        P.WithText(P.Causal(), 3).check_lengths(10, 12)
    with pytest.raises(ValueError, match="no token"):
        P.WithText(P.Causal(), 3).check_lengths(3, 3)
