"""The two forward kernels of the triton backend side by side (GPU, Hopper): the portable
``tl`` kernel (``fwd.py``) and the warp-specialized Gluon kernel (``fwd_hopper.py``), with
cuDNN's dense forward of the same problem, in one run.

Each is called through ``attention_forward`` on a ready layout and mask spec (``kernel=
"portable"`` / ``"hopper"``) and timed twice: eagerly (``do_bench``, host and GPU work) and by
its GPU work alone (``foveate.benchmark.timing.gpu_ms``: calls replayed as a CUDA graph, each
after an L2 clear). Reported per case: both times of each kernel, the Hopper kernel's speedup
over the portable one (lower time of each), and each kernel's fraction of the speed of light
(cuDNN's dense time, the lower of its two, times the layout's fraction of visited blocks).

Usage: ``python benchmarks/hopper_forward.py [--json FILE] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse

import torch

from foveate import patterns as P
from foveate.backends.base import cached_layout
from foveate.backends.triton.fwd import attention_forward
from foveate.backends.triton.masks import mask_spec
from foveate.benchmark.timing import gpu_ms

from common import bench_ms, cudnn_sdpa, run_header, write_outputs

CASES = [  # name, pattern, heads, tokens (B=1, D=128, bf16)
    ("dense 8K", P.Dense(), 16, 8192),
    ("causal 8K", P.Causal(), 16, 8192),
    ("sliding 2047, 32K", P.SlidingWindow(2047, 0), 16, 32768),
    ("GNA 1-D w2048, 32K", P.Neighborhood((32768,), 2048), 1, 32768),
    ("GNA 1-D w2048 s256, 32K", P.Neighborhood((32768,), 2048, stride=256), 1, 32768),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/hopper_forward.py needs a CUDA GPU")
    header = run_header()
    lines = [header, "", "| case | hopper eager / GPU ms | portable eager / GPU ms | cuDNN dense eager / GPU ms "
             "| hopper / portable | % of SoL hopper | % of SoL portable |", "|---|---|---|---|---|---|---|"]
    print(header, flush=True)
    records = []
    for name, pattern, heads, n in CASES:
        q, k, v = (torch.randn(1, heads, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        layout = cached_layout(pattern, n, n, block_q=128, block_kv=128, device=q.device)
        spec = mask_spec(pattern, n, n)
        scale = 128 ** -0.5
        runs = {
            "hopper": lambda: attention_forward(q, k, v, layout, spec, scale, kernel="hopper"),
            "portable": lambda: attention_forward(q, k, v, layout, spec, scale, kernel="portable"),
            "cudnn": lambda: cudnn_sdpa(q, k, v),
        }
        times = {}
        for kernel, fn in runs.items():
            fn()
            torch.cuda.synchronize()
            times[kernel] = (bench_ms(fn), gpu_ms(fn))
        fraction = layout.block_density()
        best = {kernel: min(pair) for kernel, pair in times.items()}
        sol = best["cudnn"] * fraction
        record = dict(case=name, heads=heads, tokens=n, visited_fraction=fraction,
                      **{f"{kernel}_{how}_ms": t for kernel, pair in times.items()
                         for how, t in zip(("eager", "gpu"), pair)},
                      hopper_over_portable=best["portable"] / best["hopper"],
                      sol_hopper=sol / best["hopper"], sol_portable=sol / best["portable"])
        records.append(record)
        cells = [f"{times[kernel][0]:.3f} / {times[kernel][1]:.3f}" for kernel in ("hopper", "portable", "cudnn")]
        line = (f"| {name} | {' | '.join(cells)} | {record['hopper_over_portable']:.2f}x | "
                f"{100 * record['sol_hopper']:.0f}% | {100 * record['sol_portable']:.0f}% |")
        lines.append(line)
        print(line, flush=True)
    write_outputs(records, "\n".join(lines) + "\n", args.json, args.markdown)


if __name__ == "__main__":
    main()
