"""``foveate show PATTERN ...``: draw a pattern to PNG (written by another change)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("show", help="draw a pattern and its block layout to PNG")
    p.set_defaults(func=lambda args: 1)
