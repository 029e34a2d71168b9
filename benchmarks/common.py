"""Helpers shared by the GPU benchmark scripts in this folder (timing, baselines, outputs)."""

from __future__ import annotations

import json
import time

import torch


def bench_ms(fn, *, warmup: int = 50, rep: int = 300) -> float:
    """Median milliseconds of ``fn()`` over ``rep`` ms of runs after ``warmup`` ms (do_bench)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def graph_ms(fn, calls: int = 1) -> float:
    """Milliseconds per call of ``fn`` captured ``calls`` times in a row as one CUDA graph and
    replayed: its GPU time alone (no host work per call; ``fn`` must be capturable, i.e. free
    of host syncs). ``calls > 1`` spreads the graph's own launch (some microseconds) over the
    calls, as in a model whose host runs ahead: for calls of about 0.1 ms. Back to back on
    warm caches (``foveate bench``'s GPU timing clears the L2 cache before each call)."""
    from foveate.benchmark.timing import gpu_ms

    return gpu_ms(fn, calls=calls, clear_cache=False)


def per_call_us(fn, calls: int = 300) -> float:
    """Wall microseconds per call of ``fn`` over ``calls`` back-to-back calls after a warm-up,
    one synchronisation at the end: the host time per call when the GPU is the faster side."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def cudnn_sdpa(q, k, v, causal: bool = False):
    """Dense (or causal) attention by cuDNN through PyTorch's SDPA: the baseline of every speedup."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


def run_header(device: torch.device | str = "cuda") -> str:
    """``foveate <version>, torch <version>, <device name>, <date>``: how every result table starts."""
    import foveate

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"foveate {foveate.__version__}, torch {torch.__version__}, {name}, {time.strftime('%Y-%m-%d')}"


def fwd_bwd(fn, q, k, v, grad):
    """A callable that runs ``fn(q, k, v)`` and its gradients with respect to q, k, v."""
    def run():
        out = fn(q, k, v)
        torch.autograd.grad(out, (q, k, v), grad)

    return run


def write_outputs(records, markdown_text: str, json_path: str | None, markdown_path: str | None) -> None:
    """Write the records as JSON and the Markdown table, where paths are given."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(records, f, indent=1, default=str)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(markdown_text)
