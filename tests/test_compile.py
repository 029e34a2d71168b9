"""``torch.compile`` through ``foveate.attention`` on the triton backend (and the flex one).

A static pattern's layout, mask spec and tile are computed when the graph is traced and held
by it as constants; the kernels run inside one custom operator (forward and backward), so a
function calling ``attention`` compiles with ``fullgraph=True``. A new sequence length traces a
new graph. Content-selected patterns run eagerly (a graph break). Without a GPU the operator
runs the kernels in Triton's interpreter; ``aot_eager`` keeps the compile time small (dynamo and
AOTAutograd are what is tested), one forward goes through inductor. The flex backend's
BlockMask tensors are graph constants in the same way (forward: no FlexAttention backward on
CPU).
"""

from __future__ import annotations

import pytest
import torch

import foveate
from foveate import patterns as P

from conftest import make_qkv
from test_triton_fwd import DEVICE, needs_triton

pytestmark = [needs_triton, pytest.mark.filterwarnings(
    "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _qkv(rng, q_shape, heads_q=4, heads_kv=2):
    return tuple(t.to(DEVICE).requires_grad_() for t in make_qkv(
        rng, batch=1, heads_q=heads_q, heads_kv=heads_kv, q_shape=q_shape, head_dim=16, dtype=torch.float32))


def _run(fn, q, k, v, d_out):
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), d_out))


CASES = [
    pytest.param(P.Causal(), (300,), None, id="causal-gqa-ragged"),
    pytest.param(P.SlidingWindow(100, 30), (256,), None, id="sliding"),
    pytest.param(P.Neighborhood((16, 24), (5, 7)), (16, 24), "auto", id="2d-tiled"),
    pytest.param(P.Blocks(torch.tensor([[True, False, True], [False, True, True], [True, True, False]])), (300,),
                 None, id="blocks"),
]


@pytest.mark.parametrize("pattern,q_shape,tile", CASES)
def test_fullgraph_forward_and_backward_equal_eager(rng, pattern, q_shape, tile):
    """The compiled call runs the same kernels on the same layout: out, dq, dk, dv bitwise
    equal to the eager call."""
    q, k, v = _qkv(rng, q_shape)
    d_out = torch.randn(q.shape, generator=rng).to(DEVICE)

    def call(q, k, v):
        return foveate.attention(q, k, v, pattern, backend="triton", tile=tile)

    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    for got, want in zip(_run(compiled, q, k, v, d_out), _run(call, q, k, v, d_out)):
        assert torch.equal(got, want)


def test_each_new_length_gets_its_own_layout(rng):
    """Lengths 256, 384 and 200 through one compiled function (the second makes dynamo
    treat the length as symbolic; the layout's length is specialised again): each result
    equals the reference backend's."""
    compiled = torch.compile(lambda q, k, v: foveate.attention(q, k, v, P.Causal(), backend="triton"),
                             fullgraph=True, backend="aot_eager")
    for n in (256, 384, 200):
        q, k, v = (t.detach() for t in _qkv(rng, (n,)))
        want = foveate.attention(q, k, v, P.Causal(), backend="reference")
        torch.testing.assert_close(compiled(q, k, v), want, rtol=1e-4, atol=1e-5)


def test_return_lse_under_compile(rng):
    q, k, v = (t.detach() for t in _qkv(rng, (200,)))
    pattern = P.SlidingWindow(64, 0)

    def call(q, k, v):
        return foveate.attention(q, k, v, pattern, backend="triton", return_lse=True)

    got = torch.compile(call, fullgraph=True, backend="aot_eager")(q, k, v)
    for a, b in zip(got, call(q, k, v)):
        assert torch.equal(a, b)


def test_content_selected_pattern_runs_eagerly_inside_a_compiled_function(rng):
    """The selection cannot be traced: the call is a graph break, and its result is the eager
    call's (the operations around it stay compiled)."""
    q, k, v = (t.detach() for t in _qkv(rng, (384,)))
    pattern = P.BlockTopK(2)

    def call(q, k, v):
        return foveate.attention(q * 2, k, v, pattern, backend="triton") + 1

    got = torch.compile(call, backend="aot_eager")(q, k, v)
    assert torch.equal(got, call(q, k, v))


def test_inductor_forward(rng):
    q, k, v = (t.detach() for t in _qkv(rng, (256,)))
    call = lambda q, k, v: foveate.attention(q, k, v, P.Causal(), backend="triton") * 2  # noqa: E731
    torch.testing.assert_close(torch.compile(call, fullgraph=True)(q, k, v), call(q, k, v), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pattern,n", [
    pytest.param(P.Neighborhood((16, 16), 5) | P.Causal(), 256, id="union"),
    pytest.param(P.Neighborhood((16, 24), (5, 7)), 384, id="2d"),
])
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_flex_backend_under_compile(rng, pattern, n, compiler):
    """Patterns that only flex runs (compositions) compile too: the layout's BlockMask tensors
    are graph constants, FlexAttention is traced into the caller's graph (forward: FlexAttention
    has no CPU backward). Flat inputs: canvas-shaped ones stop inductor's FlexAttention
    lowering on CPU (torch 2.13; see docs/usage.md)."""
    q, k, v = (t.detach() for t in _qkv(rng, (n,), heads_q=2, heads_kv=2))

    def call(q, k, v):
        return foveate.attention(q, k, v, pattern, backend="flex", tile=None)

    got = torch.compile(call, fullgraph=True, backend=compiler)(q, k, v)
    torch.testing.assert_close(got, foveate.attention(q, k, v, pattern, backend="reference"), rtol=1e-4, atol=1e-5)
