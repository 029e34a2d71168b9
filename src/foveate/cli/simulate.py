"""``foveate simulate PATTERN ...``: the simulator's record for a pattern."""

from __future__ import annotations

import argparse
import json

from ..simulator import simulate
from .pattern_args import add_pattern_subparsers, parse_tile, pattern_from_args


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--block-q", type=int, default=128)
    p.add_argument("--block-kv", type=int, default=128)
    p.add_argument("--tile", type=parse_tile, default=None,
                   help="'auto', 'none' (raster order, the default) or a shape like 16x8")
    p.add_argument("--json", action="store_true", help="print the record as JSON")


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="count a pattern's block-sparse work (no kernel is run)",
                       description=__doc__)
    add_pattern_subparsers(p, _options)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
