"""The public surface of foveate: names, signature, layouts, defaults and input validation."""

from __future__ import annotations

import importlib.metadata
import inspect
import math
import re

import pytest
import torch

import foveate
from foveate import patterns as P

from conftest import make_qkv
from naive import dense_mask, naive_attention

F64 = torch.float64

# -- names -------------------------------------------------------------------------------------


#: Every public name of the public modules: adding, removing or renaming one must change this
#: table (and the docs' API reference, docs/api.md).
PUBLIC = {
    "foveate": {"attention", "patterns", "score_mods", "backends", "decode", "simulate", "SimulationRecord", "BlockLayout",
                "policy", "__version__"},
    "foveate.patterns": {"Pattern", "MaskMod", "KernelMask", "Blocks", "Dense", "Causal", "SlidingWindow", "Sinks",
                         "Neighborhood", "Mask", "Union", "Intersection", "BlockTopK", "BlockTopP", "MoBA",
                         "XAttention", "SelectedBlocks", "Documents", "Segments", "PrefixLM", "Global",
                         "ChunkCausal", "PowerAttention", "StridedHeads", "PerHead", "Windows", "Axial", "Grid",
                         "Halo", "TileNeighborhood", "Circular", "Radial", "CrossScale", "WithText"},
    "foveate.score_mods": {"ScoreMod", "ScoreFn", "Softcap", "ALiBi", "DistanceDecay", "RelativePositionBias",
                           "LowRankBias", "DenseBias", "ScoreFunction", "alibi_slopes"},
    "foveate.backends": {"Backend", "Problem", "register", "names", "available", "get", "reasons", "select",
                         "cached_layout", "check_name"},
    "foveate.linear": {"decayed", "decayed_step", "default_decay", "based", "based_step", "BasedState", "gated_delta",
                       "gated_delta_step"},
    "foveate.decode": {"attention", "KVCache", "PagedKVCache", "PageSelection", "select_pages", "BACKENDS",
                       "MAX_ROWS"},
    "foveate.nn": {"joint_attention", "SelfAttention", "NeighborhoodAttention1D", "NeighborhoodAttention2D",
                   "NeighborhoodAttention3D", "LinearAttention", "HybridAttention", "HybridState",
                   "hybrid_schedule", "hybrid_stack"},
    "foveate.integrations.transformers": {"register", "set_pattern", "HFMask", "pattern_for"},
    "foveate.integrations.diffusers": {"apply", "Handle", "CanvasState", "FoveateProcessor", "WanProcessor", "HunyuanVideoProcessor",
                                       "CogVideoXProcessor", "LTXProcessor"},
    "foveate.integrations.timm": {"Attention", "apply", "bind", "PatternSpec"},
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_public_names(module_name):
    """The public names are exactly the table's, each exists, and nothing else in the module
    looks public (a name without a leading underscore that is not a submodule or an import)."""
    if module_name == "foveate.integrations.timm":
        import torchvision_shim  # (timm beside a stand-in torchvision where the real one cannot load)
        assert torchvision_shim.import_timm() is not None
    module = importlib.import_module(module_name)
    assert set(module.__all__) == PUBLIC[module_name]
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name}"
    stray = {name for name, value in vars(module).items()
             if not name.startswith("_") and not inspect.ismodule(value) and name not in module.__all__
             and getattr(value, "__module__", module_name).startswith(module_name)
             and name not in ("annotations",)}
    assert not stray, f"{module_name} defines public names missing from __all__: {sorted(stray)}"


def test_public_types():
    for name in ("Pattern", "Dense", "Causal", "SlidingWindow", "Sinks", "Neighborhood", "Mask", "Blocks"):
        assert isinstance(getattr(P, name), type)
    assert isinstance(foveate.patterns.Causal(), P.Pattern)
    assert foveate.BlockLayout is foveate.layout.BlockLayout
    assert foveate.policy is foveate.settings.policy


def test_attention_signature():
    sig = inspect.signature(foveate.attention)
    params = sig.parameters
    assert list(params) == ["q", "k", "v", "pattern", "score_mod", "scale", "backend", "tile", "return_lse"]
    for name in ("q", "k", "v", "pattern"):
        assert params[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert params["pattern"].default is None
    for name, default in (("score_mod", None), ("scale", None), ("backend", "auto"), ("tile", "auto"),
                          ("return_lse", False)):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default == default, name


def test_version():
    assert isinstance(foveate.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.+-]?\w+)*", foveate.__version__)
    assert foveate.__version__ == importlib.metadata.version("foveate")


def test_available_backends():
    names = foveate.backends.available()
    assert isinstance(names, list) and all(isinstance(n, str) for n in names)
    assert "reference" in names
    assert len(set(names)) == len(names)
    assert set(names) <= set(foveate.backends.names())


def test_patterns_are_hashable_and_composable():
    a, b = P.SlidingWindow(3), P.Causal()
    assert hash(P.SlidingWindow(3)) == hash(a) and P.SlidingWindow(3) == a
    assert isinstance(a | b, P.Pattern) and isinstance(a & b, P.Pattern)
    assert len({a, P.SlidingWindow(3), b}) == 2


# -- layouts and defaults ----------------------------------------------------------------------


@pytest.mark.parametrize("return_lse", [False, True])
def test_flat_output_layout(rng, return_lse):
    q, k, v = make_qkv(rng, batch=2, heads_q=4, heads_kv=2, q_shape=(5,), kv_shape=(7,), head_dim=8,
                       head_dim_v=3, dtype=torch.float32)
    result = foveate.attention(q, k, v, return_lse=return_lse)
    if return_lse:
        assert isinstance(result, tuple) and len(result) == 2
        out, lse = result
        assert lse.shape == (2, 4, 5) and lse.dtype == torch.float32
    else:
        assert isinstance(result, torch.Tensor)
        out = result
    assert out.shape == (2, 4, 5, 3) and out.dtype == torch.float32 and out.device == q.device


@pytest.mark.parametrize("canvas", [(4, 6), (2, 3, 4)], ids=["2d", "3d"])
def test_canvas_output_layout(rng, canvas):
    pattern = P.Neighborhood(canvas=canvas, kernel=2)
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=canvas, head_dim=4, head_dim_v=5)
    out, lse = foveate.attention(q, k, v, pattern, return_lse=True)
    assert out.shape == (1, 2, *canvas, 5)
    assert lse.shape == (1, 2, *canvas)
    # q flat, k/v canvas-shaped: the output follows q.
    n = q[0, 0, ..., 0].numel()
    out_flat = foveate.attention(q.reshape(1, 2, n, 4), k, v, pattern)
    assert out_flat.shape == (1, 2, n, 5)
    torch.testing.assert_close(out_flat.reshape(out.shape), out, atol=0, rtol=0)


def test_canvas_shaped_q_with_extra_kv(rng):
    """With extra_kv, q may still be canvas-shaped (k and v are flat)."""
    pattern = P.Neighborhood(canvas=(4, 5), kernel=3, extra_kv=3)
    q, _, _ = make_qkv(rng, batch=1, heads_q=2, q_shape=(4, 5), head_dim=4)
    _, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(23,), head_dim=4)
    out = foveate.attention(q, k, v, pattern)
    assert out.shape == (1, 2, 4, 5, 4)
    ref, _ = naive_attention(q.reshape(1, 2, 20, 4), k, v, dense_mask(pattern, 20, 23))
    torch.testing.assert_close(out.reshape(ref.shape), ref, atol=1e-12, rtol=1e-12)


def test_pattern_none_is_dense(rng):
    q, k, v = make_qkv(rng, batch=2, heads_q=2, q_shape=(6,), kv_shape=(9,), head_dim=4)
    out_none, lse_none = foveate.attention(q, k, v, return_lse=True)
    out_dense, lse_dense = foveate.attention(q, k, v, P.Dense(), return_lse=True)
    torch.testing.assert_close(out_none, out_dense, atol=0, rtol=0)
    torch.testing.assert_close(lse_none, lse_dense, atol=0, rtol=0)
    ref, _ = naive_attention(q, k, v)
    torch.testing.assert_close(out_none, ref, atol=1e-12, rtol=1e-12)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out_none, sdpa, atol=1e-12, rtol=1e-12)


def test_default_scale(rng):
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(6,), head_dim=16)
    out = foveate.attention(q, k, v, P.Causal())
    torch.testing.assert_close(out, foveate.attention(q, k, v, P.Causal(), scale=0.25), atol=0, rtol=0)
    ref, _ = naive_attention(q, k, v, dense_mask(P.Causal(), 6, 6), scale=0.25)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)


def test_scale_accepts_ints_and_numpy_like_reals(rng):
    q, k, v = make_qkv(rng, batch=1, heads_q=1, q_shape=(4,), head_dim=4)
    a = foveate.attention(q, k, v, scale=1)
    b = foveate.attention(q, k, v, scale=1.0)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize(
    "pattern",
    [
        P.Neighborhood(canvas=(6, 8), kernel=3),
        P.Neighborhood(canvas=(6, 8), kernel=(3, 5), dilation=(2, 1), causal=(True, False), extra_kv=3),
        P.Neighborhood(canvas=(6, 8), kernel=3) & P.Causal(),
        P.Neighborhood(canvas=(6, 8), kernel=(1, 8)) | P.Neighborhood(canvas=(6, 8), kernel=(6, 1)),
        P.Neighborhood(canvas=(3, 4, 4), kernel=(2, 3, 3)),
    ],
    ids=["nbhd", "nbhd-dil-causal-extra", "nbhd&causal", "axial-union", "nbhd3d"],
)
def test_tile_options_do_not_change_the_result(rng, pattern):
    """tile is a performance knob: inputs and outputs stay in the caller's order, and the
    result (out, lse, gradients) is the same up to rounding."""
    canvas = pattern.canvas
    n = math.prod(canvas)
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(n,), kv_shape=(n + pattern.extra_kv,), head_dim=4,
                       requires_grad=True)
    do = torch.randn(1, 2, n, 4, generator=rng, dtype=F64)
    dlse = torch.randn(1, 2, n, generator=rng, dtype=torch.float32)

    def run(tile):
        out, lse = foveate.attention(q, k, v, pattern, tile=tile, backend="reference", return_lse=True)
        return (out, lse, *torch.autograd.grad((out, lse), (q, k, v), (do, dlse)))

    base = run(None)
    ref_out, _ = naive_attention(q.detach(), k.detach(), v.detach(), dense_mask(pattern, n, n + pattern.extra_kv))
    torch.testing.assert_close(base[0], ref_out, atol=1e-12, rtol=1e-12)
    tiles = ["auto"]
    if isinstance(pattern, P.Neighborhood):  # explicit tiles: neighborhoods only (for now)
        tiles += [tuple(2 for _ in canvas), [3] * len(canvas), tuple(canvas)]
    for tile in tiles:
        for label, got, want in zip(("out", "lse", "dq", "dk", "dv"), run(tile), base):
            # Permuted keys change the order of the sums: equal up to rounding.
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-6,
                                       msg=lambda m: f"tile={tile!r}, {label}: {m}")


def test_auto_backend_runs_with_autograd(rng):
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(6,), head_dim=4, requires_grad=True)
    out = foveate.attention(q, k, v, P.Causal())
    out.sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None


# -- bad input -----------------------------------------------------------------------------------


def _inputs(rng, q_shape=(2, 4, 16, 8), k_shape=(2, 2, 16, 8), v_shape=(2, 2, 16, 8), dtype=torch.float32):
    def draw(shape, dt=dtype):
        if dt.is_floating_point:
            t = torch.randn(shape, generator=rng, dtype=torch.float64).to(dt)
            return t.requires_grad_(True)
        return torch.randint(0, 5, shape, generator=rng, dtype=dt)

    return draw(q_shape), draw(k_shape), draw(v_shape)


def _call_and_check_untouched(error, match, q, k, v, *args, **kwargs):
    """``attention(q, k, v, *args, **kwargs)`` raises ``error`` matching ``match`` and leaves the
    inputs as they were: same values, same version counters, no gradient."""
    tensors = [t for t in (q, k, v) if isinstance(t, torch.Tensor)]
    before = [(t.detach().clone(), t._version) for t in tensors]
    with pytest.raises(error, match=match):
        foveate.attention(q, k, v, *args, **kwargs)
    for t, (copy, version) in zip(tensors, before):
        assert t._version == version, "an input was modified in place"
        if t.device.type != "meta":  # meta tensors hold no values
            assert torch.equal(t.detach(), copy), "an input was modified"
        assert t.grad is None, "a gradient was created"


# (id, error, match, q_shape, k_shape, v_shape, pattern)
SHAPE_ERRORS = [
    ("q-rank-3", ValueError, r"q must have shape.*\(2, 16, 8\)", (2, 16, 8), (2, 2, 16, 8), (2, 2, 16, 8), None),
    ("k-rank-5", ValueError, r"k must have shape.*\(2, 2, 4, 4, 8\)", (2, 4, 16, 8), (2, 2, 4, 4, 8), (2, 2, 16, 8), None),
    ("v-rank-2", ValueError, r"v must have shape.*\(16, 8\)", (2, 4, 16, 8), (2, 2, 16, 8), (16, 8), None),
    ("batch-k", ValueError, r"batch.*q has 2, k has 3", (2, 4, 16, 8), (3, 2, 16, 8), (3, 2, 16, 8), None),
    ("batch-v", ValueError, r"batch.*v has 1", (2, 4, 16, 8), (2, 2, 16, 8), (1, 2, 16, 8), None),
    ("heads-v-vs-k", ValueError, r"v has 1 heads but k has 2", (2, 4, 16, 8), (2, 2, 16, 8), (2, 1, 16, 8), None),
    ("heads-not-multiple", ValueError, r"q has 4 heads.*3 heads of k", (2, 4, 16, 8), (2, 3, 16, 8), (2, 3, 16, 8), None),
    ("heads-kv-more-than-q", ValueError, r"q has 2 heads.*4 heads of k", (2, 2, 16, 8), (2, 4, 16, 8), (2, 4, 16, 8), None),
    ("head-dim", ValueError, r"k has head dim 6 but q has 8", (2, 4, 16, 8), (2, 2, 16, 6), (2, 2, 16, 8), None),
    ("kv-lengths", ValueError, r"v has 15 tokens but k has 16", (2, 4, 16, 8), (2, 2, 16, 8), (2, 2, 15, 8), None),
    ("canvas-vs-q-len", ValueError, r"q has 15 tokens.*needs 16",
     (2, 4, 15, 8), (2, 2, 16, 8), (2, 2, 16, 8), P.Neighborhood(canvas=(4, 4), kernel=3)),
    ("canvas-vs-k-len", ValueError, r"k has 16 tokens.*needs 18",
     (2, 4, 16, 8), (2, 2, 16, 8), (2, 2, 16, 8), P.Neighborhood(canvas=(4, 4), kernel=3, extra_kv=2)),
    ("canvas-axes-q", ValueError, r"q has canvas axes \(2, 8\).*\(4, 4\)",
     (2, 4, 2, 8, 8), (2, 2, 16, 8), (2, 2, 16, 8), P.Neighborhood(canvas=(4, 4), kernel=2)),
    ("canvas-axes-k", ValueError, r"k has canvas axes \(8, 2\).*\(4, 4\)",
     (2, 4, 16, 8), (2, 2, 8, 2, 8), (2, 2, 16, 8), P.Neighborhood(canvas=(4, 4), kernel=2)),
    ("canvas-rank-q", ValueError, r"q must have shape.*\(B, H, 4, 4, D\)",
     (2, 4, 2, 2, 4, 8), (2, 2, 16, 8), (2, 2, 16, 8), P.Neighborhood(canvas=(4, 4), kernel=2)),
    ("canvas-shaped-k-with-extra-kv", ValueError, r"k has shape.*extra_kv=2",
     (2, 4, 16, 8), (2, 2, 4, 4, 8), (2, 2, 18, 8), P.Neighborhood(canvas=(4, 4), kernel=2, extra_kv=2)),
    ("canvas-shaped-v-with-extra-kv", ValueError, r"v has shape.*extra_kv=2",
     (2, 4, 16, 8), (2, 2, 18, 8), (2, 2, 4, 4, 8), P.Neighborhood(canvas=(4, 4), kernel=2, extra_kv=2)),
    ("canvas-shaped-q-for-1d-pattern", ValueError, r"q must have shape",
     (2, 4, 4, 4, 8), (2, 2, 16, 8), (2, 2, 16, 8), P.Causal()),
    ("empty-batch", ValueError, r"q has an empty dimension.*\(0, 4, 16, 8\)", (0, 4, 16, 8), (0, 2, 16, 8), (0, 2, 16, 8), None),
    ("empty-q-len", ValueError, r"q has an empty dimension", (2, 4, 0, 8), (2, 2, 16, 8), (2, 2, 16, 8), None),
    ("empty-kv-len", ValueError, r"k has an empty dimension", (2, 4, 16, 8), (2, 2, 0, 8), (2, 2, 0, 8), None),
    ("empty-head-dim", ValueError, r"q has an empty dimension", (2, 4, 16, 0), (2, 2, 16, 0), (2, 2, 16, 8), None),
    ("empty-v-dim", ValueError, r"v has an empty dimension", (2, 4, 16, 8), (2, 2, 16, 8), (2, 2, 16, 0), None),
]


@pytest.mark.parametrize("name,error,match,q_shape,k_shape,v_shape,pattern", SHAPE_ERRORS,
                         ids=[c[0] for c in SHAPE_ERRORS])
def test_bad_shapes(rng, name, error, match, q_shape, k_shape, v_shape, pattern):
    q, k, v = _inputs(rng, q_shape, k_shape, v_shape)
    _call_and_check_untouched(error, match, q, k, v, pattern)


@pytest.mark.parametrize("arg", ["q", "k", "v"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64], ids=str)
def test_non_float_dtype(rng, arg, dtype):
    tensors = dict(zip("qkv", _inputs(rng)))
    shape = tensors[arg].shape
    tensors[arg] = torch.ones(shape, dtype=dtype)
    _call_and_check_untouched(TypeError, rf"{arg}\.dtype.*{dtype}", tensors["q"], tensors["k"], tensors["v"])


@pytest.mark.parametrize("arg", ["k", "v"])
def test_dtype_mismatch(rng, arg):
    tensors = dict(zip("qkv", _inputs(rng)))
    tensors[arg] = tensors[arg].detach().double().requires_grad_(True)
    _call_and_check_untouched(TypeError, rf"{arg}\.dtype=torch\.float64.*q\.dtype=torch\.float32",
                              tensors["q"], tensors["k"], tensors["v"])


@pytest.mark.parametrize("arg", ["q", "k", "v"])
@pytest.mark.parametrize("value", [[[1.0]], 3.0, None], ids=["list", "float", "None"])
def test_non_tensor_inputs(rng, arg, value):
    tensors = dict(zip("qkv", _inputs(rng)))
    tensors[arg] = value
    _call_and_check_untouched(TypeError, rf"{arg} must be a torch\.Tensor", tensors["q"], tensors["k"], tensors["v"])


def test_numpy_array_input(rng):
    np = pytest.importorskip("numpy")
    q, k, v = _inputs(rng)
    _call_and_check_untouched(TypeError, r"q must be a torch\.Tensor.*ndarray", np.zeros((2, 4, 16, 8)), k, v)


@pytest.mark.parametrize("arg", ["k", "v", "q"])
def test_different_devices(rng, arg):
    """Tensors on two devices (no GPU here: a meta tensor beside CPU ones)."""
    tensors = dict(zip("qkv", _inputs(rng)))
    tensors[arg] = torch.empty(tensors[arg].shape, device="meta")
    other = "k" if arg == "q" else arg
    _call_and_check_untouched(ValueError, rf"{other} is on (meta|cpu) but q is on (cpu|meta)",
                              tensors["q"], tensors["k"], tensors["v"])


def test_kernel_larger_than_canvas():
    with pytest.raises(ValueError, match=r"kernel=\(5, 3\).*canvas=\(4, 6\)"):
        P.Neighborhood(canvas=(4, 6), kernel=(5, 3))
    with pytest.raises(ValueError, match=r"kernel=\(3,\) with dilation=\(2,\).*canvas=\(5,\)"):
        P.Neighborhood(canvas=5, kernel=3, dilation=2)


@pytest.mark.parametrize("backend", ["nope", "Reference", "", "triton-xyz"])
def test_unknown_backend(rng, backend):
    q, k, v = _inputs(rng)
    _call_and_check_untouched(ValueError, rf"backend={re.escape(repr(backend))} is unknown.*reference", q, k, v,
                              backend=backend)


@pytest.mark.parametrize("backend", [None, 1, ["reference"], P.Dense()], ids=["None", "int", "list", "pattern"])
def test_backend_not_a_string(rng, backend):
    q, k, v = _inputs(rng)
    _call_and_check_untouched(TypeError, r"backend must be a str", q, k, v, backend=backend)


def test_named_backend_that_cannot_run_the_problem(rng):
    # float64 is not a FlexAttention dtype.
    q, k, v = _inputs(rng, (1, 2, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16), dtype=torch.float64)
    _call_and_check_untouched(ValueError, r"backend='flex' cannot run this problem: dtype torch\.float64", q, k, v,
                              backend="flex")
    # Head dim 8 is below FlexAttention's minimum.
    q, k, v = _inputs(rng, (1, 2, 8, 8), (1, 2, 8, 8), (1, 2, 8, 8))
    _call_and_check_untouched(ValueError, r"backend='flex' cannot run this problem: head dim", q, k, v,
                              backend="flex")


@pytest.mark.parametrize(
    "tile,pattern,match",
    [
        ((2, 2, 2), P.Neighborhood(canvas=(4, 4), kernel=2), r"tile=\(2, 2, 2\).*2 positive ints"),
        ((4,), P.Neighborhood(canvas=(4, 4), kernel=2), r"tile=\(4,\).*2 positive ints"),
        ((0, 2), P.Neighborhood(canvas=(4, 4), kernel=2), r"tile=\(0, 2\).*positive"),
        ((-1, 2), P.Neighborhood(canvas=(4, 4), kernel=2), r"tile=\(-1, 2\).*positive"),
        ((2.0, 2), P.Neighborhood(canvas=(4, 4), kernel=2), r"tile=\(2\.0, 2\).*ints"),
        ((True, 2), P.Neighborhood(canvas=(4, 4), kernel=2), r"tile=\(True, 2\).*ints"),
        ((4,), P.Causal(), r"tile=\(4,\).*not a canvas pattern"),
        ((4, 4), None, r"tile=\(4, 4\).*not a canvas pattern"),
        ("big", P.Neighborhood(canvas=(4, 4), kernel=2), r"tile='big'.*'auto', None or a tuple"),
        ("", P.Causal(), r"tile=''.*'auto', None or a tuple"),
    ],
    ids=["3-for-2d", "1-for-2d", "zero", "negative", "float", "bool", "1d-pattern", "dense", "unknown-str",
         "empty-str"],
)
def test_bad_tile(rng, tile, pattern, match):
    q, k, v = _inputs(rng)
    _call_and_check_untouched(ValueError, match, q, k, v, pattern, tile=tile)


@pytest.mark.parametrize("tile", [4, 2.5, {"x": 1}], ids=["int", "float", "dict"])
def test_tile_of_wrong_type(rng, tile):
    q, k, v = _inputs(rng)
    pattern = P.Neighborhood(canvas=(4, 4), kernel=2)
    _call_and_check_untouched((TypeError, ValueError), r"tile=", q, k, v, pattern, tile=tile)


@pytest.mark.parametrize("value", [1, 0, None, "yes", torch.tensor(True)], ids=["1", "0", "None", "str", "tensor"])
def test_return_lse_not_a_bool(rng, value):
    q, k, v = _inputs(rng)
    _call_and_check_untouched(TypeError, r"return_lse must be a bool", q, k, v, return_lse=value)


@pytest.mark.parametrize(
    "scale,error,match",
    [
        ("0.5", TypeError, r"scale must be a real number.*'0\.5'"),
        (True, TypeError, r"scale must be a real number.*True"),
        (1 + 2j, TypeError, r"scale must be a real number"),
        (float("inf"), ValueError, r"scale must be finite.*inf"),
        (float("-inf"), ValueError, r"scale must be finite.*-inf"),
        (float("nan"), ValueError, r"scale must be finite.*nan"),
    ],
    ids=["str", "bool", "complex", "inf", "-inf", "nan"],
)
def test_bad_scale(rng, scale, error, match):
    q, k, v = _inputs(rng)
    _call_and_check_untouched(error, match, q, k, v, scale=scale)


@pytest.mark.parametrize("pattern", ["causal", P.Causal, torch.ones(16, 16, dtype=torch.bool), 3],
                         ids=["str", "class", "mask-tensor", "int"])
def test_pattern_not_a_pattern(rng, pattern):
    q, k, v = _inputs(rng)
    _call_and_check_untouched(TypeError, r"pattern must be a foveate pattern", q, k, v, pattern)


def test_pattern_that_does_not_fit_the_lengths(rng):
    """A 1-D pattern asked for impossible lengths raises and names the pattern."""
    q, k, v = _inputs(rng, (1, 2, 9, 8), (1, 2, 9, 8), (1, 2, 9, 8))
    _call_and_check_untouched(ValueError, r"q has 9 tokens.*Neighborhood.*needs 10", q, k, v,
                              P.Neighborhood(canvas=10, kernel=3))


def test_tile_that_does_not_fill_a_block_of_a_layout_backend(rng):
    """A layout backend runs blocks of a fixed size: a forced tile must hold that many tokens."""
    if "flex" not in foveate.backends.available():
        pytest.skip("needs a layout backend (flex)")
    block = foveate.backends.get("flex").block_size
    q, k, v = _inputs(rng, (1, 2, 16, 16), (1, 2, 16, 16), (1, 2, 16, 16))
    for t in (q, k, v):
        t.requires_grad_(False)
    _call_and_check_untouched(ValueError, rf"tile=\(4, 4\).*{block}", q, k, v,
                              P.Neighborhood(canvas=(4, 4), kernel=3), backend="flex", tile=(4, 4))
