"""Host (CPU) time per call of the triton backend, and where it goes (GPU).

On problems whose GPU work is small (B=1, H=1 sequences), a call is bound by the host: the
time to validate, resolve the pattern and backend, and launch the kernels. This times
``foveate.attention`` forward and forward+backward on such a problem back to back (the GPU
never waits for work, so the wall time per call is the host time), the forward launcher alone
(``attention_forward`` with a ready layout and spec), and prints the functions that take the
host time (cProfile, by own time).

With ``--gpu-time``, it instead times the 1-D GNA cases of ``foveate bench`` (B=1, H=1, 32K
tokens) forward and forward+backward both ways: eagerly (``do_bench`` of ``attention()``: host
and GPU) and as a replayed CUDA graph of the same call (GPU time alone), which tells a
host-bound case from a GPU-bound one, and the forward+backward's throughput over the
forward's by each. ``--compiled`` adds the same call through ``torch.compile(fullgraph=True)``
in the default mode and in ``reduce-overhead`` (CUDA graphs), ``do_bench`` and host time per
call: the host work a compiled model pays.

``--stub`` needs no GPU: on a CPU, with every Triton launch replaced by a no-op (the kernels'
outputs are left unwritten), it times what foveate itself does per call on the host (validation,
pattern and backend resolution, layout and spec lookups, argument assembly, autograd) and
profiles it: the part of the host time this project owns, measurable anywhere.

Usage: ``python benchmarks/host_overhead.py [--calls 300] [--top 15] [--gpu-time [--compiled]]
[--stub]``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

if "--stub" in sys.argv:  # (the Triton backend needs this on a CPU, set before foveate loads)
    os.environ["TRITON_INTERPRET"] = "1"

import torch

import foveate
from foveate import patterns as P
from foveate.backends.base import cached_layout
from foveate.backends.triton.fwd import attention_forward
from foveate.backends.triton.masks import mask_spec

from common import bench_ms, graph_ms, per_call_us, run_header


def print_profile(fn, calls: int, top: int) -> None:
    """The ``top`` functions by own host time over ``calls`` calls of ``fn`` (cProfile)."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        fn()
    profile.disable()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    pstats.Stats(profile).sort_stats("tottime").print_stats(top)


def stub_launches() -> int:
    """Replace foveate's kernel launcher, wherever a module holds it, by a no-op; the number of
    module attributes replaced."""
    import foveate.triton_launch as tl_launch

    real, replaced = tl_launch.launch, 0
    for module in list(sys.modules.values()):
        if module is None or not getattr(module, "__name__", "").startswith("foveate"):
            continue
        for name in ("launch", "fast_launch"):
            if getattr(module, name, None) is real:
                setattr(module, name, lambda *args, **kwargs: None)
                replaced += 1
    return replaced


def stub_host_time(calls: int, top: int) -> None:
    """Host time per call on a CPU with the launches stubbed (``--stub``)."""
    import foveate.backends.triton.bwd  # noqa: F401  (load every launching module before stubbing)
    import foveate.backends.triton.fwd_hopper  # noqa: F401

    replaced = stub_launches()
    pattern, n = P.Neighborhood((1024,), 255), 1024
    q, k, v, grad = (torch.randn(1, 1, n, 128, dtype=torch.float16) for _ in range(4))
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

    def forward():
        foveate.attention(q, k, v, pattern, backend="triton")

    def forward_backward():
        out = foveate.attention(qg, kg, vg, pattern, backend="triton")
        torch.autograd.grad(out, (qg, kg, vg), grad)

    print(f"{run_header('cpu')}, fp16, B=1, H=1, N={n}, D=128, {pattern!r}, triton backend, "
          f"{replaced} launchers stubbed (no kernel runs)")
    for name, fn in (("attention() forward", forward), ("attention() forward+backward", forward_backward)):
        for _ in range(10):
            fn()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        print(f"{name:34s} {(time.perf_counter() - start) / calls * 1e6:8.1f} us per call", flush=True)
    for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
        print(f"\n{name}: top {top} by own time ({calls} calls)")
        print_profile(fn, calls, top)


def gpu_time(profile_top: int = 0, compiled: bool = False) -> None:
    n = 32768
    print(f"{run_header()}, bf16, B=1, H=1, N={n}, D=128, triton backend")
    q, k, v, grad = (torch.randn(1, 1, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    for name, pattern in (("window 2048", P.Neighborhood((n,), 2048)),
                          ("window 2048, stride 256", P.Neighborhood((n,), 2048, stride=256)),
                          ("window 2048, stride 2048", P.Neighborhood((n,), 2048, stride=2048))):
        def forward(pattern=pattern):
            return foveate.attention(q, k, v, pattern, backend="triton")

        def forward_backward(pattern=pattern):
            out = foveate.attention(qg, kg, vg, pattern, backend="triton")
            return torch.autograd.grad(out, (qg, kg, vg), grad)

        times = {}
        for direction, fn in (("forward", forward), ("forward+backward", forward_backward)):
            times[direction] = eager, graph = bench_ms(fn), graph_ms(fn)
            print(f"{name:26s} {direction:17s} eager {eager * 1e3:8.1f} us   CUDA graph {graph * 1e3:8.1f} us   "
                  f"host {per_call_us(fn, 300):8.1f} us per call", flush=True)
            if profile_top:
                print_profile(fn, 100, profile_top)
        if compiled:
            for mode in ("default", "reduce-overhead"):
                torch._dynamo.reset()  # one lambda's code for every case and mode: no recompile limit
                attend = torch.compile(lambda q, k, v, pattern=pattern: foveate.attention(q, k, v, pattern,
                                                                                          backend="triton"),
                                       fullgraph=True, mode=mode)

                def compiled_backward(attend=attend):
                    return torch.autograd.grad(attend(qg, kg, vg), (qg, kg, vg), grad)

                for direction, fn in (("forward", lambda attend=attend: attend(q, k, v)),
                                      ("forward+backward", compiled_backward)):
                    for _ in range(3):  # compile (reduce-overhead: record the CUDA graph)
                        fn()
                    print(f"{name:26s} {direction:17s} torch.compile {mode:15s} {bench_ms(fn) * 1e3:8.1f} us   "
                          f"host {per_call_us(fn, 300):8.1f} us per call", flush=True)
        # forward+backward effective throughput over the forward's (3.5x the forward's FLOPs)
        ratios = [3.5 * times["forward"][i] / times["forward+backward"][i] for i in range(2)]
        print(f"{name:26s} forward+backward / forward throughput: eager {ratios[0]:.2f}, GPU time {ratios[1]:.2f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--gpu-time", action="store_true", help="eager against CUDA-graph time, 1-D GNA cases")
    parser.add_argument("--profile", action="store_true", help="with --gpu-time: profile each case's host time")
    parser.add_argument("--compiled", action="store_true", help="with --gpu-time: also through torch.compile")
    parser.add_argument("--stub", action="store_true", help="on a CPU, launches stubbed: foveate's own host time")
    args = parser.parse_args()
    if args.stub:
        stub_host_time(args.calls, args.top)
        return
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/host_overhead.py needs a CUDA GPU")
    if args.gpu_time:
        gpu_time(args.top if args.profile else 0, args.compiled)
        return
    pattern, n = P.Neighborhood((1024,), 255), 1024
    q, k, v, grad = (torch.randn(1, 1, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    layout = cached_layout(pattern, n, n, block_q=128, block_kv=128, device=q.device)
    spec = mask_spec(pattern, n, n)

    def forward():
        foveate.attention(q, k, v, pattern, backend="triton")

    def forward_backward():
        out = foveate.attention(qg, kg, vg, pattern, backend="triton")
        torch.autograd.grad(out, (qg, kg, vg), grad)

    def launcher():
        attention_forward(q, k, v, layout, spec, 128 ** -0.5)

    print(f"{run_header()}, bf16, B=1, H=1, N={n}, D=128, {pattern!r}, triton backend")
    for name, fn in (("attention() forward", forward), ("attention() forward+backward", forward_backward),
                     ("attention_forward launcher alone", launcher)):
        print(f"{name:34s} {per_call_us(fn, args.calls):8.1f} us per call", flush=True)
    for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
        print(f"\n{name}: top {args.top} by own time ({args.calls} calls)")
        print_profile(fn, args.calls, args.top)


if __name__ == "__main__":
    main()
