"""Brute-force definitions of the block scores (loops over blocks and antidiagonals, float64).

Small inputs only: they exist to check :mod:`.scores` against the definitions, not to run.
"""

from __future__ import annotations

import torch

from .geometry import SelectionGeometry


def _kv_head(h: int, heads_q: int, heads_kv: int) -> int:
    return h // (heads_q // heads_kv)


def naive_mean_logits(q, k, geometry: SelectionGeometry, scale: float) -> torch.Tensor:
    g = geometry
    batch, heads_q = q.shape[:2]
    out = torch.zeros(batch, heads_q, g.num_q_blocks, g.num_kv_blocks, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads_q):
            kh = _kv_head(h, heads_q, k.shape[1])
            for i in range(g.num_q_blocks):
                qm = q[b, h, i * g.query_block:(i + 1) * g.query_block].double().mean(0)
                for j in range(g.num_kv_blocks):
                    km = k[b, kh, j * g.block:(j + 1) * g.block].double().mean(0)
                    out[b, h, i, j] = scale * torch.dot(qm, km)
    return out


def naive_antidiagonal_mass(q, k, geometry: SelectionGeometry, scale: float, stride: int) -> torch.Tensor:
    """For each reduced row ``r`` (queries ``r*S .. r*S+S-1``) and reduced key ``c``, the mean of
    the scaled scores ``s[r*S + S-1-i, c*S + i]`` (missing tokens score 0), softmax over the
    visible reduced keys, summed per block pair, averaged over the block's reduced rows."""
    g, s = geometry, stride
    batch, heads_q, q_len, _ = q.shape
    kv_len = k.shape[2]
    offset = kv_len - q_len
    rows, cols = -(-q_len // s), -(-kv_len // s)
    out = torch.zeros(batch, heads_q, g.num_q_blocks, g.num_kv_blocks, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads_q):
            kh = _kv_head(h, heads_q, k.shape[1])
            scores = scale * q[b, h].double() @ k[b, kh].double().T
            reduced = torch.full((rows, cols), float("-inf"), dtype=torch.float64)
            for r in range(rows):
                last_query = min(r * s + s, q_len) - 1 + offset
                for c in range(cols):
                    if g.causal and c * s > last_query:
                        continue
                    total = 0.0
                    for i in range(s):
                        qi, ki = r * s + s - 1 - i, c * s + i
                        if qi < q_len and ki < kv_len:
                            total += float(scores[qi, ki])
                    reduced[r, c] = total / s
            probs = torch.softmax(reduced, dim=-1).nan_to_num(0.0)
            for r in range(rows):
                i = (r * s) // g.query_block
                real_rows = -(-(min((i + 1) * g.query_block, q_len) - i * g.query_block) // s)
                for c in range(cols):
                    out[b, h, i, (c * s) // g.block] += probs[r, c] / real_rows
    return out
