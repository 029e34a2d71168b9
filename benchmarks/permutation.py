"""Cost of the token permutation that tiling adds around attention (GPU).

For each canvas, in both directions (raster -> tiled: ``tile``, tiled -> raster: ``untile``):
``TiledOrder.tile_tokens`` / ``untile_tokens`` with ``method="torch"`` (reshape + permute
copies) and ``method="triton"`` (the gathering copy kernel of ``foveate.tiling.permute_triton``),
``index_select`` with the permutation indices, the Triton kernel on an input in
``(B, N, H, D)`` memory order (a ``q`` straight from a projection, seen through
``transpose(1, 2)``; the torch path copies it first), the Triton kernel on lse-shaped
``(B, H, N)`` float32 tensors, and a plain ``clone`` of the same bytes (the memory-bandwidth
ceiling). Default bf16, D=128. Both methods are checked to agree exactly before timing.

With ``--sweep``, the Triton kernel is also timed at each launch config
``(BLOCK_N, BLOCK_D, num_warps)`` of a small grid, and the best one is printed per case (the
data behind ``tiling_triton.launch_config``).

Usage: ``python benchmarks/permutation.py [--dtype bf16] [--head-dim 128] [--sweep]``.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton

from foveate.tiling import permute_triton as tiling_triton
from foveate.tiling import TiledOrder

from common import bench_ms, run_header

CASES = [((256, 256), (8, 16), 24), ((128, 128), (8, 16), 16), ((30, 48, 80), (2, 8, 8), 1),
         ((16, 64, 64), (4, 4, 8), 16), ((100, 100), (8, 16), 16), ((21, 45, 80), (2, 8, 8), 8)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SWEEP_BLOCK_N = (16, 32, 64, 128, 256)
SWEEP_WARPS = (2, 4, 8)


def _ms(fn) -> float:
    return bench_ms(fn, warmup=25, rep=100)


def run_case(canvas, tile, heads, dim, dtype, sweep: bool) -> None:
    order = TiledOrder(canvas, tile)
    x = torch.randn(1, heads, order.num_canvas, dim, device="cuda", dtype=dtype)
    xt = order.tile_tokens(x, method="torch")
    x_bnhd = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, (B, N, H, D) in memory
    lse = torch.randn(1, heads, order.num_tokens, device="cuda", dtype=torch.float32)
    tiled_to_raster, raster_to_tiled = order.permutation("cuda")

    # Exact agreement of the two methods (a copy), before any timing.
    for got, want, what in [
        (order.tile_tokens(x, method="triton"), xt, "tile"),
        (order.untile_tokens(xt, method="triton"), x, "untile"),
        (order.tile_tokens(x_bnhd, method="triton"), xt, "tile of a (B, N, H, D) input"),
        (order.untile_tokens(lse, method="triton"), order.untile_tokens(lse, method="torch"), "untile of lse"),
    ]:
        if not torch.equal(got, want):
            raise SystemExit(f"{canvas} tile {tile}: triton and torch differ ({what})")

    gb = 2 * x.numel() * x.element_size() / 1e9  # bytes read + written (the canvas, without padding)
    rows = {
        "tile": {
            "torch": lambda: order.tile_tokens(x, method="torch"),
            "triton": lambda: order.tile_tokens(x, method="triton"),
            "index_select": lambda: x.index_select(2, tiled_to_raster.clamp(min=0)),
            "torch BNHD": lambda: order.tile_tokens(x_bnhd, method="torch"),
            "triton BNHD": lambda: order.tile_tokens(x_bnhd, method="triton"),
        },
        "untile": {
            "torch": lambda: order.untile_tokens(xt, method="torch"),
            "triton": lambda: order.untile_tokens(xt, method="triton"),
            "index_select": lambda: xt.index_select(2, raster_to_tiled),
        },
    }
    clone = _ms(lambda: x.clone())
    pad = f", padded {order.num_tokens}" if order.has_padding else ""
    print(f"{canvas} tile {tile} H={heads}{pad}, {gb:.3f} GB; clone {clone:.3f} ms ({gb / clone:.2f} TB/s)")
    for direction, fns in rows.items():
        ms = {k: _ms(f) for k, f in fns.items()}
        print(f"  {direction:6s} " + ", ".join(f"{k} {v:.3f} ms ({gb / v:.2f} TB/s)" for k, v in ms.items()),
              flush=True)
    lse_gb = 2 * order.num_canvas * heads * 4 / 1e9
    lse_ms = {m: _ms(lambda m=m: order.untile_tokens(lse, method=m)) for m in ("torch", "triton")}
    print("  lse    untile " + ", ".join(f"{k} {v * 1e3:.1f} us ({lse_gb / v:.2f} TB/s)" for k, v in lse_ms.items()))
    if sweep:
        block_d = min(triton.next_power_of_2(dim), tiling_triton.MAX_BLOCK_D)
        default = tiling_triton.launch_config(dim, x.element_size())
        for direction, fn, src in (("tile", tiling_triton.tile_tokens, x), ("untile", tiling_triton.untile_tokens, xt)):
            timed = {}
            for block_n, warps in itertools.product(SWEEP_BLOCK_N, SWEEP_WARPS):
                cfg = (block_n, block_d, warps)
                timed[cfg] = _ms(lambda cfg=cfg, fn=fn, src=src: fn(order, src, config=cfg))
            best = min(timed, key=timed.get)
            print(f"  sweep {direction}: best {best} {timed[best]:.3f} ms ({gb / timed[best]:.2f} TB/s); "
                  f"default {default} {timed.get(default, float('nan')):.3f} ms; all: "
                  + " ".join(f"{c[0]}/{c[2]}w {t:.3f}" for c, t in timed.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--sweep", action="store_true", help="time the Triton kernel at several launch configs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/permutation.py needs a CUDA GPU")
    print(f"{run_header()}, {args.dtype}, D={args.head_dim}; GB = bytes read + written (canvas tokens); "
          "BNHD = input in (B, N, H, D) memory order")
    for canvas, tile, heads in CASES:
        run_case(canvas, tile, heads, args.head_dim, DTYPES[args.dtype], args.sweep)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
