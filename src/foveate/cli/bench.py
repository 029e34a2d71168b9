"""``foveate bench``: placeholder until the benchmark runner lands."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the backends")
    p.set_defaults(func=lambda args: 1)
