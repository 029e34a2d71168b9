"""The triton backend: foveate's fused block-sparse kernels, forward and backward.

On CUDA it compiles the kernels with Triton; on CPU it runs them in Triton's interpreter when
``TRITON_INTERPRET=1`` is set before Triton is imported (tests; slow), and only when named.
Layout: ``masks`` (the pattern's mask inside the kernels: the lowering of its kernel mask
description, one predicate module per kind, the bitmask of patterns without one, and the
memory row of each position: tiled canvases run on raster-order tensors, the permutation fused
into the kernels), ``common`` (what the launchers share), ``fwd`` and ``bwd`` (kernels and
launchers; ``fwd_hopper``: the warp-specialized forward that ``fwd.attention_forward`` runs on
Hopper GPUs where it can, ``offline``: its compilation without a GPU), ``tuning`` (tiles and
warps per GPU and head dim), ``ops`` (custom operators with autograd, what the backend calls).
"""

from __future__ import annotations

import dataclasses
import operator
import os

import torch

from ...graph_constants import pattern_from_key, pattern_key
from ...kernel_choice import triton_importable
from ...settings import policy
from ..base import Backend, Problem, cached_layout

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonBackend(Backend):
    name = "triton"
    block_size = 128  # layout blocks = kernel tiles

    def available(self) -> bool:
        return triton_importable() and (torch.cuda.is_available() or _interpreting())

    def unavailable_reason(self) -> str:
        if not triton_importable():
            return "Triton is not installed (pip install triton)"
        return ("it needs a CUDA GPU; on a CPU its kernels run in Triton's interpreter (slow: for "
                "tests) when TRITON_INTERPRET=1 is set before foveate is imported")

    def supports(self, problem: Problem) -> str | None:
        reason = self._score_reason(problem) or self.block_reason(problem)
        if reason is not None:
            return reason
        if problem.device.type == "cpu" and not _interpreting():
            return "on CPU only under TRITON_INTERPRET=1"
        if problem.device.type not in ("cpu", "cuda"):
            return f"device {problem.device} is neither CUDA nor CPU"
        if problem.dtype not in _DTYPES:
            return f"dtype {problem.dtype} is not one of {_DTYPES}"
        for name, dim in (("head_dim", problem.head_dim), ("head_dim_v", problem.head_dim_v)):
            if dim % 8 or not 8 <= dim <= 256:
                return f"{name}={dim}: must be a multiple of 8 in [8, 256]"
        if torch.compiler.is_compiling():  # (host work: run when the graph is traced, a constant of it)
            return _traced_bitmask_reason(pattern_key(problem.pattern), operator.index(problem.q_len),
                                          operator.index(problem.kv_len), self.block_size, problem.device,
                                          policy.bitmask_budget, policy.force_bitmask)
        return _bitmask_reason(problem.pattern, problem.q_len, problem.kv_len, self.block_size, problem.device,
                               policy.bitmask_budget, policy.force_bitmask)

    @staticmethod
    def _score_reason(problem: Problem) -> str | None:
        """Why the kernels cannot take the problem's score modification (``None``: they can)."""
        if problem.score_mod is None:
            return None
        if torch.compiler.is_compiling():
            return f"score_mod={problem.score_mod!r}: not on the Triton kernels under torch.compile yet"
        if problem.pattern.canvas is not None:
            return f"score_mod={problem.score_mod!r} on a canvas pattern: not on the Triton kernels yet"
        from .score import score_spec

        spec = score_spec(problem.score_mod, problem.q_len, problem.kv_len, problem.heads_q)
        return spec if isinstance(spec, str) else None

    def auto_reason(self, problem: Problem) -> str | None:
        if problem.device.type == "cpu":
            return "the Triton interpreter runs only when named (slow)"
        return None

    def forward(self, q, k, v, problem, scale):
        from .masks import mask_ids, mask_spec
        from .ops import compiled_attention, run_sparse_attention

        if torch.compiler.is_compiling():
            out, lse = compiled_attention(q, k, v, problem.pattern, problem.q_len, problem.kv_len, scale,
                                          self.block_size)
            return out, (lse if problem.return_lse else None)
        layout = self.layout(problem, q.device)
        spec = mask_spec(problem.pattern, problem.q_len, problem.kv_len, blocks=(self.block_size,) * 2)
        if spec.uses_ids:  # (the same tensor on every call: the pattern's ids keep it per device)
            layout.token_ids = mask_ids(problem.pattern, problem.q_len, problem.kv_len, q.device)
        score = None
        if problem.score_mod is not None:
            from .score import score_spec

            score = score_spec(problem.score_mod, problem.q_len, problem.kv_len, problem.heads_q)
            if score.rates is not None and score.rates.device != q.device:  # (rates given as numbers)
                score = dataclasses.replace(score, rates=score.rates.to(q.device))
        out, lse = run_sparse_attention(q, k, v, layout, spec, scale, score)
        return out, (lse if problem.return_lse else None)

    def forward_tiled(self, q, k, v, problem, scale, tile):
        """The tiled layout on raster-order tensors: the kernels address the raster row of
        each tiled position themselves, so no token is moved before or after them."""
        from ..base import tiled
        from .masks import mask_spec
        from .ops import compiled_attention, run_sparse_attention

        tiled_problem, _ = tiled(problem, tile)
        if torch.compiler.is_compiling():
            out, lse = compiled_attention(q, k, v, tiled_problem.pattern, tiled_problem.q_len, tiled_problem.kv_len,
                                          scale, self.block_size, raster_io=True)
            return out, (lse if problem.return_lse else None)
        layout = self.layout(tiled_problem, q.device)
        spec = mask_spec(tiled_problem.pattern, tiled_problem.q_len, tiled_problem.kv_len, raster_io=True,
                         blocks=(self.block_size,) * 2)
        out, lse = run_sparse_attention(q, k, v, layout, spec, scale)
        return out, (lse if problem.return_lse else None)


def _bitmask_reason(pattern, q_len: int, kv_len: int, block: int, device, budget: int, force: bool) -> str | None:
    """Why a pattern whose partial blocks are masked from a bitmask (no kernel mask
    description, or ``force``) cannot run: its bitmask is over ``budget`` bytes; else ``None``."""
    from .masks import eager_mask_spec

    if not eager_mask_spec(pattern, q_len, kv_len, False, (block, block), force).uses_bits:
        return None
    need = cached_layout(pattern, q_len, kv_len, block_q=block, block_kv=block, device=device).bitmask_bytes()
    if need > budget:
        return (f"the bitmask of {pattern!r}'s partial blocks (it has no kernel mask description) takes "
                f"{need / 2**20:.1f} MiB, over foveate.policy.bitmask_budget = {budget / 2**20:.1f} MiB")
    return None


@torch.compiler.assume_constant_result
def _traced_bitmask_reason(key, *args) -> str | None:
    """:func:`_bitmask_reason` of the pattern of ``key`` (:func:`~foveate.graph_constants.pattern_key`),
    run (not traced) when a ``torch.compile`` graph is traced."""
    return _bitmask_reason(pattern_from_key(key), *args)
