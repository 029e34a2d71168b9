"""The hybrids of ``foveate.nn`` (#31): ``LinearAttention``, the per-head ``HybridAttention`` and
the per-layer ``hybrid_schedule`` / ``hybrid_stack``.

The oracle is written here from the documented definitions: the ``qkv`` outputs split in the
documented order (softmax heads' q, linear heads' q, then k, then v, then Based's window q and
k), the documented gate and decay formulas, the ``foveate.linear`` ops or their sequential
recurrences (``naive.py``, float64), textbook softmax attention over the pattern's dense mask,
and ``proj``. All on the CPU, in float64.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import foveate
import foveate.linear as L
from foveate import patterns as P
from foveate.linear.ops.based.naive import based_naive
from foveate.linear.ops.decayed.naive import decayed_naive
from foveate.linear.ops.gated_delta.naive import gated_delta_naive
from foveate.nn import (HybridAttention, HybridState, LinearAttention, SelfAttention, hybrid_schedule,
                        hybrid_stack)

from naive import dense_mask, naive_attention

F64 = torch.float64
TOL = dict(atol=1e-9, rtol=1e-9)
DIM, HEADS = 24, 4                 # head_dim 6
SCALE = (DIM // HEADS) ** -0.5
OPTIONS = {"decayed": {}, "gated_delta": {}, "based": dict(feature_dim=3, window=5)}


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=F64)


def seeded(module: nn.Module, gen) -> nn.Module:
    """``module`` in float64 with every parameter redrawn from ``gen`` (biases non-zero; learned
    decays' rates in ``[0.02, 0.5]``)."""
    module = module.double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("decay_log_rate"):
                p.copy_(torch.log(0.02 + 0.48 * torch.rand(p.shape, generator=gen, dtype=F64)))
            else:
                p.copy_(randn(gen, *p.shape) * 0.5)
    return module


# -- the oracle ---------------------------------------------------------------------------------


def split_qkv(x, params, sizes):
    """The first outputs of ``qkv(x)`` cut into ``(B, heads, N, dim)`` pieces of the ``(heads, dim)``
    in ``sizes``, in order."""
    y = F.linear(x, params["qkv.weight"], params.get("qkv.bias"))
    widths = [h * d for h, d in sizes]
    pieces = y[..., :sum(widths)].split(widths, dim=-1)
    return [t.reshape(*x.shape[:2], h, d).transpose(1, 2) for t, (h, d) in zip(pieces, sizes)]


def decays(params, heads):
    """``lambda_h``: learned (``exp(-exp(decay_log_rate))``) or Lightning Attention-2's default."""
    if "linear.decay_log_rate" in params:
        return torch.exp(-torch.exp(params["linear.decay_log_rate"]))
    return L.default_decay(heads).to(F64)


def gates(x, params):
    """Gated DeltaNet's ``alpha, beta`` ``(B, H, N)``: Mamba-2's parameterisation and a sigmoid."""
    a = F.linear(x, params["linear.a_proj.weight"])
    b = F.linear(x, params["linear.b_proj.weight"])
    log_alpha = -torch.exp(params["linear.A_log"]) * F.softplus(a + params["linear.dt_bias"])
    return torch.exp(log_alpha.clamp(min=-60.0)).transpose(1, 2), torch.sigmoid(b).transpose(1, 2)


def linear_heads(method, x, params, q, k, v, extra, *, heads, reference, causal=True, scale=SCALE, window=5):
    """The linear heads' outputs ``(B, heads, N, head_dim)`` by the op (``reference="op"``) or by
    its sequential recurrence (``"naive"``)."""
    naive = reference == "naive"
    if method == "decayed":
        lam = decays(params, heads)
        if naive:
            return decayed_naive(q, k, v, lam, causal=causal, scale=scale)[0]
        return L.decayed(q, k, v, lam, causal=causal, scale=scale, chunk_size=5)
    if method == "gated_delta":
        alpha, beta = gates(x, params)
        if naive:
            return gated_delta_naive(q, k, v, alpha, beta, scale=scale)[0]
        return L.gated_delta(q, k, v, alpha, beta, scale=scale, chunk_size=5)
    qw, kw = extra if extra else (None, None)
    if naive:
        return based_naive(q, k, v, window, q_window=qw, k_window=kw, window_scale=scale)[0]
    return L.based(q, k, v, window, q_window=qw, k_window=kw, window_scale=scale, chunk_size=5)


def expected_linear(method, x, params, *, heads, kv_heads, reference, causal=True, feature_dim=3, window=5):
    """:class:`LinearAttention` by hand: ``proj(linear(q, k, v))`` with ``qkv``'s documented layout."""
    d = DIM // HEADS
    dqk = feature_dim if method == "based" else d
    sizes = [(heads, dqk), (kv_heads, dqk), (kv_heads, d)]
    if method == "based" and window:
        sizes += [(heads, d), (kv_heads, d)]
    assert params["qkv.weight"].shape[0] == sum(h * d for h, d in sizes)
    q, k, v, *extra = split_qkv(x, params, sizes)
    out = linear_heads(method, x, params, q, k, v, extra, heads=heads, reference=reference, causal=causal,
                       window=window)
    return F.linear(out.transpose(1, 2).reshape(x.shape), params["proj.weight"], params["proj.bias"])


def expected_hybrid(method, x, params, pattern, *, softmax_heads, kv_heads, reference, feature_dim=3, window=5):
    """:class:`HybridAttention` by hand: ``(softmax heads' outputs, linear heads' outputs, y)``."""
    d = DIM // HEADS
    group = HEADS // kv_heads
    s, skv, hl, hlkv = softmax_heads, softmax_heads // group, HEADS - softmax_heads, kv_heads - softmax_heads // group
    dqk = feature_dim if method == "based" else d
    sizes = [(s, d), (hl, dqk), (skv, d), (hlkv, dqk), (skv, d), (hlkv, d)]
    if method == "based" and window:
        sizes += [(hl, d), (hlkv, d)]
    assert params["qkv.weight"].shape[0] == sum(h * d for h, d in sizes)
    qs, ql, ks, kl, vs, vl, *extra = split_qkv(x, params, sizes)
    n = x.shape[1]
    soft, _ = naive_attention(qs, ks, vs, dense_mask(pattern, n, n), scale=SCALE)
    lin = linear_heads(method, x, params, ql, kl, vl, extra, heads=hl, reference=reference, window=window)
    heads = torch.cat([soft, lin], 1).transpose(1, 2).reshape(x.shape)
    return soft, lin, F.linear(heads, params["proj.weight"], params["proj.bias"])


def check_grads(module, x, expected_fn, gen):
    """``module(x)`` against ``expected_fn(x, params)``: output and the gradients of ``x`` and of
    every parameter."""
    names = [name for name, _ in module.named_parameters()]
    xa = x.detach().clone().requires_grad_()
    out = module(xa)
    grad_out = randn(gen, *out.shape)
    grads = torch.autograd.grad((out * grad_out).sum(), [xa, *module.parameters()])
    leaves = {name: p.detach().clone().requires_grad_() for name, p in module.named_parameters()}
    xb = x.detach().clone().requires_grad_()
    ref = expected_fn(xb, leaves)
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), [xb, *leaves.values()])
    torch.testing.assert_close(out, ref, **TOL)
    for name, got, want in zip(["x", *names], grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL, msg=lambda m, name=name: f"d{name}: {m}")


# -- LinearAttention ----------------------------------------------------------------------------

LINEAR_CASES = {
    "decayed": dict(method="decayed"),
    "decayed-learned-gqa": dict(method="decayed", kv_heads=2, learn_decay=True),
    "decayed-noncausal": dict(method="decayed", causal=False),
    "gated_delta": dict(method="gated_delta"),
    "gated_delta-mqa": dict(method="gated_delta", kv_heads=1),
    "based": dict(method="based", feature_dim=3, window=5),
    "based-gqa-nowindow": dict(method="based", kv_heads=2, feature_dim=3, window=0),
}


def make_linear(case: dict, gen) -> LinearAttention:
    return seeded(LinearAttention(DIM, HEADS, chunk_size=5, **case), gen)


@pytest.mark.parametrize("reference", ["op", "naive"])
@pytest.mark.parametrize("case", LINEAR_CASES.values(), ids=LINEAR_CASES.keys())
def test_linear_attention_is_the_projections_around_the_op(rng, case, reference):
    """Forward and every gradient equal ``proj(op(q, k, v))`` from the documented ``qkv`` layout,
    with the op itself and with its sequential recurrence (odd length 23, chunks of 5)."""
    module = make_linear(case, rng)
    x = randn(rng, 2, 23, DIM)
    kv_heads = case.get("kv_heads", HEADS)
    method = case["method"]

    def expected(x, params):
        return expected_linear(method, x, params, heads=HEADS, kv_heads=kv_heads, reference=reference,
                               causal=case.get("causal", True), window=case.get("window", 5))

    check_grads(module, x, expected, rng)


def test_without_gqa_qkv_and_proj_are_self_attentions(rng):
    """decayed / gated_delta without GQA: ``qkv`` and ``proj`` have SelfAttention's keys, shapes
    and layout, so its weights load and give the same q, k, v per head."""
    sa = SelfAttention(DIM, HEADS, P.Causal())
    for method in ("decayed", "gated_delta"):
        la = LinearAttention(DIM, HEADS, method)
        missing, unexpected = la.load_state_dict(sa.state_dict(), strict=False)
        assert not unexpected and all(key.startswith("linear.") for key in missing)
        assert [k for k in la.state_dict() if not k.startswith("linear.")] == list(sa.state_dict())


# -- decoding -----------------------------------------------------------------------------------


def run_in_pieces(module, x, cuts, monkeypatch):
    """``module`` over ``x`` in pieces (the state carried); pieces of one token run the step,
    which is counted. Returns ``(outputs concatenated, the number of steps)``."""
    steps = []
    step = module.linear.step
    monkeypatch.setattr(module.linear, "step", lambda *a: steps.append(1) or step(*a))
    outs, state = [], None
    for start, stop in zip(cuts[:-1], cuts[1:]):
        out, state = module(x[:, start:stop], state, return_state=True)
        outs.append(out)
    return torch.cat(outs, 1), len(steps), state


DECODE_CASES = {name: case for name, case in LINEAR_CASES.items() if case.get("causal", True)}


@pytest.mark.parametrize("case", DECODE_CASES.values(), ids=DECODE_CASES.keys())
def test_linear_decoding_token_by_token_equals_the_prefill(rng, case, monkeypatch):
    """A prefill of 6 tokens, a chunk of 4 with the state, then 7 tokens one at a time (the
    op's step) equal one call on all 17; the final states agree."""
    module = make_linear(case, rng)
    x = randn(rng, 2, 17, DIM)
    full, full_state = module(x, return_state=True)
    pieces, steps, state = run_in_pieces(module, x, [0, 6, 10, *range(11, 18)], monkeypatch)
    assert steps == 7
    torch.testing.assert_close(pieces, full, **TOL)
    for got, want in zip(state if isinstance(state, tuple) else [state],
                         full_state if isinstance(full_state, tuple) else [full_state]):
        torch.testing.assert_close(got, want, **TOL)


# -- HybridAttention ----------------------------------------------------------------------------

HYBRID_CASES = {
    "decayed-window": dict(method="decayed", softmax_heads=1, pattern=P.SlidingWindow(3) & P.Causal()),
    "gated_delta-causal-gqa": dict(method="gated_delta", softmax_heads=2, kv_heads=2, pattern=P.Causal()),
    "gated_delta-window": dict(method="gated_delta", softmax_heads=3, pattern=P.SlidingWindow(4)),
    "based-window-gqa": dict(method="based", softmax_heads=2, kv_heads=2, pattern=P.SlidingWindow(3) & P.Causal(),
                             feature_dim=3, window=5),
}


def make_hybrid(case: dict, gen) -> HybridAttention:
    case = dict(case)
    module = HybridAttention(DIM, HEADS, case.pop("softmax_heads"), case.pop("pattern"), case.pop("method"),
                             chunk_size=5, **case)
    return seeded(module, gen)


@pytest.mark.parametrize("case", HYBRID_CASES.values(), ids=HYBRID_CASES.keys())
def test_hybrid_heads_are_softmax_then_linear(rng, case):
    """The first ``softmax_heads`` heads (channels ``0 .. S * head_dim`` of proj's input) equal
    foveate.attention and textbook softmax attention over the pattern on those heads; the other
    heads equal the linear op on theirs; y is proj of both, and every gradient matches."""
    module = make_hybrid(case, rng)
    x = randn(rng, 2, 19, DIM)
    kv_heads = case.get("kv_heads", HEADS)
    s, d = case["softmax_heads"], DIM // HEADS
    captured = []
    module.proj.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    y = module(x)
    params = dict(module.named_parameters())
    with torch.no_grad():
        soft, lin, y_ref = expected_hybrid(case["method"], x, params, case["pattern"], softmax_heads=s,
                                           kv_heads=kv_heads, reference="op")
        # the softmax heads' q, k, v: the first pieces of q, k and v in qkv's documented layout
        skv, dqk = s // (HEADS // kv_heads), 3 if case["method"] == "based" else d
        qs, _, ks, _, vs = split_qkv(x, params, [(s, d), (HEADS - s, dqk), (skv, d), (kv_heads - skv, dqk), (skv, d)])
        by_foveate = foveate.attention(qs, ks, vs, case["pattern"], scale=SCALE)
    heads = captured[0].detach().reshape(2, 19, HEADS, d).transpose(1, 2)
    torch.testing.assert_close(heads[:, :s], soft, **TOL)
    torch.testing.assert_close(heads[:, :s], by_foveate, **TOL)
    torch.testing.assert_close(heads[:, s:], lin, **TOL)
    torch.testing.assert_close(y, y_ref, **TOL)

    def expected(x, params):
        return expected_hybrid(case["method"], x, params, case["pattern"], softmax_heads=s, kv_heads=kv_heads,
                               reference="naive")[2]

    check_grads(module, x, expected, rng)


def test_a_softmax_layers_weights_load_into_a_hybrid(rng):
    """Without GQA a hybrid's ``qkv``/``proj`` are SelfAttention's: loaded from one, its softmax
    heads give that layer's heads' outputs exactly."""
    sa = seeded(SelfAttention(DIM, HEADS, P.Causal()), rng)
    hy = HybridAttention(DIM, HEADS, 2, P.Causal(), "gated_delta").double()
    missing, unexpected = hy.load_state_dict(sa.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("linear.") for key in missing)
    seen = {}
    sa.proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("sa", args[0]))
    hy.proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("hy", args[0]))
    x = randn(rng, 2, 11, DIM)
    sa(x), hy(x)
    torch.testing.assert_close(seen["hy"][..., :12], seen["sa"][..., :12], **TOL)


@pytest.mark.parametrize("case", HYBRID_CASES.values(), ids=HYBRID_CASES.keys())
def test_hybrid_decoding_token_by_token_equals_the_prefill(rng, case, monkeypatch):
    module = make_hybrid(case, rng)
    x = randn(rng, 2, 15, DIM)
    full = module(x)
    pieces, steps, state = run_in_pieces(module, x, [0, 5, 9, *range(10, 16)], monkeypatch)
    assert steps == 6
    assert isinstance(state, HybridState) and state.keys.shape[2] == 15
    torch.testing.assert_close(pieces, full, **TOL)


# -- gradients reach every parameter ------------------------------------------------------------

ALL_MODULES = {**{f"linear-{k}": ("linear", v) for k, v in LINEAR_CASES.items()},
               **{f"hybrid-{k}": ("hybrid", v) for k, v in HYBRID_CASES.items()}}


@pytest.mark.parametrize("kind, case", ALL_MODULES.values(), ids=ALL_MODULES.keys())
def test_gradients_reach_every_parameter(rng, kind, case):
    module = (make_linear if kind == "linear" else make_hybrid)(case, rng)
    module(randn(rng, 2, 13, DIM)).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_float32_runs_and_keeps_the_dtype(rng):
    """The default dtype: the gates and states in float32, the output in the input's dtype."""
    torch.manual_seed(0)
    for module in (LinearAttention(DIM, HEADS, "gated_delta", kv_heads=2),
                   HybridAttention(DIM, HEADS, 2, P.Causal(), "decayed", learn_decay=True)):
        x = torch.randn(2, 9, DIM)
        y, state = module(x, return_state=True)
        assert y.dtype == torch.float32 and y.shape == x.shape
        y1, _ = module(x[:, :1], state, return_state=True)
        assert y1.shape == (2, 1, DIM)


def test_saturated_gates_stay_positive():
    """A forget gate far past saturation (``A * softplus(...)`` in the thousands) is clamped at
    ``e^-60`` instead of underflowing to 0 in float32 (which the op would refuse)."""
    torch.manual_seed(0)
    module = LinearAttention(DIM, HEADS, "gated_delta")
    with torch.no_grad():
        module.linear.A_log.fill_(torch.log(torch.tensor(16.0)).item())
        module.linear.a_proj.weight.fill_(1.0)
    x = 100 * torch.ones(1, 7, DIM)
    alpha, _ = module.linear.gates(x)
    assert (alpha > 0).all() and torch.allclose(alpha, torch.tensor(-60.0).exp())
    assert torch.isfinite(module(x)).all()


# -- per-layer schedules ------------------------------------------------------------------------


def test_hybrid_schedule():
    assert hybrid_schedule(8) == ("linear", "linear", "linear", "softmax") * 2
    assert hybrid_schedule(5, "LLLS") == ("linear", "linear", "linear", "softmax", "linear")
    assert hybrid_schedule(8, "sLLl") == ("softmax", "linear", "linear", "linear") * 2     # InfiniteVL's order
    assert hybrid_schedule(7, "LLLSLLS").count("softmax") == 2                             # two in seven
    assert hybrid_schedule(3, "LH") == ("linear", "hybrid", "linear")


def test_hybrid_stack_builds_the_schedule():
    calls = []

    def factory(kind):
        def make(i):
            calls.append((kind, i))
            return LinearAttention(DIM, HEADS, "decayed") if kind == "linear" else \
                SelfAttention(DIM, HEADS, P.Causal()) if kind == "softmax" else \
                HybridAttention(DIM, HEADS, 2, P.Causal(), "decayed")
        return make

    stack = hybrid_stack(hybrid_schedule(6, "LLSH"), linear=factory("linear"), softmax=factory("softmax"),
                         hybrid=factory("hybrid"))
    assert isinstance(stack, nn.ModuleList)
    assert [type(m) for m in stack] == [LinearAttention, LinearAttention, SelfAttention, HybridAttention,
                                        LinearAttention, LinearAttention]
    assert calls == [("linear", 0), ("linear", 1), ("softmax", 2), ("hybrid", 3), ("linear", 4), ("linear", 5)]
    assert [type(m) for m in hybrid_stack("LS", linear=factory("linear"), softmax=factory("softmax"))] == \
        [LinearAttention, SelfAttention]


class Block(nn.Module):
    """A pre-norm residual block around a mixer, and an MLP."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.norm1, self.mixer, self.norm2 = nn.LayerNorm(DIM), mixer, nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x, state=None, return_state=False):
        if return_state:
            h, state = self.mixer(self.norm1(x), state, return_state=True)
        else:
            h = self.mixer(self.norm1(x))
        x = x + h
        x = x + self.mlp(self.norm2(x))
        return (x, state) if return_state else x


@pytest.mark.parametrize("cycle", ["LLLS", "SLLL"], ids=["minicpm-sala-style", "infinitevl-style"])
def test_a_four_layer_model_from_a_schedule_trains(rng, cycle):
    """A 4-layer model: linear layers (decayed for the MiniCPM-SALA-style, Gated DeltaNet for
    the InfiniteVL-style) and a softmax layer (block top-k / sliding window); forward, backward,
    a gradient on every parameter."""
    torch.manual_seed(0)
    method = "decayed" if cycle == "LLLS" else "gated_delta"
    sparse = P.BlockTopK(2, block=8, sink_blocks=1, local_blocks=1, causal=True) if cycle == "LLLS" \
        else P.SlidingWindow(7) & P.Causal()
    mixers = hybrid_stack(hybrid_schedule(4, cycle), linear=lambda i: LinearAttention(DIM, HEADS, method),
                          softmax=lambda i: SelfAttention(DIM, HEADS, sparse))
    model = nn.Sequential(*(Block(m) for m in mixers)).double()
    assert [type(b.mixer) for b in model] == [SelfAttention if c == "S" else LinearAttention for c in cycle]
    x = randn(rng, 2, 40, DIM)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_stack_of_linear_and_hybrid_layers_decodes(rng):
    """A 4-layer "LH" model decoded token by token (a state per layer) equals its prefill."""
    torch.manual_seed(0)
    mixers = hybrid_stack(hybrid_schedule(4, "LH"), linear=lambda i: LinearAttention(DIM, HEADS, "gated_delta"),
                          hybrid=lambda i: HybridAttention(DIM, HEADS, 2, P.SlidingWindow(3) & P.Causal(), "decayed"))
    model = nn.ModuleList(Block(m) for m in mixers).double()
    x = randn(rng, 1, 9, DIM)
    full = x
    for block in model:
        full = block(full)
    states, outs = [None] * 4, []
    for t in range(9):
        h = x[:, t:t + 1]
        for i, block in enumerate(model):
            h, states[i] = block(h, states[i], return_state=True)
        outs.append(h)
    torch.testing.assert_close(torch.cat(outs, 1), full, **TOL)


# -- bad arguments ------------------------------------------------------------------------------

BAD = {
    "heads-not-dividing-dim": (lambda: LinearAttention(DIM, 5, "decayed"), ValueError, "num_heads"),
    "unknown-method": (lambda: LinearAttention(DIM, HEADS, "mamba"), ValueError, "method"),
    "method-not-str": (lambda: LinearAttention(DIM, HEADS, 3), TypeError, "method"),
    "kv-heads-not-dividing": (lambda: LinearAttention(DIM, HEADS, "decayed", kv_heads=3), ValueError, "kv_heads"),
    "kv-heads-zero": (lambda: LinearAttention(DIM, HEADS, "decayed", kv_heads=0), ValueError, "kv_heads"),
    "noncausal-gated-delta": (lambda: LinearAttention(DIM, HEADS, "gated_delta", causal=False), ValueError,
                              "causal"),
    "causal-not-bool": (lambda: LinearAttention(DIM, HEADS, "decayed", causal="yes"), TypeError, "causal"),
    "window-of-another-method": (lambda: LinearAttention(DIM, HEADS, "gated_delta", window=8), ValueError, "window"),
    "feature-dim-of-another-method": (lambda: LinearAttention(DIM, HEADS, "decayed", feature_dim=4), ValueError,
                                      "feature_dim"),
    "decay-of-another-method": (lambda: LinearAttention(DIM, HEADS, "based", decay=0.9), ValueError, "decay"),
    "learn-decay-of-another-method": (lambda: LinearAttention(DIM, HEADS, "based", learn_decay=True), ValueError,
                                      "learn_decay"),
    "decay-per-head": (lambda: LinearAttention(DIM, HEADS, "decayed", decay=[0.9, 0.8]), ValueError, "decay"),
    "decay-range": (lambda: LinearAttention(DIM, HEADS, "decayed", decay=1.5), ValueError, "decay"),
    "learn-decay-not-bool": (lambda: LinearAttention(DIM, HEADS, "decayed", learn_decay=1), TypeError,
                             "learn_decay"),
    "feature-dim-zero": (lambda: LinearAttention(DIM, HEADS, "based", feature_dim=0), ValueError, "feature_dim"),
    "window-negative": (lambda: LinearAttention(DIM, HEADS, "based", window=-1), ValueError, "window"),
    "chunk-size-zero": (lambda: LinearAttention(DIM, HEADS, "decayed", chunk_size=0), ValueError, "chunk_size"),
    "softmax-heads-zero": (lambda: HybridAttention(DIM, HEADS, 0, P.Causal(), "decayed"), ValueError,
                           "softmax_heads"),
    "softmax-heads-all": (lambda: HybridAttention(DIM, HEADS, HEADS, P.Causal(), "decayed"), ValueError,
                          "softmax_heads"),
    "softmax-heads-float": (lambda: HybridAttention(DIM, HEADS, 1.5, P.Causal(), "decayed"), TypeError,
                            "softmax_heads"),
    "softmax-heads-straddle-a-group": (lambda: HybridAttention(DIM, HEADS, 1, P.Causal(), "decayed", kv_heads=2),
                                       ValueError, "softmax_heads"),
    "pattern-not-a-pattern": (lambda: HybridAttention(DIM, HEADS, 2, "causal", "decayed"), TypeError, "pattern"),
    "hybrid-unknown-method": (lambda: HybridAttention(DIM, HEADS, 2, P.Causal(), "softmax"), ValueError, "method"),
    "backend": (lambda: HybridAttention(DIM, HEADS, 2, P.Causal(), "decayed", backend="nope"), ValueError, "backend"),
    "layers-zero": (lambda: hybrid_schedule(0), ValueError, "layers"),
    "layers-float": (lambda: hybrid_schedule(4.0), TypeError, "layers"),
    "cycle-letter": (lambda: hybrid_schedule(4, "LLX"), ValueError, "cycle"),
    "cycle-empty": (lambda: hybrid_schedule(4, ""), ValueError, "cycle"),
    "cycle-not-str": (lambda: hybrid_schedule(4, 3), TypeError, "cycle"),
    "schedule-kind": (lambda: hybrid_stack(["linear", "dense"], linear=nn.Identity), ValueError, "schedule"),
    "schedule-missing-factory": (lambda: hybrid_stack("LS", linear=lambda i: nn.Identity()), ValueError,
                                 "softmax="),
    "factory-not-callable": (lambda: hybrid_stack("L", linear=3), TypeError, "linear"),
    "factory-returns-no-module": (lambda: hybrid_stack("L", linear=lambda i: 3), TypeError, "linear"),
}


@pytest.mark.parametrize("make, error, name", BAD.values(), ids=BAD.keys())
def test_bad_arguments_name_the_argument(make, error, name):
    with pytest.raises(error, match=re.escape(name)):
        make()


def test_bad_inputs_name_the_argument():
    module = LinearAttention(DIM, HEADS, "decayed")
    with pytest.raises(ValueError, match="embed_dim"):
        module(torch.randn(2, 5, DIM - 1))
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        module(torch.randn(2, 5, 1, DIM))
    with pytest.raises(TypeError, match="return_state"):
        module(torch.randn(2, 5, DIM), return_state=1)
    with pytest.raises(ValueError, match="causal=True"):
        LinearAttention(DIM, HEADS, "decayed", causal=False)(torch.randn(2, 5, DIM), return_state=True)
    with pytest.raises(ValueError, match="initial_state"):  # (the op checks the linear state)
        module(torch.randn(2, 5, DIM), torch.zeros(2, HEADS, 3, 3))
    hybrid = HybridAttention(DIM, HEADS, 2, P.Causal(), "decayed")
    x = torch.randn(2, 5, DIM)
    with pytest.raises(TypeError, match="state"):
        hybrid(x, torch.zeros(2, 2, 6, 6))
    _, state = hybrid(x, return_state=True)
    with pytest.raises(ValueError, match="state.keys"):
        hybrid(x, state._replace(keys=state.keys[:, :1]))
    with pytest.raises(TypeError, match="state.values"):
        hybrid(x, state._replace(values=state.values.double()))
