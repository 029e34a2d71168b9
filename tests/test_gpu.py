"""GPU checks (CUDA only): the flex backend forward and backward, raster and tiled order,
against the float32 reference, with the FlashAttention rule: the error of the low-precision
result is at most twice the error of the same computation done by PyTorch in that precision
(plus a small floor), for out, lse, dq, dk and dv separately.

Run on the device machine: ``python -m pytest tests/test_gpu.py -q``. On a machine without
CUDA the whole module is skipped (the CPU paths are covered by the other test files).
"""

from __future__ import annotations

import pytest
import torch

import foveate
from foveate import patterns as P

from naive import dense_mask, mask_from_mod

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _prefix_lm(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) | (kv_idx < 300)


_DOC_IDS = torch.repeat_interleave(torch.arange(5), torch.tensor([700, 13, 900, 1, 434]))  # 2048 tokens


def _documents(b, h, q_idx, kv_idx):
    docs = _DOC_IDS.to(q_idx.device)
    return (docs[q_idx] == docs[kv_idx]) & (kv_idx <= q_idx)


_PACKED = P.Documents([700, 13, 900, 1, 434])  # the same documents, as a pattern (segment ids on the kernels)
_PACKED_PER_BATCH = P.Documents([[700, 13, 900, 1, 434], [1, 2047]], inner=P.SlidingWindow(300))
_BLOCK_RANK = P.Segments(torch.repeat_interleave(torch.arange(6), torch.tensor([100, 500, 300, 1, 600, 547])),
                         [["causal" if (b == 0 or b == a or a == 5) else "none" for b in range(6)] for a in range(6)])

_VIDEO = (P.Neighborhood((8, 24, 20), (3, 7, 5)) & P.Neighborhood((8, 24, 20), (8, 24, 20), causal=(True, False, False)))

CASES = [
    pytest.param(P.Causal(), 1000, 1300, 8, 2, 64, None, id="causal-gqa-ragged"),
    pytest.param(P.SlidingWindow(255, 64), 2048, 2048, 4, 4, 128, None, id="sliding"),
    pytest.param(P.Neighborhood((48, 40), (13, 9), dilation=(2, 1)), None, None, 4, 2, 64, None, id="2d-raster"),
    pytest.param(P.Neighborhood((48, 40), (13, 9), stride=(2, 3)), None, None, 4, 2, 64, (16, 8), id="2d-tiled"),
    pytest.param(P.Neighborhood((8, 24, 20), (3, 7, 5), causal=(True, False, False), extra_kv=77),
                 None, None, 2, 1, 128, "auto", id="3d-auto-extra"),
    pytest.param(P.Neighborhood((8, 8), 3) | P.Causal(), None, None, 2, 2, 64, None, id="union"),
]


def _inputs(pattern, q_len, kv_len, hq, hkv, dim):
    """Lengths (the canvas's when None), the generator, and random float32 q, k, v on CUDA."""
    if q_len is None:
        q_len, kv_len = pattern.default_lengths()
    gen = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda h, n: torch.randn(2, h, n, dim, device="cuda", generator=gen)  # noqa: E731
    return q_len, kv_len, gen, (mk(hq, q_len), mk(hkv, kv_len), mk(hkv, kv_len))


def _attend(q, k, v, pattern, **kw):
    out, lse = foveate.attention(q, k, v, pattern, return_lse=True, **kw)
    return out, lse


def _grads(q, k, v, pattern, d_out, **kw):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, lse = _attend(q, k, v, pattern, **kw)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), d_out)
    return out, lse, dq, dk, dv


TRAINING = [pytest.param("flex", *case.values, id=f"flex-{case.id}") for case in CASES] + [
    pytest.param("triton", *case.values, id=f"triton-{case.id}") for case in CASES] + [
    # every path of the kernels' masks: composed predicates, and bitmasks evaluated from mask_mod
    pytest.param("triton", (P.SlidingWindow(200) | P.Sinks(16)) & P.Causal(), 2000, 2000, 8, 2, 128, None,
                 id="triton-composed-streaming-gqa"),
    pytest.param("triton", _VIDEO, None, None, 4, 2, 64, "auto", id="triton-composed-3d-tiled"),
    pytest.param("triton", P.Mask(_prefix_lm), 1500, 1500, 4, 4, 128, None, id="triton-bitmask-prefix-lm"),
    pytest.param("triton", P.Mask(_documents), 2048, 2048, 4, 1, 64, None, id="triton-bitmask-documents-mqa"),
    pytest.param("triton", _PACKED, 2048, 2048, 4, 1, 64, None, id="triton-documents-mqa"),
    pytest.param("triton", _PACKED_PER_BATCH, 2048, 2048, 4, 2, 128, None, id="triton-documents-per-batch-window"),
    pytest.param("triton", _BLOCK_RANK, 2048, 2048, 4, 2, 128, None, id="triton-segments-block-rank"),
    # Global text beside a canvas: kernel mask + rectangles (text last), bitmask (text first)
    pytest.param("triton", P.WithText(P.Neighborhood((8, 24, 20), (3, 7, 5)), 77), None, None, 4, 2, 128, None,
                 id="triton-with-text-last"),
    pytest.param("triton", P.WithText(P.Neighborhood((8, 24, 20), (3, 7, 5)), 226, first=True), None, None, 4, 2,
                 128, None, id="triton-with-text-first"),
    # Radial attention: the FRAMES kernel mask, and the paper's block rule (whole 128 blocks)
    pytest.param("triton", P.Radial(9, 450, model="wan"), None, None, 4, 2, 128, None, id="triton-radial-wan"),
    pytest.param("triton", P.WithText(P.Radial(8, 500, model="hunyuan", block_rule=True), 100), None, None, 4, 2, 128,
                 None, id="triton-radial-block-rule-text"),
    pytest.param("triton", None, 4096, 4096, 4, 4, 128, None, id="triton-dense-d128"),
    pytest.param("triton", P.Causal(), 2000, 2000, 8, 2, 256, None, id="triton-causal-gqa-d256"),
    pytest.param("triton", P.Neighborhood((64, 64), (13, 13)), None, None, 4, 4, 80, "auto", id="triton-2d-d80"),
    # Content-selected: selected once from the float32 inputs, then run as that static selection.
    pytest.param("triton", P.BlockTopK(4, causal=True), 3000, 3000, 8, 2, 128, None, id="triton-topk-causal-gqa"),
    pytest.param("triton", P.XAttention(causal=False), 2048, 2048, 4, 4, 64, None, id="triton-xattention"),
    pytest.param("triton", P.MoBA(block=512, topk=2), 1800, 2300, 4, 1, 128, None, id="triton-moba-mqa"),
    pytest.param("flex", P.BlockTopK(4, causal=True), 3000, 3000, 8, 2, 128, None, id="flex-topk-causal-gqa"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend,pattern,q_len,kv_len,hq,hkv,dim,tile", TRAINING)
def test_training_matches_reference(backend, pattern, q_len, kv_len, hq, hkv, dim, tile, dtype):
    """Forward and backward (out, lse, dq, dk, dv) of the flex and triton backends."""
    q_len, kv_len, gen, (q, k, v) = _inputs(pattern, q_len, kv_len, hq, hkv, dim)
    d_out = torch.randn(2, hq, q_len, dim, device="cuda", generator=gen)
    if pattern is not None and pattern.content_dependent:
        pattern = pattern.select(q, k)  # the same blocks in every precision

    ref = _grads(q, k, v, pattern, d_out, backend="reference")  # float32: the truth
    low = [t.to(dtype) for t in (q, k, v)]
    torch_low = _grads(*low, pattern, d_out.to(dtype), backend="reference", tile=None)
    # The reference computes in float32 even for low-precision inputs; PyTorch's own
    # low-precision error comes from dense SDPA with the same mask instead.
    if isinstance(pattern, P.SelectedBlocks):
        mask = pattern.dense_mask()
    else:
        mask = dense_mask(pattern, q_len, kv_len, device="cuda") if pattern is not None else None
    sdpa_q, sdpa_k, sdpa_v = (t.detach().requires_grad_() for t in low)
    sdpa_out = torch.nn.functional.scaled_dot_product_attention(
        sdpa_q, sdpa_k, sdpa_v, attn_mask=mask, enable_gqa=hq != hkv)
    sdpa = [sdpa_out.nan_to_num(0.0), *torch.autograd.grad(sdpa_out, (sdpa_q, sdpa_k, sdpa_v), d_out.to(dtype))]
    got = _grads(*low, pattern, d_out.to(dtype), backend=backend, tile=tile)

    names = ["out", "lse", "dq", "dk", "dv"]
    rows = torch.isfinite(ref[1])
    for name, r, g in zip(names, ref, got):
        assert g.dtype == (torch.float32 if name == "lse" else dtype), name
        if name == "lse":
            assert torch.equal(torch.isinf(g), ~rows), "lse must be -inf exactly on empty rows"
            err = (g[rows] - r[rows]).abs().max().item()
            base = (torch_low[1][rows] - r[rows]).abs().max().item()
        else:
            err = (g.float() - r).abs().max().item()
            idx = {"out": 0, "dq": 1, "dk": 2, "dv": 3}[name]
            base = (sdpa[idx].float().nan_to_num(0.0) - r).abs().max().item()
        assert err <= 2 * base + 1e-3, f"{name}: error {err:.3g} vs PyTorch's {base:.3g}"


@pytest.mark.parametrize("pattern", [P.BlockTopK(6, causal=True), P.XAttention(causal=True),
                                     P.BlockTopP(0.8, score="mean")], ids=repr)
def test_content_selection_end_to_end_bf16(pattern):
    """attention() with a content-selected pattern equals attention() on ``pattern.select(q, k)``
    of the same bf16 inputs, bitwise, forward and backward; the selection is per head."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    q, k, v = (torch.randn(1, 8, 4096, 128, device="cuda", generator=gen, dtype=torch.bfloat16).requires_grad_()
               for _ in range(3))
    selection = pattern.select(q, k)
    assert selection.selected.shape == (1, 8, 32, 32)
    assert not all(torch.equal(selection.selected[0, 0], selection.selected[0, h]) for h in range(1, 8))
    d_out = torch.randn_like(q)
    results = []
    for p in (pattern, selection):
        out = foveate.attention(q, k, v, p, backend="triton")
        results.append([out, *torch.autograd.grad(out, (q, k, v), d_out)])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_triton_backward_deterministic_and_blocks():
    """Two backward passes are bitwise equal (GQA 8:2, a P.Blocks layout per head)."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    mask = torch.rand(1, 8, 16, 16, device="cuda", generator=gen) < 0.3
    pattern = P.Blocks(mask)
    q = torch.randn(1, 8, 2048, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(1, 2, 2048, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    d_out = torch.randn_like(q)
    runs = [_grads(q, k, v, pattern, d_out, backend="triton") for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    ref = _grads(q.float(), k.float(), v.float(), pattern, d_out.float(), backend="reference")
    for name, r, g in zip(["out", "lse", "dq", "dk", "dv"], ref, runs[0]):
        rows = torch.isfinite(ref[1]) if name in ("out", "lse", "dq") else slice(None)
        err = (g.float()[rows] - r[rows]).abs().max().item()
        assert err < 0.05 * max(1.0, r[rows].abs().max().item()), f"{name}: {err}"


def test_flex_tiled_equals_raster_bitwise_close():
    pattern = P.Neighborhood((64, 64), (9, 9))
    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(1, 2, 4096, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    raster = foveate.attention(q, k, v, pattern, backend="flex", tile=None)
    tiled = foveate.attention(q, k, v, pattern, backend="flex", tile=(8, 16))
    assert (raster.float() - tiled.float()).abs().max().item() < 2e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("pattern,q_len,kv_len,hq,hkv,dim,tile", CASES[:5] + [
    pytest.param(None, 4096, 4096, 4, 4, 128, None, id="dense"),
    pytest.param(P.Causal(), 4096, 4096, 8, 1, 128, None, id="causal-mqa"),
    pytest.param(P.Neighborhood((64, 64), (13, 13)), None, None, 4, 4, 256, "auto", id="2d-d256"),
    pytest.param(P.Neighborhood((64, 64), (13, 13)), None, None, 4, 4, 80, "auto", id="2d-d80"),
])
def test_triton_forward_matches_reference(pattern, q_len, kv_len, hq, hkv, dim, tile, dtype):
    """The Triton forward kernel: out and lse against the float32 reference, 2x PyTorch's error."""
    q_len, kv_len, gen, (q, k, v) = _inputs(pattern, q_len, kv_len, hq, hkv, dim)
    ref_out, ref_lse = _attend(q, k, v, pattern, backend="reference")
    low = [t.to(dtype) for t in (q, k, v)]
    out, lse = _attend(*low, pattern, backend="triton", tile=tile)
    assert out.dtype == dtype and lse.dtype == torch.float32
    if isinstance(pattern, P.SelectedBlocks):
        mask = pattern.dense_mask()
    else:
        mask = dense_mask(pattern, q_len, kv_len, device="cuda") if pattern is not None else None
    sdpa = torch.nn.functional.scaled_dot_product_attention(*low, attn_mask=mask, enable_gqa=hq != hkv)
    rows = torch.isfinite(ref_lse)
    assert torch.equal(torch.isinf(lse), ~rows)
    base = (sdpa.float() - ref_out).abs().max().item()
    err = (out.float() - ref_out).abs().max().item()
    assert err <= 2 * base + 1e-3, f"out: error {err:.3g} vs PyTorch's {base:.3g}"
    low_ref_lse = _attend(*low, pattern, backend="reference")[1]
    lse_base = (low_ref_lse[rows] - ref_lse[rows]).abs().max().item()
    lse_err = (lse[rows] - ref_lse[rows]).abs().max().item()
    assert lse_err <= 2 * lse_base + 1e-3, f"lse: error {lse_err:.3g} vs {lse_base:.3g}"


@pytest.mark.parametrize("pattern", [P.Causal(), P.SlidingWindow(255, 0), P.Neighborhood((32, 32), 7),
                                     P.Blocks(torch.eye(8, dtype=torch.bool)[None, None]), P.Causal() | P.Sinks(4),
                                     P.Mask(_prefix_lm)], ids=repr)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_auto_picks_triton_on_cuda(pattern, requires_grad):
    """On CUDA, `auto` runs the Triton kernels for every pattern, inference and training alike
    (compositions and mask_mod-only patterns too)."""
    from foveate.backends import Problem, select

    n = 1024
    problem = Problem(batch=1, heads_q=2, heads_kv=2, q_len=n, kv_len=n, head_dim=64, head_dim_v=64,
                      dtype=torch.bfloat16, device=torch.device("cuda"), requires_grad=requires_grad,
                      return_lse=False, pattern=pattern)
    assert select(problem).name == "triton"


@pytest.mark.parametrize("pattern", [P.Causal(), P.Neighborhood((64, 64), (13, 13))], ids=repr)
def test_concurrent_dq_gives_the_same_gradients(pattern, monkeypatch):
    """The dq kernel on a second stream (``foveate.policy.concurrent_dq``): bitwise the gradients of one
    stream, read on the caller's stream with no synchronisation of the test's own."""
    from foveate.backends.triton import bwd

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, d_out = (torch.randn(2, 4, 4096, 64, device="cuda", generator=gen, dtype=torch.bfloat16)
                      for _ in range(4))
    side_calls = []
    side_stream = bwd._side_stream
    monkeypatch.setattr(bwd, "_side_stream", lambda device: side_calls.append(device) or side_stream(device))
    grads = {}
    for concurrent in (False, True):
        with foveate.policy.override(concurrent_dq=concurrent, concurrent_min_programs=0):
            grads[concurrent] = _grads(q, k, v, pattern, d_out, backend="triton")[2:]
    assert len(side_calls) == 1, "the second stream ran the dq kernel once (concurrent=True only)"
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))


@pytest.mark.parametrize("pattern,tile", [
    (P.Neighborhood((30, 48, 40), (18, 24, 24), stride=(16, 8, 8)), (2, 8, 8)),  # long rows: the default
    (P.Neighborhood((50, 40), (13, 9), stride=(2, 3), extra_kv=77), (16, 8)),  # padded, extra keys
], ids=["3d-strided", "2d-padded-extra"])
def test_tiled_order_backward_gives_the_same_gradients(pattern, tile):
    """The backward of a raster-order tiled canvas on copies in the tiled order
    (``foveate.policy.tiled_order_backward``, forced for any row length) against the one that reads the
    raster rows in place: bitwise the same gradients, bf16."""

    q_len, kv_len = pattern.default_lengths()
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, d_out = (torch.randn(1, 4, q_len, 128, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(1, 2, kv_len, 128, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(2))
    grads = {}
    for tiled_order in (False, True):
        with foveate.policy.override(tiled_order_backward=tiled_order, tiled_order_min_row_blocks=0):
            grads[tiled_order] = _grads(q, k, v, pattern, d_out, backend="triton", tile=tile)[2:]
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))


def test_bench_gpu_timing_agrees_with_eager_on_a_gpu_bound_case():
    """``foveate bench``'s GPU timing (calls replayed as a CUDA graph, each after a clear of
    the L2 cache, the clears' own time taken off) against eager timing on a case whose calls
    are bound by the GPU (16 heads, 32K tokens: 1.2 ms forward, 5 ms forward+backward; at 8K
    an eager forward+backward is bound by the host): the same records; for our kernels, GPU times
    within 0.85-1.1 of the eager ones (cuDNN's forward runs slower in graphs); the time that
    counts is the lower of the two."""
    from foveate.benchmark.runner import run_cases
    from foveate.benchmark.suites import Case

    case = Case("window-32k", P.SlidingWindow(2047), 16, 128, 32768)
    by = {}
    for timing in ("eager", "gpu"):
        records = run_cases([case], ["triton"], dtype=torch.bfloat16, device=torch.device("cuda"), backward=True,
                            reps=1, rep_ms=50, timing=timing)
        assert {r["timing"] for r in records} == {timing} and {r["status"] for r in records} == {"ok"}
        by[timing] = {(r["backend"], r["direction"]): r for r in records}
    assert by["eager"].keys() == by["gpu"].keys() and len(by["gpu"]) == 4
    for key, rec in by["gpu"].items():
        assert by["eager"][key]["graph_ms"] is None
        assert rec["ms"] == min(rec["eager_ms"], rec["graph_ms"])
        if key[0] == "triton":
            eager = by["eager"][key]["ms"]
            assert 0.85 * eager <= rec["graph_ms"] <= 1.1 * eager, (key, eager, rec["graph_ms"])


def test_gpu_ms_takes_the_cache_clears_off():
    """A graph of cache clears alone measures about nothing once the clears are taken off,
    and a kernel's GPU time does not depend on how many calls the graph holds."""
    from foveate.benchmark.timing import gpu_ms

    assert abs(gpu_ms(lambda: None, calls=4)) < 0.005
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    one, four = gpu_ms(lambda: x @ x, calls=1), gpu_ms(lambda: x @ x, calls=4)
    assert 0.9 < one / four < 1.1, (one, four)


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


_BLOCKS_WITH_EMPTY_ROW = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.3
_BLOCKS_WITH_EMPTY_ROW[0, 0, 3] = False


@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("pattern,batch,hq,hkv,q_len,kv_len,dim,block,bnhd", [
    pytest.param(None, 2, 2, 2, 1024, 1024, 128, 128, False, id="dense"),
    pytest.param(P.Causal(), 1, 2, 2, 1000, 1000, 128, 128, False, id="causal-ragged"),
    pytest.param(P.Causal(), 1, 2, 2, 512, 2048, 128, 128, False, id="causal-bottom-right"),
    pytest.param(P.SlidingWindow(300, 200), 1, 2, 2, 2048, 2048, 128, 128, False, id="sliding"),
    pytest.param(P.Neighborhood((4096,), 1025, stride=128), 1, 2, 2, 4096, 4096, 128, 128, False, id="1d-strided"),
    pytest.param(P.Neighborhood((3000,), 301, dilation=2, causal=True), 1, 1, 1, 3000, 3000, 128, 128, False,
                 id="1d-dilated-causal-ragged"),
    pytest.param(P.Neighborhood((64, 64), 13), 1, 2, 2, 4096, 4096, 128, 128, False, id="2d-raster"),
    pytest.param(P.Blocks(_BLOCKS_WITH_EMPTY_ROW), 2, 3, 3, 2048, 2048, 128, 128, False, id="blocks-empty-row"),
    pytest.param(P.Causal(), 1, 8, 2, 2048, 2048, 128, 128, False, id="causal-gqa"),
    pytest.param(P.SlidingWindow(511, 511), 1, 4, 4, 2048, 2048, 64, 128, False, id="sliding-d64"),
    pytest.param(P.Causal(), 2, 4, 4, 2048, 2048, 128, 128, True, id="causal-bnhd-strided"),
    pytest.param(P.SlidingWindow(700, 300), 1, 2, 2, 2048, 2048, 128, 256, False, id="layout-blocks-256"),
    pytest.param((P.SlidingWindow(300) | P.Sinks(40)) & P.Causal(), 1, 4, 2, 2000, 2000, 128, 128, False,
                 id="composed-streaming"),
    pytest.param(P.Neighborhood((64, 64), 13) & P.Neighborhood((64, 64), (64, 64), causal=(True, False)), 1, 2, 2,
                 4096, 4096, 64, 128, False, id="composed-2d-raster"),
    pytest.param(P.Mask(_prefix_lm), 1, 4, 2, 1500, 1500, 128, 128, False, id="bitmask-prefix-lm-ragged"),
    pytest.param(P.Mask(_documents), 2, 2, 2, 2048, 2048, 64, 128, False, id="bitmask-documents"),
    pytest.param(_PACKED, 2, 2, 2, 2048, 2048, 64, 128, False, id="documents-segment-ids"),
    pytest.param(_PACKED_PER_BATCH, 2, 4, 2, 2048, 2048, 128, 128, False, id="documents-per-batch"),
    pytest.param(_BLOCK_RANK, 1, 2, 2, 2048, 2048, 128, 128, False, id="segments-table"),
])
def test_hopper_forward_matches_reference(pattern, batch, hq, hkv, q_len, kv_len, dim, block, bnhd, dtype):
    """The warp-specialized Hopper forward (``fwd_hopper``): out and lse against the float32
    reference with the FlashAttention rule, -inf and 0 exactly on empty rows."""
    from foveate.backends.base import cached_layout
    from foveate.backends.reference import reference_attention
    from foveate.backends.triton import fwd_hopper
    from foveate.backends.triton.fwd import attention_forward
    from foveate.backends.triton.masks import mask_spec
    from foveate.backends.triton.masks.lower import mask_ids

    pattern = pattern or P.Dense()
    gen = torch.Generator(device="cuda").manual_seed(0)

    def make(heads, n):
        if bnhd:  # (B, N, H, D) memory, seen as (B, H, N, D): strided, no copy
            return torch.randn(batch, n, heads, dim, device="cuda", generator=gen).transpose(1, 2)
        return torch.randn(batch, heads, n, dim, device="cuda", generator=gen)

    q, k, v = make(hq, q_len), make(hkv, kv_len), make(hkv, kv_len)
    low = [t.to(dtype) for t in (q, k, v)]  # (keeps the strides: BNHD memory stays BNHD)
    layout = cached_layout(pattern, q_len, kv_len, block_q=block, block_kv=block, device=q.device)
    spec = mask_spec(pattern, q_len, kv_len)
    if spec.uses_ids:  # (set by the backend on its calls)
        layout.token_ids = mask_ids(pattern, q_len, kv_len, q.device)
    assert fwd_hopper.hopper_reason(*low, layout, spec) is None
    scale = dim ** -0.5
    out, lse = attention_forward(*low, layout, spec, scale, kernel="hopper")
    ref_out, ref_lse = reference_attention(q, k, v, pattern.mask_mod(q_len, kv_len), scale)
    mask = mask_from_mod(pattern.mask_mod(q_len, kv_len), batch, hq, q_len, kv_len).cuda()
    sdpa = torch.nn.functional.scaled_dot_product_attention(*low, attn_mask=mask, scale=scale,
                                                            enable_gqa=hq != hkv).float().nan_to_num(0.0)
    rows = torch.isfinite(ref_lse)
    assert torch.equal(torch.isinf(lse), ~rows) and bool((out[~rows] == 0).all())
    base = (sdpa - ref_out).abs().max().item()
    err = (out.float() - ref_out).abs().max().item()
    assert err <= 2 * base + 1e-3, f"out: error {err:.3g} vs PyTorch's {base:.3g}"
    # lse: the reference's own error when computed (in float32) from the rounded inputs
    low_ref_lse = reference_attention(*(t.float() for t in low), pattern.mask_mod(q_len, kv_len), scale)[1]
    lse_base = (low_ref_lse[rows] - ref_lse[rows]).abs().max().item()
    lse_err = (lse[rows] - ref_lse[rows]).abs().max().item()
    assert lse_err <= 2 * lse_base + 1e-3, f"lse: error {lse_err:.3g} vs {lse_base:.3g}"


@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU")
def test_auto_runs_the_hopper_forward_where_it_can(monkeypatch):
    """``attention()`` on a Hopper GPU: the Hopper forward for bf16/fp16 in position order, the
    portable one for float32 and for tiled canvases on raster tensors."""
    from foveate.backends.triton import fwd_hopper

    calls = []
    real = fwd_hopper.attention_forward_hopper
    monkeypatch.setattr(fwd_hopper, "attention_forward_hopper", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4096, 128, device="cuda", generator=gen) for _ in range(3))
    low = [t.to(torch.bfloat16) for t in (q, k, v)]
    foveate.attention(*low, P.Causal(), backend="triton")
    assert len(calls) == 1
    foveate.attention(q, k, v, P.Causal(), backend="triton")  # float32
    foveate.attention(*low, P.Neighborhood((64, 64), 13), backend="triton", tile=(8, 16))
    assert len(calls) == 1


@pytest.mark.parametrize("pattern,tile", [(P.SlidingWindow(300, 100), None),
                                          (P.Neighborhood((32, 48), (9, 13), extra_kv=5), (8, 16))],
                         ids=["window", "2d-tiled-extra"])
def test_forced_bitmask_equals_the_structured_path(pattern, tile):
    """The same pattern from the bitmask (``policy.force_bitmask``) and from its kernel mask
    description: bf16, forward and backward, bitwise equal on the portable kernels (the same
    blocks in the same order, and the masks agree exactly)."""

    n = 2048 if pattern.canvas is None else None
    q_len, kv_len, gen, (q, k, v) = _inputs(pattern, n, n, 4, 2, 128)
    low = [t.to(torch.bfloat16) for t in (q, k, v)]
    d_out = torch.randn(2, 4, q_len, 128, device="cuda", generator=gen, dtype=torch.bfloat16)
    with foveate.policy.override(hopper_forward=False):  # both on the portable kernels: bitwise
        structured = _grads(*low, pattern, d_out, backend="triton", tile=tile)
        with foveate.policy.override(force_bitmask=True):
            forced = _grads(*low, pattern, d_out, backend="triton", tile=tile)
    for name, a, b in zip(["out", "lse", "dq", "dk", "dv"], structured, forced):
        assert torch.equal(a, b), name


def _score_mod(name, hq):
    from foveate import score_mods as S

    rates = torch.linspace(0.001, 0.05, hq, device="cuda").requires_grad_()
    bias = (0.5 * torch.randn(1, hq, 2048, 2048, device="cuda")).requires_grad_()
    return {"softcap": S.Softcap(20.0), "alibi": S.ALiBi(),
            "decay-softcap": S.DistanceDecay(rates) + S.Softcap(10.0),
            "dense-bias": S.DenseBias(bias)}[name]


@pytest.mark.parametrize("mod_name", ["softcap", "alibi", "decay-softcap", "dense-bias"])
@pytest.mark.parametrize("pattern,q_len,kv_len,hq,hkv", [
    pytest.param(P.Causal(), 2048, 2048, 8, 2, id="causal-gqa"),
    pytest.param(P.SlidingWindow(255, 64), 2048, 2048, 4, 4, id="sliding"),
])
def test_score_mods_on_the_kernels_match_reference(mod_name, pattern, q_len, kv_len, hq, hkv):
    """Softcap, ALiBi, a learnable 1-D decay and a learnable dense bias on the Triton kernels in
    bf16: out, lse, dq, dk, dv within twice FlexAttention's error (the same score_mod, bf16) of
    the float32 reference, and the rates' and the bias's gradients within 2% of the reference's."""
    mod = _score_mod(mod_name, hq)
    rates = [t for t in mod.parameters() if t.requires_grad]
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, hq, q_len, 128, device="cuda", generator=gen)
    k, v = (torch.randn(1, hkv, kv_len, 128, device="cuda", generator=gen) for _ in range(2))
    d_out = torch.randn(1, hq, q_len, 128, device="cuda", generator=gen)

    def run(backend, dtype, with_rates):
        leaves = [t.to(dtype).detach().requires_grad_() for t in (q, k, v)]
        score_mod = mod
        if backend == "flex" and mod_name == "dense-bias":
            # Flex's backward with the bias's own gradient asks for more shared memory than an
            # H100 has (256 KiB); its error on out, lse, dq, dk, dv is the same without it.
            from foveate import score_mods as S
            score_mod = S.DenseBias(mod.bias.detach())
        out, lse = foveate.attention(*leaves, pattern, score_mod=score_mod, backend=backend, return_lse=True)
        wrt = leaves + (rates if with_rates else [])
        grads = torch.autograd.grad(out, wrt, d_out.to(dtype))
        return [out, lse, *grads]

    ref = run("reference", torch.float32, True)
    got = run("triton", torch.bfloat16, True)
    flex = run("flex", torch.bfloat16, False)
    for i, name in enumerate(["out", "lse", "dq", "dk", "dv"]):
        err = (got[i].float() - ref[i]).abs().max().item()
        base = (flex[i].float() - ref[i]).abs().max().item()
        assert err <= 2 * base + 1e-3, f"{name}: error {err:.3g} vs FlexAttention's {base:.3g}"
    for g, r in zip(got[5:], ref[5:]):
        assert (g.float() - r).abs().max().item() <= 0.02 * r.abs().max().item() + 1e-3, "a tensor's gradient"


# -- foveate.nn on the kernels --------------------------------------------------------------------


@pytest.mark.parametrize("pattern,extra,first", [
    pytest.param(P.SlidingWindow(255), 16, False, id="window-text-last-merged"),
    pytest.param(P.Neighborhood((24, 32), (7, 9)), 77, True, id="2d-text-first-extra-kv"),
])
def test_joint_attention_on_the_kernels(pattern, extra, first):
    """``joint_attention`` in bf16 on the Triton kernels, forward and backward, against the
    float32 reference backend: the merged route (two calls joined by their lse: the kernels'
    gradient into lse) and the one-call route (``extra_kv``), within twice the error of the
    same computation on the reference backend in bf16 (plus a floor)."""
    from foveate.nn import joint_attention

    n = (pattern.default_lengths() or (2048 - extra,))[0] + extra
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, d_out = (torch.randn(2, 4, n, 64, device="cuda", generator=gen) for _ in range(4))

    def run(backend, dtype):
        leaves = [t.to(dtype).detach().requires_grad_() for t in (q, k, v)]
        out = joint_attention(*leaves, pattern, extra=extra, extra_first=first, backend=backend)
        return [out, *torch.autograd.grad(out, leaves, d_out.to(dtype))]

    ref = run("reference", torch.float32)
    low = run("reference", torch.bfloat16)
    got = run("triton", torch.bfloat16)
    for name, r, lo, g in zip(["out", "dq", "dk", "dv"], ref, low, got):
        base = (lo.float() - r).abs().max().item()
        err = (g.float() - r).abs().max().item()
        assert err <= 2 * base + 1e-2, f"{name}: error {err:.3g} vs the reference's bf16 {base:.3g}"


def test_natten_module_on_the_kernels():
    """``NeighborhoodAttention3D`` on CUDA in bf16 (auto: the kernels) against the same module on
    the float32 reference backend, forward and the gradients of its parameters."""
    from foveate.nn import NeighborhoodAttention3D

    torch.manual_seed(0)
    fast = NeighborhoodAttention3D(128, 4, kernel_size=(3, 7, 7), dilation=(1, 2, 1)).cuda()
    slow = NeighborhoodAttention3D(128, 4, kernel_size=(3, 7, 7), dilation=(1, 2, 1), backend="reference").cuda()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 6, 20, 16, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = fast(x)
    y.float().square().mean().backward()
    slow(x).square().mean().backward()
    ref = slow(x).detach()
    assert (y.float() - ref).abs().max().item() <= 0.05 * ref.abs().max().item()
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        assert (a.grad - b.grad).abs().max().item() <= 0.05 * b.grad.abs().max().item() + 1e-4, name
