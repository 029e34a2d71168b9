"""The Triton kernels as PyTorch custom operators, with autograd.

``torch.ops.foveate.sparse_attention`` (forward: ``out, lse``) and
``torch.ops.foveate.sparse_attention_backward`` (``dq, dk, dv``) take the layout as its index
tensors and the mask spec as a flat list of ints, so that ``torch.compile`` sees one opaque
operator (with a fake implementation for shapes) instead of tracing into Triton launches.
They run wherever the kernels run: CUDA, or the CPU under ``TRITON_INTERPRET=1``. Eager
calls (:func:`run_sparse_attention` outside ``torch.compile``) skip the operator dispatch and
call the same launchers through an ``autograd.Function``, or directly when no gradient is
recorded (inference).
"""

from __future__ import annotations

import functools
import operator
from types import SimpleNamespace

import torch

from ...graph_constants import pattern_from_key, pattern_key
from ...layout import LIST_FIELDS
from ...bitmask import PartialBitmask
from ...settings import policy
from .masks import MaskSpec


def _layout(block_q, block_kv, kv_num, kv_idx, full_num, full_idx, q_num=None, q_idx=None, full_q_num=None,
            full_q_idx=None, full_runs=None, row_blocks=None, bits=(None, None, None)):
    """The attributes of a BlockLayout that the launchers read (``bits``: the tensors of its
    :class:`~foveate.bitmask.PartialBitmask`, for a bitmask spec, or ``(token_ids, None, None)``
    for a spec that reads segment ids). A compiled graph passes the
    same constant tensors on every call: the namespace is kept for them (with what the
    launchers remember on it, such as the lists' strides)."""
    lists = (kv_num, kv_idx, full_num, full_idx, q_num, q_idx, full_q_num, full_q_idx, *bits)
    key = (block_q, block_kv, full_runs, row_blocks, *map(id, lists))
    known = _LAYOUTS.get(key)
    if known is not None and all(a is b for a, b in zip(known[0], lists)):
        return known[1]
    layout = SimpleNamespace(block_q=block_q, block_kv=block_kv, kv_num_blocks=kv_num, kv_indices=kv_idx,
                             full_kv_num_blocks=full_num, full_kv_indices=full_idx, q_num_blocks=q_num,
                             q_indices=q_idx, full_q_num_blocks=full_q_num, full_q_indices=full_q_idx,
                             full_runs=full_runs, row_blocks=row_blocks)
    if bits[0] is not None and bits[1] is None:
        layout.token_ids = bits[0]
    elif bits[0] is not None:
        partial = PartialBitmask(*bits)
        layout.partial_bitmask = lambda: partial
    _LAYOUTS[key] = (lists, layout)
    if len(_LAYOUTS) > 64:
        _LAYOUTS.pop(next(iter(_LAYOUTS)))
    return layout


_LAYOUTS: dict = {}


@functools.lru_cache(maxsize=256)
def _spec(mask: tuple) -> MaskSpec:
    return MaskSpec.from_ints(mask)


@torch.compiler.assume_constant_result
def _traced_plan(key: tuple, q_len: int, kv_len: int, block: int, device: torch.device, raster_io: bool,
                 force_bitmask: bool):
    """What a compiled graph holds as constants for a static pattern (given by its
    :func:`~foveate.graph_constants.pattern_key`) at these lengths: the cached layout's eight
    list tensors, the mask spec as ints, ``full_runs``, ``row_blocks`` (0: not known) and the
    three tensors of the partial bitmask (``None`` unless the spec reads bits; the segment ids
    and two ``None`` for a spec that reads ids). Run (not
    traced) by dynamo when the graph is traced: ``pattern.build`` is host code with
    data-dependent checks."""
    from ..base import cached_layout
    from .masks import eager_mask_spec, mask_ids

    pattern = pattern_from_key(key)
    layout = cached_layout(pattern, q_len, kv_len, block_q=block, block_kv=block, device=device)
    spec = eager_mask_spec(pattern, q_len, kv_len, raster_io, (block, block), force_bitmask)
    if spec.uses_ids:
        layout.token_ids = mask_ids(pattern, q_len, kv_len, device)
    return (tuple(getattr(layout, name) for name in LIST_FIELDS), tuple(spec.to_ints()), layout.full_runs is True,
            layout.row_blocks or 0.0, _bit_tensors(layout, spec))


def _bit_tensors(layout, spec: MaskSpec) -> tuple:
    """The operators' ``bit_*`` arguments: the layout's partial bitmask for a spec that reads
    one, its segment ids (then two ``None``) for a spec that reads ids, else three ``None``."""
    if spec.uses_ids:
        return layout.token_ids, None, None
    return layout.partial_bitmask().tensors if spec.uses_bits else (None, None, None)


def compiled_attention(q, k, v, pattern, q_len: int, kv_len: int, scale: float, block: int, *,
                       raster_io: bool = False):
    """``(out, lse)`` inside a ``torch.compile`` graph: the custom operator on the constants
    of :func:`_traced_plan` (``q_len``, ``kv_len``: the pattern's lengths, tiled ones under
    ``raster_io``). The graph is specialised on the lengths, so a new sequence length traces
    a new graph with its own layout."""
    # operator.index specialises a symbolic length (dynamo guards on it); int() would not
    lists, mask, full_runs, row_blocks, bits = _traced_plan(pattern_key(pattern), operator.index(q_len),
                                                            operator.index(kv_len), block, q.device, raster_io,
                                                            policy.force_bitmask)
    return torch.ops.foveate.sparse_attention(q, k, v, *lists, list(mask), float(scale), block, block, full_runs,
                                              row_blocks, *bits)


@torch.library.custom_op("foveate::sparse_attention", mutates_args=())
def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    kv_num: torch.Tensor, kv_idx: torch.Tensor, full_num: torch.Tensor, full_idx: torch.Tensor,
    q_num: torch.Tensor, q_idx: torch.Tensor, full_q_num: torch.Tensor, full_q_idx: torch.Tensor,
    mask: list[int], scale: float, block_q: int, block_kv: int, full_runs: bool = False, row_blocks: float = 0.0,
    bit_words: torch.Tensor | None = None, bit_rows: torch.Tensor | None = None, bit_cols: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention forward: ``out`` ``(B, Hq, Nq, Dv)``, ``lse`` ``(B, Hq, Nq)``.
    The transposed lists (``q_*``) are unused here and kept for the backward; ``full_runs``
    and ``row_blocks`` are the layout's :attr:`~foveate.layout.BlockLayout.full_runs` and
    :attr:`~foveate.layout.BlockLayout.row_blocks` (0: not known); ``bit_*`` the layout's
    partial bitmask (:class:`~foveate.bitmask.PartialBitmask`) for a spec that reads one."""
    from .fwd import attention_forward

    layout = _layout(block_q, block_kv, kv_num, kv_idx, full_num, full_idx, full_runs=full_runs,
                     bits=(bit_words, bit_rows, bit_cols))
    return attention_forward(q, k, v, layout, _spec(tuple(mask)), scale)


@sparse_attention.register_fake
def _(q, k, v, kv_num, kv_idx, full_num, full_idx, q_num, q_idx, full_q_num, full_q_idx, mask, scale, block_q,
      block_kv, full_runs=False, row_blocks=0.0, bit_words=None, bit_rows=None, bit_cols=None):
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    return out, q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("foveate::sparse_attention_backward", mutates_args=())
def sparse_attention_backward(
    dout: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor,
    kv_num: torch.Tensor, kv_idx: torch.Tensor, full_num: torch.Tensor, full_idx: torch.Tensor,
    q_num: torch.Tensor, q_idx: torch.Tensor, full_q_num: torch.Tensor, full_q_idx: torch.Tensor,
    mask: list[int], scale: float, block_q: int, block_kv: int, row_blocks: float = 0.0,
    bit_words: torch.Tensor | None = None, bit_rows: torch.Tensor | None = None, bit_cols: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``dq, dk, dv`` of :func:`sparse_attention` (``dlse`` may be ``None``)."""
    from .bwd import attention_backward

    layout = _layout(block_q, block_kv, kv_num, kv_idx, full_num, full_idx, q_num, q_idx, full_q_num, full_q_idx,
                     row_blocks=row_blocks, bits=(bit_words, bit_rows, bit_cols))
    return attention_backward(dout, dlse, q, k, v, out, lse, layout, _spec(tuple(mask)), scale)


@sparse_attention_backward.register_fake
def _(dout, dlse, q, k, v, *rest):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


_LAYOUT_ARGS = len(LIST_FIELDS)  # kv_num .. full_q_idx


def _setup_context(ctx, inputs, output):
    # (inputs hold every argument, defaults included)
    q, k, v, *layout = inputs[:3 + _LAYOUT_ARGS]
    mask, scale, block_q, block_kv, _full_runs, row_blocks, *bits = inputs[3 + _LAYOUT_ARGS:]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *layout, *bits)
    ctx.params = (mask, scale, block_q, block_kv, row_blocks)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, *rest = ctx.saved_tensors
    layout, bits = rest[:_LAYOUT_ARGS], rest[_LAYOUT_ARGS:]
    dq, dk, dv = torch.ops.foveate.sparse_attention_backward(dout, dlse, q, k, v, out, lse, *layout, *ctx.params,
                                                             *bits)
    return (dq, dk, dv) + (None,) * (_LAYOUT_ARGS + 9)


torch.library.register_autograd("foveate::sparse_attention", _backward, setup_context=_setup_context)


class _EagerSparseAttention(torch.autograd.Function):
    """The same forward and backward as the operators, called directly: outside
    ``torch.compile`` the dispatch of a Python custom operator (and of its backward) costs
    about as much host time as a small problem's kernels, twice per step."""

    @staticmethod
    def forward(ctx, q, k, v, layout, spec: MaskSpec, scale: float, score=None, rates=None, bias=None):
        from .fwd import attention_forward

        out, lse = attention_forward(q, k, v, layout, spec, scale, score=score)
        ctx.save_for_backward(q, k, v, out, lse, rates, bias)
        ctx.layout, ctx.spec, ctx.scale, ctx.score = layout, spec, scale, score
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        from .bwd import attention_backward
        from .score import KernelScore

        q, k, v, out, lse, rates, bias = ctx.saved_tensors
        if dout is None:  # only lse was used
            dout = torch.zeros_like(out)
        score, drates, dbias = ctx.score, None, None
        if score is not None:
            learn_rates = rates is not None and ctx.needs_input_grad[7]
            learn_bias = bias is not None and ctx.needs_input_grad[8]
            spec = list(score.spec)
            spec[4], spec[7] = int(learn_rates), int(learn_bias)
            score = KernelScore(tuple(spec), rates, bias)
            if learn_rates:
                drates = torch.zeros(rates.shape, dtype=torch.float32, device=q.device)
            if learn_bias:
                b, h, n, m = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
                dbias = torch.zeros(b, h, n, m, dtype=torch.float32, device=q.device)
        dq, dk, dv = attention_backward(dout, dlse, q, k, v, out, lse, ctx.layout, ctx.spec, ctx.scale,
                                        score=score, drates=drates, dbias=dbias)
        if dbias is not None:  # summed over the bias's broadcast axes
            axes = [a for a in (0, 1) if bias.shape[a] == 1 and dbias.shape[a] > 1]
            dbias = (dbias.sum(dim=axes, keepdim=True) if axes else dbias).to(bias.dtype)
        return (dq, dk, dv, None, None, None, None, None if drates is None else drates.to(rates.dtype), dbias)


def run_sparse_attention(q, k, v, layout, spec: MaskSpec, scale: float, score=None):
    """``(out, lse)`` for a BlockLayout, differentiable: through the custom operator under
    ``torch.compile``, else through the same launchers without the operator dispatch (and
    without the autograd Function when no gradient is recorded). ``score``: a score
    modification (:class:`.score.KernelScore`; eager calls only), its rates and bias
    differentiable."""
    if not torch.compiler.is_compiling():
        extra = () if score is None else tuple(t for t in (score.rates, score.bias) if t is not None)
        if not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *extra))):
            from .fwd import attention_forward  # nothing to record: skip the Function's host time

            return attention_forward(q, k, v, layout, spec, float(scale), score=score)
        if score is None:
            return _EagerSparseAttention.apply(q, k, v, layout, spec, float(scale))
        return _EagerSparseAttention.apply(q, k, v, layout, spec, float(scale), score, score.rates, score.bias)
    if score is not None:
        raise ValueError("score modifications do not run on the Triton kernels under torch.compile yet")
    return torch.ops.foveate.sparse_attention(
        q, k, v, *[getattr(layout, name) for name in LIST_FIELDS], spec.to_ints(), float(scale), layout.block_q,
        layout.block_kv, layout.full_runs is True, getattr(layout, "row_blocks", None) or 0.0,
        *_bit_tensors(layout, spec))
