"""The flex backend: PyTorch FlexAttention driven by foveate's block layout and mask_mod.

The layout is converted to a FlexAttention ``BlockMask`` (same field names), so
FlexAttention's own O(N^2) block-mask builder is never run. On CUDA it runs forward and
backward; on CPU, ``torch.compile`` of FlexAttention supports inference only, without lse.
Inside a caller's ``torch.compile`` graph, the BlockMask's tensors are constants of the graph
and FlexAttention is traced into it.
"""

from __future__ import annotations

import functools
import operator

import torch

from ..graph_constants import pattern_from_key, pattern_key
from ..layout import LIST_FIELDS
from .base import Backend, Problem

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: Compiled FlexAttention variants kept by torch.compile (one per pattern, shape, dtype
#: and grad mode). Past dynamo's default of 8 it would silently fall back to an unfused
#: implementation that materialises the whole score matrix.
RECOMPILE_LIMIT = 256

# BlockMask per cached layout (keyed by identity; the layout is kept alive with its mask).
_FLEX_MASKS: dict[int, tuple] = {}


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    return torch.compile(flex_attention, dynamic=False)


class FlexBackend(Backend):
    name = "flex"
    block_size = 128  # the block size of the layouts handed to FlexAttention

    def available(self) -> bool:
        try:
            from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
        except ImportError:
            return False
        return True

    def supports(self, problem: Problem) -> str | None:
        reason = self.block_reason(problem)
        if reason is not None:
            return reason
        if problem.dtype not in _DTYPES:
            return f"dtype {problem.dtype} is not one of {_DTYPES}"
        if problem.head_dim < 16 or problem.head_dim_v < 16:
            return f"head dims ({problem.head_dim}, {problem.head_dim_v}) must be at least 16"
        if problem.device.type == "cpu":
            if problem.requires_grad:
                return "FlexAttention has no backward pass on CPU"
            if problem.return_lse:
                return "FlexAttention on CPU cannot return lse"
        elif problem.device.type != "cuda":
            return f"device {problem.device} is neither CUDA nor CPU"
        return None

    def auto_reason(self, problem: Problem) -> str | None:
        if problem.device.type == "cpu":
            return "on CPU only when named (torch.compile costs seconds for every new shape)"
        return None

    def forward(self, q, k, v, problem, scale):
        if torch.compiler.is_compiling():
            # Inside a caller's graph: FlexAttention is traced into it, on a BlockMask made in
            # the graph from the layout's lists, which are constants of the graph.
            from torch.nn.attention.flex_attention import flex_attention as flex

            block_mask = self._traced_block_mask(problem, q.device)
        else:
            flex, block_mask = _compiled_flex(), self._block_mask(problem, q.device)
        if not problem.requires_grad:
            # Under no_grad, inputs may still carry requires_grad; FlexAttention on CPU refuses
            # those even though no graph is recorded.
            q, k, v = q.detach(), k.detach(), v.detach()
        score_mod = None
        if problem.score_mod is not None:
            score_mod = problem.score_mod.bind(problem.q_len, problem.kv_len, problem.heads_q)
        result = flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                      enable_gqa=problem.heads_q != problem.heads_kv, return_lse=problem.return_lse)
        if problem.return_lse:
            out, lse = result
            return out, lse.float()
        return result, None

    def _block_mask(self, problem, device):
        """The BlockMask of the problem's cached layout (made once per layout)."""
        layout = self.layout(problem, device)
        known = _FLEX_MASKS.get(id(layout))
        if known is None or known[0] is not layout:
            known = _FLEX_MASKS[id(layout)] = (layout, layout.to_flex_block_mask())
            if len(_FLEX_MASKS) > 64:
                _FLEX_MASKS.pop(next(iter(_FLEX_MASKS)))
        return known[1]

    def _traced_block_mask(self, problem, device):
        """:meth:`_block_mask` inside a ``torch.compile`` graph: the lists of
        :func:`_traced_flex_lists` in a BlockMask made in the graph."""
        from torch.nn.attention.flex_attention import BlockMask

        q_len, kv_len = operator.index(problem.q_len), operator.index(problem.kv_len)
        lists = _traced_flex_lists(pattern_key(problem.pattern), q_len, kv_len, self.block_size, device)
        return BlockMask(seq_lengths=(q_len, kv_len), **dict(zip(LIST_FIELDS, lists)),
                         BLOCK_SIZE=(self.block_size, self.block_size),
                         mask_mod=problem.pattern.mask_mod(q_len, kv_len))


@torch.compiler.assume_constant_result
def _traced_flex_lists(key: tuple, q_len: int, kv_len: int, block: int, device: torch.device) -> tuple:
    """The BlockMask tensors of the cached layout of the pattern of ``key``
    (:func:`~foveate.graph_constants.pattern_key`), run (not traced) when a graph is traced."""
    from .base import cached_layout

    layout = cached_layout(pattern_from_key(key), q_len, kv_len, block_q=block, block_kv=block, device=device)
    mask = layout.to_flex_block_mask()
    return tuple(getattr(mask, name) for name in LIST_FIELDS)
