"""The modules of ``foveate.nn``: NATTEN 0.21-compatible ``NeighborhoodAttention1D/2D/3D`` and
the general ``SelfAttention``.

The oracle is written here from NATTEN 0.21's own definition of the neighborhood (its
FlexAttention mask, ``natten/backends/flex.py``: window radii ``w // 2`` and
``w // 2 + w % 2 - 1`` around the stride group's leader, clamped into the dilation group;
causal: keys at or before the query, fewer than ``w`` before the leader) and of its module
(``natten/modules.py``: one ``qkv`` Linear whose outputs split as ``(3, heads, head_dim)``,
``proj``, ``proj_drop``), with plain loops and a textbook softmax: independent of foveate's
``Neighborhood``, layouts and backends.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from brute import neighborhood_mask
from foveate import patterns as P
from foveate.nn.attention import SelfAttention
from foveate.nn.natten import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D

NATTEN_KEYS = ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
MODULES = {1: NeighborhoodAttention1D, 2: NeighborhoodAttention2D, 3: NeighborhoodAttention3D}


# -- the oracle ---------------------------------------------------------------------------------


def natten_axis_sees(x: int, y: int, length: int, kernel: int, stride: int, dilation: int, causal: bool) -> bool:
    """NATTEN 0.21: along one axis, does the query at ``x`` see the key at ``y``?"""
    if x % dilation != y % dilation:
        return False
    xg, yg = x // dilation, y // dilation
    lg = length // dilation + (1 if x % dilation < length % dilation else 0)  # the group's length
    if causal:
        leader = min((xg // stride) * stride + stride - 1, lg - 1)  # the last query of the stride group
        return yg <= xg and leader - yg < kernel
    left, right = kernel // 2, kernel // 2 + kernel % 2 - 1
    leader = min((xg // stride) * stride + stride // 2, lg - 1)  # the centre query of the stride group
    centre = min(max(leader, left), lg - 1 - right)
    return centre - left <= yg <= centre + right


def natten_mask(spatial, kernel, stride=1, dilation=1, causal=False) -> torch.Tensor:
    """``(N, N)`` bool, tokens in raster order: NATTEN's neighborhood on ``spatial``."""
    nd = len(spatial)
    kernel, stride, dilation, causal = (v if isinstance(v, tuple) else (v,) * nd
                                        for v in (kernel, stride, dilation, causal))
    tables = [[[natten_axis_sees(x, y, n, kernel[a], stride[a], dilation[a], causal[a]) for y in range(n)]
               for x in range(n)] for a, n in enumerate(spatial)]
    coords = list(itertools.product(*(range(n) for n in spatial)))
    return torch.tensor([[all(tables[a][qc[a]][kc[a]] for a in range(nd)) for kc in coords] for qc in coords])


def with_extra(mask: torch.Tensor, extra: int, first: bool) -> torch.Tensor:
    """The canvas mask with ``extra`` global tokens before (``first``) or after the canvas."""
    n = mask.shape[0] + extra
    full = torch.ones(n, n, dtype=torch.bool)
    part = slice(extra, n) if first else slice(0, n - extra)
    full[part, part] = mask
    return full


def brute_self_attention(x, params: dict, heads: int, mask: torch.Tensor, scale: float | None = None):
    """NATTEN's module, textbook: ``x`` ``(B, ..., C)``, ``mask`` ``(N, N)`` over the flat tokens."""
    b, c = x.shape[0], x.shape[-1]
    xf = x.reshape(b, -1, c)
    n, hd = xf.shape[1], c // heads
    qkv = F.linear(xf, params["qkv.weight"], params.get("qkv.bias")).reshape(b, n, 3, heads, hd)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, hd)
    scores = (q @ k.transpose(-1, -2)) * (hd ** -0.5 if scale is None else scale)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, params["proj.weight"], params["proj.bias"]).reshape(x.shape)


def check_against_brute(module, x, mask, gen, *, atol=1e-9, rtol=1e-7, scale=None):
    """Forward and gradients (input and every parameter) of ``module`` against the oracle."""
    names = [name for name, _ in module.named_parameters()]
    xa = x.detach().clone().requires_grad_()
    out = module(xa)
    assert out.shape == x.shape and out.dtype == x.dtype
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(x.dtype)
    grads = torch.autograd.grad((out * grad_out).sum(), [xa, *module.parameters()])

    leaves = {name: p.detach().clone().requires_grad_() for name, p in module.named_parameters()}
    xb = x.detach().clone().requires_grad_()
    ref = brute_self_attention(xb, leaves, module.num_heads, mask, scale=scale)
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), [xb, *leaves.values()])

    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    for name, got, want in zip(["x", *names], grads, ref_grads):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m, name=name: f"d{name}: {m}")


def randn(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def seeded(module, gen):
    """``module`` with its parameters redrawn from ``gen`` (biases non-zero), in float64."""
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(randn(gen, *p.shape) * 0.5)
    return module


# -- the oracle itself --------------------------------------------------------------------------


def test_the_oracle_is_the_clamped_window_and_foveates_definition():
    """For dilation 1 and stride 1 the oracle is ``start = clamp(i - w // 2, 0, L - w)``, and in
    general it is the window of docs/design.md ("Neighborhood", tests/brute.py): NATTEN's
    semantics and foveate's ``Neighborhood`` are the same, per axis, for every small case."""
    for length in range(1, 9):
        for w in range(1, length + 1):
            start = [min(max(i - w // 2, 0), length - w) for i in range(length)]
            want = torch.tensor([[start[i] <= j < start[i] + w for j in range(length)] for i in range(length)])
            assert torch.equal(natten_mask((length,), w), want)
            for d, s, c in itertools.product(range(1, length // w + 1), range(1, w + 1), (False, True)):
                assert torch.equal(natten_mask((length,), w, s, d, c), neighborhood_mask((length,), w, d, s, c)), \
                    (length, w, s, d, c)


# -- NeighborhoodAttention1D/2D/3D against the oracle -------------------------------------------

CASES = [
    # (spatial, kernel_size, stride, dilation, is_causal)
    ((13,), 5, 1, 1, False),
    ((13,), 4, 1, 1, False),            # even kernel: leans left
    ((13,), 3, 1, 3, False),            # dilation, 13 % 3 != 0 (uneven groups)
    ((13,), 6, 3, 2, False),            # stride and dilation
    ((13,), 4, 1, 1, True),
    ((13,), 5, 2, 2, True),             # causal, strided, dilated
    ((13,), 13, 1, 1, False),           # the whole sequence: dense
    ((13,), 1, 1, 1, False),            # each token alone
    ((6, 7), (3, 5), 1, 1, False),
    ((6, 7), 4, (2, 3), 1, False),
    ((6, 7), 3, 1, (2, 1), False),
    ((6, 7), (3, 4), (1, 2), (1, 1), (True, False)),
    ((3, 4, 5), (2, 3, 3), (1, 2, 1), (1, 1, 1), (True, False, False)),
    ((3, 4, 5), (3, 2, 4), (3, 1, 2), (1, 2, 1), False),
]


@pytest.mark.parametrize("spatial, kernel, stride, dilation, causal", CASES)
def test_neighborhood_attention_matches_natten(rng, spatial, kernel, stride, dilation, causal):
    module = seeded(MODULES[len(spatial)](8, 2, kernel, stride, dilation, causal, backend="reference"), rng)
    x = randn(rng, 2, *spatial, 8)
    check_against_brute(module, x, natten_mask(spatial, kernel, stride, dilation, causal), rng)


def test_qk_scale_and_no_qkv_bias(rng):
    module = seeded(NeighborhoodAttention2D(8, 2, 3, qkv_bias=False, qk_scale=0.3, backend="reference"), rng)
    assert list(module.state_dict()) == ["qkv.weight", "proj.weight", "proj.bias"]
    assert module.scale == 0.3
    check_against_brute(module, randn(rng, 1, 5, 4, 8), natten_mask((5, 4), 3), rng, scale=0.3)


def test_default_backend(rng):
    """``backend="auto"`` (the block-sparse ``torch`` backend on a CPU), and an input of another
    spatial shape than the last call's (the pattern follows the input)."""
    module = seeded(NeighborhoodAttention2D(8, 4, (3, 2), dilation=(1, 2)), rng)
    for spatial in ((5, 6), (4, 9)):
        check_against_brute(module, randn(rng, 2, *spatial, 8), natten_mask(spatial, (3, 2), 1, (1, 2)), rng)


@pytest.mark.parametrize("spatial, kernel, stride, dilation, causal", [
    ((9,), 4, 2, 2, False),
    ((4, 5), (3, 2), 1, (1, 2), (True, False)),
])
def test_neighborhood_attention_on_triton(rng, spatial, kernel, stride, dilation, causal, triton_spy):
    module = seeded(MODULES[len(spatial)](16, 2, kernel, stride, dilation, causal, backend="triton"), rng).float()
    x = randn(rng, 1, *spatial, 16, dtype=torch.float32)
    # float32 kernels against the float64 oracle on the same (float32-representable) numbers
    names = [name for name, _ in module.named_parameters()]
    xa = x.clone().requires_grad_()
    out = module(xa)
    grad_out = randn(rng, *out.shape, dtype=torch.float32)
    grads = torch.autograd.grad((out * grad_out).sum(), [xa, *module.parameters()])
    assert triton_spy["fwd"] >= 1 and triton_spy["bwd"] >= 1
    leaves = {name: p.detach().double().requires_grad_() for name, p in module.named_parameters()}
    xb = x.double().requires_grad_()
    ref = brute_self_attention(xb, leaves, module.num_heads, natten_mask(spatial, kernel, stride, dilation, causal))
    ref_grads = torch.autograd.grad((ref * grad_out.double()).sum(), [xb, *leaves.values()])
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    for name, got, want in zip(["x", *names], grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4, msg=lambda m, name=name: f"d{name}: {m}")


# -- parameters and state dicts -----------------------------------------------------------------


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_state_dict_is_nattens(nd):
    module = MODULES[nd](12, 3, 3)
    sd = module.state_dict()
    assert list(sd) == NATTEN_KEYS
    assert [tuple(t.shape) for t in sd.values()] == [(36, 12), (36,), (12, 12), (12,)]
    assert isinstance(module.proj_drop, torch.nn.Dropout)
    assert (module.na_dim, module.embed_dim, module.num_heads, module.head_dim) == (nd, 12, 3, 4)
    assert module.kernel_size == (3,) * nd and module.stride == (1,) * nd and module.dilation == (1,) * nd
    assert module.is_causal == (False,) * nd and module.scale == 4 ** -0.5


def test_a_natten_state_dict_loads_unchanged(rng):
    """A state dict laid out as NATTEN's (plain tensors under NATTEN's keys) loads strictly, and
    the module computes NATTEN's function of those tensors (q, k, v outermost in ``qkv``)."""
    sd = {"qkv.weight": randn(rng, 24, 8), "qkv.bias": randn(rng, 24),
          "proj.weight": randn(rng, 8, 8), "proj.bias": randn(rng, 8)}
    module = NeighborhoodAttention1D(8, 2, 5, dilation=2, backend="reference").double()
    module.load_state_dict(sd, strict=True)
    x = randn(rng, 2, 11, 8)
    with torch.no_grad():
        torch.testing.assert_close(module(x), brute_self_attention(x, sd, 2, natten_mask((11,), 5, 1, 2)))


def test_state_dicts_move_between_modules(rng):
    """The 2-D module's parameters in a ``SelfAttention`` over the same ``Neighborhood``, and in the
    1-D and 3-D modules: the same keys and shapes, and the same function where it is the same
    pattern."""
    na2d = seeded(NeighborhoodAttention2D(8, 2, (3, 4), dilation=(2, 1), backend="reference"), rng)
    general = SelfAttention(8, 2, P.Neighborhood((6, 5), (3, 4), dilation=(2, 1)), backend="reference").double()
    general.load_state_dict(na2d.state_dict(), strict=True)
    x = randn(rng, 2, 6, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(general(x), na2d(x), atol=1e-12, rtol=0)
        torch.testing.assert_close(general(x.flatten(1, 2)), na2d(x).flatten(1, 2), atol=1e-12, rtol=0)
    for other in (NeighborhoodAttention1D(8, 2, 3), NeighborhoodAttention3D(8, 2, 3)):
        other.double().load_state_dict(general.state_dict(), strict=True)
        for name, p in other.state_dict().items():
            assert torch.equal(p, na2d.state_dict()[name])


def test_proj_drop(rng):
    module = seeded(NeighborhoodAttention1D(8, 2, 3, proj_drop=0.5, backend="reference"), rng)
    x = randn(rng, 2, 7, 8)
    module.eval()
    check_against_brute(module, x, natten_mask((7,), 3), rng)
    module.train()
    assert (module(x) == 0).any()


# -- SelfAttention ------------------------------------------------------------------------------


def test_self_attention_dense_and_sequence_patterns(rng):
    for pattern, mask in ((None, torch.ones(10, 10, dtype=torch.bool)),
                          (P.Causal(), torch.ones(10, 10, dtype=torch.bool).tril()),
                          (P.SlidingWindow(2, 1), torch.ones(10, 10, dtype=torch.bool).tril(1).triu(-2))):
        module = seeded(SelfAttention(8, 2, pattern, backend="reference"), rng)
        assert list(module.state_dict()) == NATTEN_KEYS
        check_against_brute(module, randn(rng, 2, 10, 8), mask, rng)


@pytest.mark.parametrize("extra_first", [True, False])
@pytest.mark.parametrize("pattern, canvas_mask, tol", [
    # a Neighborhood takes the extra keys itself (extra_kv): one call, float64 throughout
    (P.Neighborhood((4, 5), (3, 2), dilation=(1, 2)), natten_mask((4, 5), (3, 2), 1, (1, 2)), 1e-9),
    # any other pattern: two calls merged by their log-sum-exp, which attention() returns in
    # float32 (so float32 accuracy, also for float64 inputs)
    (P.SlidingWindow(3, 0), torch.tril(torch.ones(9, 9, dtype=torch.bool)).triu(-3), 1e-5),
])
def test_self_attention_with_extra_tokens(rng, pattern, canvas_mask, tol, extra_first):
    module = seeded(SelfAttention(8, 2, pattern, extra=3, extra_first=extra_first, backend="reference"), rng)
    n = canvas_mask.shape[0] + 3
    check_against_brute(module, randn(rng, 2, n, 8), with_extra(canvas_mask, 3, extra_first), rng,
                        atol=tol, rtol=tol)


def test_self_attention_with_extra_tokens_on_triton(rng, triton_spy):
    """The merged path (a sequence pattern, then the extra keys, merged by lse) on the kernels."""
    module = seeded(SelfAttention(16, 2, P.SlidingWindow(2, 0), extra=2, extra_first=True, backend="triton"),
                    rng).float()
    mask = with_extra(torch.tril(torch.ones(6, 6, dtype=torch.bool)).triu(-2), 2, True)
    x = randn(rng, 1, 8, 16, dtype=torch.float32)
    xa = x.clone().requires_grad_()
    out = module(xa)
    grad_out = randn(rng, *out.shape, dtype=torch.float32)
    dx, dw = torch.autograd.grad((out * grad_out).sum(), [xa, module.qkv.weight])
    assert triton_spy["fwd"] >= 1 and triton_spy["bwd"] >= 1
    leaves = {name: p.detach().double().requires_grad_() for name, p in module.named_parameters()}
    xb = x.double().requires_grad_()
    ref = brute_self_attention(xb, leaves, 2, mask)
    ref_dx, ref_dw = torch.autograd.grad((ref * grad_out.double()).sum(), [xb, leaves["qkv.weight"]])
    for got, want in ((out, ref), (dx, ref_dx), (dw, ref_dw)):
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4)


# -- bad arguments ------------------------------------------------------------------------------

BAD_CONSTRUCTIONS = [
    (lambda: NeighborhoodAttention2D(10, 3, 3), ValueError, "num_heads"),
    (lambda: NeighborhoodAttention2D(8.0, 2, 3), TypeError, "embed_dim"),
    (lambda: NeighborhoodAttention2D(8, 0, 3), ValueError, "num_heads"),
    (lambda: NeighborhoodAttention2D(8, 2, (3, 3, 3)), ValueError, "kernel_size"),
    (lambda: NeighborhoodAttention2D(8, 2, 0), ValueError, "kernel_size"),
    (lambda: NeighborhoodAttention2D(8, 2, "3"), TypeError, "kernel_size"),
    (lambda: NeighborhoodAttention1D(8, 2, 3, stride=4), ValueError, "stride"),
    (lambda: NeighborhoodAttention1D(8, 2, 3, stride=0), ValueError, "stride"),
    (lambda: NeighborhoodAttention3D(8, 2, 3, dilation=(1, 0, 1)), ValueError, "dilation"),
    (lambda: NeighborhoodAttention2D(8, 2, 3, is_causal=1), TypeError, "is_causal"),
    (lambda: NeighborhoodAttention2D(8, 2, 3, is_causal=(True,)), ValueError, "is_causal"),
    (lambda: NeighborhoodAttention1D(8, 2, 3, qkv_bias=None), TypeError, "qkv_bias"),
    (lambda: NeighborhoodAttention1D(8, 2, 3, qk_scale=-1.0), ValueError, "qk_scale"),
    (lambda: NeighborhoodAttention1D(8, 2, 3, qk_scale="0.1"), TypeError, "qk_scale"),
    (lambda: NeighborhoodAttention1D(8, 2, 3, proj_drop=1.5), ValueError, "proj_drop"),
    (lambda: NeighborhoodAttention1D(8, 2, 3, backend="nope"), ValueError, "backend"),
    (lambda: NeighborhoodAttention1D(8, 2, 3, backend=None), TypeError, "backend"),
    (lambda: SelfAttention(8, 2, "causal"), TypeError, "pattern"),
    (lambda: SelfAttention(8, 2, P.Neighborhood((4, 4), 3, extra_kv=2)), ValueError, "extra"),
    (lambda: SelfAttention(8, 2, extra=-1), ValueError, "extra"),
    (lambda: SelfAttention(8, 2, extra=1.0), TypeError, "extra"),
    (lambda: SelfAttention(8, 2, extra=1, extra_first=1), TypeError, "extra_first"),
    (lambda: SelfAttention(9, 2), ValueError, "num_heads"),
]


@pytest.mark.parametrize("build, error, name", BAD_CONSTRUCTIONS)
def test_bad_construction_raises_naming_the_argument(build, error, name):
    with pytest.raises(error, match=name):
        build()


BAD_INPUTS = [
    (lambda: NeighborhoodAttention2D(8, 2, 3), (2, 5, 8), ValueError, r"\(B, X, Y, C\)"),
    (lambda: NeighborhoodAttention2D(8, 2, 3), (2, 5, 5, 5, 8), ValueError, r"\(B, X, Y, C\)"),
    (lambda: NeighborhoodAttention1D(8, 2, 3), (2, 5, 6), ValueError, "embed_dim"),
    (lambda: NeighborhoodAttention2D(8, 2, 3, dilation=2), (2, 6, 5, 8), ValueError, "kernel_size"),
    (lambda: NeighborhoodAttention3D(8, 2, (2, 3, 3)), (1, 2, 3, 2, 8), ValueError, "kernel_size"),
    (lambda: SelfAttention(8, 2, P.Neighborhood((4, 5), 3)), (2, 21, 8), ValueError, "prod"),
    (lambda: SelfAttention(8, 2, P.Neighborhood((4, 5), 3)), (2, 5, 4, 8), ValueError, "x must be"),
    (lambda: SelfAttention(8, 2, P.Neighborhood((4, 5), 3), extra=2), (2, 4, 5, 8), ValueError, "flat"),
    (lambda: SelfAttention(8, 2, P.Neighborhood((4, 5), 3), extra=2), (2, 20, 8), ValueError, "extra"),
    (lambda: SelfAttention(8, 2, P.Causal(), extra=4), (2, 4, 8), ValueError, "extra"),
    (lambda: SelfAttention(8, 2, P.Causal()), (2, 4, 4, 8), ValueError, "x must be"),
]


@pytest.mark.parametrize("build, shape, error, match", BAD_INPUTS)
def test_bad_input_raises_and_changes_nothing(rng, build, shape, error, match):
    module = build()
    before = {name: t.clone() for name, t in module.state_dict().items()}
    x = randn(rng, *shape, dtype=torch.float32)
    x_before = x.clone()
    with pytest.raises(error, match=match):
        module(x)
    assert torch.equal(x, x_before)
    after = module.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_bad_input_types(rng):
    module = NeighborhoodAttention1D(8, 2, 3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        module([[0.0] * 8] * 5)
    with pytest.raises(TypeError, match="floating-point"):
        module(torch.zeros(1, 5, 8, dtype=torch.int64))
    general = SelfAttention(8, 2, P.Causal())
    general.pattern = "causal"  # a pattern set later is checked when used
    with pytest.raises(TypeError, match="pattern"):
        general(torch.zeros(1, 5, 8))


def test_numpy_integers_and_lists_are_accepted():
    np = pytest.importorskip("numpy")
    module = NeighborhoodAttention2D(np.int64(8), np.int32(2), [np.int64(3), 2], stride=[1, np.int8(2)])
    assert module.kernel_size == (3, 2) and module.stride == (1, 2)
    assert all(type(v) is int for v in (*module.kernel_size, *module.stride, module.embed_dim, module.num_heads))
    assert math.isclose(module.scale, 4 ** -0.5)
