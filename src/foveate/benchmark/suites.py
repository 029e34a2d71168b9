"""Benchmark cases and the suites of ``foveate bench``.

A case is a pattern on a shape. The GPU suite holds long 1-D sequences (dense, causal,
sliding windows) and the 2-D/3-D neighborhoods of image and video models, including the
published cases of Generalized Neighborhood Attention (GNA); it fits in one 10-minute run
on an H100. The CPU suite is small enough for about a minute on 2 cores; ``tiny`` is for
tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import patterns as P


@dataclass(frozen=True)
class Case:
    """One benchmark problem: ``q`` is ``(batch, heads, q_len, head_dim)``, ``k``/``v`` are
    ``(batch, heads_kv, kv_len, head_dim)``; ``pattern=None`` is dense attention."""

    name: str
    pattern: P.Pattern | None
    heads: int
    head_dim: int
    q_len: int | None = None  # defaults to the pattern's canvas
    kv_len: int | None = None
    batch: int = 1
    heads_kv: int | None = None
    #: ``"eager"``, or ``"gpu"`` for a problem whose calls may be bound by the host: every run
    #: is then also timed by its GPU work alone, the lower of the two counting
    #: (:mod:`foveate.benchmark.timing`).
    timing: str = "eager"

    def __post_init__(self):
        from .timing import TIMINGS

        if self.timing not in TIMINGS:
            raise ValueError(f"case {self.name!r}: timing={self.timing!r}, expected one of {TIMINGS}")
        if self.q_len is None:
            if self.pattern is None or self.pattern.default_lengths() is None:
                raise ValueError(f"case {self.name!r}: q_len is required for a sequence pattern")
            q_len, kv_len = self.pattern.default_lengths()
            object.__setattr__(self, "q_len", q_len)
            object.__setattr__(self, "kv_len", kv_len)
        if self.kv_len is None:
            object.__setattr__(self, "kv_len", self.q_len)
        if self.heads_kv is None:
            object.__setattr__(self, "heads_kv", self.heads)

    @property
    def family(self) -> str:
        canvas = self.pattern.canvas if self.pattern is not None else None
        return f"{len(canvas)}d" if canvas is not None else "1d"

    @property
    def is_causal(self) -> bool:
        return isinstance(self.pattern, P.Causal)

    def resized(self, *, batch=None, heads=None, length=None) -> "Case":
        """The case with another batch, head count or (1-D sequence cases) length."""
        changes = {}
        if batch is not None:
            changes["batch"] = batch
        if heads is not None:
            changes.update(heads=heads, heads_kv=heads)
        if length is not None and (self.pattern is None or self.pattern.canvas is None):
            changes.update(q_len=length, kv_len=length)
        return dataclasses.replace(self, **changes)

    def allowed_pairs(self) -> int:
        """Allowed (query, key) pairs of one (batch, head)."""
        if self.pattern is None:
            return self.q_len * self.kv_len
        return self.pattern.build(self.q_len, self.kv_len).allowed_pairs()


N = P.Neighborhood

GPU_SUITE = [
    Case("dense-8k", None, 16, 128, 8192),
    Case("causal-8k", P.Causal(), 16, 128, 8192),
    Case("causal-32k", P.Causal(), 16, 128, 32768),
    Case("sliding-2047-32k", P.SlidingWindow(2047), 16, 128, 32768),
    Case("centred-1024-32k", P.SlidingWindow(1024, 1024), 16, 128, 32768),
    # Published GNA cases (B=1). The 1-D ones (one head: about 80 us of kernels) take less
    # GPU time than a call's host time on some H200 machines' CPUs (50-170 us per call,
    # benchmarks/host_overhead.py): also timed by their GPU work, as a model queueing layers
    # sees them.
    Case("gna-1d-w2048", N((32768,), 2048), 1, 128, timing="gpu"),
    Case("gna-1d-w2048-s256", N((32768,), 2048, stride=256), 1, 128, timing="gpu"),
    Case("gna-2d-w80", N((256, 256), (80, 80)), 24, 128),
    Case("gna-2d-w80-s16", N((256, 256), (80, 80), stride=(16, 16)), 24, 128),
    Case("gna-3d-hunyuan", N((30, 48, 80), (18, 24, 24)), 1, 128),
    Case("gna-3d-hunyuan-s", N((30, 48, 80), (18, 24, 24), stride=(16, 8, 8)), 1, 128),
    # Image and video models.
    Case("2d-128x128-k13", N((128, 128), (13, 13)), 16, 128),
    Case("3d-16x64x64-k7x15x15", N((16, 64, 64), (7, 15, 15)), 16, 128),
]

CPU_SUITE = [
    Case("causal-1k", P.Causal(), 4, 64, 1024),
    Case("sliding-127-2k", P.SlidingWindow(127), 4, 64, 2048),
    Case("2d-32x64-k7", N((32, 64), (7, 7)), 4, 64),
]

TINY_SUITE = [
    Case("tiny-causal", P.Causal(), 2, 16, 96, 160),
    Case("tiny-2d", N((8, 12), (3, 5), stride=(1, 2)), 2, 16),
]

SUITES = {"gpu": GPU_SUITE, "cpu": CPU_SUITE, "tiny": TINY_SUITE}


def select_cases(suite: str, names: list[str] | None) -> list[Case]:
    """The suite's cases, or those whose name contains one of ``names``."""
    if suite not in SUITES:
        raise ValueError(f"--suite {suite!r} is unknown; expected one of {sorted(SUITES)}")
    cases = SUITES[suite]
    if not names:
        return list(cases)
    chosen = [c for c in cases if any(n in c.name for n in names)]
    if not chosen:
        raise ValueError(
            f"--cases {' '.join(names)} matches no case of suite {suite!r} "
            f"({', '.join(c.name for c in cases)})"
        )
    return chosen


def dense_pairs(case: Case) -> int:
    """Pairs the dense baseline computes: causal SDPA for a causal case, else all pairs."""
    if case.is_causal and case.q_len == case.kv_len:
        return case.q_len * (case.q_len + 1) // 2
    return case.q_len * case.kv_len


__all__ = ["Case", "SUITES", "select_cases", "dense_pairs"]
