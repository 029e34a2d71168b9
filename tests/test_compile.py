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

import dataclasses

import pytest
import torch

import foveate
from foveate import patterns as P

from conftest import make_qkv
from kernel_spy import DEVICE, needs_triton

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
    pytest.param(P.Documents([100, 1, 150, 49]), (300,), None, id="documents"),  # (segment ids: a tensor operand)
    pytest.param(P.Segments([0] * 40 + [1] * 200 + [2] * 60, [["full", "none", "none"], ["full", "causal", "none"],
                                                             ["full", "full", "causal"]]), (300,), None, id="segments"),
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


@dataclasses.dataclass(frozen=True)
class _PrefixLM(P.Pattern):
    """A user's pattern with only a mask_mod (int fields: it traces; its bitmask is a constant)."""

    prefix: int

    def mask_mod(self, q_len, kv_len):
        prefix = self.prefix
        return lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) | (kv_idx < prefix)


@pytest.mark.parametrize("pattern,path", [((P.SlidingWindow(60) | P.Sinks(5)) & P.Causal(), "composed"),
                                          (_PrefixLM(70), "bitmask")], ids=["composed", "bitmask"])
def test_fullgraph_compositions_and_bitmasks_equal_eager(rng, pattern, path):
    from foveate.backends.triton.masks import mask_spec

    assert mask_spec(pattern, 300, 300).path == path
    q, k, v = _qkv(rng, (300,))
    d_out = torch.randn(q.shape, generator=rng).to(DEVICE)

    def call(q, k, v):
        return foveate.attention(q, k, v, pattern, backend="triton")

    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    for got, want in zip(_run(compiled, q, k, v, d_out), _run(call, q, k, v, d_out)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("pattern,q_shape,tile", CASES)
def test_torch_backend_compiles_forward_and_backward(rng, pattern, q_shape, tile):
    """The block-sparse ``torch`` backend (``auto`` on a CPU) traced into the graph, its lists
    constants of the graph: out and gradients equal the eager call's (which has its own
    backward; the traced one is differentiated by autograd)."""
    q, k, v = _qkv(rng, q_shape)
    d_out = torch.randn_like(q)

    def call(q, k, v):
        return foveate.attention(q, k, v, pattern, backend="torch", tile=tile)

    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    for got, want in zip(_run(compiled, q, k, v, d_out), _run(call, q, k, v, d_out)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


_CANVAS_INPUTS_FAIL = pytest.mark.xfail(
    strict=True, reason="torch 2.13: inductor's CPU FlexAttention lowering fails on a 4-D view of canvas-shaped "
                        "inputs ('too many values to unpack'); documented in docs/usage.md")


@pytest.mark.skipif(torch.cuda.is_available(), reason="inductor's CPU lowering of FlexAttention")
@pytest.mark.parametrize("canvas_shaped, tile", [
    (False, "auto"), (False, None),
    pytest.param(True, None, marks=_CANVAS_INPUTS_FAIL), pytest.param(True, "auto", marks=_CANVAS_INPUTS_FAIL),
], ids=["flat-tiled", "flat-raster", "canvas-raster", "canvas-tiled"])
def test_flex_on_cpu_compiles(rng, canvas_shaped, tile):
    """Inductor lowers FlexAttention on CPU for a canvas pattern given flat inputs, tiled or
    not; canvas-shaped inputs fail upstream, tiled or not (the tiling is not the trigger)."""
    pattern = P.Neighborhood((16, 16), 5)
    q, k, v = (t.detach() for t in _qkv(rng, (16, 16) if canvas_shaped else (256,), heads_q=2, heads_kv=2))
    compiled = torch.compile(lambda q, k, v: foveate.attention(q, k, v, pattern, backend="flex", tile=tile),
                             fullgraph=True)
    want = foveate.attention(q, k, v, pattern, backend="reference")
    torch.testing.assert_close(compiled(q, k, v), want, rtol=1e-4, atol=1e-5)


def test_fullgraph_with_backend_auto(rng):
    """The documented example, with the default backend: on CPU ``auto`` takes the ``torch``
    backend (on CUDA the triton kernels); choosing it logs nothing under dynamo (which traces
    no logging call) and the compiled call equals the eager one."""
    q, k, v = (t.detach() for t in _qkv(rng, (16, 24), heads_q=2, heads_kv=2))

    def call(q, k, v):
        return foveate.attention(q, k, v, P.Neighborhood((16, 24), 5))

    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), call(q, k, v), rtol=1e-5, atol=1e-6)


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


def test_patterns_made_inside_the_compiled_function(rng):
    """A pattern built inside the compiled code (here from Python ints, as a model's forward
    would) traces like one built outside it: forward and gradients bitwise equal to eager."""
    q, k, v = _qkv(rng, (16, 24))
    d_out = torch.randn(q.shape, generator=rng).to(DEVICE)

    def call(q, k, v, window=5):
        out = foveate.attention(q, k, v, P.Neighborhood((16, 24), (window, 7)), backend="triton", tile="auto")
        flat = [t.flatten(2, 3) for t in (q, k, v)]
        return out + foveate.attention(*flat, P.SlidingWindow(window * 10, 0), backend="triton").view_as(out)

    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    for got, want in zip(_run(compiled, q, k, v, d_out), _run(call, q, k, v, d_out)):
        assert torch.equal(got, want)


def _marked_constant_functions():
    """``(module, name)`` of every function in foveate that torch.compile runs when tracing
    (``assume_constant_result``)."""
    import importlib
    import pkgutil

    import torchvision_shim  # (the timm integration imports timm: beside a stand-in torchvision if need be)

    torchvision_shim.import_timm()
    found = []
    for info in pkgutil.walk_packages(foveate.__path__, "foveate."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if callable(value) and getattr(value, "_dynamo_marked_constant", False) and \
                    getattr(value, "__module__", None) == info.name:
                found.append((module, name))
    return found


def test_functions_run_when_tracing_get_python_constants_only(rng, monkeypatch):
    """What dynamo hands to an ``assume_constant_result`` function must be a Python constant
    to every supported torch: torch 2.11 refuses a pattern (a frozen dataclass) there, so
    patterns go as :func:`foveate.graph_constants.pattern_key` tuples. Every such function
    is wrapped to check its arguments while the triton and flex paths are traced."""
    from foveate.patterns import Pattern

    seen = []
    functions = _marked_constant_functions()
    assert len(functions) >= 5  # the tile, mask spec, plan, flex lists and field names
    for module, name in functions:
        original = getattr(module, name)

        def checked(*args, _original=original, _name=name, **kwargs):
            bad = [type(a).__name__ for a in (*args, *kwargs.values()) if isinstance(a, Pattern)]
            assert not bad, f"{_name} was given {bad}"
            seen.append(_name)
            return _original(*args, **kwargs)

        checked._dynamo_marked_constant = True
        monkeypatch.setattr(module, name, checked)

    q, k, v = (t.detach() for t in _qkv(rng, (16, 24), heads_q=2, heads_kv=2))
    for backend, pattern in (("triton", P.Neighborhood((16, 24), (5, 7))), ("flex", P.Neighborhood((16, 24), 5))):
        torch._dynamo.reset()
        call = lambda q, k, v, p=pattern, b=backend: foveate.attention(q, k, v, p, backend=b, tile="auto")  # noqa
        torch.testing.assert_close(torch.compile(call, fullgraph=True, backend="aot_eager")(q, k, v), call(q, k, v),
                                   rtol=1e-5, atol=1e-6)
    assert {"_traced_plan", "_traced_bitmask_reason", "_traced_choose_tile", "_traced_flex_lists"} <= set(seen)


def test_recompiles_for_patterns_with_other_ints(rng):
    """The same code with another window (the next layer of a model) recompiles, and dynamo
    then makes the pattern's changed ints symbolic: the graph specialises them again, each
    result equals the reference backend's."""
    q, k, v = (t.detach() for t in _qkv(rng, (256,)))
    for pattern in (P.SlidingWindow(100, 3), P.SlidingWindow(50, 7), P.Neighborhood((256,), 64),
                    P.Neighborhood((256,), 64, stride=16)):
        compiled = torch.compile(lambda q, k, v, p=pattern: foveate.attention(q, k, v, p, backend="triton"),
                                 fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(q, k, v), foveate.attention(q, k, v, pattern, backend="reference"),
                                   rtol=1e-4, atol=1e-5)


def test_the_operator_keeps_its_layout_view_for_the_same_tensors():
    """A compiled graph passes the same constant list tensors on every call: the operator's
    view of them (what the launchers remember on it) is made once; other tensors, or the same
    tensors with other facts, get their own."""
    from foveate.backends.triton import ops

    lists = [torch.zeros(1, 1, 2, dtype=torch.int32) for _ in range(8)]
    first = ops._layout(128, 128, *lists, full_runs=True, row_blocks=3.0)
    assert ops._layout(128, 128, *lists, full_runs=True, row_blocks=3.0) is first
    assert ops._layout(128, 128, *lists, full_runs=False, row_blocks=3.0) is not first
    other = [t.clone() for t in lists]
    view = ops._layout(128, 128, *other, full_runs=True, row_blocks=3.0)
    assert view is not first and view.kv_num_blocks is other[0]


def test_compiled_backward_knows_the_layouts_row_blocks(rng, monkeypatch):
    """The operator carries the cached layout's ``row_blocks`` to the backward, which then
    chooses its token order as the eager call does (here: the tiled order, the threshold
    lowered below this small layout's count; an unknown count would count 0)."""
    import foveate.backends.triton.bwd as bwd

    moved = []
    real = bwd._backward_in_tiled_order
    monkeypatch.setattr(bwd, "_backward_in_tiled_order", lambda *a: moved.append(1) or real(*a))
    q, k, v = _qkv(rng, (16, 24))
    d_out = torch.randn(q.shape, generator=rng).to(DEVICE)

    def call(q, k, v):
        return foveate.attention(q, k, v, P.Neighborhood((16, 24), (5, 7)), backend="triton", tile=(8, 16))

    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    with foveate.policy.override(tiled_order_min_row_blocks=0.5):
        for got, want in zip(_run(compiled, q, k, v, d_out), _run(call, q, k, v, d_out)):
            assert torch.equal(got, want)
    assert len(moved) == 2  # the compiled backward and the eager one
