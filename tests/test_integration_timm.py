"""foveate.integrations.timm: timm's ViT attention on foveate, checked against timm itself.

The brute-force reference is timm's own model called with ``attn_mask=`` the pattern's dense
mask (built by hand from the pattern's ``mask_mod`` over the patches, every row and column of a
prefix token allowed): timm then applies that mask in every block with its own attention.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchvision_shim

timm = torchvision_shim.import_timm()  # (beside a stand-in torchvision where the real one cannot load)
if timm is None:  # the README's test command installs it (--no-deps): a missing timm is a failure
    raise ImportError("timm is not installed: pip install --no-deps timm (see README.md, 'Run the tests')")

from timm.layers import Attention as TimmAttention  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from foveate import patterns as P  # noqa: E402
from foveate.integrations import timm as ft  # noqa: E402

IMG, PATCH, GRID = (24, 40), 4, (6, 10)
PREFIX = 5  # the class token and 4 register tokens


def vit(attn_layer=TimmAttention, *, seed: int = 0, dtype=torch.float64, **kw) -> VisionTransformer:
    """A tiny random ViT (2 blocks, 2 heads of 16, a class token and 4 registers), in eval mode."""
    args = dict(img_size=IMG, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2, reg_tokens=4,
                class_token=True, num_classes=5)
    args.update(kw)
    torch.manual_seed(seed)
    return VisionTransformer(attn_layer=attn_layer, **args).to(dtype).eval()


def pair(pattern, *, backend="reference", dtype=torch.float64, **kw):
    """timm's model and foveate's with its weights (loaded strictly), bound."""
    ref = vit(dtype=dtype, **kw)
    model = vit(ft.Attention.with_pattern(pattern, backend=backend), seed=1, dtype=dtype, **kw)
    model.load_state_dict(ref.state_dict(), strict=True)
    return ref, ft.bind(model)


def brute_mask(pattern: P.Pattern, grid, n_prefix: int = PREFIX) -> torch.Tensor:
    """bool ``(N, N)``, ``True`` where a pair may interact: the pattern's ``mask_mod`` over the
    patches, every pair with a prefix token allowed."""
    n = grid[0] * grid[1]
    idx = torch.arange(n)
    zero = torch.zeros((), dtype=torch.long)
    allowed = pattern.mask_mod(n, n)(zero, zero, idx[:, None], idx[None, :])
    mask = torch.ones(n_prefix + n, n_prefix + n, dtype=torch.bool)
    mask[n_prefix:, n_prefix:] = allowed
    assert not mask.all(), "the test's pattern must be sparse"
    return mask


def image(size=IMG, dtype=torch.float64, batch=2, seed=0):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def param_grads(model, out, seed=0):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    model.zero_grad()
    (out * w).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --- dense: timm's result -------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
def test_dense_equals_timm(fused):
    ref, model = pair(None)
    for m in (*ref.modules(), *model.modules()):
        if isinstance(m, TimmAttention):
            m.fused_attn = fused  # (timm: SDPA or its explicit softmax; foveate: auto or reference)
    x = image()
    torch.testing.assert_close(model(x), ref(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("options", [
    dict(attn_head_dim=8, dim_out=24),
    dict(gated=True, qkv_bias=True, proj_bias=False),
    dict(qk_norm=True, scale_norm=True, norm_layer=torch.nn.LayerNorm),
], ids=["head_dim", "gated", "norms"])
def test_module_alone_with_timms_options(options):
    """The module with timm's constructor options, unbound (dense needs no grid), as timm's."""
    torch.manual_seed(0)
    theirs = TimmAttention(32, num_heads=2, dtype=torch.float64, **options).eval()
    ours = ft.Attention(32, num_heads=2, dtype=torch.float64, **options).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)


def test_state_dict_is_timms():
    kw = dict(qkv_bias=True, qk_norm=True, scale_attn_norm=True)
    ref, model = pair(lambda grid: P.Neighborhood(grid, 3), **kw)
    a, b = ref.state_dict(), model.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert {"blocks.0.attn.qkv.weight", "blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight",
            "blocks.0.attn.norm.weight", "blocks.0.attn.proj.weight"} <= set(b)
    ref2 = vit(seed=2, **kw)
    ref2.load_state_dict(model.state_dict(), strict=True)  # (and back: timm loads foveate's)
    x = image()
    torch.testing.assert_close(model(x), ref(x, attn_mask=brute_mask(P.Neighborhood(GRID, 3), GRID)))


# --- sparse: brute force, forward and gradients ----------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda grid: P.Neighborhood(grid, 3),                           # the prefix keys in the same call (extra_kv)
    lambda grid: P.Neighborhood(grid, (3, 4), dilation=(1, 2)),
    lambda grid: P.SlidingWindow(7, 7),                             # two calls merged by their lse
    P.Neighborhood(GRID, 5),                                        # a fixed pattern
], ids=["neighborhood", "dilated", "sliding", "fixed"])
def test_sparse_matches_brute_force(make):
    ref, model = pair(make)
    pattern = make if isinstance(make, P.Pattern) else make(GRID)
    mask = brute_mask(pattern, GRID)
    x = image()
    out, want = model(x), ref(x, attn_mask=mask)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    got_g, want_g = param_grads(model, out), param_grads(ref, want)
    assert set(got_g) == set(want_g) and "blocks.0.attn.qkv.weight" in got_g
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], rtol=1e-9, atol=1e-9, msg=name)


def test_one_block_against_hand_written_attention():
    """One attention module against softmax(scale q k^T + mask) v written out here."""
    _, model = pair(lambda grid: P.Neighborhood(grid, 3), qk_norm=True)
    attn = model.blocks[0].attn
    with torch.no_grad():
        for p in attn.q_norm.parameters():
            p.uniform_(0.5, 1.5)
    model(image())  # (records the grid)
    x = torch.randn(2, PREFIX + GRID[0] * GRID[1], 32, dtype=torch.float64)
    qkv = attn.qkv(x).reshape(2, -1, 3, 2, 16).permute(2, 0, 3, 1, 4)
    q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
    scores = (q @ k.transpose(-1, -2)) * 16 ** -0.5
    scores = scores.masked_fill(~brute_mask(P.Neighborhood(GRID, 3), GRID), float("-inf"))
    want = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, -1, 32))
    torch.testing.assert_close(attn(x), want, rtol=1e-10, atol=1e-10)


def test_triton_backend_tiny(triton_spy):
    """The fused kernels (Triton's interpreter on a CPU), float32, forward and backward."""
    ref, model = pair(lambda grid: P.Neighborhood(grid, 3), backend="triton", dtype=torch.float32,
                      img_size=(16, 16), depth=1)
    x = image((16, 16), dtype=torch.float32, batch=1)
    out, want = model(x), ref(x, attn_mask=brute_mask(P.Neighborhood((4, 4), 3), (4, 4)))
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    got_g, want_g = param_grads(model, out), param_grads(ref, want)
    torch.testing.assert_close(got_g["blocks.0.attn.qkv.weight"], want_g["blocks.0.attn.qkv.weight"],
                               rtol=1e-3, atol=1e-4)
    assert triton_spy["fwd"] >= 1 and triton_spy["bwd"] >= 1


# --- the patch grid --------------------------------------------------------------------------------

def test_dynamic_img_size_takes_each_inputs_grid():
    grids = []

    def make(grid):
        grids.append(grid)
        return P.Neighborhood(grid, 3)

    ref, model = pair(make, dynamic_img_size=True)
    for size, grid in (((24, 40), (6, 10)), ((32, 16), (8, 4)), ((24, 40), (6, 10))):
        x = image(size)
        torch.testing.assert_close(model(x), ref(x, attn_mask=brute_mask(P.Neighborhood(grid, 3), grid)),
                                   rtol=1e-10, atol=1e-10)
    assert grids == [(6, 10)] * 2 + [(8, 4)] * 2  # (once per grid and module (2 blocks), then cached)


def test_deep_copy_has_its_own_grid():
    ref, model = pair(lambda grid: P.Neighborhood(grid, 3), dynamic_img_size=True)
    twin = copy.deepcopy(model)  # (an EMA copy, say)
    assert twin.blocks[0].attn._grid_source is twin.blocks[1].attn._grid_source
    assert twin.blocks[0].attn._grid_source is not model.blocks[0].attn._grid_source
    model(image((24, 40)))
    x = image((32, 16))
    torch.testing.assert_close(twin(x), ref(x, attn_mask=brute_mask(P.Neighborhood((8, 4), 3), (8, 4))))
    assert model.blocks[0].attn._grid_source.grid == (6, 10)


def test_no_prefix_tokens():
    ref, model = pair(lambda grid: P.Neighborhood(grid, 3), class_token=False, reg_tokens=0, global_pool="avg")
    x = image()
    torch.testing.assert_close(model(x), ref(x, attn_mask=brute_mask(P.Neighborhood(GRID, 3), GRID, 0)))


# --- building --------------------------------------------------------------------------------------

def test_apply_swaps_in_place():
    model = vit()
    ref = copy.deepcopy(model)
    params = dict(model.named_parameters())
    assert ft.apply(model, lambda grid: P.Neighborhood(grid, 3), backend="reference") is model
    assert all(type(b.attn) is ft.Attention for b in model.blocks)
    assert all(p is params[n] for n, p in model.named_parameters())  # (the same tensors)
    x = image()
    torch.testing.assert_close(model(x), ref(x, attn_mask=brute_mask(P.Neighborhood(GRID, 3), GRID)))
    ft.apply(model, None)
    torch.testing.assert_close(model(x), ref(x))
    ft.apply(model, P.Neighborhood(GRID, 3), layers=[1])
    assert model.blocks[0].attn.pattern is None and model.blocks[1].attn.pattern == P.Neighborhood(GRID, 3)


def test_timm_create_model_and_pickling():
    cls = ft.Attention.with_pattern(P.Neighborhood((4, 4), 3), backend="reference")
    assert issubclass(cls, TimmAttention)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4,
                              embed_dim=32, depth=1, num_heads=2, reg_tokens=4, num_classes=3, attn_layer=cls)
    assert type(model.blocks[0].attn) is ft.Attention  # (a plain module: prints and pickles as one)
    ft.bind(model.eval())
    x = torch.randn(1, 3, 16, 16)
    out = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    assert again._model_args["attn_layer"]._pattern_defaults == cls._pattern_defaults
    torch.testing.assert_close(again(x), out)


# --- what timm passes ------------------------------------------------------------------------------

def test_attn_mask_and_is_causal_with_dense_pattern():
    ref, model = pair(None)
    x = image()
    n = PREFIX + GRID[0] * GRID[1]
    keep = torch.rand(2, 1, n, n, generator=torch.Generator().manual_seed(3)) < 0.5
    keep |= torch.eye(n, dtype=torch.bool)  # (every query keeps a key)
    bias = torch.randn(n, n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for mask in (keep, bias, keep[:, :, :1].expand(2, 1, 1, n).clone() | keep[:, :, :1, :1]):
        torch.testing.assert_close(model(x, attn_mask=mask), ref(x, attn_mask=mask), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model(x, is_causal=True), ref(x, is_causal=True), rtol=1e-10, atol=1e-10)


def test_attention_dropout_is_refused_in_training():
    _, model = pair(None, attn_drop_rate=0.1)
    x = image()
    model(x)  # (eval: no dropout)
    model.train()
    with pytest.raises(RuntimeError, match="attn_drop_rate=0"):
        model(x)
    for b in model.blocks:
        b.attn.attn_drop.p = 0.0
    model(x)


def test_bad_inputs_raise_clear_errors():
    neighborhood = lambda grid: P.Neighborhood(grid, 3)  # noqa: E731
    x = image()
    unbound = vit(ft.Attention.with_pattern(neighborhood))
    with pytest.raises(RuntimeError, match=r"bind\(model\)"):
        unbound(x)
    _, model = pair(neighborhood)
    with pytest.raises(ValueError, match="pattern None"):
        model(x, attn_mask=torch.ones(PREFIX + 60, PREFIX + 60, dtype=torch.bool))
    with pytest.raises(ValueError, match="pattern None"):
        model(x, is_causal=True)
    with pytest.raises(ValueError, match="tokens"):
        model.blocks[0].attn(torch.randn(2, PREFIX + 59, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must be"):
        model.blocks[0].attn(torch.randn(PREFIX + 60, 32, dtype=torch.float64))
    dropping = ft.bind(vit(ft.Attention.with_pattern(neighborhood), patch_drop_rate=0.5).train())
    with pytest.raises(ValueError, match="patch dropout"):
        dropping(x)
    model.blocks[0].attn.pattern = P.Neighborhood((10, 6), 3)  # (60 tokens, but not this grid)
    with pytest.raises(ValueError, match="canvas"):
        model(x)
    model.blocks[0].attn.pattern = lambda grid: 3
    with pytest.raises(TypeError, match="returned 3"):
        model(x)
    dense_model = pair(None)[1]
    with pytest.raises(ValueError, match="broadcast"):
        dense_model(x, attn_mask=torch.ones(PREFIX + 61, PREFIX + 61, dtype=torch.bool))
    with pytest.raises(ValueError, match="not both"):
        dense_model(x, attn_mask=torch.ones(PREFIX + 60, PREFIX + 60, dtype=torch.bool), is_causal=True)
    with pytest.raises(TypeError, match="function of the patch grid"):
        ft.Attention.with_pattern("neighborhood")
    with pytest.raises(TypeError, match="function of the patch grid"):
        ft.Attention.with_pattern(P.Neighborhood)  # (the class, not a pattern)
    with pytest.raises(ValueError, match="unknown"):
        ft.Attention.with_pattern(None, backend="fastest")
    with pytest.raises(TypeError, match="patch_embed"):
        ft.bind(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no foveate Attention"):
        ft.bind(vit())
    with pytest.raises(ValueError, match="no timm.layers.Attention"):
        ft.apply(torch.nn.Sequential(torch.nn.Linear(2, 2)), None)
    with pytest.raises(ValueError, match="layers"):
        ft.apply(vit(), None, layers=[2])


# --- imports ---------------------------------------------------------------------------------------

def test_import_foveate_does_not_import_timm():
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = "import sys, foveate, foveate.integrations, foveate.nn; assert 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


@pytest.mark.skipif(not torchvision_shim.STAND_IN_USED, reason="the real torchvision imported")
def test_stand_in_frozen_batch_norm():
    bn = torch.nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    frozen = torchvision_shim.FrozenBatchNorm2d(3)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(frozen(x), bn(x))
