"""``foveate show PATTERN ...``: draw a pattern and its block layout to PNG.

1-D patterns (dense, causal, sliding, sinks, prefix-lm, global, chunk-causal, power,
documents, a 1-D neighborhood): the mask matrix beside the block layout; ``--query`` marks one
query's row. A pattern that differs per head (strided-heads) is drawn for its first 4 query
heads side by side, each panel naming its head. 2-D/3-D neighborhoods: the keys that one query
sees on the canvas (for 3-D, one panel per slice along axis 0 that holds allowed keys, at
most 8), and the block layout in raster order beside the tiled order of ``--tile``.

Block sizes: 128 by default, halved (down to 16) until there are at least 16 query blocks,
so that small patterns still show their block structure; with an explicit ``--tile``, the
tile size (tiled blocks are whole tiles). ``--block-kv`` defaults to ``--block-q``.

Content-selected patterns (topk, topp, moba, xattention) select their blocks from inputs
(``--inputs FILE.pt``, or synthetic inputs with planted blocks): one column per query head
(``--head``, default the first 4; ``--batch``, default 0) with the selected blocks (forced
sink / local blocks apart from those chosen by score, planted blocks ringed), and below them
the token mask they imply when the sequences are at most 4096 tokens long.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .pattern_args import (
    SELECTED_KINDS,
    add_pattern_subparsers,
    parse_tile,
    pattern_from_args,
    selection_pattern_from_args,
)
from .selection_inputs import check_batch_heads, inputs_from_args, select


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="foveate-show.png", metavar="FILE.png",
                   help="where to write the figure (default: foveate-show.png; .svg/.pdf also work)")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default: 100)")


def _options(p: argparse.ArgumentParser) -> None:
    _output_options(p)
    p.add_argument("--query", type=int, nargs="+", default=None, metavar="I",
                   help="the query to show: a flat index, or one coordinate per canvas axis "
                        "(default: the canvas centre; none for 1-D sequences)")
    p.add_argument("--tile", type=parse_tile, default="auto",
                   help="tiled order beside raster order: 'auto' (the default: the simulator's "
                        "choice), 'none' (raster only) or a shape like 16x8")
    p.add_argument("--block-q", type=int, default=None,
                   help="query block size (default: 128, smaller for short patterns, or the tile size)")
    p.add_argument("--block-kv", type=int, default=None, help="key block size (default: --block-q)")


def _selection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to draw")
    _output_options(g)
    g.add_argument("--batch", type=int, default=0, help="batch entry to draw (default: 0)")
    g.add_argument("--head", type=int, nargs="+", default=None, metavar="H",
                   help="query heads to draw side by side, at most 4 (default: the first 4)")


def add_parser(sub) -> None:
    p = sub.add_parser("show", help="draw a pattern and its block layout to PNG", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pattern_subparsers(p, _options, _selection_options)
    p.set_defaults(func=run)


def _out_path(text: str) -> Path:
    out = Path(text)
    if not out.parent.is_dir():
        raise ValueError(f"--out {text}: folder {str(out.parent)!r} does not exist")
    return out


def _save(make_figure, out: Path) -> int:
    """Write the figure ``make_figure()`` draws to ``out`` and print its path; exit status 1
    when matplotlib (an optional extra) is missing."""
    try:
        fig = make_figure()
    except ImportError as err:
        print(f"foveate show: error: {err}", file=sys.stderr)
        return 1
    fig.savefig(out)
    print(out)
    return 0


def _run_selection(args: argparse.Namespace) -> int:
    pattern = selection_pattern_from_args(args)
    out = _out_path(args.out)
    if args.dpi < 1:
        raise ValueError(f"dpi must be a positive int, got {args.dpi}")
    from ..draw import MAX_HEADS, figure_for_selection, selection_hint

    if args.head is not None and len(args.head) > MAX_HEADS:  # before the selection runs
        raise ValueError(f"--head: at most {MAX_HEADS} heads side by side, got {len(args.head)}")
    inputs = inputs_from_args(args, pattern)
    selection = select(pattern, inputs, args.inputs)
    check_batch_heads(args, selection)
    code = _save(lambda: figure_for_selection(selection, batch=args.batch, heads=args.head, planted=inputs.planted,
                                              note="\n".join(inputs.about), dpi=args.dpi), out)
    hint = selection_hint(selection)
    if code == 0 and hint is not None:  # the figure says so too, but is not always looked at closely
        print(f"foveate show: note: {hint}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    if args.pattern in SELECTED_KINDS:
        return _run_selection(args)
    pattern, q_len, kv_len = pattern_from_args(args)
    out = _out_path(args.out)
    query = args.query
    if query is not None:
        query = query[0] if len(query) == 1 else tuple(query)
    from ..draw import figure_for

    return _save(lambda: figure_for(pattern, q_len=q_len, kv_len=kv_len, query=query, block_q=args.block_q,
                                    block_kv=args.block_kv, tile=args.tile, dpi=args.dpi), out)
