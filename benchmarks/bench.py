"""foveate's benchmark until the ``foveate bench`` command exists.

Two tables:

1. Layout build time of structured patterns at large sizes (CPU or GPU), warm, median of
   repetitions, with the visited / full / partial block counts.
2. Attention time per backend on a small suite of (pattern, shape) cases, side by side with
   dense SDPA in the same run; each backend's output is checked against the reference
   backend before it is timed. Effective TFLOP/s count only allowed pairs (4 * pairs * D).

Usage: ``python benchmarks/bench.py [--quick] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from dataclasses import dataclass

import torch

import foveate
from foveate import patterns as P
from foveate.backends import cached_layout

LAYOUT_CASES = [
    ("1-D sliding window 2047, 1M tokens", P.SlidingWindow(2047), (1 << 20, 1 << 20)),
    ("1-D centred window 1024+1024, 1M tokens", P.SlidingWindow(1024, 1024), (1 << 20, 1 << 20)),
    ("2-D 256x256, window 80x80", P.Neighborhood((256, 256), (80, 80)), None),
    ("2-D 128x128, kernel 13x13", P.Neighborhood((128, 128), (13, 13)), None),
    ("3-D 30x48x80, window 18x24x24", P.Neighborhood((30, 48, 80), (18, 24, 24)), None),
    ("3-D 32x256x256, kernel 7x15x15", P.Neighborhood((32, 256, 256), (7, 15, 15)), None),
]


@dataclass
class AttnCase:
    name: str
    pattern: P.Pattern | None
    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int


def attention_cases(device: str, quick: bool) -> list[AttnCase]:
    if device == "cuda":
        return [
            AttnCase("dense 8192", None, 1, 16, 8192, 8192, 128),
            AttnCase("causal 8192", P.Causal(), 1, 16, 8192, 8192, 128),
            AttnCase("sliding 2047, 32768", P.SlidingWindow(2047), 1, 16, 32768, 32768, 128),
            AttnCase("2-D 128x128 k13", P.Neighborhood((128, 128), (13, 13)), 1, 16, 16384, 16384, 128),
            AttnCase("3-D 16x64x64 k7x15x15", P.Neighborhood((16, 64, 64), (7, 15, 15)), 1, 16, 65536, 65536, 128),
        ]
    cases = [
        AttnCase("causal 1024", P.Causal(), 1, 4, 1024, 1024, 64),
        AttnCase("sliding 127, 2048", P.SlidingWindow(127), 1, 4, 2048, 2048, 64),
        AttnCase("2-D 32x64 k7x7", P.Neighborhood((32, 64), (7, 7)), 1, 4, 2048, 2048, 64),
    ]
    return cases[:1] if quick else cases


def median_time(fn, reps: int, device: str) -> float:
    """Median seconds of ``fn()`` over ``reps`` warm runs."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def layout_table(device: str, reps: int) -> None:
    print(f"\n## Layout build time ({device}, block 128x128, median of {reps} warm runs)\n")
    print(f"| {'case':40} | {'tokens':>9} | {'build ms':>8} | {'visited':>9} | {'full':>9} | {'partial':>9} | {'block density':>13} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 10}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 15}|")
    for name, pattern, lengths in LAYOUT_CASES:
        q_len, kv_len = lengths or pattern.default_lengths()
        build = lambda: pattern.build(q_len, kv_len, block_q=128, block_kv=128, device=device)  # noqa: E731
        seconds = median_time(build, reps, "cpu")
        layout = build()
        full = int(layout.full_kv_num_blocks.sum())
        visited = layout.num_visited()
        print(
            f"| {name:40} | {q_len:>9} | {seconds * 1e3:>8.1f} | {visited:>9} | {full:>9} | "
            f"{visited - full:>9} | {layout.block_density():>13.4f} |"
        )


def attention_table(device: str, dtype: torch.dtype, quick: bool, reps: int) -> None:
    names = [n for n in foveate.backends.available() if n != "reference" or device == "cpu"]
    print(f"\n## Attention forward ({device}, {dtype}, median of {reps} warm runs)\n")
    print(f"| {'case':24} | {'backend':10} | {'ms':>9} | {'eff. TFLOP/s':>12} | {'vs SDPA':>13} | {'density':>7} |")
    print(f"|{'-' * 26}|{'-' * 12}|{'-' * 11}|{'-' * 14}|{'-' * 15}|{'-' * 9}|")
    for case in attention_cases(device, quick):
        gen = torch.Generator(device=device).manual_seed(0)
        shape = lambda n: (case.batch, case.heads, n, case.head_dim)  # noqa: E731
        q, k, v = (torch.randn(shape(n), generator=gen, device=device, dtype=dtype)
                   for n in (case.q_len, case.kv_len, case.kv_len))
        pattern = case.pattern or P.Dense()
        layout = cached_layout(pattern, case.q_len, case.kv_len, block_q=128, block_kv=128, device=torch.device(device))
        pairs = case.batch * case.heads * layout.allowed_pairs()
        flops = 4 * pairs * case.head_dim
        # The dense baseline of a causal case is causal SDPA; of any other case, dense SDPA.
        causal = isinstance(case.pattern, P.Causal) and case.q_len == case.kv_len
        dense = median_time(
            lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal), reps, device
        )
        dense_pairs = case.batch * case.heads * (
            case.q_len * (case.q_len + 1) // 2 if causal else case.q_len * case.kv_len
        )
        print(f"| {case.name:24} | {'sdpa causal' if causal else 'sdpa dense':10} | {dense * 1e3:>9.3f} | "
              f"{4 * dense_pairs * case.head_dim / dense / 1e12:>12.2f} | "
              f"{1.0:>13.2f} | {1.0:>7.3f} |")
        expected = None
        for name in names:
            run = lambda: foveate.attention(q, k, v, case.pattern, backend=name)  # noqa: E731
            try:
                out = run()
            except ValueError as err:
                print(f"| {case.name:24} | {name:10} | skipped: {err}")
                continue
            if expected is None:
                expected = foveate.attention(q.float(), k.float(), v.float(), case.pattern, backend="reference")
            err = (out.float() - expected).abs().max().item()
            if not math.isfinite(err) or err > 2e-2:
                print(f"| {case.name:24} | {name:10} | WRONG RESULT (max error {err:.3g}) |")
                continue
            seconds = median_time(run, reps, device)
            print(f"| {case.name:24} | {name:10} | {seconds * 1e3:>9.3f} | {flops / seconds / 1e12:>12.2f} | "
                  f"{dense / seconds:>13.2f} | {layout.density():>7.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer cases and repetitions")
    parser.add_argument("--skip-attention", action="store_true")
    args = parser.parse_args()
    reps = 3 if args.quick else 7
    print(f"# foveate {foveate.__version__} benchmark")
    print(f"torch {torch.__version__}, python {platform.python_version()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
          + f", {time.strftime('%Y-%m-%d')}")
    layout_table(args.device, reps)
    if not args.skip_attention:
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        attention_table(args.device, dtype, args.quick, reps)


if __name__ == "__main__":
    main()
