"""``foveate.attention(..., backend="decode")``: a few queries against long keys through the
split-KV decode kernel (interpreter here; bf16 on CUDA), against the reference backend."""

from __future__ import annotations

import pytest
import torch

import foveate
from foveate import patterns as P
from foveate.backends import Problem, get, reasons
from foveate.score_mods import Softcap
from kernel_spy import needs_triton

PATTERNS = [P.Causal(), P.Dense(), P.SlidingWindow(37), (P.SlidingWindow(40) | P.Sinks(4)) & P.Causal(),
            P.SlidingWindow(10, 3)]


@needs_triton
@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
@pytest.mark.parametrize("q_len,hq,hkv,kv_len", [(1, 4, 4, 300), (3, 8, 2, 257), (16, 4, 1, 130)])
def test_decode_backend_equals_the_reference(pattern, q_len, hq, hkv, kv_len):
    gen = torch.Generator().manual_seed(q_len + kv_len)
    q = torch.randn(2, hq, q_len, 32, generator=gen)
    k, v = (torch.randn(2, hkv, kv_len, 32, generator=gen) for _ in range(2))
    want, want_lse = foveate.attention(q, k, v, pattern, backend="reference", return_lse=True)
    got, lse = foveate.attention(q, k, v, pattern, backend="decode", return_lse=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)


@needs_triton
def test_decode_backend_half_and_strided_inputs():
    """fp16, and keys that are a view (every other token of a longer tensor)."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 2, 64, generator=gen).half()
    k, v = (torch.randn(1, 2, 400, 64, generator=gen).half()[:, :, ::2] for _ in range(2))
    want = foveate.attention(q.float(), k.float(), v.float(), P.Causal(), backend="reference")
    got = foveate.attention(q, k, v, P.Causal(), backend="decode")
    assert got.dtype == torch.float16
    assert (got.float() - want).abs().max().item() < 2e-3


def _problem(**kw):
    base = dict(batch=1, heads_q=8, heads_kv=2, q_len=1, kv_len=4096, head_dim=128, head_dim_v=128,
                dtype=torch.float16, device=torch.device("cuda"), requires_grad=False, return_lse=False,
                pattern=P.Causal())
    base.update(kw)
    return Problem(**base)


@pytest.mark.parametrize("change,why", [
    (dict(requires_grad=True), "no gradients"),
    (dict(q_len=17), "1 to 16"),
    (dict(head_dim_v=64), "differ"),
    (dict(heads_q=64, heads_kv=1, q_len=8), "rows per kv head"),
    (dict(pattern=P.Neighborhood((64, 64), 7), q_len=1, kv_len=4096), "pattern"),
    (dict(pattern=P.ChunkCausal(64)), "pattern"),
    (dict(score_mod=Softcap(30.0)), "score"),
])
def test_decode_backend_says_why_it_declines(change, why):
    reason = get("decode").supports(_problem(**change))
    assert reason is not None and why in reason, reason


def test_auto_does_not_take_it_yet():
    why = reasons(_problem())
    assert "decode" in why and why["decode"] is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pattern", PATTERNS[:2] + PATTERNS[3:4], ids=repr)
def test_decode_backend_bf16_on_the_gpu(pattern):
    """bf16 on CUDA, the 2x rule: its error at most twice that of bf16 attention computed by the
    reference backend, both against float32."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(4, 32, 1, 128, device="cuda", generator=gen)
    k, v = (torch.randn(4, 8, 8192, 128, device="cuda", generator=gen) for _ in range(2))
    want = foveate.attention(q, k, v, pattern, backend="reference")
    b16 = [t.bfloat16() for t in (q, k, v)]
    got = foveate.attention(*b16, pattern, backend="decode").float()
    base = foveate.attention(*b16, pattern, backend="reference").float()
    assert (got - want).abs().max() <= 2 * (base - want).abs().max() + 1e-5
