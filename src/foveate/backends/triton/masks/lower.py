"""Host-side lowering: a pattern's kernel mask description (:mod:`foveate.patterns.kernel_mask`)
to the kernels' flat :class:`~.spec.MaskSpec`.

The description is a tree of leaves (``Band``, ``Rect``, ``Chunks``, ``PowerBlocks``,
``SegmentMask``, ``Window``, ``GroupWindow``, ``FrameBands``) under ``AnyOf`` / ``AllOf`` nodes,
optionally in a tiled token order (``Tiles`` at the root). It becomes the token order, the
distinct leaves, and a register program that combines them (each node evaluates its most
demanding child first, so a tree of ``n`` leaves needs at most ``log2(n) + 1`` registers). A
pattern without a description, or a tree past the bounds (:data:`.spec.MAX_LEAVES` leaves,
:data:`.spec.REGISTERS` registers), gets one ``BITS`` leaf: its partial blocks are masked by
the layout's packed bitmask, evaluated from its ``mask_mod`` (:mod:`foveate.bitmask`).

Only this module knows the description's node classes; it never looks at a pattern's class.
"""

from __future__ import annotations

import functools
import math
import operator

import torch

from ....graph_constants import pattern_from_key, pattern_key
from ....patterns import Pattern
from ....patterns.kernel_mask import (AllOf, AnyOf, Band, Chunks, FrameBands, GroupWindow, KernelMask, PowerBlocks,
                                      Rect, SegmentMask, Tiles, TokenIds, Window)
from ....settings import policy
from . import spec as S
from .spec import MaskSpec


def mask_spec(pattern: Pattern, q_len: int, kv_len: int, *, raster_io: bool = False,
              blocks: tuple[int, int] = (128, 128)) -> MaskSpec:
    """The kernels' spec of ``pattern`` at these lengths, for layouts of ``blocks``
    ``(block_q, block_kv)`` (they matter only to a bitmask spec).

    ``raster_io``: ``pattern`` is in a tiled order (``Tiled``) and the kernels are to take the
    tensors in raster order (``q_len``, ``kv_len`` are still the tiled lengths). Memoised for
    cacheable (hashable, static) patterns: a call asks for it more than once. Under
    ``torch.compile`` it is computed when the graph is traced, a constant of the graph."""
    force = policy.force_bitmask
    if torch.compiler.is_compiling():
        return _traced_mask_spec(pattern_key(pattern), operator.index(q_len), operator.index(kv_len), raster_io,
                                 tuple(blocks), force)
    return eager_mask_spec(pattern, q_len, kv_len, raster_io, tuple(blocks), force)


def eager_mask_spec(pattern, q_len, kv_len, raster_io=False, blocks=(128, 128), force_bitmask=False) -> MaskSpec:
    """:func:`mask_spec` outside ``torch.compile`` (``force_bitmask``: as
    ``foveate.policy.force_bitmask``)."""
    if pattern.cacheable:
        return _cached_mask_spec(pattern, q_len, kv_len, raster_io, blocks, force_bitmask)
    return _mask_spec(pattern, q_len, kv_len, raster_io, blocks, force_bitmask)


@functools.lru_cache(maxsize=256)
def _cached_mask_spec(pattern, q_len, kv_len, raster_io, blocks, force_bitmask):
    return _mask_spec(pattern, q_len, kv_len, raster_io, blocks, force_bitmask)


@torch.compiler.assume_constant_result
def _traced_mask_spec(key, q_len, kv_len, raster_io, blocks, force_bitmask):
    # (run, not traced, by dynamo, where is_compiling() is still True: the eager path directly)
    return eager_mask_spec(pattern_from_key(key), q_len, kv_len, raster_io, blocks, force_bitmask)


def _mask_spec(pattern: Pattern, q_len: int, kv_len: int, raster_io: bool, blocks, force_bitmask) -> MaskSpec:
    described = pattern.kernel_mask(q_len, kv_len)
    if raster_io and not isinstance(described, Tiles):
        raise ValueError(f"raster_io needs a pattern in a tiled order (Tiled) with a kernel mask, got {pattern!r}")
    return lower(described, q_len, kv_len, raster_io=raster_io, blocks=blocks, force_bitmask=force_bitmask)


def lower(described: KernelMask | None, q_len: int, kv_len: int, *, raster_io: bool = False,
          blocks: tuple[int, int] = (128, 128), force_bitmask: bool = False) -> MaskSpec:
    """The spec of a kernel mask description at these lengths (``None``, or a tree past the
    bounds, or ``force_bitmask``: a bitmask spec for layouts of ``blocks``). ``raster_io``: the
    description is a :class:`Tiles` whose tensors stay in raster order."""
    tiles = described if isinstance(described, Tiles) else None
    if raster_io:
        if tiles is None:
            raise ValueError(f"raster_io needs a description in a tiled order (Tiles), got {described!r}")
        if any(t & (t - 1) for t in tiles.tile):
            # token_rows splits a block's positions into bit fields, one per tile side.
            raise ValueError(f"raster_io needs tile sides that are powers of two, got {tiles.tile}")
    if tiles is not None:
        tree = tiles.inner
        head = _order(tiles.canvas, tiles.tile, tiles.extra_kv, raster_io)
    else:
        tree = described
        # (the raster order of the canvas of a leaf that has one: Window, GroupWindow)
        on_canvas = next((leaf for leaf in tree.leaves() if getattr(leaf, "canvas", None) is not None),
                         None) if tree else None
        head = S.NEUTRAL_ORDER if on_canvas is None else _order(on_canvas.canvas, None, on_canvas.extra_kv, False)
    program = _program(tree, q_len, kv_len) if tree is not None and not force_bitmask else None
    if program is None:  # no description, or past the bounds: the bitmask
        leaves, ops, bits = [(S.BITS,)], [(S.LEAF, 0, 0, 0)], True
    else:
        (leaves, ops), bits = program, False
    ids = any(leaf[0] == S.SEGMENT for leaf in leaves)
    ints = [len(leaves), len(ops), *(blocks if bits else (0, 0)), int(bits), int(ids), *head]
    for leaf in leaves:
        ints += [*leaf, *(0,) * (S.LEAF_WIDTH - len(leaf))]
    for op in ops:
        ints += op
    return MaskSpec(tuple(ints))


# -- the token order ---------------------------------------------------------------------------------


def _order(canvas: tuple[int, ...], tile: tuple[int, ...] | None, extra_kv: int, raster_io: bool) -> tuple:
    ndim = len(canvas)
    tile = tile or (1,) * ndim
    grid = [-(-n // t) for n, t in zip(canvas, tile)]
    # SPLIT: the canvas coordinates of a kernel block's positions are (the block's origin) +
    # (those of its offsets), as disjoint bit fields of tiles with power-of-two sides; in 1-D
    # raster order the coordinate is the position itself.
    tile_size = math.prod(tile)
    split = all(t & (t - 1) == 0 for t in tile) and (tile_size > 1 or ndim == 1)
    head = (ndim, tile_size, math.prod(g * t for g, t in zip(grid, tile)), int(extra_kv > 0),
            int(any(g * t != n for g, t, n in zip(grid, tile, canvas))), int(raster_io), int(split))
    axes = []
    for a in range(S.MAX_AXES):
        if a < ndim:
            axes += [canvas[a], tile[a], grid[a], math.prod(grid[a + 1:]), math.prod(tile[a + 1:])]
        else:
            axes += [1, 1, 1, 1, 1]
    return (*head, *axes)


# -- leaves ------------------------------------------------------------------------------------------


def _leaf(node: KernelMask, q_len: int, kv_len: int) -> tuple[int, ...]:
    if isinstance(node, Band):
        # A side wider than the sequences is clamped to a width that still covers them (the
        # kernels compute in int32): |key - position| < 2 * (q_len + kv_len) for every pair.
        reach = 2 * (q_len + kv_len)
        left = 0 if node.left is None else min(node.left, reach)
        right = 0 if node.right is None else min(node.right, reach)
        return (S.BAND, max(-reach, min(node.offset, reach)), left, right, int(node.left is not None),
                int(node.right is not None))
    if isinstance(node, Rect):
        clip = lambda x, n: max(0, min(x, n))  # noqa: E731
        return (S.RECT, clip(node.q_start, q_len), clip(node.q_end, q_len), clip(node.kv_start, kv_len),
                clip(node.kv_end, kv_len))
    if isinstance(node, Chunks):
        return (S.CHUNKS, max(-q_len, min(node.offset, kv_len)), node.size)
    if isinstance(node, PowerBlocks):
        return (S.POWER, max(-q_len, min(node.offset, kv_len)), node.block, node.window, node.sink)
    if isinstance(node, SegmentMask):
        ids = node.ids
        if (ids.q_ids.shape[1], ids.kv_ids.shape[1]) != (q_len, kv_len):
            raise ValueError(f"segment ids for {ids.q_ids.shape[1]} queries and {ids.kv_ids.shape[1]} keys, "
                             f"the mask is lowered for {q_len} and {kv_len}")
        kv_start = q_len + TokenIds.PAD
        return (S.SEGMENT, node.offset, kv_start, kv_start + kv_len + TokenIds.PAD, ids.n_segments)
    if isinstance(node, FrameBands):
        pad = (0,) * (S.FRAME_GROUPS - len(node.widths))
        # (a width past the sequences is clamped: the kernels compute in int32)
        widths = tuple(min(w, q_len + kv_len) for w in node.widths)
        return (S.FRAMES, node.frame, node.sink, len(node.widths), *widths, *pad, *node.splits, *pad)
    if isinstance(node, Window):
        axes = []
        for a in range(S.MAX_AXES):
            axes += node.axes[a] if a < len(node.axes) else (1, 1, 1, 0)
        return (S.WINDOW, *(int(x) for x in axes))
    if isinstance(node, GroupWindow):
        axes = []
        for a in range(S.MAX_AXES):
            axes += _group_axis(node.axes[a], node.canvas[a]) if a < len(node.axes) else (1, 1, 0, 0)
        return (S.GROUP_WINDOW, *axes)
    raise TypeError(f"the Triton kernels have no predicate for {type(node).__name__} nodes")


def _group_axis(axis, length: int) -> tuple[int, int, int, int]:
    """A :class:`GroupWindow` axis ``(W, S, P, Q)`` as an axis with the same keys on ``length``
    coordinates and small integers (the kernels compute in int32)."""
    w, s, p, q = (int(x) for x in axis)
    q -= (p // s) * s  # P < S: the same windows, groups numbered from 0
    p %= s
    if length - 1 + p < s:  # every coordinate in group 0
        s, p = length, 0
    # Group starts g * S - Q lie in [-Q, length - 1 + P - Q].
    if q > length + p:  # every start before 0: start at -length - P instead, the ends kept
        w, q = w - (q - length - p), length + p
    q = max(q, -length)  # every start past the canvas: nothing seen either way
    w = max(0, min(w, q + length))  # every end past the canvas stays past it
    if max(w, s, p, abs(q)) >= 2**30:
        raise ValueError(f"GroupWindow axis {axis} on {length} coordinates: past the kernels' int32")
    return w, s, p, q


# -- the program -------------------------------------------------------------------------------------


def _flatten(node: KernelMask) -> KernelMask:
    """Nested nodes of one kind merged, single-part nodes replaced by their part."""
    if not isinstance(node, (AnyOf, AllOf)):
        return node
    parts = []
    for part in map(_flatten, node.parts):
        parts.extend(part.parts if type(part) is type(node) else (part,))
    return parts[0] if len(parts) == 1 else type(node)(tuple(parts))


def _need(node: KernelMask) -> int:
    """Registers to evaluate ``node`` (Sethi-Ullman, children most demanding first)."""
    if not isinstance(node, (AnyOf, AllOf)):
        return 1
    needs = sorted((_need(p) for p in node.parts), reverse=True)
    return max(needs[0], *(n + 1 for n in needs[1:]))


def token_ids(described: KernelMask | None) -> TokenIds | None:
    """The one :class:`TokenIds` that the description's ``SegmentMask`` leaves read (``None``:
    none; ``ValueError``: more than one)."""
    found = {id(leaf.ids): leaf.ids for leaf in (described.leaves() if described is not None else ())
             if isinstance(leaf, SegmentMask)}
    if len(found) > 1:
        raise ValueError("a kernel mask reads at most one set of token ids")
    return next(iter(found.values()), None)


def mask_ids(pattern: Pattern, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """The segment-id operand of a spec that reads ids (:attr:`MaskSpec.uses_ids`): the
    pattern's :class:`TokenIds` on ``device`` (kept there by them)."""
    ids = token_ids(pattern.kernel_mask(q_len, kv_len))
    if ids is None:
        raise ValueError(f"{pattern!r} has no token ids in its kernel mask")
    return ids.operand(device)


def _program(tree: KernelMask, q_len: int, kv_len: int):
    """``(leaves, ops)`` of ``tree``, or ``None`` past the bounds (or reading two sets of ids)."""
    tree = _flatten(tree)
    if len({id(leaf.ids) for leaf in tree.leaves() if isinstance(leaf, SegmentMask)}) > 1:
        return None
    leaves: list[tuple[int, ...]] = []
    for leaf in tree.leaves():
        ints = _leaf(leaf, q_len, kv_len)
        if ints not in leaves:
            leaves.append(ints)
    if len(leaves) > S.MAX_LEAVES or _need(tree) > S.REGISTERS:
        return None
    ops: list[tuple[int, int, int, int]] = []

    def emit(node, reg):
        if not isinstance(node, (AnyOf, AllOf)):
            ops.append((S.LEAF, reg, leaves.index(_leaf(node, q_len, kv_len)), 0))
            return
        op = S.OR if isinstance(node, AnyOf) else S.AND
        first, *rest = sorted(node.parts, key=_need, reverse=True)
        emit(first, reg)
        for part in rest:
            emit(part, reg + 1)
            ops.append((op, reg, reg, reg + 1))

    emit(tree, 0)
    return leaves, ops


__all__ = ["mask_spec", "eager_mask_spec", "lower", "mask_ids", "token_ids"]
