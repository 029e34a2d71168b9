"""``foveate show PATTERN ...``: draw a pattern and its block layout to PNG.

1-D patterns (dense, causal, sliding, a 1-D neighborhood): the mask matrix beside the block
layout; ``--query`` marks one query's row. 2-D/3-D neighborhoods: the keys that one query
sees on the canvas (for 3-D, one panel per slice along axis 0 that holds allowed keys, at
most 8), and the block layout in raster order beside the tiled order of ``--tile``.

Block sizes: 128 by default, halved (down to 16) until there are at least 16 query blocks,
so that small patterns still show their block structure; with an explicit ``--tile``, the
tile size (tiled blocks are whole tiles). ``--block-kv`` defaults to ``--block-q``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .pattern_args import add_pattern_subparsers, parse_tile, pattern_from_args


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="foveate-show.png", metavar="FILE.png",
                   help="where to write the figure (default: foveate-show.png; .svg/.pdf also work)")
    p.add_argument("--query", type=int, nargs="+", default=None, metavar="I",
                   help="the query to show: a flat index, or one coordinate per canvas axis "
                        "(default: the canvas centre; none for 1-D sequences)")
    p.add_argument("--tile", type=parse_tile, default="auto",
                   help="tiled order beside raster order: 'auto' (the default: the simulator's "
                        "choice), 'none' (raster only) or a shape like 16x8")
    p.add_argument("--block-q", type=int, default=None,
                   help="query block size (default: 128, smaller for short patterns, or the tile size)")
    p.add_argument("--block-kv", type=int, default=None, help="key block size (default: --block-q)")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default: 100)")


def add_parser(sub) -> None:
    p = sub.add_parser("show", help="draw a pattern and its block layout to PNG", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pattern_subparsers(p, _options)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pattern, q_len, kv_len = pattern_from_args(args)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ValueError(f"--out {args.out}: folder {str(out.parent)!r} does not exist")
    query = args.query
    if query is not None:
        query = query[0] if len(query) == 1 else tuple(query)
    try:
        from ..draw import figure_for

        fig = figure_for(pattern, q_len=q_len, kv_len=kv_len, query=query, block_q=args.block_q,
                         block_kv=args.block_kv, tile=args.tile, dpi=args.dpi)
    except ImportError as err:  # matplotlib is an optional extra
        print(f"foveate show: error: {err}", file=sys.stderr)
        return 1
    fig.savefig(out)
    print(out)
    return 0
