"""Decoding against a KV cache (``foveate.decode``): dense, paged and sparse, against PyTorch's SDPA.

bf16, D=128, Hq=32, Hkv=8, one new query per sequence, every sequence filled to the cache
length (the same cache for every kernel of a row):

* **dense**: batch 1 / 8 / 64 x cache 4K / 32K / 128K. ``foveate`` (split-KV Triton kernel) on a
  contiguous cache, against SDPA on the same cache tensors, each of its backends that runs
  (flash, efficient, cudnn; the query heads of a kv head folded into its query rows, so no
  backend copies K/V for GQA; a single query sees every key). PyTorch's flash backend is
  FlashAttention-2, whose forward splits the keys across blocks for short queries (its own
  flash-decoding); the best SDPA backend is the row's baseline. Achieved bandwidth: bytes of K
  and V read / time, and its fraction of the device's HBM peak where the device is known.
* **paged**: the same on a paged cache (pages of ``--page-size`` tokens scattered over the
  pool), against the contiguous time.
* **sparse** (128K, or the longest length): StreamingLLM window + sinks (``--budget`` keys) and
  Quest (top pages by the key-summary bound within ``--budget`` tokens, selection included and
  alone) against dense decoding of the same paged cache.

Each time is ``do_bench``'s warm median (host and GPU work, like ``benchmarks/common.py``) and,
where the call can be captured, the GPU time of the call replayed from a CUDA graph
(``graph_ms``: a model's host runs ahead of its GPU). Each row is checked against SDPA (dense)
or the float32 reference (sparse, small batches) before it is timed.

Usage: ``python benchmarks/decode.py [--batches 1 8 64] [--lengths 4096 32768 131072]
[--page-size 16] [--budget 4096] [--json FILE] [--markdown FILE] [--tiny]``. ``--tiny``: a smoke
run on a CPU in seconds (tiny shapes; the Triton kernels under ``TRITON_INTERPRET=1``, else the
torch backend; wall-clock medians).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import foveate.decode as fd
from foveate import patterns as P
from foveate.decode.naive import decode_attention

from common import bench_ms, graph_ms, run_header, write_outputs

#: HBM peak (bytes/s) by device name fragment: the SXM parts' datasheet figures.
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "B200": 8.0e12}
#: A row whose output is further than this from its check is an error, not a time.
ERROR_LIMIT = 0.05
SDPA_BACKENDS = ("flash", "efficient", "cudnn")


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def _time(fn, device: torch.device) -> tuple[float, float | None]:
    """``(do_bench ms, CUDA-graph ms or None)`` on a GPU; the wall-clock median twice on a CPU."""
    if device.type != "cuda":
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3, None
    ms = bench_ms(fn, warmup=25, rep=100)
    try:
        gms = graph_ms(fn, calls=4)
    except Exception:  # not capturable (a host sync): the eager time stands alone
        gms = None
    return ms, gms


def _sdpa(backend: str):
    """SDPA with one backend, GQA folded into the query rows: ``q`` ``(B, Hq, 1, D)``."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    which = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

    def run(q, k, v):
        b, hq, n, d = q.shape
        rows = q.reshape(b, k.shape[1], hq // k.shape[1] * n, d)  # (n == 1: query heads as rows)
        with sdpa_kernel(which):
            return torch.nn.functional.scaled_dot_product_attention(rows, k, v).reshape(b, hq, n, d)

    return run


def _fill(cache, gen) -> None:
    for t in (cache.k, cache.v):
        t.normal_(generator=gen)


def _record(records, group, name, kernel, batch, length, ms, gms, kv_bytes, peak, err, **extra):
    best = min(x for x in (ms, gms) if x is not None)
    bw = kv_bytes / (best * 1e-3)
    rec = dict(group=group, name=name, kernel=kernel, batch=batch, length=length, status="ok", ms=ms, graph_ms=gms,
               kv_bytes=kv_bytes, gb_per_s=bw / 1e9, of_peak=None if peak is None else bw / peak, max_err=err, **extra)
    records.append(rec)
    return rec


def _skip(records, group, name, kernel, batch, length, reason):
    records.append(dict(group=group, name=name, kernel=kernel, batch=batch, length=length, status="skipped",
                        reason=reason))


def run(batches, lengths, *, heads=32, kv_heads=8, dim=128, page_size=16, budget=4096, tiny=False,
        device=None) -> list[dict]:
    device = device or torch.device("cuda")
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    backend = "triton" if cuda or os.environ.get("TRITON_INTERPRET") == "1" else "torch"
    peak = _peak(device)
    gen = torch.Generator(device=device).manual_seed(0)
    records: list[dict] = []
    elem = torch.finfo(dtype).bits // 8
    longest = max(lengths)

    for length in lengths:
        for batch in batches:
            kv_bytes = 2 * batch * kv_heads * length * dim * elem
            name = f"B={batch} L={length}"
            if cuda and 2.2 * kv_bytes > torch.cuda.mem_get_info(device)[0]:
                _skip(records, "dense", name, "*", batch, length, f"{kv_bytes / 2**30:.1f} GiB of K/V do not fit")
                continue
            q = torch.randn(batch, heads, 1, dim, generator=gen, device=device, dtype=dtype)
            # contiguous cache, filled to the length: SDPA reads the same tensors
            cache = fd.KVCache.empty(batch, kv_heads, length, dim, dtype=dtype, device=device)
            _fill(cache, gen)
            cache.set_lengths(torch.full((batch,), length, device=device))
            ours = fd.attention(q, cache, backend=backend)
            sdpa_times = {}
            check = None
            for sb in SDPA_BACKENDS if cuda else ():
                fn = _sdpa(sb)
                try:
                    out = fn(q, cache.k, cache.v)
                except RuntimeError as e:
                    _skip(records, "dense", name, f"sdpa-{sb}", batch, length, str(e).splitlines()[0][:120])
                    continue
                check = out if check is None else check
                ms, gms = _time(lambda: fn(q, cache.k, cache.v), device)
                err = (out.float() - ours.float()).abs().max().item()
                sdpa_times[sb] = min(x for x in (ms, gms) if x is not None)
                _record(records, "dense", name, f"sdpa-{sb}", batch, length, ms, gms, kv_bytes, peak, err)
            if check is None:  # (a CPU: the float32 reference)
                check = decode_attention(q, cache)[0]
            err = (ours.float() - check.float()).abs().max().item()
            ms, gms = _time(lambda: fd.attention(q, cache, backend=backend), device)
            rec = _record(records, "dense", name, "foveate", batch, length, ms, gms, kv_bytes, peak, err)
            contiguous_best = min(x for x in (ms, gms) if x is not None)
            if sdpa_times:
                best = min(sdpa_times, key=sdpa_times.get)
                rec.update(baseline=f"sdpa-{best}", vs_baseline=sdpa_times[best] / contiguous_best)
            cache = None  # (freed before the paged copy is made)

            # paged: the same keys in scattered pages
            paged = fd.PagedKVCache.empty(batch, kv_heads, length, dim, page_size=page_size, dtype=dtype,
                                          device=device, shuffle=torch.Generator().manual_seed(1),
                                          summaries=length == longest)
            _fill(paged, gen)
            paged.set_lengths(torch.full((batch,), length, device=device))
            out = fd.attention(q, paged, backend=backend)
            err = (out.float() - decode_attention(q, paged)[0].float()).abs().max().item() if batch * length <= 2**18 \
                else None
            ms, gms = _time(lambda: fd.attention(q, paged, backend=backend), device)
            rec = _record(records, "paged", name, "foveate-paged", batch, length, ms, gms, kv_bytes, peak, err)
            paged_best = min(x for x in (ms, gms) if x is not None)
            rec.update(baseline="foveate", vs_baseline=contiguous_best / paged_best)

            if length == longest:
                _sparse(records, q, paged, paged_best, batch, length, budget, backend, device, peak)
            paged = None
            if cuda:
                torch.cuda.empty_cache()
    for r in records:
        if r["status"] == "ok" and r["max_err"] is not None and r["max_err"] > ERROR_LIMIT:
            r["status"] = "error"
    return records


def _sparse(records, q, cache, dense_ms, batch, length, budget, backend, device, peak):
    """Window + sinks and Quest at ``budget`` keys on ``cache``, against its dense time."""
    name = f"B={batch} L={length} budget={budget}"
    dim, kv_heads, elem = cache.head_dim, cache.kv_heads, cache.k.element_size()
    small = batch * length <= 2**20
    streaming = (P.SlidingWindow(budget - 5) | P.Sinks(4)) & P.Causal()
    out = fd.attention(q, cache, pattern=streaming, backend=backend)
    err = (out.float() - decode_attention(q, cache, pattern=streaming)[0].float()).abs().max().item() if small else None
    ms, gms = _time(lambda: fd.attention(q, cache, pattern=streaming, backend=backend), device)
    read = 2 * batch * kv_heads * min(budget, length) * dim * elem
    rec = _record(records, "sparse", name, "window+sinks", batch, length, ms, gms, read, peak, err)
    rec.update(baseline="foveate-paged", vs_baseline=dense_ms / min(x for x in (ms, gms) if x is not None))

    def quest():
        sel = fd.select_pages(q, cache, budget=budget, sinks=4)
        return fd.attention(q, cache, pages=sel, backend=backend)

    sel = fd.select_pages(q, cache, budget=budget, sinks=4)
    out = quest()
    err = (out.float() - decode_attention(q, cache, pages=sel)[0].float()).abs().max().item() if small else None
    ms, gms = _time(quest, device)
    summaries = 2 * batch * cache.max_pages * kv_heads * dim * elem
    rec = _record(records, "sparse", name, "quest (selection included)", batch, length, ms, gms, read + summaries,
                  peak, err)
    rec.update(baseline="foveate-paged", vs_baseline=dense_ms / min(x for x in (ms, gms) if x is not None))
    ms, gms = _time(lambda: fd.select_pages(q, cache, budget=budget, sinks=4), device)
    _record(records, "sparse", name, "quest selection alone", batch, length, ms, gms, summaries, peak, None)


def markdown(records, header: str) -> str:
    lines = [header, "", "| group | case | kernel | ms | graph ms | GB/s | of peak | vs baseline | max err | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        def f(key, fmt):
            v = r.get(key)
            return "" if v is None else format(v, fmt)

        vs = f"{r['vs_baseline']:.2f}x {r['baseline']}" if r.get("vs_baseline") is not None else ""
        status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
        lines.append(f"| {r['group']} | {r['name']} | {r['kernel']} | {f('ms', '.4f')} | {f('graph_ms', '.4f')} | "
                     f"{f('gb_per_s', '.0f')} | {f('of_peak', '.0%')} | {vs} | {f('max_err', '.2e')} | {status} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (1 8 64; --tiny 1 2)")
    parser.add_argument("--lengths", type=int, nargs="+", help="cache lengths (4096 32768 131072; --tiny 64 256)")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--budget", type=int, help="sparse keys per sequence (4096; --tiny 64)")
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--tiny", action="store_true", help="smoke run: tiny shapes, a CPU works")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("benchmarks/decode.py needs a CUDA GPU (--tiny runs a CPU smoke test)")
    tiny = args.tiny
    batches = args.batches or ([1, 2] if tiny else [1, 8, 64])
    lengths = args.lengths or ([64, 256] if tiny else [4096, 32768, 131072])
    shape = dict(heads=4, kv_heads=2, dim=32) if tiny else {}
    device = torch.device("cuda" if cuda else "cpu")
    records = run(batches, lengths, page_size=args.page_size, budget=args.budget or (64 if tiny else 4096),
                  tiny=tiny, device=device, **shape)
    dims = "Hq=4, Hkv=2, D=32" if tiny else "Hq=32, Hkv=8, D=128"
    header = (f"{run_header(device)}; decode, 1 new query per sequence, {dims}, "
              f"{'bfloat16' if cuda else 'float32'}, page size {args.page_size}"
              + ("" if cuda else "; SMOKE RUN on a CPU (--tiny)"))
    table = markdown(records, header)
    print(table)
    write_outputs(records, table, args.json, args.markdown)


if __name__ == "__main__":
    main()
