"""Patterns on the command line, in one syntax for every subcommand:

    dense        --len N [--kv-len M]
    causal       --len N [--kv-len M]
    sliding      --left L [--right R] --len N [--kv-len M]
    sinks        --n S --len N [--kv-len M]
    prefix-lm    --prefix P --len N [--kv-len M]
    global       --n G --len N [--kv-len M]
    chunk-causal --chunk C --len N [--kv-len M]
    power        [--block 256] [--window 5] [--sink 1] --len N [--kv-len M]
    strided-heads --kv-heads K [--group 1] [--block 64] [--local 16] [--vertical 8] [--offset 0]
                 --len N [--kv-len M]
    documents    --lengths 100 200 ... [--inner causal|dense|sliding] [--left L] [--len N]
    neighborhood --canvas 64 64 --kernel 13 13 [--dilation 1 1] [--stride 1 1]
                 [--causal 0 0] [--extra-kv E]
    windows      --canvas 56 56 --window 7 [--shift 0] [--cyclic 0]
    axial        --canvas 64 64 --axes 1
    grid         --canvas 64 64 --grid 8
    halo         --canvas 64 64 --block 8 --halo 3
    tile-neighborhood --canvas 30 48 80 --tile-shape 6 8 8 --window 3 3 3
    circular     --canvas 64 64 --radius 8.5
    radial       --frames 21 --tokens-per-frame 3600 [--model wan|hunyuan] [--decay 1.0] [--block-rule]
    cross-scale  --q-canvas 16 16 --kv-canvas 32 32 --kernel 7 7

Every canvas kind (radial too, cross-scale not: its queries and keys differ) also takes ``--text N [--text-first]``: N global text tokens after (before) the
canvas (``P.WithText``).

and the content-selected patterns, whose blocks are chosen from queries and keys (``--inputs
FILE.pt``, or synthetic inputs with planted blocks: :mod:`.selection_inputs`):

    topk         --k K [SELECTION OPTIONS]
    topp         --mass P [SELECTION OPTIONS]          (score antidiagonal by default)
    moba         [--block 4096] [--topk 12] [--query-block 128] [--causal 1]
    xattention   [--block 128] [--stride 8] [--threshold 0.9] [--causal 1]

    SELECTION OPTIONS: [--block 128] [--query-block B] [--score mean|antidiagonal] [--stride 8]
                       [--sink-blocks 1] [--local-blocks 1] [--causal 0|1]

Values are validated by the pattern classes themselves, so messages match the Python API.
"""

from __future__ import annotations

import argparse
from typing import Callable

from .. import patterns as P
from .selection_inputs import SYNTHETIC_HELP, add_input_options

KINDS = ("dense", "causal", "sliding", "sinks", "prefix-lm", "global", "chunk-causal", "power", "strided-heads",
         "documents", "neighborhood", "windows", "axial", "grid", "halo", "tile-neighborhood", "circular",
         "radial", "cross-scale")
#: Kinds on a canvas: ``--canvas`` and their per-axis options.
CANVAS_KINDS = {
    "windows": (("window", None, "window per axis"), ("shift", [0], "Swin's shift per axis (region mask)"),
                ("cyclic", [0], "1 = the windows wrap around that axis (HiDiffusion)")),
    "axial": (("axes", None, "the axes a query attends along"),),
    "grid": (("grid", None, "MaxViT's grid per axis: keys y = y_q mod (L / grid)"),),
    "halo": (("block", None, "query block per axis"), ("halo", None, "halo per axis")),
    "tile-neighborhood": (("tile-shape", None, "STA's tile shape (--tile is the token order)"),
                          ("window", None, "window per axis, in tiles (odd)")),
    "circular": (),  # --radius (a real number), below
}

_HELP = {
    "prefix-lm": "prefix LM: a bidirectional prefix, causal after it (PrefixLM)",
    "global": "global tokens: the first N see and are seen by all (Global)",
    "chunk-causal": "chunk-causal: keys of the query's chunk and of earlier chunks (ChunkCausal)",
    "power": "PowerAttention: sinks, a local window and power-of-two distances, in blocks",
    "strided-heads": "S2-Attention: a local window and a strided shard of blocks per kv head (StridedHeads)",
    "documents": "packed documents: a pattern inside each document (Documents)",
    "windows": "Swin windows: non-overlapping, shifted (region mask) or cyclic (Windows)",
    "axial": "axial attention: keys sharing every coordinate but the attended axes (Axial)",
    "grid": "MaxViT grid attention: keys at the same position modulo L / grid (Grid)",
    "halo": "HaloNet: blocked queries, keys in the block plus a halo, clipped (Halo)",
    "tile-neighborhood": "Sliding Tile Attention: a neighborhood on the grid of tiles (TileNeighborhood)",
    "circular": "CLEAR: keys within a Euclidean radius, truncated at the borders (Circular)",
    "radial": "Radial Attention: frame 0 a sink, windows halving with the frame distance (Radial)",
    "cross-scale": "MVAR: queries on one canvas, a window on a key canvas of another resolution (CrossScale)",
}
#: Content-selected kinds: their blocks depend on the inputs.
SELECTED_KINDS = ("topk", "topp", "moba", "xattention")

_SELECTED_HELP = {
    "topk": "content selection: the k best key blocks per query block (BlockTopK)",
    "topp": "content selection: the fewest key blocks reaching a softmax mass (BlockTopP)",
    "moba": "MoBA preset: top-k of mean-pooled 4096-key blocks per 128-query block (causal)",
    "xattention": "XAttention preset: top-p (0.9) of the antidiagonal score, 128-token blocks (causal)",
}


def add_pattern_subparsers(
    parser: argparse.ArgumentParser, add_options: Callable[[argparse.ArgumentParser], None],
    add_selection_options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Give ``parser`` one sub-subcommand per pattern kind; ``add_options`` adds the
    command's own options to each static kind, ``add_selection_options`` to each
    content-selected kind (which are offered only when it is given)."""
    kinds = parser.add_subparsers(dest="pattern", metavar="PATTERN", required=True)
    for kind in KINDS:
        p = kinds.add_parser(kind, help=_HELP.get(kind, f"{kind} pattern"))
        if kind == "neighborhood":
            p.add_argument("--canvas", type=int, nargs="+", required=True, help="canvas shape, 1 to 3 axes")
            p.add_argument("--kernel", type=int, nargs="+", required=True, help="window per axis")
            p.add_argument("--dilation", type=int, nargs="+", default=[1])
            p.add_argument("--stride", type=int, nargs="+", default=[1])
            p.add_argument("--causal", type=int, nargs="+", default=[0], choices=[0, 1],
                           help="1 = causal along that axis")
            p.add_argument("--extra-kv", type=int, default=0, help="keys after the canvas seen by all")
            _text_options(p)
        elif kind in CANVAS_KINDS:
            p.add_argument("--canvas", type=int, nargs="+", required=True, help="canvas shape, 1 to 3 axes")
            for name, default, text in CANVAS_KINDS[kind]:
                p.add_argument(f"--{name}", type=int, nargs="+", default=default, required=default is None,
                               help=text)
            if kind == "circular":
                p.add_argument("--radius", type=float, required=True, help="keys with distance < radius")
            _text_options(p)
        elif kind == "radial":
            p.add_argument("--frames", type=int, required=True, help="latent frames (Wan 2.1 720p: 21)")
            p.add_argument("--tokens-per-frame", type=int, required=True, help="tokens per frame (720p: 3600)")
            p.add_argument("--model", choices=["wan", "hunyuan"], default="wan",
                           help="how far the full frames reach (default: wan)")
            p.add_argument("--decay", type=float, default=1.0, help="the windows' decay factor (default: 1)")
            p.add_argument("--block-rule", action="store_true", help="the paper's block rule (128 blocks, whole)")
            _text_options(p)
        elif kind == "cross-scale":
            p.add_argument("--q-canvas", type=int, nargs="+", required=True, help="query canvas, 1 to 3 axes")
            p.add_argument("--kv-canvas", type=int, nargs="+", required=True, help="key canvas, as many axes")
            p.add_argument("--kernel", type=int, nargs="+", required=True, help="window per axis, on the key canvas")
        else:
            if kind == "sliding":
                p.add_argument("--left", type=int, required=True)
                p.add_argument("--right", type=int, default=0)
            if kind == "sinks":
                p.add_argument("--n", type=int, required=True, help="the first N keys, seen by every query")
            _sequence_options(p, kind)
            if kind == "documents":  # the lengths follow from the documents'
                p.add_argument("--len", type=int, default=None, help="query length (default: the documents' total)")
                p.add_argument("--kv-len", type=int, default=None, help="key length (default: --len)")
            else:
                p.add_argument("--len", type=int, required=True, help="query length")
                p.add_argument("--kv-len", type=int, default=None, help="key length (default: --len)")
        add_options(p)
    if add_selection_options is None:
        return
    for kind in SELECTED_KINDS:
        # No abbreviations: --query would silently mean --query-block, --head(s) and --k(v-*) are near.
        p = kinds.add_parser(kind, help=_SELECTED_HELP[kind], description=_SELECTED_HELP[kind] + ".\n\n"
                             + SYNTHETIC_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                             allow_abbrev=False)
        _selection_pattern_options(p, kind)
        add_input_options(p)
        add_selection_options(p)


def _text_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", type=int, default=0,
                   help="global text tokens beside the canvas: P.WithText(pattern, text) (default: none)")
    p.add_argument("--text-first", action="store_true", help="the text tokens come before the canvas")


def _with_text(pattern: P.Pattern, args: argparse.Namespace) -> P.Pattern:
    if args.text:
        return P.WithText(pattern, args.text, first=args.text_first)
    if args.text_first:
        raise ValueError("--text-first needs --text N")
    return pattern


def _sequence_options(p: argparse.ArgumentParser, kind: str) -> None:
    """The options of the papers' sequence kinds (their values checked by the classes)."""
    if kind == "prefix-lm":
        p.add_argument("--prefix", type=int, required=True, help="length of the bidirectional prefix")
    elif kind == "global":
        p.add_argument("--n", type=int, required=True, help="the first N positions: global tokens")
    elif kind == "chunk-causal":
        p.add_argument("--chunk", type=int, required=True, help="chunk length")
    elif kind == "power":
        p.add_argument("--block", type=int, default=256, help="pattern block size (default: 256)")
        p.add_argument("--window", type=int, default=5, help="local key blocks, its own included (default: 5)")
        p.add_argument("--sink", type=int, default=1, help="first key blocks seen by all (default: 1)")
    elif kind == "strided-heads":
        p.add_argument("--kv-heads", type=int, required=True, help="number of kv heads")
        p.add_argument("--group", type=int, default=1, help="query heads per kv head (default: 1)")
        p.add_argument("--block", type=int, default=64, help="pattern block size (default: 64)")
        p.add_argument("--local", type=int, default=16, help="local key blocks, its own included (default: 16)")
        p.add_argument("--vertical", type=int, default=8, help="stride of each head's shard, in blocks (default: 8)")
        p.add_argument("--offset", type=int, default=0, help="shift of every head's shard (default: 0)")
    elif kind == "documents":
        p.add_argument("--lengths", type=int, nargs="+", required=True, help="the documents' lengths, in order")
        p.add_argument("--inner", choices=["causal", "dense", "sliding"], default="causal",
                       help="the pattern inside each document (default: causal)")
        p.add_argument("--left", type=int, default=None, help="window of --inner sliding (keys before the query)")


def _sequence_pattern(args: argparse.Namespace):
    """The pattern of one of the papers' sequence kinds, else ``None``."""
    kind = args.pattern
    if kind == "prefix-lm":
        return P.PrefixLM(args.prefix)
    if kind == "global":
        return P.Global(args.n)
    if kind == "chunk-causal":
        return P.ChunkCausal(args.chunk)
    if kind == "power":
        return P.PowerAttention(block=args.block, window=args.window, sink=args.sink)
    if kind == "strided-heads":
        return P.StridedHeads(block=args.block, local=args.local, vertical=args.vertical, kv_heads=args.kv_heads,
                            group=args.group, offset=args.offset)
    if kind == "documents":
        if args.inner == "sliding":
            if args.left is None:
                raise ValueError("--inner sliding needs --left (the keys before each query in its window)")
            inner = P.SlidingWindow(args.left)
        else:
            if args.left is not None:
                raise ValueError(f"--left applies to --inner sliding, not --inner {args.inner}")
            inner = P.Causal() if args.inner == "causal" else P.Dense()
        return P.Documents(list(args.lengths), inner=inner)
    return None


def _selection_pattern_options(p: argparse.ArgumentParser, kind: str) -> None:
    g = p.add_argument_group("pattern")
    if kind == "moba":
        g.add_argument("--block", type=int, default=4096, help="key block size (default: 4096)")
        g.add_argument("--topk", type=int, default=12, help="key blocks kept per query block, the "
                       "query block's own block included (default: 12)")
        g.add_argument("--query-block", type=int, default=128, help="query block size (default: 128)")
        g.add_argument("--causal", type=int, default=1, choices=[0, 1], help="1 = causal (the default)")
        return
    if kind == "xattention":
        g.add_argument("--block", type=int, default=128, help="block size (default: 128)")
        g.add_argument("--stride", type=int, default=8, help="antidiagonal stride (default: 8)")
        g.add_argument("--threshold", type=float, default=0.9,
                       help="estimated softmax mass to keep per query block, in (0, 1] (default: 0.9)")
        g.add_argument("--causal", type=int, default=1, choices=[0, 1], help="1 = causal (the default)")
        return
    if kind == "topk":
        g.add_argument("--k", type=int, required=True,
                       help="key blocks kept per query block, counting the sink and local blocks")
    else:
        g.add_argument("--mass", type=float, required=True,
                       help="estimated softmax mass to keep per query block, in (0, 1]")
    score = "mean" if kind == "topk" else "antidiagonal"
    g.add_argument("--block", type=int, default=128, help="key block size (default: 128)")
    g.add_argument("--query-block", type=int, default=None, help="query block size (default: --block)")
    g.add_argument("--score", choices=["mean", "antidiagonal"], default=score,
                   help=f"block score: mean-pooled dot products or strided antidiagonal sums (default: {score})")
    g.add_argument("--stride", type=int, default=8, help="antidiagonal stride (default: 8)")
    g.add_argument("--sink-blocks", type=int, default=1, help="first key blocks always kept (default: 1)")
    g.add_argument("--local-blocks", type=int, default=1,
                   help="diagonal band of key blocks always kept (default: 1; 0 = none)")
    g.add_argument("--causal", type=int, default=0, choices=[0, 1], help="1 = causal (default: 0)")


def selection_pattern_from_args(args: argparse.Namespace):
    """The content-selected pattern (a ``BlockTopK`` or ``BlockTopP``) that ``args`` describe;
    ValueError/TypeError on bad values."""
    causal = bool(args.causal)
    if args.pattern == "moba":
        if args.topk < 1:  # MoBA's own check would name BlockTopK's `k`
            raise ValueError(f"--topk must be >= 1, got {args.topk}")
        return P.MoBA(block=args.block, topk=args.topk, causal=causal, query_block=args.query_block)
    if args.pattern == "xattention":
        if not 0 < args.threshold <= 1:  # XAttention's own check would name BlockTopP's `mass`
            raise ValueError(f"--threshold must be in (0, 1], got {args.threshold!r}")
        return P.XAttention(block=args.block, stride=args.stride, threshold=args.threshold, causal=causal)
    common = {"block": args.block, "score": args.score, "stride": args.stride, "sink_blocks": args.sink_blocks,
              "local_blocks": args.local_blocks, "causal": causal, "query_block": args.query_block}
    if args.pattern == "topk":
        return P.BlockTopK(args.k, **common)
    return P.BlockTopP(args.mass, **common)


def _axes(values: list[int]):
    return values[0] if len(values) == 1 else tuple(values)


def pattern_from_args(args: argparse.Namespace) -> tuple[P.Pattern, int, int]:
    """``(pattern, q_len, kv_len)`` from parsed arguments for the static kinds;
    ValueError/TypeError on bad values."""
    if args.pattern in SELECTED_KINDS:
        raise ValueError(f"{args.pattern} depends on the inputs: use selection_pattern_from_args")
    if args.pattern == "neighborhood":
        pattern = P.Neighborhood(
            tuple(args.canvas), _axes(args.kernel), _axes(args.dilation), _axes(args.stride),
            _axes([bool(c) for c in args.causal]), extra_kv=args.extra_kv,
        )
        pattern = _with_text(pattern, args)
        q_len, kv_len = pattern.default_lengths()
        return pattern, q_len, kv_len
    if args.pattern == "cross-scale":
        pattern = P.CrossScale(tuple(args.q_canvas), tuple(args.kv_canvas), _axes(args.kernel))
        q_len, kv_len = pattern.default_lengths()
        return pattern, q_len, kv_len
    if args.pattern in CANVAS_KINDS or args.pattern == "radial":
        pattern = _with_text(_canvas_pattern(args), args)
        q_len, kv_len = pattern.default_lengths()
        return pattern, q_len, kv_len
    pattern = _sequence_pattern(args)
    if pattern is None:
        if args.pattern == "sinks":
            pattern = P.Sinks(args.n)
        elif args.pattern == "sliding":
            pattern = P.SlidingWindow(args.left, args.right)
        else:
            pattern = {"dense": P.Dense, "causal": P.Causal}[args.pattern]()
    q_len = args.len
    if q_len is None:  # (documents: the documents' total)
        q_len = pattern.default_lengths()[0]
    kv_len = args.kv_len if args.kv_len is not None else q_len
    pattern.check_lengths(q_len, kv_len)
    return pattern, q_len, kv_len


def _canvas_pattern(args: argparse.Namespace) -> P.Pattern:
    if args.pattern == "radial":
        return P.Radial(args.frames, args.tokens_per_frame, model=args.model, decay=args.decay,
                        block_rule=args.block_rule)
    canvas = tuple(args.canvas)
    if args.pattern == "windows":
        return P.Windows(canvas, _axes(args.window), _axes(args.shift), _axes([bool(c) for c in args.cyclic]))
    if args.pattern == "axial":
        return P.Axial(canvas, tuple(args.axes))
    if args.pattern == "grid":
        return P.Grid(canvas, _axes(args.grid))
    if args.pattern == "halo":
        return P.Halo(canvas, _axes(args.block), _axes(args.halo))
    if args.pattern == "circular":
        return P.Circular(canvas, args.radius)
    return P.TileNeighborhood(canvas, tuple(args.tile_shape), _axes(args.window))


def parse_tile(text: str):
    """``auto``, ``none`` or a shape like ``16x8`` / ``2,8,8``."""
    if text == "auto":
        return "auto"
    if text in ("none", "raster"):
        return None
    try:
        return tuple(int(t) for t in text.replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"tile must be 'auto', 'none' or like 16x8, got {text!r}") from None
