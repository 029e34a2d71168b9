"""The Triton kernel of the token permutation (``foveate.tiling.permute_triton``) against the torch path.

``TiledOrder.tile_tokens`` / ``untile_tokens`` with ``method="triton"`` must equal
``method="torch"`` (the reshape/permute reference, itself checked against brute force in
``test_tiling.py``) bit for bit: it is a copy. Without a GPU, ``conftest.py`` sets
``TRITON_INTERPRET=1`` and the kernel runs in Triton's interpreter (small shapes). The kernel
moves bits (elements reinterpreted as integers), so bfloat16 and float64 run in the interpreter
as well as float16 and float32.

Covered: 1-D, 2-D and 3-D canvases, tiles that do not divide the canvas (padding) or are larger
than it, odd head dims, lse-shaped tensors without a feature axis, non-contiguous inputs
(transposed, strided head dim, broadcast batch), several programs per head and column loops
(small launch configs), gradients (gradcheck in float64, double backward) and the dispatch of
``method``. Every test that means to run the kernel checks through a spy that it ran.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import brute
from kernel_spy import DEVICE, KernelSpy, needs_triton
from foveate.tiling import permute_triton as tiling_triton
from foveate.tiling import TiledOrder
from strategies import tile_of

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16

pytestmark = needs_triton

CASES = [  # (canvas, tile): divides, pads, tile larger than the canvas, odd tiles, 1-D to 3-D
    ((10,), (4,)),
    ((8, 16), (4, 8)),
    ((7, 10), (4, 4)),
    ((5, 6), (3, 5)),
    ((3, 5), (8, 8)),
    ((4, 4, 8), (2, 4, 4)),
    ((3, 5, 6), (2, 2, 4)),
    ((2, 3, 7), (1, 3, 3)),
]
CASE_IDS = ["x".join(map(str, c)) + "-t" + "x".join(map(str, t)) for c, t in CASES]
#: ``None``: the default launch config (one program per head at these sizes); ``(32, 4, 4)``:
#: 32 rows and 4 columns per step, so several programs per head and a loop over columns (the
#: interpreter runs programs one by one: few of them keep the tests fast).
SMALL = (32, 4, 4)
CONFIGS = pytest.mark.parametrize("config", [None, SMALL], ids=["default", "small-blocks"])


@pytest.fixture
def spy(monkeypatch):
    s = KernelSpy(tiling_triton._permute_kernel)
    monkeypatch.setattr(tiling_triton, "_permute_kernel", s)
    return s


def _rand(gen, *shape, dtype=F32):
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype).to(DEVICE)


def _tile(order, x, config):
    if config is None:
        return order.tile_tokens(x, method="triton")
    return tiling_triton.tile_tokens(order, x, config=config)


def _untile(order, x, config):
    if config is None:
        return order.untile_tokens(x, method="triton")
    return tiling_triton.untile_tokens(order, x, config=config)


def check_both_directions(order: TiledOrder, x: torch.Tensor, y: torch.Tensor, config=None) -> None:
    """tile(x) and untile(y) (``y`` in tiled order, padding not zero) equal the torch path."""
    got = _tile(order, x, config)
    want = order.tile_tokens(x, method="torch")
    assert got.shape == want.shape and got.dtype == x.dtype and got.is_contiguous()
    assert torch.equal(got, want), f"tile_tokens differs from the torch path for {order}"
    got = _untile(order, y, config)
    want = order.untile_tokens(y, method="torch")
    assert got.shape == want.shape and got.is_contiguous()
    assert torch.equal(got, want), f"untile_tokens differs from the torch path for {order}"
    assert torch.equal(_untile(order, _tile(order, x, config), config), x)


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F16], ids=["f32", "f16"])
@pytest.mark.parametrize("canvas, tile", CASES, ids=CASE_IDS)
@CONFIGS
def test_matches_torch_path(canvas, tile, dtype, config, rng, spy):
    order = TiledOrder(canvas, tile)
    x = _rand(rng, 1, 2, order.num_canvas, 5, dtype=dtype)  # an odd head dim: masked columns
    y = _rand(rng, 1, 2, order.num_tokens, 5, dtype=dtype)
    check_both_directions(order, x, y, config)
    # Against brute force too: tiled position p is raster token t2r[p], zeros at padding.
    t2r, _ = brute.tiled_permutation(canvas, tile)
    tiled = _tile(order, x, config)
    for p, r in enumerate(t2r):
        assert torch.equal(tiled[:, :, p], x[:, :, r] if r >= 0 else torch.zeros_like(x[:, :, 0])), p
    assert spy.launches


@pytest.mark.parametrize("dtype", [BF16, F64, torch.float8_e4m3fn], ids=["bf16", "f64", "fp8"])
@pytest.mark.parametrize("canvas, tile", [((7, 10), (4, 4)), ((3, 5, 6), (2, 2, 4))], ids=["2d", "3d"])
def test_other_dtypes(canvas, tile, dtype, rng, spy):
    # The kernel copies bits: any element size of 1, 2, 4 or 8 bytes.
    order = TiledOrder(canvas, tile)
    x = _rand(rng, 1, 2, order.num_canvas, 16).to(dtype)
    y = _rand(rng, 1, 2, order.num_tokens, 16).to(dtype)
    got = order.tile_tokens(x, method="triton")
    assert got.dtype == dtype
    # The torch path on the bits (padding float8 is not implemented everywhere).
    bits = torch.int64 if dtype == F64 else (torch.int16 if dtype == BF16 else torch.uint8)
    assert torch.equal(got.view(bits), order.tile_tokens(x.view(bits), method="torch"))
    got = order.untile_tokens(y, method="triton")
    assert torch.equal(got.view(bits), order.untile_tokens(y.view(bits), method="torch"))
    assert len(spy.launches) == 2


@pytest.mark.parametrize("canvas, tile", CASES, ids=CASE_IDS)
@CONFIGS
def test_without_feature_axis(canvas, tile, config, rng, spy):
    # lse-shaped (B, H, N) float32, both directions; also a strided one (a slice of (B, H, N, 2)).
    order = TiledOrder(canvas, tile)
    x = _rand(rng, 1, 2, order.num_canvas)
    y = _rand(rng, 1, 2, order.num_tokens, 2)[..., 1]
    check_both_directions(order, x, y, config)
    assert spy.launches


@pytest.mark.parametrize("d", [1, 3, 16, 24, 300, 512])
def test_head_dims(d, rng, spy):
    # D = 300 and 512 loop over column chunks of MAX_BLOCK_D (masked / unmasked).
    order = TiledOrder((5, 7), (2, 4))
    check_both_directions(order, _rand(rng, 1, 2, order.num_canvas, d), _rand(rng, 1, 2, order.num_tokens, d))
    assert spy.launches


@pytest.mark.parametrize("layout", ["transposed", "strided-dim", "broadcast-batch", "sliced-tokens"])
@pytest.mark.parametrize("canvas, tile", [((7, 10), (4, 4)), ((3, 5, 6), (2, 2, 4))], ids=["2d", "3d"])
@CONFIGS
def test_non_contiguous(layout, canvas, tile, config, rng, spy):
    order = TiledOrder(canvas, tile)

    def make(n):
        if layout == "transposed":  # (B, N, H, D) seen as (B, H, N, D)
            return _rand(rng, 2, n, 2, 6).transpose(1, 2)
        if layout == "strided-dim":  # stride 2 along D
            return _rand(rng, 1, 2, n, 12)[..., ::2]
        if layout == "broadcast-batch":  # stride 0 along B
            return _rand(rng, 1, 2, n, 6).expand(2, 2, n, 6)
        return _rand(rng, 1, 2, n + 5, 6)[:, :, 2 : n + 2]  # an offset into the token axis

    x, y = make(order.num_canvas), make(order.num_tokens)
    assert not x.is_contiguous()
    check_both_directions(order, x, y, config)
    assert spy.launches


MAX_SIDE = {1: 12, 2: 9, 3: 5}


@st.composite
def order_and_sizes(draw):
    ndim = draw(st.sampled_from((1, 2, 3)))
    canvas = tuple(draw(st.integers(1, MAX_SIDE[ndim])) for _ in range(ndim))
    tile = draw(tile_of(canvas, slack=2))
    config = draw(st.sampled_from([None, SMALL, (64, 16, 1)]))
    return TiledOrder(canvas, tile), draw(st.integers(1, 2)), draw(st.integers(1, 20)), config


@given(order_and_sizes(), st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_random_orders(params, seed):
    order, heads, d, config = params
    gen = torch.Generator().manual_seed(seed)
    x = _rand(gen, 1, heads, order.num_canvas, d, dtype=F16)
    y = _rand(gen, 1, heads, order.num_tokens, d, dtype=F16)
    check_both_directions(order, x, y, config)


def test_empty(spy):
    order = TiledOrder((5, 6), (4, 4))
    assert order.tile_tokens(torch.empty(0, 2, 30, 8, device=DEVICE), method="triton").shape == (0, 2, 64, 8)
    assert order.untile_tokens(torch.empty(2, 2, 64, 0, device=DEVICE), method="triton").shape == (2, 2, 30, 0)
    assert not spy.launches


# -- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("canvas, tile", [((10,), (4,)), ((5, 6), (4, 4)), ((3, 5, 6), (2, 2, 4))],
                         ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("feature_axis", [True, False], ids=["BHND", "BHN"])
def test_gradcheck(canvas, tile, feature_axis, rng, spy):
    order = TiledOrder(canvas, tile)
    shape = (2, 1) + ((3,) if feature_axis else ())

    def leaf(n):
        t = _rand(rng, *shape[:2], n, *shape[2:], dtype=F64)
        return t.requires_grad_(True)

    tile_fn = lambda t: order.tile_tokens(t, method="triton")  # noqa: E731
    untile_fn = lambda t: order.untile_tokens(t, method="triton")  # noqa: E731
    # fast_mode: the interpreter would take minutes for a full Jacobian (two launches a column).
    for fn, n in ((tile_fn, order.num_canvas), (untile_fn, order.num_tokens)):
        assert torch.autograd.gradcheck(fn, (leaf(n),), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (leaf(n),), fast_mode=True)
    assert spy.launches


@pytest.mark.parametrize("canvas, tile", [((7, 10), (4, 4)), ((3, 5, 6), (2, 2, 4))], ids=["2d", "3d"])
def test_grads_match_torch_path(canvas, tile, rng, spy):
    order = TiledOrder(canvas, tile)
    x = _rand(rng, 2, 2, order.num_canvas, 5)
    y = _rand(rng, 2, 2, order.num_tokens, 5)
    g_tiled = _rand(rng, 2, 2, order.num_tokens, 5).transpose(0, 1).contiguous().transpose(0, 1)
    g_raster = _rand(rng, 2, 2, order.num_canvas, 5)
    for method in ("triton", "torch"):
        xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        (order.tile_tokens(xg, method=method) * g_tiled).sum().backward()
        (order.untile_tokens(yg, method=method) * g_raster).sum().backward()
        if method == "triton":
            want_x, want_y = xg.grad, yg.grad
        else:
            assert torch.equal(xg.grad, want_x)
            assert torch.equal(yg.grad, want_y)
    assert len(spy.launches) >= 4  # two forwards, two backwards


# -- dispatch ----------------------------------------------------------------------------------


def test_auto_dispatch(rng, spy):
    order = TiledOrder((7, 10), (4, 4))
    x = _rand(rng, 1, 2, order.num_canvas, 8)
    order.untile_tokens(order.tile_tokens(x))
    # auto: the kernel on CUDA tensors, the torch path on CPU ones (even under the interpreter).
    assert len(spy.launches) == (2 if x.is_cuda else 0)
    with pytest.raises(ValueError, match="method='nope'"):
        order.tile_tokens(x, method="nope")


def test_kernel_refusals(rng):
    x = torch.zeros(1, 1, 16, 2, device=DEVICE)
    with pytest.raises(ValueError, match="4 axes"):
        TiledOrder((2, 2, 2, 2), (1, 1, 1, 2)).tile_tokens(x, method="triton")
    with pytest.raises(ValueError, match="16 tokens"):
        TiledOrder((3, 4), (2, 2)).tile_tokens(x, method="triton")
    with pytest.raises(ValueError, match="16 tokens"):
        TiledOrder((3, 5), (2, 2)).untile_tokens(x, method="triton")
    with pytest.raises(ValueError, match="complex128"):
        TiledOrder((4, 4), (2, 2)).tile_tokens(x.to(torch.complex128), method="triton")
    # auto falls back to the torch path for what the kernel refuses.
    x4 = _rand(rng, 1, 1, 16, 2)
    assert torch.equal(TiledOrder((2, 2, 2, 2), (1, 1, 1, 2)).tile_tokens(x4),
                       TiledOrder((2, 2, 2, 2), (1, 1, 1, 2)).tile_tokens(x4, method="torch"))


# -- GPU only: realistic sizes ------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("canvas, tile, heads", [((256, 256), (8, 16), 4), ((30, 48, 80), (2, 8, 8), 2),
                                                 ((21, 45, 80), (2, 8, 8), 2), ((100, 100), (8, 16), 3)],
                         ids=["2d-256", "3d-30x48x80", "3d-21x45x80-padded", "2d-100-padded"])
@pytest.mark.parametrize("dtype", [BF16, F32], ids=["bf16", "f32"])
def test_cuda_sizes(canvas, tile, heads, dtype, spy):
    # D = 128 (unmasked columns, the launch config of the benchmarks) and 72 (masked), inputs in
    # (B, H, N, D) and (B, N, H, D) memory order, lse-shaped tensors.
    gen = torch.Generator(device="cuda").manual_seed(0)
    order = TiledOrder(canvas, tile)
    for d in (128, 72):
        x = torch.randn(2, heads, order.num_canvas, d, device="cuda", generator=gen).to(dtype)
        y = torch.randn(2, heads, order.num_tokens, d, device="cuda", generator=gen).to(dtype)
        check_both_directions(order, x, y)
        bnhd = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731 - same values
        check_both_directions(order, bnhd(x), bnhd(y))
    check_both_directions(order, x[..., 0].float(), y[..., 0].float())
    assert spy.launches


@needs_cuda
def test_cuda_int64_offsets():
    # More than 2**31 elements: row offsets past int32 (about 13 GB of GPU memory in all).
    order = TiledOrder((256, 256), (8, 16))
    heads = 2**31 // (order.num_canvas * 128) + 8
    x = torch.empty(1, heads, order.num_canvas, 128, device="cuda", dtype=BF16)
    # Row r holds the bits r mod 30011 (compared as bits).
    rows = torch.arange(heads * order.num_canvas, device="cuda") % 30011
    x.view(torch.int16).copy_(rows.to(torch.int16).view(1, heads, order.num_canvas, 1))
    del rows
    assert x.numel() > 2**31
    got = order.tile_tokens(x, method="triton")
    assert torch.equal(got.view(torch.int16), order.tile_tokens(x, method="torch").view(torch.int16))
    del x
    back = order.untile_tokens(got, method="triton")
    assert torch.equal(back.view(torch.int16), order.untile_tokens(got, method="torch").view(torch.int16))
