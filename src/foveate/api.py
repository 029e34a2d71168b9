"""``attention()``: validate, resolve the pattern and the backend, forward."""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from . import backends
from .backends import Problem
from .graph_constants import pattern_from_key, pattern_key
from .patterns import Dense, Pattern, SelectedBlocks
from .score_mods import ScoreMod
from .score_mods.resolve import as_score_mod, check_score_mod, fold_low_rank
from .simulator import choose_tile


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | None = None,
    *,
    score_mod: "ScoreMod | Callable[..., torch.Tensor] | None" = None,
    scale: float | None = None,
    backend: str = "auto",
    tile: str | tuple[int, ...] | None = "auto",
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention restricted to the (query, key) pairs that ``pattern`` allows.

    Args:
        q: ``(B, Hq, Nq, D)``; for a canvas pattern also ``(B, Hq, *canvas, D)``.
        k: ``(B, Hkv, Nkv, D)`` (or ``(B, Hkv, *canvas, D)`` without ``extra_kv``),
            ``Hq % Hkv == 0`` (grouped-query attention).
        v: like ``k`` with its own last dim ``Dv``.
        pattern: a :mod:`foveate.patterns` pattern; ``None`` is dense attention.
        score_mod: a change of the scaled scores before the mask and the softmax: a
            :mod:`foveate.score_mods` modification (``Softcap``, ``ALiBi``, ``DistanceDecay``,
            ``RelativePositionBias``, ``LowRankBias``, ``DenseBias``, chained with ``+``) or a
            FlexAttention-style function ``fn(score, b, h, q_idx, kv_idx)``; its tensors receive
            gradients. ``LowRankBias`` runs on every backend (as extra features); ``Softcap``,
            ``ALiBi``, 1-D ``DistanceDecay`` and ``DenseBias`` also on ``triton``; all on
            ``reference`` and ``flex``.
        scale: factor on ``q @ k^T``; defaults to ``D ** -0.5``.
        backend: ``"auto"`` (best that runs here), ``"triton"``, ``"flex"`` or ``"reference"``;
            see :func:`foveate.backends.available`.
        tile: token tiling of multi-dimensional canvases: ``"auto"`` (chosen by the
            simulator), ``None`` (raster order) or a tile shape. Inputs and outputs are
            always in the caller's order. Content-selected patterns on a canvas take their
            token order from their ``partition`` instead (a tile shape is refused).
        return_lse: also return the log-sum-exp of the scaled scores.

    Returns:
        ``out`` with the layout of ``q`` and last dim ``Dv``, in ``q.dtype``; with
            ``return_lse``, also ``lse`` of shape ``q.shape[:-1]``, float32, natural log.
            A query with no allowed key gets output 0 and lse ``-inf``.

    Raises:
        TypeError, ValueError: on bad input, naming the argument; nothing is computed.
    """
    if pattern is None:
        pattern = Dense()
    elif not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a foveate pattern or None, got {type(pattern).__name__}")
    if pattern.content_dependent and torch.compiler.is_compiling():
        # The selection launches kernels on q and k and builds a layout per call: it runs
        # eagerly, a graph break (static patterns are traced: their layouts become constants).
        return _attention_eagerly(q, k, v, pattern, scale=scale, backend=backend, tile=tile, return_lse=return_lse,
                                  score_mod=score_mod)
    _check_tensors(q, k, v)
    qf, kf, vf = (_flatten(name, t, pattern) for name, t in (("q", q), ("k", k), ("v", v)))
    _check_shapes(qf, kf, vf, pattern)
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__} {return_lse!r}")
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__} {backend!r}")
    scale = _resolve_scale(scale, qf.shape[-1])
    tile = _tile_argument(tile, pattern)
    score_mod = as_score_mod(score_mod)
    if score_mod is not None:
        check_score_mod(score_mod, qf, kf, pattern)
        qf, kf, vf, scale, score_mod = fold_low_rank(score_mod, qf, kf, vf, scale)
    order = None
    if pattern.content_dependent:
        # A canvas partition: select and attend in its tiled order (padded), back at the end.
        order = getattr(pattern, "order", None)
        if order is not None:
            qf, kf, vf = (order.tile_tokens(t) for t in (qf, kf, vf))
        # Selected from these inputs, without autograd; the result is an ordinary pattern.
        pattern = pattern.select(qf, kf, scale=scale, ordered=True)
    if isinstance(pattern, SelectedBlocks):
        pattern = pattern.runnable

    batch, heads_q, q_len, head_dim = qf.shape
    problem = Problem(
        batch=batch, heads_q=heads_q, heads_kv=kf.shape[1], q_len=q_len, kv_len=kf.shape[2],
        head_dim=head_dim, head_dim_v=vf.shape[-1], dtype=q.dtype, device=q.device,
        requires_grad=torch.is_grad_enabled() and any(
            t.requires_grad for t in (qf, kf, vf, *(score_mod.parameters() if score_mod is not None else ()))),
        return_lse=return_lse, pattern=pattern, score_mod=score_mod,
    )
    chosen = backends.select(problem, backend)
    tile = _resolve_tile(tile, pattern, chosen)
    if tile is None:
        out, lse = chosen.forward(qf, kf, vf, problem, scale)
    else:
        out, lse = chosen.forward_tiled(qf, kf, vf, problem, scale, tile)
    if order is not None:
        out, lse = order.untile_tokens(out), (order.untile_tokens(lse) if lse is not None else None)
    out = out.reshape(*q.shape[:-1], vf.shape[-1])
    if return_lse:
        return out, lse.reshape(q.shape[:-1])
    return out


_attention_eagerly = torch.compiler.disable(attention)


def _check_tensors(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}.dtype must be a floating-point type, got {t.dtype}")
        if t.is_sparse or t.is_nested:
            raise TypeError(f"{name} must be a dense tensor")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}.dtype={t.dtype} must match q.dtype={q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}: all must be on one device")


def _flatten(name: str, t: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """``(B, H, *canvas, D)`` -> ``(B, H, N, D)``; flat tensors are returned as they are."""
    canvas = pattern.canvas
    if t.dim() == 4:
        flat = t
    elif canvas is not None and len(canvas) > 1 and t.dim() == 3 + len(canvas):
        if name != "q" and pattern.extra_kv:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}: with extra_kv={pattern.extra_kv}, k and v must "
                f"be flat (B, H, prod(canvas) + extra_kv, D)"
            )
        if tuple(t.shape[2:-1]) != tuple(canvas):
            raise ValueError(
                f"{name} has canvas axes {tuple(t.shape[2:-1])} but the pattern's canvas is {canvas}"
            )
        flat = t.flatten(2, -2)
    else:
        shapes = "(B, H, N, D)"
        if canvas is not None and len(canvas) > 1:
            shapes += f" or (B, H, {', '.join(map(str, canvas))}, D)"
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(t.shape)} ({t.dim()} dims)")
    if 0 in flat.shape:
        raise ValueError(f"{name} has an empty dimension: shape {tuple(t.shape)}")
    return flat


def _check_shapes(q, k, v, pattern: Pattern) -> None:
    (bq, hq, nq, dq), (bk, hk, nk, dk), (bv, hv, nv, _) = q.shape, k.shape, v.shape
    if bk != bq or bv != bq:
        raise ValueError(f"batch sizes differ: q has {bq}, k has {bk}, v has {bv}")
    if hv != hk:
        raise ValueError(f"v has {hv} heads but k has {hk}")
    if hq % hk:
        raise ValueError(f"q has {hq} heads, not a multiple of the {hk} heads of k (Hq % Hkv must be 0)")
    if nv != nk:
        raise ValueError(f"v has {nv} tokens but k has {nk}")
    if dk != dq:
        raise ValueError(f"k has head dim {dk} but q has {dq}")
    expected = pattern.default_lengths()
    if expected is not None:
        for name, got, want in (("q", nq, expected[0]), ("k", nk, expected[1])):
            if got != want:
                raise ValueError(
                    f"{name} has {got} tokens but {pattern!r} needs {want} "
                    f"(prod(canvas){' + extra_kv' if name == 'k' and pattern.extra_kv else ''})"
                )
    pattern.check_lengths(nq, nk)
    pattern.check_batch_heads(bq, hq)


def _resolve_scale(scale, head_dim: int) -> float:
    if scale is None:
        return head_dim ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return float(scale)


def _tile_argument(tile, pattern: Pattern):
    """``tile`` checked: ``None``, ``"auto"`` or a tuple of Python ints (from any sequence of
    ints: a list, a NumPy array)."""
    if tile is None:
        return None
    if isinstance(tile, str):
        if tile == "auto":
            return tile
        raise ValueError(f"tile={tile!r}: expected 'auto', None or a tuple of ints")
    try:
        shape = tuple(tile)
    except TypeError:
        raise TypeError(f"tile={tile!r}: expected 'auto', None or a tuple of ints, got a {type(tile).__name__}") from None
    pattern._check_tile(shape)
    return tuple(int(t) for t in shape)


def _resolve_tile(tile, pattern: Pattern, backend) -> tuple[int, ...] | None:
    """The tile shape to run with (``None`` = raster order). An explicit tile is always
    applied; ``"auto"`` tiles only for backends that walk a block layout."""
    if tile is None:
        return None
    if tile == "auto":
        if not backend.uses_layout or pattern.canvas is None or len(pattern.canvas) < 2:
            return None
        if torch.compiler.is_compiling():
            return _traced_choose_tile(pattern_key(pattern), backend.block_size)
        return choose_tile(pattern, block_q=backend.block_size, block_kv=backend.block_size)
    tile = tuple(tile)
    if backend.uses_layout and math.prod(tile) != backend.block_size:
        raise ValueError(
            f"tile={tile} holds {math.prod(tile)} tokens; the {backend.name} backend runs blocks of "
            f"{backend.block_size} tokens, so a tile must hold exactly that many"
        )
    return tile


@torch.compiler.assume_constant_result
def _traced_choose_tile(key: tuple, block: int) -> tuple[int, ...] | None:
    """:func:`choose_tile` under ``torch.compile`` for the pattern of ``key``
    (:func:`~foveate.graph_constants.pattern_key`): run when the graph is traced (the
    simulator builds layouts), a constant of the graph."""
    return choose_tile(pattern_from_key(key), block_q=block, block_kv=block)
