"""Where a content selection's time goes (GPU): host, each kernel, and the whole build.

For a ``BlockTopK`` pattern at 32K tokens (bf16, H=16, D=128, 128-token blocks; causal and
not; the ``k`` of 10 % and 25 % block density), this times ``pattern.select(q, k).build(...)``,
what every call of :func:`foveate.attention` on a content-selected pattern pays before its
attention:

- ``eager``: ``do_bench`` of the call (host and GPU; what ``content_selected.py`` reports as
  ``select ms``);
- ``graph``: the same call captured as a CUDA graph and replayed (the GPU time alone), and
  per call of ten captured in a row (the graph's own launch spread over them, as
  ``content_selected.py`` reports it);
- ``host``: wall time per call with the GPU never waited for (``perf_counter`` over back to
  back calls, one synchronisation at the end: when the GPU is the faster side, this is the
  host time);
- per kernel: the GPU time of each kernel the call runs (``torch.profiler``, mean over calls),
  next to the memory-traffic floor of the block means (reading ``q`` and ``k`` once at the
  device's measured copy bandwidth).

Usage: ``python benchmarks/selection_cost.py [--lens 32768] [--heads 16] [--scores mean antidiagonal]``.
"""

from __future__ import annotations

import argparse
import collections

import torch

from foveate import patterns as P

from common import bench_ms, graph_ms, per_call_us, run_header
from content_selected import topk_for_density

BLOCK = 128


def kernel_us(fn, calls: int = 20) -> dict[str, float]:
    """Mean GPU microseconds per call of each kernel ``fn`` runs, by kernel name."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = collections.defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name[:48]] += event.device_time / calls
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def copy_bandwidth(x: torch.Tensor) -> float:
    """Bytes per second of a device-to-device copy of ``x`` (read and write counted)."""
    out = torch.empty_like(x)
    return 2 * x.numel() * x.element_size() / (bench_ms(lambda: out.copy_(x)) * 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lens", type=int, nargs="+", default=[32768])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--scores", nargs="+", default=["mean"], choices=["mean", "antidiagonal"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/selection_cost.py needs a CUDA GPU")
    print(f"{run_header()}, bf16, B=1, H={args.heads}, D=128, {BLOCK}-token blocks")
    for n in args.lens:
        q, k = (torch.randn(1, args.heads, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        floor_us = 2 * q.numel() * q.element_size() / copy_bandwidth(q) * 1e6
        print(f"\nN={n}: reading q and k once at copy bandwidth: {floor_us:.1f} us")
        nb = n // BLOCK
        for causal in (False, True):
            for density in (0.1, 0.25):
                kk = topk_for_density(density, nb, causal)
                for score in args.scores:
                    pattern = P.BlockTopK(kk, score=score, causal=causal)

                    def call(pattern=pattern):
                        return pattern.select(q, k).build(n, n, block_q=BLOCK, block_kv=BLOCK, device=q.device)

                    with torch.no_grad():
                        eager, host = bench_ms(call) * 1e3, per_call_us(call, 200)
                        graph, graph10 = graph_ms(call) * 1e3, graph_ms(call, calls=10) * 1e3
                        kernels = kernel_us(call)
                    print(f"  causal={causal!s:5} k={kk:3d} {score:12s} eager {eager:7.1f} us  graph {graph:7.1f} us"
                          f"  (10 per graph: {graph10:7.1f} us each)  host {host:7.1f} us", flush=True)
                    for name, us in kernels.items():
                        print(f"      {us:7.1f} us  {name}")


if __name__ == "__main__":
    main()
