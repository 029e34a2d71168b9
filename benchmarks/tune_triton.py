"""Choose the Triton kernels' tiles, warps and stages on this GPU (feeds ``tuning.py``).

For each candidate config of the forward, dq and dk/dv kernels, times the call on a few
representative problems (bf16, D=128, 16 heads: dense 8192; causal 8192; 2-D 128x128
neighborhood k13, auto-tiled; 3-D 16x64x64 k7x15x15, auto-tiled) and prints a table;
the best config per kernel is the one with the lowest summed time. Backward configs are
searched one kernel at a time (dq with dk/dv fixed, then dk/dv with the best dq). A config
that needs more shared memory than the GPU has is reported as not fitting (``launch`` would
otherwise run a smaller one in its place).

    python benchmarks/tune_triton.py [--head-dim 128] [--compile-jobs 12] [--json out.json]

``--compile-jobs`` first compiles every (problem, config) in parallel processes (Triton's
disk cache keeps them), so that the timed pass does not wait on the compiler.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp

import torch

from foveate import patterns as P
from foveate.backends.base import cached_layout
from foveate.backends.triton import tuning
from foveate.backends.triton.masks import mask_spec
from foveate.simulator import choose_tile
from foveate.tiling import Tiled

from common import bench_ms

FWD = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 128, 4, 3), (64, 64, 4, 3)]
# Backward candidates include FlexAttention's Hopper default (64 queries x 128 keys for both
# kernels, 8 warps, 3 stages), which does not fit: the kernels unroll the sub-tiles of a layout
# block inside their loop, and each sub-tile's loads get pipeline buffers of their own (dk/dv
# 64x128 at 3 stages asks for 264 KB; offline compile for sm_90). A flat loop over (block,
# sub-tile) pairs fits 3-5 stages, but in a same-run A/B on the H200 (2026-12-01) it was 3-12 %
# slower on dense, causal, 1-D and 3-D strided backward at 2-4 stages and at most 4 % faster on
# 2-D k13 / 3-D canvases at 3 stages, so the kernels keep the unrolled form.
# dq: (query rows per program, keys per step, warps, stages); dk/dv: (queries per step, key
# rows per program, warps, stages).
DQ = [(128, 32, 8, 2), (128, 64, 8, 2), (128, 64, 8, 3), (64, 128, 8, 3), (64, 128, 8, 2), (64, 64, 4, 3)]
DKDV = [(32, 128, 8, 2), (64, 128, 8, 2), (64, 128, 8, 3), (64, 64, 4, 3), (16, 128, 4, 2)]


def problems(head_dim: int):
    nb2 = P.Neighborhood((128, 128), 13)
    nb3 = P.Neighborhood((16, 64, 64), (7, 15, 15))
    return {
        "dense-8k": (P.Dense(), 8192),
        "causal-8k": (P.Causal(), 8192),
        "2d-k13": (Tiled(nb2, choose_tile(nb2, block_q=128, block_kv=128)), 128 * 128),
        "3d-k7x15x15": (Tiled(nb3, choose_tile(nb3, block_q=128, block_kv=128)), 16 * 64 * 64),
    }


def _setup(name: str, head_dim: int, heads: int = 16):
    pattern, n = problems(head_dim)[name]
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
                   for _ in range(4))
    layout = cached_layout(pattern, n, n, block_q=128, block_kv=128, device=q.device)
    return q, k, v, do, layout, mask_spec(pattern, n, n)


def _run(kind: str, cfg, name: str, head_dim: int, timed: bool):
    from foveate.backends.triton.bwd import attention_backward
    from foveate.backends.triton.fwd import attention_forward

    q, k, v, do, layout, spec = _setup(name, head_dim)
    scale = head_dim ** -0.5
    out, lse = attention_forward(q, k, v, layout, spec, scale)
    kc = tuning.KernelConfig(*cfg)
    bucket = tuning._head_bucket(head_dim, head_dim)
    if kind == "fwd":
        fn = lambda: attention_forward(q, k, v, layout, spec, scale, block_m=kc.block_m, block_n=kc.block_n,  # noqa
                                       num_warps=kc.num_warps, num_stages=kc.num_stages)
    else:
        base = tuning.backward_config(q.device, head_dim, head_dim, 128, 128, q.dtype)
        bc = tuning.BackwardConfig(kc, base.dkdv) if kind == "dq" else tuning.BackwardConfig(base.dq, kc)
        tuning.OVERRIDES[("bwd", bucket)] = bc
        fn = lambda: attention_backward(do, None, q, k, v, out, lse, layout, spec, scale)  # noqa: E731
    tuning._FITTING.clear()
    fn()
    shrunk = [ran for (_, _, asked), ran in tuning._FITTING.items() if ran != asked]
    if shrunk:  # launch() fell back to a smaller config: this one does not fit
        raise DoesNotFit(f"{kind} {cfg}: needs more shared memory than the GPU has (ran {shrunk[0]})")
    if not timed:
        return None
    return bench_ms(fn, rep=200)


class DoesNotFit(RuntimeError):
    """The config needs more shared memory than the GPU has."""


def _compile(args):
    kind, cfg, name, head_dim = args
    tuning.OVERRIDES.clear()  # pool workers run many jobs: no config left over from the last one
    try:
        _run(kind, cfg, name, head_dim, timed=False)
        return None
    except Exception as e:  # noqa: BLE001 - reported, the config is then skipped
        return f"{kind} {cfg} {name}: {type(e).__name__}: {str(e)[:200]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--compile-jobs", type=int, default=0)
    parser.add_argument("--compile-only", action="store_true", help="compile (--compile-jobs) and stop")
    parser.add_argument("--kinds", default="fwd,dq,dkdv")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/tune_triton.py needs a CUDA GPU")
    kinds = args.kinds.split(",")
    grid = {"fwd": FWD, "dq": DQ, "dkdv": DKDV}
    names = list(problems(args.head_dim))
    if args.compile_jobs:
        jobs = [(kind, cfg, name, args.head_dim) for kind in kinds for cfg in grid[kind] for name in names]
        with cf.ProcessPoolExecutor(args.compile_jobs, mp_context=mp.get_context("spawn")) as pool:
            for err in pool.map(_compile, jobs):
                if err:
                    print("compile failed:", err, flush=True)
    if args.compile_only:
        return
    results = {}
    print(f"{torch.cuda.get_device_name()}, bf16, D={args.head_dim}, ms per call (do_bench)")
    for kind in kinds:
        rows = []
        for cfg in grid[kind]:
            try:
                times = [_run(kind, cfg, name, args.head_dim, timed=True) for name in names]
            except Exception as e:  # noqa: BLE001
                print(f"{kind} {cfg}: failed: {type(e).__name__}: {str(e)[:160]}", flush=True)
                continue
            rows.append((sum(times), cfg, times))
            print(f"{kind:5s} {str(cfg):18s} " + "  ".join(f"{n}={t:.3f}" for n, t in zip(names, times)),
                  flush=True)
        rows.sort()
        best = rows[0][1]
        print(f"best {kind}: {best}", flush=True)
        results[kind] = {"best": best, "rows": [(c, t) for _, c, t in rows]}
        bucket = tuning._head_bucket(args.head_dim, args.head_dim)
        if kind in ("dq", "dkdv"):  # the next search starts from the best so far
            base = tuning.backward_config(torch.device("cuda"), args.head_dim, args.head_dim, 128, 128,
                                          torch.bfloat16)
            kc = tuning.KernelConfig(*best)
            tuning.OVERRIDES[("bwd", bucket)] = (tuning.BackwardConfig(kc, base.dkdv) if kind == "dq"
                                                 else tuning.BackwardConfig(base.dq, kc))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
