"""Brute-force definitions of the block scores (loops over blocks and antidiagonals, float64).

Small inputs only: they exist to check :mod:`.scores` against the definitions, not to run.
"""

from __future__ import annotations

import torch

from .geometry import SelectionGeometry


def _kv_head(h: int, heads_q: int, heads_kv: int) -> int:
    return h // (heads_q // heads_kv)


def _is_token(geometry: SelectionGeometry, length: int) -> list[bool]:
    """Per position: a token (not canvas padding)."""
    real = geometry.real_tokens("cpu")
    return [True] * length if real is None else real.tolist()


def _mean(x, positions) -> torch.Tensor:
    """The mean of the rows ``positions`` of ``x`` (float64), 0 when there are none."""
    if not positions:
        return torch.zeros(x.shape[-1], dtype=torch.float64)
    return x[positions].double().mean(0)


def naive_mean_logits(q, k, geometry: SelectionGeometry, scale: float) -> torch.Tensor:
    """``scale`` times the dot product of the mean query of a block and the mean key of a block
    (means over the block's tokens; canvas padding left out)."""
    g = geometry
    batch, heads_q = q.shape[:2]
    q_token, k_token = _is_token(g, q.shape[2]), _is_token(g, k.shape[2])
    out = torch.zeros(batch, heads_q, g.num_q_blocks, g.num_kv_blocks, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads_q):
            kh = _kv_head(h, heads_q, k.shape[1])
            for i in range(g.num_q_blocks):
                rows = [p for p in range(i * g.query_block, min((i + 1) * g.query_block, q.shape[2])) if q_token[p]]
                qm = _mean(q[b, h], rows)
                for j in range(g.num_kv_blocks):
                    cols = [p for p in range(j * g.block, min((j + 1) * g.block, k.shape[2])) if k_token[p]]
                    out[b, h, i, j] = scale * torch.dot(qm, _mean(k[b, kh], cols))
    return out


def naive_antidiagonal_mass(q, k, geometry: SelectionGeometry, scale: float, stride: int) -> torch.Tensor:
    """For each reduced row ``r`` (queries ``r*S .. r*S+S-1``) and reduced key ``c``, the mean of
    the scaled scores ``s[r*S + S-1-i, c*S + i]`` (missing tokens and canvas padding score 0),
    softmax over the visible reduced keys, summed per block pair, averaged over the block's
    reduced rows. A row or key group holding no token (all padding) is left out."""
    g, s = geometry, stride
    batch, heads_q, q_len, _ = q.shape
    kv_len = k.shape[2]
    offset = kv_len - q_len
    rows, cols = -(-q_len // s), -(-kv_len // s)
    q_token, k_token = _is_token(g, q_len), _is_token(g, kv_len)
    row_live = [any(q_token[r * s:(r + 1) * s]) for r in range(rows)]
    col_live = [any(k_token[c * s:(c + 1) * s]) for c in range(cols)]
    out = torch.zeros(batch, heads_q, g.num_q_blocks, g.num_kv_blocks, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads_q):
            kh = _kv_head(h, heads_q, k.shape[1])
            scores = scale * q[b, h].double() @ k[b, kh].double().T
            reduced = torch.full((rows, cols), float("-inf"), dtype=torch.float64)
            for r in range(rows):
                last_query = min(r * s + s, q_len) - 1 + offset
                for c in range(cols):
                    if (g.causal and c * s > last_query) or not col_live[c]:
                        continue
                    total = 0.0
                    for i in range(s):
                        qi, ki = r * s + s - 1 - i, c * s + i
                        if qi < q_len and ki < kv_len and q_token[qi] and k_token[ki]:
                            total += float(scores[qi, ki])
                    reduced[r, c] = total / s
            probs = torch.softmax(reduced, dim=-1).nan_to_num(0.0)
            for r in range(rows):
                if not row_live[r]:
                    continue
                i = (r * s) // g.query_block
                block_rows = range(i * g.query_block // s, -(-min((i + 1) * g.query_block, q_len) // s))
                real_rows = sum(row_live[x] for x in block_rows)
                for c in range(cols):
                    out[b, h, i, (c * s) // g.block] += probs[r, c] / real_rows
    return out
