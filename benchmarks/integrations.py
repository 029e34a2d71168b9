"""The integrations in whole models (GPU, bf16), against the models' own attention in the same run.

* **SmolLM2 prefill** (transformers): SmolLM2-135M's architecture (Llama, 30 layers, 9 query
  heads over 3 kv heads of 64) with random weights (the speed does not depend on them), one
  sequence of 8K and 32K tokens, dense causal: the whole forward (``logits_to_keep=1``, no
  cache) with ``attn_implementation="sdpa"`` and ``"foveate"``.
* **A Wan block** (diffusers): ``WanTransformer3DModel`` with Wan 2.1 1.3B's dimensions (12 heads
  of 128, FFN 8960) and one block, random weights, at a 480p / 81-frame latent (21 x 30 x 52
  tokens after patching) and 512 text tokens: the whole forward with diffusers' own attention
  (PyTorch SDPA) and with ``foveate.integrations.diffusers.apply`` of a 3-D neighborhood and of
  its strided form; beside it, the self-attention alone (``foveate.attention`` against SDPA on
  the same q, k, v), so the attention's share of the block shows.

Times are medians of ``triton.testing.do_bench`` (warm). Usage: ``python benchmarks/integrations.py
[--groups smollm2 wan] [--lengths 8192 32768] [--json FILE] [--markdown FILE]``.

``--tiny`` is a smoke run of the script's logic on a CPU (two layers, short sequences, a small
Wan canvas, float32; its times measure nothing).

The GPU machine has no package index: carry transformers and diffusers as wheels for its Python
(3.12), e.g. ``pip download --only-binary=:all: --python-version 3.12 --platform
manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .wheels transformers==5.25.0
diffusers==0.42.1`` (drop numpy's wheel: the machine has numpy), then install there with ``pip
install --no-index --find-links .wheels transformers diffusers``.
"""

from __future__ import annotations

import argparse
import json

import torch

import foveate
from foveate import patterns as P

WAN_CANVAS = (21, 30, 52)
WAN_KERNEL = (9, 15, 25)
WAN_STRIDE = (3, 5, 5)


class Setup:
    """Where and how big: the GPU run, or ``--tiny`` (CPU, small shapes, float32)."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.device = torch.device("cpu" if tiny else "cuda")
        self.dtype = torch.float32 if tiny else torch.bfloat16
        self.layers = 2 if tiny else 30
        self.wan = dict(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, text_dim=32, freq_dim=32,
                        in_channels=4, out_channels=4) if tiny else dict(num_attention_heads=12,
                                                                         attention_head_dim=128, ffn_dim=8960)
        self.canvas = (3, 4, 6) if tiny else WAN_CANVAS
        self.kernel = (3, 3, 3) if tiny else WAN_KERNEL
        self.stride = (1, 3, 3) if tiny else WAN_STRIDE
        self.text = (7, 32) if tiny else (512, 4096)


def _bench(fn, setup: Setup) -> float:
    with torch.no_grad():
        if setup.tiny:
            import time
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        from triton.testing import do_bench
        return do_bench(fn, warmup=3, rep=20, return_mode="median")


def _header(setup: Setup) -> str:
    name = "cpu (--tiny: times measure nothing)" if setup.tiny else torch.cuda.get_device_name()
    return f"foveate {foveate.__version__}, torch {torch.__version__}, {name}, {str(setup.dtype)[6:]}"


def smollm2_rows(lengths, setup: Setup) -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from foveate.integrations import transformers as ft

    ft.register()
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=setup.layers,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
                         max_position_embeddings=max(lengths), tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(setup.device, setup.dtype).eval()
    rows = []
    for n in lengths:
        ids = torch.randint(0, config.vocab_size, (1, n), device=setup.device)
        times, logits = {}, {}
        for impl in ("sdpa", "foveate"):
            model.set_attn_implementation(impl)
            with torch.no_grad():
                logits[impl] = model(input_ids=ids, logits_to_keep=64, use_cache=False).logits.float()
            times[impl] = _bench(lambda: model(input_ids=ids, logits_to_keep=1, use_cache=False), setup)
        # The same model on both: the last 64 positions' logits agree to bf16 rounding.
        diff = (logits["sdpa"] - logits["foveate"]).abs().max().item()
        row = dict(group="smollm2", case=f"SmolLM2-135M prefill, causal, {n} tokens", tokens=n,
                   sdpa_ms=times["sdpa"], foveate_ms=times["foveate"], speedup=times["sdpa"] / times["foveate"],
                   max_logit_diff=diff, logit_scale=logits["sdpa"].abs().max().item())
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def wan_rows(setup: Setup) -> list[dict]:
    from diffusers import WanTransformer3DModel

    from foveate.integrations import diffusers as fd

    torch.manual_seed(0)
    model = WanTransformer3DModel(num_layers=1, **setup.wan).to(setup.device, setup.dtype).eval()
    t, h, w = setup.canvas
    heads, dim = setup.wan["num_attention_heads"], setup.wan["attention_head_dim"]
    kw = dict(device=setup.device, dtype=setup.dtype)
    x = torch.randn(1, model.config.in_channels, t, 2 * h, 2 * w, **kw)
    text = torch.randn(1, *setup.text, **kw)
    step = torch.tensor([500], device=setup.device)

    def block():
        return model(hidden_states=x, timestep=step, encoder_hidden_states=text, return_dict=False)[0]

    n = t * h * w
    q, k, v = (torch.randn(1, heads, n, dim, **kw) for _ in range(3))
    sdpa_attn = _bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), setup)
    sdpa_block = _bench(block, setup)
    with torch.no_grad():  # a check first: dense through foveate's processor equals diffusers' own
        ref = block().float()
        with fd.apply(model, P.Dense()):
            dense_diff = (block().float() - ref).abs().max().item()
    print(f"Wan block, P.Dense() through foveate vs diffusers: max abs diff {dense_diff:.3g} "
          f"(outputs up to {ref.abs().max().item():.3g})", flush=True)
    rows = [dict(group="wan", case="dense (diffusers' SDPA)", tokens=n, canvas=list(setup.canvas), block_ms=sdpa_block, attention_ms=sdpa_attn,
                 attention_share=sdpa_attn / sdpa_block, density=1.0, dense_check=dense_diff)]
    for label, pattern in (("3-D neighborhood", P.Neighborhood(setup.canvas, setup.kernel)),
                           ("strided neighborhood", P.Neighborhood(setup.canvas, setup.kernel, stride=setup.stride))):
        handle = fd.apply(model, pattern)
        try:
            block_ms = _bench(block, setup)
        finally:
            handle.remove()
        attn_ms = _bench(lambda: foveate.attention(q, k, v, pattern), setup)
        record = foveate.simulate(pattern, q_len=n, kv_len=n)
        rows.append(dict(group="wan", case=f"{label} {pattern!r}", tokens=n, block_ms=block_ms, attention_ms=attn_ms,
                         attention_share=attn_ms / block_ms, density=record.density,
                         block_speedup=sdpa_block / block_ms, attention_speedup=sdpa_attn / attn_ms))
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows, header) -> str:
    lines = [header, ""]
    llm = [r for r in rows if r["group"] == "smollm2"]
    if llm:
        lines += ["| case | sdpa ms | foveate ms | foveate speedup | max logit diff (of max) |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['case']} | {r['sdpa_ms']:.2f} | {r['foveate_ms']:.2f} | {r['speedup']:.2f}x | "
                  f"{r['max_logit_diff']:.3g} ({r['logit_scale']:.3g}) |" for r in llm]
        lines.append("")
    wan = [r for r in rows if r["group"] == "wan"]
    if wan:
        canvas = "x".join(map(str, wan[0]["canvas"]))
        lines += [f"| Wan block, {canvas} tokens | density | block ms | attention ms | attention share | "
                  "block speedup | attention speedup |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in wan:
            lines.append(f"| {r['case']} | {r['density']:.3f} | {r['block_ms']:.2f} | {r['attention_ms']:.2f} | "
                         f"{r['attention_share']:.0%} | {r.get('block_speedup', 1.0):.2f}x | "
                         f"{r.get('attention_speedup', 1.0):.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", nargs="+", default=["smollm2", "wan"], choices=["smollm2", "wan"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--tiny", action="store_true", help="smoke run on a CPU: small shapes, float32")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        raise SystemExit("benchmarks/integrations.py needs a CUDA GPU (--tiny runs a CPU smoke test)")
    setup = Setup(args.tiny)
    lengths = [128, 320] if args.tiny else args.lengths
    header = _header(setup)
    print(header, flush=True)
    rows = []
    if "smollm2" in args.groups:
        rows += smollm2_rows(lengths, setup)
    if "wan" in args.groups:
        rows += wan_rows(setup)
    text = markdown(rows, header)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(header=header, rows=rows), f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
