"""Attention on a CPU: the block-sparse ``torch`` backend (what ``auto`` runs there) next to
the dense ``reference`` and FlexAttention (``flex``, compiled, forward only), on a sliding
window over long sequences.

Wall time per call (median of warm repetitions; ``flex``'s first call, which compiles, is
reported apart). The reference's time grows with ``N^2`` whatever the pattern: it runs only
up to ``--reference-max`` tokens. The simulator's speed-of-light bound says how much of the
dense work the window leaves.

Usage: ``python benchmarks/cpu_backends.py [--lengths 16384 32768 65536 262144] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import foveate
from foveate import patterns as P


def seconds(fn, reps: int) -> tuple[float, float]:
    """``(first call, median of reps warm calls)`` in seconds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def row(n: int, window: int, head_dim: int, reps: int, reference_max: int) -> str:
    pattern = P.SlidingWindow(window)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, head_dim, generator=gen) for _ in range(3))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def fwd(backend):
        with torch.no_grad():
            return foveate.attention(q, k, v, pattern, backend=backend)

    def fwd_bwd():
        foveate.attention(*leaves, pattern, backend="torch").sum().backward()

    _, torch_fwd = seconds(lambda: fwd("torch"), reps)
    _, torch_train = seconds(fwd_bwd, max(1, reps // 2))
    flex_first, flex_fwd = seconds(lambda: fwd("flex"), reps) if "flex" in foveate.backends.available() else (None, None)
    ref = seconds(lambda: fwd("reference"), 1)[1] if n <= reference_max else None
    bound = foveate.simulate(pattern, q_len=n).speedup_bound
    err = (fwd("torch") - fwd("flex")).abs().max().item() if flex_fwd is not None else float("nan")

    def cell(x):
        return "—" if x is None else f"{x:.3f}"

    return (f"| {n} | {bound:.1f} | {cell(torch_fwd)} | {cell(torch_train)} | {cell(ref)} | "
            f"{cell(flex_fwd)} | {cell(flex_first)} | "
            f"{'—' if ref is None else f'{ref / torch_fwd:.1f}x'} | {err:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768, 65536, 262144])
    parser.add_argument("--window", type=int, default=255)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--reference-max", type=int, default=32768)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    header = (f"foveate {foveate.__version__}, torch {torch.__version__}, {platform.machine()} "
              f"{platform.processor() or ''}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}, "
              f"`python benchmarks/cpu_backends.py --lengths {' '.join(map(str, args.lengths))}`")
    lines = [header, "",
             f"## CPU: SlidingWindow({args.window}), batch 1, one head, D={args.head_dim}, float32 "
             "(seconds per call)", "",
             "| tokens | SoL bound | torch fwd | torch fwd+bwd | reference fwd | flex fwd | flex first call | "
             "torch vs reference | max abs diff torch-flex |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in args.lengths:
        lines.append(row(n, args.window, args.head_dim, args.reps, args.reference_max))
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
