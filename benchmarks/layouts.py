"""Layout build time of structured patterns at large sizes (CPU or GPU).

Warm median of repetitions, with the visited / full / partial block counts; the attention
benchmark itself is ``foveate bench``.

Usage: ``python benchmarks/layouts.py [--device cpu|cuda] [--reps N]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import foveate
from foveate import patterns as P

LAYOUT_CASES = [
    ("1-D sliding window 2047, 1M tokens", P.SlidingWindow(2047), (1 << 20, 1 << 20)),
    ("1-D centred window 1024+1024, 1M tokens", P.SlidingWindow(1024, 1024), (1 << 20, 1 << 20)),
    ("2-D 256x256, window 80x80", P.Neighborhood((256, 256), (80, 80)), None),
    ("2-D 128x128, kernel 13x13", P.Neighborhood((128, 128), (13, 13)), None),
    ("3-D 30x48x80, window 18x24x24", P.Neighborhood((30, 48, 80), (18, 24, 24)), None),
    ("3-D 32x256x256, kernel 7x15x15", P.Neighborhood((32, 256, 256), (7, 15, 15)), None),
]



def median_time(fn, reps: int, device: str) -> float:
    """Median seconds of ``fn()`` over ``reps`` warm runs (synchronising CUDA)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def layout_table(device: str, reps: int) -> None:
    print(f"\n## Layout build time ({device}, block 128x128, median of {reps} warm runs)\n")
    print(f"| {'case':40} | {'tokens':>9} | {'build ms':>8} | {'visited':>9} | {'full':>9} | {'partial':>9} | {'block density':>13} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 10}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 15}|")
    for name, pattern, lengths in LAYOUT_CASES:
        q_len, kv_len = lengths or pattern.default_lengths()
        build = lambda: pattern.build(q_len, kv_len, block_q=128, block_kv=128, device=device)  # noqa: E731
        seconds = median_time(build, reps, device)
        layout = build()
        full = int(layout.full_kv_num_blocks.sum())
        visited = layout.num_visited()
        print(
            f"| {name:40} | {q_len:>9} | {seconds * 1e3:>8.1f} | {visited:>9} | {full:>9} | "
            f"{visited - full:>9} | {layout.block_density():>13.4f} |"
        )



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device == "cuda" else (
        f"{platform.machine()}, {torch.get_num_threads()} threads")
    print(f"foveate {foveate.__version__}, torch {torch.__version__}, {where}, {time.strftime('%Y-%m-%d')}")
    layout_table(args.device, args.reps)


if __name__ == "__main__":
    main()
