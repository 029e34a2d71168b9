"""``Neighborhood``: generalized neighborhood attention on 1-, 2- and 3-D canvases
(NATTEN / GNA semantics: per-axis kernel, dilation, stride, causal; clamped windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from .base import Pattern, is_int, per_axis, set_ints
from .kernel_mask import Window


def axis_window(x: torch.Tensor, length: int, kernel: int, dilation: int, stride: int, causal: bool):
    """The neighborhood of query coordinate ``x`` along one axis.

    Returns ``(start, end)``: the half-open window of allowed key coordinates *inside the
    query's dilation group* ``x % dilation`` (group coordinate = raw coordinate // dilation).
    Works elementwise on integer tensors, also inside ``torch.compile`` (FlexAttention's
    mask_mod), and costs the fewest operations when dilation and stride are 1.
    """
    if dilation == 1:
        xg, lg = x, length
    else:
        xg = x // dilation
        # Length of the query's dilation group: the first (length % dilation) groups are longer.
        lg = length // dilation + ((x % dilation) < length % dilation).to(x.dtype)
    if causal:
        # leader = min((x // s) * s + s - 1, lg - 1); start = max(leader - (kernel - 1), 0)
        leader = xg if stride == 1 else _minimum((xg // stride) * stride + (stride - 1), lg - 1)
        start = torch.clamp(leader - (kernel - 1), min=0)
        end = xg + 1  # min(x + 1, lg), and x < lg
    else:
        # leader = min((x // s) * s + s // 2, lg - 1); the window [leader - kernel // 2, ...)
        # is shifted inside [0, lg) so that it always holds `kernel` keys.
        leader = xg if stride == 1 else _minimum((xg // stride) * stride + stride // 2, lg - 1)
        start = _minimum(torch.clamp(leader - kernel // 2, min=0), lg - kernel)
        end = start + kernel
    return start, end


def _minimum(a: torch.Tensor, b) -> torch.Tensor:
    return torch.clamp(a, max=b) if isinstance(b, int) else torch.minimum(a, b)


def axis_allowed(qx: torch.Tensor, kx: torch.Tensor, length, kernel, dilation, stride, causal):
    """Elementwise: may query coordinate ``qx`` see key coordinate ``kx`` along this axis?"""
    start, end = axis_window(qx, length, kernel, dilation, stride, causal)
    if dilation == 1:
        return (kx >= start) & (kx < end)
    kg = kx // dilation
    return (kx % dilation == qx % dilation) & (kg >= start) & (kg < end)


@dataclass(frozen=True, repr=False)
class Neighborhood(Pattern):
    """Each query sees the keys in a window around it on a canvas (a grid of tokens).

    Args:
        canvas: canvas shape, 1 to 3 axes; tokens are flat in row-major (raster) order.
        kernel: window size per axis (an int applies to every axis). Even kernels lean left.
        dilation: per axis; splits the axis into interleaved groups ``x % dilation``; a query
            sees only keys of its own group, and windows live on group coordinates.
        stride: per axis; queries in a run of ``stride`` share one window (the leader's).
            ``stride == kernel`` gives non-overlapping windows (blocked attention).
        causal: per axis; keys at or before the query only.
        extra_kv: keys after the canvas tokens (text, register or class tokens) that every
            query sees. ``kv_len == prod(canvas) + extra_kv``.

    Requires ``1 <= kernel``, ``kernel * dilation <= canvas`` and ``1 <= stride <= kernel``
    on every axis. ``q_len == prod(canvas)``.
    """

    # field(): no default, although the base class has a class-level `canvas = None`.
    canvas: tuple[int, ...] = field()
    kernel: tuple[int, ...] = field()
    dilation: tuple[int, ...] = 1  # type: ignore[assignment]
    stride: tuple[int, ...] = 1  # type: ignore[assignment]
    causal: tuple[bool, ...] = False  # type: ignore[assignment]
    extra_kv: int = 0

    def __post_init__(self):
        canvas = self.canvas
        if is_int(canvas):
            canvas = (canvas,)
        if (
            not isinstance(canvas, (tuple, list))
            or not 1 <= len(canvas) <= 3
            or not all(is_int(n) and n >= 1 for n in canvas)
        ):
            raise ValueError(f"canvas must be 1 to 3 positive ints, got {self.canvas!r}")
        canvas = tuple(int(n) for n in canvas)
        ndim = len(canvas)
        kernel = per_axis("kernel", self.kernel, ndim)
        dilation = per_axis("dilation", self.dilation, ndim)
        stride = per_axis("stride", self.stride, ndim)
        causal = per_axis("causal", self.causal, ndim, kind=bool)
        set_ints(self, extra_kv=0)
        for a, (n, w, d, s) in enumerate(zip(canvas, kernel, dilation, stride)):
            if d < 1:
                raise ValueError(f"dilation={dilation}: must be >= 1 on every axis (axis {a}: {d})")
            if w < 1 or w * d > n:
                raise ValueError(
                    f"kernel={kernel} with dilation={dilation} does not fit canvas={canvas}: "
                    f"need 1 <= kernel * dilation <= canvas on every axis (axis {a}: {w} * {d} vs {n})"
                )
            if not 1 <= s <= w:
                raise ValueError(f"stride={stride}: need 1 <= stride <= kernel on every axis (axis {a}: {s} vs {w})")
        for name, value in (("canvas", canvas), ("kernel", kernel), ("dilation", dilation),
                            ("stride", stride), ("causal", causal)):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        parts = [f"canvas={self.canvas}", f"kernel={self.kernel}"]
        for f in fields(self)[2:]:
            value = getattr(self, f.name)
            default = f.default if f.name == "extra_kv" else (f.default,) * len(self.canvas)
            if value != default:
                parts.append(f"{f.name}={value}")
        return f"Neighborhood({', '.join(parts)})"

    # -- the definition ----------------------------------------------------------------
    @property
    def axes(self):
        """Per-axis ``(length, kernel, dilation, stride, causal)``."""
        return tuple(zip(self.canvas, self.kernel, self.dilation, self.stride, self.causal))

    def mask_mod(self, q_len: int, kv_len: int):
        self.check_lengths(q_len, kv_len)
        # Row-major strides of the canvas.
        strides = [math.prod(self.canvas[a + 1 :]) for a in range(len(self.canvas))]
        n_canvas = math.prod(self.canvas)
        allowed = self.coords_allowed

        def coords(idx):
            # The outermost axis needs no modulo (canvas tokens have idx < n_canvas).
            return [idx // st if a == 0 else (idx // st) % n for a, (st, n) in enumerate(zip(strides, self.canvas))]

        def mask_mod(b, h, q_idx, kv_idx):
            ok = allowed(coords(q_idx), coords(kv_idx))
            return ok | (kv_idx >= n_canvas) if self.extra_kv else ok

        return mask_mod

    def coords_allowed(self, q_coords, k_coords) -> torch.Tensor:
        """Elementwise: may the query at canvas coordinates ``q_coords`` see the canvas key at
        ``k_coords`` (one integer tensor per axis)? The extra keys are not covered here."""
        ok = None
        for qx, kx, axis in zip(q_coords, k_coords, self.axes):
            ok_axis = axis_allowed(qx, kx, *axis)
            ok = ok_axis if ok is None else ok & ok_axis
        return ok

    # -- compiled form -----------------------------------------------------------------
    can_tile = True

    def kernel_mask(self, q_len: int, kv_len: int) -> Window:
        self.check_lengths(q_len, kv_len)
        axes = tuple((kernel, dilation, stride, causal) for _, kernel, dilation, stride, causal in self.axes)
        return Window(self.canvas, axes, self.extra_kv)

    def _build(self, q_len, kv_len, block_q, block_kv, device, tile):
        from .canvas_layout import build_canvas_layout

        return build_canvas_layout(self, block_q=block_q, block_kv=block_kv, device=device, tile=tile)
