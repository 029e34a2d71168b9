"""The reference backend: pure PyTorch, any device, float32 softmax, bounded memory.

It evaluates the pattern's ``mask_mod`` directly (no block layout), one chunk of queries at
a time, so that memory stays ``O(chunk * kv_len)`` in forward and in backward (a custom
autograd function that recomputes each chunk's probabilities). It is the ground truth of
the tests and the fallback where nothing faster applies.
"""

from __future__ import annotations

import torch

from .base import PyTorchBackend
from .strong_zeros import strong_zero_einsum

#: Score elements (batch x heads x queries x keys) held at once; bounds the memory.
CHUNK_ELEMENTS = 1 << 24

class ReferenceBackend(PyTorchBackend):
    name = "reference"
    uses_layout = False  # evaluates mask_mod directly: tiling changes nothing but the cost

    def forward(self, q, k, v, problem, scale):
        mask_mod = problem.pattern.mask_mod(problem.q_len, problem.kv_len)
        out, lse = reference_attention(q, k, v, mask_mod, scale, score_mod=problem.score_mod)
        return out, (lse if problem.return_lse else None)


def reference_attention(q, k, v, mask_mod, scale: float, chunk: int | None = None, *, score_mod=None):
    """Masked attention in chunks of queries; differentiable (also through ``lse``).

    Shapes: ``q`` ``(B, Hq, Nq, D)``, ``k`` ``(B, Hkv, Nkv, D)``, ``v`` ``(B, Hkv, Nkv, Dv)``
    with ``Hq % Hkv == 0``. Returns ``out`` ``(B, Hq, Nq, Dv)`` in ``q.dtype`` and ``lse``
    ``(B, Hq, Nq)`` in float32 (natural log; ``-inf`` where a query sees no key, whose
    output is 0). ``mask_mod(b, h, q_idx, kv_idx)`` receives the query head index ``h``.
    ``score_mod`` (a :class:`~foveate.score_mods.ScoreMod`) changes the scaled scores before
    the mask; its tensors receive their gradients.
    """
    batch, heads_q, q_len, _ = q.shape
    kv_len = k.shape[2]
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // max(1, batch * heads_q * kv_len))
    if score_mod is None:
        return _ReferenceAttention.apply(q, k, v, mask_mod, float(scale), int(chunk), None)
    fn = score_mod.bind(q_len, kv_len, heads_q)
    params = score_mod.parameters()
    return _ReferenceAttention.apply(q, k, v, mask_mod, float(scale), int(chunk), (fn, len(params)), *params)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Grouped:
    """Views of q-shaped tensors as ``(B, Hkv, G, N, D)`` and the mask for a query chunk."""

    def __init__(self, q, k, mask_mod, score_fn=None):
        self.score_fn = score_fn
        self.batch, self.heads_q, self.q_len, _ = q.shape
        self.heads_kv, self.kv_len = k.shape[1], k.shape[2]
        self.group = self.heads_q // self.heads_kv
        self.mask_mod = mask_mod
        dev = q.device
        self.b = torch.arange(self.batch, device=dev).view(-1, 1, 1, 1, 1)
        self.h = torch.arange(self.heads_q, device=dev).view(1, self.heads_kv, self.group, 1, 1)
        self.kv_idx = torch.arange(self.kv_len, device=dev).view(1, 1, 1, 1, -1)

    def raw_scores(self, qc, k, scale):
        return torch.einsum("bhgqd,bhkd->bhgqk", qc, k) * scale

    def modified(self, qc, k, lo, hi, scale, raw=None):
        """The chunk's scores after the score function (``raw``: its scores before it)."""
        s = self.raw_scores(qc, k, scale) if raw is None else raw
        if self.score_fn is None:
            return s
        q_idx = torch.arange(lo, hi, device=self.b.device).view(1, 1, 1, -1, 1)
        return self.score_fn(s, self.b, self.h, q_idx, self.kv_idx).to(s.dtype)

    def split(self, x):
        return x.reshape(self.batch, self.heads_kv, self.group, self.q_len, x.shape[-1])

    def mask(self, lo, hi):
        q_idx = torch.arange(lo, hi, device=self.b.device).view(1, 1, 1, -1, 1)
        return self.mask_mod(self.b, self.h, q_idx, self.kv_idx)

    def probabilities(self, qc, k, lo, hi, scale, lse=None, modified=None):
        """``(scores, allowed)`` of a query chunk, scores modified (the score function) and
        masked; with ``lse`` given, the probabilities instead of the scores (exactly 0 where
        not allowed). ``modified``: the chunk's modified scores, already computed."""
        allowed = self.mask(lo, hi)
        # (einsum, not a masked product: a non-finite key reaches its column, which the mask
        # then clears where it is not allowed.)
        s = self.modified(qc, k, lo, hi, scale) if modified is None else modified
        s = s.masked_fill(~allowed, float("-inf"))
        if lse is None:
            return s, allowed
        # A query with no allowed key has lse = -inf and probabilities 0.
        safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        # (cleared again: a non-finite lse, from a non-finite query, leaves NaN at -inf scores)
        return torch.exp(s - safe[..., None]).masked_fill(~allowed, 0.0), allowed


class _ReferenceAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask_mod, scale, chunk, score, *params):
        # score: None, or (the bound score function, the number of its tensors: params)
        g = _Grouped(q, k, mask_mod, None if score is None else score[0])
        cd = _compute_dtype(q.dtype)
        qf, kf, vf = g.split(q).to(cd), k.to(cd), v.to(cd)
        out = torch.empty(*qf.shape[:-1], v.shape[-1], dtype=cd, device=q.device)
        lse = torch.empty(qf.shape[:-1], dtype=cd, device=q.device)
        for lo in range(0, g.q_len, chunk):
            hi = min(lo + chunk, g.q_len)
            s, _ = g.probabilities(qf[:, :, :, lo:hi], kf, lo, hi, scale)
            lse_c = torch.logsumexp(s, dim=-1)
            p, allowed = g.probabilities(qf[:, :, :, lo:hi], kf, lo, hi, scale, lse_c)
            out[:, :, :, lo:hi] = strong_zero_einsum("bhgqk,bhkd->bhgqd", p, allowed, vf)
            lse[:, :, :, lo:hi] = lse_c
        ctx.save_for_backward(q, k, v, lse, *params)
        ctx.mask_mod, ctx.scale, ctx.chunk, ctx.score = mask_mod, scale, chunk, score
        out = out.reshape(g.batch, g.heads_q, g.q_len, -1).to(q.dtype)
        lse = lse.reshape(g.batch, g.heads_q, g.q_len).float()
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):
        q, k, v, lse, *params = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        g = _Grouped(q, k, ctx.mask_mod, None if ctx.score is None else ctx.score[0])
        learn = [i for i, t in enumerate(params) if ctx.needs_input_grad[7 + i]]
        d_params = [None] * len(params)
        cd = _compute_dtype(q.dtype)
        qf, kf, vf = g.split(q).to(cd), k.to(cd), v.to(cd)
        do = g.split(d_out).to(cd) if d_out is not None else torch.zeros(
            *qf.shape[:-1], v.shape[-1], dtype=cd, device=q.device
        )
        dl = g.split(d_lse[..., None])[..., 0].to(cd) if d_lse is not None else None
        dq = torch.empty_like(qf)
        dk = torch.zeros_like(kf)
        dv = torch.zeros_like(vf)
        for lo in range(0, g.q_len, chunk):
            hi = min(lo + chunk, g.q_len)
            qc, doc = qf[:, :, :, lo:hi], do[:, :, :, lo:hi]
            raw = modified = None
            if g.score_fn is not None:  # (recorded, to carry the gradient back through it)
                with torch.enable_grad():
                    raw = g.raw_scores(qc, kf, scale).requires_grad_()
                    modified = g.modified(qc, kf, lo, hi, scale, raw)
            p, allowed = g.probabilities(qc, kf, lo, hi, scale, lse[:, :, :, lo:hi],
                                         None if modified is None else modified.detach())
            # Gradients through forbidden pairs are exactly 0 (strong zeros), so a non-finite
            # input reaches the same gradients as the outputs it reaches.
            dp = torch.einsum("bhgqd,bhkd->bhgqk", doc, vf).masked_fill(~allowed, 0.0)
            delta = (p * dp).sum(dim=-1, keepdim=True)  # rowsum(P * dP) = rowsum(dO * O)
            ds = p * (dp - delta)
            if dl is not None:
                ds = ds + p * dl[:, :, :, lo:hi, None]  # d lse / d s = P
            ds = ds.masked_fill(~allowed, 0.0)
            if modified is not None:  # d(modified score) -> d(raw score), and the tensors' gradients
                got = torch.autograd.grad(modified, [raw] + [params[i] for i in learn], ds, allow_unused=True)
                ds = torch.zeros_like(ds) if got[0] is None else got[0].masked_fill(~allowed, 0.0)
                for i, grad in zip(learn, got[1:]):
                    if grad is not None:
                        d_params[i] = grad if d_params[i] is None else d_params[i] + grad
            dq[:, :, :, lo:hi] = strong_zero_einsum("bhgqk,bhkd->bhgqd", ds, allowed, kf) * scale
            dk += strong_zero_einsum("bhgqk,bhgqd->bhkd", ds, allowed, qc) * scale
            dv += strong_zero_einsum("bhgqk,bhgqd->bhkd", p, allowed, doc)
        dq = dq.reshape(q.shape).to(q.dtype)
        d_params = [None if d is None else d.to(t.dtype) for d, t in zip(d_params, params)]
        return (dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, *d_params)
