"""Static block-sparse layouts (``P.Blocks``) at several densities on the triton backend (GPU),
against dense and causal baselines in the same run.

For each sequence length, first the baselines: dense attention by our dense kernel
(``P.Dense()`` on the triton backend, the reference of every speedup), cuDNN SDPA and
FlexAttention; then causal attention by our kernel (``P.Causal()`` on the triton backend),
cuDNN SDPA (``is_causal=True``) and FlexAttention. Then, per density, a random 128x128 block
mask per head (each query block keeps ``round(density * n)`` kv blocks chosen uniformly, the
same count per row, so that the work is balanced and the density exact) on the triton backend
and, with ``--flex``, on FlexAttention. Every row is timed forward and forward+backward.

FlexAttention always runs through foveate's flex backend (one implementation): compiled
``torch.nn.attention.flex_attention`` with the ``BlockMask`` converted from the same layout
(all blocks full for dense; full blocks below the diagonal and masked diagonal blocks for
causal, as FlexAttention's own causal block mask). The dense and causal Flex rows are on by
default where FlexAttention is available (``--no-flex`` leaves every Flex row out).

Reported per row: time, speedup over our dense kernel, for our kernels on sparse layouts the
target of the issues (``0.85 / density`` forward, ``0.8 / density`` forward+backward), and
effective TFLOP/s (allowed pairs only: causal counts ``N (N + 1) / 2`` pairs per head). The
outputs of our kernels and of Flex are checked against the float32 reference on one head
before timing.

Usage: ``python benchmarks/block_sparse.py [--lens 8192 32768] [--densities 0.1 0.25 0.5 0.9]
[--heads 16] [--no-backward] [--flex] [--no-flex] [--json FILE] [--markdown FILE]``.
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


def run_length(n: int, densities, heads: int, dim: int, backward: bool, flex_baselines: bool,
               flex_random: bool) -> list[dict]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, grad = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
                     for _ in range(4))
    q, k, v = (t.requires_grad_(backward) for t in (q, k, v))
    pairs_dense = heads * n * n
    flops = lambda pairs: 4 * pairs * dim  # noqa: E731 - two matmuls of 2 flops per pair
    base = {"tokens": n, "heads": heads}
    records: list[dict] = []

    def of_pattern(pattern, backend):
        """``fn(q, k, v)`` running ``pattern`` on a foveate backend (``"flex"``: FlexAttention)."""
        return lambda q, k, v: foveate.attention(q, k, v, pattern, backend=backend)

    def max_error(pattern, backend, one_head) -> float:
        """Max abs error of ``backend`` against the float32 reference, on the first head
        (``one_head``: the pattern restricted to that head)."""
        with torch.no_grad():
            ref = foveate.attention(q[:, :1].float(), k[:, :1].float(), v[:, :1].float(), one_head,
                                    backend="reference")
            out = foveate.attention(q, k, v, pattern, backend=backend)
        return (out[:, :1].float() - ref).abs().max().item()

    def add_row(layout: str, kernel: str, density: float, fn, *, check=None, target: bool = False) -> None:
        """Time ``fn(q, k, v)`` forward (and forward+backward) and record the row.

        ``check``: ``(pattern, backend, one_head)`` for :func:`max_error` first (a wrong result
        is recorded as such, not timed). ``target``: also the issues' target speedups."""
        rec = {**base, "layout": layout, "kernel": kernel, "density": density}
        records.append(rec)
        if check is not None:
            rec["max_err"] = max_error(*check)
            if not rec["max_err"] < 5e-2:
                rec["status"] = "WRONG"
                print(f"N={n} {layout} {kernel}: WRONG (max error {rec['max_err']:.3g})", flush=True)
                if len(records) == 1:  # our dense kernel: every speedup is relative to it
                    raise SystemExit(f"N={n}: our dense kernel is wrong (max error {rec['max_err']:.3g})")
                return
        with torch.no_grad():
            rec["fwd_ms"] = _time(lambda: fn(q, k, v))
        rec["fwdbwd_ms"] = _time(fwd_bwd(fn, q, k, v, grad)) if backward else None
        ours = records[0]  # our dense kernel, the first row
        pairs = density * pairs_dense
        rec["fwd_speedup"] = ours["fwd_ms"] / rec["fwd_ms"]
        rec["fwd_tflops"] = flops(pairs) / rec["fwd_ms"] / 1e9
        if target:
            rec["fwd_target"] = 0.85 / density
        if backward:
            rec["fwdbwd_speedup"] = ours["fwdbwd_ms"] / rec["fwdbwd_ms"]
            rec["fwdbwd_tflops"] = flops(pairs) * 3.5 / rec["fwdbwd_ms"] / 1e9
            if target:
                rec["fwdbwd_target"] = 0.8 / density
        print(f"N={n} {layout} ({density:.2f}) {kernel}: " + _summary(rec), flush=True)

    dense, causal = P.Dense(), P.Causal()
    causal_density = (n + 1) / (2 * n)  # N (N + 1) / 2 allowed pairs of N^2
    add_row("dense", "triton", 1.0, of_pattern(dense, "triton"), check=(dense, "triton", dense))
    add_row("dense", "cudnn", 1.0, cudnn_sdpa)
    if flex_baselines:
        add_row("dense", "flex", 1.0, of_pattern(dense, "flex"), check=(dense, "flex", dense))
    add_row("causal", "triton", causal_density, of_pattern(causal, "triton"), check=(causal, "triton", causal),
            target=True)
    add_row("causal", "cudnn", causal_density, lambda q, k, v: cudnn_sdpa(q, k, v, causal=True))
    if flex_baselines:
        add_row("causal", "flex", causal_density, of_pattern(causal, "flex"), check=(causal, "flex", causal))
    nb = n // BLOCK
    for density in densities:
        mask = random_blocks(heads, nb, density, gen)
        pattern, one_head = P.Blocks(mask), P.Blocks(mask[:, :1])
        real = mask.float().mean().item()
        add_row("random blocks", "triton", real, of_pattern(pattern, "triton"), check=(pattern, "triton", one_head),
                target=True)
        if flex_random:
            add_row("random blocks", "flex", real, of_pattern(pattern, "flex"), check=(pattern, "flex", one_head))
    return records


def _summary(rec: dict) -> str:
    """One printed line of a timed row."""
    def part(kind: str, label: str) -> str:
        target = f" (target {rec[kind + '_target']:.2f}x)" if kind + "_target" in rec else ""
        return (f"{label} {rec[kind + '_ms']:.3f} ms, {rec[kind + '_speedup']:.2f}x over our dense{target}, "
                f"{rec[kind + '_tflops']:.0f} TFLOP/s")

    return part("fwd", "fwd") + (" | " + part("fwdbwd", "fwd+bwd") if rec.get("fwdbwd_ms") is not None else "")


def markdown(records: list[dict], header: str) -> str:
    lines = [header, "",
             "| tokens | layout | density | kernel | fwd ms | fwd speedup vs our dense (target) | fwd TFLOP/s "
             "| fwd+bwd ms | fwd+bwd speedup (target) | fwd+bwd TFLOP/s |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        row = f"| {r['tokens']} | {r['layout']} | {r['density']:.2f} | {r['kernel']} | "
        if r.get("status") == "WRONG":
            lines.append(row + f"WRONG RESULT (max error {r['max_err']:.3g}) | | | | | |")
            continue
        cells = []
        for kind in ("fwd", "fwdbwd"):
            if r.get(kind + "_ms") is None:
                cells += ["", "", ""]
                continue
            target = f" ({r[kind + '_target']:.2f}x)" if kind + "_target" in r else ""
            cells += [f"{r[kind + '_ms']:.3f}", f"{r[kind + '_speedup']:.2f}x{target}", f"{r[kind + '_tflops']:.0f}"]
        lines.append(row + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lens", nargs="*", type=int, default=[8192, 32768])
    parser.add_argument("--densities", nargs="*", type=float, default=[0.1, 0.25, 0.5, 0.9])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--flex", action="store_true", help="also FlexAttention on the random layouts")
    parser.add_argument("--no-flex", action="store_true", help="no FlexAttention rows (dense and causal baselines)")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    if args.flex and args.no_flex:
        parser.error("--flex and --no-flex contradict each other")
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/block_sparse.py needs a CUDA GPU")
    flex_ok = "flex" in foveate.backends.available()
    if args.flex and not flex_ok:
        raise SystemExit("--flex: FlexAttention is not available in this torch "
                         f"({torch.__version__}; backends available: {foveate.backends.available()})")
    flex_baselines = flex_ok and not args.no_flex
    header = (f"{run_header()}, bf16, B=1, H={args.heads}, D={args.head_dim}; random P.Blocks layouts "
              f"(128x128 blocks); kernels: triton = foveate's triton backend, cudnn = cuDNN SDPA, flex = "
              f"compiled FlexAttention (foveate's flex backend, BlockMask from the same layout); speedups "
              f"over our own dense kernel, same run")
    print(header, flush=True)
    if not flex_baselines:
        print("FlexAttention rows left out: " + ("--no-flex" if args.no_flex else
              f"FlexAttention is not available in torch {torch.__version__}"), flush=True)
    records = []
    for n in args.lens:
        records += run_length(n, args.densities, args.heads, args.head_dim, not args.no_backward, flex_baselines,
                              args.flex)
        torch.cuda.empty_cache()
    write_outputs(records, markdown(records, header), args.json, args.markdown)


if __name__ == "__main__":
    main()
