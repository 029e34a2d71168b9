"""Every pattern on the fused kernels (GPU): compositions and ``mask_mod``-only patterns against
the same masks as structured patterns and on FlexAttention, baselines in the same run.

Groups of rows, each timed forward and forward+backward (bf16, B=1, H=16, D=128, N=32768 by
default):

* **baselines**: cuDNN SDPA dense and causal (every "% of speed of light" divides the
  simulator's bound into cuDNN's dense time of the same shape);
* **compositions** (the kernels combine the parts' predicates): a window with sinks
  (``SlidingWindow(2047) | Sinks(128)``), StreamingLLM (``(SlidingWindow(2047) | Sinks(128)) &
  Causal()``), a mask that is also one structured pattern (``SlidingWindow(2047, 2047) &
  Causal()`` = ``SlidingWindow(2047)``; ``Neighborhood(7, 9, 9) & Neighborhood(7, 32, 32)`` =
  ``Neighborhood(7, 9, 9)`` on a 32^3 canvas) beside that pattern, and a 3-D neighborhood
  intersected with causal-in-time written as a composition (``Neighborhood(7, 9, 9) &
  Neighborhood(32, 32, 32, causal in time)``) beside the nearest structured pattern
  (``Neighborhood(4, 9, 9, causal in time)``: the same but on the last 3 frames);
* **bitmask** (the partial blocks' bits evaluated from ``mask_mod``): a prefix-LM and a document
  mask (8 documents of random lengths, causal inside) as ``P.Mask``, and neighborhoods forced
  through the bitmask path (``policy.force_bitmask``) beside their structured path; for each,
  the time to build the bitmask (once per layout: it is kept with the layout) beside the
  forward it serves (compiled: ``foveate.policy.compile_bitmask``, the default on CUDA; the first
  build's time, which compiles; and eager).

Every pattern also runs on FlexAttention (foveate's flex backend: the same layout as a
``BlockMask``, the same ``mask_mod`` compiled into its kernel). Outputs are checked against the
float32 reference on one head before timing. Columns: time, the compared row's time over ours
(``vs``: structured pattern, FlexAttention), effective TFLOP/s (allowed pairs only), % of the
simulator's speed of light.

Usage: ``python benchmarks/kernel_masks.py [--heads 16] [--head-dim 128] [--no-backward] [--no-flex]
[--groups compositions bitmask] [--json FILE] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import foveate
from foveate import patterns as P
from foveate.backends import cached_layout
from foveate.bitmask import build_bitmask
from foveate.simulator import choose_tile
from foveate.tiling import Tiled

from common import bench_ms, cudnn_sdpa, fwd_bwd, run_header, write_outputs

CANVAS = (32, 32, 32)  # N = 32768 tokens, the sequence length of every row


def _time(fn) -> float:
    return bench_ms(fn, warmup=25, rep=200)


def _documents(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """Per-token document ids of ``count`` documents of random lengths (at least n / (4 count))."""
    least = n // (4 * count)
    cuts = torch.sort(torch.randperm(n - count * least, generator=gen)[:count - 1]).values
    lengths = torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([n - count * least])])) + least
    return torch.repeat_interleave(torch.arange(count), lengths).cuda()


def cases(n: int, gen: torch.Generator) -> list[dict]:
    """The rows: ``name``, ``group``, ``pattern``, ``compare`` (the name of the row it is measured
    against, or None), ``force`` (the bitmask path forced)."""
    nb = P.Neighborhood(CANVAS, (7, 9, 9))
    time_causal = P.Neighborhood(CANVAS, CANVAS, causal=(True, False, False))
    doc = _documents(n, 8, gen)
    prefix = n // 8

    def prefix_lm(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) | (kv_idx < prefix)

    def documents(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (kv_idx <= q_idx)

    rows = [
        dict(name="window|sinks", group="compositions", pattern=P.SlidingWindow(2047) | P.Sinks(128)),
        dict(name="(window|sinks)&causal", group="compositions",
             pattern=(P.SlidingWindow(2047) | P.Sinks(128)) & P.Causal()),
        dict(name="window (structured)", group="compositions", pattern=P.SlidingWindow(2047)),
        dict(name="window2047x2&causal = window", group="compositions",
             pattern=P.SlidingWindow(2047, 2047) & P.Causal(), compare="window (structured)"),
        dict(name="nbhd 7x9x9 (structured)", group="compositions", pattern=nb),
        dict(name="nbhd 7x9x9 & 7x32x32 = nbhd", group="compositions",
             pattern=nb & P.Neighborhood(CANVAS, (7, 32, 32)), compare="nbhd 7x9x9 (structured)"),
        dict(name="nbhd 4x9x9 causal-t (structured)", group="compositions",
             pattern=P.Neighborhood(CANVAS, (4, 9, 9), causal=(True, False, False))),
        dict(name="nbhd 7x9x9 & causal-t", group="compositions", pattern=nb & time_causal,
             compare="nbhd 4x9x9 causal-t (structured)"),
        dict(name="prefix-LM (mask_mod)", group="bitmask", pattern=P.Mask(prefix_lm)),
        dict(name="8 documents (mask_mod)", group="bitmask", pattern=P.Mask(documents)),
        dict(name="nbhd 7x9x9 forced bitmask", group="bitmask", pattern=nb, force=True,
             compare="nbhd 7x9x9 (structured)"),
        dict(name="window forced bitmask", group="bitmask", pattern=P.SlidingWindow(2047), force=True,
             compare="window (structured)"),
    ]
    for row in rows:
        row.setdefault("compare", None)
        row.setdefault("force", False)
    return rows


def run(n: int, heads: int, dim: int, backward: bool, flex: bool, groups) -> tuple[list[dict], str]:
    gen = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(1, heads, n, dim, generator=gen).to("cuda", torch.bfloat16) for _ in range(4))
    q, k, v = (t.requires_grad_(backward) for t in (q, k, v))
    records: list[dict] = []

    def timed(rec: dict, fn) -> None:
        with torch.no_grad():
            rec["fwd_ms"] = _time(lambda: fn(q, k, v))
        rec["fwdbwd_ms"] = _time(fwd_bwd(fn, q, k, v, grad)) if backward else None

    base = {"tokens": n, "heads": heads, "dim": dim}
    dense = dict(base, name="dense", group="baselines", kernel="cudnn", pairs=n * n, bound=1.0)
    timed(dense, cudnn_sdpa)
    causal = dict(base, name="causal", group="baselines", kernel="cudnn", pairs=n * (n + 1) // 2)
    timed(causal, lambda q, k, v: cudnn_sdpa(q, k, v, causal=True))
    records += [dense, causal]
    print(_line(dense), flush=True)
    print(_line(causal), flush=True)

    rows = cases(n, gen)
    wanted = {c["name"] for c in rows if c["group"] in groups} | {c["compare"] for c in rows if c["group"] in groups}
    for case in rows:
        if case["name"] not in wanted:
            continue
        pattern = case["pattern"]
        tile = choose_tile(pattern)
        target = pattern if tile is None else Tiled(pattern, tile)
        lengths = target.default_lengths() if tile is not None else (n, n)
        layout = cached_layout(target, *lengths, block_q=128, block_kv=128, device=torch.device("cuda"))
        sim = dict(pairs=_allowed_pairs(pattern, n), bound=layout.block_density(), tile=tile,
                   partial=int(layout.kv_num_blocks.sum()), visited=layout.num_visited(),
                   bitmask_mib=layout.bitmask_bytes() / 2**20)
        kernels = ["triton"] + (["flex"] if flex and not case["force"] else [])
        for kernel in kernels:
            rec = dict(base, name=case["name"], group=case["group"], kernel=kernel, compare=case["compare"], **sim)
            records.append(rec)
            with foveate.policy.override(force_bitmask=case["force"]):
                def fn(q, k, v, kernel=kernel):
                    return foveate.attention(q, k, v, pattern, backend=kernel)

                rec["max_err"] = _max_error(fn, q, k, v, pattern)
                if not rec["max_err"] < 5e-2:
                    rec["status"] = "WRONG"
                    print(f"{case['name']} {kernel}: WRONG (max error {rec['max_err']:.3g})", flush=True)
                    continue
                timed(rec, fn)
                if kernel == "triton" and (case["force"] or pattern.kernel_mask(n, n) is None):
                    start = time.perf_counter()
                    build_bitmask(layout, compiled=True)  # (compiles: the first build's time)
                    torch.cuda.synchronize()
                    rec["bitmask_first_build_s"] = time.perf_counter() - start
                    rec["bitmask_build_ms"] = _time(lambda: build_bitmask(layout, compiled=True))
                    rec["bitmask_eager_build_ms"] = _time(lambda: build_bitmask(layout))
            print(_line(rec), flush=True)
    _ratios(records, dense)
    header = (f"{run_header()}, bf16, B=1, H={heads}, D={dim}, N={n}; triton = foveate's kernels, flex = "
              f"compiled FlexAttention (foveate's flex backend, the same layout and mask_mod), cudnn = cuDNN SDPA")
    return records, header


def _allowed_pairs(pattern, n: int) -> int:
    """Allowed (query, key) pairs of ``pattern`` at ``n`` tokens (the layout built on the GPU,
    where a ``mask_mod``-only pattern's generic build is fast)."""
    return cached_layout(pattern, n, n, block_q=128, block_kv=128, device=torch.device("cuda")).allowed_pairs()


def _max_error(fn, q, k, v, pattern) -> float:
    """Max abs error of ``fn`` on the first head against the float32 reference."""
    with torch.no_grad():
        ref = foveate.attention(q[:, :1].float(), k[:, :1].float(), v[:, :1].float(), pattern, backend="reference")
        return (fn(q, k, v)[:, :1].float() - ref).abs().max().item()


def _ratios(records: list[dict], dense: dict) -> None:
    """The derived columns: TFLOP/s, % of speed of light, ``vs`` (compared row over ours)."""
    by_name = {(r["name"], r["kernel"]): r for r in records if r.get("fwd_ms") is not None}
    for r in records:
        if r.get("fwd_ms") is None:
            continue
        for kind, factor in (("fwd", 1.0), ("fwdbwd", 3.5)):
            ms = r.get(kind + "_ms")
            if ms is None:
                continue
            r[kind + "_tflops"] = 4 * r["pairs"] * r["dim"] * r["heads"] * factor / ms / 1e9
            if "bound" in r and dense.get(kind + "_ms"):
                r[kind + "_sol"] = dense[kind + "_ms"] * r["bound"] / ms
            flex = by_name.get((r["name"], "flex"))
            if r["kernel"] == "triton" and flex is not None and flex.get(kind + "_ms"):
                r[kind + "_vs_flex"] = flex[kind + "_ms"] / ms
            other = by_name.get((r.get("compare"), "triton"))
            if r["kernel"] == "triton" and other is not None and other.get(kind + "_ms"):
                r[kind + "_vs_compare"] = other[kind + "_ms"] / ms
        if r.get("bitmask_build_ms") is not None:
            r["build_over_fwd"] = r["bitmask_build_ms"] / r["fwd_ms"]


def _line(r: dict) -> str:
    text = f"{r['group']:12s} {r['name']:34s} {r['kernel']:6s}"
    for kind in ("fwd", "fwdbwd"):
        if r.get(kind + "_ms") is not None:
            text += f" {kind} {r[kind + '_ms']:.3f} ms"
    if r.get("bitmask_build_ms") is not None:
        text += (f" (bitmask build {r['bitmask_build_ms']:.3f} ms compiled, first {r['bitmask_first_build_s']:.1f} s; "
                 f"{r['bitmask_eager_build_ms']:.3f} ms eager)")
    return text


def markdown(records: list[dict], header: str) -> str:
    def cell(r, key, fmt):
        return fmt.format(r[key]) if r.get(key) is not None else ""

    lines = [header, "",
             "| group | pattern | kernel | tile | blocks (partial) | fwd ms | fwd TFLOP/s | fwd % SoL | fwd vs compared "
             "| fwd vs flex | fwd+bwd ms | fwd+bwd TFLOP/s | fwd+bwd % SoL | fwd+bwd vs compared | fwd+bwd vs flex "
             "| bitmask MiB | bitmask build ms (of fwd) | eager build ms |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        if r.get("status") == "WRONG":
            lines.append(f"| {r['group']} | {r['name']} | {r['kernel']} | WRONG RESULT (max error {r['max_err']:.3g}) "
                         + "|" * 15)
            continue
        blocks = f"{r['visited']} ({r['partial']})" if "visited" in r else ""
        tile = "x".join(map(str, r["tile"])) if r.get("tile") else ""
        build = ""
        if r.get("bitmask_build_ms") is not None:
            build = f"{r['bitmask_build_ms']:.3f} ({100 * r['build_over_fwd']:.1f} %)"
        cells = [r["group"], r["name"], r["kernel"], tile, blocks]
        for kind in ("fwd", "fwdbwd"):
            cells += [cell(r, kind + "_ms", "{:.3f}"), cell(r, kind + "_tflops", "{:.0f}"),
                      cell(r, kind + "_sol", "{:.0%}"), cell(r, kind + "_vs_compare", "{:.2f}x"),
                      cell(r, kind + "_vs_flex", "{:.2f}x")]
        cells += [cell(r, "bitmask_mib", "{:.1f}") if r["kernel"] == "triton" and r.get("bitmask_build_ms") else "",
                  build, cell(r, "bitmask_eager_build_ms", "{:.3f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--groups", nargs="+", default=["compositions", "bitmask"], choices=["compositions", "bitmask"])
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernel_masks.py needs a CUDA GPU")
    flex = "flex" in foveate.backends.available() and not args.no_flex
    records, header = run(32 ** 3, args.heads, args.head_dim, not args.no_backward, flex, args.groups)
    text = markdown(records, header)
    print(text)
    write_outputs(records, text, args.json, args.markdown)


if __name__ == "__main__":
    main()
