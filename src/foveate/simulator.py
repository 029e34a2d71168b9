"""The speed-of-light simulator: what a block-sparse kernel must compute for a pattern,
counted from its block layout without running any kernel, and the tile choice of
``tile="auto"``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

from .patterns import Intersection, Pattern, Union
from .patterns.canvas_layout import block_counts
from .patterns.tiled import Tiled
from .tiling import candidate_tiles


@dataclass(frozen=True)
class SimulationRecord:
    """What a block-sparse kernel computes for one pattern, lengths, block sizes and tile.

    ``blocks_total`` is the dense kernel's block count on the caller's lengths; ``blocks_full``
    and ``blocks_partial`` the visited blocks of the layout (in tiled order, padding
    included); ``pairs_useful`` the allowed (query, key) pairs of the pattern;
    ``pairs_computed`` the pairs inside visited blocks (clipped at the sequence ends);
    ``speedup_bound = blocks_total / (blocks_full + blocks_partial)``: the speed of light of a
    kernel that runs every visited block at dense speed. For a layout with several (batch,
    head) slots (a content selection: ``heads`` > 1), every count is summed over the slots,
    the dense one included.
    """

    pattern: str
    q_len: int
    kv_len: int
    block_q: int
    block_kv: int
    tile: tuple[int, ...] | None
    blocks_total: int
    blocks_full: int
    blocks_partial: int
    pairs_useful: int
    pairs_computed: int
    speedup_bound: float
    heads: int = 1
    kernel_mask: bool = True
    bitmask_bytes: int = 0

    @property
    def blocks_visited(self) -> int:
        return self.blocks_full + self.blocks_partial

    @property
    def density(self) -> float:
        """Fraction of all pairs that the pattern allows."""
        return self.pairs_useful / (self.q_len * self.kv_len * self.heads)

    @property
    def block_efficiency(self) -> float:
        """Fraction of the computed pairs that are useful."""
        return self.pairs_useful / self.pairs_computed if self.pairs_computed else 1.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(blocks_visited=self.blocks_visited, density=self.density,
                   block_efficiency=self.block_efficiency)
        return out


def _lengths(pattern: Pattern, q_len, kv_len) -> tuple[int, int]:
    default = pattern.default_lengths()
    if q_len is None and kv_len is None:
        if default is None:
            raise ValueError(f"{pattern!r} has no canvas: give q_len (and kv_len)")
        return default
    if q_len is None:
        raise ValueError("kv_len given without q_len")
    return q_len, q_len if kv_len is None else kv_len


def simulate(
    pattern: Pattern,
    *,
    q_len: int | None = None,
    kv_len: int | None = None,
    block_q: int = 128,
    block_kv: int = 128,
    tile: str | tuple[int, ...] | None = None,
) -> SimulationRecord:
    """Count the work of ``pattern`` on a block-sparse kernel (no kernel is run).

    Lengths default to the canvas for canvas patterns (``kv_len`` defaults to ``q_len``).
    ``tile`` is ``None`` (raster order), a tile shape, or ``"auto"`` (the tile that
    :func:`choose_tile` picks).
    """
    q_len, kv_len = _lengths(pattern, q_len, kv_len)
    pattern.check_lengths(q_len, kv_len)
    if tile == "auto":
        tile = choose_tile(pattern, block_q=block_q, block_kv=block_kv)
    elif isinstance(tile, str):
        raise ValueError(f"tile={tile!r}: expected 'auto', None or a tuple of ints")
    target = Tiled(pattern, tuple(tile)) if tile is not None else pattern
    t_q, t_kv = target.default_lengths() if tile is not None else (q_len, kv_len)
    layout = target.build(t_q, t_kv, block_q=block_q, block_kv=block_kv)
    computed = layout.computed_pairs()
    visited = layout.num_visited()
    n_full = layout.num_full()
    useful = layout.allowed_pairs() if tile is None else pattern.build(
        q_len, kv_len, block_q=block_q, block_kv=block_kv).allowed_pairs()
    heads = layout.kv_num_blocks.shape[0] * layout.kv_num_blocks.shape[1]  # (B|1, H|1) slots
    total = -(-q_len // block_q) * -(-kv_len // block_kv) * heads
    return SimulationRecord(
        pattern=repr(pattern), q_len=q_len, kv_len=kv_len, block_q=block_q, block_kv=block_kv,
        tile=tuple(tile) if tile is not None else None, blocks_total=total, blocks_full=n_full,
        blocks_partial=visited - n_full, pairs_useful=useful, pairs_computed=computed,
        speedup_bound=total / visited if visited else float("inf"), heads=heads,
        kernel_mask=target.kernel_mask(t_q, t_kv) is not None, bitmask_bytes=layout.bitmask_bytes(),
    )


@functools.lru_cache(maxsize=256)
def choose_tile(pattern: Pattern, *, block_q: int = 128, block_kv: int = 128) -> tuple[int, ...] | None:
    """The tile for ``tile="auto"``: among tile shapes of ``block_q`` tokens, the one whose
    layout visits the fewest blocks, then has the fewest partial blocks; ``None`` (raster
    order) when no tile beats raster order, or the pattern is not a 2-D/3-D canvas pattern that
    can be tiled (``can_tile``: neighborhoods, Halo, non-cyclic Windows, compositions of them).

    A composition is ranked by the blocks its parts' layouts decide, without evaluating its
    mask on the pairs they leave undecided (counted visited and partial).
    """
    if not pattern.can_tile or len(pattern.canvas) < 2 or block_q != block_kv:
        return None

    def cost(tile):
        visited, full = _tile_counts(pattern, tile, block_q)
        return visited, visited - full

    best, best_cost = None, cost(None)
    for tile in candidate_tiles(pattern.canvas, block_q):
        c = cost(tile)
        if c < best_cost:
            best, best_cost = tile, c
    return best


def _tile_counts(pattern: Pattern, tile, block: int) -> tuple[int, int]:
    """``(visited, full)`` blocks of ``pattern`` in the order of ``tile`` (``None``: raster),
    exact for a pattern, for a composition before its undecided pairs are evaluated
    (:meth:`~foveate.patterns.compose.Union.listed_block_counts`)."""
    if isinstance(pattern, (Union, Intersection)):
        return pattern.listed_block_counts(block=block, tile=tile)
    counts = block_counts(pattern, block_q=block, block_kv=block, tile=tile)
    if counts is None:  # blocks that are not tiles (raster order), windows not known per axis: build it
        layout = pattern.build(*pattern.default_lengths(), block_q=block, block_kv=block, tile=tile)
        counts = layout.num_visited(), int(layout.full_kv_num_blocks.sum())
    return counts


__all__ = ["simulate", "SimulationRecord", "choose_tile"]
