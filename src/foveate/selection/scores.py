"""Fast block scores for content selection, computed from ``q`` ``(B, Hq, Nq, D)`` and ``k``
``(B, Hkv, Nkv, D)`` (``Hq % Hkv == 0``); every result is float32 ``(B, Hq, nq, nkv)`` over the
query blocks of ``query_block`` tokens and key blocks of ``block`` tokens.

- ``"mean"`` (MoBA, SpargeAttn): the scaled dot product of the mean query of a block and the
  mean key of a block (:func:`mean_logits`); as a mass estimate (:func:`mean_mass`), the
  softmax over key blocks of that logit plus the log of the block's key count (each key of the
  block is taken to score like the mean).
- ``"antidiagonal"`` (XAttention): inside each block pair, the sum of the scores along
  antidiagonals spaced ``stride`` apart, softmax-normalised across all keys of the query row and
  summed per block (:func:`antidiagonal_mass`); computed as one matmul of reshaped inputs.

Their brute-force definitions are in :mod:`.naive`.
"""

from __future__ import annotations

import importlib

import torch

from ..kernel_choice import use_triton
from .geometry import SelectionGeometry
from .select import select_topk

def _kernels(name: str):
    """The Triton module ``name`` of this package, imported on first use (Triton is optional)."""
    return importlib.import_module(f".{name}", __package__)


#: Elements of the float32 score slab one chunk of the antidiagonal estimate materialises.
_CHUNK_ELEMS = 1 << 27


def block_means(x: torch.Tensor, block: int, counts: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, H, N, D)`` -> ``(B, H, ceil(N / block), D)`` float32: the mean token of each block
    (the last block averages only the tokens it has). ``counts`` ``(ceil(N / block),)``: the
    tokens of each block when some positions are padding (zeros), which the mean leaves out; a
    block of padding alone gets 0."""
    n = x.shape[2]
    whole = n // block
    parts = []
    if whole:
        parts.append(x[:, :, : whole * block].unflatten(2, (whole, block)).sum(3, dtype=torch.float32))
    if n % block:
        parts.append(x[:, :, whole * block:].sum(2, keepdim=True, dtype=torch.float32))
    sums = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    if counts is None:
        counts = torch.full((sums.shape[2],), float(block), device=x.device)
        if n % block:
            counts[-1] = n % block
    return sums / counts.clamp_min(1)[:, None]


def _per_query_head(x: torch.Tensor, heads_q: int) -> torch.Tensor:
    """Repeat key-head tensors ``(B, Hkv, ...)`` over the query heads of their group."""
    group = heads_q // x.shape[1]
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def mean_logits(q: torch.Tensor, k: torch.Tensor, geometry: SelectionGeometry, scale: float) -> torch.Tensor:
    """``scale * mean(q block) . mean(k block)`` per block pair."""
    qm = block_means(q, geometry.query_block, geometry.q_counts(q.device))
    km = _per_query_head(block_means(k, geometry.block, geometry.kv_counts(q.device)), q.shape[1])
    return torch.matmul(qm, km.transpose(-1, -2)) * scale


def mean_topk(
    q: torch.Tensor, k: torch.Tensor, geometry: SelectionGeometry, scale: float, k_blocks: int, *,
    method: str = "auto",
) -> torch.Tensor:
    """bool ``(B, Hq, nq, nkv)``: the ``k_blocks`` best key blocks per query block by the mean
    score, ``select_topk(mean_logits(q, k, geometry, scale), k_blocks, candidates, forced)``.

    ``method``: ``"triton"`` (the fused kernels of :mod:`.mean_topk_triton`: two launches
    instead of some fifteen; a near-tie at the cut may fall the other way, as float32 sums in
    another order), ``"torch"`` (PyTorch alone) or ``"auto"`` (triton on CUDA where the kernels
    take the inputs).
    """
    if _fused_mean_topk(method, q, geometry):
        return _kernels("mean_topk_triton").mean_topk_select(q, k, geometry, scale, k_blocks)
    candidates, forced = geometry.candidates(q.device), geometry.forced(q.device)
    return select_topk(mean_logits(q, k, geometry, scale), k_blocks, candidates, forced, method="torch")


def mean_topk_with_lists(
    q: torch.Tensor, k: torch.Tensor, geometry: SelectionGeometry, scale: float, k_blocks: int,
    states: torch.Tensor | None, *, method: str = "auto",
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """:func:`mean_topk`, and where the fused kernels run, the layout's lists of the selection
    written by the same launch (:func:`.mean_topk_triton.mean_topk_lists`: a selected block
    partial or full as ``states`` says, full without them); ``(selected, lists or None)``."""
    if _fused_mean_topk(method, q, geometry):
        return _kernels("mean_topk_triton").mean_topk_lists(q, k, geometry, scale, k_blocks, states)
    return mean_topk(q, k, geometry, scale, k_blocks, method="torch"), None


def _fused_mean_topk(method: str, q: torch.Tensor, geometry: SelectionGeometry) -> bool:
    return use_triton(method, q, lambda: _kernels("mean_topk_triton").supported(q, geometry))


def mean_mass(q: torch.Tensor, k: torch.Tensor, geometry: SelectionGeometry, scale: float) -> torch.Tensor:
    """The softmax-mass estimate of the mean score, normalised over the candidate blocks."""
    logits = mean_logits(q, k, geometry, scale) + geometry.kv_counts(q.device).log()
    logits = logits.masked_fill(~geometry.candidates(q.device), float("-inf"))
    return torch.softmax(logits, dim=-1).nan_to_num_(0.0)  # rows without candidates: 0


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = -x.shape[2] % multiple
    return torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x


def antidiagonal_mass(
    q: torch.Tensor, k: torch.Tensor, geometry: SelectionGeometry, scale: float, stride: int, *,
    method: str = "auto",
) -> torch.Tensor:
    """XAttention's block mass estimate.

    With ``S = stride``, reduced query row ``r`` and reduced key ``c`` score
    ``scale / S * sum_i q[r*S + S-1-i] . k[c*S + i]`` (one antidiagonal of the ``S x S`` tile,
    averaged). Each reduced row takes a softmax over the reduced keys it may see (all, or under
    ``causal`` those whose first key is at or before the row's last query), the probabilities
    are summed per block pair and divided by the block's number of reduced rows, so that each
    query block's masses sum to 1 (to the share of its reduced rows that see a key, when causal
    attention leaves some rows without keys). ``query_block`` and ``block`` must be multiples of ``S``.
    Tokens past the ends, or canvas padding (``geometry.tiling``), score 0 inside a group; a
    group holding no token at all is no reduced key (nor row).

    ``method``: ``"triton"`` (the fused kernel of :mod:`.antidiagonal_triton`), ``"torch"``
    (reduced scores materialised a chunk of query blocks at a time: bounded memory, but
    memory-bound) or ``"auto"`` (triton on CUDA where the kernel takes the shapes).
    """
    if use_triton(method, q, lambda: _kernels("antidiagonal_triton").supported(q, geometry, stride)):
        return _kernels("antidiagonal_triton").antidiagonal_mass_triton(q, k, geometry, scale, stride)
    g, s = geometry, stride
    batch, heads_q, _, dim = q.shape
    heads_kv = k.shape[1]
    group = heads_q // heads_kv
    rows_per_q, cols_per_kv = g.query_block // s, g.block // s
    # Reduced queries: each stride group reversed and laid side by side, so that one dot product
    # with a reduced key (its group side by side) is the antidiagonal sum.
    qr = _pad_to(q, g.query_block).unflatten(2, (-1, s)).flip(3).flatten(3)
    kr = _pad_to(k, g.block).unflatten(2, (-1, s)).flatten(3)
    num_rows, num_cols = qr.shape[2], kr.shape[2]
    qr = qr.view(batch, heads_kv, group, num_rows, s * dim)
    kr = kr.view(batch, heads_kv, 1, num_cols, s * dim)

    col = torch.arange(num_cols, device=q.device)
    col_ok = _pad_to_len(g.live_groups(g.kv_len, s, q.device), num_cols)[None, :]
    row_live = _pad_to_len(g.live_groups(g.q_len, s, q.device), num_rows)
    offset = g.kv_len - g.q_len
    out = torch.empty(batch, heads_q, g.num_q_blocks, g.num_kv_blocks, dtype=torch.float32, device=q.device)
    real_rows = g.reduced_rows(s, q.device).clamp_min(1)  # blocks of padding alone: mass 0
    chunk = max(1, _CHUNK_ELEMS // max(1, batch * heads_q * rows_per_q * num_cols))
    for start in range(0, g.num_q_blocks, chunk):
        stop = min(start + chunk, g.num_q_blocks)
        r0, r1 = start * rows_per_q, stop * rows_per_q
        logits = torch.matmul(qr[:, :, :, r0:r1], kr.transpose(-1, -2)).float()
        logits = logits.view(batch, heads_q, r1 - r0, num_cols).mul_(scale / s)
        rows = torch.arange(r0, r1, device=q.device)
        allowed = col_ok
        if g.causal:
            last_query = torch.clamp(rows * s + s, max=g.q_len) - 1 + offset
            allowed = allowed & (col[None, :] * s <= last_query[:, None])
        logits.masked_fill_(~allowed, float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num_(0.0)  # rows that see nothing: 0
        probs.masked_fill_(~row_live[r0:r1, None], 0.0)  # rows made of padding only
        probs = probs.view(batch, heads_q, stop - start, rows_per_q, g.num_kv_blocks, cols_per_kv)
        out[:, :, start:stop] = probs.sum((3, 5)) / real_rows[start:stop, None]
    return out


def _pad_to_len(live: torch.Tensor, length: int) -> torch.Tensor:
    """A bool vector extended with False up to ``length``."""
    return torch.cat([live, live.new_zeros(length - live.shape[0])]) if live.shape[0] < length else live


def check_stride(stride: int, query_block: int, block: int) -> None:
    """Raise ``ValueError`` unless ``stride`` divides both block sizes."""
    if query_block % stride or block % stride:
        raise ValueError(
            f"stride={stride} must divide query_block={query_block} and block={block} "
            f"(the antidiagonal score samples whole stride groups of each block)"
        )


__all__ = ["antidiagonal_mass", "block_means", "check_stride", "mean_logits", "mean_mass", "mean_topk"]
