"""foveate.integrations.diffusers: processors for Wan, HunyuanVideo, CogVideoX and LTX.

Tiny random models (no download). The references are diffusers' own processors whose attention
call is given a boolean mask built from the pattern's ``mask_mod`` (text rows and columns
allowed): an implementation independent of foveate's processors.
"""

from __future__ import annotations

import contextvars
import subprocess
import sys
import types

import pytest
import torch

import diffusers  # installed by the test extra: a missing diffusers fails here, never skips

DIFFUSERS_VERSION = diffusers.__version__

from foveate import patterns as P  # noqa: E402
from foveate.integrations import diffusers as fd  # noqa: E402

F_, H_, W_ = 3, 8, 6  # the latent canvas in tokens after patching (H != W: a swap would show)
CANVAS = (F_, H_, W_)
N_TEXT = 5
KERNEL = (1, 3, 5)  # asymmetric: a transposed canvas would show


def nbhd(canvas):
    return P.Neighborhood(canvas, KERNEL)


# -- tiny models and their inputs ------------------------------------------------------------------
def _wan():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                  rope_max_seq_len=32)
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(2, 4, F_, 2 * H_, 2 * W_, generator=g),
                  timestep=torch.tensor([3, 700]), encoder_hidden_states=torch.randn(2, N_TEXT, 16, generator=g))
    return model, inputs


def _hunyuan(padded=False):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                           num_layers=1, num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0,
                                           patch_size=2, patch_size_t=1, guidance_embeds=False, text_embed_dim=16,
                                           pooled_projection_dim=8, rope_axes_dim=(4, 6, 6))
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, N_TEXT, dtype=torch.long)
    if padded:
        mask[1, 3:] = 0  # element 1 has 3 text tokens, element 0 all 5 (or 3 too: "both")
    if padded == "both":
        mask[0, 3:] = 0
    inputs = dict(hidden_states=torch.randn(2, 4, F_, 2 * H_, 2 * W_, generator=g), timestep=torch.tensor([3, 700]),
                  encoder_hidden_states=torch.randn(2, N_TEXT, 16, generator=g), encoder_attention_mask=mask,
                  pooled_projections=torch.randn(2, 8, generator=g))
    return model, inputs


def _cogvideox(fused=False, v15=False):
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    torch.manual_seed(0)
    p_t = 2 if v15 else None
    model = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                        time_embed_dim=8, text_embed_dim=16, num_layers=2, sample_width=2 * W_,
                                        sample_height=2 * H_, sample_frames=4 * F_ * (p_t or 1) - 3, patch_size=2,
                                        patch_size_t=p_t, max_text_seq_length=N_TEXT,
                                        use_rotary_positional_embeddings=True)
    if fused:
        model.fuse_qkv_projections()
    g = torch.Generator().manual_seed(1)
    cos, sin = get_3d_rotary_pos_embed(16, ((0, 0), (H_, W_)), (H_, W_), F_)
    inputs = dict(hidden_states=torch.randn(2, F_ * (p_t or 1), 4, 2 * H_, 2 * W_, generator=g),
                  encoder_hidden_states=torch.randn(2, N_TEXT, 16, generator=g), timestep=torch.tensor([3, 700]),
                  image_rotary_emb=(cos, sin))
    return model, inputs


def _ltx():
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(0)
    model = LTXVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                       cross_attention_dim=32, num_layers=2, caption_channels=16)
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, N_TEXT, dtype=torch.long)
    mask[0, 4:] = 0
    inputs = dict(hidden_states=torch.randn(2, F_ * H_ * W_, 4, generator=g),
                  encoder_hidden_states=torch.randn(2, N_TEXT, 16, generator=g), timestep=torch.tensor([3, 700]),
                  encoder_attention_mask=mask, num_frames=F_, height=H_, width=W_)
    return model, inputs


MODELS = {
    "wan": (_wan, None),  # (builder, where the text tokens are in the self-attention)
    "hunyuan": (_hunyuan, "last"),
    "hunyuan-padded": (lambda: _hunyuan(padded=True), "last"),
    "hunyuan-padded-both": (lambda: _hunyuan(padded="both"), "last"),
    "cogvideox": (_cogvideox, "first"),
    "cogvideox-fused": (lambda: _cogvideox(fused=True), "first"),
    "cogvideox-1.5": (lambda: _cogvideox(v15=True), "first"),
    "ltx": (_ltx, None),
}


def build(name, dtype=torch.float64):
    model, inputs = MODELS[name][0]()
    model = model.to(dtype).eval()
    inputs = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in inputs.items()}
    return model, inputs


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def self_attentions(model):
    if hasattr(model, "blocks"):
        return [b.attn1 for b in model.blocks]
    if hasattr(model, "single_transformer_blocks"):
        return [b.attn for b in model.transformer_blocks] + [b.attn for b in model.single_transformer_blocks]
    return [b.attn1 for b in model.transformer_blocks]


# -- the reference: diffusers' processors, their attention given a mask -----------------------------
_MASK = contextvars.ContextVar("foveate_test_mask", default=None)


def allowed_pairs(pattern, n_video, n_text, text):
    """(N, N) bool: the pattern on the video tokens (brute force from mask_mod), text rows and
    columns all allowed."""
    video = torch.ones(n_video, n_video, dtype=torch.bool)
    if pattern is not None:
        i = torch.arange(n_video)
        zero = torch.zeros((), dtype=torch.long)
        video = pattern.mask_mod(n_video, n_video)(zero, zero, i[:, None], i[None, :]).expand(n_video, n_video)
    n = n_video + n_text
    full = torch.ones(n, n, dtype=torch.bool)
    s = slice(n_text, n) if text == "first" else slice(0, n_video)
    full[s, s] = video
    return full


class MaskedReference:
    """The layer's own diffusers processor, run with ``mask`` on its self-attention."""

    def __init__(self, original, pattern, text):
        self.original, self.pattern, self.text = original, pattern, text

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        n_video = hidden_states.shape[1]
        n_text = 0 if encoder_hidden_states is None or self.text is None else encoder_hidden_states.shape[1]
        token = _MASK.set(allowed_pairs(self.pattern, n_video, n_text, self.text))
        try:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        finally:
            _MASK.reset(token)


def _masked_sdpa(sdpa):
    def fn(q, k, v, attn_mask=None, **kwargs):  # (B, H, N, D)
        extra = _MASK.get()
        if extra is None or extra.shape != (q.shape[-2], k.shape[-2]):
            return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)
        assert attn_mask is None or attn_mask.dtype == torch.bool
        mask = extra if attn_mask is None else attn_mask & extra
        return sdpa(q, k, v, attn_mask=mask, **kwargs)
    return fn


@pytest.fixture
def reference(monkeypatch):
    """Patches diffusers' attention calls so that a ``MaskedReference`` layer applies its mask;
    returns ``install(model, {layer: pattern}, text)``."""
    from diffusers.models import attention_processor
    from diffusers.models.transformers import transformer_hunyuan_video, transformer_ltx, transformer_wan

    sdpa = _masked_sdpa(torch.nn.functional.scaled_dot_product_attention)

    def dispatch(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):  # (B, N, H, D)
        assert dropout_p == 0.0 and not is_causal
        out = sdpa(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attn_mask)
        return out.transpose(1, 2)

    for module in (transformer_wan, transformer_hunyuan_video, transformer_ltx):
        monkeypatch.setattr(module, "dispatch_attention_fn", dispatch)
    shim = types.SimpleNamespace(**{k: getattr(torch.nn.functional, k) for k in dir(torch.nn.functional)
                                    if not k.startswith("__")})
    shim.scaled_dot_product_attention = sdpa
    monkeypatch.setattr(attention_processor, "F", shim)

    def install(model, per_layer, text):
        for i, module in enumerate(self_attentions(model)):
            if i in per_layer:
                module.set_processor(MaskedReference(module.processor, per_layer[i], text))
    return install


def _close(a, b, tol=1e-10):
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), err


# -- (a) dense == the model; (c) remove() restores -------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_dense_pattern_equals_the_model_and_remove_restores(name):
    model, inputs = build(name)
    expected = run(model, inputs)
    originals = [m.processor for m in self_attentions(model)]
    handle = fd.apply(model, P.Dense(), backend="reference")
    assert all(isinstance(m.processor, fd.FoveateProcessor) for m in self_attentions(model))
    _close(run(model, inputs), expected)
    assert handle.canvas == CANVAS
    handle.remove()
    assert [m.processor for m in self_attentions(model)] == originals
    assert torch.equal(run(model, inputs), expected)
    handle.remove()  # a second call does nothing


def test_pattern_none_keeps_the_processors():
    model, inputs = build("hunyuan-padded")
    expected = run(model, inputs)
    originals = [m.processor for m in self_attentions(model)]
    with fd.apply(model, None) as handle:
        assert handle.layers == {} and [m.processor for m in self_attentions(model)] == originals
        assert torch.equal(run(model, inputs), expected)


# -- (b) sparse == a masked reference ----------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_neighborhood_equals_masked_reference(name, reference):
    model, inputs = build(name)
    dense = run(model, inputs)
    seen = []
    with fd.apply(model, lambda canvas: seen.append(canvas) or nbhd(canvas), backend="reference") as handle:
        out = run(model, inputs)
        assert handle.canvas == CANVAS
    assert seen == [CANVAS]  # the factory runs once per canvas, for every layer
    reference(model, dict.fromkeys(range(len(self_attentions(model))), nbhd(CANVAS)), MODELS[name][1])
    expected = run(model, inputs)
    _close(out, expected)
    assert (out - dense).abs().max() > 1e-3  # the pattern does change the result


# -- (d) per-layer choices ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["wan", "hunyuan-padded", "cogvideox", "ltx"])
@pytest.mark.parametrize("how", ["dict", "predicate", "indices"])
def test_dense_first_layer_then_sparse(name, how, reference):
    model, inputs = build(name)
    layers = {"dict": {0: None}, "predicate": lambda i: i >= 1, "indices": {1}}[how]
    handle = fd.apply(model, nbhd, layers=layers, backend="reference")
    assert list(handle.layers) == [1]
    out = run(model, inputs)
    handle.remove()
    reference(model, {1: nbhd(CANVAS)}, MODELS[name][1])
    _close(out, run(model, inputs))


def test_dict_gives_each_layer_its_pattern(reference):
    model, inputs = build("wan")
    other = P.Neighborhood(CANVAS, (3, 3, 3))
    with fd.apply(model, None, layers={0: nbhd, 1: other}, backend="reference"):
        out = run(model, inputs)
    reference(model, {0: nbhd(CANVAS), 1: other}, None)
    _close(out, run(model, inputs))


# -- the triton kernels (interpreted on a CPU: one tiny case) ----------------------------------------
def test_triton_backend(reference):
    from foveate import backends

    if "triton" not in backends.available():
        pytest.skip("triton is not available")
    model, inputs = build("wan", torch.float32)
    with fd.apply(model, nbhd, layers={0}, backend="triton"):
        out = run(model, inputs)
    reference(model, {0: nbhd(CANVAS)}, None)
    expected = run(model, inputs)
    assert (out - expected).abs().max().item() < 1e-4


# -- the canvas order: every model flattens its patches (T, H, W) in raster order --------------------
@pytest.mark.parametrize("name", ["wan", "hunyuan", "cogvideox", "cogvideox-1.5"])
def test_patch_tokens_are_raster_ordered(name):
    model, inputs = build(name)
    x = inputs["hidden_states"]
    frames_axis = 1 if name.startswith("cogvideox") else 2
    p_t = 2 if name == "cogvideox-1.5" else 1

    def embed(x):
        if name == "wan":
            return model.patch_embedding(x).flatten(2).transpose(1, 2)
        if name == "hunyuan":
            return model.x_embedder(x)
        text = inputs["encoder_hidden_states"]
        return model.patch_embed(text, x)[:, text.shape[1]:]

    with torch.no_grad():
        base = embed(torch.zeros_like(x))
        for f, h, w in [(0, 0, 1), (1, 2, 5), (2, 7, 3)]:
            one = torch.zeros_like(x)
            idx = [slice(None)] * 5
            idx[frames_axis] = slice(f * p_t, (f + 1) * p_t)
            idx[3], idx[4] = slice(2 * h, 2 * h + 2), slice(2 * w, 2 * w + 2)
            one[tuple(idx)] = 1.0
            changed = ((embed(one) - base).abs().amax(-1) > 0)[0].nonzero().flatten().tolist()
            assert changed == [(f * H_ + h) * W_ + w]


def test_ltx_tokens_are_raster_ordered():
    model, _ = build("ltx")
    grid = model.rope._prepare_video_coords(1, F_, H_, W_, None, torch.device("cpu"))[0]  # (N, 3): f, h, w
    f, h, w = torch.meshgrid(torch.arange(F_), torch.arange(H_), torch.arange(W_), indexing="ij")
    assert torch.equal(grid, torch.stack([f, h, w], -1).reshape(-1, 3).float())


# -- what the processors refuse ----------------------------------------------------------------------
def test_hunyuan_refuses_masks_it_cannot_honour():
    model, inputs = build("hunyuan")
    fd.apply(model, P.Dense(), backend="reference")
    attn = model.transformer_blocks[0].attn
    video, text = torch.randn(1, 4, 32, dtype=torch.float64), torch.randn(1, 3, 32, dtype=torch.float64)
    ok = torch.tensor([True] * 4 + [True, True, False]).view(1, 1, 1, 7)
    attn(video, text, attention_mask=ok)  # text padding: honoured
    for bad in (torch.tensor([True] * 4 + [True, False, True]).view(1, 1, 1, 7),  # a hole in the text
                torch.tensor([False] + [True] * 6).view(1, 1, 1, 7),  # a video key masked
                torch.ones(1, 1, 7, 7, dtype=torch.bool),  # per query
                torch.zeros(1, 1, 1, 7)):  # additive
        with pytest.raises(ValueError, match="attention_mask"):
            attn(video, text, attention_mask=bad)


def test_masks_and_foreign_sequences_are_refused():
    model, inputs = build("wan")
    fd.apply(model, nbhd, backend="reference")
    run(model, inputs)
    attn = model.blocks[0].attn1
    x = torch.randn(2, F_ * H_ * W_, 32, dtype=torch.float64)
    with pytest.raises(ValueError, match="attention_mask"):
        attn(x, None, torch.ones(2, 1, 1, F_ * H_ * W_, dtype=torch.bool), None)
    with pytest.raises(ValueError, match="canvas"):
        attn(x[:, :-1], None, None, None)  # not the canvas of the last forward
    attn.processor._parallel_config = object()
    with pytest.raises(ValueError, match="context parallelism"):
        attn(x, None, None, None)


def test_ltx_needs_the_canvas_for_a_factory():
    model, inputs = build("ltx")
    fd.apply(model, nbhd, backend="reference")
    inputs.pop("num_frames")
    with pytest.raises(ValueError, match="num_frames, height and width"):
        run(model, {**inputs, "video_coords": torch.zeros(2, 3, F_ * H_ * W_)})


def test_fixed_pattern_on_another_canvas_is_refused():
    model, inputs = build("wan")
    fd.apply(model, P.Neighborhood((3, 4, 16), KERNEL), backend="reference")
    with pytest.raises(ValueError, match="canvas"):
        run(model, inputs)


# -- (e) bad arguments ---------------------------------------------------------------------------------
def test_bad_arguments():
    model, _ = build("wan")
    originals = [m.processor for m in self_attentions(model)]
    with pytest.raises(TypeError, match="transformer"):
        fd.apply(torch.nn.Linear(2, 2), nbhd)
    with pytest.raises(TypeError, match="pattern"):
        fd.apply(model, "neighborhood")
    with pytest.raises(TypeError, match="pattern"):
        fd.apply(model, P.Neighborhood)  # a class, not a factory
    with pytest.raises(ValueError, match="layers"):
        fd.apply(model, nbhd, layers={2: None})
    with pytest.raises(ValueError, match="layers"):
        fd.apply(model, nbhd, layers=[-1])
    with pytest.raises(TypeError, match="layers"):
        fd.apply(model, nbhd, layers=[0.5])
    with pytest.raises(TypeError, match="layers"):
        fd.apply(model, nbhd, layers=3)
    with pytest.raises(TypeError, match=r"layers\[1\]"):
        fd.apply(model, nbhd, layers={1: 7})
    with pytest.raises(ValueError, match="backend"):
        fd.apply(model, nbhd, backend="nope")
    with pytest.raises(TypeError, match="backend"):
        fd.apply(model, nbhd, backend=None)
    assert [m.processor for m in self_attentions(model)] == originals  # nothing installed
    handle = fd.apply(model, nbhd, backend="reference")
    with pytest.raises(ValueError, match="already applied"):
        fd.apply(model, nbhd)
    handle.remove()
    model.blocks[0].attn1.set_processor(MaskedReference(originals[0], None, None))
    with pytest.raises(TypeError, match="MaskedReference"):
        fd.apply(model, nbhd)
    fd.apply(model, nbhd, layers=[1]).remove()  # the other layer is fine
    with pytest.raises(TypeError, match="pattern"):
        with fd.apply(model, lambda canvas: "x", layers=[1], backend="reference"):
            run(model, build("wan")[1])


def test_diffusers_is_imported_lazily():
    code = ("import sys, foveate, foveate.integrations.diffusers as fd; "
            "assert 'diffusers' not in sys.modules, 'imported'; print(fd.apply.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
