"""Content-selected block sparsity on the triton backend (GPU): selection cost and total time.

For each length and for causal and non-causal attention: our own dense (or causal) kernel and
cuDNN as baselines, then ``P.BlockTopK`` with the ``"mean"`` score (MoBA / SpargeAttn) and the
``"antidiagonal"`` score (XAttention) at block densities of 10% and 25% of the dense
counterpart (``k`` chosen so; for causal attention the early query blocks have fewer
candidates), and ``P.XAttention()`` (top-p 0.9) for its own density on these inputs. Reported:

- ``select_ms``: ``pattern.select(q, k)`` plus building the layout (what every call pays),
  timed alone: host and GPU (a lone selection is host-bound at 32K);
- ``select_gpu_ms``: the same as a replayed CUDA graph (of ten selections in a row, which
  spreads the graph's own launch over them), its GPU time alone: what a selection costs
  inside a model, whose host runs ahead of the GPU (``select / attention`` uses it);
- ``attn_ms``: the sparse attention alone, on the already built layout;
- ``total_ms``: ``foveate.attention(q, k, v, pattern)`` end to end; speedup = dense / total;
- effective TFLOP/s of the attention (allowed pairs only).

The inputs are random with planted structure (each query block's queries share a direction
with a few random key blocks), so that the selection has something to find; the times depend
on the density, not on what is selected. Outputs are checked against the reference backend on
the selected mask (one head, the shortest length) before timing.

Usage: ``python benchmarks/content_selected.py [--lens 32768 131072] [--densities 0.1 0.25]
[--heads 16] [--json FILE] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse

import torch

import foveate
from foveate import patterns as P

from common import bench_ms, cudnn_sdpa, graph_ms, run_header, write_outputs

BLOCK = 128
SELECTIONS_PER_GRAPH = 10  # (select_gpu_ms)


def _time(fn) -> float:
    return bench_ms(fn, warmup=25, rep=150)


def structured_inputs(heads: int, n: int, dim: int, gen) -> tuple[torch.Tensor, ...]:
    """q, k, v ``(1, heads, n, dim)`` bf16: unit-variance noise, plus for each query block a shared
    direction that the keys of 4 random key blocks also carry."""
    nb = n // BLOCK
    q, k, v = (torch.randn(1, heads, n, dim, device="cuda", generator=gen) for _ in range(3))
    dirs = torch.randn(1, heads, nb, dim, device="cuda", generator=gen)
    q += dirs.repeat_interleave(BLOCK, dim=2)
    targets = torch.randint(0, nb, (1, heads, nb, 4), device="cuda", generator=gen)
    key_dirs = torch.zeros(1, heads, nb, dim, device="cuda")
    key_dirs.scatter_add_(2, targets.flatten(2)[..., None].expand(-1, -1, -1, dim),
                          dirs.repeat_interleave(4, dim=2))
    k += key_dirs.repeat_interleave(BLOCK, dim=2)
    return tuple(t.to(torch.bfloat16) for t in (q, k, v))


def topk_for_density(density: float, nb: int, causal: bool) -> int:
    """The ``k`` whose selection covers ``density`` of the dense (or causal) blocks."""
    if not causal:
        return max(1, round(density * nb))
    rows = torch.arange(1, nb + 1)
    total = rows.sum().item()
    return min(range(1, nb + 1), key=lambda k: abs(torch.clamp(rows, max=k).sum().item() / total - density))


def run_case(n: int, causal: bool, densities, heads: int, dim: int, check: bool) -> list[dict]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = structured_inputs(heads, n, dim, gen)
    nb = n // BLOCK
    base = {"tokens": n, "heads": heads, "causal": causal}
    dense_pattern = P.Causal() if causal else P.Dense()
    pairs_dense = heads * (n * (n + 1) // 2 if causal else n * n)
    flops = lambda pairs: 4 * pairs * dim  # noqa: E731

    with torch.no_grad():
        dense_ms = _time(lambda: foveate.attention(q, k, v, dense_pattern, backend="triton"))
        cudnn_ms = _time(lambda: cudnn_sdpa(q, k, v, causal))
    records = [{**base, "method": "dense", "density": 1.0, "total_ms": dense_ms, "attn_ms": dense_ms,
                "cudnn_ms": cudnn_ms, "tflops": flops(pairs_dense) / dense_ms / 1e9}]
    print(f"N={n} causal={causal}: our {'causal' if causal else 'dense'} {dense_ms:.2f} ms "
          f"({records[0]['tflops']:.0f} TFLOP/s), cuDNN {cudnn_ms:.2f} ms", flush=True)

    cases = []
    for density in densities:
        kk = topk_for_density(density, nb, causal)
        cases += [(f"top-k mean {density:.0%}", P.BlockTopK(kk, score="mean", causal=causal), density),
                  (f"top-k antidiagonal {density:.0%}", P.BlockTopK(kk, score="antidiagonal", causal=causal),
                   density)]
    cases.append(("XAttention top-p 0.9", P.XAttention(causal=causal), None))
    for name, pattern, target in cases:
        with torch.no_grad():
            sel = pattern.select(q, k)
            layout = sel.build(n, n, block_q=BLOCK, block_kv=BLOCK, device=q.device)
            rec = {**base, "method": name, "pattern": repr(pattern), "target_density": target,
                   "density": sel.block_density()}
            if check:
                rec["max_err"] = _check(q, k, v, sel)
            def select(pattern=pattern):
                return pattern.select(q, k).build(n, n, block_q=BLOCK, block_kv=BLOCK, device=q.device)

            select_ms, select_gpu_ms = _time(select), graph_ms(select, calls=SELECTIONS_PER_GRAPH)
            attn_ms = _time(lambda: foveate.attention(q, k, v, sel, backend="triton"))
            total_ms = _time(lambda: foveate.attention(q, k, v, pattern, backend="triton"))
        pairs = layout.allowed_pairs()
        rec.update(select_ms=select_ms, select_gpu_ms=select_gpu_ms, attn_ms=attn_ms, total_ms=total_ms,
                   select_share=select_gpu_ms / attn_ms,
                   speedup=dense_ms / total_ms, attn_speedup=dense_ms / attn_ms,
                   tflops=flops(pairs) / attn_ms / 1e9)
        records.append(rec)
        print(f"  {name}: density {rec['density']:.3f}, select {select_ms:.3f} ms, on the GPU "
              f"{select_gpu_ms:.3f} ms ({rec['select_share']:.1%} of attention), attention {attn_ms:.3f} ms "
              f"({rec['tflops']:.0f} TFLOP/s), total {total_ms:.3f} ms "
              f"= {rec['speedup']:.2f}x over dense" + (f", max err {rec['max_err']:.3g}" if check else ""),
              flush=True)
    return records


def _check(q, k, v, sel) -> float:
    """Max error of the triton output on head 0 against the reference on the selected mask."""
    out = foveate.attention(q, k, v, sel, backend="triton")[:, :1].float()
    one = P.SelectedBlocks(sel.selected[:, :1], q_len=sel.q_len, kv_len=sel.kv_len, query_block=sel.query_block,
                           block=sel.block, causal=sel.causal)
    ref = foveate.attention(q[:, :1].float(), k[:, :1].float(), v[:, :1].float(), one, backend="reference")
    return (out - ref).abs().max().item()


def markdown(records: list[dict], header: str) -> str:
    lines = [header, "",
             "| tokens | causal | method | block density | select ms | select GPU ms | select GPU / attention "
             "| attention ms | attention TFLOP/s | total ms | total speedup vs our dense |",
             "|---:|:---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        if r["method"] == "dense":
            lines.append(f"| {r['tokens']} | {'yes' if r['causal'] else 'no'} | our {'causal' if r['causal'] else 'dense'}"
                         f" kernel (cuDNN {r['cudnn_ms']:.2f} ms) | 1 | | | | {r['attn_ms']:.2f} | {r['tflops']:.0f} | "
                         f"{r['total_ms']:.2f} | 1.00x |")
            continue
        lines.append(f"| {r['tokens']} | {'yes' if r['causal'] else 'no'} | {r['method']} | {r['density']:.3f} | "
                     f"{r['select_ms']:.3f} | {r['select_gpu_ms']:.3f} | {r['select_share']:.1%} | "
                     f"{r['attn_ms']:.3f} | {r['tflops']:.0f} | "
                     f"{r['total_ms']:.3f} | {r['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lens", nargs="*", type=int, default=[32768, 131072])
    parser.add_argument("--densities", nargs="*", type=float, default=[0.1, 0.25])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--causal", nargs="*", type=int, default=[0, 1], help="1 = causal, 0 = not")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/content_selected.py needs a CUDA GPU")
    header = (f"{run_header()}, bf16, B=1, H={args.heads}, D={args.head_dim}, 128x128 blocks, "
              f"triton backend; density relative to the dense (or causal) blocks")
    print(header, flush=True)
    records = []
    for i, n in enumerate(args.lens):
        for causal in args.causal:
            records += run_case(n, bool(causal), args.densities, args.heads, args.head_dim, check=i == 0)
            torch.cuda.empty_cache()
    write_outputs(records, markdown(records, header), args.json, args.markdown)


if __name__ == "__main__":
    main()
