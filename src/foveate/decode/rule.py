"""A static pattern lowered for decoding: each query's allowed keys as at most two intervals
whose ends are affine in the query index and the sequence length.

Decoding runs ``n_new`` queries, the last ``n_new`` positions of a sequence of length ``L``
(bottom-right alignment, query ``i`` at position ``p = L - n_new + i``), and ``L`` differs per
sequence and per step. A pattern's kernel mask (:meth:`~foveate.patterns.Pattern.kernel_mask`)
is a tree of integers for *one* ``(q_len, kv_len)``; this module reads it at two long lengths,
finds which of its integers move with ``L`` (bands' offsets, rectangles that end at the
sequence end) and which do not, and lowers the tree to a **rule**: per query ``i``, keys in
the union over slots ``k`` (with ``q_lo[k] <= i < q_hi[k]``) of ``[lo_k(i, L), hi_k(i, L))``,

    lo_k = max(0, max_t a_t + b_t * i + c_t * L),   hi_k = min(L, min_t a_t + b_t * i + c_t * L),

``b, c`` in ``{0, 1}`` (so both ends are non-decreasing in ``i``: the union over queries of a
slot is ``[lo_k(q_lo), hi_k(q_hi - 1))``, the range of keys a kernel walks for it). Bands
(``Causal``, ``SlidingWindow``, ``Dense``), rectangles (``Sinks``) and their ``|`` and ``&`` lower
to rules; the lowering is then checked against the pattern's ``mask_mod`` on short lengths
(every pair) and a few long ones, so a pattern is either run exactly or refused.

The rule is one flat tuple of ints (the kernels' compile-time ``RULE``; flat because Triton
3.6 indexes one level of a constexpr tuple): ``N_SLOTS``, then per slot ``Q_LO, Q_HI`` and
:data:`MAX_TERMS` lower-end terms and as many upper-end terms, each ``(PRESENT, A, B, C)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..patterns.kernel_mask import AllOf, AnyOf, Band, Rect

#: Key intervals per query (sinks + window needs two).
MAX_SLOTS = 2
#: Affine terms per interval end.
MAX_TERMS = 2
TERM_WIDTH = 4
SLOT_WIDTH = 2 + 2 * MAX_TERMS * TERM_WIDTH

# Two long lengths at which the kernel mask is read: an integer equal at both is a constant,
# one that differs by exactly their difference moves with the sequence length.
_L1, _L2 = 1 << 20, (1 << 20) + 4096
# Lengths at which the rule is checked against ``mask_mod``: every short one, a few long ones.
_SHORT = 72
_LONG = (97, 256, 1000, 4133)

SUPPORTED = ("P.Causal(), P.Dense(), P.SlidingWindow(left, right), P.Sinks(n) and their compositions with | and & "
             "(each query's keys at most two intervals, e.g. (P.SlidingWindow(w) | P.Sinks(n)) & P.Causal())")


class Unsupported(ValueError):
    """The pattern has no decode rule (the message says why)."""


@dataclass(frozen=True)
class _Slot:
    q_lo: int
    q_hi: int
    lo: tuple[tuple[int, int, int], ...]  # (a, b, c): a + b * i + c * L
    hi: tuple[tuple[int, int, int], ...]


def _moving(name: str, x1: int, x2: int) -> tuple[int, int]:
    """``(a, c)`` with ``x = a + c * L`` at both probe lengths."""
    if x1 == x2:
        return x1, 0
    if x2 - x1 == _L2 - _L1:
        return x1 - _L1, 1
    raise Unsupported(f"its kernel mask's {name} changes with the length in a way decoding does not follow")


def _simplify(terms, lower: bool) -> tuple[tuple[int, int, int], ...]:
    """One term per ``(b, c)`` (the tightest), none that the clamp to ``[0, L]`` makes moot."""
    best: dict[tuple[int, int], int] = {}
    for a, b, c in terms:
        if lower and b == 0 and c == 0 and a <= 0:
            continue  # max(0, a) with a <= 0
        if not lower and b == 0 and c == 1 and a >= 0:
            continue  # min(L, L + a) with a >= 0
        key = (b, c)
        best[key] = a if key not in best else (max(best[key], a) if lower else min(best[key], a))
    return tuple((a, b, c) for (b, c), a in sorted(best.items()))


def _slots(m1, m2, n: int) -> list[_Slot]:
    if type(m1) is not type(m2):
        raise Unsupported("its kernel mask changes form with the length")
    if isinstance(m1, Band):
        a, c = _moving("band offset", m1.offset, m2.offset)
        if (m1.left, m1.right) != (m2.left, m2.right):
            raise Unsupported("its band's width changes with the length")
        lo = () if m1.left is None else ((a - m1.left, 1, c),)
        hi = () if m1.right is None else ((a + m1.right + 1, 1, c),)
        return [_Slot(0, n, _simplify(lo, True), _simplify(hi, False))]
    if isinstance(m1, Rect):
        if (m1.q_start, m1.q_end) != (m2.q_start, m2.q_end):
            raise Unsupported("its rectangle's queries change with the length")
        q_lo, q_hi = max(m1.q_start, 0), min(m1.q_end, n)
        if q_lo >= q_hi:
            return []
        ks, kc = _moving("rectangle start", m1.kv_start, m2.kv_start)
        es, ec = _moving("rectangle end", m1.kv_end, m2.kv_end)
        return [_Slot(q_lo, q_hi, _simplify(((ks, 0, kc),), True), _simplify(((es, 0, ec),), False))]
    if isinstance(m1, AnyOf):
        if len(m1.parts) != len(m2.parts):
            raise Unsupported("its kernel mask changes form with the length")
        return [s for a, b in zip(m1.parts, m2.parts) for s in _slots(a, b, n)]
    if isinstance(m1, AllOf):
        if len(m1.parts) != len(m2.parts):
            raise Unsupported("its kernel mask changes form with the length")
        acc = [_Slot(0, n, (), ())]
        for a, b in zip(m1.parts, m2.parts):
            acc = [_Slot(max(s.q_lo, t.q_lo), min(s.q_hi, t.q_hi), _simplify(s.lo + t.lo, True),
                         _simplify(s.hi + t.hi, False))
                   for s in acc for t in _slots(a, b, n) if max(s.q_lo, t.q_lo) < min(s.q_hi, t.q_hi)]
        return acc
    raise Unsupported(f"its kernel mask has a {type(m1).__name__} part (not a band or rectangle)")


def _flat(slots: list[_Slot]) -> tuple[int, ...]:
    out = [len(slots)]
    for s in slots:
        out += [s.q_lo, s.q_hi]
        for terms in (s.lo, s.hi):
            for t in range(MAX_TERMS):
                out += [1, *terms[t]] if t < len(terms) else [0, 0, 0, 0]
    return tuple(out)


@functools.lru_cache(maxsize=256)
def lower(pattern, n_new: int) -> tuple[int, ...]:
    """The rule of ``pattern`` (``None``: causal) for ``n_new`` queries per sequence; ``ValueError``
    naming ``pattern`` when it has none (the message lists what decoding supports)."""
    if pattern is None:
        from ..patterns import Causal

        pattern = Causal()
    try:
        if getattr(pattern, "content_dependent", False) or not getattr(pattern, "cacheable", True):
            raise Unsupported("it selects blocks from the inputs")
        if pattern.canvas is not None:
            raise Unsupported("it is a canvas pattern")
        try:
            m1, m2 = pattern.kernel_mask(n_new, _L1), pattern.kernel_mask(n_new, _L2)
        except (TypeError, ValueError) as e:
            raise Unsupported(f"its kernel mask is not defined for {n_new} queries: {e}") from None
        if m1 is None:
            raise Unsupported("it has no kernel mask description")
        slots = list(dict.fromkeys(_slots(m1, m2, n_new)))  # (identical slots once)
        if len(slots) > MAX_SLOTS:
            raise Unsupported(f"its queries see {len(slots)} intervals of keys (at most {MAX_SLOTS})")
        if any(len(s.lo) > MAX_TERMS or len(s.hi) > MAX_TERMS for s in slots):
            raise Unsupported(f"an interval's end is the max or min of more than {MAX_TERMS} terms")
        rule = _flat(slots)
        _check(pattern, rule, n_new)
    except Unsupported as e:
        raise ValueError(f"pattern {pattern!r} cannot run in decoding: {e}. Supported: {SUPPORTED}") from None
    return rule


def intervals(rule: tuple[int, ...], n_new: int, length: int) -> list[list[tuple[int, int]]]:
    """Per query ``i`` of ``n_new`` (sequence length ``length``), its key intervals
    ``[(lo, hi), ...]`` (possibly empty or overlapping) under ``rule``: the host's evaluation,
    which the kernels repeat in registers."""
    out = []
    for i in range(n_new):
        row = []
        for k in range(rule[0]):
            base = 1 + k * SLOT_WIDTH
            if not rule[base] <= i < rule[base + 1]:
                continue
            row.append((_end(rule, base + 2, i, length, True), _end(rule, base + 2 + MAX_TERMS * TERM_WIDTH, i,
                                                                    length, False)))
        out.append(row)
    return out


def _end(rule, at: int, i: int, length: int, lower: bool) -> int:
    value = 0 if lower else length
    for t in range(MAX_TERMS):
        present, a, b, c = rule[at + t * TERM_WIDTH:at + (t + 1) * TERM_WIDTH]
        if present:
            x = a + b * i + c * length
            value = max(value, x) if lower else min(value, x)
    return value


def walk(rule: tuple[int, ...], n_new: int, length: int) -> list[tuple[int, int]]:
    """The disjoint key ranges a kernel reads for one sequence: per slot the union over its
    queries, sorted and clipped against each other (what the kernels compute in registers)."""
    ranges = []
    for k in range(rule[0]):
        base = 1 + k * SLOT_WIDTH
        lo = _end(rule, base + 2, rule[base], length, True)
        hi = _end(rule, base + 2 + MAX_TERMS * TERM_WIDTH, rule[base + 1] - 1, length, False)
        ranges.append((lo, max(hi, lo)))
    ranges.sort()
    out, reach = [], 0
    for lo, hi in ranges:
        lo = max(lo, reach)
        hi = max(hi, lo)
        out.append((lo, hi))
        reach = max(reach, hi)
    return out


def walk_tokens(rule: tuple[int, ...], n_new: int, length: int) -> int:
    """How many keys a kernel reads for a sequence of ``length`` tokens."""
    return sum(hi - lo for lo, hi in walk(rule, n_new, length))


def rule_mask(rule: tuple[int, ...], n_new: int, length: int) -> torch.Tensor:
    """The ``(n_new, length)`` boolean mask of ``rule``."""
    keys = torch.arange(length)
    mask = torch.zeros(n_new, length, dtype=torch.bool)
    for i, row in enumerate(intervals(rule, n_new, length)):
        for lo, hi in row:
            mask[i] |= (keys >= lo) & (keys < hi)
    return mask


def _check(pattern, rule, n_new: int) -> None:
    """The rule allows exactly what ``mask_mod`` allows, at every short length and a few long ones."""
    for length in (*range(1, n_new + _SHORT), *_LONG):
        try:
            mm = pattern.mask_mod(n_new, length)
        except ValueError as e:
            raise Unsupported(f"its mask is not defined for {n_new} queries and {length} keys: {e}") from None
        zero = torch.zeros((), dtype=torch.int64)
        want = torch.broadcast_to(mm(zero, zero, torch.arange(n_new)[:, None], torch.arange(length)[None, :]),
                                  (n_new, length))
        got = rule_mask(rule, n_new, length)
        if not torch.equal(want, got):
            i, j = (want != got).nonzero()[0].tolist()
            raise Unsupported(f"its lowering to key intervals disagrees with mask_mod at {n_new} queries, "
                              f"{length} keys, query {i}, key {j}")


__all__ = ["MAX_SLOTS", "SUPPORTED", "intervals", "lower", "rule_mask", "walk", "walk_tokens"]
