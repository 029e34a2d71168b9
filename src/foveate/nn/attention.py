"""``SelfAttention``: multi-head self-attention over any foveate pattern, as a module.

The layout of its parameters is NATTEN's and timm's (``qkv``: one ``Linear(C, 3 * C)`` whose
output splits as ``(3, heads, head_dim)``; ``proj``: ``Linear(C, C)``; ``proj_drop``), so a
state dict of :class:`~foveate.nn.natten.NeighborhoodAttention2D` (or of NATTEN's own modules)
loads into it unchanged, and back.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .. import backends
from ..patterns.base import Pattern, is_int
from .joint import joint_attention


def _positive_int(name: str, value) -> int:
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


class _ProjectedAttention(nn.Module):
    """The parameters and projections shared by the modules of :mod:`foveate.nn`: ``qkv``,
    ``proj`` and ``proj_drop``, registered in NATTEN's order (its state dict's key order)."""

    def __init__(self, embed_dim, num_heads, qkv_bias, qk_scale, proj_drop, backend):
        super().__init__()
        embed_dim = _positive_int("embed_dim", embed_dim)
        num_heads = _positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a multiple of num_heads={num_heads}")
        if not isinstance(qkv_bias, bool):
            raise TypeError(f"qkv_bias must be a bool, got {type(qkv_bias).__name__} {qkv_bias!r}")
        head_dim = embed_dim // num_heads
        if qk_scale is None:
            scale = head_dim ** -0.5
        elif isinstance(qk_scale, bool) or not isinstance(qk_scale, numbers.Real):
            raise TypeError(f"qk_scale must be a real number or None, got {type(qk_scale).__name__} {qk_scale!r}")
        elif not (math.isfinite(qk_scale) and qk_scale > 0):
            raise ValueError(f"qk_scale must be finite and > 0 (or None: head_dim ** -0.5), got {qk_scale!r}")
        else:
            scale = float(qk_scale)
        if isinstance(proj_drop, bool) or not isinstance(proj_drop, numbers.Real):
            raise TypeError(f"proj_drop must be a real number, got {type(proj_drop).__name__} {proj_drop!r}")
        if not 0.0 <= proj_drop <= 1.0:
            raise ValueError(f"proj_drop must be in [0, 1], got {proj_drop!r}")
        self.backend = backends.check_name(backend)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_bias)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(float(proj_drop))

    def _check_input(self, x, rank: int | None = None, shapes: str = "(B, ..., C)") -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: x.dtype must be a floating-point type, got {x.dtype}")
        if x.dim() < 3 if rank is None else x.dim() != rank:
            raise ValueError(f"{name}: x must be {shapes} ({rank or 'at least 3'} dims), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.embed_dim:
            raise ValueError(f"{name}: x has {x.shape[-1]} channels (last dim) but embed_dim={self.embed_dim}; "
                             f"x has shape {tuple(x.shape)}")

    def _project(self, x: torch.Tensor, n: int):
        """``q, k, v``, each ``(B, heads, n, head_dim)`` (views), from ``x`` ``(B, ..., C)`` with
        ``n`` tokens: the ``3 * C`` outputs of ``qkv`` split as ``(3, heads, head_dim)``."""
        qkv = self.qkv(x).reshape(x.shape[0], n, 3, self.num_heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def _output(self, out: torch.Tensor, shape) -> torch.Tensor:
        """``out`` ``(B, heads, n, head_dim)`` -> heads concatenated, ``shape``, ``proj``, dropout."""
        out = out.transpose(1, 2).reshape(shape)
        return self.proj_drop(self.proj(out))


class SelfAttention(_ProjectedAttention):
    """Multi-head self-attention restricted to a foveate pattern, with optional global tokens.

    ``y = proj_drop(proj(attention(q, k, v, pattern)))`` with ``q, k, v`` from one projection
    ``qkv(x)`` (its ``3 * embed_dim`` outputs split as ``(3, num_heads, head_dim)``, NATTEN's
    and timm's layout): the state dict keys are ``qkv.weight``, ``qkv.bias`` (if ``qkv_bias``),
    ``proj.weight`` and ``proj.bias``, those of
    :class:`~foveate.nn.natten.NeighborhoodAttention2D` and of NATTEN 0.21's modules.

    Input ``x`` and output have the same shape:

    * ``pattern=None`` (dense) or a sequence pattern: ``(B, N, C)``;
    * a canvas pattern (``pattern.canvas``, e.g. :class:`~foveate.patterns.Neighborhood`):
      ``(B, *canvas, C)`` or flat ``(B, prod(canvas), C)`` in raster order;
    * with ``extra`` tokens: flat ``(B, n + extra, C)``, the ``n`` pattern tokens (raster
      order for a canvas) and the extra tokens before them (``extra_first=True``) or after.

    The pattern covers the ``n`` pattern tokens (``q_len == kv_len == n``). Each extra token
    (text beside video, class or register tokens beside patches) is a key that every query
    sees and a query that sees every key (:func:`foveate.nn.joint.joint_attention`).

    Args:
        embed_dim: channels ``C`` of the input, ``num_heads * head_dim``.
        num_heads: attention heads; must divide ``embed_dim``.
        pattern: a :mod:`foveate.patterns` pattern over the pattern tokens, without its own
            ``extra_kv`` (use ``extra``); ``None`` is dense attention. It may be replaced
            later (``module.pattern = ...``): patterns hold no parameters.
        extra: number of global tokens in the input beside the pattern tokens.
        extra_first: the global tokens come first (CogVideoX, timm's prefix tokens) rather
            than last (HunyuanVideo's text).
        qkv_bias: a bias in the ``qkv`` projection.
        qk_scale: factor on ``q @ k^T``; ``None`` is ``head_dim ** -0.5``.
        proj_drop: dropout probability after the output projection.
        backend: as in :func:`foveate.attention` (``"auto"``, ``"triton"``, ``"flex"``,
            ``"torch"``, ``"reference"``).

    Raises:
        TypeError, ValueError: on bad arguments (here, or in ``forward`` for a bad input),
            naming the argument.

    Example:
        ```python
        import torch
        from foveate import patterns as P
        from foveate.nn import SelfAttention

        # a 16 x 16 image with a 7 x 7 neighborhood, plus one class token in front
        attn = SelfAttention(256, 8, P.Neighborhood((16, 16), 7), extra=1, extra_first=True)
        y = attn(torch.randn(2, 1 + 16 * 16, 256))   # (2, 257, 256)
        ```
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        pattern: Pattern | None = None,
        *,
        extra: int = 0,
        extra_first: bool = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        backend: str = "auto",
    ):
        super().__init__(embed_dim, num_heads, qkv_bias, qk_scale, proj_drop, backend)
        _check_pattern(pattern)
        if not is_int(extra):
            raise TypeError(f"extra must be an int, got {type(extra).__name__} {extra!r}")
        if extra < 0:
            raise ValueError(f"extra must be >= 0, got {extra}")
        if not isinstance(extra_first, bool):
            raise TypeError(f"extra_first must be a bool, got {type(extra_first).__name__} {extra_first!r}")
        self.pattern = pattern
        self.extra = int(extra)
        self.extra_first = extra_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, N, C)``, or ``(B, *canvas, C)`` for a canvas pattern without extra
        tokens; returns the same shape."""
        self._check_input(x)
        pattern = self.pattern
        _check_pattern(pattern)
        n = self._tokens(x, pattern)
        q, k, v = self._project(x, n)
        out = joint_attention(q, k, v, pattern, extra=self.extra, extra_first=self.extra_first,
                              scale=self.scale, backend=self.backend)
        return self._output(out, x.shape)

    def _tokens(self, x: torch.Tensor, pattern: Pattern | None) -> int:
        """The number of tokens of ``x``, its shape checked against the pattern and ``extra``."""
        shape = tuple(x.shape)
        canvas = None if pattern is None else pattern.canvas
        tokens = shape[1:-1]
        canvas_shaped = canvas is not None and len(canvas) > 1 and tokens == tuple(canvas)
        if len(tokens) != 1 and not (canvas_shaped and not self.extra):
            expected = "(B, N, C)"
            if canvas is not None and len(canvas) > 1:
                expected += (" (with extra tokens: flat, N = prod(canvas) + extra)" if self.extra
                             else f" or (B, {', '.join(map(str, canvas))}, C)")
            raise ValueError(f"SelfAttention: x must be {expected}, got shape {shape}")
        n = math.prod(tokens)
        if self.extra and n <= self.extra:
            raise ValueError(f"SelfAttention: x has {n} tokens, not more than extra={self.extra}")
        if canvas is not None and n - self.extra != math.prod(canvas):
            raise ValueError(
                f"SelfAttention: x has {n} tokens but {pattern!r} needs prod(canvas) = {math.prod(canvas)}"
                + (f" + extra = {math.prod(canvas) + self.extra}" if self.extra else "")
                + f"; x has shape {shape}"
            )
        return n

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, pattern={self.pattern!r}, "
                f"extra={self.extra}, extra_first={self.extra_first}, backend={self.backend!r}")


def _check_pattern(pattern) -> None:
    if pattern is None:
        return
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a foveate pattern or None, got {type(pattern).__name__}")
    if pattern.extra_kv:
        raise ValueError(
            f"pattern={pattern!r} has extra_kv={pattern.extra_kv}: self-attention needs as many keys as "
            f"queries; give global tokens with extra= instead"
        )
