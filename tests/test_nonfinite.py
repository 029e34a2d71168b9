"""A non-finite input reaches exactly the outputs whose allowed pairs carry it.

One NaN (or infinity) is placed in one row of q, k or v. On the PyTorch backends (``reference``
and ``torch``) the non-finite output rows must be exactly: the query's own row (q), or the
queries allowed to see that key (k, v); the gradients likewise stay finite for every row the
value cannot reach. The fused Triton kernels confine it to the blocks that visit it (a masked
pair inside a visited partial block multiplies 0 by the value: documented in docs/usage.md).
"""

from __future__ import annotations

import pytest
import torch

import foveate
from foveate import backends
from foveate import patterns as P

from naive import dense_mask

PATTERNS = [
    ("window", P.SlidingWindow(20), 300, 300),
    ("neighborhood", P.Neighborhood((16, 18), 5), 288, 288),
    ("causal-q>kv", P.Causal(), 310, 150),
    ("sinks+window", P.Sinks(4) | P.SlidingWindow(9, 3), 260, 260),
    ("prefix-lm", P.Mask(lambda b, h, q, k: (k <= q) | (k < 40)), 200, 200),
]
ROW = 57  # the row that carries the value (a partial block's key for every pattern here)


def _inputs(q_len, kv_len, which, value, dtype=torch.float64, requires_grad=False):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen, dtype=torch.float64).to(dtype)
               for n in (q_len, kv_len, kv_len))
    target = dict(q=q, k=k, v=v)[which]
    target[0, 1, ROW, 5] = value
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _exact_rows(q, k, v, pattern):
    """Head 1's rows that IEEE arithmetic makes non-finite when each query attends to its
    allowed keys only (row by row: no forbidden key is ever touched). An infinite key may
    leave a row finite (a score of -inf is a key with weight 0)."""
    mask = dense_mask(pattern, q.shape[2], k.shape[2])
    q, k, v = (t.detach()[0, 1] for t in (q, k, v))
    bad = []
    for i in range(q.shape[0]):
        keys = mask[i]
        p = torch.softmax((k[keys] @ q[i]) * q.shape[-1] ** -0.5, dim=0)
        bad.append(bool(keys.any()) and not bool(torch.isfinite(p @ v[keys]).all()))
    return torch.tensor(bad)


def _bad_rows(x):
    """Per token of head 1: whether its row has a non-finite element; head 0 must be clean."""
    assert torch.isfinite(x[0, 0]).all(), "a non-finite value crossed into another head"
    return ~torch.isfinite(x[0, 1]).all(-1)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("name, pattern, q_len, kv_len", PATTERNS, ids=[p[0] for p in PATTERNS])
def test_pytorch_backends_confine_it_to_the_rows_that_may_see_it(backend, value, which, name, pattern, q_len, kv_len):
    q, k, v = _inputs(q_len, kv_len, which, value, requires_grad=True)
    out = foveate.attention(q, k, v, pattern, backend=backend)
    expected = _exact_rows(q, k, v, pattern)
    assert not expected.all()  # (a query that sees no key stays 0, NaN or not)
    assert torch.equal(_bad_rows(out), expected)
    # Backward: a query that may not see the value keeps a finite gradient (its dq row).
    reach = torch.arange(q_len) == ROW if which == "q" else dense_mask(pattern, q_len, kv_len)[:, ROW]
    out.nan_to_num(0.0, 0.0, 0.0).sum().backward()
    assert not _bad_rows(q.grad)[~reach].any()


@pytest.mark.parametrize("which", ["k", "v"])
def test_triton_confines_it_to_the_blocks_that_visit_it(which):
    if "triton" not in backends.available():
        pytest.skip("Triton is not importable")
    pattern, n = P.SlidingWindow(20), 300
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = _inputs(n, n, which, float("nan"), dtype=torch.float32)
    out = foveate.attention(q.to(device), k.to(device), v.to(device), pattern, backend="triton").cpu()
    bad, exact = _bad_rows(out), _exact_rows(q, k, v, pattern)
    layout = backends.get("triton").layout(backends.Problem(
        batch=1, heads_q=2, heads_kv=2, q_len=n, kv_len=n, head_dim=16, head_dim_v=16, dtype=torch.float32,
        device=q.device, requires_grad=False, return_lse=False, pattern=pattern), torch.device("cpu"))
    visiting = layout.to_dense()[0, 0, :, ROW // layout.block_kv] > 0
    block_rows = visiting.repeat_interleave(layout.block_q)[:n]
    assert (bad >= exact).all() and (bad <= block_rows).all()
