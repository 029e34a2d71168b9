"""The ``foveate`` command line: ``foveate bench``, ``foveate show``, ``foveate simulate``.

Each subcommand lives in its own module with ``add_parser(subparsers)`` (which sets
``func``) and a ``run(args) -> int``. Bad arguments exit with status 2 and a one-line
reason, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, show, simulate


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the reason), then exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="foveate", description="Structured and dynamic sparse attention: benchmark, draw, simulate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (bench, show, simulate):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        # Invalid values that argparse cannot see (e.g. a kernel larger than the canvas) are
        # reported like argparse's own errors.
        print(f"foveate {args.command}: error: {err}", file=sys.stderr)
        return 2


__all__ = ["main", "build_parser"]
