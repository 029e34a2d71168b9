"""Layout build time and memory of structured patterns at large sizes (CPU or GPU), and the
simulator's time on them.

Each case runs in a fresh Python process, so that its peak memory is its own: the build (or
``simulate``) is timed (median of warm repetitions) and the growth of the process's peak
resident memory over the imports is reported (CPU; on CUDA the peak of allocated GPU memory).
The attention benchmark itself is ``foveate bench``.

Usage: ``python benchmarks/layouts.py [--device cpu|cuda] [--reps N] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

M = 1 << 20

#: (name, pattern expression in terms of ``P``, lengths or None for the canvas, what to time)
LAYOUT_CASES = [
    ("1-D causal, 1M tokens", "P.Causal()", (M, M), "build"),
    ("1-D dense, 1M tokens", "P.Dense()", (M, M), "build"),
    ("1-D window 2047 | causal, 1M tokens", "P.SlidingWindow(2047) | P.Causal()", (M, M), "build"),
    ("simulate(causal), 1M tokens", "P.Causal()", (M, M), "simulate"),
    ("1-D sliding window 2047, 1M tokens", "P.SlidingWindow(2047)", (M, M), "build"),
    ("1-D centred window 1024+1024, 1M tokens", "P.SlidingWindow(1024, 1024)", (M, M), "build"),
    ("2-D 256x256, window 80x80", "P.Neighborhood((256, 256), (80, 80))", None, "build"),
    ("2-D 128x128, kernel 13x13", "P.Neighborhood((128, 128), (13, 13))", None, "build"),
    ("3-D 30x48x80, window 18x24x24", "P.Neighborhood((30, 48, 80), (18, 24, 24))", None, "build"),
    ("3-D 32x256x256, kernel 7x15x15", "P.Neighborhood((32, 256, 256), (7, 15, 15))", None, "build"),
]

_CHILD = r"""
import json, resource, statistics, sys, time
import torch
import foveate
from foveate import patterns as P

expr, lengths, what, device, reps = json.loads(sys.argv[1])
pattern = eval(expr)
q_len, kv_len = lengths or pattern.default_lengths()
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()

def run():
    if what == "simulate":
        return foveate.simulate(pattern, q_len=q_len, kv_len=kv_len)
    return pattern.build(q_len, kv_len, block_q=128, block_kv=128, device=device)

times = []
for _ in range(reps + 1):
    t0 = time.perf_counter()
    result = run()
    if device == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
peak_mb = ((torch.cuda.max_memory_allocated() / 2**20) if device == "cuda"
           else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024)
record = foveate.simulate(pattern, q_len=q_len, kv_len=kv_len) if what == "build" else result
print(json.dumps({"first_s": times[0], "median_s": statistics.median(times[1:]), "peak_mb": peak_mb,
                  "visited": record.blocks_visited, "full": record.blocks_full, "q_len": q_len,
                  "nq": -(-q_len // 128)}))
"""


def measure(expr: str, lengths, what: str, device: str, reps: int) -> dict:
    """One case in a fresh process (its own peak memory)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([expr, lengths, what, device, reps])],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def layout_table(device: str, reps: int) -> str:
    memory = "peak GPU MB" if device == "cuda" else "peak RSS MB"
    lines = [f"## Layout build time and memory ({device}, block 128x128, median of {reps} warm runs; "
             "each case in a fresh process)", "",
             f"| case | tokens | first ms | warm ms | {memory} | bytes per q block | visited | full |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, expr, lengths, what in LAYOUT_CASES:
        r = measure(expr, lengths, what, device, reps)
        per_block = r["peak_mb"] * 2**20 / r["nq"]
        cell = name.replace("|", "\\|")  # (a markdown cell)
        lines.append(f"| {cell} | {r['q_len']} | {r['first_s'] * 1e3:.1f} | {r['median_s'] * 1e3:.1f} | "
                     f"{r['peak_mb']:.0f} | {per_block:.0f} | {r['visited']} | {r['full']} |")
        print(lines[-1], file=sys.stderr)
    return "\n".join(lines)


def main() -> None:
    import torch

    import foveate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device == "cuda" else (
        f"{platform.machine()}, {torch.get_num_threads()} threads")
    header = (f"foveate {foveate.__version__}, torch {torch.__version__}, {where}, {time.strftime('%Y-%m-%d')}, "
              f"`python benchmarks/layouts.py --device {args.device} --reps {args.reps}`")
    text = header + "\n\n" + layout_table(args.device, args.reps) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
