"""Sequence patterns on the fused kernels (GPU): packed documents, sinks with a window, power
attention and strided heads, against FlexAttention, the causal kernel and the ideal, with the
baselines in the same run.

Every row is timed forward and forward+backward (bf16, B=1, H=16, D=128 by default). Groups:

* **baselines** (at every length and head count a group uses): cuDNN SDPA dense and causal
  (``sdpa_kernel(SDPBackend.CUDNN_ATTENTION)``) and foveate's causal kernel (``triton``);
* **documents** (N=32768): documents of 1K-16K tokens (random lengths, log-uniform from seed 0,
  summing to N), causal inside: ``P.Documents(lengths, inner=P.Causal())`` on our kernels and on
  FlexAttention (the flex backend, the same pattern), the same mask as a ``P.Mask`` (the
  bitmask path), and the documents one by one through our causal kernel (one call per
  document, the times summed: what a caller without a document pattern runs);
* **streaming** (N=32768 and 131072): StreamingLLM ``(P.SlidingWindow(2047) | P.Sinks(4)) &
  P.Causal()`` and ``P.PowerAttention(block=256, window=5, sink=1)``, ours and Flex; the target
  is at least 0.85 of the ideal and at least Flex (the ``target`` column, triton rows);
* **strided** (N=32768, 32 heads): ``P.StridedHeads(...)`` (a pattern per head), ours and Flex;
  its speedup over our causal kernel beside the speedup that the pair counts allow.

Columns: time; effective TFLOP/s (allowed pairs only: forward ``4 * pairs * D`` per head,
forward+backward 3.5 times that); ``% ideal``: the **ideal** time, cuDNN's dense time of the
same shape times the density (allowed pairs / N^2), over the row's time; ``% SoL``: the
simulator's speed of light (``foveate.simulate``'s ``speedup_bound``: dense blocks over visited
blocks, 128x128, counted on the layout the kernels run) applied to the same cuDNN dense time,
over the row's time; ``vs compared``: the compared row's time over ours (documents: the
documents one by one; streaming and strided: our causal kernel), with the ratio the pair
counts allow in brackets (compared density / this density); ``vs flex``: Flex's time over
ours. The documents one by one are counted as the packed pattern (the same pairs; their % SoL
that of the packed layout). Every pattern's output is checked against the float32 reference
(one head; every head for a per-head pattern) before it is timed.

A case whose pattern cannot be constructed is skipped with the reason (a ``skipped`` record in
the JSON); a row whose backend fails is recorded as ``failed``.

``--tiny`` is a smoke run of the script's logic (tiny shapes, every parameter scaled down): on
a machine without CUDA in float32, with the ``torch`` backend in place of ``triton`` and the
``reference`` backend in place of FlexAttention and cuDNN (its times measure nothing).

Usage: ``python benchmarks/sequence_patterns.py [--heads 16] [--head-dim 128] [--strided-heads 32]
[--lengths 32768 131072] [--no-backward] [--no-flex] [--groups documents streaming strided]
[--json FILE] [--markdown FILE] [--tiny]``. ``--lengths`` replaces every group's lengths.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field

import torch

import foveate
from foveate import patterns as P
from foveate.backends import cached_layout
from foveate.benchmark.timing import eager_ms

from common import bench_ms, cudnn_sdpa, fwd_bwd, run_header, write_outputs

GROUPS = ("documents", "streaming", "strided")
#: Each group's sequence lengths (``--lengths`` replaces them all).
LENGTHS = {"documents": (32768,), "streaming": (32768, 131072), "strided": (32768,)}
#: ``--tiny`` divides every length and token count by this.
TINY = 128
#: Max abs error against the float32 reference on the checked heads (as kernel_masks.py).
ERROR_LIMIT = 5e-2
#: The streaming target: at least this fraction of the ideal, and at least Flex.
TARGET_OF_IDEAL = 0.85
KINDS = (("fwd", 1.0), ("fwdbwd", 3.5))  # (timing, FLOP factor over the forward)


# -- patterns ------------------------------------------------------------------------------

def document_lengths(n: int, shortest: int, longest: int, seed: int = 0) -> list[int]:
    """Random document lengths in ``[shortest, longest]`` that sum to exactly ``n``: drawn
    log-uniformly (as many short documents as long ones per octave) from a seeded generator,
    the last one what is left."""
    gen = torch.Generator().manual_seed(seed)
    lengths, left = [], n
    while left > longest:
        top = min(longest, left - shortest)  # (leaves at least `shortest` for the last one)
        u = float(torch.rand((), generator=gen))
        lengths.append(min(top, max(shortest, round(shortest * (top / shortest) ** u))))
        left -= lengths[-1]
    return lengths + [left]


def documents_mask(lengths: list[int], device) -> P.Mask:
    """The documents, causal inside, as a ``mask_mod`` (``P.Mask``): the bitmask path, and the
    reference's mask for every documents row."""
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))

    def documents(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (kv_idx <= q_idx)

    return P.Mask(documents)


@dataclass
class Case:
    """One row to time (on our kernels and, with ``flex``, on FlexAttention)."""

    name: str
    group: str
    n: int
    heads: int
    make: object  # () -> pattern (may raise: the case is skipped); None: see `per_document`
    ref: object  # () -> the pattern of the reference (the same mask)
    ref_key: tuple  # rows with the same key share one reference output
    compare: str | None = None  # the name of the triton row of the same (n, heads) it is measured against
    flex: bool = True
    per_document: list[int] | None = None  # documents one by one through the causal kernel
    extra: dict = field(default_factory=dict)


def cases(groups, lengths_of, heads: int, strided_heads: int, tiny: bool, device) -> list[Case]:
    """The rows of the selected groups (``lengths_of[group]``: its lengths)."""
    s = TINY if tiny else 1
    rows: list[Case] = []
    if "documents" in groups:
        for n in lengths_of["documents"]:
            lengths = document_lengths(n, 1024 // s, 16384 // s)
            mask = documents_mask(lengths, device)
            ref = (lambda mask=mask: mask)
            key = ("documents", n, heads)
            info = dict(documents=len(lengths), lengths=lengths)
            one_by_one = "documents one by one (causal kernel)"
            rows += [
                Case(one_by_one, "documents", n, heads, None, ref, key, flex=False, per_document=lengths, extra=info),
                Case(f"{len(lengths)} documents, causal inside", "documents", n, heads,
                     lambda lengths=lengths: P.Documents(tuple(lengths), inner=P.Causal()), ref, key,
                     compare=one_by_one, extra=info),
                Case(f"{len(lengths)} documents as P.Mask (bitmask)", "documents", n, heads, ref, ref, key,
                     compare=one_by_one, flex=False, extra=info),
            ]
    if "streaming" in groups:
        window, block = 2048 // s - 1, max(16, 256 // s)
        for n in lengths_of["streaming"]:
            streaming = (lambda window=window: (P.SlidingWindow(window) | P.Sinks(4)) & P.Causal())
            powered = (lambda block=block: P.PowerAttention(block=block, window=5, sink=1))
            rows += [
                Case(f"(window {window} | sinks 4) & causal", "streaming", n, heads, streaming, streaming,
                     ("streaming", n, heads), compare="causal"),
                Case(f"PowerAttention(block={block}, window=5, sink=1)", "streaming", n, heads, powered, powered,
                     ("power", n, heads), compare="causal"),
            ]
    if "strided" in groups:
        block = max(8, 64 // s)
        kwargs = dict(block=block, local=16, vertical=8, kv_heads=strided_heads)
        for n in lengths_of["strided"]:
            make = (lambda kwargs=kwargs: P.StridedHeads(**kwargs))
            rows.append(Case(f"StridedHeads({', '.join(f'{k}={v}' for k, v in kwargs.items())})", "strided", n,
                             strided_heads, make, make, ("strided", n, strided_heads), compare="causal"))
    return rows


# -- the run -------------------------------------------------------------------------------

@dataclass
class Setup:
    device: torch.device
    dtype: torch.dtype
    dim: int
    backward: bool
    flex: bool
    tiny: bool

    @property
    def ours(self) -> str:
        """Our kernels' backend: ``triton``, or ``torch`` in a CPU smoke run."""
        return "triton" if self.device.type == "cuda" else "torch"

    @property
    def flex_backend(self) -> str:
        return "flex" if self.device.type == "cuda" else "reference"

    def time(self, fn) -> float:
        if self.device.type == "cuda":
            return bench_ms(fn, warmup=25, rep=200)
        return eager_ms(fn, self.device, reps=1, rep_ms=0)  # (a smoke run: one warm call)

    def dense(self, causal: bool):
        """The dense baseline: cuDNN SDPA (the reference backend on a CPU)."""
        if self.device.type == "cuda":
            return lambda q, k, v: cudnn_sdpa(q, k, v, causal=causal)
        pattern = P.Causal() if causal else P.Dense()
        return lambda q, k, v: foveate.attention(q, k, v, pattern, backend="reference")


class Inputs:
    """q, k, v and the output gradient per (tokens, heads), made once (seed 0)."""

    def __init__(self, setup: Setup):
        self.setup, self.made = setup, {}

    def __call__(self, n: int, heads: int):
        key = (n, heads)
        if key not in self.made:
            s = self.setup
            gen = torch.Generator(s.device).manual_seed(0)
            q, k, v, grad = (torch.randn(1, heads, n, s.dim, generator=gen, device=s.device, dtype=s.dtype)
                             for _ in range(4))
            self.made[key] = (*(t.requires_grad_(s.backward) for t in (q, k, v)), grad)
        return self.made[key]


def counts(pattern, n: int, setup: Setup) -> dict:
    """The density and the simulator's counts of ``pattern`` at ``n`` tokens, on the layout of
    128x128 blocks (the pattern's own blocks if it fixes them) that the kernels run. In a
    smoke run also ``foveate.simulate``'s bound, which must be the same."""
    block_q, block_kv = getattr(pattern, "fixed_blocks", None) or (128, 128)
    layout = cached_layout(pattern, n, n, block_q=block_q, block_kv=block_kv, device=setup.device)
    out = dict(pattern=repr(pattern), density=layout.density(), block_density=layout.block_density(),
               visited=layout.num_visited(), partial=int(layout.kv_num_blocks.sum()),
               head_slots=layout.batch_heads[1], blocks=f"{block_q}x{block_kv}",
               mask=("kernel mask" if pattern.kernel_mask(n, n) is not None else "bitmask"))
    out["sol_bound"] = 1 / out["block_density"] if out["block_density"] else float("inf")
    if setup.tiny:
        sim = foveate.simulate(pattern, q_len=n, block_q=block_q, block_kv=block_kv)
        out["simulate_bound"] = sim.speedup_bound
        if abs(sim.speedup_bound - out["sol_bound"]) > 1e-9 * out["sol_bound"]:
            raise AssertionError(f"{pattern!r}: foveate.simulate's bound {sim.speedup_bound} differs from the "
                                 f"layout's {out['sol_bound']}")
    return out


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _checked_heads(head_slots: int) -> slice:
    """One head, or every head for a pattern that differs per head."""
    return slice(None) if head_slots > 1 else slice(0, 1)


def _timed(setup: Setup, rec: dict, fn, q, k, v, grad) -> None:
    with torch.no_grad():
        rec["fwd_ms"] = setup.time(lambda: fn(q, k, v))
    rec["fwdbwd_ms"] = setup.time(fwd_bwd(fn, q, k, v, grad)) if setup.backward else None


def _check(rec: dict, out: torch.Tensor, ref: torch.Tensor, heads: slice) -> bool:
    rec["max_err"] = (out[:, heads].float() - ref).abs().max().item()
    if not rec["max_err"] < ERROR_LIMIT:
        rec["status"] = "WRONG"
        rec["reason"] = f"max error {rec['max_err']:.3g} against the float32 reference"
        return False
    return True


def baselines(setup: Setup, inputs: Inputs, n: int, heads: int) -> list[dict]:
    """cuDNN dense and causal, our causal kernel, at ``n`` tokens and ``heads`` heads."""
    q, k, v, grad = inputs(n, heads)
    base = dict(group="baselines", tokens=n, heads=heads, dim=setup.dim, compare=None)
    dense_counts = counts(P.Dense(), n, setup)
    causal_counts = counts(P.Causal(), n, setup)
    rows = [
        (dict(base, name="dense", kernel="cudnn", backend="cudnn" if setup.device.type == "cuda" else "reference",
              **dense_counts), setup.dense(False), P.Dense()),
        (dict(base, name="causal", kernel="cudnn", backend="cudnn" if setup.device.type == "cuda" else "reference",
              **causal_counts), setup.dense(True), P.Causal()),
        (dict(base, name="causal", kernel="triton", backend=setup.ours, **causal_counts),
         lambda q, k, v: foveate.attention(q, k, v, P.Causal(), backend=setup.ours), P.Causal()),
    ]
    records, refs = [], {}
    for rec, fn, pattern in rows:
        records.append(rec)
        try:
            if pattern not in refs:
                refs[pattern] = _reference(pattern, q, k, v, slice(0, 1))
            with torch.no_grad():
                ok = _check(rec, fn(q, k, v), refs[pattern], slice(0, 1))
            if ok:
                _timed(setup, rec, fn, q, k, v, grad)
                rec["status"] = "ok"
        except Exception as exc:
            rec.update(status="failed", reason=_short(exc))
        print(_line(rec), flush=True)
    return records


def _reference(pattern, q, k, v, heads: slice) -> torch.Tensor:
    with torch.no_grad():
        return foveate.attention(q[:, heads].float(), k[:, heads].float(), v[:, heads].float(), pattern,
                                 backend="reference")


def run_case(setup: Setup, inputs: Inputs, case: Case, refs: dict) -> list[dict]:
    """The records of one case: our kernels, then FlexAttention (or the documents one by one)."""
    base = dict(name=case.name, group=case.group, tokens=case.n, heads=case.heads, dim=setup.dim,
                compare=case.compare, **case.extra)
    kernels = ["triton"] + (["flex"] if case.flex and setup.flex else [])
    try:
        pattern = case.ref() if case.per_document is not None else case.make()
        info = counts(pattern, case.n, setup)
    except Exception as exc:
        reason = f"the pattern cannot be constructed or built: {_short(exc)}"
        return [dict(base, kernel=k, status="skipped", reason=reason) for k in kernels]
    q, k, v, grad = inputs(case.n, case.heads)
    heads = _checked_heads(info["head_slots"])
    records = []
    for kernel in kernels:
        backend = setup.ours if kernel == "triton" else setup.flex_backend
        rec = dict(base, kernel=kernel, backend=backend, **info)
        if case.per_document is not None:
            rec["backend"] = f"{backend} (P.Causal per document)"
        records.append(rec)
        try:
            if case.ref_key not in refs:
                refs[case.ref_key] = _reference(case.ref(), q, k, v, heads)
            if case.per_document is not None:
                _per_document(setup, rec, case.per_document, q, k, v, grad, refs[case.ref_key], heads)
            else:
                def fn(q, k, v, backend=backend):
                    return foveate.attention(q, k, v, pattern, backend=backend)

                with torch.no_grad():
                    ok = _check(rec, fn(q, k, v), refs[case.ref_key], heads)
                if ok:
                    _timed(setup, rec, fn, q, k, v, grad)
            rec.setdefault("status", "ok")
        except Exception as exc:
            rec.update(status="failed", reason=_short(exc))
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
        print(_line(rec), flush=True)
    return records


def _per_document(setup: Setup, rec: dict, lengths: list[int], q, k, v, grad, ref, heads: slice) -> None:
    """Each document through our causal kernel, one call each; the times summed."""
    def fn(q, k, v):
        return foveate.attention(q, k, v, P.Causal(), backend=setup.ours)

    pieces, starts = [], itertools.accumulate([0] + lengths[:-1])
    for start, length in zip(starts, lengths):
        # (each document's own contiguous tensors, leaves of its own graph, as a caller has them)
        docs = [t[:, :, start:start + length].detach().contiguous().requires_grad_(setup.backward) for t in (q, k, v)]
        pieces.append((*docs, grad[:, :, start:start + length].contiguous()))
    with torch.no_grad():
        out = torch.cat([fn(qd, kd, vd)[:, heads] for qd, kd, vd, _ in pieces], dim=2)
    if not _check(rec, out, ref, heads):
        return
    fwd, fwdbwd = 0.0, 0.0
    for qd, kd, vd, gd in pieces:
        one = {}
        _timed(setup, one, fn, qd, kd, vd, gd)
        fwd += one["fwd_ms"]
        fwdbwd += one["fwdbwd_ms"] or 0.0
    rec["fwd_ms"], rec["fwdbwd_ms"] = fwd, (fwdbwd if setup.backward else None)


def run(setup: Setup, groups, lengths_of, heads: int, strided_heads: int) -> tuple[list[dict], str]:
    inputs = Inputs(setup)
    rows = cases(groups, lengths_of, heads, strided_heads, setup.tiny, setup.device)
    records: list[dict] = []
    for n, h in dict.fromkeys((c.n, c.heads) for c in rows):
        records += baselines(setup, inputs, n, h)
    refs: dict = {}
    for i, case in enumerate(rows):
        for rec in run_case(setup, inputs, case, refs):
            if rec.get("status") == "skipped":
                print(_line(rec), flush=True)
            records.append(rec)
        later = {c.ref_key for c in rows[i + 1:]}
        refs = {key: ref for key, ref in refs.items() if key in later}  # (a reference is kept while needed)
    ratios(records)
    cuda = setup.device.type == "cuda"
    dtype = str(setup.dtype).replace("torch.", "")
    header = (f"{run_header(setup.device)}, {dtype}, B=1, D={setup.dim}, heads as listed"
              + ("; triton = foveate's kernels, flex = compiled FlexAttention (foveate's flex backend, the same "
                 "layout and mask_mod), cudnn = cuDNN SDPA" if cuda else
                 f"; SMOKE RUN on a CPU (--tiny): triton rows ran backend {setup.ours!r}, flex and cudnn rows "
                 "backend 'reference'; the times measure nothing")
              + ("; --tiny: tiny shapes" if cuda and setup.tiny else "")
              + "; ideal = cuDNN dense time of the same shape x density (allowed pairs / N^2); "
              "SoL = the same dense time / the simulator's speedup_bound (visited blocks)")
    return records, header


# -- derived columns and outputs -----------------------------------------------------------

def ratios(records: list[dict]) -> None:
    """TFLOP/s, % of ideal, % of speed of light, ``vs`` the compared row and Flex, the target."""
    ok = {(r["name"], r["kernel"], r["tokens"], r["heads"]): r for r in records if r.get("status") == "ok"}
    for r in records:
        if r.get("status") != "ok":
            continue
        shape = (r["tokens"], r["heads"])
        dense = ok.get(("dense", "cudnn", *shape))
        flex = ok.get((r["name"], "flex", *shape)) if r["kernel"] == "triton" and r["group"] != "baselines" else None
        other = ok.get((r["compare"], "triton", *shape)) if r.get("compare") and r["kernel"] == "triton" else None
        if other is not None:
            r["compare_ideal"] = other["density"] / r["density"]
        for kind, factor in KINDS:
            ms = r.get(kind + "_ms")
            if not ms:
                continue
            r[kind + "_tflops"] = 4 * r["density"] * r["tokens"] ** 2 * r["dim"] * r["heads"] * factor / ms / 1e9
            if dense is not None and dense.get(kind + "_ms"):
                r[kind + "_ideal_ms"] = dense[kind + "_ms"] * r["density"]
                r[kind + "_of_ideal"] = r[kind + "_ideal_ms"] / ms
                r[kind + "_sol"] = dense[kind + "_ms"] * r["block_density"] / ms
            if flex is not None and flex.get(kind + "_ms"):
                r[kind + "_vs_flex"] = flex[kind + "_ms"] / ms
            if other is not None and other.get(kind + "_ms"):
                r[kind + "_vs_compare"] = other[kind + "_ms"] / ms
            if r["group"] == "streaming" and r["kernel"] == "triton" and r.get(kind + "_of_ideal") is not None:
                met = r[kind + "_of_ideal"] >= TARGET_OF_IDEAL and r.get(kind + "_vs_flex", 1.0) >= 1.0
                r[kind + "_target"] = "met" if met else "missed"


def _line(r: dict) -> str:
    text = f"{r['group']:10s} N={r['tokens']:<7d} H={r['heads']:<3d} {r['name']:44s} {r['kernel']:6s}"
    if r.get("status") not in (None, "ok"):
        return text + f" {r['status'].upper()}: {r.get('reason', '')}"
    for kind, _ in KINDS:
        if r.get(kind + "_ms") is not None:
            text += f" {kind} {r[kind + '_ms']:.3f} ms"
    return text


def markdown(records: list[dict], header: str) -> str:
    def cell(r, key, fmt):
        return fmt.format(r[key]) if r.get(key) is not None else ""

    lines = [header, "",
             "| group | pattern | kernel | N | H | density | blocks (partial) | compared with "
             "| fwd ms | fwd TFLOP/s | fwd % ideal | fwd % SoL | fwd vs compared (ideal) | fwd vs flex "
             "| fwd+bwd ms | fwd+bwd TFLOP/s | fwd+bwd % ideal | fwd+bwd % SoL | fwd+bwd vs compared (ideal) "
             "| fwd+bwd vs flex | target (fwd, fwd+bwd) |",
             "|---|---|---|---:|---:|---:|---:|---|" + "---:|" * 12 + "---|"]
    for r in records:
        first = [r["group"], r["name"], r["kernel"], str(r["tokens"]), str(r["heads"])]
        if r.get("status") != "ok":
            lines.append("| " + " | ".join(first) + f" | {r.get('status', '?').upper()}: {r.get('reason', '')} "
                         + "|" * 16)
            continue
        cells = first + [f"{r['density']:.4f}", f"{r['visited']} ({r['partial']})", r.get("compare") or ""]
        for kind, _ in KINDS:
            versus = cell(r, kind + "_vs_compare", "{:.2f}x")
            if versus and r.get("compare_ideal") is not None:
                versus += f" ({r['compare_ideal']:.2f}x)"
            cells += [cell(r, kind + "_ms", "{:.3f}"), cell(r, kind + "_tflops", "{:.0f}"),
                      cell(r, kind + "_of_ideal", "{:.0%}"), cell(r, kind + "_sol", "{:.0%}"), versus,
                      cell(r, kind + "_vs_flex", "{:.2f}x")]
        cells.append(", ".join(r[kind + "_target"] for kind, _ in KINDS if r.get(kind + "_target")))
        lines.append("| " + " | ".join(cells) + " |")
    summary = [_summary(r) for r in records if r.get("status") == "ok" and r["kernel"] == "triton"
               and r["group"] != "baselines"]
    if summary:
        lines += ["", "Ours (triton rows):", ""] + [f"- {s}" for s in summary]
    return "\n".join(lines) + "\n"


def _summary(r: dict) -> str:
    parts = []
    for kind, label in (("fwd", "forward"), ("fwdbwd", "forward+backward")):
        if r.get(kind + "_ms") is None:
            continue
        bits = [f"{r[kind + '_ms']:.3f} ms"]
        if r.get(kind + "_of_ideal") is not None:
            bits.append(f"{r[kind + '_of_ideal']:.0%} of ideal")
        if r.get(kind + "_vs_flex") is not None:
            bits.append(f"{r[kind + '_vs_flex']:.2f}x Flex")
        if r.get(kind + "_vs_compare") is not None:
            bits.append(f"{r[kind + '_vs_compare']:.2f}x {r['compare']} (pairs allow {r['compare_ideal']:.2f}x)")
        if r.get(kind + "_target"):
            bits.append(f"target {r[kind + '_target']}")
        parts.append(f"{label} " + ", ".join(bits))
    return f"{r['group']} N={r['tokens']} H={r['heads']} {r['name']}: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, help="heads of the documents and streaming groups (16; --tiny 2)")
    parser.add_argument("--head-dim", type=int, help="head dimension (128; --tiny 32)")
    parser.add_argument("--strided-heads", type=int, help="heads of the strided group (32; --tiny 4)")
    parser.add_argument("--lengths", type=int, nargs="+",
                        help="sequence lengths of every group (default: documents and strided 32768, streaming "
                             "32768 131072; --tiny: divided by 128)")
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: tiny shapes; without CUDA in float32 on the torch and reference backends")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("benchmarks/sequence_patterns.py needs a CUDA GPU (--tiny runs a CPU smoke test)")
    tiny = args.tiny
    heads = args.heads or (2 if tiny else 16)
    strided_heads = args.strided_heads or (4 if tiny else 32)
    dim = args.head_dim or (32 if tiny else 128)
    if args.lengths:
        lengths_of = {g: tuple(args.lengths) for g in GROUPS}
    else:
        lengths_of = {g: tuple(n // TINY for n in ns) if tiny else ns for g, ns in LENGTHS.items()}
    flex = not args.no_flex and (not cuda or "flex" in foveate.backends.available())
    setup = Setup(device=torch.device("cuda" if cuda else "cpu"), dtype=torch.bfloat16 if cuda else torch.float32,
                  dim=dim, backward=not args.no_backward, flex=flex, tiny=tiny)
    records, header = run(setup, args.groups, lengths_of, heads, strided_heads)
    text = markdown(records, header)
    print(text)
    write_outputs(records, text, args.json, args.markdown)


if __name__ == "__main__":
    main()
