"""Static block-sparse layouts (``P.Blocks``) at several densities on the triton backend (GPU).

For each sequence length and density: a random 128x128 block mask per head (each query block
keeps ``round(density * n)`` kv blocks chosen uniformly, the same count per row, so that the
work is balanced and the density exact), run by foveate's triton backend, forward and
forward+backward, next to our own dense kernel (``P.Dense()`` on the triton backend), cuDNN
dense SDPA and, with ``--flex``, FlexAttention on the same layout. Reported: time, speedup over
our dense kernel, the target of the issues (``0.85 / density`` forward, ``0.8 / density``
forward+backward) and effective TFLOP/s (allowed pairs only). Outputs are checked against the
float32 reference on one head before timing.

Usage: ``python benchmarks/block_sparse.py [--lens 8192 32768] [--densities 0.1 0.25 0.5 0.9]
[--heads 16] [--no-backward] [--flex] [--json FILE] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse

import torch

import foveate
from foveate import patterns as P

from common import bench_ms, cudnn_sdpa, fwd_bwd, run_header, write_outputs

BLOCK = 128


def _time(fn) -> float:
    """Milliseconds of ``fn()``, in shorter runs than the tiling script's (ten timings per length)."""
    return bench_ms(fn, warmup=25, rep=200)


def random_blocks(heads: int, n_blocks: int, density: float, gen) -> torch.Tensor:
    """``(1, heads, n, n)`` bool: each row keeps ``round(density * n)`` (at least 1) random blocks."""
    keep = max(1, round(density * n_blocks))
    scores = torch.rand(1, heads, n_blocks, n_blocks, device="cuda", generator=gen)
    idx = scores.topk(keep, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)


def run_length(n: int, densities, heads: int, dim: int, backward: bool, flex: bool) -> list[dict]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, grad = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
                     for _ in range(4))
    q, k, v = (t.requires_grad_(backward) for t in (q, k, v))
    pairs_dense = heads * n * n
    flops = lambda pairs: 4 * pairs * dim  # noqa: E731 - two matmuls of 2 flops per pair

    def time_pattern(pattern, backend):
        f = lambda q, k, v: foveate.attention(q, k, v, pattern, backend=backend)  # noqa: E731
        with torch.no_grad():
            fwd = _time(lambda: f(q, k, v))
        fb = _time(fwd_bwd(f, q, k, v, grad)) if backward else None
        return fwd, fb

    records = []
    base = {"tokens": n, "heads": heads}
    with torch.no_grad():
        cud = _time(lambda: cudnn_sdpa(q, k, v))
    cud_fb = _time(fwd_bwd(cudnn_sdpa, q, k, v, grad)) if backward else None
    dense_fwd, dense_fb = time_pattern(P.Dense(), "triton")
    records.append({**base, "density": 1.0, "layout": "dense", "fwd_ms": dense_fwd, "fwdbwd_ms": dense_fb,
                    "cudnn_fwd_ms": cud, "cudnn_fwdbwd_ms": cud_fb,
                    "fwd_tflops": flops(pairs_dense) / dense_fwd / 1e9,
                    "fwdbwd_tflops": flops(pairs_dense) * 3.5 / dense_fb / 1e9 if backward else None})
    print(f"N={n}: cuDNN fwd {cud:.3f} ms, triton dense fwd {dense_fwd:.3f} ms "
          f"({records[-1]['fwd_tflops']:.0f} TFLOP/s)" + (f", fwd+bwd {dense_fb:.3f} ms (cuDNN {cud_fb:.3f})"
                                                          if backward else ""), flush=True)
    nb = n // BLOCK
    for density in densities:
        mask = random_blocks(heads, nb, density, gen)
        pattern = P.Blocks(mask)
        real = mask.float().mean().item()
        with torch.no_grad():
            ref = foveate.attention(q[:, :1].float(), k[:, :1].float(), v[:, :1].float(), P.Blocks(mask[:, :1]),
                                    backend="reference")
            out = foveate.attention(q, k, v, pattern, backend="triton")
        err = (out[:, :1].float() - ref).abs().max().item()
        rec = {**base, "density": real, "layout": "random blocks", "max_err": err}
        if not err < 5e-2:
            rec["status"] = "WRONG"
            records.append(rec)
            print(f"N={n} density {real:.2f}: WRONG (max error {err:.3g})", flush=True)
            continue
        rec["fwd_ms"], rec["fwdbwd_ms"] = time_pattern(pattern, "triton")
        rec["fwd_speedup"] = dense_fwd / rec["fwd_ms"]
        rec["fwd_target"] = 0.85 / real
        pairs = real * pairs_dense
        rec["fwd_tflops"] = flops(pairs) / rec["fwd_ms"] / 1e9
        if backward:
            rec["fwdbwd_speedup"] = dense_fb / rec["fwdbwd_ms"]
            rec["fwdbwd_target"] = 0.8 / real
            rec["fwdbwd_tflops"] = flops(pairs) * 3.5 / rec["fwdbwd_ms"] / 1e9
        if flex:
            rec["flex_fwd_ms"], rec["flex_fwdbwd_ms"] = time_pattern(pattern, "flex")
        records.append(rec)
        fb = (f" | fwd+bwd {rec['fwdbwd_ms']:.3f} ms {rec['fwdbwd_speedup']:.2f}x (target {rec['fwdbwd_target']:.2f}x)"
              if backward else "")
        print(f"N={n} density {real:.2f}: fwd {rec['fwd_ms']:.3f} ms {rec['fwd_speedup']:.2f}x over dense "
              f"(target {rec['fwd_target']:.2f}x), {rec['fwd_tflops']:.0f} TFLOP/s{fb}", flush=True)
    return records


def markdown(records: list[dict], header: str) -> str:
    lines = [header, "",
             "| tokens | density | fwd ms | fwd speedup vs our dense (target) | fwd TFLOP/s | fwd+bwd ms "
             "| fwd+bwd speedup (target) | fwd+bwd TFLOP/s | flex fwd ms | flex fwd+bwd ms |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        if r.get("status") == "WRONG":
            lines.append(f"| {r['tokens']} | {r['density']:.2f} | WRONG RESULT (max error {r['max_err']:.3g}) |")
            continue
        if r["layout"] == "dense":
            extra = f" (cuDNN {r['cudnn_fwd_ms']:.3f})"
            fb_extra = f" (cuDNN {r['cudnn_fwdbwd_ms']:.3f})" if r.get("cudnn_fwdbwd_ms") else ""
            lines.append(f"| {r['tokens']} | dense | {r['fwd_ms']:.3f}{extra} | 1.00x | {r['fwd_tflops']:.0f} | "
                         f"{_f(r.get('fwdbwd_ms'))}{fb_extra} | 1.00x | {_f(r.get('fwdbwd_tflops'), 0)} | | |")
            continue
        fb = (f"{r['fwdbwd_ms']:.3f} | {r['fwdbwd_speedup']:.2f}x ({r['fwdbwd_target']:.2f}x) | "
              f"{r['fwdbwd_tflops']:.0f}" if r.get("fwdbwd_ms") else " | | ")
        lines.append(f"| {r['tokens']} | {r['density']:.2f} | {r['fwd_ms']:.3f} | {r['fwd_speedup']:.2f}x "
                     f"({r['fwd_target']:.2f}x) | {r['fwd_tflops']:.0f} | {fb} | {_f(r.get('flex_fwd_ms'))} | "
                     f"{_f(r.get('flex_fwdbwd_ms'))} |")
    return "\n".join(lines) + "\n"


def _f(x, digits=3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lens", nargs="*", type=int, default=[8192, 32768])
    parser.add_argument("--densities", nargs="*", type=float, default=[0.1, 0.25, 0.5, 0.9])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--flex", action="store_true", help="also FlexAttention on the same layouts")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/block_sparse.py needs a CUDA GPU")
    header = (f"{run_header()}, bf16, B=1, H={args.heads}, D={args.head_dim}, random P.Blocks layouts "
              f"(128x128 blocks), triton backend; speedups over our own dense kernel, same run")
    print(header, flush=True)
    records = []
    for n in args.lens:
        records += run_length(n, args.densities, args.heads, args.head_dim, not args.no_backward, args.flex)
        torch.cuda.empty_cache()
    write_outputs(records, markdown(records, header), args.json, args.markdown)


if __name__ == "__main__":
    main()
