"""Run benchmark cases: check each backend against the reference, then time it next to the
dense baseline in the same process.

Conventions (docs/design.md, "Benchmarks"): effective TFLOP/s count only allowed pairs, forward
``4 * pairs * D`` and forward+backward 3.5 times that; the dense baseline of a causal case
is causal SDPA, of any other case dense SDPA on the same shape (cuDNN on CUDA where it
takes the problem); times are warm medians, every run of a case timed the same way
(:mod:`.timing`: eagerly; for cases whose calls may be bound by the host, also by their GPU
work alone, the lower of the two counting). The speed of light of a case is the speedup
over that same baseline of a kernel that runs the pattern's visited blocks at the dense
rate (:func:`speed_of_light`); ``sol_fraction`` is the measured speedup over it. A backend
whose result is wrong is reported as a failure, never with a time.
"""

from __future__ import annotations

import datetime
import platform
from typing import Callable, Iterator

import torch

import foveate

from ..simulator import SimulationRecord, choose_tile, simulate
from .suites import Case, dense_pairs
from .timing import TIMINGS, eager_ms, gpu_ms

#: Relative L2 error allowed against the float32 reference (out; gradients get twice this).
TOLERANCE = {torch.float32: 2e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}
BWD_FLOP_FACTOR = 3.5  # forward+backward = 3.5 x forward (FlashAttention's convention)


def environment(device: torch.device) -> dict:
    """Device, versions and date, written into every record."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover - triton is a dependency on Linux
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    return dict(
        device=name, torch=torch.__version__, triton=triton_version, foveate=foveate.__version__,
        python=platform.python_version(), date=datetime.date.today().isoformat(),
    )


def causal_baseline(case: Case) -> bool:
    """Whether the dense baseline of ``case`` is causal SDPA (a causal case of equal lengths),
    not dense SDPA."""
    return case.is_causal and case.q_len == case.kv_len


def speed_of_light(case: Case, sim: SimulationRecord) -> tuple[float, int]:
    """``(bound, blocks_baseline)``: the speed-of-light speedup of ``case`` over its dense
    baseline, the blocks that baseline's kernel visits over the blocks that the pattern's
    layout visits (``sim``, same block sizes, every slot counted), and that block count.

    The baseline is the one the measured speedups are over: for a causal case causal SDPA,
    which visits only the causal blocks (the bound is then 1 for the causal pattern itself),
    else dense SDPA, all ``sim.blocks_total`` blocks (the simulator's ``speedup_bound``)."""
    if causal_baseline(case):
        causal = simulate(foveate.patterns.Causal(), q_len=case.q_len, kv_len=case.kv_len,
                          block_q=sim.block_q, block_kv=sim.block_kv)
        base = causal.blocks_visited * sim.heads
    else:
        base = sim.blocks_total
    return (base / sim.blocks_visited if sim.blocks_visited else float("inf")), base


def sdpa_baseline(case: Case, *, cudnn: bool) -> tuple[str, Callable]:
    """The dense baseline of ``case``: ``(name, fn(q, k, v))``; with ``cudnn``, SDPA is held
    to its cuDNN kernel."""
    causal = causal_baseline(case)
    gqa = case.heads != case.heads_kv
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def plain(q, k, v):
        return sdpa(q, k, v, is_causal=causal, enable_gqa=gqa)

    kind = "causal" if causal else "dense"
    if not cudnn:
        return f"sdpa {kind}", plain
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def cudnn_only(q, k, v):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return plain(q, k, v)

    return f"cudnn {kind}", cudnn_only


def _rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.float(), ref.float()
    return ((got - ref).norm() / ref.norm().clamp_min(1e-12)).item()


class CaseRunner:
    """Inputs, reference and baseline of one case, shared by every backend."""

    def __init__(self, case: Case, *, dtype: torch.dtype, device: torch.device, backward: bool,
                 reps: int, rep_ms: int, timing: str | None = None):
        self.case, self.dtype, self.device, self.backward = case, dtype, device, backward
        self.reps, self.rep_ms = reps, rep_ms
        timing = timing or case.timing
        if timing not in TIMINGS:
            raise ValueError(f"timing={timing!r}: expected one of {TIMINGS}")
        # GPU time needs CUDA graphs; elsewhere every call is timed eagerly
        self.timing = timing if device.type == "cuda" else "eager"
        gen = torch.Generator(device=device).manual_seed(0)
        shape = lambda h, n: (case.batch, h, n, case.head_dim)  # noqa: E731
        self.q = torch.randn(shape(case.heads, case.q_len), generator=gen, device=device, dtype=dtype)
        self.k = torch.randn(shape(case.heads_kv, case.kv_len), generator=gen, device=device, dtype=dtype)
        self.v = torch.randn(shape(case.heads_kv, case.kv_len), generator=gen, device=device, dtype=dtype)
        self.grad = torch.randn(shape(case.heads, case.q_len), generator=gen, device=device, dtype=dtype)
        pattern = case.pattern or foveate.patterns.Dense()
        self.tile = choose_tile(pattern) if pattern.canvas is not None and len(pattern.canvas) > 1 else None
        self.sim = simulate(pattern, q_len=case.q_len, kv_len=case.kv_len, tile=self.tile)
        self.speed_of_light, self.blocks_baseline = speed_of_light(case, self.sim)
        self._reference = None

    # -- the truth: float32 reference on the first (batch, kv head group) ---------------
    def _slices(self):
        group = self.case.heads // self.case.heads_kv
        return slice(0, 1), slice(0, group), slice(0, 1)

    def reference(self):
        if self._reference is None:
            b, hq, hk = self._slices()
            q, k, v = (t[b, h].float().detach().requires_grad_(self.backward)
                       for t, h in ((self.q, hq), (self.k, hk), (self.v, hk)))
            out = foveate.attention(q, k, v, self.case.pattern, backend="reference")
            grads = (torch.autograd.grad(out, (q, k, v), self.grad[b, hq].float())
                     if self.backward else None)
            self._reference = (out.detach(), grads)
        return self._reference

    def check(self, out: torch.Tensor, grads=None) -> float:
        """Largest relative error of ``out`` (and grads) on the checked slice vs the reference."""
        b, hq, hk = self._slices()
        ref_out, ref_grads = self.reference()
        errors = [_rel_error(out[b, hq], ref_out)]
        if grads is not None:
            errors += [_rel_error(g[b, h], r) / 2 for g, h, r in zip(grads, (hq, hk, hk), ref_grads)]
        return max(errors)

    # -- runs ----------------------------------------------------------------------------
    def _fwd(self, fn):
        def run():
            with torch.no_grad():
                return fn(self.q, self.k, self.v)
        return run

    def _fwd_bwd(self, fn):
        q, k, v = (t.detach().requires_grad_() for t in (self.q, self.k, self.v))

        def run():
            out = fn(q, k, v)
            return out, torch.autograd.grad(out, (q, k, v), self.grad)
        return run

    def _time(self, direction: str, fn) -> dict:
        """The record fields of ``fn(q, k, v)`` timed in ``direction`` by the case's timing:
        ``ms``; under GPU timing the lower of the eager time (``eager_ms``) and the GPU work
        alone (``graph_ms``): host-bound calls take their GPU time, and a call that runs slower
        captured in a graph (cuDNN's forward: about 10 % on an H200) its eager time."""
        run = self._fwd(fn) if direction == "fwd" else self._fwd_bwd(fn)
        eager = eager_ms(run, self.device, reps=self.reps, rep_ms=self.rep_ms)
        if self.timing != "gpu":
            return dict(ms=eager)
        try:
            graph = gpu_ms(run, rep_ms=self.rep_ms)
        except RuntimeError as err:  # not capturable (a host sync): the eager time, said so
            return dict(ms=eager, eager_ms=eager, reason=f"no GPU time (graph capture failed: "
                                                          f"{str(err).splitlines()[0]}): eager time")
        return dict(ms=min(eager, graph), eager_ms=eager, graph_ms=graph)

    def record(self, backend: str, direction: str, *, baseline: bool = False, **fields) -> dict:
        """One result row. ``speed_of_light`` is the case's bound over its baseline
        (:func:`speed_of_light`), and a timed backend's ``sol_fraction`` its measured speedup
        over that bound: the table's *% of SoL* is its *speedup* over its *speed of light*."""
        case, sim = self.case, self.sim
        pairs = case.batch * case.heads * (dense_pairs(case) if baseline else sim.pairs_useful)
        flops = 4 * pairs * case.head_dim * (BWD_FLOP_FACTOR if direction == "fwd+bwd" else 1)
        rec = dict(
            case=case.name, family=case.family, pattern=repr(case.pattern) if case.pattern else "dense",
            backend=backend, direction=direction, dtype=str(self.dtype).replace("torch.", ""),
            batch=case.batch, heads=case.heads, heads_kv=case.heads_kv, q_len=case.q_len,
            kv_len=case.kv_len, head_dim=case.head_dim, tile=None if baseline else self._tile_of(backend),
            baseline=baseline, timing=self.timing, eager_ms=None, graph_ms=None,
            density=sim.density, blocks_visited=sim.blocks_visited, blocks_baseline=self.blocks_baseline,
            speed_of_light=self.speed_of_light, status="ok", reason=None, ms=None, tflops=None, speedup=None,
            sol_fraction=None, rel_error=None,
        )
        rec.update(fields)
        if rec["ms"] is not None:
            rec["tflops"] = flops / (rec["ms"] * 1e-3) / 1e12
        if not baseline and rec["speedup"] is not None:
            rec["sol_fraction"] = rec["speedup"] / rec["speed_of_light"]
        return rec

    def _tile_of(self, backend: str):
        """The tile that ``attention(tile="auto")`` uses on ``backend``."""
        return self.tile if foveate.backends.get(backend).uses_layout else None

    def run_baseline(self) -> Iterator[dict]:
        for direction in ("fwd", "fwd+bwd") if self.backward else ("fwd",):
            note = None
            for cudnn in (True, False) if self.device.type == "cuda" else (False,):
                name, fn = sdpa_baseline(self.case, cudnn=cudnn)
                try:
                    times = self._time(direction, fn)
                    break
                except RuntimeError as err:  # cuDNN declines the shape: SDPA's own choice
                    note = f"cuDNN declined: {str(err).splitlines()[0]}"
            if note is not None:
                times = dict(times, reason="; ".join(filter(None, (note, times.get("reason")))))
            yield self.record(name, direction, **times, speedup=1.0, baseline=True)

    def run_flex_dense(self, baseline_ms: dict[str, float]) -> Iterator[dict]:
        """FlexAttention on the dense (or causal) problem of the case: the second baseline."""
        causal = causal_baseline(self.case)
        pattern = foveate.patterns.Causal() if causal else None
        fn = lambda q, k, v: foveate.attention(q, k, v, pattern, backend="flex")  # noqa: E731
        name = f"flex {'causal' if causal else 'dense'}"
        for direction in ("fwd", "fwd+bwd") if self.backward else ("fwd",):
            try:
                times = self._time(direction, fn)
            except ValueError as err:  # e.g. no backward on CPU
                yield self.record(name, direction, baseline=True, status="unsupported", reason=str(err))
                continue
            yield self.record(name, direction, **times, speedup=baseline_ms[direction] / times["ms"], baseline=True)

    def run_backend(self, backend: str, baseline_ms: dict[str, float]) -> Iterator[dict]:
        fn = lambda q, k, v: foveate.attention(q, k, v, self.case.pattern, backend=backend)  # noqa: E731
        directions = [("fwd", self._fwd(fn))] + ([("fwd+bwd", self._fwd_bwd(fn))] if self.backward else [])
        tol = TOLERANCE[self.dtype]
        for direction, run in directions:
            try:
                result = run()
            except ValueError as err:  # the backend declines this problem
                yield self.record(backend, direction, status="unsupported", reason=str(err))
                continue
            out, grads = (result, None) if direction == "fwd" else result
            err = self.check(out, grads)
            if not err <= tol:
                yield self.record(backend, direction, status="wrong", rel_error=err,
                                  reason=f"relative error {err:.3g} > {tol:g} against the reference")
                continue
            times = self._time(direction, fn)
            yield self.record(backend, direction, **times, rel_error=err, speedup=baseline_ms[direction] / times["ms"])


def default_backends(device: torch.device) -> list[str]:
    """Every available backend; on CUDA the reference is the check, not a contender."""
    names = foveate.backends.available()
    return [n for n in names if n != "reference"] if device.type == "cuda" else names


def run_cases(cases, backends, *, dtype, device, backward, reps, rep_ms, flex_dense=False, timing=None,
              progress=None) -> list[dict]:
    """All records of all cases; ``progress(description)`` is called before each step.
    With ``flex_dense``, FlexAttention on each case's dense problem is a second baseline;
    ``timing`` (``"eager"`` or ``"gpu"``) overrides each case's own."""
    env = environment(device)
    records = []
    for case in cases:
        if progress:
            progress(f"{case.name}: baseline")
        runner = CaseRunner(case, dtype=dtype, device=device, backward=backward, reps=reps, rep_ms=rep_ms,
                            timing=timing)
        base = list(runner.run_baseline())
        records += base
        baseline_ms = {r["direction"]: r["ms"] for r in base}
        if flex_dense:
            if progress:
                progress(f"{case.name}: flex dense")
            records += list(runner.run_flex_dense(baseline_ms))
        for backend in backends:
            if progress:
                progress(f"{case.name}: {backend}")
            records += list(runner.run_backend(backend, baseline_ms))
        del runner
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for rec in records:
        rec.update(env)
    return records
