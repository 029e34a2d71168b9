"""Drop-in replacements for NATTEN 0.21's ``NeighborhoodAttention1D/2D/3D`` modules.

Same constructor, same parameter names (a NATTEN 0.21 state dict loads unchanged), same
input and output shapes ``(B, *spatial, C)``, same neighborhoods (NATTEN's generalized
neighborhood attention: kernel, stride, dilation, causal per axis; the window of
:class:`foveate.patterns.Neighborhood`), computed by :func:`foveate.attention` on any of its
backends. NATTEN 0.21 has no attention dropout and no relative positional bias, and neither
have these.
"""

from __future__ import annotations

import math

import torch

from ..api import attention
from ..patterns import Neighborhood
from ..patterns.base import is_int
from .attention import _ProjectedAttention

_AXES = {1: "(B, L, C)", 2: "(B, X, Y, C)", 3: "(B, X, Y, Z, C)"}


def _per_axis(name: str, value, ndim: int, *, kind: type = int, minimum: int = 1) -> tuple:
    """``value`` (an int, or a bool for ``kind=bool``, or a tuple/list of ``ndim`` of them) as a
    tuple of ``ndim`` Python values."""
    ok = (lambda x: isinstance(x, bool)) if kind is bool else is_int
    what = "a bool" if kind is bool else "an int"
    if ok(value):
        values = (value,) * ndim
    elif isinstance(value, (tuple, list)) and all(ok(x) for x in value):
        if len(value) != ndim:
            raise ValueError(f"{name} must be {what} or a tuple of {ndim} (one per axis), got {value!r}")
        values = tuple(value)
    else:
        raise TypeError(f"{name} must be {what} or a tuple of {ndim} (one per axis), got {value!r}")
    if kind is bool:
        return tuple(bool(x) for x in values)
    if any(x < minimum for x in values):
        raise ValueError(f"{name} must be >= {minimum} on every axis, got {value!r}")
    return tuple(int(x) for x in values)


class NeighborhoodAttentionGeneric(_ProjectedAttention):
    """Neighborhood attention on ``na_dim`` spatial axes with NATTEN 0.21's module interface;
    use :class:`NeighborhoodAttention1D`, :class:`NeighborhoodAttention2D` or
    :class:`NeighborhoodAttention3D`. Input and output ``(B, *spatial, C)``.

    Along each axis of length ``L`` (kernel ``w``, stride ``s``, dilation ``d``), as in NATTEN:
    a query at ``x`` sees keys of its dilation group ``x % d`` only, in group coordinates
    ``x // d`` (the group holds ``L_g`` of the axis's tokens); without ``is_causal``, a window of
    exactly ``w`` keys around the stride group's leader (``min((x // s) * s + s // 2, L_g - 1)``),
    shifted inside the axis at the borders, an even ``w`` holding one key more on the left;
    with ``is_causal``, the keys at or before the query and at most ``w - 1`` before the leader
    (``min((x // s) * s + s - 1, L_g - 1)``). A key is seen when it is in the window on every
    axis. The exact definition is :class:`foveate.patterns.Neighborhood`'s, the pattern that
    :meth:`pattern_for` builds from the input's spatial shape in each ``forward``.

    Parameters (NATTEN 0.21's names and shapes, so its state dicts load unchanged): ``qkv``
    ``Linear(C, 3 * C, bias=qkv_bias)``, whose outputs split as ``(3, num_heads, head_dim)``
    (q, k, v outermost); ``proj`` ``Linear(C, C)``; ``proj_drop`` a ``Dropout``. Like NATTEN
    0.21, no attention dropout and no relative positional bias.

    Differences from NATTEN 0.21: ``kernel_size=1`` is allowed (NATTEN asks for >= 2);
    ``qk_scale`` must be ``None`` or > 0 (NATTEN reads 0 as ``None``); the keyword ``backend``
    picks the foveate backend; ``stride <= kernel_size`` is checked when the module is built,
    ``kernel_size * dilation`` against the input in ``forward`` (as NATTEN does).

    Args:
        na_dim: the number of spatial axes, 1 to 3.
        embed_dim: channels ``C`` of the input, ``num_heads * head_dim``.
        num_heads: attention heads; must divide ``embed_dim``.
        kernel_size: window size per axis (an int: every axis).
        stride: per axis; queries in a run of ``stride`` share one window. ``1 <= stride <=
            kernel_size``.
        dilation: per axis; a query sees only keys ``dilation`` apart from it.
        is_causal: per axis; keys at or before the query only.
        qkv_bias: a bias in the ``qkv`` projection.
        qk_scale: factor on ``q @ k^T``; ``None`` is ``head_dim ** -0.5``.
        proj_drop: dropout probability after the output projection.
        backend: as in :func:`foveate.attention`.
    """

    def __init__(
        self,
        na_dim: int,
        embed_dim: int,
        num_heads: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        dilation: int | tuple[int, ...] = 1,
        is_causal: bool | tuple[bool, ...] = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        backend: str = "auto",
    ):
        if not is_int(na_dim) or not 1 <= na_dim <= 3:
            raise ValueError(f"na_dim must be 1, 2 or 3, got {na_dim!r}")
        na_dim = int(na_dim)
        kernel_size = _per_axis("kernel_size", kernel_size, na_dim)
        stride = _per_axis("stride", stride, na_dim)
        dilation = _per_axis("dilation", dilation, na_dim)
        is_causal = _per_axis("is_causal", is_causal, na_dim, kind=bool)
        if any(s > w for s, w in zip(stride, kernel_size)):
            raise ValueError(f"stride={stride} must not exceed kernel_size={kernel_size} on any axis")
        super().__init__(embed_dim, num_heads, qkv_bias, qk_scale, proj_drop, backend)
        self.na_dim = na_dim
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.is_causal = is_causal

    def pattern_for(self, spatial: tuple[int, ...]) -> Neighborhood:
        """The :class:`~foveate.patterns.Neighborhood` this module attends with on an input of
        spatial shape ``spatial``."""
        spatial = tuple(int(n) for n in spatial)
        if len(spatial) != self.na_dim:
            raise ValueError(f"spatial must have {self.na_dim} axes, got {spatial}")
        for a, (n, w, d) in enumerate(zip(spatial, self.kernel_size, self.dilation)):
            if w * d > n:
                raise ValueError(
                    f"{type(self).__name__}: kernel_size={self.kernel_size} with dilation={self.dilation} does "
                    f"not fit the input's spatial shape {spatial}: kernel_size * dilation must be <= the size of "
                    f"every axis (axis {a}: {w} * {d} > {n})"
                )
        return Neighborhood(canvas=spatial, kernel=self.kernel_size, dilation=self.dilation,
                            stride=self.stride, causal=self.is_causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, *spatial, C)`` with ``na_dim`` spatial axes; returns the same shape."""
        self._check_input(x, self.na_dim + 2, _AXES[self.na_dim])
        spatial = tuple(x.shape[1:-1])
        pattern = self.pattern_for(spatial)
        q, k, v = self._project(x, math.prod(spatial))
        out = attention(q, k, v, pattern, scale=self.scale, backend=self.backend)
        return self._output(out, x.shape)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, dilation={self.dilation}, is_causal={self.is_causal}, "
                f"backend={self.backend!r}")


class NeighborhoodAttention1D(NeighborhoodAttentionGeneric):
    """1-D neighborhood attention with NATTEN 0.21's interface: input and output ``(B, L, C)``.

    NATTEN's neighborhoods and parameters; see :class:`NeighborhoodAttentionGeneric` for the
    exact window, the parameter layout and the few differences from NATTEN.
    Args:
        embed_dim: channels ``C``, ``num_heads * head_dim``.
        num_heads: attention heads; must divide ``embed_dim``.
        kernel_size: window size, ``kernel_size * dilation <= L``.
        stride: queries in a run of ``stride`` share one window; ``1 <= stride <= kernel_size``
            (``stride == kernel_size``: blocked attention).
        dilation: a query sees keys ``dilation`` apart.
        is_causal: keys at or before the query only.
        qkv_bias: a bias in the ``qkv`` projection.
        qk_scale: factor on ``q @ k^T``; ``None`` is ``head_dim ** -0.5``.
        proj_drop: dropout probability after the output projection.
        backend: as in :func:`foveate.attention` (``"auto"``, ``"triton"``, ``"flex"``,
            ``"torch"``, ``"reference"``).

    Raises:
        TypeError, ValueError: on bad arguments (here, or in ``forward`` for a bad input),
            naming the argument.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kernel_size: int | tuple[int],
        stride: int | tuple[int] = 1,
        dilation: int | tuple[int] = 1,
        is_causal: bool | tuple[bool] = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        backend: str = "auto",
    ):
        super().__init__(1, embed_dim, num_heads, kernel_size, stride, dilation, is_causal, qkv_bias, qk_scale,
                         proj_drop, backend=backend)


class NeighborhoodAttention2D(NeighborhoodAttentionGeneric):
    """2-D neighborhood attention with NATTEN 0.21's interface: input and output ``(B, X, Y, C)``.

    NATTEN's neighborhoods and parameters; see :class:`NeighborhoodAttentionGeneric` for the
    exact window, the parameter layout and the few differences from NATTEN.
    Args:
        embed_dim: channels ``C``, ``num_heads * head_dim``.
        num_heads: attention heads; must divide ``embed_dim``.
        kernel_size: window shape ``(kx, ky)`` (an int: both axes); ``kernel_size * dilation``
            at most ``(X, Y)``.
        stride: per axis, queries in a run of ``stride`` share one window; ``1 <= stride <=
            kernel_size`` (``stride == kernel_size``: Swin-style blocked windows).
        dilation: per axis, a query sees keys ``dilation`` apart.
        is_causal: per axis, keys at or before the query only.
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
        from foveate.nn import NeighborhoodAttention2D

        na = NeighborhoodAttention2D(embed_dim=128, num_heads=4, kernel_size=7, dilation=2)
        # natten_na = natten.NeighborhoodAttention2D(128, 4, kernel_size=7, dilation=2)
        na.load_state_dict(natten_na.state_dict())       # the same keys and shapes
        y = na(torch.randn(2, 32, 32, 128))              # (2, 32, 32, 128)
        ```
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        is_causal: bool | tuple[bool, bool] = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        backend: str = "auto",
    ):
        super().__init__(2, embed_dim, num_heads, kernel_size, stride, dilation, is_causal, qkv_bias, qk_scale,
                         proj_drop, backend=backend)


class NeighborhoodAttention3D(NeighborhoodAttentionGeneric):
    """3-D neighborhood attention with NATTEN 0.21's interface: input and output
    ``(B, X, Y, Z, C)`` (video: ``(B, T, H, W, C)``).

    NATTEN's neighborhoods and parameters; see :class:`NeighborhoodAttentionGeneric` for the
    exact window, the parameter layout and the few differences from NATTEN.
    Args:
        embed_dim: channels ``C``, ``num_heads * head_dim``.
        num_heads: attention heads; must divide ``embed_dim``.
        kernel_size: window shape ``(kx, ky, kz)`` (an int: every axis); ``kernel_size *
            dilation`` at most ``(X, Y, Z)``.
        stride: per axis, queries in a run of ``stride`` share one window; ``1 <= stride <=
            kernel_size``.
        dilation: per axis, a query sees keys ``dilation`` apart.
        is_causal: per axis, keys at or before the query only (``(True, False, False)``:
            causal in time).
        qkv_bias: a bias in the ``qkv`` projection.
        qk_scale: factor on ``q @ k^T``; ``None`` is ``head_dim ** -0.5``.
        proj_drop: dropout probability after the output projection.
        backend: as in :func:`foveate.attention` (``"auto"``, ``"triton"``, ``"flex"``,
            ``"torch"``, ``"reference"``).

    Raises:
        TypeError, ValueError: on bad arguments (here, or in ``forward`` for a bad input),
            naming the argument.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        dilation: int | tuple[int, int, int] = 1,
        is_causal: bool | tuple[bool, bool, bool] = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        backend: str = "auto",
    ):
        super().__init__(3, embed_dim, num_heads, kernel_size, stride, dilation, is_causal, qkv_bias, qk_scale,
                         proj_drop, backend=backend)
