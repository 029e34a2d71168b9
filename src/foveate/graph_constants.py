"""Patterns as Python constants of a ``torch.compile`` graph.

Under ``torch.compile`` the host work of a call (the layout, the kernels' mask spec, the
automatic tile) runs once, when dynamo traces the graph, in functions marked
``torch.compiler.assume_constant_result``; the graph keeps their results as constants. Dynamo
hands such a function its arguments as Python constants, and a pattern object is not one to
every release (torch 2.11 refuses frozen dataclass instances, torch 2.13 accepts the ones
made outside the compiled code, neither a pattern made inside it). So the traced code passes
:func:`pattern_key` instead, a tuple of constants read from the pattern's fields, and the
function rebuilds an equal pattern with :func:`pattern_from_key`. Patterns are compared by
value everywhere (layout and mask caches), so the rebuilt one is as good as the original.

:class:`~foveate.patterns.Blocks` (a tensor, not a dataclass) is keyed by its content digest
and found among the live ``Blocks`` of that digest.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import weakref

import torch

#: Live ``Blocks`` patterns by their ``_key`` (shape, blocks, digest of the mask).
_BLOCKS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def register_blocks(pattern) -> None:
    """Make a ``Blocks`` pattern findable by its key (called by ``Blocks.__init__``)."""
    _BLOCKS[pattern._key] = pattern


def pattern_key(pattern) -> tuple:
    """A tuple of Python constants that stands for ``pattern`` (traced by dynamo; also runs
    eagerly). Equal patterns have equal keys."""
    from .patterns.blocks import Blocks

    if isinstance(pattern, Blocks):
        return ("blocks", pattern._key)
    names = _init_fields(type(pattern))
    if names is None:
        raise TypeError(f"{type(pattern).__name__} patterns cannot run under torch.compile (not a dataclass); "
                        "call attention() with them outside the compiled function")
    return ("fields", type(pattern), tuple((name, _value_key(getattr(pattern, name), pattern, name)) for name in names))


def _value_key(value, pattern, name: str):
    from .patterns.base import Pattern

    if isinstance(value, Pattern):
        return ("pattern", pattern_key(value))
    if isinstance(value, (tuple, list)):
        return ("tuple", tuple(_value_key(x, pattern, name) for x in value))
    if value is None or isinstance(value, (bool, str, float)):
        return ("value", value)
    if isinstance(value, (int, torch.SymInt)):
        # dynamo makes an int symbolic when a recompile sees it change (the same code with
        # another window, e.g. in the next layer); operator.index specialises it again
        return ("value", operator.index(value))
    raise TypeError(f"{type(pattern).__name__}.{name} holds a {type(value).__name__}: such patterns cannot run "
                    "under torch.compile; call attention() with them outside the compiled function")


@torch.compiler.assume_constant_result
def _init_fields(cls) -> tuple[str, ...] | None:
    """The names of ``cls``'s constructor fields (``None``: not a dataclass)."""
    if not dataclasses.is_dataclass(cls):
        return None
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def pattern_from_key(key: tuple):
    """The pattern that :func:`pattern_key` made ``key`` from (an equal one)."""
    if key[0] == "blocks":
        pattern = _BLOCKS.get(key[1])
        if pattern is None:
            raise LookupError("the Blocks pattern of this graph no longer exists")
        return pattern
    return _rebuild(key)


@functools.lru_cache(maxsize=256)
def _rebuild(key: tuple):
    _, cls, fields = key
    return cls(**{name: _value_from_key(value) for name, value in fields})


def _value_from_key(key):
    kind, body = key
    if kind == "pattern":
        return pattern_from_key(body)
    if kind == "tuple":
        return tuple(_value_from_key(x) for x in body)
    return body


__all__ = ["pattern_from_key", "pattern_key", "register_blocks"]
