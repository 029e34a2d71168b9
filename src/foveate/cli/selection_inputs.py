"""Inputs of the content-selected patterns on the command line (``topk``, ``topp``, ``moba``,
``xattention``): a selection needs queries and keys, read from a file or made up with planted
structure.

    --inputs FILE.pt       a dict saved with torch.save({"q": q, "k": k}, FILE.pt): q (B, Hq, Nq, D),
                           k (B, Hkv, Nkv, D), Hq % Hkv == 0; an optional float "scale"
                           (default D ** -0.5); other keys are ignored
    (no --inputs)          synthetic inputs, batch 1 (see SYNTHETIC_HELP):
                           [--len N] [--kv-len M] [--heads H] [--kv-heads G] [--dim D]
                           [--planted P] [--seed S]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import patterns as P

SYNTHETIC_HELP = """\
Without --inputs the selection runs on synthetic inputs (batch 1, seed --seed) with planted
structure, so that the picture shows what the pattern does: queries and keys are standard
normal noise; every key block j of a key head gets a direction u_j (orthonormal when there
are at most --dim key blocks, else random unit vectors) and its keys get 8 u_j added; every
query block of a query head picks --planted of the key blocks it may choose (candidates that
are neither sink nor local blocks and, when causal, lie wholly before the query block), at
random and differently per head, and its queries get 8 times the sum of their directions.
Default --planted: for top-k patterns (topk, moba) k minus the query block's forced blocks, so
that a working selection is exactly the forced and the planted blocks; for top-p patterns
(topp, xattention) 2. Planted blocks are ringed in the picture.
"""

#: Size of the planted signal (keys: STRENGTH * u_j; queries: STRENGTH * sum of u_j).
STRENGTH = 8.0
#: Defaults of the synthetic inputs (their options default to None to tell "not given").
SYNTHETIC_DEFAULTS = {"heads": 4, "dim": 64, "seed": 0}
#: Largest synthetic q or k (float32 elements) made on the CPU.
MAX_SYNTHETIC_ELEMENTS = 1 << 28


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def add_input_options(p: argparse.ArgumentParser) -> None:
    """The options that give a content-selected pattern its inputs."""
    p.add_argument_group("inputs").add_argument(
        "--inputs", metavar="FILE.pt", default=None,
        help='torch.save\'d dict with tensors "q" (B, Hq, Nq, D) and "k" (B, Hkv, Nkv, D) (optional float '
             '"scale"; other keys ignored); default: synthetic inputs with planted blocks')
    g = p.add_argument_group("synthetic inputs (without --inputs)")
    g.add_argument("--len", type=_int_at_least(1), default=None, metavar="N",
                   help="query length (default: 16 blocks, 16 * max(block, query block))")
    g.add_argument("--kv-len", type=_int_at_least(1), default=None, metavar="M", help="key length (default: --len)")
    g.add_argument("--heads", type=_int_at_least(1), default=None, metavar="H", help="query heads (default: 4)")
    g.add_argument("--kv-heads", type=_int_at_least(1), default=None, metavar="G",
                   help="key heads, dividing --heads (grouped-query attention; default: --heads)")
    g.add_argument("--dim", type=_int_at_least(1), default=None, metavar="D", help="head dim (default: 64)")
    g.add_argument("--planted", type=_int_at_least(0), default=None, metavar="P",
                   help="planted key blocks per query block (default: k minus the forced blocks for "
                        "top-k patterns, 2 for top-p patterns)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")


_SYNTHETIC_OPTIONS = ("len", "kv_len", "heads", "kv_heads", "dim", "planted", "seed")


@dataclass
class Inputs:
    """Queries and keys for a selection: ``q`` ``(B, Hq, Nq, D)``, ``k`` ``(B, Hkv, Nkv, D)``;
    ``scale`` (``None``: ``D ** -0.5``); ``planted`` bool ``(B, Hq, nq, nkv)`` for synthetic
    inputs (else ``None``); ``about``: where they come from, in short lines (for titles)."""

    q: torch.Tensor
    k: torch.Tensor
    scale: float | None
    planted: torch.Tensor | None
    about: tuple[str, ...]

    @property
    def description(self) -> str:
        """``about`` on one line (for records)."""
        return "; ".join(self.about)


def inputs_from_args(args: argparse.Namespace, pattern: P.Pattern) -> Inputs:
    """The inputs that ``args`` ask for; ``ValueError`` naming the option on bad values."""
    if args.inputs is not None:
        given = [name for name in _SYNTHETIC_OPTIONS if getattr(args, name) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"{flag}: only for synthetic inputs, not with --inputs (the lengths, heads and "
                             f"head dim come from the tensors)")
        return load_inputs(args.inputs)
    q_block = pattern.q_block
    q_len = args.len if args.len is not None else 16 * max(pattern.block, q_block)
    kv_len = args.kv_len if args.kv_len is not None else q_len
    heads = args.heads if args.heads is not None else SYNTHETIC_DEFAULTS["heads"]
    kv_heads = args.kv_heads if args.kv_heads is not None else heads
    if heads % kv_heads:
        raise ValueError(f"--kv-heads {kv_heads} must divide --heads {heads}")
    dim = args.dim if args.dim is not None else SYNTHETIC_DEFAULTS["dim"]
    seed = args.seed if args.seed is not None else SYNTHETIC_DEFAULTS["seed"]
    pattern.check_lengths(q_len, kv_len)
    elements = max(heads * q_len, kv_heads * kv_len) * dim
    if elements > MAX_SYNTHETIC_ELEMENTS:
        raise ValueError(f"--len {q_len} --kv-len {kv_len} --heads {heads} --dim {dim}: synthetic q or k of "
                         f"{elements} elements, more than {MAX_SYNTHETIC_ELEMENTS} (1 GiB); make them smaller")
    q, k, planted = synthetic_inputs(pattern, q_len=q_len, kv_len=kv_len, heads=heads, kv_heads=kv_heads,
                                     dim=dim, planted=args.planted, seed=seed)
    per_block = (str(args.planted) if args.planted is not None
                 else "k minus its forced ones" if _is_top_k(pattern) else "2")
    about = (f"synthetic inputs (seed {seed}): q (1, {heads}, {q_len}, {dim}), k (1, {kv_heads}, {kv_len}, {dim})",
             f"key blocks planted per query block: {per_block}")
    return Inputs(q, k, None, planted, about)


def load_inputs(path: str) -> Inputs:
    """Read ``{"q": q, "k": k[, "scale": s]}`` saved with ``torch.save`` (onto the CPU)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--inputs {path}: no such file")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (any unreadable file: one line naming the option)
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"--inputs {path}: torch.load cannot read it ({type(err).__name__}: {reason})") from None
    expected = 'a dict with tensors "q" (B, Hq, Nq, D) and "k" (B, Hkv, Nkv, D), saved with torch.save'
    if not isinstance(data, dict):
        raise TypeError(f"--inputs {path}: expected {expected}; got a {type(data).__name__}")
    missing = [name for name in ("q", "k") if not isinstance(data.get(name), torch.Tensor)]
    if missing:
        raise ValueError(f"--inputs {path}: expected {expected}; {' and '.join(map(repr, missing))} missing or "
                         f"not a tensor (keys: {sorted(map(str, data))})")
    scale = data.get("scale")
    if scale is not None:
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            scale = scale.item()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"--inputs {path}: \"scale\" must be a positive float, got {scale!r}")
        scale = float(scale)
    q, k = data["q"], data["k"]
    about = f"inputs {file.name}: q {tuple(q.shape)}, k {tuple(k.shape)}, {str(q.dtype).removeprefix('torch.')}"
    if scale is not None:
        about += f", scale {scale:.4g}"
    return Inputs(q, k, scale, None, (about,))


def select(pattern: P.Pattern, inputs: Inputs, source: str | None) -> P.SelectedBlocks:
    """``pattern.select`` on the inputs; errors about the tensors name ``--inputs FILE``."""
    try:
        return pattern.select(inputs.q, inputs.k, scale=inputs.scale)
    except (ValueError, TypeError) as err:
        if source is None:
            raise
        raise type(err)(f"--inputs {source}: {err}") from None


def check_batch_heads(args: argparse.Namespace, selection: P.SelectedBlocks) -> None:
    """``--batch`` / ``--head`` against the selection's ``(B, Hq)``; ValueError naming them."""
    b_size, h_size = selection.selected.shape[:2]
    if args.batch is not None and not 0 <= args.batch < b_size:
        raise ValueError(f"--batch {args.batch}: the inputs have batch size {b_size} (0 to {b_size - 1})")
    heads = args.head or []
    bad = [h for h in heads if not 0 <= h < h_size]
    if bad:
        raise ValueError(f"--head {bad[0]}: the inputs have {h_size} query heads (0 to {h_size - 1})")
    if len(set(heads)) != len(heads):
        raise ValueError(f"--head {' '.join(map(str, heads))}: each head at most once")


def _is_top_k(pattern: P.Pattern) -> bool:
    return isinstance(pattern, P.BlockTopK)


def free_blocks(pattern, q_len: int, kv_len: int) -> torch.Tensor:
    """``(nq, nkv)`` bool: the blocks a query block may be planted with (candidates that are
    not forced and, when causal, lie wholly at or before the query block's first position)."""
    g = pattern.geometry(q_len, kv_len)
    free = g.candidates("cpu") & ~g.forced("cpu")
    if pattern.causal:
        first = torch.arange(g.num_q_blocks) * g.query_block + (kv_len - q_len)
        last_key = torch.clamp((torch.arange(g.num_kv_blocks) + 1) * g.block, max=kv_len) - 1
        free = free & (last_key[None, :] <= first[:, None])
    return free


def synthetic_inputs(pattern, *, q_len: int, kv_len: int, heads: int = 4, kv_heads: int | None = None,
                     dim: int = 64, planted: int | None = None, seed: int = 0):
    """Queries and keys with planted structure for a content-selected ``pattern`` (see
    ``SYNTHETIC_HELP``). Returns ``q`` ``(1, heads, q_len, dim)``, ``k`` ``(1, kv_heads,
    kv_len, dim)`` (float32) and ``planted`` bool ``(1, heads, nq, nkv)``.

    ``planted=None`` plants ``k - |forced|`` blocks per query block for a top-k pattern (so
    that the right selection is ``forced | planted``) and 2 for a top-p pattern; fewer where
    fewer blocks are free."""
    kv_heads = heads if kv_heads is None else kv_heads
    gen = torch.Generator().manual_seed(seed)
    g = pattern.geometry(q_len, kv_len)
    nq, nkv = g.num_q_blocks, g.num_kv_blocks
    free = free_blocks(pattern, q_len, kv_len)
    if planted is None:
        want = (pattern.k - g.forced("cpu").sum(-1)) if _is_top_k(pattern) else torch.full((nq,), 2)
    else:
        want = torch.full((nq,), planted)
    count = torch.minimum(want.clamp_min(0), free.sum(-1))  # (nq,)
    # A random order of the free blocks per (head, query block); the first `count` are planted.
    order = torch.rand(1, heads, nq, nkv, generator=gen).masked_fill(~free, 2.0)
    rank = order.argsort(-1).argsort(-1)
    chosen = free & (rank < count[:, None])

    if nkv <= dim:  # orthonormal directions per key head
        u = torch.linalg.qr(torch.randn(kv_heads, dim, nkv, generator=gen))[0].transpose(1, 2)
    else:
        u = torch.randn(kv_heads, nkv, dim, generator=gen)
        u = u / u.norm(dim=-1, keepdim=True)
    q = torch.randn(1, heads, q_len, dim, generator=gen)
    k = torch.randn(1, kv_heads, kv_len, dim, generator=gen)
    k += STRENGTH * u[None, :, torch.arange(kv_len) // g.block]
    u_q = u.repeat_interleave(heads // kv_heads, dim=0)  # (heads, nkv, dim)
    q_dir = torch.matmul(chosen.float(), u_q)  # (1, heads, nq, dim)
    q += STRENGTH * q_dir[:, :, torch.arange(q_len) // g.query_block]
    return q, k, chosen


__all__ = [
    "SYNTHETIC_HELP", "Inputs", "add_input_options", "check_batch_heads", "free_blocks", "inputs_from_args",
    "load_inputs", "select", "synthetic_inputs",
]
