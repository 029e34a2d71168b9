"""foveate attention inside diffusers' video transformers, through attention processors.

``apply(transformer, pattern)`` replaces the attention processor of each chosen video
self-attention layer by one that does exactly what diffusers' own processor does (the same
projections, norms, rotary embedding and output projection, with diffusers' own helpers)
except the attention itself, which becomes :func:`foveate.attention` (or
:func:`foveate.nn.joint.joint_attention` where text tokens share the sequence). The latent
canvas ``(T, H, W)`` in tokens after patching is read from the transformer's input by a
forward pre-hook, so a pattern may be a factory of the canvas::

    from foveate import patterns as P
    from foveate.integrations import diffusers as fd

    handle = fd.apply(pipe.transformer, lambda canvas: P.Neighborhood(canvas, (3, 7, 7)),
                      layers=lambda i: i >= 2)          # the first two layers stay dense
    video = pipe(prompt).frames
    handle.remove()                                     # diffusers' processors again

Supported (layers numbered in the order the model runs them):

* ``WanTransformer3DModel``: ``blocks[i].attn1``; the cross-attention ``attn2`` (with the I2V
  image context) keeps its processor. Wan 2.2's two experts (``pipe.transformer``,
  ``pipe.transformer_2``) are two models: apply to each.
* ``HunyuanVideoTransformer3DModel``: the dual-stream ``transformer_blocks[i].attn``, then the
  single-stream ``single_transformer_blocks[j].attn``; video tokens then text tokens, the text
  global; the text padding mask (``encoder_attention_mask``) is honoured.
* ``CogVideoXTransformer3DModel`` (1.0 and 1.5, fused projections or not):
  ``transformer_blocks[i].attn1``; text tokens then video tokens, the text global.
* ``LTXVideoTransformer3DModel``: ``transformer_blocks[i].attn1`` (``attn2`` keeps its
  processor); the canvas is the forward's ``num_frames, height, width``.

Each of them flattens its patches in raster order ``(T, H, W)``, the order of foveate's
canvases. diffusers is imported only when :func:`apply` is called.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Union

import torch

from ...patterns.base import Pattern
from .processors import (CanvasState, CogVideoXProcessor, FoveateProcessor, HunyuanVideoProcessor, LTXProcessor,
                         WanProcessor)

#: What a layer runs: a pattern, a factory ``canvas -> pattern``, or ``None`` (diffusers' processor).
PatternSpec = Union[Pattern, Callable[[tuple], Pattern], None]
#: Which layers: ``None`` (all), a predicate, a collection of indices, or ``{index: PatternSpec}``.
LayerSpec = Union[None, Callable[[int], bool], "list[int]", Mapping[int, PatternSpec]]

__all__ = ["apply", "Handle", "CanvasState", "FoveateProcessor", "WanProcessor", "HunyuanVideoProcessor", "CogVideoXProcessor",
           "LTXProcessor"]


# -- the models ------------------------------------------------------------------------------------
class _Family:
    """How one diffusers model class is integrated: its layers, their processors, its canvas."""

    def __init__(self, name, cls, modules, originals, make, canvas, canvas_help):
        self.name, self.cls, self.modules, self.originals = name, cls, modules, originals
        self.make, self._canvas, self.canvas_help = make, canvas, canvas_help
        self._signature = None

    def canvas(self, model, args, kwargs) -> tuple[int, ...] | None:
        if self._signature is None:
            self._signature = inspect.signature(model.forward)
        try:
            arguments = self._signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return None  # the model's forward raises its own error
        return self._canvas(model.config, arguments)


def _video_canvas(x, p_t: int, p: int | tuple[int, int], frames_axis: int):
    """Tokens per axis after patching a ``(B, C, F, H, W)`` (``frames_axis=2``) or ``(B, F, C, H, W)``
    (``frames_axis=1``) latent, as the models' patch embeddings floor them."""
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        return None
    p_h, p_w = (p, p) if isinstance(p, int) else p
    return (int(x.shape[frames_axis]) // p_t, int(x.shape[3]) // p_h, int(x.shape[4]) // p_w)


def _wan_canvas(config, a):
    p_t, p_h, p_w = config.patch_size
    return _video_canvas(a.get("hidden_states"), p_t, (p_h, p_w), 2)


def _hunyuan_canvas(config, a):
    return _video_canvas(a.get("hidden_states"), config.patch_size_t, config.patch_size, 2)


def _cogvideox_canvas(config, a):
    return _video_canvas(a.get("hidden_states"), config.patch_size_t or 1, config.patch_size, 1)


def _ltx_canvas(config, a):
    # LTX takes packed tokens (B, N, C), in the order of LTXPipeline._pack_latents: (F, H, W)
    # raster; its rotary grid is built from num_frames, height, width, the token canvas.
    dims = (a.get("num_frames"), a.get("height"), a.get("width"))
    return None if any(d is None for d in dims) else tuple(int(d) for d in dims)


def _families() -> list[_Family]:
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0
    from diffusers.models.transformers import cogvideox_transformer_3d as cog
    from diffusers.models.transformers import transformer_hunyuan_video as hv
    from diffusers.models.transformers import transformer_ltx as ltx
    from diffusers.models.transformers import transformer_wan as wan

    return [
        _Family("Wan", wan.WanTransformer3DModel, lambda m: [b.attn1 for b in m.blocks], (wan.WanAttnProcessor,),
                WanProcessor, _wan_canvas, "hidden_states must be (B, C, F, H, W)"),
        _Family("HunyuanVideo", hv.HunyuanVideoTransformer3DModel,
                lambda m: [b.attn for b in m.transformer_blocks] + [b.attn for b in m.single_transformer_blocks],
                (hv.HunyuanVideoAttnProcessor2_0,), HunyuanVideoProcessor, _hunyuan_canvas,
                "hidden_states must be (B, C, F, H, W)"),
        _Family("CogVideoX", cog.CogVideoXTransformer3DModel, lambda m: [b.attn1 for b in m.transformer_blocks],
                (CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0),
                lambda state, spec, i, orig: CogVideoXProcessor(
                    state, spec, i, orig, fused=isinstance(orig, FusedCogVideoXAttnProcessor2_0)),
                _cogvideox_canvas, "hidden_states must be (B, F, C, H, W)"),
        _Family("LTX", ltx.LTXVideoTransformer3DModel, lambda m: [b.attn1 for b in m.transformer_blocks],
                (ltx.LTXVideoAttnProcessor,), LTXProcessor, _ltx_canvas,
                "pass num_frames, height and width, the token canvas, to the transformer's forward"),
    ]


# -- apply / remove --------------------------------------------------------------------------------
class Handle:
    """What :func:`apply` installed on one transformer; :meth:`remove` undoes it (also as a
    context manager: ``with apply(...):``)."""

    def __init__(self, transformer, state: CanvasState, hook, installed):
        self.transformer = transformer
        self._state, self._hook, self._installed = state, hook, installed

    @property
    def layers(self) -> dict[int, Any]:
        """Layer index -> its pattern (or pattern factory), for the layers foveate runs."""
        return {proc.layer: proc.spec for _, _, proc in self._installed}

    @property
    def canvas(self) -> tuple[int, ...] | None:
        """The latent canvas ``(T, H, W)`` in tokens of the last forward (``None`` before one)."""
        return self._state.canvas

    @property
    def active(self) -> bool:
        return self._hook is not None

    def remove(self) -> None:
        """Restore the original processors and remove the hook (a second call does nothing). A
        layer whose processor was replaced since by someone else keeps that one."""
        if self._hook is None:
            return
        for module, original, ours in self._installed:
            if module.processor is ours:
                module.set_processor(original)
        self._hook.remove()
        self._hook = None
        self._state.patterns.clear()
        self._state.mask = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def __repr__(self):
        state = "active" if self.active else "removed"
        return f"Handle({type(self.transformer).__name__}, {len(self._installed)} layers, {state})"


def _check_spec(name: str, spec) -> None:
    if spec is None or isinstance(spec, Pattern):
        return
    if not callable(spec) or isinstance(spec, type):
        raise TypeError(f"{name} must be a foveate pattern, a function canvas -> pattern, or None (dense), got "
                        f"{type(spec).__name__} {spec!r}")


def _choose(layers, pattern, n: int) -> dict[int, Any]:
    """Layer index -> pattern spec (None: the layer keeps diffusers' processor)."""

    def index(i):
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise TypeError(f"layers: layer indices must be ints, got {type(i).__name__} {i!r}")
        i = int(i.__index__())
        if not 0 <= i < n:
            raise ValueError(f"layers: layer index {i} is out of range: the model has {n} attention layers "
                             f"(0..{n - 1})")
        return i

    if layers is None:
        return {i: pattern for i in range(n)}
    if isinstance(layers, dict):
        chosen = {i: pattern for i in range(n)}
        for i, spec in layers.items():
            j = index(i)
            _check_spec(f"layers[{j}]", spec)
            chosen[j] = spec
        return chosen
    if isinstance(layers, Pattern) or isinstance(layers, (str, bytes)):
        raise TypeError(f"layers must be None, a predicate layer -> bool, a collection of layer indices or a dict "
                        f"layer -> pattern, got {type(layers).__name__}")
    if callable(layers):
        chosen = {}
        for i in range(n):
            take = layers(i)
            if not isinstance(take, (bool, int)) and type(take).__name__ != "bool_":  # (NumPy's bool)
                raise TypeError(f"layers: the predicate returned {type(take).__name__} for layer {i}, expected a bool")
            if take:
                chosen[i] = pattern
        return chosen
    try:
        items = list(layers)
    except TypeError:
        raise TypeError(f"layers must be None, a predicate layer -> bool, a collection of layer indices or a dict "
                        f"layer -> pattern, got {type(layers).__name__}") from None
    return {index(i): pattern for i in items}


def apply(transformer: torch.nn.Module, pattern: PatternSpec, *, layers: LayerSpec = None,
          backend: str = "auto") -> Handle:
    """Run the video self-attention of a diffusers transformer through foveate.

    Args:
        transformer: a ``WanTransformer3DModel``, ``HunyuanVideoTransformer3DModel``,
            ``CogVideoXTransformer3DModel`` or ``LTXVideoTransformer3DModel`` (one model: apply to
            each of Wan 2.2's ``transformer`` and ``transformer_2``).
        pattern: the pattern of the video tokens: a foveate pattern, a function of the latent
            canvas ``(T, H, W)`` in tokens (called once per canvas, e.g.
            ``lambda canvas: P.Neighborhood(canvas, (3, 7, 7))``), or ``None`` (the layer keeps
            diffusers' processor: dense). Text tokens, where the model has them in the same
            attention, are global: they see and are seen by every token.
        layers: which attention layers (numbered in the order the model runs them; HunyuanVideo:
            dual-stream blocks, then single-stream) get ``pattern``: ``None`` all; a predicate
            ``layer -> bool``; a collection of indices; or a dict ``layer -> pattern`` (a pattern,
            a factory or ``None``) that overrides ``pattern`` for those layers. Layers not chosen
            keep diffusers' processors.
        backend: as in :func:`foveate.attention`.

    Returns:
        a :class:`Handle`; ``handle.remove()`` restores the original processors.

    Raises:
        TypeError: a bad argument, named (nothing installed).
        ValueError: a bad argument, named (nothing installed); at forward time, what a processor
            cannot honour (an attention mask other than HunyuanVideo's text padding, a sequence
            that is not the canvas, context parallelism).
    """
    from ... import backends

    if not isinstance(transformer, torch.nn.Module):
        raise TypeError(f"transformer must be a diffusers video transformer, got {type(transformer).__name__}")
    families = _families()
    family = next((f for f in families if isinstance(transformer, f.cls)), None)
    if family is None:
        raise TypeError(f"transformer must be one of {[f.cls.__name__ for f in families]}, got "
                        f"{type(transformer).__name__}")
    _check_spec("pattern", pattern)
    if backends.check_name(backend) != "auto":
        if not backends.get(backend).available():
            raise ValueError(f"backend={backend!r} cannot run on this machine: "
                             f"{backends.get(backend).unavailable_reason()}")
    modules = family.modules(transformer)
    chosen = {i: spec for i, spec in _choose(layers, pattern, len(modules)).items() if spec is not None}
    for i, module in enumerate(modules):
        proc = module.processor
        if isinstance(proc, FoveateProcessor):
            raise ValueError(f"transformer: foveate is already applied (layer {i}); remove() its handle first")
        if i in chosen and type(proc) not in family.originals:
            raise TypeError(f"transformer: layer {i} has the processor {type(proc).__name__}; foveate replaces "
                            f"{' or '.join(c.__name__ for c in family.originals)} only")
    state = CanvasState(family, backend)
    installed = []
    for i, spec in sorted(chosen.items()):
        module = modules[i]
        original = module.processor
        ours = family.make(state, spec, i, original)
        module.set_processor(ours)
        installed.append((module, original, ours))
    hook = transformer.register_forward_pre_hook(state.pre_hook, with_kwargs=True)
    return Handle(transformer, state, hook, installed)
