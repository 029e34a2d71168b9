"""The forward kernel's full blocks walked as ranges or from the lists (GPU), same run.

When every query block's full kv blocks are one run of consecutive blocks (dense, causal and
windowed rows: ``BlockLayout.full_runs``, found once for cached layouts), the forward kernel
walks them as a range and reads no list entry but the first (``foveate.policy.full_runs``); otherwise
it reads each block's index from the list. This times ``foveate.attention`` forward (bf16,
D=128, triton backend) both ways, alternated twice, best of each: ``do_bench`` for the 16-head
cases, the GPU time of a CUDA graph for the 1-head 1-D cases (host-bound when eager); the
outputs of the two ways must be bitwise equal.

Usage: ``python benchmarks/full_runs.py``.
"""

from __future__ import annotations

import torch

import foveate
from foveate import patterns as P

from common import bench_ms, graph_ms, run_header

N = P.Neighborhood
CASES = [  # name, pattern, heads, tokens
    ("dense-8k", None, 16, 8192), ("causal-8k", P.Causal(), 16, 8192), ("causal-32k", P.Causal(), 16, 32768),
    ("sliding-2047-32k", P.SlidingWindow(2047), 16, 32768),
    ("centred-1024-32k", P.SlidingWindow(1024, 1024), 16, 32768),
    ("gna-1d-w2048", N((32768,), 2048), 1, 32768), ("gna-1d-w2048-s256", N((32768,), 2048, stride=256), 1, 32768),
    ("2d-128x128-k13 (auto tile)", N((128, 128), (13, 13)), 16, 128 * 128),
    ("blocks 10% random", "blocks", 16, 32768),
]


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/full_runs.py needs a CUDA GPU")
    print(f"{run_header()}, bf16, B=1, D=128, triton backend, forward; lists / ranges for the full blocks")
    for name, pattern, heads, n in CASES:
        q, k, v = (torch.randn(1, heads, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        if pattern == "blocks":
            gen = torch.Generator().manual_seed(0)
            pattern = P.Blocks(torch.rand(1, 1, n // 128, n // 128, generator=gen) < 0.1)
        tile = "auto" if pattern is not None and pattern.canvas is not None and len(pattern.canvas) > 1 else None

        def forward(pattern=pattern, tile=tile):
            return foveate.attention(q, k, v, pattern, backend="triton", tile=tile)

        times, outs = {False: [], True: []}, {}
        for ranges in (False, True, False, True):
            with foveate.policy.override(full_runs=ranges):
                outs[ranges] = forward()
                times[ranges].append(graph_ms(forward) if heads == 1 else bench_ms(forward))
        lists, ranges = min(times[False]), min(times[True])
        print(f"{name:28s} lists {lists * 1e3:9.1f} us   ranges {ranges * 1e3:9.1f} us   {lists / ranges:.3f}x   "
              f"bitwise equal: {torch.equal(outs[False], outs[True])}", flush=True)


if __name__ == "__main__":
    main()
