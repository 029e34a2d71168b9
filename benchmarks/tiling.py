"""Token tiling on the published Generalized Neighborhood Attention cases (GPU).

For each case: cuDNN dense SDPA, and foveate's flex (and/or triton: ``--backends``) backend in raster order (``tile=None``),
with a hand-picked tile (16x8 / 2x8x8 as in GNA's FlexAttention runs) and with automatic
tiling (``tile="auto"``); forward and forward+backward, bf16, warm, median, all in one run.
Next to each measured speedup over cuDNN: the simulator's speed-of-light bound of that
layout, and the layout build time. Outputs are checked against the reference backend
(fp32) before timing.

Usage: ``python benchmarks/tiling.py [--cases NAME ...] [--backends flex triton] [--no-backward]
[--json FILE] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import foveate
from foveate import patterns as P
from foveate.simulator import choose_tile, simulate
from foveate.tiling import Tiled

from common import bench_ms, cudnn_sdpa, fwd_bwd, run_header, write_outputs

N = P.Neighborhood
CASES = {
    # name: (pattern, heads, hand tile)
    "1d-w2048": (N((32768,), 2048), 1, None),
    "1d-w2048-s256": (N((32768,), 2048, stride=256), 1, None),
    "1d-blocked": (N((32768,), 2048, stride=2048), 1, None),
    "2d-w80": (N((256, 256), (80, 80)), 24, (16, 8)),
    "2d-w80-s16": (N((256, 256), (80, 80), stride=(16, 16)), 24, (16, 8)),
    "3d-hunyuan": (N((30, 48, 80), (18, 24, 24)), 1, (2, 8, 8)),
    "3d-hunyuan-s": (N((30, 48, 80), (18, 24, 24), stride=(16, 8, 8)), 1, (2, 8, 8)),
    "2d-k13": (N((128, 128), (13, 13)), 16, (16, 8)),
    "3d-k7x15x15": (N((16, 64, 64), (7, 15, 15)), 16, (2, 8, 8)),
}


def run_case(name, pattern, heads, hand_tile, backward: bool, dim: int = 128, backends=("flex",)) -> list[dict]:
    n = pattern.default_lengths()[0]
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
               .requires_grad_(backward) for _ in range(3))
    grad = torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    records = []
    dense_fwd = bench_ms(lambda: cudnn_sdpa(q, k, v))
    dense_fb = bench_ms(fwd_bwd(cudnn_sdpa, q, k, v, grad)) if backward else None
    auto_tile = choose_tile(pattern) if len(pattern.canvas) > 1 else None
    variants = [("raster", None)]
    if hand_tile is not None and hand_tile != auto_tile:
        variants.append(("hand " + "x".join(map(str, hand_tile)), hand_tile))
    if auto_tile is not None:
        variants.append(("auto " + "x".join(map(str, auto_tile)), auto_tile))
    with torch.no_grad():
        # One fp32 reference on a slice of heads keeps the check cheap.
        ref = foveate.attention(q[:, :1].float(), k[:, :1].float(), v[:, :1].float(), pattern,
                                backend="reference")
    for backend, (label, tile) in ((b, var) for b in backends for var in variants):
        t0 = time.perf_counter()
        sim = simulate(pattern, tile=tile)
        sim_s = time.perf_counter() - t0
        fn = lambda q, k, v, tile=tile, backend=backend: foveate.attention(  # noqa: E731
            q, k, v, pattern, backend=backend, tile=tile)
        with torch.no_grad():
            out = fn(q, k, v)
        err = (out[:, :1].float() - ref).abs().max().item()
        rec = dict(case=name, backend=backend, variant=label, tile=tile, heads=heads, tokens=n,
                   dense_fwd_ms=dense_fwd, dense_fwdbwd_ms=dense_fb, max_err=err,
                   speed_of_light=sim.speedup_bound, blocks_visited=sim.blocks_visited,
                   blocks_partial=sim.blocks_partial, simulate_ms=sim_s * 1e3)
        if not err < 5e-2:
            rec["status"] = "WRONG"
            records.append(rec)
            continue
        with torch.no_grad():
            rec["fwd_ms"] = bench_ms(lambda: fn(q, k, v))
            if tile is not None:  # the same without the token permutation (pre-tiled inputs)
                tiled = Tiled(pattern, tile)
                qt, kt, vt = (tiled.order.tile_tokens(t) for t in (q, k, v))
                rec["fwd_pretiled_ms"] = bench_ms(lambda: foveate.attention(qt, kt, vt, tiled, backend=backend))
        rec["fwd_speedup"] = dense_fwd / rec["fwd_ms"]
        if backward:
            rec["fwdbwd_ms"] = bench_ms(fwd_bwd(fn, q, k, v, grad))
            rec["fwdbwd_speedup"] = dense_fb / rec["fwdbwd_ms"]
        records.append(rec)
        print(format_row(rec), flush=True)
    return records


def warm_case(pattern, heads, hand_tile, backends, backward: bool, dim: int = 128) -> None:
    """Run every (backend, order) of a case once: compiles its kernels, times nothing."""
    n = pattern.default_lengths()[0]
    q, k, v = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16).requires_grad_(backward)
               for _ in range(3))
    auto_tile = choose_tile(pattern) if len(pattern.canvas) > 1 else None
    for backend in backends:
        for tile in {None, hand_tile, auto_tile}:
            out = foveate.attention(q, k, v, pattern, backend=backend, tile=tile)
            if backward:
                out.sum().backward()
            if tile is not None:
                tiled = Tiled(pattern, tile)
                with torch.no_grad():
                    foveate.attention(*(tiled.order.tile_tokens(t) for t in (q, k, v)), tiled, backend=backend)
    torch.cuda.synchronize()


def build_times(pattern) -> dict:
    """Layout build time (ms, warm median) of the pattern in raster and auto-tiled order."""
    out = {}
    tile = choose_tile(pattern) if len(pattern.canvas) > 1 else None
    for label, target in (("raster", pattern), ("tiled", Tiled(pattern, tile) if tile else None)):
        if target is None:
            continue
        lengths = target.default_lengths()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            target.build(*lengths, device="cuda")
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times[1:]) * 1e3
    return out


def format_row(r: dict) -> str:
    fb = f"{r['fwdbwd_ms']:9.3f} {r['fwdbwd_speedup']:6.2f}x" if "fwdbwd_ms" in r else " " * 17
    pre = (f" (pre-tiled {r['dense_fwd_ms'] / r['fwd_pretiled_ms']:5.2f}x)" if "fwd_pretiled_ms" in r
           else " " * 20)
    return (f"{r['case']:15} {r.get('backend', 'flex'):6} {r['variant']:16} fwd {r['fwd_ms']:9.3f} ms {r['fwd_speedup']:6.2f}x{pre} | "
            f"fwd+bwd {fb} | speed of light {r['speed_of_light']:6.2f}x | "
            f"dense {r['dense_fwd_ms']:.3f} ms | err {r['max_err']:.1e}")


def markdown(records: list[dict], header: str) -> str:
    """The records as the Markdown table of docs/benchmarks.md."""
    lines = [
        header, "",
        "| case | backend | order | fwd ms | fwd speedup | pre-tiled fwd speedup | fwd+bwd ms | fwd+bwd speedup "
        "| speed of light | visited blocks (partial) | layout build ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if r.get("status") == "WRONG":
            lines.append(f"| {r['case']} | {r.get('backend', 'flex')} | {r['variant']} | WRONG RESULT (max error {r['max_err']:.3g}) |")
            continue
        pre = f"{r['dense_fwd_ms'] / r['fwd_pretiled_ms']:.2f}x" if "fwd_pretiled_ms" in r else ""
        fb = (f"{r['fwdbwd_ms']:.3f} | {r['fwdbwd_speedup']:.2f}x" if "fwdbwd_ms" in r else " | ")
        build = r["build_ms"].get("tiled" if r["tile"] else "raster", float("nan"))
        lines.append(
            f"| {r['case']} | {r.get('backend', 'flex')} | {r['variant']} | {r['fwd_ms']:.3f} | {r['fwd_speedup']:.2f}x | {pre} | {fb} | "
            f"{r['speed_of_light']:.2f}x | {r['blocks_visited']} ({r['blocks_partial']}) | {build:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--backends", nargs="*", default=["flex"], choices=["flex", "triton"])
    parser.add_argument("--warm-only", action="store_true",
                        help="run each variant once (fills Triton's compile cache; several at once) and stop")
    parser.add_argument("--json", help="write the records to this file")
    parser.add_argument("--markdown", help="write the Markdown table to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/tiling.py needs a CUDA GPU")
    header = (f"{run_header()}, bf16, B=1, D=128, flex backend; speedups over cuDNN dense SDPA "
              f"on the same shape, same run")
    header = header.replace("flex backend", " and ".join(args.backends) + " backend" + "s" * (len(args.backends) > 1))
    print(header, flush=True)
    if args.warm_only:
        for name in args.cases:
            warm_case(CASES[name][0], CASES[name][1], CASES[name][2], args.backends, not args.no_backward)
        return
    records = []
    for name in args.cases:
        pattern, heads, hand = CASES[name]
        builds = build_times(pattern)
        print(f"{name}: layout build " + ", ".join(f"{k} {v:.1f} ms" for k, v in builds.items()), flush=True)
        for rec in run_case(name, pattern, heads, hand, backward=not args.no_backward,
                            backends=args.backends):
            rec["build_ms"] = builds
            records.append(rec)
        torch.cuda.empty_cache()
    write_outputs(records, markdown(records, header), args.json, args.markdown)


if __name__ == "__main__":
    main()
