"""timm vision transformers with foveate attention over the patch grid.

:class:`Attention` is a drop-in subclass of ``timm.layers.Attention`` (the same parameters under
the same names: pretrained weights load unchanged) whose attention runs
:func:`foveate.attention` with a pattern over the patch grid. timm's prefix tokens (the class
token and the register tokens, first in the sequence) are extra tokens that every patch sees and
that see everything (:func:`foveate.nn.joint.joint_attention`). Two ways in:

```python
import timm
from foveate import patterns as P
from foveate.integrations import timm as ft

# a new model: the class as timm's attn_layer, then bind() (prefix tokens and patch grid)
model = timm.create_model("vit_base_patch16_224", attn_layer=ft.Attention.with_pattern(
    lambda grid: P.Neighborhood(grid, 7)))
ft.bind(model)

# an existing model (pretrained or not): swap its attention in place, parameters kept
model = ft.apply(timm.create_model("vit_base_patch16_224", pretrained=True),
                 lambda grid: P.Neighborhood(grid, 7))
```

The pattern is a function of the patch grid ``(H, W)`` (called once per grid, the result kept), a
fixed :class:`~foveate.patterns.Pattern`, or ``None``: dense attention, equal to timm's. The grid
is recorded on every forward by a hook on the model's ``patch_embed`` (installed by :func:`bind`),
so ``dynamic_img_size=True`` models get each input's own grid. ``import foveate`` does not import
timm; this module does.
"""

from __future__ import annotations

import copyreg
from typing import Callable, Optional, Sequence, Union

import torch
from timm.layers import Attention as TimmAttention
from torch import nn

from .. import backends as _backends
from ..api import attention
from ..nn.joint import joint_attention
from ..patterns.base import Pattern
from ..patterns.causal import Causal
from ..score_mods import DenseBias

__all__ = ["Attention", "apply", "bind", "PatternSpec"]

PatternSpec = Union[Pattern, Callable[[tuple[int, int]], Optional[Pattern]], None]
"""A pattern over the patch grid: a function ``grid -> Pattern | None`` of the grid ``(H, W)``,
a fixed :class:`~foveate.patterns.Pattern` over the ``H * W`` patch tokens, or ``None`` (dense)."""


def _check_pattern_spec(pattern) -> None:
    if pattern is None or isinstance(pattern, Pattern):
        return
    if isinstance(pattern, type) or not callable(pattern):
        raise TypeError("pattern must be a foveate Pattern, a function of the patch grid (H, W) returning one "
                        f"(or None), or None; got {pattern!r}")


class _PatchGrid:
    """The patch grid of the latest input and the model's prefix-token count, shared by a model's
    foveate attention modules. It is the forward hook on ``patch_embed`` that records the grid
    (an object, not a closure: a deep copy of the model, e.g. an EMA copy, gets its own, hooked
    to its own ``patch_embed``)."""

    def __init__(self, num_prefix_tokens: int, grid: tuple[int, int] | None):
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = grid

    def __call__(self, module: nn.Module, args: tuple, output) -> None:
        grid = _grid_of(module, args, output)
        if grid is not None:
            self.grid = grid


def _grid_of(patch_embed: nn.Module, args: tuple, output) -> tuple[int, int] | None:
    """The patch grid of one ``patch_embed`` call: from a 4-D output (``NHWC``, as
    ``dynamic_img_size=True`` models have it, or ``NCHW``), else from the image's size through
    ``patch_embed.dynamic_feat_size`` (patch size, dynamic padding, a hybrid backbone's
    reduction), else ``patch_embed.grid_size``."""
    out = output[0] if isinstance(output, (tuple, list)) else output
    if isinstance(out, torch.Tensor) and out.dim() == 4:
        fmt = getattr(patch_embed, "output_fmt", "NCHW")
        fmt = getattr(fmt, "value", fmt)
        if fmt == "NHWC":
            return int(out.shape[1]), int(out.shape[2])
        if fmt == "NCHW":
            return int(out.shape[2]), int(out.shape[3])
    image = args[0] if args else None
    if isinstance(image, torch.Tensor) and image.dim() == 4 and hasattr(patch_embed, "dynamic_feat_size"):
        h, w = patch_embed.dynamic_feat_size((image.shape[-2], image.shape[-1]))
        return int(h), int(w)
    grid = getattr(patch_embed, "grid_size", None)
    return (int(grid[0]), int(grid[1])) if grid is not None else None


class _WithPattern(type(TimmAttention)):
    """The metaclass of :meth:`Attention.with_pattern`'s classes: they pickle as the call that made
    them (timm keeps ``attn_layer`` in ``model._model_args``, so a pickled model holds its class)."""


def _with_pattern(base: type, pattern, backend: str) -> type:
    return base.with_pattern(pattern, backend=backend)


copyreg.pickle(_WithPattern, lambda c: (_with_pattern, (c.__base__, c._pattern_defaults["pattern"],
                                                        c._pattern_defaults["backend"])))


class Attention(TimmAttention):
    """timm's multi-head self-attention with foveate attention over the patch grid.

    Constructed with timm's arguments (``VisionTransformer(attn_layer=...)`` and ``Block`` pass
    ``dim, num_heads, qkv_bias, qk_norm, scale_norm, proj_bias, attn_drop, proj_drop,
    norm_layer, device, dtype``), it has timm's parameters under timm's names (``qkv``,
    ``q_norm``, ``k_norm``, ``norm``, ``gate``, ``proj``): state dicts are interchangeable. Use
    :meth:`with_pattern` for ``attn_layer=``, then :func:`bind` on the model; or :func:`apply`
    on an existing model.

    ``forward(x, attn_mask=None, is_causal=False)`` takes ``x`` ``(B, N, C)`` with
    ``N = num_prefix_tokens + H * W`` (the prefix tokens first, then the patches in raster
    order) and returns ``(B, N, dim_out)``. The patches attend the pattern's patches and every
    prefix token; the prefix tokens attend every token. With the pattern ``None`` it is dense
    attention, timm's own result (to rounding).

    What timm's arguments and attributes become:

    - ``scale``: the factor on ``q . k`` (``head_dim ** -0.5``; a changed ``self.scale`` is
      used, where timm's fused path would ignore it);
    - ``fused_attn``: ``False`` (timm's explicit, unfused computation: ``TIMM_FUSED_ATTN=0``,
      exportable mode) runs ``backend="auto"`` on foveate's ``reference`` backend, plain
      PyTorch operations; a named backend is kept;
    - ``attn_drop``: the fused kernels cannot drop attention probabilities: in training mode a
      dropout probability above 0 raises ``RuntimeError`` (set ``attn_drop_rate=0``);
      ``proj_drop`` works as in timm;
    - ``attn_mask`` (bool: ``True`` = may attend; or float: added to the scores, broadcasting
      to ``(B, num_heads, N, N)``) and ``is_causal``: honoured with the pattern ``None``
      (the mask as a :class:`~foveate.score_mods.DenseBias`, causal as
      :class:`~foveate.patterns.Causal`); a query whose keys are all masked gets attention
      output 0 before ``proj`` (PyTorch's attention gives NaN). The ``torch`` backend takes no
      mask: ``auto`` then runs another. With a sparse pattern they raise ``ValueError``.

    Attributes:
        pattern: a :data:`PatternSpec` (may be reassigned).
        backend: the :func:`foveate.attention` backend (``"auto"``, ``"triton"``, ...).
    """

    _pattern_defaults: dict = {"pattern": None, "backend": "auto"}
    _is_pattern_factory = False

    def __init__(self, dim: int, num_heads: int = 8, *args, **kwargs) -> None:
        super().__init__(dim, num_heads, *args, **kwargs)
        defaults = type(self)._pattern_defaults
        cls = type(self)
        while cls.__dict__.get("_is_pattern_factory", False):  # (instances of with_pattern's classes
            cls = cls.__base__                                  # are plain modules of the class below)
        self.__class__ = cls
        self._init_foveate(defaults["pattern"], defaults["backend"])

    def _init_foveate(self, pattern: PatternSpec, backend: str) -> None:
        self.pattern = pattern
        self.backend = backend
        self._grid_source: _PatchGrid | None = None
        self._resolved: dict = {}

    @classmethod
    def with_pattern(cls, pattern: PatternSpec, *, backend: str = "auto") -> type:
        """A subclass to pass as timm's ``attn_layer=``, whose modules start with ``pattern``.

        timm's ``_create_attn`` requires a class (its ``issubclass`` check refuses a
        ``functools.partial``), so this returns one; the modules it builds are plain
        :class:`Attention` modules with ``pattern`` and ``backend`` set.

        Args:
            pattern: a :data:`PatternSpec`: ``lambda grid: P.Neighborhood(grid, 7)``, a fixed
                pattern, or ``None`` (dense).
            backend: the :func:`foveate.attention` backend.

        Returns:
            A subclass of :class:`Attention` (and so of ``timm.layers.Attention``).
        """
        _check_pattern_spec(pattern)
        _backends.check_name(backend)
        return _WithPattern(cls.__name__, (cls,), {
            "_pattern_defaults": {"pattern": pattern, "backend": backend},
            "_is_pattern_factory": True,
            "__module__": cls.__module__,
            "__qualname__": f"{cls.__qualname__}.with_pattern(...)",
            "__doc__": f"{cls.__name__} with pattern={pattern!r}, backend={backend!r} (see with_pattern)",
        })

    def extra_repr(self) -> str:
        return f"pattern={self.pattern!r}, backend={self.backend!r}"

    def _pattern_for(self, n_tokens: int) -> tuple[Pattern | None, int]:
        """The pattern over this input's patches and the number of prefix tokens before them."""
        spec = self.pattern
        _check_pattern_spec(spec)
        if spec is None:
            return None, 0
        source = self._grid_source
        if source is None:
            raise RuntimeError(
                "this foveate Attention does not know its model's prefix tokens and patch grid: call "
                "foveate.integrations.timm.bind(model) once after building the model (apply() does it)")
        grid, n_prefix = source.grid, source.num_prefix_tokens
        if grid is None:
            raise RuntimeError("no patch grid recorded yet: the model's patch_embed has not run, and it has no "
                               "grid_size")
        if n_tokens != n_prefix + grid[0] * grid[1]:
            raise ValueError(
                f"the attention got {n_tokens} tokens, but the model's input has {n_prefix} prefix tokens and a "
                f"{grid[0]}x{grid[1]} patch grid ({n_prefix + grid[0] * grid[1]} tokens): a sparse pattern needs "
                "every patch of the grid (patch dropout, or tokens added or removed after patch_embed, are not "
                "supported; the grid is that of the latest patch_embed call)")
        if isinstance(spec, Pattern):
            pattern = spec
        else:
            key = (spec, grid)
            if key not in self._resolved:
                pattern = spec(grid)
                if pattern is not None and not isinstance(pattern, Pattern):
                    raise TypeError(f"the pattern function returned {pattern!r} for the grid {grid}; expected a "
                                    "foveate Pattern or None")
                if len(self._resolved) >= 16:
                    self._resolved.clear()
                self._resolved[key] = pattern
            pattern = self._resolved[key]
        canvas = getattr(pattern, "canvas", None)
        if canvas is not None and tuple(canvas) != tuple(grid):
            raise ValueError(f"the pattern's canvas {tuple(canvas)} is not the patch grid {tuple(grid)}")
        return pattern, n_prefix

    def _mask_bias(self, attn_mask: torch.Tensor, batch: int, n: int, dtype: torch.dtype) -> torch.Tensor:
        """timm's ``attn_mask`` as an additive ``(B|1, H|1, N, N)`` bias."""
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a tensor, got {type(attn_mask).__name__}")
        if attn_mask.dim() > 4:
            raise ValueError(f"attn_mask must broadcast to (B, num_heads, N, N), got shape {tuple(attn_mask.shape)}")
        m = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
        target = (batch, self.num_heads, n, n)
        if any(s not in (1, t) for s, t in zip(m.shape, target)):
            raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to {target}")
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, float("-inf"))
        elif not m.is_floating_point():
            raise TypeError(f"attn_mask must be bool or floating-point, got {attn_mask.dtype}")
        return m.expand(m.shape[0], m.shape[1], n, n)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        """Self-attention of ``x`` ``(B, N, C)`` over the pattern; returns ``(B, N, dim_out)``."""
        if self.training and self.attn_drop.p > 0:
            raise RuntimeError(
                f"attention dropout (attn_drop p={self.attn_drop.p}) cannot run in foveate's fused attention: build "
                "the model with attn_drop_rate=0 (or set module.attn_drop.p = 0), or use eval mode")
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise ValueError(f"x must be a (B, N, C) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        B, N, C = x.shape
        pattern, n_prefix = self._pattern_for(N)
        if attn_mask is not None or is_causal:
            if pattern is not None:
                raise ValueError("attn_mask and is_causal are supported with the pattern None (dense) only; this "
                                 f"module's pattern is {pattern!r}")
            if attn_mask is not None and is_causal:
                raise ValueError("give attn_mask or is_causal, not both")
        backend = self.backend if (self.fused_attn or self.backend != "auto") else "reference"

        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)

        if is_causal:
            out = attention(q, k, v, Causal(), scale=self.scale, backend=backend)
        elif attn_mask is not None:
            bias = DenseBias(self._mask_bias(attn_mask, B, N, q.dtype))
            out = attention(q, k, v, None, score_mod=bias, scale=self.scale, backend=backend)
        elif pattern is None:
            out = attention(q, k, v, None, scale=self.scale, backend=backend)
        else:
            out = joint_attention(q, k, v, pattern, extra=n_prefix, extra_first=True, scale=self.scale,
                                  backend=backend)

        x = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


def _foveate_modules(model: nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def bind(model: nn.Module, *, num_prefix_tokens: int | None = None) -> nn.Module:
    """Tell the foveate attention modules of ``model`` its prefix tokens and patch grid.

    Installs a forward hook on ``model.patch_embed`` that records the patch grid of every input
    (each input's own with ``dynamic_img_size=True``), shared by the model's :class:`Attention`
    modules, and gives them ``model.num_prefix_tokens``. Binding again replaces the earlier hook.
    A deep copy of a bound model is bound to its own ``patch_embed``.

    Args:
        model: a timm vision transformer (``patch_embed``, ``num_prefix_tokens``: timm's
            ``VisionTransformer`` and the models built on it) whose attention modules are
            :class:`Attention`.
        num_prefix_tokens: the tokens before the patches; defaults to ``model.num_prefix_tokens``.

    Returns:
        ``model`` itself.
    """
    patch_embed = getattr(model, "patch_embed", None)
    if not isinstance(patch_embed, nn.Module):
        raise TypeError(f"model must have a patch_embed module (a timm vision transformer), got "
                        f"{type(model).__name__}")
    if num_prefix_tokens is None:
        num_prefix_tokens = getattr(model, "num_prefix_tokens", None)
        if num_prefix_tokens is None:
            raise TypeError(f"{type(model).__name__} has no num_prefix_tokens: pass num_prefix_tokens=")
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise TypeError(f"num_prefix_tokens must be a non-negative int, got {num_prefix_tokens!r}")
    modules = _foveate_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no foveate Attention modules: build it with "
                         "attn_layer=Attention.with_pattern(...), or use apply(model, pattern)")
    for key, hook in list(patch_embed._forward_hooks.items()):
        if isinstance(hook, _PatchGrid):
            del patch_embed._forward_hooks[key]
    grid = getattr(patch_embed, "grid_size", None)
    source = _PatchGrid(num_prefix_tokens, (int(grid[0]), int(grid[1])) if grid is not None else None)
    patch_embed.register_forward_hook(source)
    for m in modules:
        m._grid_source = source
    return model


def apply(model: nn.Module, pattern: PatternSpec, *, backend: str = "auto",
          layers: Sequence[int] | None = None) -> nn.Module:
    """Make the attention of an existing timm model foveate's, in place, and :func:`bind` it.

    Every ``timm.layers.Attention`` module (exactly that class; subclasses with their own
    forward are left alone) becomes an :class:`Attention` with ``pattern``: the modules keep
    their parameters (the same tensors: an optimizer built before still holds them) and the state
    dict is unchanged. Modules that already are :class:`Attention` get the new pattern.

    Args:
        model: a timm vision transformer (see :func:`bind`).
        pattern: a :data:`PatternSpec`; ``None`` gives back dense attention.
        backend: the :func:`foveate.attention` backend.
        layers: indices, in ``model.modules()`` order (``model.blocks[i].attn`` for a
            ``VisionTransformer``), of the attention modules to change; default all.

    Returns:
        ``model`` itself.
    """
    _check_pattern_spec(pattern)
    _backends.check_name(backend)
    found = [m for m in model.modules() if type(m) is TimmAttention or isinstance(m, Attention)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no timm.layers.Attention modules")
    if layers is None:
        chosen = found
    else:
        chosen = []
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, int) or not -len(found) <= i < len(found):
                raise ValueError(f"layers must hold indices of the model's {len(found)} attention modules, got {i!r}")
            chosen.append(found[i])
    for m in chosen:
        if not isinstance(m, Attention):
            m.__class__ = Attention
            m._init_foveate(pattern, backend)
        else:
            m.pattern, m.backend = pattern, backend
            m._resolved = {}
    return bind(model)
