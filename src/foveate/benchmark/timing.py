"""How ``foveate bench`` times a call: a warm median of eager calls, or of the GPU work alone.

Eager timing (``triton.testing.do_bench`` on CUDA) is what one call costs a caller who waits
for it: host work (validation, layout lookup, launches) and GPU work. When the host work of a
call is longer than its GPU work (a B=1, H=1 sequence: tens of microseconds of kernels), that
is a measure of the host's CPU, which differs from machine to machine. In a model, whose host
queues the next layers while the GPU runs, such a call costs its GPU time: :func:`gpu_ms`
measures that, by capturing several calls into one CUDA graph and replaying it, each call
after a clear of the L2 cache as in eager timing. Some work runs slower captured: cuDNN's
dense forward (B=1, H=1, 32K tokens) took 0.87-0.89 ms per call in H200 graphs, with or
without the clears, against 0.79-0.88 ms eagerly (2026-12-01); so ``foveate bench`` counts the
lower of the two times of each run (:mod:`.runner`).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

#: What a case's ``timing`` may be: ``"eager"`` (host and GPU work), or ``"gpu"``: also the GPU
#: work alone, the lower of the two counting (``foveate bench``, :mod:`.runner`).
TIMINGS = ("eager", "gpu")


def eager_ms(fn: Callable[[], object], device: torch.device, *, reps: int, rep_ms: int) -> float:
    """Warm median time of ``fn()`` in milliseconds: ``triton.testing.do_bench`` on CUDA
    (``rep_ms`` of runs, the L2 cache cleared before each), else ``reps`` timed calls."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=max(10, rep_ms // 4), rep=rep_ms, return_mode="median"))
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def gpu_ms(fn: Callable[[], object], *, calls: int = 4, clear_cache: bool = True, rep_ms: int = 300) -> float:
    """Milliseconds of GPU work per call of ``fn``, no host work timed: ``calls`` calls captured
    in a row into one CUDA graph, which is replayed (median over ``rep_ms`` of replays).

    With ``clear_cache`` (``foveate bench``), each call follows a clear of the L2 cache in the
    graph, as in eager timing, and the time of a graph of the clears alone is taken off: the
    calls see the GPU as eager calls do (inputs out of the cache, a pause between calls), less
    their host work. Without, the calls run back to back on warm caches. ``fn`` must be
    capturable (no host syncs); it is called (warm-up, compiles) before the capture."""
    import triton
    import triton.testing

    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    driver = triton.runtime.driver.active
    cache = driver.get_empty_cache_for_benchmark() if clear_cache else None

    def clear():
        if cache is not None:
            driver.clear_cache(cache)

    def replay_ms(work) -> float:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                work()
        return float(triton.testing.do_bench(graph.replay, warmup=max(10, rep_ms // 4), rep=rep_ms,
                                             return_mode="median"))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as graph capture requires
        for _ in range(2):
            clear()
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    total = replay_ms(lambda: (clear(), fn()))
    return (total - (replay_ms(clear) if clear_cache else 0.0)) / calls


__all__ = ["TIMINGS", "eager_ms", "gpu_ms"]
