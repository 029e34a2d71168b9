"""What the in-kernel mask costs on partial blocks, and what short block lists cost (GPU).

For each canvas case (``tiling.py``'s cases, auto-tiled, raster-order tensors as
``attention()`` runs them) the triton kernels run on three layouts with the same visited
blocks: the real one (full blocks unmasked, partial ones masked), ``no mask`` (every visited
block treated as full: wrong results, timing only) and ``all masked`` (every visited block
masked). The throughput of the visited blocks (``block TFLOP/s``: every pair of a visited block
counted, the same measure as a dense kernel's) against our dense kernel's on the same run tells
how far a case is from running its visited blocks at dense speed, and which part of that the
mask explains; what is left is the cost of short lists (few blocks per query block) and the
fused token permutation.

Usage: ``python benchmarks/mask_cost.py [--cases 2d-k13 ...] [--json out.json]``.
"""

from __future__ import annotations

import argparse

import torch

from foveate.backends.base import Problem, tiled
from foveate.backends.triton import TritonBackend
from foveate.backends.triton.bwd import attention_backward
from foveate.backends.triton.fwd import attention_forward
from foveate.backends.triton.masks import mask_spec
from foveate.layout import BlockLayout
from foveate.patterns import Dense
from foveate.simulator import choose_tile

from common import bench_ms, run_header, write_outputs
from tiling import CASES

DEFAULT_CASES = ["2d-k13", "3d-k7x15x15", "3d-hunyuan", "2d-w80", "2d-w80-s16", "3d-hunyuan-s"]


def regrid(layout: BlockLayout, kind: str) -> BlockLayout:
    """``layout`` with every visited block full (``"full"``) or partial (``"partial"``)."""
    grid = layout.to_dense()
    grid = torch.where(grid > 0, torch.full_like(grid, 2 if kind == "full" else 1), grid)
    return BlockLayout.from_block_grid(grid, block_q=layout.block_q, block_kv=layout.block_kv,
                                       q_len=layout.q_len, kv_len=layout.kv_len, method="torch")


def setup(pattern, heads: int, dim: int = 128, lengths: tuple[int, int] | None = None):
    """Inputs, the tiled layout and its raster-io spec, as the triton backend runs the case."""
    n = lengths or pattern.default_lengths()
    problem = Problem(batch=1, heads_q=heads, heads_kv=heads, q_len=n[0], kv_len=n[1], head_dim=dim,
                      head_dim_v=dim, dtype=torch.bfloat16, device=torch.device("cuda"), requires_grad=True,
                      return_lse=False, pattern=pattern)
    tile = choose_tile(pattern) if pattern.canvas is not None and len(pattern.canvas) > 1 else None
    if tile is not None:
        problem, _ = tiled(problem, tile)
    layout = TritonBackend().layout(problem, torch.device("cuda"))
    spec = mask_spec(problem.pattern, problem.q_len, problem.kv_len, raster_io=tile is not None)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, heads, n[0], dim, device="cuda", dtype=torch.bfloat16, generator=gen)
                   for _ in range(4))
    return (q, k, v, do), layout, spec, tile


def time_layout(tensors, layout, spec) -> tuple[float, float]:
    q, k, v, do = tensors
    scale = q.shape[-1] ** -0.5
    fwd = bench_ms(lambda: attention_forward(q, k, v, layout, spec, scale))
    out, lse = attention_forward(q, k, v, layout, spec, scale)
    bwd = bench_ms(lambda: attention_backward(do, None, q, k, v, out, lse, layout, spec, scale))
    return fwd, bwd


def block_tflops(layout: BlockLayout, heads: int, dim: int, ms: float, passes: float) -> float:
    pairs = layout.num_visited() * layout.block_q * layout.block_kv * heads
    return passes * 2 * pairs * dim * 2 / (ms * 1e-3) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=DEFAULT_CASES, choices=list(CASES))
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/mask_cost.py needs a CUDA GPU")
    header = f"{run_header()}, bf16, B=1, D=128, triton kernels (forward; backward = dq + dk/dv + delta)"
    print(header, flush=True)
    records = []

    def measure(case, tensors, layout, spec, heads, variant="real", tile=None, partial=0):
        fwd, bwd = time_layout(tensors, layout, spec)
        records.append(dict(case=case, tile=tile, variant=variant, blocks=layout.num_visited(), partial=partial,
                            fwd_ms=fwd, bwd_ms=bwd, fwd_block_tflops=block_tflops(layout, heads, 128, fwd, 1),
                            bwd_block_tflops=block_tflops(layout, heads, 128, bwd, 2.5)))
        print(_row(records[-1]), flush=True)

    tensors, layout, spec, _ = setup(Dense(), 16, lengths=(8192, 8192))
    measure("dense-8k", tensors, layout, spec, 16)
    for name in args.cases:
        pattern, heads, _ = CASES[name]
        tensors, layout, spec, tile = setup(pattern, heads)
        partial = int(layout.kv_num_blocks.sum())
        for variant, lay in (("real", layout), ("no mask", regrid(layout, "full")),
                             ("all masked", regrid(layout, "partial"))):
            measure(name, tensors, lay, spec, heads, variant, tile, partial)
    lines = [header, "", "| case | variant | visited (partial) | fwd ms | fwd block TFLOP/s | bwd ms | bwd block TFLOP/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [_row(r) for r in records]
    write_outputs(records, "\n".join(lines) + "\n", args.json, args.markdown)


def _row(r: dict) -> str:
    return (f"| {r['case']} | {r['variant']} | {r['blocks']} ({r['partial']}) | {r['fwd_ms']:.3f} | "
            f"{r['fwd_block_tflops']:.0f} | {r['bwd_ms']:.3f} | {r['bwd_block_tflops']:.0f} |")


if __name__ == "__main__":
    main()
