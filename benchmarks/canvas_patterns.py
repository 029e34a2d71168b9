"""Canvas patterns on the fused kernels (GPU, issue #28): Swin's 3-D shifted windows, Sliding
Tile Attention, Radial attention, CLEAR's circular windows and HaloNet's halos, against
FlexAttention and the ideal, with cuDNN dense in the same run, and each layout's build time.

Every row is timed forward and forward+backward (bf16, B=1, H=16, D=128 by default), on our
kernels (``triton``) and on FlexAttention (the ``flex`` backend, the same pattern), both with
``tile="auto"`` (the tile the simulator picks, as ``foveate.attention`` does by default). Groups:

* **baselines** (at every token count a group uses): cuDNN SDPA dense
  (``sdpa_kernel(SDPBackend.CUDNN_ATTENTION)``);
* **swin** (16x64x64 = 65536 tokens): ``P.Windows((16, 64, 64), (8, 8, 8), shift=(4, 4, 4))``
  (Swin's shifted windows, the region mask), the same on tokens rolled as Swin's code rolls
  them (``P.Windows.rolled``) and the unshifted windows; target: at least 0.8 of
  the ideal (the ``target`` column, triton rows);
* **sta** (HunyuanVideo's latent 30x48x80 = 115200 tokens): Sliding Tile Attention
  ``P.TileNeighborhood((30, 48, 80), tile=(6, 8, 8), window=(3, 3, 3))``, and the same with
  256 text tokens, ``P.WithText(..., 256)``; target: at least 0.8 of the ideal;
* **radial** (Radial attention, ``P.Radial(frames, tokens_per_frame, model=...)``): Wan 2.1
  720p (21 frames of 3600 tokens), HunyuanVideo 720p (30 frames of 3600 tokens) and
  HunyuanVideo with 256 text tokens (``P.WithText``), each also with ``block_rule=True``; their
  density and speedup over cuDNN dense are the point (the ``vs dense`` columns). Where
  ``P.Radial`` does not exist (a checkout before it) these rows are skipped with the reason;
* **circular** (CLEAR's circular windows): ``P.Circular((64, 64), 16)`` (a 1024px FLUX
  latent) and ``P.Circular((128, 128), 16)`` (2048px);
* **halo** (HaloNet): ``P.Halo((64, 64), block=8, halo=3)``.

Columns: ``tile``: the tile order the kernels ran (``raster``: none); density (allowed pairs /
N^2); the visited blocks (partial ones in brackets, 128x128, on the layout the kernels run);
``layout ms``: the build of that layout on the GPU (``pattern.build(..., device="cuda")``,
fresh: not through the layout cache; median of ``--layout-reps`` runs after a first one, each
synchronised; the issue's target is under 50 ms, ``*`` marks a build over it; the first run is
in the JSON); time; effective TFLOP/s (allowed pairs only: forward ``4 * pairs * D`` per head,
forward+backward 3.5 times that); ``% ideal``: the **ideal** time, cuDNN's dense time of the
same shape times the density, over the row's time; ``% SoL``: the simulator's speed of light
(``foveate.simulate``'s ``speedup_bound``: dense blocks over visited blocks, in the same tile
order) applied to the same cuDNN dense time, over the row's time; ``SoL/ideal``: the most of
the ideal that the layout allows (density x ``speedup_bound``; below the target, the target
cannot be met in this token order); ``vs dense``: cuDNN dense's time over ours (the speedup);
``vs flex``: Flex's time over ours. Every pattern's output is checked against the float32
reference (one head) before it is timed.

A case whose pattern cannot be constructed or built is skipped with the reason (a ``skipped``
record in the JSON); a row whose backend fails (out of memory included) is recorded as
``failed`` and the run goes on.

``--tiny`` is a smoke run of the script's logic (tiny shapes: every canvas, window, tile and
text scaled down): on a machine without CUDA in float32, with the ``torch`` backend in place of
``triton`` and the ``reference`` backend in place of FlexAttention and cuDNN (its times
measure nothing).

Usage: ``python benchmarks/canvas_patterns.py [--heads 16] [--head-dim 128] [--no-backward]
[--no-flex] [--groups swin sta radial circular halo] [--layout-reps 5] [--json FILE]
[--markdown FILE] [--tiny]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field
from functools import partial

import torch

import foveate
from foveate import patterns as P
from foveate.backends import cached_layout
from foveate.benchmark.timing import eager_ms
from foveate.patterns.tiled import Tiled
from foveate.simulator import choose_tile

from common import bench_ms, cudnn_sdpa, fwd_bwd, run_header, write_outputs

GROUPS = ("swin", "sta", "radial", "circular", "halo")
#: Max abs error against the float32 reference on the checked head (as sequence_patterns.py).
ERROR_LIMIT = 5e-2
#: The swin and sta target: our kernels at least this fraction of the ideal.
TARGET_OF_IDEAL = 0.8
TARGET_GROUPS = ("swin", "sta")
#: The issue's target for a layout build on the GPU.
LAYOUT_TARGET_MS = 50.0
#: Layout blocks (the triton and flex backends' block size).
BLOCK = 128
KINDS = (("fwd", 1.0), ("fwdbwd", 3.5))  # (timing, FLOP factor over the forward)
RADIAL_NOTE = ("Radial attention's paper (Li et al., 2025) reports 1.9-3.7x end-to-end speedups of video "
               "generation; the radial rows here time the attention alone (vs dense: over cuDNN dense of the "
               "same shape).")


# -- patterns ------------------------------------------------------------------------------

def radial(frames: int, tokens_per_frame: int, model: str, block_rule: bool = False, text: int = 0):
    """``P.Radial`` (being written: a clear error while it is missing), with ``text`` tokens."""
    if not hasattr(P, "Radial"):
        raise NotImplementedError("P.Radial does not exist yet in foveate.patterns")
    pattern = P.Radial(frames, tokens_per_frame, model=model, block_rule=block_rule)
    return P.WithText(pattern, text) if text else pattern


@dataclass
class Case:
    """One row to time (on our kernels and, with ``flex``, on FlexAttention)."""

    name: str
    group: str
    n: int  # tokens (queries = keys: every pattern here is self-attention)
    heads: int
    make: object  # () -> pattern (may raise: the case is skipped); bound to its values (no late binding)
    flex: bool = True
    extra: dict = field(default_factory=dict)


def _dims(shape) -> str:
    return "x".join(str(s) for s in shape)


def cases(groups, heads: int, tiny: bool) -> list[Case]:
    """The rows of the selected groups (tiny: every shape scaled down, the patterns still valid)."""
    rows: list[Case] = []
    if "swin" in groups:
        canvas, window, shift = ((4, 8, 16), (2, 4, 8), (1, 2, 4)) if tiny else ((16, 64, 64), (8, 8, 8), (4, 4, 4))
        n = math.prod(canvas)
        rows += [
            Case(f"Swin windows {_dims(window)}, shift {_dims(shift)} on {_dims(canvas)}", "swin", n, heads,
                 partial(P.Windows, canvas, window, shift=shift)),
            Case(f"Swin windows {_dims(window)}, shift {_dims(shift)} on {_dims(canvas)}, rolled tokens", "swin", n,
                 heads, partial(P.Windows.rolled, canvas, window, shift)),
            Case(f"Swin windows {_dims(window)} on {_dims(canvas)}", "swin", n, heads,
                 partial(P.Windows, canvas, window)),
        ]
    if "sta" in groups:
        canvas, tile, window, text = ((6, 8, 16), (2, 4, 4), (3, 1, 3), 16) if tiny else (
            (30, 48, 80), (6, 8, 8), (3, 3, 3), 256)
        n = math.prod(canvas)
        sta = partial(P.TileNeighborhood, canvas, tile=tile, window=window)
        name = f"STA tile {_dims(tile)}, window {_dims(window)} on {_dims(canvas)}"
        rows += [
            Case(name, "sta", n, heads, sta),
            Case(f"{name} + {text} text", "sta", n + text, heads,
                 lambda sta=sta, text=text: P.WithText(sta(), text)),
        ]
    if "radial" in groups:
        tokens, text = (48, 16) if tiny else (3600, 256)
        wan, hunyuan = (4, 6) if tiny else (21, 30)
        for block_rule in (False, True):
            rule = ", block rule" if block_rule else ""
            rows += [
                Case(f"Radial Wan 2.1 720p ({wan}x{tokens}){rule}", "radial", wan * tokens, heads,
                     partial(radial, wan, tokens, "wan", block_rule)),
                Case(f"Radial HunyuanVideo 720p ({hunyuan}x{tokens}){rule}", "radial", hunyuan * tokens, heads,
                     partial(radial, hunyuan, tokens, "hunyuan", block_rule)),
                Case(f"Radial HunyuanVideo 720p ({hunyuan}x{tokens}) + {text} text{rule}", "radial",
                     hunyuan * tokens + text, heads, partial(radial, hunyuan, tokens, "hunyuan", block_rule, text)),
            ]
    if "circular" in groups:
        for canvas, radius in (((16, 16), 4), ((16, 32), 4)) if tiny else (((64, 64), 16), ((128, 128), 16)):
            rows.append(Case(f"Circular radius {radius} on {_dims(canvas)}", "circular", math.prod(canvas), heads,
                             partial(P.Circular, canvas, radius)))
    if "halo" in groups:
        canvas, block, halo = ((16, 16), 4, 1) if tiny else ((64, 64), 8, 3)
        rows.append(Case(f"Halo block {block}, halo {halo} on {_dims(canvas)}", "halo", math.prod(canvas), heads,
                         partial(P.Halo, canvas, block=block, halo=halo)))
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
    layout_reps: int = 5

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def ours(self) -> str:
        """Our kernels' backend: ``triton``, or ``torch`` in a CPU smoke run."""
        return "triton" if self.cuda else "torch"

    @property
    def flex_backend(self) -> str:
        return "flex" if self.cuda else "reference"

    @property
    def dense_backend(self) -> str:
        return "cudnn" if self.cuda else "reference"

    def time(self, fn) -> float:
        if self.cuda:
            return bench_ms(fn, warmup=25, rep=200)
        return eager_ms(fn, self.device, reps=1, rep_ms=0)  # (a smoke run: one warm call)

    def dense(self):
        """The dense baseline: cuDNN SDPA (the reference backend on a CPU)."""
        if self.cuda:
            return lambda q, k, v: cudnn_sdpa(q, k, v)
        return lambda q, k, v: foveate.attention(q, k, v, P.Dense(), backend="reference")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def free(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()


class Inputs:
    """q, k, v and the output gradient of one (tokens, heads) shape, made once (seed 0)."""

    def __init__(self, setup: Setup, n: int, heads: int):
        s = setup
        gen = torch.Generator(s.device).manual_seed(0)
        q, k, v, grad = (torch.randn(1, heads, n, s.dim, generator=gen, device=s.device, dtype=s.dtype)
                         for _ in range(4))
        self.tensors = (*(t.requires_grad_(s.backward) for t in (q, k, v)), grad)


def layout_ms(pattern, n: int, blocks: tuple[int, int], tile, setup: Setup) -> tuple[float, float]:
    """``(first, median of the next layout_reps)`` milliseconds of a fresh ``pattern.build`` (not
    through the layout cache) on the run's device, synchronised."""
    times = []
    for _ in range(1 + max(1, setup.layout_reps)):
        setup.sync()
        start = time.perf_counter()
        pattern.build(n, n, block_q=blocks[0], block_kv=blocks[1], device=setup.device, tile=tile)
        setup.sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times[0], statistics.median(times[1:])


def counts(pattern, n: int, setup: Setup, timed: bool = True) -> dict:
    """The density and the simulator's counts of ``pattern`` at ``n`` tokens, on the layout the
    kernels run: 128x128 blocks (the pattern's own if it fixes them) in the order of the tile
    that ``tile="auto"`` picks. With ``timed``, the layout's build time first. In a smoke run
    also ``foveate.simulate``'s bound and pairs, which must be the same."""
    blocks = getattr(pattern, "fixed_blocks", None) or (BLOCK, BLOCK)
    tile = choose_tile(pattern, block_q=blocks[0], block_kv=blocks[1])
    out = {}
    if timed:
        out["layout_first_ms"], out["layout_ms"] = layout_ms(pattern, n, blocks, tile, setup)
        out["layout_target"] = "met" if out["layout_ms"] < LAYOUT_TARGET_MS else "missed"
    layout = cached_layout(pattern, n, n, block_q=blocks[0], block_kv=blocks[1], device=setup.device, tile=tile)
    raster = layout if tile is None else cached_layout(pattern, n, n, block_q=blocks[0], block_kv=blocks[1],
                                                       device=setup.device)
    slots = math.prod(layout.batch_heads)
    allowed = raster.allowed_pairs()
    total = -(-n // blocks[0]) * -(-n // blocks[1]) * slots  # (the dense kernel's blocks, the caller's lengths)
    visited = layout.num_visited()
    runs = Tiled(pattern, tile) if tile is not None else pattern
    q_len, kv_len = runs.default_lengths() if tile is not None else (n, n)
    out.update(pattern=repr(pattern), tile="x".join(map(str, tile)) if tile else "raster",
               density=allowed / (slots * n * n), visited=visited, partial=int(layout.kv_num_blocks.sum()),
               head_slots=layout.batch_heads[1], blocks=f"{blocks[0]}x{blocks[1]}",
               mask="kernel mask" if runs.kernel_mask(q_len, kv_len) is not None else "bitmask")
    out["sol_bound"] = total / visited if visited else float("inf")
    out["sol_of_ideal"] = out["sol_bound"] * out["density"]
    if setup.tiny:
        sim = foveate.simulate(pattern, q_len=n, kv_len=n, block_q=blocks[0], block_kv=blocks[1], tile=tile)
        out["simulate_bound"] = sim.speedup_bound
        if abs(sim.speedup_bound - out["sol_bound"]) > 1e-9 * out["sol_bound"] or sim.pairs_useful != allowed:
            raise AssertionError(f"{pattern!r}: foveate.simulate's bound {sim.speedup_bound} (pairs "
                                 f"{sim.pairs_useful}) differs from the layout's {out['sol_bound']} ({allowed})")
    return out


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _timed(setup: Setup, rec: dict, fn, q, k, v, grad) -> None:
    with torch.no_grad():
        rec["fwd_ms"] = setup.time(lambda: fn(q, k, v))
    rec["fwdbwd_ms"] = setup.time(fwd_bwd(fn, q, k, v, grad)) if setup.backward else None


def _check(rec: dict, out: torch.Tensor, ref: torch.Tensor) -> bool:
    rec["max_err"] = (out[:, :1].float() - ref).abs().max().item()
    if not rec["max_err"] < ERROR_LIMIT:
        rec["status"] = "WRONG"
        rec["reason"] = f"max error {rec['max_err']:.3g} against the float32 reference"
        return False
    return True


def _reference(pattern, q, k, v) -> torch.Tensor:
    """The float32 reference on the first head."""
    with torch.no_grad():
        return foveate.attention(q[:, :1].float(), k[:, :1].float(), v[:, :1].float(), pattern,
                                 backend="reference")


def _measure(setup: Setup, rec: dict, fn, pattern, tensors, refs: dict) -> None:
    """Check ``fn`` against the reference of ``pattern`` (made once per pattern), then time it;
    a failure (out of memory included) is the record's, not the run's."""
    q, k, v, grad = tensors
    try:
        if pattern not in refs:
            refs[pattern] = _reference(pattern, q, k, v)
        with torch.no_grad():
            ok = _check(rec, fn(q, k, v), refs[pattern])
        if ok:
            _timed(setup, rec, fn, q, k, v, grad)
        rec.setdefault("status", "ok")
    except Exception as exc:  # (torch.OutOfMemoryError included)
        rec.update(status="failed", reason=_short(exc))
        setup.free()
    print(_line(rec), flush=True)


def baseline(setup: Setup, tensors, n: int, heads: int, refs: dict) -> dict:
    """cuDNN dense at ``n`` tokens and ``heads`` heads."""
    rec = dict(name="dense", group="baselines", kernel="cudnn", backend=setup.dense_backend, tokens=n,
               heads=heads, dim=setup.dim)
    try:
        rec.update(counts(P.Dense(), n, setup, timed=False))
    except Exception as exc:
        rec.update(status="failed", reason=_short(exc))
        print(_line(rec), flush=True)
        return rec
    _measure(setup, rec, setup.dense(), P.Dense(), tensors, refs)
    return rec


def prepare(setup: Setup, case: Case) -> tuple[object, dict | None, list[dict]]:
    """``(pattern, its counts, records)``: the records are the case's skipped rows when its
    pattern cannot be constructed or built (then the pattern and counts are None)."""
    base = dict(name=case.name, group=case.group, tokens=case.n, heads=case.heads, dim=setup.dim, **case.extra)
    try:
        pattern = case.make()
        return pattern, counts(pattern, case.n, setup), []
    except Exception as exc:
        reason = f"the pattern cannot be constructed or built: {_short(exc)}"
        kernels = ["triton"] + (["flex"] if case.flex and setup.flex else [])
        setup.free()
        return None, None, [dict(base, kernel=k, status="skipped", reason=reason) for k in kernels]


def run_case(setup: Setup, tensors, case: Case, pattern, info: dict, refs: dict) -> list[dict]:
    """The records of one case: our kernels, then FlexAttention."""
    base = dict(name=case.name, group=case.group, tokens=case.n, heads=case.heads, dim=setup.dim, **case.extra)
    records = []
    for kernel in ["triton"] + (["flex"] if case.flex and setup.flex else []):
        backend = setup.ours if kernel == "triton" else setup.flex_backend
        rec = dict(base, kernel=kernel, backend=backend, **info)
        records.append(rec)

        def fn(q, k, v, backend=backend):
            return foveate.attention(q, k, v, pattern, backend=backend)

        _measure(setup, rec, fn, pattern, tensors, refs)
    return records


def run(setup: Setup, groups, heads: int) -> tuple[list[dict], str]:
    """Shape by shape (inputs freed after each): the cases' patterns and layouts, cuDNN dense
    (where some case of the shape could be built), then the cases."""
    rows = cases(groups, heads, setup.tiny)
    records: list[dict] = []
    for n, h in dict.fromkeys((c.n, c.heads) for c in rows):
        prepared = []
        for case in (c for c in rows if (c.n, c.heads) == (n, h)):
            pattern, info, skipped = prepare(setup, case)
            for rec in skipped:
                print(_line(rec), flush=True)
            records += skipped
            if pattern is not None:
                prepared.append((case, pattern, info))
        if not prepared:
            continue
        refs: dict = {}
        try:
            tensors = Inputs(setup, n, h).tensors
        except Exception as exc:  # (out of memory)
            setup.free()
            for case, _, info in prepared:
                records.append(dict(name=case.name, group=case.group, tokens=n, heads=h, dim=setup.dim,
                                    kernel="triton", status="failed", reason=f"inputs: {_short(exc)}", **info))
                print(_line(records[-1]), flush=True)
            continue
        records.append(baseline(setup, tensors, n, h, refs))
        for case, pattern, info in prepared:
            records += run_case(setup, tensors, case, pattern, info, refs)
        del tensors, refs
        setup.free()
    ratios(records)
    dtype = str(setup.dtype).replace("torch.", "")
    header = (f"{run_header(setup.device)}, {dtype}, B=1, D={setup.dim}, heads as listed"
              + ("; triton = foveate's kernels, flex = compiled FlexAttention (foveate's flex backend, the same "
                 "layout and mask_mod), both with tile='auto'; cudnn = cuDNN SDPA" if setup.cuda else
                 f"; SMOKE RUN on a CPU (--tiny): triton rows ran backend {setup.ours!r}, flex and cudnn rows "
                 "backend 'reference'; the times measure nothing")
              + ("; --tiny: tiny shapes" if setup.cuda and setup.tiny else "")
              + "; ideal = cuDNN dense time of the same shape x density (allowed pairs / N^2); "
              "SoL = the same dense time / the simulator's speedup_bound (visited blocks, in the tile order run); "
              f"layout ms = a fresh build on the {setup.device.type} (median of {setup.layout_reps} after a first)")
    return records, header


# -- derived columns and outputs -----------------------------------------------------------

def ratios(records: list[dict]) -> None:
    """TFLOP/s, % of ideal, % of speed of light, ``vs`` cuDNN dense and Flex, the target."""
    ok = {(r["name"], r["kernel"], r["tokens"], r["heads"]): r for r in records if r.get("status") == "ok"}
    for r in records:
        if r.get("status") != "ok":
            continue
        shape = (r["tokens"], r["heads"])
        dense = ok.get(("dense", "cudnn", *shape))
        flex = ok.get((r["name"], "flex", *shape)) if r["kernel"] == "triton" and r["group"] != "baselines" else None
        for kind, factor in KINDS:
            ms = r.get(kind + "_ms")
            if not ms:
                continue
            r[kind + "_tflops"] = 4 * r["density"] * r["tokens"] ** 2 * r["dim"] * r["heads"] * factor / ms / 1e9
            if dense is not None and dense.get(kind + "_ms"):
                r[kind + "_ideal_ms"] = dense[kind + "_ms"] * r["density"]
                r[kind + "_of_ideal"] = r[kind + "_ideal_ms"] / ms
                r[kind + "_sol"] = dense[kind + "_ms"] / r["sol_bound"] / ms
                r[kind + "_vs_dense"] = dense[kind + "_ms"] / ms
            if flex is not None and flex.get(kind + "_ms"):
                r[kind + "_vs_flex"] = flex[kind + "_ms"] / ms
            if r["group"] in TARGET_GROUPS and r["kernel"] == "triton" and r.get(kind + "_of_ideal") is not None:
                r[kind + "_target"] = "met" if r[kind + "_of_ideal"] >= TARGET_OF_IDEAL else "missed"


def _line(r: dict) -> str:
    text = f"{r['group']:9s} N={r['tokens']:<7d} H={r['heads']:<3d} {r['name']:58s} {r['kernel']:6s}"
    if r.get("status") not in (None, "ok"):
        return text + f" {r['status'].upper()}: {r.get('reason', '')}"
    if r.get("layout_ms") is not None:
        text += f" layout {r['layout_ms']:.1f} ms"
    for kind, _ in KINDS:
        if r.get(kind + "_ms") is not None:
            text += f" {kind} {r[kind + '_ms']:.3f} ms"
    return text


def markdown(records: list[dict], header: str) -> str:
    def cell(r, key, fmt):
        return fmt.format(r[key]) if r.get(key) is not None else ""

    columns = 23
    lines = [header, "",
             "| group | pattern | kernel | N | H | tile | density | blocks (partial) | SoL/ideal | layout ms "
             "| fwd ms | fwd TFLOP/s | fwd % ideal | fwd % SoL | fwd vs dense | fwd vs flex "
             "| fwd+bwd ms | fwd+bwd TFLOP/s | fwd+bwd % ideal | fwd+bwd % SoL | fwd+bwd vs dense | fwd+bwd vs flex "
             "| target (fwd, fwd+bwd) |",
             "|---|---|---|---:|---:|---|" + "---:|" * 16 + "---|"]
    for r in records:
        first = [r["group"], r["name"], r["kernel"], str(r["tokens"]), str(r["heads"])]
        if r.get("status") != "ok":
            lines.append("| " + " | ".join(first) + f" | {r.get('status', '?').upper()}: {r.get('reason', '')} "
                         + "|" * (columns - len(first)))
            continue
        layout = cell(r, "layout_ms", "{:.1f}") + ("*" if r.get("layout_target") == "missed" else "")
        cells = first + [r["tile"], f"{r['density']:.4f}", f"{r['visited']} ({r['partial']})",
                         f"{r['sol_of_ideal']:.0%}", layout]
        for kind, _ in KINDS:
            cells += [cell(r, kind + "_ms", "{:.3f}"), cell(r, kind + "_tflops", "{:.0f}"),
                      cell(r, kind + "_of_ideal", "{:.0%}"), cell(r, kind + "_sol", "{:.0%}"),
                      cell(r, kind + "_vs_dense", "{:.2f}x"), cell(r, kind + "_vs_flex", "{:.2f}x")]
        cells.append(", ".join(r[kind + "_target"] for kind, _ in KINDS if r.get(kind + "_target")))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Target (swin, sta; triton rows): at least {TARGET_OF_IDEAL:.0%} of the ideal. Layout builds: the "
             f"issue's target is under {LAYOUT_TARGET_MS:.0f} ms (* marks a build over it)."]
    if any(r["group"] == "radial" for r in records):
        notes.append(RADIAL_NOTE)
    lines += [""] + notes
    summary = [_summary(r) for r in records if r.get("status") == "ok" and r["kernel"] == "triton"
               and r["group"] != "baselines"]
    if summary:
        lines += ["", "Ours (triton rows):", ""] + [f"- {s}" for s in summary]
    return "\n".join(lines) + "\n"


def _summary(r: dict) -> str:
    parts = [f"density {r['density']:.4f}, tile {r['tile']}, layout {r['layout_ms']:.1f} ms"]
    for kind, label in (("fwd", "forward"), ("fwdbwd", "forward+backward")):
        if r.get(kind + "_ms") is None:
            continue
        bits = [f"{r[kind + '_ms']:.3f} ms"]
        if r.get(kind + "_vs_dense") is not None:
            bits.append(f"{r[kind + '_vs_dense']:.2f}x cuDNN dense (pairs allow {1 / r['density']:.2f}x)")
        if r.get(kind + "_of_ideal") is not None:
            bits.append(f"{r[kind + '_of_ideal']:.0%} of ideal (the layout allows {r['sol_of_ideal']:.0%})")
        if r.get(kind + "_vs_flex") is not None:
            bits.append(f"{r[kind + '_vs_flex']:.2f}x Flex")
        if r.get(kind + "_target"):
            bits.append(f"target {r[kind + '_target']}")
        parts.append(f"{label} " + ", ".join(bits))
    return f"{r['group']} N={r['tokens']} H={r['heads']} {r['name']}: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, help="heads (16; --tiny 2)")
    parser.add_argument("--head-dim", type=int, help="head dimension (128; --tiny 32)")
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    parser.add_argument("--layout-reps", type=int, default=5,
                        help="timed layout builds after the first (their median is the layout ms)")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: tiny shapes; without CUDA in float32 on the torch and reference backends")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("benchmarks/canvas_patterns.py needs a CUDA GPU (--tiny runs a CPU smoke test)")
    tiny = args.tiny
    heads = args.heads or (2 if tiny else 16)
    dim = args.head_dim or (32 if tiny else 128)
    flex = not args.no_flex and (not cuda or "flex" in foveate.backends.available())
    setup = Setup(device=torch.device("cuda" if cuda else "cpu"), dtype=torch.bfloat16 if cuda else torch.float32,
                  dim=dim, backward=not args.no_backward, flex=flex, tiny=tiny,
                  layout_reps=(1 if tiny and not cuda else args.layout_reps))
    records, header = run(setup, args.groups, heads)
    text = markdown(records, header)
    print(text)
    write_outputs(records, text, args.json, args.markdown)


if __name__ == "__main__":
    main()
