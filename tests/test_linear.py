"""Linear attention (``foveate.linear``): every op's chunked form against its sequential
recurrence (``naive.py``) in float64, outputs, final states and the gradients of every input
(gates and initial states included); states carried across calls; the one-token steps; GQA;
the definitions themselves (closed forms, dense masks); bad input. All on the CPU."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import foveate
import foveate.linear as L
from foveate import patterns as P
from foveate.linear.ops.based.feature_map import taylor
from foveate.linear.ops.based.naive import based_naive
from foveate.linear.ops.decayed.naive import decayed_naive
from foveate.linear.ops.gated_delta.naive import gated_delta_naive
from foveate.linear.ops.gated_delta.triangular import unit_lower_inverse

F64 = torch.float64
TOL = dict(rtol=1e-9, atol=1e-9)


def _randn(gen, *shape, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)


def _uniform(gen, low, high, *shape):
    return low + (high - low) * torch.rand(*shape, generator=gen, dtype=F64)


# -- the three ops, described once ------------------------------------------------------------


@dataclass
class Op:
    """One method: its chunked op, step and naive recurrence (all called with keywords), how to
    draw its inputs, and which inputs have a token axis (axis 2)."""

    chunked: Callable
    step: Callable
    naive: Callable
    draw: Callable  # (gen, batch, heads_q, heads_kv, length) -> {name: tensor}
    per_token: tuple[str, ...]
    options: dict = field(default_factory=dict)


def _draw_decayed(gen, batch, heads_q, heads_kv, length):
    return dict(q=_randn(gen, batch, heads_q, length, 6), k=_randn(gen, batch, heads_kv, length, 6),
                v=_randn(gen, batch, heads_kv, length, 5), decay=_uniform(gen, 0.6, 1.0, heads_q))


def _draw_based(gen, batch, heads_q, heads_kv, length):
    return dict(q=_randn(gen, batch, heads_q, length, 3), k=_randn(gen, batch, heads_kv, length, 3),
                v=_randn(gen, batch, heads_kv, length, 5),
                q_window=_randn(gen, batch, heads_q, length, 4), k_window=_randn(gen, batch, heads_kv, length, 4))


def _draw_gated_delta(gen, batch, heads_q, heads_kv, length):
    return dict(q=_randn(gen, batch, heads_q, length, 6), k=_randn(gen, batch, heads_kv, length, 6),
                v=_randn(gen, batch, heads_kv, length, 5), alpha=_uniform(gen, 0.3, 1.0, batch, heads_q, length),
                beta=_uniform(gen, 0.0, 1.0, batch, heads_q, length))


OPS = {
    "decayed": Op(L.decayed, L.decayed_step, decayed_naive, _draw_decayed, ("q", "k", "v")),
    "based": Op(L.based, L.based_step, based_naive, _draw_based, ("q", "k", "v", "q_window", "k_window"),
                {"window": 5}),
    "gated_delta": Op(L.gated_delta, L.gated_delta_step, gated_delta_naive, _draw_gated_delta,
                      ("q", "k", "v", "alpha", "beta")),
}


def _span(op, inputs, start, stop):
    return {name: t.narrow(2, start, stop - start) if name in op.per_token else t for name, t in inputs.items()}


def _token(op, inputs, t):
    return {name: x[:, :, t] if name in op.per_token else x for name, x in inputs.items()}


def _tensors(state):
    """A state's tensors: a tensor, or a BasedState's fields that are set."""
    return (state,) if isinstance(state, torch.Tensor) else tuple(t for t in state if t is not None)


def _leaf_state(state):
    leaves = [t.detach().clone().requires_grad_() for t in _tensors(state)]
    return leaves[0] if isinstance(state, torch.Tensor) else type(state)(*leaves)


def _prefix_state(op, gen, batch, heads_q, heads_kv, length=6):
    """A state reached by the naive recurrence on a random prefix: a realistic initial state."""
    _, state = op.naive(**_draw_op(op, gen, batch, heads_q, heads_kv, length), **op.options)
    return _leaf_state(state)


def _draw_op(op, gen, batch, heads_q, heads_kv, length, grad=False):
    inputs = op.draw(gen, batch, heads_q, heads_kv, length)
    return {name: t.requires_grad_(grad) for name, t in inputs.items()}


def _assert_states(got, want, **tol):
    assert type(got) is type(want) or isinstance(got, torch.Tensor)
    for a, b in zip(_tensors(got), _tensors(want), strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), **(tol or TOL))


# -- chunked against the recurrence -----------------------------------------------------------


@pytest.mark.parametrize("heads", [(2, 2), (4, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("chunk", [1, 16, 64])
@pytest.mark.parametrize("length", [37, 48])
@pytest.mark.parametrize("name", sorted(OPS))
def test_chunked_matches_naive(name, length, chunk, heads, rng):
    """Outputs, final states and every gradient (q, k, v, gates, initial state) equal the
    naive recurrence's; lengths with and without a shorter last chunk, chunks of 1 and
    chunks longer than the sequence."""
    op = OPS[name]
    inputs = _draw_op(op, rng, 2, *heads, length, grad=True)
    state = _prefix_state(op, rng, 2, *heads)
    out, final = op.chunked(**inputs, **op.options, chunk_size=chunk, initial_state=state, return_state=True)
    want, want_final = op.naive(**inputs, **op.options, initial_state=state)
    torch.testing.assert_close(out, want, **TOL)
    _assert_states(final, want_final)
    leaves = (*inputs.values(), *_tensors(state))
    d_out = _randn(rng, *out.shape)
    d_final = [_randn(rng, *t.shape) for t in _tensors(final)]

    def loss(o, s):  # through the output and the float tensors of the final state
        return (o * d_out).sum() + sum((t * d).sum() for t, d in zip(_tensors(s), d_final))

    got = torch.autograd.grad(loss(out, final), leaves, allow_unused=True)
    ref = torch.autograd.grad(loss(want, want_final), leaves, allow_unused=True)
    names = [*inputs, *("state." + str(i) for i in range(len(leaves) - len(inputs)))]
    for label, a, b in zip(names, got, ref):
        assert (a is None) == (b is None), label
        if a is not None:
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, label=label: f"d{label}: {m}")


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("split", [3, 20])
def test_state_carried_across_calls(name, split, rng):
    """Two calls (the second from the first's state) equal one call over both, outputs and
    final state; splits shorter and longer than the window and the chunk."""
    op = OPS[name]
    inputs = _draw_op(op, rng, 2, 4, 2, 37)
    whole, whole_state = op.chunked(**inputs, **op.options, chunk_size=8, return_state=True)
    first, state = op.chunked(**_span(op, inputs, 0, split), **op.options, chunk_size=8, return_state=True)
    second, state = op.chunked(**_span(op, inputs, split, 37), **op.options, chunk_size=8, initial_state=state,
                               return_state=True)
    torch.testing.assert_close(torch.cat([first, second], 2), whole, rtol=1e-12, atol=1e-12)
    _assert_states(state, whole_state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPS))
def test_step_matches_chunked(name, rng):
    """The one-token step, token by token from the same initial state, equals the chunked form."""
    op = OPS[name]
    inputs = _draw_op(op, rng, 2, 4, 2, 23)
    state = _prefix_state(op, rng, 2, 4, 2)
    whole, whole_state = op.chunked(**inputs, **op.options, chunk_size=8, initial_state=state, return_state=True)
    outs = []
    for t in range(23):
        o, state = op.step(**_token(op, inputs, t), **op.options, state=state)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 2), whole, **TOL)
    _assert_states(state, whole_state)


@pytest.mark.parametrize("name", sorted(OPS))
def test_step_from_nothing(name, rng):
    """``state=None`` starts a sequence: the first step equals the chunked op on one token."""
    op = OPS[name]
    inputs = _draw_op(op, rng, 1, 2, 1, 1)
    out, _ = op.step(**_token(op, inputs, 0), **op.options)
    torch.testing.assert_close(out, op.chunked(**inputs, **op.options)[:, :, 0], **TOL)


@pytest.mark.parametrize("name", sorted(OPS))
def test_empty_sequence(name, rng):
    op = OPS[name]
    state = _prefix_state(op, rng, 2, 2, 1)
    inputs = _draw_op(op, rng, 2, 2, 1, 0)
    out, final = op.chunked(**inputs, **op.options, initial_state=state, return_state=True)
    assert out.shape == (2, 2, 0, 5)
    _assert_states(final, state)


@pytest.mark.parametrize("name", sorted(OPS))
def test_low_precision(name, rng):
    """bfloat16 inputs: a bfloat16 output near the float64 recurrence's, a float32 state."""
    op = OPS[name]
    inputs = _draw_op(op, rng, 1, 2, 1, 40)
    low = {n: t.to(torch.bfloat16) if n in ("q", "k", "v", "q_window", "k_window") else t.float()
           for n, t in inputs.items()}
    out, state = op.chunked(**low, **op.options, chunk_size=16, return_state=True)
    assert out.dtype == torch.bfloat16 and _tensors(state)[0].dtype == torch.float32
    want, _ = op.naive(**{n: t.to(F64) for n, t in low.items()}, **op.options)
    assert (out.double() - want).abs().max() <= 0.02 * want.abs().max()


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(sorted(OPS)), batch=st.integers(1, 2), heads_kv=st.integers(1, 2),
       group=st.integers(1, 3), length=st.integers(1, 30), chunk=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_random_shapes(name, batch, heads_kv, group, length, chunk, seed):
    op = OPS[name]
    inputs = _draw_op(op, torch.Generator().manual_seed(seed), batch, heads_kv * group, heads_kv, length)
    out = op.chunked(**inputs, **op.options, chunk_size=chunk)
    torch.testing.assert_close(out, op.naive(**inputs, **op.options)[0], **TOL)


# -- decayed ----------------------------------------------------------------------------------


def _closed_form(q, k, v, decay, scale, causal=True):
    """``o_t = scale sum_s lambda^|t - s| (q_t . k_s) v_s`` over ``s <= t`` (or every ``s``), by
    three loops: the definition, for the recurrence to be checked against."""
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for t in range(q.shape[2]):
                for s in range(q.shape[2] if not causal else t + 1):
                    out[b, h, t] += decay[h] ** abs(t - s) * scale * (q[b, h, t] @ k[b, h, s]) * v[b, h, s]
    return out


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_decayed_naive_is_the_definition(causal, rng):
    q, k, v = _randn(rng, 1, 2, 9, 3), _randn(rng, 1, 2, 9, 3), _randn(rng, 1, 2, 9, 2)
    decay = torch.tensor([0.5, 0.9], dtype=F64)
    out, _ = decayed_naive(q, k, v, decay, scale=0.7, causal=causal)
    torch.testing.assert_close(out, _closed_form(q, k, v, decay, 0.7, causal), **TOL)


@pytest.mark.parametrize("chunk", [1, 16, 64])
def test_decayed_bidirectional_matches_naive(chunk, rng):
    op = OPS["decayed"]
    inputs = _draw_op(op, rng, 2, 4, 2, 37, grad=True)
    out = L.decayed(**inputs, causal=False, chunk_size=chunk)
    want, _ = decayed_naive(**inputs, causal=False)
    torch.testing.assert_close(out, want, **TOL)
    d_out = _randn(rng, *out.shape)
    for a, b in zip(torch.autograd.grad(out, list(inputs.values()), d_out),
                    torch.autograd.grad(want, list(inputs.values()), d_out)):
        torch.testing.assert_close(a, b, **TOL)


def test_decayed_without_decay_is_linear_attention(rng):
    q, k, v = _randn(rng, 2, 2, 21, 4), _randn(rng, 2, 2, 21, 4), _randn(rng, 2, 2, 21, 3)
    scores = q @ k.transpose(-1, -2) / 2
    torch.testing.assert_close(L.decayed(q, k, v, 1.0, causal=False, chunk_size=8), scores @ v, **TOL)
    torch.testing.assert_close(L.decayed(q, k, v, 1.0, chunk_size=8), scores.tril() @ v, **TOL)


def test_default_decays():
    lightning = L.default_decay(8)
    assert lightning.dtype == torch.float32
    torch.testing.assert_close(lightning, torch.exp(-(2.0 ** -torch.arange(1.0, 9.0))))
    torch.testing.assert_close(L.default_decay(4, "retnet"), torch.tensor([1 - 2.0 ** -5, 1 - 2.0 ** -6,
                                                                           1 - 2.0 ** -7, 1 - 2.0 ** -8]))
    torch.testing.assert_close(L.default_decay(6), torch.exp(-foveate.score_mods.alibi_slopes(6)))


def test_decay_forms_agree(rng):
    """``None`` is :func:`default_decay` of the query heads; a number is every head's."""
    q, k, v = _randn(rng, 1, 4, 10, 3), _randn(rng, 1, 2, 10, 3), _randn(rng, 1, 2, 10, 3)
    torch.testing.assert_close(L.decayed(q, k, v), L.decayed(q, k, v, L.default_decay(4)), **TOL)
    torch.testing.assert_close(L.decayed(q, k, v, 0.8), L.decayed(q, k, v, [0.8] * 4), **TOL)


# -- based ------------------------------------------------------------------------------------


def test_taylor_feature_map(rng):
    a, b = _randn(rng, 7, 5), _randn(rng, 7, 5)
    x = (a * b).sum(-1)
    assert taylor(a).shape == (7, 1 + 5 + 25)
    torch.testing.assert_close((taylor(a) * taylor(b)).sum(-1), 1 + x + x * x / 2, **TOL)


@pytest.mark.parametrize("own_qk", [False, True], ids=["window-reads-q-k", "window-qk"])
@pytest.mark.parametrize("window", [1, 6, 50])
def test_based_is_its_two_branches(window, own_qk, rng):
    """``based`` = the Taylor-kernel attention, normalised (dense, from ``1 + x + x^2 / 2``)
    + softmax over the last ``window`` keys (a dense band mask)."""
    q, k, v = _randn(rng, 2, 4, 29, 4), _randn(rng, 2, 2, 29, 4), _randn(rng, 2, 2, 29, 3)
    qw, kw = (_randn(rng, 2, 4, 29, 6), _randn(rng, 2, 2, 29, 6)) if own_qk else (q, k)
    extra = dict(q_window=qw, k_window=kw) if own_qk else {}
    ke, ve, kwe = (t.repeat_interleave(2, 1) for t in (k, v, kw))
    i, j = torch.arange(29)[:, None], torch.arange(29)[None, :]
    x = q @ ke.transpose(-1, -2) * 0.5
    kernel = torch.where(j <= i, 1 + x + x * x / 2, 0)
    linear = kernel @ ve / kernel.sum(-1, keepdim=True)
    scores = (qw @ kwe.transpose(-1, -2) * qw.shape[-1] ** -0.5).masked_fill((j > i) | (j < i - window + 1), -math.inf)
    windowed = scores.softmax(-1) @ ve
    torch.testing.assert_close(L.based(q, k, v, window, **extra, chunk_size=8), linear + windowed, **TOL)
    torch.testing.assert_close(L.based(q, k, v, 0, chunk_size=8), linear, **TOL)
    # The window branch is foveate.attention with SlidingWindow(window - 1).
    torch.testing.assert_close(windowed, foveate.attention(qw, kw, v, P.SlidingWindow(window - 1)), **TOL)


def test_based_window_zero_state_has_no_cache(rng):
    op = OPS["based"]
    inputs = _draw_op(op, rng, 1, 2, 1, 9)
    del inputs["q_window"], inputs["k_window"]
    _, state = L.based(**inputs, window=0, return_state=True)
    assert state.keys is None and state.values is None
    with pytest.raises(ValueError, match="initial_state has no window cache"):
        L.based(**inputs, window=4, initial_state=state)


# -- gated delta ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 16, 37, 64])
def test_unit_lower_inverse(size, rng):
    """The UT transform's block-doubling inverse equals a triangular solve (and reads only the
    strictly lower part: the unit diagonal is implied)."""
    lower = _randn(rng, 3, size, size).tril(-1) / 4
    eye = torch.eye(size, dtype=F64)
    want = torch.linalg.solve_triangular(lower + eye, eye.expand(3, size, size), upper=False)
    torch.testing.assert_close(unit_lower_inverse(lower + 5 * eye + _randn(rng, size, size).triu(1)), want, **TOL)


def test_gated_delta_normalises_q_and_k(rng):
    op = OPS["gated_delta"]
    inputs = _draw_op(op, rng, 1, 2, 2, 17)
    scaled = dict(inputs, q=inputs["q"] * 3.0, k=inputs["k"] * 0.25)
    torch.testing.assert_close(L.gated_delta(**scaled, chunk_size=4), L.gated_delta(**inputs, chunk_size=4), **TOL)


def test_gated_delta_without_writes_only_decays(rng):
    """``beta = 0``: the state only decays, ``o_t = scale (prod_(s <= t) alpha_s) S_0^T q_t``."""
    op = OPS["gated_delta"]
    inputs = _draw_op(op, rng, 1, 2, 2, 13)
    inputs["beta"] = torch.zeros_like(inputs["beta"])
    state = _randn(rng, 1, 2, 6, 5)
    out = L.gated_delta(**inputs, initial_state=state, chunk_size=4)
    q = inputs["q"] / inputs["q"].norm(dim=-1, keepdim=True)
    want = 6 ** -0.5 * inputs["alpha"].cumprod(-1)[..., None] * (q @ state)
    torch.testing.assert_close(out, want, **TOL)


# -- the public surface and bad input ---------------------------------------------------------


def test_public_names():
    assert set(L.__all__) == {"decayed", "decayed_step", "default_decay", "based", "based_step", "BasedState",
                              "gated_delta", "gated_delta_step"}
    for name in L.__all__:
        assert getattr(L, name).__module__.startswith("foveate.linear.")
    assert callable(L.decayed) and callable(L.based) and callable(L.gated_delta)


def _q(n=8, h=2, d=4, dtype=F64):
    return torch.zeros(1, h, n, d, dtype=dtype)


_Q, _K, _V = _q(), _q(), _q()
_GATE = torch.full((1, 2, 8), 0.5, dtype=F64)
BAD = {
    "q-not-tensor": (lambda: L.decayed(1.0, _K, _V), TypeError, "q must be a torch.Tensor"),
    "integer-dtype": (lambda: L.based(_Q.long(), _K, _V), TypeError, "q.dtype"),
    "dtype-mismatch": (lambda: L.gated_delta(_Q, _K.float(), _V, _GATE, _GATE), TypeError, "k.dtype"),
    "q-3d": (lambda: L.decayed(_Q[0], _K, _V), ValueError, r"q must be \(B, H, N, D\)"),
    "lengths": (lambda: L.decayed(_Q, _q(9), _V), ValueError, "one length"),
    "gqa-not-dividing": (lambda: L.decayed(_q(h=3), _K, _V), ValueError, "multiple of k's and v's heads"),
    "v-heads": (lambda: L.based(_Q, _K, _q(h=1)), ValueError, "v must have k's 2 heads"),
    "key-dim": (lambda: L.gated_delta(_Q, _q(d=5), _V, _GATE, _GATE), ValueError, "k's last dim"),
    "decay-zero": (lambda: L.decayed(_Q, _K, _V, 0.0), ValueError, r"decay must lie in \(0, 1\]"),
    "decay-above-one": (lambda: L.decayed(_Q, _K, _V, [0.5, 1.5]), ValueError, "decay must lie"),
    "decay-nan": (lambda: L.decayed(_Q, _K, _V, float("nan")), ValueError, "decay must lie"),
    "decay-shape": (lambda: L.decayed(_Q, _K, _V, torch.full((3,), 0.5)), ValueError, "one value per query head"),
    "decay-bool": (lambda: L.decayed(_Q, _K, _V, True), TypeError, "decay must be"),
    "decay-step": (lambda: L.decayed_step(_Q[:, :, 0], _K[:, :, 0], _V[:, :, 0], 2.0), ValueError, "decay must lie"),
    "chunk-zero": (lambda: L.decayed(_Q, _K, _V, chunk_size=0), ValueError, "chunk_size must be at least 1"),
    "chunk-float": (lambda: L.based(_Q, _K, _V, chunk_size=2.0), TypeError, "chunk_size must be an int"),
    "chunk-zero-delta": (lambda: L.gated_delta(_Q, _K, _V, _GATE, _GATE, chunk_size=0), ValueError, "chunk_size"),
    "scale-string": (lambda: L.decayed(_Q, _K, _V, scale="1"), TypeError, "scale must be a real number"),
    "scale-inf": (lambda: L.gated_delta(_Q, _K, _V, _GATE, _GATE, scale=math.inf), ValueError, "scale must be finite"),
    "state-shape": (lambda: L.decayed(_Q, _K, _V, initial_state=torch.zeros(1, 2, 4, 5)), ValueError,
                    r"initial_state must have shape \(1, 2, 4, 4\)"),
    "state-not-tensor": (lambda: L.gated_delta(_Q, _K, _V, _GATE, _GATE, initial_state=[0]), TypeError,
                         "initial_state must be a torch.Tensor"),
    "bidirectional-state": (lambda: L.decayed(_Q, _K, _V, causal=False, return_state=True), ValueError,
                            "need causal=True"),
    "causal-not-bool": (lambda: L.decayed(_Q, _K, _V, causal=1), TypeError, "causal must be a bool"),
    "alpha-zero": (lambda: L.gated_delta(_Q, _K, _V, _GATE * 0, _GATE), ValueError, r"alpha must lie in \(0, 1\]"),
    "beta-above-one": (lambda: L.gated_delta(_Q, _K, _V, _GATE, _GATE * 3), ValueError, r"beta must lie in \[0, 1\]"),
    "alpha-shape": (lambda: L.gated_delta(_Q, _K, _V, _GATE[:, :1], _GATE), ValueError, "alpha must have shape"),
    "beta-step-shape": (lambda: L.gated_delta_step(_Q[:, :, 0], _K[:, :, 0], _V[:, :, 0], _GATE[..., 0], _GATE),
                        ValueError, "beta must have shape"),
    "step-4d": (lambda: L.gated_delta_step(_Q, _K, _V, _GATE, _GATE), ValueError, r"q must be \(B, H, D\)"),
    "window-negative": (lambda: L.based(_Q, _K, _V, -1), ValueError, "window must be at least 0"),
    "window-half": (lambda: L.based(_Q, _K, _V, q_window=_Q), ValueError, "must be given together"),
    "window-q-shape": (lambda: L.based(_Q, _K, _V, q_window=_q(n=7), k_window=_K), ValueError, "q_window must be"),
    "window-dims": (lambda: L.based(_Q, _K, _V, q_window=_q(d=3), k_window=_K), ValueError, "share a last dim"),
    "window-zero-with-qk": (lambda: L.based(_Q, _K, _V, 0, q_window=_Q, k_window=_K), ValueError, "need window >= 1"),
    "based-state-type": (lambda: L.based(_Q, _K, _V, initial_state=torch.zeros(1)), TypeError, "BasedState"),
    "based-cache-too-long": (lambda: L.based(_Q, _K, _V, 3, initial_state=L.BasedState(
        torch.zeros(1, 2, 21, 4, dtype=F64), torch.ones(1, 2, 21, dtype=F64), _q(n=5), _q(n=5))), ValueError,
        "more than window - 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(case):
    call, error, match = BAD[case]
    with pytest.raises(error, match=match):
        call()
