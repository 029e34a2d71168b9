"""The ``torch`` backend: block-sparse attention in plain PyTorch operations, any device.

It walks the pattern's :class:`~foveate.layout.BlockLayout` as the fused kernels do: each
query block gathers its listed kv blocks (full ones without mask work, partial ones with the
pattern's ``mask_mod``), so time and memory follow the visited blocks, not ``Nq x Nkv``. It is
what ``backend="auto"`` runs on a CPU (where there is no Triton and FlexAttention costs a
compile per shape), forward and backward, every pattern, dtype (float32 compute; float64 kept)
and head dim. The dense :mod:`~foveate.backends.reference` stays the tests' oracle.

Query blocks are processed a chunk at a time (at most :data:`CHUNK_ELEMENTS` scores), and the
backward recomputes each chunk's probabilities, so memory stays bounded in both passes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from ..graph_constants import pattern_from_key, pattern_key
from ..layout import BlockLayout
from .base import Problem, PyTorchBackend, cached_layout, score_mod_reason
from .strong_zeros import strong_zero_einsum

#: Score elements (batch x heads x queries x gathered keys) held at once; bounds the memory.
CHUNK_ELEMENTS = 1 << 23


class TorchBlocksBackend(PyTorchBackend):
    name = "torch"
    block_size = 128

    def supports(self, problem: Problem) -> str | None:
        return score_mod_reason(problem) or super().supports(problem)

    def block_reason(self, problem: Problem) -> str | None:
        if self._blocks(problem.pattern) is None:
            return problem.pattern.block_size_reason(self.block_size, self.block_size)
        return None

    def _blocks(self, pattern) -> tuple[int, int] | None:
        """The block sizes to walk ``pattern`` at: its own when fixed, else :attr:`block_size`
        or the largest power-of-two fraction of it that the pattern accepts (a content
        selection of small blocks); ``None`` if none."""
        if pattern.fixed_blocks is not None:
            return pattern.fixed_blocks
        size = self.block_size
        while size >= 1:
            if pattern.block_size_reason(size, size) is None:
                return size, size
            size //= 2
        return None

    def layout(self, problem: Problem, device: torch.device) -> BlockLayout:
        block_q, block_kv = self._blocks(problem.pattern)
        return cached_layout(problem.pattern, problem.q_len, problem.kv_len, block_q=block_q,
                             block_kv=block_kv, device=device)

    def forward(self, q, k, v, problem, scale):
        if torch.compiler.is_compiling():
            # Traced into the caller's graph: the lists are constants of the graph (computed when
            # it is traced), and autograd differentiates the chunk loop itself.
            block_q, block_kv = self._blocks(problem.pattern)
            q_len, kv_len = operator.index(problem.q_len), operator.index(problem.kv_len)
            lists = _traced_lists(pattern_key(problem.pattern), q_len, kv_len, block_q, block_kv, q.device)
            layout = BlockLayout(block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
                                 kv_num_blocks=lists[0], kv_indices=lists[1], full_kv_num_blocks=lists[2],
                                 full_kv_indices=lists[3], transposed=_no_transposed,
                                 mask_mod=problem.pattern.mask_mod(q_len, kv_len))
            plan = _Plan.of(layout, problem, trimmed=lists)
            out, lse, *_ = _attend(q, k, v, plan, float(scale))
        else:
            plan = _Plan.of(self.layout(problem, q.device), problem)
            out, lse = _BlockSparseAttention.apply(q, k, v, plan, float(scale))
        return out, (lse if problem.return_lse else None)


@torch.compiler.assume_constant_result
def _traced_lists(key: tuple, q_len: int, kv_len: int, block_q: int, block_kv: int, device) -> tuple:
    """The partial and full kv lists (trimmed) of the cached layout of the pattern of ``key``
    (:func:`~foveate.graph_constants.pattern_key`), run (not traced) when a graph is traced."""
    layout = cached_layout(pattern_from_key(key), q_len, kv_len, block_q=block_q, block_kv=block_kv, device=device)
    return _trimmed(layout)


def _no_transposed():
    raise RuntimeError("the torch backend walks the kv lists only")


def _trimmed(layout: BlockLayout) -> tuple[torch.Tensor, ...]:
    """``(partial counts, partial indices, full counts, full indices)``, each list cut to its
    longest row (one host sync)."""
    out = []
    for counts, indices in ((layout.kv_num_blocks, layout.kv_indices),
                            (layout.full_kv_num_blocks, layout.full_kv_indices)):
        width = int(counts.max()) if counts.numel() else 0
        out += [counts, indices[..., :width].contiguous()]
    return tuple(out)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class _Plan:
    """A layout read for gathering: per query block, the partial kv blocks then the full ones
    (``idx`` ``(Bl, Hl, nq, W)``, long), which entries are listed (``listed``), and how many of
    the ``W`` columns are partial (``n_partial``: the mask is evaluated on those only)."""

    layout: BlockLayout
    problem: Problem
    idx: torch.Tensor
    listed: torch.Tensor
    n_partial: int

    @classmethod
    def of(cls, layout: BlockLayout, problem: Problem, *, trimmed=None) -> "_Plan":
        """The plan of ``layout``; ``trimmed``: its :func:`_trimmed` lists when already known
        (under ``torch.compile``, where trimming them would read their counts)."""
        counts_p, idx_p, counts_f, idx_f = _trimmed(layout) if trimmed is None else trimmed
        if idx_p.shape[-1] + idx_f.shape[-1] == 0:  # nothing visited: one unlisted column (all rows empty)
            idx_f = torch.zeros(*idx_f.shape[:-1], 1, dtype=idx_f.dtype, device=idx_f.device)
        listed = [torch.arange(idx.shape[-1], device=idx.device) < counts[..., None]
                  for counts, idx in ((counts_p, idx_p), (counts_f, idx_f))]
        return cls(layout, problem, torch.cat([idx_p.long(), idx_f.long()], -1),
                   torch.cat(listed, -1), idx_p.shape[-1])

    def chunks(self):
        """Ranges of query blocks, each holding at most :data:`CHUNK_ELEMENTS` scores."""
        lay, pb = self.layout, self.problem
        per_block = pb.batch * pb.heads_q * lay.block_q * max(1, self.idx.shape[-1]) * lay.block_kv
        step = max(1, CHUNK_ELEMENTS // per_block)
        return [(lo, min(lo + step, lay.num_q_blocks)) for lo in range(0, lay.num_q_blocks, step)]

    def gather_index(self, lo: int, hi: int):
        """``(b, h_kv, block)`` index tensors, ``(B, Hq, c, W)`` each, that pick each query
        head's kv blocks for query blocks ``lo:hi`` out of ``(B, Hkv, nkv, block, D)``."""
        pb = self.problem
        dev = self.idx.device
        idx = self.idx[:, :, lo:hi].expand(pb.batch, pb.heads_q, -1, -1)
        b = torch.arange(pb.batch, device=dev).view(-1, 1, 1, 1)
        h_kv = (torch.arange(pb.heads_q, device=dev) // (pb.heads_q // pb.heads_kv)).view(1, -1, 1, 1)
        return b, h_kv, idx

    def allowed(self, lo: int, hi: int) -> torch.Tensor:
        """Bool ``(B|1, Hq|1, c, block_q, W * block_kv)``: which gathered pairs are allowed (keys
        in the order of the gathered blocks)."""
        lay = self.layout
        dev = self.idx.device
        bq, bkv = lay.block_q, lay.block_kv
        q_pos = (torch.arange(lo, hi, device=dev)[:, None] * bq + torch.arange(bq, device=dev)).view(1, 1, -1, bq, 1, 1)
        idx = self.idx[:, :, lo:hi]  # (Bl, Hl, c, W)
        kv_pos = (idx[..., None] * bkv + torch.arange(bkv, device=dev))[:, :, :, None]  # (Bl, Hl, c, 1, W, bkv)
        ok = self.listed[:, :, lo:hi, None, :, None] & (q_pos < lay.q_len) & (kv_pos < lay.kv_len)
        n_partial = self.n_partial
        if n_partial and lay.mask_mod is not None:
            # mask_mod with the layout's batch and head axes (1 where the layout is shared);
            # positions past the ends are clamped into range before it sees them (a mask_mod may
            # index tables by position): they are excluded above. Full blocks need no mask.
            b = torch.arange(ok.shape[0], device=dev).view(-1, 1, 1, 1, 1, 1)
            h = torch.arange(ok.shape[1], device=dev).view(1, -1, 1, 1, 1, 1)
            partial = lay.mask_mod(b, h, torch.clamp(q_pos, max=lay.q_len - 1),
                                   torch.clamp(kv_pos[..., :n_partial, :], max=lay.kv_len - 1))
            ok[..., :n_partial, :] &= partial
        return ok.flatten(-2)


def _blocks(x: torch.Tensor, block: int, count: int) -> torch.Tensor:
    """``(B, H, N, D)`` -> ``(B, H, count, block, D)``, zero-padded at the end."""
    pad = count * block - x.shape[2]
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    return x.view(x.shape[0], x.shape[1], count, block, x.shape[-1])


def _attend(q, k, v, plan: _Plan, scale: float):
    """``(out, lse, out in blocks, lse in blocks)`` chunk by chunk: ``out`` ``(B, Hq, Nq, Dv)``
    in q's dtype, ``lse`` float32 ``(B, Hq, Nq)``; the blocked forms ``(B, Hq, nq, block_q,
    ...)`` in the compute dtype (kept by the backward)."""
    lay, pb = plan.layout, plan.problem
    cd = _compute_dtype(q.dtype)
    qb = _blocks(q.to(cd) * scale, lay.block_q, lay.num_q_blocks)
    kb, vb = (_blocks(t.to(cd), lay.block_kv, lay.num_kv_blocks) for t in (k, v))
    outs, lses = [], []
    for lo, hi in plan.chunks():
        gather = plan.gather_index(lo, hi)
        allowed = plan.allowed(lo, hi)
        s = _scores(qb[:, :, lo:hi], kb[gather].flatten(3, 4), allowed)
        m = s.amax(-1, keepdim=True)
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # (rows with no key: all -inf)
        p = torch.exp(s - m)  # (exactly 0 where forbidden, but for a non-finite query's row)
        total = p.sum(-1, keepdim=True)
        o = strong_zero_einsum("bhcqk,bhckd->bhcqd", p, allowed, vb[gather].flatten(3, 4))
        outs.append(o / torch.where(total == 0, torch.ones_like(total), total))
        lses.append((m + torch.log(total))[..., 0])  # (-inf for a row with no key)
    out, lse = torch.cat(outs, 2), torch.cat(lses, 2)
    return (out.flatten(2, 3)[:, :, : pb.q_len].to(q.dtype), lse.flatten(2, 3)[:, :, : pb.q_len].float(),
            out, lse)


def _scores(q_c, k_c, allowed):
    """Scores of a chunk, ``-inf`` where forbidden: ``q_c`` ``(B, H, c, bq, D)`` (scaled),
    ``k_c`` ``(B, H, c, K, D)`` -> ``(B, H, c, bq, K)``."""
    s = torch.matmul(q_c, k_c.transpose(-1, -2))
    return s.masked_fill_(~allowed, float("-inf"))


class _BlockSparseAttention(torch.autograd.Function):
    """:func:`_attend` with a backward that recomputes each chunk (memory stays bounded)."""

    @staticmethod
    def forward(ctx, q, k, v, plan: _Plan, scale: float):
        out, lse, out_blocks, lse_blocks = _attend(q, k, v, plan, scale)
        ctx.save_for_backward(q, k, v, out_blocks, lse_blocks)
        ctx.plan, ctx.scale = plan, scale
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):
        q, k, v, out, lse = ctx.saved_tensors
        plan, scale = ctx.plan, ctx.scale
        lay = plan.layout
        cd = _compute_dtype(q.dtype)
        qb = _blocks(q.to(cd), lay.block_q, lay.num_q_blocks)
        kb, vb = (_blocks(t.to(cd), lay.block_kv, lay.num_kv_blocks) for t in (k, v))
        do = _blocks((d_out if d_out is not None else q.new_zeros(*q.shape[:-1], v.shape[-1])).to(cd),
                     lay.block_q, lay.num_q_blocks)
        # rowsum(P * dP) = rowsum(dO * O); a gradient into lse adds P * dlse to dS.
        delta = (do * out).sum(-1)
        if d_lse is not None:
            delta = delta - _blocks(d_lse[..., None].to(cd), lay.block_q, lay.num_q_blocks)[..., 0]
        safe_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        dq, dk, dv = torch.zeros_like(qb), torch.zeros_like(kb), torch.zeros_like(vb)
        for lo, hi in plan.chunks():
            gather = plan.gather_index(lo, hi)
            allowed = plan.allowed(lo, hi)
            k_c, v_c = kb[gather].flatten(3, 4), vb[gather].flatten(3, 4)
            q_c, do_c = qb[:, :, lo:hi], do[:, :, lo:hi]
            p = torch.exp(_scores(q_c * scale, k_c, allowed) - safe_lse[:, :, lo:hi, :, None])
            # Forbidden pairs are strong zeros in every product, as in the reference's backward.
            p.masked_fill_(~allowed, 0.0)
            ds = torch.matmul(do_c, v_c.transpose(-1, -2))
            ds.sub_(delta[:, :, lo:hi, :, None]).mul_(p).masked_fill_(~allowed, 0.0)
            dq[:, :, lo:hi] = strong_zero_einsum("bhcqk,bhckd->bhcqd", ds, allowed, k_c) * scale
            shape = (*gather[2].shape, lay.block_kv, -1)
            dk.index_put_(gather, (strong_zero_einsum("bhcqk,bhcqd->bhckd", ds, allowed, q_c) * scale).view(shape),
                          accumulate=True)
            dv.index_put_(gather, strong_zero_einsum("bhcqk,bhcqd->bhckd", p, allowed, do_c).view(shape),
                          accumulate=True)

        def back(x, like):
            return x.flatten(2, 3)[:, :, : like.shape[2]].to(like.dtype)

        return back(dq, q), back(dk, k), back(dv, v), None, None
