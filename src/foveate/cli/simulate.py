"""``foveate simulate PATTERN ...``: the simulator's record for a pattern.

Content-selected patterns (topk, topp, moba, xattention) are counted on the layout that their
selection gives for the inputs (``--inputs FILE.pt``, or synthetic inputs with planted blocks),
summed over every (batch, query head), or over ``--batch`` / ``--head``: the same fields as
for a static pattern (``speedup_bound`` against the dense kernel), plus ``heads_counted`` and
the comparison with the dense counterpart that the selection thins out (the causal pattern
when causal): ``counterpart_blocks``, ``counterpart_pairs``, ``block_density_vs_counterpart``,
``density_vs_counterpart`` and ``speedup_bound_vs_counterpart``. Block sizes default to the
largest power of two up to 128 that divides the selection's block sizes.
"""

from __future__ import annotations

import argparse
import json
import math

from .. import patterns as P
from ..draw import selection_of_heads
from ..simulator import simulate
from .pattern_args import (
    SELECTED_KINDS,
    add_pattern_subparsers,
    parse_tile,
    pattern_from_args,
    selection_pattern_from_args,
)
from .selection_inputs import check_batch_heads, inputs_from_args, select


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--block-q", type=int, default=128)
    p.add_argument("--block-kv", type=int, default=128)
    p.add_argument("--tile", type=parse_tile, default=None,
                   help="'auto', 'none' (raster order, the default) or a shape like 16x8")
    p.add_argument("--json", action="store_true", help="print the record as JSON")


def _selection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to count")
    g.add_argument("--block-q", type=int, default=None,
                   help="kernel query block, dividing the selection's (default: the largest power of two "
                        "up to 128 that divides it)")
    g.add_argument("--block-kv", type=int, default=None, help="kernel key block, dividing the selection's "
                   "(default: as --block-q)")
    g.add_argument("--batch", type=int, default=None, help="count only this batch entry (default: all)")
    g.add_argument("--head", type=int, nargs="+", default=None, metavar="H",
                   help="count only these query heads (default: all)")
    g.add_argument("--json", action="store_true", help="print the record as JSON")


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="count a pattern's block-sparse work (no kernel is run)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pattern_subparsers(p, _options, _selection_options)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.pattern in SELECTED_KINDS:
        fields = _selection_fields(args)
    else:
        pattern, q_len, kv_len = pattern_from_args(args)
        record = simulate(pattern, q_len=q_len, kv_len=kv_len, block_q=args.block_q,
                          block_kv=args.block_kv, tile=args.tile)
        fields = record.as_dict()
    if args.json:
        print(json.dumps(fields, indent=1))
        return 0
    width = max(map(len, fields))
    for name, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        print(f"{name:<{width}}  {value}")
    return 0


def _selection_fields(args: argparse.Namespace) -> dict:
    pattern = selection_pattern_from_args(args)
    block_q = args.block_q if args.block_q is not None else math.gcd(128, pattern.q_block)
    block_kv = args.block_kv if args.block_kv is not None else math.gcd(128, pattern.block)
    for flag, value in (("--block-q", block_q), ("--block-kv", block_kv)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    reason = pattern.block_size_reason(block_q, block_kv)
    if reason is not None:
        raise ValueError(f"--block-q {block_q} --block-kv {block_kv}: {pattern!r} {reason}")
    inputs = inputs_from_args(args, pattern)
    selection = select(pattern, inputs, args.inputs)
    check_batch_heads(args, selection)
    batches = [args.batch] if args.batch is not None else range(selection.selected.shape[0])
    heads = args.head if args.head is not None else range(selection.selected.shape[1])
    return selection_record(selection, block_q=block_q, block_kv=block_kv, batches=batches, heads=heads,
                            inputs=inputs.description)


def selection_record(selection: P.SelectedBlocks, *, block_q: int, block_kv: int, batches, heads,
                     inputs: str = "") -> dict:
    """The simulator's counts for a selection, summed over the (batch, query head) pairs of
    ``batches x heads``, with the comparison with the dense (or causal) counterpart."""
    q_len, kv_len = selection.q_len, selection.kv_len
    record = simulate(selection_of_heads(selection, batches, heads), q_len=q_len, kv_len=kv_len, block_q=block_q,
                      block_kv=block_kv)
    n = record.heads
    counterpart = simulate(P.Causal() if selection.causal else P.Dense(), q_len=q_len, kv_len=kv_len,
                           block_q=block_q, block_kv=block_kv)
    visited = record.blocks_visited
    c_blocks, c_pairs = n * counterpart.blocks_visited, n * counterpart.pairs_useful
    counts = ("blocks_total", "blocks_full", "blocks_partial", "pairs_useful", "pairs_computed")
    return {
        "pattern": repr(selection.source if selection.source is not None else selection),
        "inputs": inputs, "q_len": q_len, "kv_len": kv_len, "block_q": block_q, "block_kv": block_kv, "tile": None,
        "heads_counted": n, **{name: getattr(record, name) for name in counts},
        "speedup_bound": record.speedup_bound,
        "blocks_visited": visited,
        "density": record.density,
        "block_efficiency": record.block_efficiency,
        "counterpart": "causal" if selection.causal else "dense",
        "counterpart_blocks": c_blocks, "counterpart_pairs": c_pairs,
        "block_density_vs_counterpart": visited / c_blocks,
        "density_vs_counterpart": record.pairs_useful / c_pairs,
        "speedup_bound_vs_counterpart": c_blocks / visited if visited else float("inf"),
    }
