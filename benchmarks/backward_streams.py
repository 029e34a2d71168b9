"""A backward setting off and on (GPU): forward+backward time both ways.

``--setting concurrent_dq`` (the default): ``foveate.backends.triton.bwd`` runs the dq kernel
on a second stream, concurrently with the dk/dv kernel, when the launch has at least
``foveate.policy.concurrent_min_programs`` programs; timed with ``policy.concurrent_dq`` off
and on (the threshold set to 0, so both settings run on every case). ``--setting
tiled_order``: the backward of a tiled canvas given in raster order runs on copies in the
tiled order (``policy.tiled_order_backward``) or reads the raster rows in place. Each setting alternates twice in
one run, best of each; the gradients are checked to be bitwise the same.

Usage: ``python benchmarks/backward_streams.py [--setting concurrent_dq|tiled_order] [--cases NAME ...]``
(names as ``foveate bench --list``).
"""

from __future__ import annotations

import argparse

import torch

import foveate
from foveate.benchmark.suites import select_cases

from common import bench_ms, run_header

SETTINGS = {"concurrent_dq": "concurrent_dq", "tiled_order": "tiled_order_backward"}
CANVASES = ["gna-2d-w80", "gna-2d-w80-s16", "gna-3d-hunyuan", "gna-3d-hunyuan-s", "2d-128x128-k13",
            "3d-16x64x64-k7x15x15"]
CASES = ["causal-8k", "gna-1d-w2048", "gna-1d-w2048-s256", "gna-2d-w80-s16", "gna-3d-hunyuan-s", "2d-128x128-k13",
         "3d-16x64x64-k7x15x15"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="concurrent_dq")
    parser.add_argument("--cases", nargs="+", default=None,
                        help="default: a mix of cases (concurrent_dq), the tiled canvases (tiled_order)")
    args = parser.parse_args()
    if args.cases is None:
        args.cases = CASES if args.setting == "concurrent_dq" else CANVASES
    flag = SETTINGS[args.setting]
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/backward_streams.py needs a CUDA GPU")
    print(f"{run_header()}, bf16, triton backend, forward+backward, {flag} off / on")
    threshold = {"concurrent_min_programs": 0} if args.setting == "concurrent_dq" else {}
    for case in select_cases("gpu", args.cases):
        if case.name not in args.cases:
            continue
        shape_q = (case.batch, case.heads, case.q_len, case.head_dim)
        shape_k = (case.batch, case.heads_kv, case.kv_len, case.head_dim)
        q, grad = (torch.randn(*shape_q, device="cuda", dtype=torch.bfloat16, requires_grad=i == 0) for i in range(2))
        k, v = (torch.randn(*shape_k, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))

        def grads():
            out = foveate.attention(q, k, v, case.pattern, backend="triton")
            return torch.autograd.grad(out, (q, k, v), grad)

        times: dict[bool, list[float]] = {False: [], True: []}
        results = {}
        for on in (False, True, False, True):
            with foveate.policy.override(**{flag: on}, **threshold):
                results[on] = grads()
                times[on].append(bench_ms(grads))
        same = all(torch.equal(a, b) for a, b in zip(results[False], results[True]))
        one, two = min(times[False]), min(times[True])
        print(f"{case.name:24s} off {one:8.3f} ms   on {two:8.3f} ms   speedup {one / two:.3f}   "
              f"128-row query tiles {-(-case.q_len // 128) * case.batch * case.heads:6d}   bitwise same: {same}", flush=True)
        del q, k, v, grad, results
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
