"""The triton backend: foveate's fused block-sparse kernels (forward for now).

On CUDA it compiles the kernels with Triton; on CPU it runs them in Triton's interpreter when
``TRITON_INTERPRET=1`` is set before Triton is imported (tests; slow), and only when named.
The backward kernels are not written yet: problems that need gradients go to other backends.
"""

from __future__ import annotations

import os

import torch

from ..base import Backend, Problem, cached_layout

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonBackend(Backend):
    name = "triton"
    block_size = 128  # layout blocks = kernel tiles

    def available(self) -> bool:
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return torch.cuda.is_available() or _interpreting()

    def supports(self, problem: Problem) -> str | None:
        reason = self.block_reason(problem)
        if reason is not None:
            return reason
        from .masks import mask_spec

        if problem.device.type == "cpu" and not _interpreting():
            return "on CPU only under TRITON_INTERPRET=1"
        if problem.device.type not in ("cpu", "cuda"):
            return f"device {problem.device} is neither CUDA nor CPU"
        if problem.dtype not in _DTYPES:
            return f"dtype {problem.dtype} is not one of {_DTYPES}"
        for name, dim in (("head_dim", problem.head_dim), ("head_dim_v", problem.head_dim_v)):
            if dim % 8 or not 8 <= dim <= 256:
                return f"{name}={dim}: must be a multiple of 8 in [8, 256]"
        if problem.requires_grad:
            return "no backward kernels yet (inputs require grad)"
        if mask_spec(problem.pattern, problem.q_len, problem.kv_len) is None:
            return f"no kernel mask for {problem.pattern!r} (compositions and custom masks go to flex)"
        return None

    def auto_reason(self, problem: Problem) -> str | None:
        if problem.device.type == "cpu":
            return "the Triton interpreter runs only when named (slow)"
        return None

    def forward(self, q, k, v, problem, scale):
        from .fwd import attention_forward
        from .masks import mask_spec

        layout = cached_layout(problem.pattern, problem.q_len, problem.kv_len, block_q=self.block_size,
                               block_kv=self.block_size, device=q.device)
        spec = mask_spec(problem.pattern, problem.q_len, problem.kv_len)
        num_warps = 8 if max(problem.head_dim, problem.head_dim_v) > 64 else 4
        out, lse = attention_forward(q, k, v, layout, spec, scale, num_warps=num_warps)
        return out, (lse if problem.return_lse else None)
