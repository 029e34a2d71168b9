"""Patterns on the command line, in one syntax for every subcommand:

    dense        --len N [--kv-len M]
    causal       --len N [--kv-len M]
    sliding      --left L [--right R] --len N [--kv-len M]
    neighborhood --canvas 64 64 --kernel 13 13 [--dilation 1 1] [--stride 1 1]
                 [--causal 0 0] [--extra-kv E]

Values are validated by the pattern classes themselves, so messages match the Python API.
"""

from __future__ import annotations

import argparse
from typing import Callable

from .. import patterns as P

KINDS = ("dense", "causal", "sliding", "neighborhood")


def add_pattern_subparsers(
    parser: argparse.ArgumentParser, add_options: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Give ``parser`` one sub-subcommand per pattern kind; ``add_options`` adds the
    command's own options to each."""
    kinds = parser.add_subparsers(dest="pattern", metavar="PATTERN", required=True)
    for kind in KINDS:
        p = kinds.add_parser(kind, help=f"{kind} pattern")
        if kind == "neighborhood":
            p.add_argument("--canvas", type=int, nargs="+", required=True, help="canvas shape, 1 to 3 axes")
            p.add_argument("--kernel", type=int, nargs="+", required=True, help="window per axis")
            p.add_argument("--dilation", type=int, nargs="+", default=[1])
            p.add_argument("--stride", type=int, nargs="+", default=[1])
            p.add_argument("--causal", type=int, nargs="+", default=[0], choices=[0, 1],
                           help="1 = causal along that axis")
            p.add_argument("--extra-kv", type=int, default=0, help="keys after the canvas seen by all")
        else:
            if kind == "sliding":
                p.add_argument("--left", type=int, required=True)
                p.add_argument("--right", type=int, default=0)
            p.add_argument("--len", type=int, required=True, help="query length")
            p.add_argument("--kv-len", type=int, default=None, help="key length (default: --len)")
        add_options(p)


def _axes(values: list[int]):
    return values[0] if len(values) == 1 else tuple(values)


def pattern_from_args(args: argparse.Namespace) -> tuple[P.Pattern, int, int]:
    """``(pattern, q_len, kv_len)`` from parsed arguments; ValueError/TypeError on bad values."""
    if args.pattern == "neighborhood":
        pattern = P.Neighborhood(
            tuple(args.canvas), _axes(args.kernel), _axes(args.dilation), _axes(args.stride),
            _axes([bool(c) for c in args.causal]), extra_kv=args.extra_kv,
        )
        q_len, kv_len = pattern.default_lengths()
        return pattern, q_len, kv_len
    pattern = {"dense": P.Dense, "causal": P.Causal}.get(args.pattern)
    pattern = pattern() if pattern else P.SlidingWindow(args.left, args.right)
    q_len = args.len
    kv_len = args.kv_len if args.kv_len is not None else q_len
    pattern.check_lengths(q_len, kv_len)
    return pattern, q_len, kv_len


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
