"""Score modifications (``foveate.score_mods``): each modification, and chains of them, against a naive
float64 definition written here from the issue's words ("scores, then bias, then mask, then softmax";
query ``i`` at key position ``p = i + kv_len - q_len``; ``a + b`` applies ``a`` then ``b``): dense
scores, a bias per (query, key) pair built with plain Python loops (ALiBi's paper slopes, T5's
buckets, Swin's per-axis offsets, Manhattan distances on a canvas, all written here), the mask from
the brute-force pattern masks of ``brute.py``, then the softmax, differentiated by autograd.

On the reference backend every modification is checked (out, lse, dq, dk, dv and the gradient of
every tensor of the modification) under causal and sliding-window masks, ``q_len != kv_len``,
grouped-query heads, and 2-D/3-D neighborhoods run in a tiled token order (padding, keys after the
canvas). ``LowRankBias`` is checked on the torch and Triton backends too (Triton's interpreter without
a GPU: tiny shapes), FlexAttention's CPU forward on a few cases, and the argument checks (the error
names the argument, is raised before anything runs, and leaves the inputs as they were)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import foveate
from foveate import patterns as P
from foveate import score_mods as S
from foveate.backends import reference as reference_module

import brute
from kernel_spy import DEVICE, needs_triton

F64 = torch.float64

# -- the definitions, written from the issue (independently of foveate) -----------------------------------


def position(i: int, q_len: int, kv_len: int) -> int:
    """Query ``i``'s position among the keys (bottom-right aligned)."""
    return i + kv_len - q_len


def paper_slopes(n: int) -> list[float]:
    """ALiBi (Press et al.): for ``n`` a power of two, ``2^(-8 i / n)``, ``i = 1 .. n``; otherwise the
    slopes of the largest power of two ``m`` below ``n``, then every other slope (1st, 3rd, ...) of
    ``2 m``, ``n - m`` of them."""

    def geometric(m):
        return [2.0 ** (-8.0 * i / m) for i in range(1, m + 1)]

    m = 1
    while 2 * m <= n:
        m *= 2
    if m == n:
        return geometric(n)
    return geometric(m) + geometric(2 * m)[0::2][: n - m]


def t5_bucket(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """T5's bucket of the offset ``rel`` = key position minus query position (plain ints)."""
    bucket = 0
    n = num_buckets
    if bidirectional:
        n //= 2
        if rel > 0:  # keys after the query: the upper half
            bucket += n
        d = abs(rel)
    else:
        d = max(-rel, 0)  # keys after the query: distance 0, bucket 0
    max_exact = n // 2
    if d < max_exact:
        return bucket + d
    if d >= max_distance:
        return bucket + n - 1
    large = max_exact + int(math.log(d / max_exact) / math.log(max_distance / max_exact) * (n - max_exact))
    return bucket + min(large, n - 1)


def distance_1d(q_len: int, kv_len: int) -> torch.Tensor:
    return torch.tensor([[float(abs(position(i, q_len, kv_len) - j)) for j in range(kv_len)] for i in range(q_len)],
                        dtype=F64)


def canvas_coords(canvas) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(n) for n in canvas)))  # raster (row-major) order


def manhattan(canvas, extra_kv: int) -> torch.Tensor:
    """Manhattan distances of raster coordinates; keys past the canvas at distance 0."""
    cs = canvas_coords(canvas)
    return torch.tensor([[float(sum(abs(a - b) for a, b in zip(qc, kc))) for kc in cs] + [0.0] * extra_kv
                         for qc in cs], dtype=F64)


def t5_index(q_len, kv_len, buckets, max_distance, bidirectional) -> torch.Tensor:
    return torch.tensor([[t5_bucket(j - position(i, q_len, kv_len), bidirectional, buckets, max_distance)
                          for j in range(kv_len)] for i in range(q_len)])


def swin_offsets(canvas, window, extra_kv: int):
    """Per axis, the index ``d + w - 1`` of the key-minus-query offset ``d`` (clamped to ``|d| <= w - 1``),
    and whether the pair has a bias (keys past the canvas have none)."""
    cs = canvas_coords(canvas)
    axes = []
    for a, w in enumerate(window):
        rows = [[min(max(kc[a] - qc[a], -(w - 1)), w - 1) + w - 1 for kc in cs] + [0] * extra_kv for qc in cs]
        axes.append(torch.tensor(rows))
    has = torch.tensor([[True] * len(cs) + [False] * extra_kv for _ in cs])
    return axes, has


def heads(x: torch.Tensor) -> torch.Tensor:
    """A per-head vector ``(H|1,)`` (or a 0-d tensor) broadcast against ``(B, H, Nq, Nkv)``."""
    return x.reshape(1, -1, 1, 1)


def naive_attention(q, k, v, mask, scale, mod):
    """``(out, lse)``: dense scores, ``mod`` on them, the mask, then the softmax (float64 autograd).
    Rows with no allowed key: out 0, lse -inf."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = (q @ k.transpose(-1, -2)) * scale
    s = mod(s)
    mask = torch.broadcast_to(mask, s.shape)
    s = s.masked_fill(~mask, float("-inf"))
    m = s.detach().amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    denom = e.sum(dim=-1, keepdim=True)
    some = denom > 0
    safe = torch.where(some, denom, torch.ones_like(denom))
    out = (e / safe) @ v
    lse = torch.where(some, torch.log(safe) + m, torch.full_like(m, float("-inf")))[..., 0]
    return out, lse


# -- the cases: (tensors, the modification built on them, its naive form) ---------------------------------
#
# A case is ``case(ctx, gen) -> (tensors, build, naive)``: ``build(*tensors)`` the modification
# (or a function), ``naive(s, *tensors)`` the modified scores ``(B, Hq, Nq, Nkv)``. Tensors created
# with requires_grad are learnable: their gradients are compared.


class Ctx:
    def __init__(self, B, Hq, Hkv, Nq, Nkv, canvas=None, extra_kv=0, window=None):
        self.B, self.Hq, self.Hkv, self.Nq, self.Nkv = B, Hq, Hkv, Nq, Nkv
        self.canvas, self.extra_kv, self.window = canvas, extra_kv, window


def _rand(gen, *shape, learn=True, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=F64) * scale).requires_grad_(learn)


def _rates(gen, n):
    return (torch.rand(n, generator=gen, dtype=F64) * 0.5 + 0.05).requires_grad_()


def case_softcap(c, gen):
    return [], lambda: S.Softcap(0.7), lambda s: 0.7 * torch.tanh(s / 0.7)


def case_alibi(c, gen):
    slopes = torch.tensor(paper_slopes(c.Hq), dtype=F64)
    d = distance_1d(c.Nq, c.Nkv)
    return [], lambda: S.ALiBi(), lambda s: s - heads(slopes) * d


def case_alibi_learnable(c, gen):
    d = distance_1d(c.Nq, c.Nkv)
    return [_rates(gen, c.Hq)], lambda r: S.ALiBi(slopes=r), lambda s, r: s - heads(r) * d


def case_decay(c, gen):
    d = distance_1d(c.Nq, c.Nkv)
    return [_rates(gen, c.Hq)], lambda r: S.DistanceDecay(r), lambda s, r: s - heads(r) * d


def case_decay_one_rate(c, gen):  # a 0-d learnable rate, shared by every head
    d = distance_1d(c.Nq, c.Nkv)
    rate = torch.tensor(0.375, dtype=F64, requires_grad=True)
    return [rate], lambda r: S.DistanceDecay(r), lambda s, r: s - r * d


def case_rpb_t5(c, gen):
    index = t5_index(c.Nq, c.Nkv, 8, 12, True)  # exact 0..1, log-spaced 2..11, last beyond
    return ([_rand(gen, c.Hq, 8)], lambda t: S.RelativePositionBias(t, buckets=8, max_distance=12),
            lambda s, t: s + t[:, index][None])


def case_rpb_t5_causal(c, gen):
    index = t5_index(c.Nq, c.Nkv, 6, 10, False)
    return ([_rand(gen, 1, 6)], lambda t: S.RelativePositionBias(t, max_distance=10, bidirectional=False),
            lambda s, t: s + t[:, index][None])


def case_dense(c, gen):
    return [_rand(gen, c.B, c.Hq, c.Nq, c.Nkv)], lambda b: S.DenseBias(b), lambda s, b: s + b


def case_dense_shared(c, gen):
    return [_rand(gen, 1, 1, c.Nq, c.Nkv)], lambda b: S.DenseBias(b), lambda s, b: s + b


def _low_rank(u, w, c):
    """``u_i . w_j`` with ``w`` per kv head read by the query heads of its group."""
    if w.shape[1] not in (1, c.Hq):
        w = w.repeat_interleave(c.Hq // w.shape[1], dim=1)
    return u @ w.transpose(-1, -2)


def case_low_rank(c, gen):  # u per batch and query head, w per kv head
    ts = [_rand(gen, c.B, c.Hq, c.Nq, 3, scale=0.5), _rand(gen, 1, c.Hkv, c.Nkv, 3, scale=0.5)]
    return ts, lambda u, w: S.LowRankBias(u, w), lambda s, u, w: s + _low_rank(u, w, c)


def case_low_rank_query_heads(c, gen):  # w per query head (grouped-query inputs: keys repeated)
    ts = [_rand(gen, 1, 1, c.Nq, 8, scale=0.4), _rand(gen, c.B, c.Hq, c.Nkv, 8, scale=0.4)]
    return ts, lambda u, w: S.LowRankBias(u, w), lambda s, u, w: s + _low_rank(u, w, c)


def case_low_rank_shared(c, gen):  # one pair of factors for every batch element and head
    ts = [_rand(gen, 1, 1, c.Nq, 1), _rand(gen, 1, 1, c.Nkv, 1)]
    return ts, lambda u, w: S.LowRankBias(u, w), lambda s, u, w: s + _low_rank(u, w, c)


def _fn(score, b, h, q_idx, kv_idx):  # a plain function, nonlinear in the indices
    return score + 0.3 * torch.cos(0.7 * q_idx - 1.3 * kv_idx) * (h + 1) - 0.2 * b


def case_function(c, gen):
    def naive(s):
        b, h = torch.arange(c.B).view(-1, 1, 1, 1), torch.arange(c.Hq).view(1, -1, 1, 1)
        return _fn(s, b, h, torch.arange(c.Nq).view(-1, 1), torch.arange(c.Nkv))

    return [], lambda: _fn, naive


def case_function_parameters(c, gen):
    def build(t):
        return S.ScoreFunction(lambda s, b, h, q_idx, kv_idx: s * t[h] + torch.sin(t[h] * (q_idx - kv_idx)),
                               parameters=(t,))

    def naive(s, t):
        i, j = torch.arange(c.Nq).view(-1, 1), torch.arange(c.Nkv)
        return s * heads(t) + torch.sin(heads(t) * (i - j))

    return [_rates(gen, c.Hq)], build, naive


def case_chain_alibi_dense_cap(c, gen):
    slopes = torch.tensor(paper_slopes(c.Hq), dtype=F64)
    d = distance_1d(c.Nq, c.Nkv)
    return ([_rand(gen, c.B, 1, c.Nq, c.Nkv)], lambda b: S.ALiBi() + S.DenseBias(b) + S.Softcap(3),
            lambda s, b: 3 * torch.tanh((s - heads(slopes) * d + b) / 3))


def case_chain_low_rank_cap(c, gen):
    ts = [_rand(gen, c.B, c.Hq, c.Nq, 2), _rand(gen, c.B, c.Hkv, c.Nkv, 2)]
    return (ts, lambda u, w: S.LowRankBias(u, w) + S.Softcap(1.5),
            lambda s, u, w: 1.5 * torch.tanh((s + _low_rank(u, w, c)) / 1.5))


def case_chain_cap_then_bias(c, gen):  # the order matters: the bias is added after the cap
    return ([_rand(gen, 1, c.Hq, c.Nq, c.Nkv)], lambda b: S.Softcap(0.5) + S.DenseBias(b),
            lambda s, b: 0.5 * torch.tanh(s / 0.5) + b)


def case_chain_biases_low_rank_decay_cap(c, gen):  # a low-rank bias after other biases, then a cap
    d = distance_1d(c.Nq, c.Nkv)
    ts = [_rand(gen, 1, c.Hq, c.Nq, c.Nkv), _rand(gen, c.B, 1, c.Nq, 4), _rand(gen, 1, 1, c.Nkv, 4), _rates(gen, c.Hq)]
    return (ts, lambda b, u, w, r: S.DenseBias(b) + S.LowRankBias(u, w) + S.DistanceDecay(r) + S.Softcap(2.0),
            lambda s, b, u, w, r: 2.0 * torch.tanh((s + b + _low_rank(u, w, c) - heads(r) * d) / 2.0))


def case_chain_decay_cap(c, gen):
    d = distance_1d(c.Nq, c.Nkv)
    return ([_rates(gen, c.Hq)], lambda r: S.DistanceDecay(r) + S.Softcap(2.0),
            lambda s, r: 2.0 * torch.tanh((s - heads(r) * d) / 2.0))


def case_chain_alibi_cap(c, gen):
    slopes = torch.tensor(paper_slopes(c.Hq), dtype=F64)
    d = distance_1d(c.Nq, c.Nkv)
    return [], lambda: S.ALiBi() + S.Softcap(1.0), lambda s: 1.0 * torch.tanh((s - heads(slopes) * d) / 1.0)


def case_chain_low_rank_alibi_cap(c, gen):  # the features (low rank), then a distance bias and a cap
    slopes = torch.tensor(paper_slopes(c.Hq), dtype=F64)
    d = distance_1d(c.Nq, c.Nkv)
    ts = [_rand(gen, 1, c.Hq, c.Nq, 2, scale=0.7), _rand(gen, c.B, 1, c.Nkv, 2, scale=0.7)]
    return (ts, lambda u, w: S.LowRankBias(u, w) + S.ALiBi() + S.Softcap(1.5),
            lambda s, u, w: 1.5 * torch.tanh((s + _low_rank(u, w, c) - heads(slopes) * d) / 1.5))


SEQUENCE_CASES = {name[5:]: fn for name, fn in globals().copy().items() if name.startswith("case_")}


# canvas cases (ctx.canvas, ctx.extra_kv, ctx.window set)


def case_canvas_decay(c, gen):
    d = manhattan(c.canvas, c.extra_kv)
    return ([_rates(gen, c.Hq)], lambda r: S.DistanceDecay(r, canvas=c.canvas), lambda s, r: s - heads(r) * d)


def _swin(c, t):
    """The bias ``table[h, d_0 + w_0 - 1, d_1 + w_1 - 1, ...]`` of each pair (0 past the canvas)."""
    sides = tuple(2 * w - 1 for w in c.window)
    table = t.reshape(t.shape[0], *sides)  # a flat table is Swin's row-major one
    axes, has = swin_offsets(c.canvas, c.window, c.extra_kv)
    return torch.where(has, table[(slice(None), *axes)], 0.0)[None]


def case_canvas_rpb(c, gen):
    sides = [2 * w - 1 for w in c.window]
    return ([_rand(gen, c.Hq, math.prod(sides))], lambda t: S.RelativePositionBias(t, canvas=c.canvas, window=c.window),
            lambda s, t: s + _swin(c, t))


def case_canvas_rpb_swin_layout(c, gen):  # the table as (H, 2 w0 - 1, 2 w1 - 1, ...), one for all heads
    sides = [2 * w - 1 for w in c.window]
    return ([_rand(gen, 1, *sides)], lambda t: S.RelativePositionBias(t, canvas=c.canvas, window=c.window),
            lambda s, t: s + _swin(c, t))


def case_canvas_chain(c, gen):
    d = manhattan(c.canvas, c.extra_kv)
    sides = [2 * w - 1 for w in c.window]
    ts = [_rates(gen, c.Hq), _rand(gen, c.Hq, *sides)]
    return (ts, lambda r, t: (S.DistanceDecay(r, canvas=c.canvas) + S.RelativePositionBias(t, canvas=c.canvas,
                                                                                            window=c.window)
                              + S.Softcap(2.5)),
            lambda s, r, t: 2.5 * torch.tanh((s - heads(r) * d + _swin(c, t)) / 2.5))


CANVAS_CASES = {
    "decay": case_canvas_decay,
    "rpb": case_canvas_rpb,
    "rpb-swin-layout": case_canvas_rpb_swin_layout,
    "chain": case_canvas_chain,
    # 1-D modifications on a canvas act on the caller's (raster) token order
    "alibi": case_alibi,
    "dense": case_dense,
    "low-rank": case_low_rank,
    "function": case_function,
    "chain-alibi-dense-cap": case_chain_alibi_dense_cap,
}


# -- running both ---------------------------------------------------------------------------------------------


def _loss(out, lse, d_out, d_lse):
    return (out.to(F64) * d_out).sum() + (torch.where(torch.isinf(lse), 0, lse).to(F64) * d_lse).sum()


def run_case(case, pattern, mask, ctx, *, backend="reference", tile=None, dtype=F64, head_dim=8, tol=1e-10,
             lse_tol=2e-6, seed=0, scale=None, tensor_dtype=None, device=None):
    """foveate's ``(out, lse, grads)`` against the naive ones; grads of q, k, v and of every learnable
    tensor of the case. The Triton backend runs on the kernels' device (a GPU, else the interpreter)."""
    device = (DEVICE if backend == "triton" else torch.device("cpu")) if device is None else device
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(ctx.B, ctx.Hq, ctx.Nq, head_dim, generator=gen, dtype=F64)
    k = torch.randn(ctx.B, ctx.Hkv, ctx.Nkv, head_dim, generator=gen, dtype=F64)
    v = torch.randn(ctx.B, ctx.Hkv, ctx.Nkv, head_dim, generator=gen, dtype=F64)
    tensors, build, naive_mod = case(ctx, gen)
    d_out = torch.randn(ctx.B, ctx.Hq, ctx.Nq, head_dim, generator=gen, dtype=F64)
    d_lse = torch.randn(ctx.B, ctx.Hq, ctx.Nq, generator=gen).double()  # (exact in float32: lse is float32)
    names = ["q", "k", "v"] + [f"tensor {i}" for i in range(len(tensors))]
    learn = [True, True, True] + [t.requires_grad for t in tensors]

    got_in = [t.detach().to(device, dtype if i < 3 or tensor_dtype is None else tensor_dtype).requires_grad_(r)
              for i, (t, r) in enumerate(zip([q, k, v, *tensors], learn))]
    out, lse = foveate.attention(*got_in[:3], pattern, score_mod=build(*got_in[3:]), backend=backend, tile=tile,
                                 return_lse=True, scale=scale)
    assert out.dtype == dtype and lse.dtype == torch.float32
    got_grads = torch.autograd.grad(_loss(out, lse, d_out.to(device), d_lse.to(device)),
                                    [t for t, r in zip(got_in, learn) if r])
    out, lse, got_grads = out.cpu(), lse.cpu(), [g.cpu() for g in got_grads]

    want_in = [t.detach().clone().requires_grad_(r) for t, r in zip([q, k, v, *tensors], learn)]
    scale = head_dim ** -0.5 if scale is None else scale
    want_out, want_lse = naive_attention(*want_in[:3], mask, scale, lambda s: naive_mod(s, *want_in[3:]))
    want_grads = torch.autograd.grad(_loss(want_out, want_lse, d_out, d_lse), [t for t, r in zip(want_in, learn) if r])

    torch.testing.assert_close(out.detach().to(F64), want_out.detach(), atol=tol, rtol=tol, msg=lambda m: "out: " + m)
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse)), "lse: -inf rows differ"
    torch.testing.assert_close(lse.detach().to(F64), want_lse.detach(), atol=lse_tol, rtol=lse_tol,
                               msg=lambda m: "lse: " + m)
    for name, g, w in zip([n for n, r in zip(names, learn) if r], got_grads, want_grads):
        assert g.shape == w.shape, name
        torch.testing.assert_close(g.to(F64), w, atol=tol, rtol=tol, msg=lambda m, name=name: f"d {name}: " + m)
    return got_in


def sequence_mask(pattern, q_len, kv_len):
    if isinstance(pattern, P.Causal):
        return brute.causal_mask(q_len, kv_len)
    if isinstance(pattern, P.SlidingWindow):
        return brute.sliding_window_mask(q_len, kv_len, pattern.left, pattern.right)
    raise AssertionError(pattern)


SEQUENCE_CONFIGS = {
    "causal": (P.Causal(), dict(B=2, Hq=2, Hkv=2, Nq=16, Nkv=16)),
    "window-gqa": (P.SlidingWindow(3, 2), dict(B=1, Hq=4, Hkv=2, Nq=20, Nkv=20)),
    "causal-decode-gqa": (P.Causal(), dict(B=2, Hq=4, Hkv=2, Nq=7, Nkv=19)),
    "causal-more-queries-mqa": (P.Causal(), dict(B=1, Hq=2, Hkv=1, Nq=12, Nkv=9)),  # 3 rows see no key
    "window-longer-kv": (P.SlidingWindow(4, 1), dict(B=1, Hq=2, Hkv=2, Nq=9, Nkv=21)),
}


@pytest.mark.parametrize("config", SEQUENCE_CONFIGS)
@pytest.mark.parametrize("case", SEQUENCE_CASES)
def test_reference_sequence(case, config):
    pattern, dims = SEQUENCE_CONFIGS[config]
    ctx = Ctx(**dims)
    run_case(SEQUENCE_CASES[case], pattern, sequence_mask(pattern, ctx.Nq, ctx.Nkv), ctx)


CANVAS_CONFIGS = {
    # canvas, kernel, extra_kv, tile, heads (q, kv), batch; the window of the canvas tables is the
    # neighborhood's reach plus one column
    "tiled-padded": ((6, 6), (3, 3), 0, (4, 4), (2, 2), 2),
    "tiled-extra-kv-gqa": ((5, 6), (3, 5), 3, (4, 4), (4, 2), 1),
    "raster": ((4, 5), (3, 3), 2, None, (2, 1), 1),
}


def _canvas_run(case, config, **kw):
    canvas, kernel, extra, tile, (hq, hkv), batch = CANVAS_CONFIGS[config]
    pattern = P.Neighborhood(canvas=canvas, kernel=kernel, extra_kv=extra)
    n = math.prod(canvas)
    window = (kernel[0], kernel[1] + 1)
    ctx = Ctx(batch, hq, hkv, n, n + extra, canvas=canvas, extra_kv=extra, window=window)
    return run_case(case, pattern, brute.neighborhood_mask_of(pattern), ctx, tile=tile, **kw)


@pytest.mark.parametrize("config", CANVAS_CONFIGS)
@pytest.mark.parametrize("case", CANVAS_CASES)
def test_reference_canvas(case, config):
    _canvas_run(CANVAS_CASES[case], config)


def test_reference_canvas_3d():
    canvas, kernel, window = (3, 4, 4), (3, 3, 2), (3, 3, 2)
    pattern = P.Neighborhood(canvas=canvas, kernel=kernel, extra_kv=2)
    n = math.prod(canvas)
    ctx = Ctx(1, 2, 1, n, n + 2, canvas=canvas, extra_kv=2, window=window)
    run_case(case_canvas_chain, pattern, brute.neighborhood_mask_of(pattern), ctx, tile=(2, 2, 2))


def test_reference_canvas_dilated_strided():
    """A dilated, strided neighborhood reaches (kernel - 1) * dilation: a window of that size is
    accepted, and the bias of every allowed pair is its own entry."""
    canvas, kernel, dilation, stride = (7, 6), (3, 3), (2, 1), (2, 3)
    pattern = P.Neighborhood(canvas=canvas, kernel=kernel, dilation=dilation, stride=stride)
    window = (5, 3)
    n = math.prod(canvas)
    ctx = Ctx(1, 2, 2, n, n, canvas=canvas, window=window)
    run_case(case_canvas_rpb, pattern, brute.neighborhood_mask_of(pattern), ctx, tile=(4, 4))


def test_canvas_inputs_shaped_as_the_canvas():
    """q, k, v given as (B, H, *canvas, D): the same as flat inputs."""
    canvas = (4, 6)
    pattern = P.Neighborhood(canvas=canvas, kernel=(3, 3))
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, *canvas, 8, generator=gen, dtype=F64) for _ in range(3))
    table = torch.randn(2, 5, 5, generator=gen, dtype=F64)
    mod = S.RelativePositionBias(table, canvas=canvas, window=3) + S.DistanceDecay([0.25, 0.5], canvas=canvas)
    out = foveate.attention(q, k, v, pattern, score_mod=mod, backend="reference", tile=(2, 4))
    flat = foveate.attention(*(t.flatten(2, 3) for t in (q, k, v)), pattern, score_mod=mod, backend="reference",
                             tile=None)
    assert out.shape == q.shape
    torch.testing.assert_close(out.flatten(2, 3), flat, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("case", ["chain_biases_low_rank_decay_cap", "function_parameters", "rpb_t5", "dense"])
@pytest.mark.parametrize("where", ["sequence", "canvas"])
def test_reference_in_chunks(case, where, monkeypatch):
    """The reference backend in several query chunks (forward and backward): the same results, the
    gradients of the modification's tensors summed over the chunks."""
    if where == "sequence":
        monkeypatch.setattr(reference_module, "CHUNK_ELEMENTS", 1)  # one query per chunk
        pattern, dims = SEQUENCE_CONFIGS["causal-decode-gqa"]
        ctx = Ctx(**dims)
        run_case(SEQUENCE_CASES[case], pattern, sequence_mask(pattern, ctx.Nq, ctx.Nkv), ctx)
    else:  # 5 of the 64 tiled queries per chunk (B * Hq * padded kv_len = 1 * 4 * 67), the last one shorter
        monkeypatch.setattr(reference_module, "CHUNK_ELEMENTS", 4 * 67 * 5)
        _canvas_run(SEQUENCE_CASES[case] if case != "rpb_t5" else case_canvas_rpb, "tiled-extra-kv-gqa")


@settings(max_examples=20, deadline=None)
@given(q_len=st.integers(1, 12), kv_len=st.integers(1, 16), left=st.integers(0, 6), right=st.integers(0, 4),
       case=st.sampled_from(["decay", "rpb_t5", "rpb_t5_causal", "chain_alibi_dense_cap", "function"]))
def test_reference_random_lengths_and_windows(q_len, kv_len, left, right, case):
    pattern = P.SlidingWindow(left, right)
    ctx = Ctx(1, 2, 1, q_len, kv_len)
    run_case(SEQUENCE_CASES[case], pattern, sequence_mask(pattern, q_len, kv_len), ctx)


@pytest.mark.parametrize("n_heads", [3, 6, 12])
def test_alibi_default_slopes_in_attention(n_heads):
    """The paper's slopes of a head count that is not a power of two (float32 slopes: 1e-6)."""
    ctx = Ctx(1, n_heads, n_heads // 3, 10, 14)
    run_case(case_chain_alibi_dense_cap, P.Causal(), brute.causal_mask(10, 14), ctx, tol=1e-6)


@pytest.mark.parametrize("n_heads", list(range(1, 18)) + [24, 32, 48, 64])
def test_alibi_slopes(n_heads):
    want = torch.tensor(paper_slopes(n_heads), dtype=F64)
    torch.testing.assert_close(S.alibi_slopes(n_heads).to(F64), want, rtol=1e-6, atol=0)
    # ALiBi() applies them without the table: its bias at distance 1, head by head
    fn = S.ALiBi().bind(3, 3, n_heads)
    h = torch.arange(n_heads).view(-1, 1)
    got = fn(torch.zeros(n_heads, 1, dtype=F64), torch.zeros(1, 1, dtype=torch.long), h, torch.tensor([[1]]),
             torch.tensor([[0]]))
    torch.testing.assert_close(-got[:, 0].to(F64), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("mod, rate", [
    (lambda: S.DistanceDecay(0.3), [0.3, 0.3]),
    (lambda: S.DistanceDecay([0.3, 0.7]), [0.3, 0.7]),
    (lambda: S.ALiBi(slopes=[0.1, 0.9]), [0.1, 0.9]),
], ids=["decay-number", "decay-list", "alibi-list"])
def test_float64_inputs_keep_float64_rates(mod, rate):
    """Rates given as Python numbers are applied at the precision of the float64 inputs."""
    ctx = Ctx(1, 2, 2, 9, 15)
    d = distance_1d(9, 15)
    rate = torch.tensor(rate, dtype=F64)
    case = lambda c, gen: ([], mod, lambda s: s - heads(rate) * d)  # noqa: E731
    run_case(case, P.Causal(), brute.causal_mask(9, 15), ctx, tol=1e-12)


def test_float64_inputs_keep_float64_default_alibi_slopes():
    """With 12 heads the paper's slopes include 2^(-1/2): applied at float64 precision."""
    ctx = Ctx(1, 12, 12, 9, 15)
    run_case(case_alibi, P.Causal(), brute.causal_mask(9, 15), ctx, tol=1e-12)


# -- the index functions, through bind (hypothesis) --------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(bidirectional=st.booleans(), buckets=st.integers(4, 40), extra=st.integers(1, 60), q_len=st.integers(1, 20),
       kv_len=st.integers(1, 80))
def test_t5_buckets(bidirectional, buckets, extra, q_len, kv_len):
    half = buckets // 2 if bidirectional else buckets
    max_distance = half // 2 + extra  # past the exact buckets (T5's log rule needs it)
    table = torch.stack([torch.arange(buckets, dtype=F64), 1000 + torch.arange(buckets, dtype=F64)])
    fn = S.RelativePositionBias(table, max_distance=max_distance, bidirectional=bidirectional).bind(q_len, kv_len, 2)
    q_idx, kv_idx = torch.arange(q_len).view(1, -1, 1), torch.arange(kv_len).view(1, 1, -1)
    got = fn(torch.zeros(2, q_len, kv_len, dtype=F64), torch.tensor(0), torch.arange(2).view(-1, 1, 1), q_idx, kv_idx)
    want = t5_index(q_len, kv_len, buckets, max_distance, bidirectional).to(F64)
    assert torch.equal(got[0], want)
    assert torch.equal(got[1], want + 1000)


@settings(max_examples=30, deadline=None)
@given(canvas=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data(), extra=st.integers(0, 3))
def test_canvas_offsets_and_distances(canvas, data, extra):
    """Swin's per-axis offsets (key minus query, clamped) and Manhattan distances, pair by pair."""
    canvas = tuple(canvas)
    window = tuple(data.draw(st.integers(1, 4)) for _ in canvas)
    n = math.prod(canvas)
    sides = [2 * w - 1 for w in window]
    table = torch.arange(math.prod(sides), dtype=F64)[None]
    q_idx, kv_idx = torch.arange(n).view(-1, 1), torch.arange(n + extra).view(1, -1)
    zero = torch.zeros(n, n + extra, dtype=F64)
    got = S.RelativePositionBias(table, canvas=canvas, window=window).bind(n, n + extra, 1)(
        zero, torch.tensor(0), torch.tensor(0), q_idx, kv_idx)
    axes, has = swin_offsets(canvas, window, extra)
    flat = torch.zeros(n, n + extra, dtype=torch.long)
    for a, side in enumerate(sides):  # Swin's row-major flattening of the per-axis indices
        flat = flat * side + axes[a]
    assert torch.equal(got, torch.where(has, flat.to(F64), 0.0))
    decay = S.DistanceDecay(torch.tensor([1.0], dtype=F64), canvas=canvas).bind(n, n + extra, 1)
    assert torch.equal(-decay(zero, torch.tensor(0), torch.tensor(0), q_idx, kv_idx), manhattan(canvas, extra))


@settings(max_examples=12, deadline=None)
@given(canvas=st.tuples(st.integers(2, 6), st.integers(2, 6)), tile=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       extra=st.integers(0, 2), data=st.data())
def test_tiled_order_random(canvas, tile, extra, data):
    """Random canvases and tiles (padding included): a function of the indices and a canvas table
    see the caller's raster indices."""
    kernel = tuple(data.draw(st.integers(1, n)) for n in canvas)
    pattern = P.Neighborhood(canvas=canvas, kernel=kernel, extra_kv=extra)
    n = math.prod(canvas)
    ctx = Ctx(1, 2, 1, n, n + extra, canvas=canvas, extra_kv=extra, window=kernel)

    def case(c, gen):
        _, build_f, naive_f = case_function(c, gen)
        ts, build_t, naive_t = case_canvas_rpb(c, gen)
        return ts, lambda t: S.ScoreFunction(build_f()) + build_t(t), lambda s, t: naive_t(naive_f(s), t)

    run_case(case, pattern, brute.neighborhood_mask_of(pattern), ctx, tile=tile)


def test_bias_of_minus_infinity_masks_pairs():
    """A bias of -inf on allowed pairs drops them like the mask (finite results and gradients)."""
    ctx = Ctx(1, 2, 2, 8, 8)
    bias = torch.zeros(1, 2, 8, 8, dtype=F64)
    bias[0, 0, 3:, 1] = float("-inf")
    bias[0, 1, :, 0] = float("-inf")  # query 0 of head 1 keeps no key: lse -inf, out 0
    mask = brute.causal_mask(8, 8)
    allowed = mask & torch.isfinite(bias)

    # (run_case compares the gradients with the naive ones, which are finite: NaN would fail)
    run_case(lambda c, gen: ([], lambda: S.DenseBias(bias), lambda s: s), P.Causal(), allowed, ctx)


def test_window_clamps_offsets_without_a_neighborhood():
    """Without a neighborhood (dense attention on the canvas tokens), offsets past the window take
    the entry at the window's edge (the docstring's clamping)."""
    canvas, window = (4, 5), (2, 3)
    n = math.prod(canvas)
    ctx = Ctx(1, 2, 2, n, n, canvas=canvas, window=window)
    run_case(case_canvas_rpb, None, torch.ones(n, n, dtype=torch.bool), ctx)


# -- LowRankBias on the torch and Triton backends ------------------------------------------------------------------

LOW_RANK_CONFIGS = {
    "causal-gqa": (P.Causal(), dict(B=1, Hq=4, Hkv=2, Nq=40, Nkv=40)),
    "window-longer-kv": (P.SlidingWindow(5, 3), dict(B=2, Hq=2, Hkv=1, Nq=24, Nkv=40)),
}
LOW_RANK_CASES = ["low_rank", "low_rank_query_heads", "low_rank_shared"]


@pytest.mark.parametrize("config", LOW_RANK_CONFIGS)
@pytest.mark.parametrize("case", LOW_RANK_CASES)
def test_low_rank_torch_backend(case, config):
    pattern, dims = LOW_RANK_CONFIGS[config]
    ctx = Ctx(**dims)
    run_case(SEQUENCE_CASES[case], pattern, sequence_mask(pattern, ctx.Nq, ctx.Nkv), ctx, backend="torch",
             dtype=torch.float32, head_dim=16, tol=2e-5, lse_tol=2e-5)


@needs_triton
@pytest.mark.parametrize("config", LOW_RANK_CONFIGS)
@pytest.mark.parametrize("case", LOW_RANK_CASES)
def test_low_rank_triton_backend(case, config, triton_spy):
    pattern, dims = LOW_RANK_CONFIGS[config]
    ctx = Ctx(**dims)
    run_case(SEQUENCE_CASES[case], pattern, sequence_mask(pattern, ctx.Nq, ctx.Nkv), ctx, backend="triton",
             dtype=torch.float32, head_dim=16, tol=2e-5, lse_tol=2e-5)
    assert triton_spy["fwd"] >= 1 and triton_spy["bwd"] >= 1


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_two_low_rank_biases_with_grouped_heads(backend):
    """Two low-rank biases on grouped-query inputs, the first with ``w`` per query head, the second
    per kv head: both added."""
    ctx = Ctx(1, 4, 2, 16, 16)

    def case(c, gen):
        ts = [_rand(gen, 1, 4, 16, 2), _rand(gen, 1, 4, 16, 2), _rand(gen, 1, 4, 16, 3), _rand(gen, 1, 2, 16, 3)]
        return (ts, lambda u1, w1, u2, w2: S.LowRankBias(u1, w1) + S.LowRankBias(u2, w2),
                lambda s, u1, w1, u2, w2: s + _low_rank(u1, w1, c) + _low_rank(u2, w2, c))

    tol = 1e-10 if backend == "reference" else 2e-5
    run_case(case, P.Causal(), brute.causal_mask(16, 16), ctx, backend=backend, tol=tol, lse_tol=2e-5,
             dtype=F64 if backend == "reference" else torch.float32)


def test_low_rank_with_scale_zero():
    """``scale=0`` (a finite scale, accepted): the scores are the bias alone."""
    ctx = Ctx(1, 2, 2, 8, 8)
    run_case(case_low_rank, P.Causal(), brute.causal_mask(8, 8), ctx, scale=0.0)


# -- backends: which run what ----------------------------------------------------------------------------------


def _qkv(b=1, hq=2, hkv=2, nq=16, nkv=16, d=16, dtype=torch.float32, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((hq, nq), (hkv, nkv), (hkv, nkv))
    return tuple(torch.randn(b, h, n, d, generator=gen).to(device, dtype) for h, n in shapes)


# -- the score modifications inside the Triton kernels: Softcap, ALiBi, 1-D DistanceDecay ---------------------

# (docs/usage.md: one 1-D distance bias and one dense bias, then at most one softcap)
TRITON_SCORE_CASES = ["softcap", "alibi", "alibi_learnable", "decay", "decay_one_rate", "dense", "dense_shared",
                      "chain_decay_cap", "chain_alibi_cap", "chain_low_rank_alibi_cap", "chain_alibi_dense_cap",
                      "chain_biases_low_rank_decay_cap"]
TRITON_SCORE_CONFIGS = {
    "causal-gqa": (P.Causal(), dict(B=1, Hq=4, Hkv=2, Nq=40, Nkv=40)),
    "window-longer-kv": (P.SlidingWindow(5, 3), dict(B=2, Hq=2, Hkv=1, Nq=24, Nkv=40)),
    "causal-more-queries-6-heads": (P.Causal(), dict(B=1, Hq=6, Hkv=3, Nq=40, Nkv=28)),  # 12 rows see no key
}


@needs_triton
@pytest.mark.parametrize("config", TRITON_SCORE_CONFIGS)
@pytest.mark.parametrize("case", TRITON_SCORE_CASES)
def test_triton_score_modifications(case, config, triton_spy):
    pattern, dims = TRITON_SCORE_CONFIGS[config]
    ctx = Ctx(**dims)
    run_case(SEQUENCE_CASES[case], pattern, sequence_mask(pattern, ctx.Nq, ctx.Nkv), ctx, backend="triton",
             dtype=torch.float32, head_dim=16, tol=2e-5, lse_tol=2e-5)
    assert triton_spy["fwd"] >= 1 and triton_spy["bwd"] >= 1


@needs_triton
def test_triton_learnable_rates_with_frozen_inputs():
    """Only the rates learn (q, k, v without gradients): the kernels' backward still runs for them."""
    grads = []
    for backend, device in (("reference", "cpu"), ("triton", DEVICE)):
        q, k, v = _qkv(1, 4, 2, 40, 40, device=device)
        rate = torch.tensor([0.05, 0.1, 0.2, 0.4], device=device, requires_grad=True)
        out, lse = foveate.attention(q, k, v, P.Causal(), score_mod=S.DistanceDecay(rate) + S.Softcap(2.0),
                                     backend=backend, return_lse=True)
        (out.sum() + lse.sum()).backward()
        grads.append(rate.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("view", ["transposed", "expanded-heads", "sliced"])
def test_triton_dense_bias_views(view):
    """A bias that is a strided view of its parameter: read and differentiated through its strides."""
    gen = torch.Generator().manual_seed(5)
    shape = {"transposed": (1, 4, 40, 40), "expanded-heads": (1, 1, 40, 40), "sliced": (2, 4, 40, 80)}[view]
    base0 = torch.randn(*shape, generator=gen)
    results = []
    for backend, device in (("reference", "cpu"), ("triton", DEVICE)):
        q, k, v = _qkv(2, 4, 2, 40, 40, device=device)
        base = base0.to(device).detach().requires_grad_()  # (a leaf on either device)
        bias = {"transposed": lambda: base.transpose(-1, -2), "expanded-heads": lambda: base.expand(2, 4, 40, 40),
                "sliced": lambda: base[..., ::2]}[view]()
        out, lse = foveate.attention(q, k, v, P.Causal(), score_mod=S.DenseBias(bias) + S.Softcap(2.0), backend=backend,
                                     return_lse=True)
        (out.sum() + lse.sum()).backward()
        results.append((out.detach().cpu(), base.grad.cpu()))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("case, backend", [
    ("dense", "reference"), ("decay", "reference"), ("rpb_t5", "reference"),
    pytest.param("dense", "triton", marks=needs_triton), pytest.param("decay", "triton", marks=needs_triton),
])
def test_float64_tensors_with_float32_inputs(case, backend):
    """The modification's tensors in float64, the inputs in float32: the scores are computed at the
    inputs' precision, the gradients come back in float64."""
    pattern, dims = TRITON_SCORE_CONFIGS["causal-gqa"]
    ctx = Ctx(**dims)
    got = run_case(SEQUENCE_CASES[case], pattern, sequence_mask(pattern, ctx.Nq, ctx.Nkv), ctx, backend=backend,
                   dtype=torch.float32, head_dim=16, tol=2e-5, lse_tol=2e-5, tensor_dtype=F64)
    assert all(t.dtype == F64 for t in got[3:])


_STRIDED_RATES = r"""
import torch
if not torch.cuda.is_available():
    import os
    os.environ["TRITON_INTERPRET"] = "1"
import foveate
from foveate import patterns as P, score_mods as S
dev = "cuda" if torch.cuda.is_available() else "cpu"
gen = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 4, 40, 16, generator=gen).to(dev) for _ in range(3))
grads = []
for backend in ("reference", "triton"):
    base = torch.linspace(0.05, 0.4, 8, device=dev).reshape(4, 2).requires_grad_()
    rate = base[:, 0]  # one rate per head, every other element of its storage (stride 2)
    out = foveate.attention(q, k, v, P.Causal(), score_mod=S.DistanceDecay(rate), backend=backend)
    out.sum().backward()
    grads.append(base.grad.cpu())
print(grads[0].tolist(), grads[1].tolist())
torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)
"""


@needs_triton
def test_triton_rates_not_contiguous():
    """Rates that are a strided view (a column of a parameter): their gradient lands in the right
    elements, and nowhere else (run in a child process: a write out of bounds may crash it)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _STRIDED_RATES], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


# -- backends: which run what ----------------------------------------------------------------------------------


def _never_run(monkeypatch):
    def never(*a, **k):
        raise AssertionError("a backend ran")

    for name in ("torch", "triton"):
        cls = type(foveate.backends.get(name))
        monkeypatch.setattr(cls, "forward", never)
        monkeypatch.setattr(cls, "forward_tiled", never)


REFUSED = {  # by the torch backend; by the Triton kernels too (docs/usage.md: reference and flex only)
    "rpb": lambda d: S.RelativePositionBias(torch.zeros(2, 8, device=d)),
    "function": lambda d: _fn,
    "score-function": lambda d: S.ScoreFunction(_fn),
    "decay-on-a-canvas": lambda d: S.DistanceDecay(torch.tensor([0.5], device=d), canvas=(4, 4)),
    "two-distance-biases": lambda d: S.ALiBi() + S.DistanceDecay(torch.tensor([0.5], device=d)),
    "softcap-then-alibi": lambda d: S.Softcap(3.0) + S.ALiBi(),
    "two-softcaps": lambda d: S.Softcap(3.0) + S.Softcap(2.0),
    "rpb+softcap": lambda d: S.RelativePositionBias(torch.zeros(2, 8, device=d)) + S.Softcap(3.0),
    "two-dense-biases": lambda d: (S.DenseBias(torch.zeros(1, 2, 16, 16, device=d))
                                   + S.DenseBias(torch.zeros(1, 1, 16, 16, device=d))),
}
TAKEN_BY_TRITON = {  # refused by the torch backend
    "softcap": lambda d: S.Softcap(3.0),
    "alibi": lambda d: S.ALiBi(),
    "decay": lambda d: S.DistanceDecay(0.5),
    "low-rank+softcap": lambda d: S.LowRankBias(torch.zeros(1, 1, 16, 2), torch.zeros(1, 1, 16, 2)) + S.Softcap(3.0),
    "dense": lambda d: S.DenseBias(torch.zeros(1, 2, 16, 16)),
}


@pytest.mark.parametrize("mod", list(REFUSED) + list(TAKEN_BY_TRITON))
def test_torch_backend_refuses_modifications(mod, monkeypatch):
    _never_run(monkeypatch)
    make = {**REFUSED, **TAKEN_BY_TRITON}[mod]
    with pytest.raises(ValueError, match="score_mod"):
        foveate.attention(*_qkv(), P.Causal(), score_mod=make("cpu"), backend="torch")


@needs_triton
@pytest.mark.parametrize("mod", REFUSED)
def test_triton_backend_refuses_modifications(mod, monkeypatch):
    _never_run(monkeypatch)
    with pytest.raises(ValueError, match="score_mod"):
        foveate.attention(*_qkv(device=DEVICE), P.Causal(), score_mod=REFUSED[mod](DEVICE), backend="triton")


@needs_triton
@pytest.mark.parametrize("case", [c for c in SEQUENCE_CASES if c not in TRITON_SCORE_CASES + LOW_RANK_CASES])
def test_triton_runs_or_refuses(case, triton_spy):
    """Every other modification on the Triton backend: refused before any kernel runs (a
    ValueError naming score_mod), or else right (out, lse and every gradient)."""
    pattern, dims = TRITON_SCORE_CONFIGS["causal-gqa"]
    ctx = Ctx(**dims)
    try:
        run_case(SEQUENCE_CASES[case], pattern, sequence_mask(pattern, ctx.Nq, ctx.Nkv), ctx, backend="triton",
                 dtype=torch.float32, head_dim=16, tol=2e-5, lse_tol=2e-5)
    except ValueError as e:
        assert "score_mod" in str(e) and triton_spy["fwd"] == 0, str(e)
    else:
        assert triton_spy["fwd"] >= 1 and triton_spy["bwd"] >= 1


@needs_triton
def test_triton_backend_refuses_modifications_on_a_canvas(monkeypatch):
    _never_run(monkeypatch)
    q, k, v = _qkv(nq=64, nkv=64, device=DEVICE)
    with pytest.raises(ValueError, match="score_mod"):
        foveate.attention(q, k, v, P.Neighborhood(canvas=(8, 8), kernel=(3, 3)), score_mod=S.Softcap(3.0),
                          backend="triton")


@pytest.mark.parametrize("mod, want", [
    (lambda: S.Softcap(3.0), "reference"), (lambda: S.ALiBi() + S.DenseBias(torch.zeros(1, 1, 16, 16)), "reference"),
    (lambda: _fn, "reference"),
    (lambda: S.LowRankBias(torch.zeros(1, 1, 16, 2), torch.zeros(1, 1, 16, 2)) + S.Softcap(3.0), "reference"),
    (lambda: S.LowRankBias(torch.zeros(1, 1, 16, 2), torch.zeros(1, 1, 16, 2)), "torch"),
], ids=["softcap", "chain", "function", "low-rank+softcap", "low-rank"])
def test_auto_backend_on_cpu(mod, want, monkeypatch):
    chosen = []
    real = foveate.backends.select

    def select(problem, name="auto"):
        backend = real(problem, name)
        chosen.append(backend.name)
        return backend

    monkeypatch.setattr(foveate.backends, "select", select)
    q, k, v = _qkv()
    out = foveate.attention(q, k, v, P.Causal(), score_mod=mod())
    assert chosen == [want]
    assert out.shape == q.shape


def test_flex_refuses_grad_and_lse_on_cpu():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="lse"):
        foveate.attention(q, k, v, P.Causal(), score_mod=S.Softcap(3.0), backend="flex", return_lse=True)
    with pytest.raises(ValueError, match="backward"):
        foveate.attention(q.requires_grad_(), k, v, P.Causal(), score_mod=S.Softcap(3.0), backend="flex")


FLEX_CASES = {
    # (case, pattern, dims): the shapes of "low-rank" are those of the learnable test below (one compile)
    "alibi+dense+softcap-window-gqa": (case_chain_alibi_dense_cap, P.SlidingWindow(5, 2),
                                       dict(B=1, Hq=4, Hkv=2, Nq=24, Nkv=32)),
    "low-rank-causal": (case_low_rank, P.Causal(), dict(B=1, Hq=2, Hkv=2, Nq=32, Nkv=32)),
}


@pytest.mark.parametrize("name", FLEX_CASES)
def test_flex_forward_on_cpu(name):
    case, pattern, dims = FLEX_CASES[name]
    ctx = Ctx(**dims)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(ctx.B, h, n, 16, generator=gen, dtype=F64)
               for h, n in ((ctx.Hq, ctx.Nq), (ctx.Hkv, ctx.Nkv), (ctx.Hkv, ctx.Nkv)))
    tensors, build, naive_mod = case(ctx, gen)
    tensors = [t.detach() for t in tensors]
    out = foveate.attention(q.float(), k.float(), v.float(), pattern, backend="flex",
                            score_mod=build(*(t.float() for t in tensors)))
    want, _ = naive_attention(q, k, v, sequence_mask(pattern, ctx.Nq, ctx.Nkv), 0.25, lambda s: naive_mod(s, *tensors))
    torch.testing.assert_close(out.to(F64), want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("mod", ["low-rank", "dense"])
def test_flex_on_cpu_with_learnable_tensors(mod):
    """q, k, v frozen, the modification's tensors learnable: FlexAttention has no backward on CPU, so
    the call is refused, or else the output carries the gradient (never silently detached)."""
    q, k, v = _qkv(nq=32, nkv=32)
    if mod == "low-rank":
        u, w = torch.randn(1, 2, 32, 3, requires_grad=True), torch.randn(1, 2, 32, 3, requires_grad=True)
        score_mod, learnable = S.LowRankBias(u, w), (u, w)
    else:
        bias = torch.randn(1, 2, 32, 32, requires_grad=True)
        score_mod, learnable = S.DenseBias(bias), (bias,)
    try:
        out = foveate.attention(q, k, v, P.Causal(), score_mod=score_mod, backend="flex")
    except ValueError as e:
        assert "backward" in str(e) or "grad" in str(e)
    else:
        assert out.requires_grad, "the gradient of the modification's tensors was dropped"
        grads = torch.autograd.grad(out.sum(), learnable)
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


# -- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, error, name", [
    (lambda: S.Softcap(0), ValueError, "cap"),
    (lambda: S.Softcap(-2.0), ValueError, "cap"),
    (lambda: S.Softcap(float("inf")), ValueError, "cap"),
    (lambda: S.Softcap(float("nan")), ValueError, "cap"),
    (lambda: S.Softcap("3"), TypeError, "cap"),
    (lambda: S.Softcap(True), TypeError, "cap"),
    (lambda: S.DistanceDecay("fast"), TypeError, "rate"),
    (lambda: S.DistanceDecay([]), TypeError, "rate"),
    (lambda: S.DistanceDecay(torch.ones(2, 2)), ValueError, "rate"),
    (lambda: S.DistanceDecay(torch.tensor([1, 2])), TypeError, "rate"),
    (lambda: S.DistanceDecay(0.5, canvas=(0, 3)), ValueError, "canvas"),
    (lambda: S.ALiBi(slopes=torch.ones(2, 2)), ValueError, "slopes"),
    (lambda: S.ALiBi(slopes="steep"), TypeError, "slopes"),
    (lambda: S.ALiBi(slopes=torch.tensor([1, 2])), TypeError, "slopes"),
    (lambda: S.RelativePositionBias("table"), TypeError, "table"),
    (lambda: S.RelativePositionBias([[0.0, 1.0]]), TypeError, "table"),
    (lambda: S.RelativePositionBias(torch.zeros(2, 8, dtype=torch.long)), TypeError, "table"),
    (lambda: S.RelativePositionBias(torch.zeros(2, 8, 1)), ValueError, "table"),
    (lambda: S.RelativePositionBias(torch.zeros(2, 8), buckets=6), ValueError, "buckets"),
    (lambda: S.RelativePositionBias(torch.zeros(2, 1)), ValueError, "buckets"),
    (lambda: S.RelativePositionBias(torch.zeros(2, 8), max_distance=0), ValueError, "max_distance"),
    (lambda: S.RelativePositionBias(torch.zeros(2, 8), bidirectional="yes"), TypeError, "bidirectional"),
    (lambda: S.RelativePositionBias(torch.zeros(2, 9), canvas=(4, 4)), ValueError, "window"),
    (lambda: S.RelativePositionBias(torch.zeros(2, 9), window=2), ValueError, "canvas"),
    (lambda: S.RelativePositionBias(torch.zeros(2, 9), canvas=(4, 4), window=(2, 2, 2)), ValueError, "window"),
    (lambda: S.RelativePositionBias(torch.zeros(2, 10), canvas=(4, 4), window=2), ValueError, "table"),
    (lambda: S.RelativePositionBias(torch.zeros(2, 3, 4), canvas=(4, 4), window=2), ValueError, "table"),
    (lambda: S.LowRankBias("u", torch.zeros(1, 1, 4, 2)), TypeError, "u"),
    (lambda: S.LowRankBias(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2, dtype=torch.long)), TypeError, "w"),
    (lambda: S.LowRankBias(torch.zeros(1, 4, 2), torch.zeros(1, 1, 4, 2)), ValueError, "u"),
    (lambda: S.LowRankBias(torch.zeros(1, 1, 4, 2), torch.zeros(1, 4, 2)), ValueError, "w"),
    (lambda: S.LowRankBias(torch.zeros(1, 1, 4, 3), torch.zeros(1, 1, 4, 2)), ValueError, "rank"),
    (lambda: S.DenseBias([[0.0]]), TypeError, "bias"),
    (lambda: S.DenseBias(torch.zeros(1, 4, 4)), ValueError, "bias"),
    (lambda: S.DenseBias(torch.zeros(1, 1, 4, 4, dtype=torch.int32)), TypeError, "bias"),
    (lambda: S.ScoreFunction(3), TypeError, "score_mod"),
])
def test_bad_construction(make, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        make()


def test_chain_takes_only_modifications():
    with pytest.raises(TypeError):
        S.Softcap(1.0) + 3
    with pytest.raises(TypeError):
        S.Softcap(1.0) + _fn


B, HQ, HKV, NQ, NKV = 2, 4, 2, 8, 12
META = torch.device("meta")


def _z(*shape, device="cpu", learn=False):
    return torch.zeros(*shape, device=device, dtype=F64).requires_grad_(learn)


BAD_CALLS = {
    "rate-heads": (lambda: S.DistanceDecay(_z(3, learn=True)), ValueError, "rate"),
    "rate-device": (lambda: S.DistanceDecay(_z(HQ, device=META)), ValueError, "rate"),
    "decay-canvas": (lambda: S.DistanceDecay(0.5, canvas=(3, 3)), ValueError, "canvas"),
    "slopes-heads": (lambda: S.ALiBi(slopes=_z(3)), ValueError, "slopes"),
    "slopes-device": (lambda: S.ALiBi(slopes=_z(HQ, device=META)), ValueError, "slopes"),
    "table-heads": (lambda: S.RelativePositionBias(_z(3, 8, learn=True)), ValueError, "table"),
    "table-device": (lambda: S.RelativePositionBias(_z(HQ, 8, device=META)), ValueError, "table"),
    "table-canvas": (lambda: S.RelativePositionBias(_z(HQ, 9), canvas=(3, 3), window=2), ValueError, "canvas"),
    "u-batch": (lambda: S.LowRankBias(_z(3, HQ, NQ, 2), _z(1, HKV, NKV, 2)), ValueError, "u"),
    "u-heads": (lambda: S.LowRankBias(_z(B, 3, NQ, 2, learn=True), _z(1, HKV, NKV, 2)), ValueError, "u"),
    "u-heads-kv": (lambda: S.LowRankBias(_z(B, HKV, NQ, 2), _z(1, HKV, NKV, 2)), ValueError, "u"),
    "u-rows": (lambda: S.LowRankBias(_z(B, HQ, NQ + 1, 2), _z(1, HKV, NKV, 2)), ValueError, "u"),
    "w-batch": (lambda: S.LowRankBias(_z(B, HQ, NQ, 2), _z(3, HKV, NKV, 2)), ValueError, "w"),
    "w-heads": (lambda: S.LowRankBias(_z(B, HQ, NQ, 2), _z(1, 3, NKV, 2, learn=True)), ValueError, "w"),
    "w-rows": (lambda: S.LowRankBias(_z(B, HQ, NQ, 2), _z(1, HKV, NKV - 1, 2)), ValueError, "w"),
    "u-device": (lambda: S.LowRankBias(_z(B, HQ, NQ, 2, device=META), _z(1, HKV, NKV, 2)), ValueError, "u"),
    "w-device": (lambda: S.LowRankBias(_z(B, HQ, NQ, 2), _z(1, HKV, NKV, 2, device=META)), ValueError, "w"),
    "low-rank-after-softcap": (lambda: S.Softcap(2.0) + S.LowRankBias(_z(B, HQ, NQ, 2), _z(1, HKV, NKV, 2)),
                               ValueError, "LowRankBias"),
    "low-rank-after-function": (lambda: S.ScoreFunction(_fn) + S.LowRankBias(_z(B, HQ, NQ, 2), _z(1, HKV, NKV, 2)),
                                ValueError, "LowRankBias"),
    "bias-batch": (lambda: S.DenseBias(_z(3, HQ, NQ, NKV, learn=True)), ValueError, "bias"),
    "bias-heads": (lambda: S.DenseBias(_z(B, HKV, NQ, NKV)), ValueError, "bias"),
    "bias-pairs": (lambda: S.DenseBias(_z(B, HQ, NKV, NQ)), ValueError, "bias"),
    "bias-device": (lambda: S.DenseBias(_z(1, 1, NQ, NKV, device=META)), ValueError, "bias"),
    "chain-second-part": (lambda: S.ALiBi() + S.DenseBias(_z(B, HQ, NQ, NKV - 1)), ValueError, "bias"),
    "score-mod-int": (lambda: 3, TypeError, "score_mod"),
    "score-mod-str": (lambda: "alibi", TypeError, "score_mod"),
    "score-mod-list": (lambda: [S.Softcap(1.0)], TypeError, "score_mod"),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_call(name, monkeypatch):
    make, error, arg = BAD_CALLS[name]

    def never(*a, **k):
        raise AssertionError("a backend was chosen before the check")

    monkeypatch.setattr(foveate.backends, "select", never)
    q, k, v = _qkv(B, HQ, HKV, NQ, NKV, d=8, dtype=F64)
    q.requires_grad_()
    score_mod = make()
    tensors = [t for t in (score_mod.parameters() if isinstance(score_mod, S.ScoreMod) else ())
               if t.device.type != "meta"]
    before = [t.detach().clone() for t in (q, k, v, *tensors)]
    with pytest.raises(error, match=rf"\b{arg}\b"):
        foveate.attention(q, k, v, P.Causal(), score_mod=score_mod, backend="reference")
    for t, b in zip((q, k, v, *tensors), before):
        assert torch.equal(t, b) and t.grad is None


@pytest.mark.parametrize("make", [lambda: S.DistanceDecay(0.5), lambda: S.ALiBi(slopes=[0.5, 0.25, 0.125, 0.0625])],
                         ids=["decay-number", "alibi-list"])
def test_rates_given_as_numbers_on_another_device(make, monkeypatch):
    """Rates given as numbers carry no device: they pass the checks for inputs on any device (the
    meta device stands in for a GPU here) and are applied there."""

    class Checked(Exception):
        pass

    def select(*a, **k):
        raise Checked

    monkeypatch.setattr(foveate.backends, "select", select)
    q = torch.empty(1, 4, 8, 16, device=META)
    with pytest.raises(Checked):
        foveate.attention(q, q, q, P.Causal(), score_mod=make(), backend="reference")


@pytest.mark.parametrize("window, ok", [((3, 3), True), ((3, 2), False), ((2, 3), False)])
def test_canvas_table_window_against_the_neighborhood(window, ok, monkeypatch):
    """A neighborhood of kernel 3 reaches offsets of 2: a window of 3 holds them, 2 does not."""
    canvas = (5, 5)
    pattern = P.Neighborhood(canvas=canvas, kernel=(3, 3))
    table = _z(1, 2 * window[0] - 1, 2 * window[1] - 1)
    mod = S.RelativePositionBias(table, canvas=canvas, window=window)
    q, k, v = _qkv(1, 1, 1, 25, 25, d=8, dtype=F64)
    if ok:
        foveate.attention(q, k, v, pattern, score_mod=mod, backend="reference")
        return
    monkeypatch.setattr(foveate.backends, "select", lambda *a: pytest.fail("a backend was chosen"))
    with pytest.raises(ValueError, match="table"):
        foveate.attention(q, k, v, pattern, score_mod=mod, backend="reference")


def test_canvas_table_window_compositions():
    """An intersection reaches as far as its nearest neighborhood, a union as its farthest."""
    canvas = (5, 5)
    near, far = P.Neighborhood(canvas=canvas, kernel=(3, 3)), P.Neighborhood(canvas=canvas, kernel=(5, 5))
    mod = S.RelativePositionBias(_z(1, 5, 5), canvas=canvas, window=3)
    q, k, v = _qkv(1, 1, 1, 25, 25, d=8, dtype=F64)
    foveate.attention(q, k, v, near & far, score_mod=mod, backend="reference")
    with pytest.raises(ValueError, match="table"):
        foveate.attention(q, k, v, near | far, score_mod=mod, backend="reference")
    with pytest.raises(ValueError, match="table"):
        foveate.attention(q, k, v, far, score_mod=mod, backend="reference")


@pytest.mark.parametrize("make", [
    lambda: S.DistanceDecay(0.1, canvas=(2, 8)),
    lambda: S.RelativePositionBias(torch.zeros(1, 49), canvas=(2, 8), window=4),
], ids=["decay", "rpb"])
def test_a_canvas_modification_must_be_on_the_patterns_canvas(make):
    """The same number of tokens on another canvas shape is refused (its coordinates differ)."""
    q = torch.randn(1, 1, 16, 16)
    with pytest.raises(ValueError, match="canvas"):
        foveate.attention(q, q, q, P.Neighborhood((4, 4), 3), score_mod=make(), backend="reference")
