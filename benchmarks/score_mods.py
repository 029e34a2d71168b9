"""Score modifications on the GPU: each ``foveate.score_mods`` modification on three patterns,
against the same pattern unmodified, and a low-rank bias against the same bias as a dense
tensor (time and peak memory), baselines in the same run.

Rows (bf16, B=1, H=16, D=128 by default; forward and forward+backward, gradients into q, k, v
and into every learnable tensor of the modification):

* patterns: dense 8K, a 2-D neighborhood (128x128, kernel 13), a sliding window (32K, 2047
  left); for each: no modification (on our kernels and on FlexAttention), ``Softcap(50)``,
  ``ALiBi()``, ``DistanceDecay`` (learnable rates; Manhattan on the canvas), a
  ``RelativePositionBias`` (T5 buckets, learnable; Swin's windowed table on the canvas), and
  ``LowRankBias`` (r=16). ``auto`` is what ``attention()`` runs (our kernels for softcap, ALiBi,
  1-D decays and the low-rank bias (as extra features); flex for the others, and for every
  modification on the canvas), beside FlexAttention with the same ``score_mod``; ``cost`` is the
  row's time over the unmodified pattern's on our kernels;
* low-rank against dense: ``LowRankBias`` (r=16, N=16K, causal) against ``DenseBias`` of the same
  bias (materialised, 16 x 16K x 16K), forward+backward time and peak memory.

Outputs are checked against the float32 reference on one head first (where it fits).

Usage: ``python benchmarks/score_mods.py [--heads 16] [--head-dim 128] [--groups patterns
low-rank] [--json FILE] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse

import torch

import foveate
from foveate import patterns as P
from foveate import score_mods as S

from common import bench_ms, run_header, write_outputs

PATTERNS = {  # name: (pattern, tokens)
    "dense 8K": (P.Dense(), 8192),
    "2-D 128x128 k13": (P.Neighborhood((128, 128), 13), 128 * 128),
    "window 32K 2047": (P.SlidingWindow(2047), 32768),
}


def modifications(name: str, pattern, n: int, heads: int, device) -> dict:
    """The modifications of a pattern's rows, made for its shape (learnable tensors require grad)."""
    canvas = pattern.canvas if pattern.canvas is not None and len(pattern.canvas) > 1 else None
    rate = torch.full((heads,), 0.01, device=device, requires_grad=True)
    if canvas is None:
        relative = S.RelativePositionBias(torch.randn(heads, 32, device=device, requires_grad=True))
    else:
        relative = S.RelativePositionBias(torch.randn(heads, 25 * 25, device=device, requires_grad=True),
                                          canvas=canvas, window=13)
    gen = torch.Generator(device=device).manual_seed(1)
    u = (0.1 * torch.randn(1, heads, n, 16, device=device, generator=gen)).requires_grad_()
    w = (0.1 * torch.randn(1, heads, n, 16, device=device, generator=gen)).requires_grad_()
    return {
        "none": None,
        "Softcap(50)": S.Softcap(50.0),
        "ALiBi()": S.ALiBi(),
        "DistanceDecay": S.DistanceDecay(rate, canvas=canvas),
        "RelativePositionBias": relative,
        "LowRankBias(r=16)": S.LowRankBias(u, w),
    }


def _inputs(n, heads, dim, device, dtype=torch.bfloat16):
    gen = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(1, heads, n, dim, device=device, dtype=dtype, generator=gen).requires_grad_()
            for _ in range(4)]


def _timed(run_fwd, tensors, grad):
    fwd = bench_ms(run_fwd)

    def step():
        out = run_fwd()
        torch.autograd.grad(out, tensors, grad)

    return fwd, bench_ms(step)


def pattern_rows(heads, dim, device):
    records = []
    for name, (pattern, n) in PATTERNS.items():
        q, k, v, grad = _inputs(n, heads, dim, device)
        base = None
        for mod_name, mod in modifications(name, pattern, n, heads, device).items():
            learn = [t for t in (mod.parameters() if mod is not None else ()) if t.requires_grad]
            for backend in ["auto", "flex"]:
                tensors = [q, k, v, *learn]
                def run(backend=backend, mod=mod):
                    return foveate.attention(q, k, v, pattern, score_mod=mod, backend=backend)

                record = dict(pattern=name, n=n, modification=mod_name, backend=backend)
                try:
                    chosen = _chosen(q, k, v, pattern, mod, backend)
                    _check(q, k, v, pattern, mod, backend)
                    fwd, step = _timed(run, tensors, grad)
                    record.update(status="ok", runs_on=chosen, fwd_ms=fwd, fwdbwd_ms=step)
                    if mod is None and backend == "auto":
                        base = (fwd, step)
                    if base is not None and mod is not None:
                        record.update(cost_fwd=fwd / base[0], cost_fwdbwd=step / base[1])
                except Exception as e:  # (a row that fails is reported, the run goes on)
                    record.update(status="failed", reason=f"{type(e).__name__}: {str(e)[:300]}")
                print(_line(record), flush=True)
                records.append(record)
        del q, k, v, grad
        torch.cuda.empty_cache()
    return records


def _chosen(q, k, v, pattern, mod, backend):
    """The backend that ``attention()`` picks for the row (what its time measures)."""
    from foveate.backends import Problem, select

    problem = Problem(batch=q.shape[0], heads_q=q.shape[1], heads_kv=k.shape[1], q_len=q.shape[2], kv_len=k.shape[2],
                      head_dim=q.shape[3], head_dim_v=v.shape[3], dtype=q.dtype, device=q.device, requires_grad=True,
                      return_lse=False, pattern=pattern,
                      score_mod=None if mod is None or isinstance(mod, S.LowRankBias) else mod)
    return select(problem, backend).name


def _check(q, k, v, pattern, mod, backend):
    """One head against the float32 reference (small problems only)."""
    n = q.shape[2]
    if n > 16384:
        return
    one = [t[:, :1].detach().float() for t in (q, k, v)]
    if mod is not None and any(isinstance(p, S.LowRankBias) for p in mod.parts()):
        mod = S.LowRankBias(mod.u[:, :1].detach().float(), mod.w[:, :1].detach().float())
    elif mod is not None:
        return  # (per-head tensors: the reference would need the head's slice; the tests cover these)
    with torch.no_grad():
        ref = foveate.attention(*one, pattern, score_mod=mod, backend="reference")
        got = foveate.attention(*(t.to(q.dtype) for t in one), pattern, score_mod=mod, backend=backend)
    err = (got.float() - ref).abs().max().item()
    if err > 0.05:
        raise AssertionError(f"error {err:.3g} against the float32 reference")


def low_rank_rows(heads, dim, device, n=16384, rank=16):
    """LowRankBias against the same bias as DenseBias: forward+backward time and peak memory."""
    records = []
    q, k, v, grad = _inputs(n, heads, dim, device)
    gen = torch.Generator(device=device).manual_seed(2)
    u = (0.1 * torch.randn(1, heads, n, rank, device=device, generator=gen)).requires_grad_()
    w = (0.1 * torch.randn(1, heads, n, rank, device=device, generator=gen)).requires_grad_()
    for name in ("LowRankBias", "DenseBias"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        if name == "LowRankBias":
            mod, learn = S.LowRankBias(u, w), [u, w]
        else:
            bias = (u.detach() @ w.detach().transpose(-1, -2)).to(torch.bfloat16).requires_grad_()
            mod, learn = S.DenseBias(bias), [bias]

        def run(mod=mod):
            return foveate.attention(q, k, v, P.Causal(), score_mod=mod)

        record = dict(case=f"{name} r={rank} N={n} causal", n=n)
        try:
            fwd, step = _timed(run, [q, k, v, *learn], grad)
            record.update(status="ok", fwd_ms=fwd, fwdbwd_ms=step,
                          peak_gib=(torch.cuda.max_memory_allocated() - start) / 2**30)
        except Exception as e:
            record.update(status="failed", reason=f"{type(e).__name__}: {str(e)[:300]}")
        print(_line(record), flush=True)
        records.append(record)
        del mod
    if all(r["status"] == "ok" for r in records):
        records[0]["speedup_vs_dense_fwdbwd"] = records[1]["fwdbwd_ms"] / records[0]["fwdbwd_ms"]
    return records


def _line(r: dict) -> str:
    return "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())


def markdown(records, header: str) -> str:
    lines = [f"Score modifications ({header})", "",
             "| pattern / case | modification | runs on | fwd ms | fwd+bwd ms | cost fwd | cost fwd+bwd | peak GiB |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        if r.get("status") != "ok":
            lines.append(f"| {r.get('pattern', r.get('case'))} | {r.get('modification', '')} | failed: "
                         f"{r.get('reason', '')[:80]} | | | | | |")
            continue
        fmt = lambda key: f"{r[key]:.3f}" if key in r else ""  # noqa: E731
        lines.append(f"| {r.get('pattern', r.get('case'))} | {r.get('modification', '')} | "
                     f"{r.get('runs_on', r.get('backend', 'auto'))} | {fmt('fwd_ms')} | {fmt('fwdbwd_ms')} | "
                     f"{fmt('cost_fwd')} | {fmt('cost_fwdbwd')} | {fmt('peak_gib')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--groups", nargs="+", default=["patterns", "low-rank"], choices=["patterns", "low-rank"])
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/score_mods.py needs a CUDA GPU")
    device = torch.device("cuda")
    header = run_header(device)
    print(header, flush=True)
    records = []
    if "patterns" in args.groups:
        records += pattern_rows(args.heads, args.head_dim, device)
    if "low-rank" in args.groups:
        records += low_rank_rows(args.heads, args.head_dim, device)
    write_outputs(records, markdown(records, header), args.json, args.markdown)


if __name__ == "__main__":
    main()
