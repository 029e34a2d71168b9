"""The ``decode`` backend: :func:`foveate.attention` with a few queries against long keys, run by
the split-KV decode kernel of :mod:`foveate.decode` (flash-decoding).

``foveate.attention(q, k, v, pattern, backend="decode")`` with ``q`` ``(B, Hq, n, D)``, ``n``
from 1 to 16, and ``k``, ``v`` ``(B, Hkv, N, D)``: the queries are the last ``n`` of the ``N``
tokens, as every pattern's bottom-right alignment already says, so the call is decoding against
a full contiguous cache. The prefill kernels give such a call ``B x Hq`` programs of 128 query
rows, nearly all padding; the decode kernel gives one program per (sequence, kv head, split),
its rows the query heads of that kv head times ``n``, and splits the keys so that one sequence
fills the GPU. Inference only (no gradients); patterns whose keys per query are at most two
intervals (:mod:`foveate.decode.rule`: dense, causal, sliding windows, sinks and their
compositions).

``auto`` does not take it yet: it runs where named, until GPU measurements show where it beats
the prefill kernels (the decode benchmark, ``benchmarks/decode.py``).
"""

from __future__ import annotations

import torch

from ..decode import MAX_ROWS
from .base import Backend, Problem, score_mod_reason
from .triton import TritonBackend, _interpreting

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: The most new queries per sequence the decode kernel takes (more is prefill).
MAX_NEW = 16


class DecodeBackend(Backend):
    name = "decode"
    uses_layout = False

    def available(self) -> bool:
        return TritonBackend().available()

    def unavailable_reason(self) -> str:
        return TritonBackend().unavailable_reason()

    def supports(self, problem: Problem) -> str | None:
        from ..decode.rule import lower

        reason = score_mod_reason(problem)
        if reason is not None:
            return reason
        if problem.requires_grad:
            return "inference only (decoding): no gradients"
        if not 1 <= problem.q_len <= MAX_NEW:
            return f"q_len={problem.q_len}: decoding takes 1 to {MAX_NEW} new queries (more is prefill)"
        if problem.head_dim != problem.head_dim_v:
            return f"head_dim={problem.head_dim} and head_dim_v={problem.head_dim_v} differ"
        if problem.dtype not in _DTYPES:
            return f"dtype {problem.dtype} is not one of {_DTYPES}"
        if problem.head_dim % 8 or not 8 <= problem.head_dim <= 256:
            return f"head_dim={problem.head_dim}: must be a multiple of 8 in [8, 256]"
        rows = problem.heads_q // problem.heads_kv * problem.q_len
        if rows > MAX_ROWS:
            return f"{rows} query rows per kv head (query heads per kv head x q_len); the decode kernel takes {MAX_ROWS}"
        try:
            lower(problem.pattern, problem.q_len)
        except ValueError as e:
            return str(e)
        if problem.device.type == "cpu" and not _interpreting():
            return "on CPU only under TRITON_INTERPRET=1"
        if problem.device.type not in ("cpu", "cuda"):
            return f"device {problem.device} is neither CUDA nor CPU"
        return None

    def auto_reason(self, problem: Problem) -> str | None:
        return "runs where named (backend='decode') until GPU measurements place it in 'auto'"

    def forward(self, q, k, v, problem: Problem, scale: float):
        from ..decode import KVCache, attention

        cache = KVCache.full(k, v)
        out, lse = attention(q, cache, scale=scale, pattern=problem.pattern, return_lse=True, backend="triton")
        return out, (lse if problem.return_lse else None)


__all__ = ["DecodeBackend"]
