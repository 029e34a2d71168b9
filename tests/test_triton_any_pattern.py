"""Every pattern on the fused kernels: compositions and ``mask_mod``-only patterns, forward, lse
and gradients, against naive float64 attention on brute-force masks.

Compositions of patterns that describe their masks run the composed predicates; patterns that
do not (``P.Mask``, user subclasses with only a ``mask_mod``, compositions with such a part) run
from the layout's bitmask. A spy on the launchers records which path each call took
(``MaskSpec.path``: structured, composed, bitmask) and that the forward and backward kernels
ran. Odd lengths, GQA, ``q_len != kv_len``, per-batch and per-head masks; float32 within 1e-4,
float16 by the FlashAttention rule (twice the error of the same naive computation in float16).
Without a GPU the kernels run in Triton's interpreter (small shapes).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import foveate
from foveate import patterns as P
from foveate.backends import reasons
from foveate.backends.base import Problem
from foveate.backends.triton import bwd as bwd_module
from foveate.backends.triton import fwd as fwd_module
from foveate.tiling import Tiled

import brute
from kernel_spy import DEVICE, KernelSpy, needs_triton
from naive import mask_from_mod, naive_attention
from strategies import pattern_tree

pytestmark = needs_triton

F64, F32, F16 = torch.float64, torch.float32, torch.float16


@pytest.fixture
def spy(monkeypatch):
    """``spy.paths``: the mask path of each forward call; ``spy.fwd`` / ``spy.dq`` / ``spy.dkdv``:
    the kernels' launches (portable kernels: on a Hopper GPU the forward may take the Hopper
    kernel, whose own tests are apart)."""
    monkeypatch.setattr(foveate.policy, "hopper_forward", False)  # (restored after the test)
    spies = {name: KernelSpy(getattr(module, kernel)) for name, module, kernel in (
        ("fwd", fwd_module, "_fwd_kernel"), ("dq", bwd_module, "_dq_kernel"), ("dkdv", bwd_module, "_dkdv_kernel"))}
    for name, module, kernel in (("fwd", fwd_module, "_fwd_kernel"), ("dq", bwd_module, "_dq_kernel"),
                                 ("dkdv", bwd_module, "_dkdv_kernel")):
        monkeypatch.setattr(module, kernel, spies[name])
    paths = []
    real = fwd_module.attention_forward

    def attention_forward(q, k, v, layout, spec, scale, **kw):
        paths.append(spec.path)
        return real(q, k, v, layout, spec, scale, **kw)

    monkeypatch.setattr(fwd_module, "attention_forward", attention_forward)

    class Spy:
        pass

    s = Spy()
    s.paths = paths
    s.fwd, s.dq, s.dkdv = (spies[n] for n in ("fwd", "dq", "dkdv"))
    return s


def _mask(pattern, q_len, kv_len, batch, heads):
    """The brute-force mask, ``(B|1, H|1, q_len, kv_len)``."""
    if getattr(pattern, "batch", None) or getattr(pattern, "heads", None):
        return mask_from_mod(pattern.fn, batch, heads, q_len, kv_len)
    if isinstance(pattern, (PrefixLM, DescribedPrefixLM)):  # a user's pattern: its mask_mod is its definition
        return brute.user_mask(pattern.mask_mod(q_len, kv_len), q_len, kv_len)[None, None]
    return brute.pattern_mask(pattern, q_len, kv_len)[None, None]


def check(pattern, q_len, kv_len, *, batch=1, heads=(2, 1), dims=(16, 16), dtype=F32, tile=None, seed=0,
          path=None, spy=None):
    """Triton (forward, lse, gradients of both) against naive float64 on the brute-force mask;
    with ``path``, the spy saw that mask path (and all three kernels ran)."""
    gen = torch.Generator().manual_seed(seed)
    hq, hk = heads
    d, dv = dims
    q64 = torch.randn(batch, hq, q_len, d, generator=gen, dtype=F64)
    k64 = torch.randn(batch, hk, kv_len, d, generator=gen, dtype=F64)
    v64 = torch.randn(batch, hk, kv_len, dv, generator=gen, dtype=F64)
    d_out = torch.randn(batch, hq, q_len, dv, generator=gen, dtype=F64)
    d_lse = torch.randn(batch, hq, q_len, generator=gen, dtype=F64)
    mask = _mask(pattern, q_len, kv_len, batch, hq)

    def grads(run, dt, device):
        leaves = [t.to(dt).to(device).detach().requires_grad_() for t in (q64, k64, v64)]
        out, lse = run(*leaves)
        lse_term = torch.where(torch.isfinite(lse), lse, 0).to(F64) * d_lse.to(device)
        ((out.to(F64) * d_out.to(device)).sum() + lse_term.sum()).backward()
        return [out, lse] + [t.grad for t in leaves]

    got = grads(lambda q, k, v: foveate.attention(q, k, v, pattern, backend="triton", tile=tile, return_lse=True),
                dtype, DEVICE)
    want = grads(lambda q, k, v: naive_attention(q, k, v, mask), F64, "cpu")
    low = grads(lambda q, k, v: naive_attention(q, k, v, mask), dtype, "cpu") if dtype != F32 else None
    for i, name in enumerate(("out", "lse", "dq", "dk", "dv")):
        g, w = got[i].detach().cpu().to(F64), want[i].detach()
        if name == "lse":
            assert torch.equal(torch.isinf(g), torch.isinf(w)), "rows without keys differ"
            g, w = torch.where(torch.isinf(w), 0, g), torch.where(torch.isinf(w), 0, w)
        err, size = (g - w).abs().max().item(), max(1.0, w.abs().max().item())
        if dtype == F32:
            assert err <= 1e-4 * size, f"{name}: error {err:.3g}"
        else:
            l = low[i].detach().to(F64)
            l = torch.where(torch.isinf(want[i].detach()), 0, l) if name == "lse" else l
            assert err <= 2 * (l - w).abs().max().item() + 1e-3 * size, f"{name}: error {err:.3g}"
    if spy is not None:
        assert spy.paths == [path] * len(spy.paths) and spy.paths, spy.paths
        assert spy.fwd.launches and spy.dq.launches and spy.dkdv.launches


# -- cases ------------------------------------------------------------------------------------------------


def _prefix_lm(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) | (kv_idx < 100)


_DOCS = torch.tensor([0] * 120 + [1] * 7 + [2] * 60 + [3] * 113)  # 300 tokens


def _documents(b, h, q_idx, kv_idx):
    docs = _DOCS.to(q_idx.device)
    return (docs[q_idx] == docs[kv_idx]) & (kv_idx <= q_idx)


def _checkerboard(b, h, q_idx, kv_idx):
    return ((q_idx // 16) + (kv_idx // 24)) % 2 == 0


_KEEP = torch.rand(300, generator=torch.Generator().manual_seed(5)) < 0.4  # a random set of keys


def _random_keys(b, h, q_idx, kv_idx):
    return _KEEP.to(kv_idx.device)[kv_idx] | (q_idx == kv_idx)


@dataclasses.dataclass(frozen=True)
class PrefixLM(P.Pattern):
    """A user's pattern, ten lines, with only a ``mask_mod`` (no layout, no kernel mask)."""

    prefix: int

    def mask_mod(self, q_len, kv_len):
        self.check_lengths(q_len, kv_len)
        prefix = self.prefix
        return lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) | (kv_idx < prefix)


@dataclasses.dataclass(frozen=True)
class DescribedPrefixLM(P.Pattern):
    """docs/usage.md's example: a prefix LM with its kernel mask described."""

    prefix: int

    def mask_mod(self, q_len, kv_len):
        self.check_lengths(q_len, kv_len)
        offset, prefix = kv_len - q_len, self.prefix
        return lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx + offset) | (kv_idx < prefix)

    def kernel_mask(self, q_len, kv_len):
        from foveate.patterns.kernel_mask import AnyOf, Band, Rect
        return AnyOf((Band(kv_len - q_len, None, 0), Rect(0, q_len, 0, self.prefix)))


NB2 = P.Neighborhood((16, 20), (5, 7))
NB2_TIME = P.Neighborhood((16, 20), (16, 20), causal=(True, False))

# (id, pattern, q_len, kv_len, kwargs of check, path)
CASES = [
    ("window|causal", P.SlidingWindow(50) | P.Causal(), 300, 300, dict(), "structured"),  # (one band)
    ("streaming-q200-kv333-gqa", (P.SlidingWindow(60) | P.Sinks(9)) & P.Causal(), 200, 333, dict(heads=(4, 2)),
     "composed"),
    ("nbhd2d&time-tiled", NB2 & NB2_TIME, 320, 320, dict(tile=(8, 16)), "composed"),
    ("nbhd2d&time-auto-tile", NB2 & NB2_TIME, 320, 320, dict(tile="auto", heads=(2, 2)), "composed"),
    ("nbhd2d|sinks-raster", NB2 | P.Sinks(5), 320, 320, dict(), "composed"),
    ("prefix-lm", P.Mask(_prefix_lm), 300, 300, dict(), "bitmask"),
    ("prefix-lm-subclass", PrefixLM(100), 300, 300, dict(heads=(2, 2)), "bitmask"),
    ("prefix-lm-described-q200-kv330", DescribedPrefixLM(150), 200, 330, dict(), "composed"),
    ("documents-mqa", P.Mask(_documents), 300, 300, dict(heads=(3, 1)), "bitmask"),
    ("checkerboard-q250-kv300", P.Mask(_checkerboard), 250, 300, dict(), "bitmask"),
    ("random-keys", P.Mask(_random_keys), 300, 300, dict(), "bitmask"),
    ("causal|mask", P.Causal() | P.Mask(lambda b, h, q, k: k % 50 == 0), 270, 300, dict(), "bitmask"),
]


@pytest.mark.parametrize("pattern,q_len,kv_len,kwargs,path", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_patterns_match_naive(spy, pattern, q_len, kv_len, kwargs, path):
    check(pattern, q_len, kv_len, path=path, spy=spy, **kwargs)


@pytest.mark.parametrize("pattern,q_len,kv_len,path,kwargs", [
    (P.Mask(_documents), 300, 300, "bitmask", dict()),
    ((P.SlidingWindow(60) | P.Sinks(9)) & P.Causal(), 200, 333, "composed", dict(heads=(4, 2))),
    (NB2 & NB2_TIME, 320, 320, "composed", dict(tile=(8, 16))),
], ids=["documents", "streaming", "nbhd2d&time-tiled"])
def test_float16(spy, pattern, q_len, kv_len, path, kwargs):
    check(pattern, q_len, kv_len, dtype=F16, path=path, spy=spy, **kwargs)


def test_per_batch_and_head_mask(spy):
    def staggered(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx - 40 * h - 70 * b) | (kv_idx == 0)

    check(P.Mask(staggered, batch=2, heads=4), 260, 260, batch=2, heads=(4, 2), path="bitmask", spy=spy)


def test_forced_bitmask_matches_the_structured_path(spy):
    """The same pattern both ways: a tiled canvas with padding and extra keys (raster-order
    tensors: the kernels address the raster rows) and a window; equal within float32 noise."""
    with foveate.policy.override(force_bitmask=True):
        check(Tiled(P.Neighborhood((10, 13), (3, 5), extra_kv=2), (8, 16)).base, 130, 132, tile=(8, 16),
              path="bitmask", spy=spy)
        check(P.SlidingWindow(40, 7), 300, 280, heads=(2, 2), path="bitmask", spy=spy)


# -- random compositions -----------------------------------------------------------------------------------


_LEAF_MASKS = {
    "even-keys": lambda b, h, q, k: k % 2 == 0,
    "near-diagonal": lambda b, h, q, k: (q - k).abs() < 20,
    "first-block": lambda b, h, q, k: k < 128,
}


@settings(max_examples=12, deadline=None)
@given(pattern_tree(3, 200, _LEAF_MASKS), st.integers(1, 300), st.integers(1, 300),
       st.sampled_from([(2, 1), (2, 2), (4, 2)]))
def test_random_compositions_match_naive(pattern, q_len, kv_len, heads):
    check(pattern, q_len, kv_len, heads=heads, dims=(8, 16))


# -- dispatch ---------------------------------------------------------------------------------------------


def _problem(pattern, n=300, device=DEVICE):
    return Problem(batch=1, heads_q=2, heads_kv=1, q_len=n, kv_len=n, head_dim=16, head_dim_v=16, dtype=F32,
                   device=device, requires_grad=False, return_lse=False, pattern=pattern)


@pytest.mark.parametrize("pattern", [P.SlidingWindow(9) | P.Causal(), P.Mask(_prefix_lm), PrefixLM(3)],
                         ids=["composition", "mask", "subclass"])
def test_triton_takes_every_pattern(pattern):
    assert reasons(_problem(pattern), auto=False)["triton"] is None


def test_the_bitmask_budget(rng):
    pattern = P.Mask(_prefix_lm)
    need = pattern.build(300, 300).bitmask_bytes()
    q = torch.randn(1, 2, 300, 16, generator=rng).to(DEVICE)
    with foveate.policy.override(bitmask_budget=need - 1):
        why = reasons(_problem(pattern), auto=False)["triton"]
        assert "foveate.policy.bitmask_budget" in why and "MiB" in why
        with pytest.raises(ValueError, match=r"backend='triton' cannot run this problem: .*bitmask_budget"):
            foveate.attention(q, q, q, pattern, backend="triton")
        if DEVICE.type == "cuda":  # auto runs another backend
            assert reasons(_problem(pattern))["triton"] == why
    with foveate.policy.override(bitmask_budget=need):
        assert reasons(_problem(pattern), auto=False)["triton"] is None


@pytest.mark.parametrize("pattern,tiled", [
    (P.Neighborhood((128, 128), 13) & P.Neighborhood((128, 128), (128, 65)), True),
    (P.Neighborhood((8, 32, 32), (3, 9, 9)) & P.Neighborhood((8, 32, 32), (8, 32, 32), causal=(True, False, False)),
     False),  # causal in time cuts raster rows, not 2-frame tiles: raster order wins
], ids=["2d-tiled", "3d-raster"])
def test_compositions_choose_the_tile_of_fewest_blocks(pattern, tiled):
    from foveate.simulator import choose_tile
    from foveate.tiling import candidate_tiles

    def visited(tile):
        target = pattern if tile is None else Tiled(pattern, tile)
        return target.build(*target.default_lengths()).num_visited()

    tile = choose_tile(pattern)
    assert (tile is not None) == tiled
    best = visited(tile)
    for candidate in [None, *candidate_tiles(pattern.canvas)]:
        assert best <= visited(candidate), candidate


def test_compositions_with_a_sequence_part_stay_in_raster_order():
    from foveate.simulator import choose_tile

    assert choose_tile(P.Neighborhood((16, 16), 5) & P.Causal()) is None
    with pytest.raises(ValueError, match=r"only canvas patterns .* can be tiled"):
        Tiled(P.Neighborhood((16, 16), 5) & P.Causal(), (8, 16))
    with pytest.raises(ValueError, match="cannot be tiled"):
        (P.Neighborhood((16, 16), 5) & P.Causal()).build(256, 256, tile=(8, 16))
