"""``RelativePositionBias``: a learnable bias per head looked up by the query-key offset: T5's
log-spaced buckets in 1-D, or one entry per offset within a window on a 2-D/3-D canvas (Swin's
``(2 Wh - 1)(2 Ww - 1)`` table, and its 3-D form)."""

from __future__ import annotations

import math

import torch

from ..patterns.base import is_int
from .base import ScoreMod, check_canvas, check_canvas_pattern, check_device


class RelativePositionBias(ScoreMod):
    """``score + table[h, index(offset)]``, the offset being the key's position minus the
    query's (bottom-right aligned in 1-D; per axis on a canvas).

    1-D (``canvas=None``): T5's buckets: exact offsets up to ``buckets // 2`` (per direction
    when ``bidirectional``), then log-spaced buckets up to ``max_distance``, the last bucket for
    everything farther; ``bidirectional=False`` (causal models) gives every key after the query
    bucket 0. ``table`` is ``(H|1, buckets)``.

    Canvas (``canvas`` and ``window`` given): one entry per offset ``d`` with ``|d_a| <=
    window_a - 1`` on each axis, ``table`` of shape ``(H|1, prod(2 window - 1))`` or ``(H|1,
    2 w_0 - 1, 2 w_1 - 1, ...)`` (Swin's layout, heads first); offsets are clamped to the
    window, and :meth:`check_pattern` refuses a neighborhood reaching past it. Keys past the
    canvas (``extra_kv``) get no bias.

    The table may be learnable: it receives its gradient.
    """

    def __init__(self, table: torch.Tensor, *, buckets: int | None = None, max_distance: int = 128,
                 bidirectional: bool = True, canvas: tuple[int, ...] | None = None,
                 window: tuple[int, ...] | int | None = None):
        if not isinstance(table, torch.Tensor) or not table.is_floating_point():
            raise TypeError(f"table must be a floating-point tensor, got {table!r:.80}")
        if (canvas is None) != (window is None):
            raise ValueError("canvas and window go together (a canvas table), or neither (1-D buckets)")
        if canvas is None:
            if table.dim() != 2:
                raise ValueError(f"table must be (H|1, buckets) for 1-D buckets, got shape {tuple(table.shape)}")
            buckets = table.shape[1] if buckets is None else buckets
            if not is_int(buckets) or buckets != table.shape[1] or buckets < (2 if bidirectional else 1):
                raise ValueError(f"buckets must be the table's last dim ({table.shape[1]}), at least "
                                 f"{2 if bidirectional else 1}; got {buckets!r}")
            if not is_int(max_distance) or max_distance < 1:
                raise ValueError(f"max_distance must be a positive int, got {max_distance!r}")
            if not isinstance(bidirectional, bool):
                raise TypeError(f"bidirectional must be a bool, got {bidirectional!r}")
            self.table, self.canvas, self.window = table, None, None
            self.buckets, self.max_distance, self.bidirectional = int(buckets), int(max_distance), bidirectional
            return
        canvas = tuple(canvas) if isinstance(canvas, (tuple, list)) else (canvas,)
        if not all(is_int(n) and n >= 1 for n in canvas):
            raise ValueError(f"canvas must be a tuple of positive ints, got {canvas!r}")
        window = (window,) * len(canvas) if is_int(window) else tuple(window)
        if len(window) != len(canvas) or not all(is_int(w) and w >= 1 for w in window):
            raise ValueError(f"window must be a positive int or one per canvas axis {canvas}, got {window!r}")
        sides = tuple(2 * w - 1 for w in window)
        if table.dim() == 1 + len(canvas) and tuple(table.shape[1:]) == sides:
            table = table.reshape(table.shape[0], -1)
        if table.dim() != 2 or table.shape[1] != math.prod(sides):
            raise ValueError(f"table must be (H|1, {math.prod(sides)}) or (H|1, {', '.join(map(str, sides))}) "
                             f"for window {window}, got shape {tuple(table.shape)}")
        self.table, self.canvas, self.window = table, tuple(map(int, canvas)), tuple(map(int, window))

    def parameters(self):
        return (self.table,)

    def check(self, batch, heads, q_len, kv_len, device):
        if self.table.shape[0] not in (1, heads):
            raise ValueError(f"table has {self.table.shape[0]} heads, the inputs have {heads} query heads")
        check_device("table", self.table, device)
        if self.canvas is not None:
            check_canvas(self.canvas, q_len, kv_len)

    def check_pattern(self, pattern) -> None:
        """Refuse a neighborhood whose keys reach past the table's window (canvas tables)."""
        if self.canvas is None:
            return
        check_canvas_pattern(self.canvas, pattern)
        reach = _reach(pattern)
        if reach is None:
            return
        if len(reach) != len(self.window) or any(r > w - 1 for r, w in zip(reach, self.window)):
            raise ValueError(f"table too small for the pattern: its window {self.window} holds offsets up to "
                             f"{tuple(w - 1 for w in self.window)} per axis, {pattern!r} reaches {reach}")

    def _index(self, q_len, kv_len):
        if self.canvas is None:
            offset, half = kv_len - q_len, self.buckets // 2 if self.bidirectional else self.buckets
            exact, far = max(1, half // 2), self.max_distance
            bidirectional = self.bidirectional

            def bucket(q_idx, kv_idx):
                rel = kv_idx - (q_idx + offset)  # key minus query position
                if bidirectional:
                    base, n = torch.where(rel > 0, half, 0), rel.abs()
                else:
                    base, n = 0, torch.clamp(-rel, min=0)
                scaled = torch.log(torch.clamp(n, min=1).double() / exact) / math.log(max(far / exact, 1 + 1e-9))
                large = torch.clamp(exact + (scaled * (half - exact)).long(), max=half - 1)
                return base + torch.where(n < exact, n, large)

            return bucket
        canvas, window = self.canvas, self.window
        strides = [math.prod(canvas[a + 1:]) for a in range(len(canvas))]
        sides = [2 * w - 1 for w in window]
        table_strides = [math.prod(sides[a + 1:]) for a in range(len(sides))]

        def offset_index(q_idx, kv_idx):
            index = torch.zeros_like(q_idx + kv_idx)
            for stride, length, w, t_stride in zip(strides, canvas, window, table_strides):
                d = (kv_idx // stride) % length - (q_idx // stride) % length
                index = index + (torch.clamp(d, -(w - 1), w - 1) + w - 1) * t_stride
            return index

        return offset_index

    def bind(self, q_len, kv_len, heads):
        index, table = self._index(q_len, kv_len), self.table
        canvas_end = math.prod(self.canvas) if self.canvas is not None else None

        def score_mod(score, b, h, q_idx, kv_idx):
            rows = h if table.shape[0] > 1 else torch.zeros_like(h)
            bias = table[rows, index(q_idx, kv_idx)].to(score.dtype)
            if canvas_end is not None:
                bias = torch.where(kv_idx < canvas_end, bias, 0)
            return score + bias

        return score_mod

    def __repr__(self) -> str:
        if self.canvas is None:
            return (f"RelativePositionBias(buckets={self.buckets}, max_distance={self.max_distance}, "
                    f"bidirectional={self.bidirectional}, heads={self.table.shape[0]})")
        return f"RelativePositionBias(canvas={self.canvas}, window={self.window}, heads={self.table.shape[0]})"


def _reach(pattern) -> tuple[int, ...] | None:
    """The largest key-query offset per canvas axis of a neighborhood pattern (or of an
    intersection with one, or a union of them); ``None`` when not known."""
    from ..patterns import Intersection, Neighborhood, Union

    if isinstance(pattern, Neighborhood):
        return tuple((k - 1) * d for k, d in zip(pattern.kernel, pattern.dilation))
    if isinstance(pattern, (Intersection, Union)):
        reaches = [_reach(p) for p in pattern.parts]
        known = [r for r in reaches if r is not None]
        if isinstance(pattern, Intersection) and known:
            return tuple(min(axis) for axis in zip(*known))
        if isinstance(pattern, Union) and known and len(known) == len(reaches):
            return tuple(max(axis) for axis in zip(*known))
    return None


__all__ = ["RelativePositionBias"]
