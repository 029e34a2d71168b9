"""The kernels' mask spec: one flat tuple of ints, handed to every kernel as the compile-time
argument ``MASK`` (Triton-free: the host side reads and writes it; the predicates index it).

Flat because Triton 3.6 hands a tuple given for a ``tl.constexpr`` argument to the kernel as
a plain Python tuple: one level of constant indexing works, nested tuples and passing a part
of it to a function do not. Its parts, in order:

* the head: ``N_LEAVES``, ``N_OPS``, the layout's ``BLOCK_Q`` and ``BLOCK_KV`` (set only when a
  leaf reads a bitmask, else 0), ``HAS_BITS``, ``HAS_IDS`` (a leaf reads per-token segment ids:
  the kernels' ``BITS`` argument then points at them, :mod:`.segment`);
* the **token order** of the kernels' positions: ``NDIM, TILE_SIZE, N_TOKENS, EXTRA, PADDED,
  RASTER_IO, SPLIT`` and per canvas axis ``(L, T, G, GS, TS)``: canvas length, tile length,
  tiles along the axis, tiles per step of the axis, tokens per step inside a tile (raster order
  is the tiled order of 1x...x1 tiles; sequences have a neutral order). ``RASTER_IO``: the
  tensors stay in the caller's raster order while the kernels walk tiled positions, each load
  and store addressing the raster row of its position (the token permutation fused into them);
* ``N_LEAVES`` **leaves** of ``LEAF_WIDTH`` ints, a kind and its parameters (``BAND``, ``RECT``,
  ``CHUNKS``, ``POWER``, ``SEGMENT``, ``WINDOW``, ``FRAMES``, ``GROUP_WINDOW``, ``BITS``; see
  :mod:`.lower` and one predicate module per kind);
* ``N_OPS`` **ops** of 4 ints ``(op, dst, a, b)`` combining them: ``LEAF`` puts leaf ``a`` in
  register ``dst``, ``OR`` / ``AND`` put registers ``a`` op ``b`` there; the mask is register 0
  after the last op. At most :data:`MAX_LEAVES` leaves and :data:`REGISTERS` registers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

# -- positions in the flat tuple ----------------------------------------------------------------------
N_LEAVES, N_OPS, BLOCK_Q, BLOCK_KV, HAS_BITS, HAS_IDS = range(6)
ORDER_FIELDS = ("NDIM", "TILE_SIZE", "N_TOKENS", "EXTRA", "PADDED", "RASTER_IO", "SPLIT")
NDIM, TILE_SIZE, N_TOKENS, EXTRA, PADDED, RASTER_IO, SPLIT = range(6, 6 + len(ORDER_FIELDS))
AXIS_FIELDS = ("L", "T", "G", "GS", "TS")
AXIS_L, AXIS_T, AXIS_G, AXIS_GS, AXIS_TS = range(len(AXIS_FIELDS))
MAX_AXES = 3
AXES = 6 + len(ORDER_FIELDS)
AXIS_LEN = len(AXIS_FIELDS)
LEAVES = AXES + MAX_AXES * AXIS_LEN

# -- leaves ----------------------------------------------------------------------------------------------
BAND, RECT, WINDOW, BITS, BITS_GATHERED, CHUNKS, POWER, SEGMENT, FRAMES, GROUP_WINDOW = range(10)
KIND_NAMES = ("band", "rect", "window", "bits", "bits", "chunks", "power", "segment", "frames", "group_window")
#: Distance groups a ``FRAMES`` leaf holds (``kernel_mask.FrameBands.MAX_GROUPS``).
FRAME_GROUPS = 8
#: Parameters of each kind, at leaf offsets 1, 2, ...
LEAF_FIELDS = {
    BAND: ("OFFSET", "LEFT", "RIGHT", "HAS_LEFT", "HAS_RIGHT"),
    RECT: ("Q_START", "Q_END", "KV_START", "KV_END"),
    WINDOW: tuple(f"{name}{a}" for a in range(MAX_AXES) for name in ("W", "DIL", "S", "C")),
    BITS: (),
    BITS_GATHERED: (),
    CHUNKS: ("OFFSET", "SIZE"),
    POWER: ("OFFSET", "BLOCK", "WINDOW", "SINK"),
    SEGMENT: ("OFFSET", "KV_START", "TABLE_START", "N_SEG"),
    FRAMES: ("FRAME", "SINK", "GROUPS", *(f"W{g}" for g in range(FRAME_GROUPS)),
             *(f"S{g}" for g in range(FRAME_GROUPS))),
    GROUP_WINDOW: tuple(f"{name}{a}" for a in range(MAX_AXES) for name in ("W", "S", "P", "Q")),
}
WINDOW_AXIS_LEN = 4  # (W, DIL, S, C) per axis
GROUP_WINDOW_AXIS_LEN = 4  # (W, S, P, Q) per axis
LEAF_WIDTH = 1 + max(len(f) for f in LEAF_FIELDS.values())

# -- ops -------------------------------------------------------------------------------------------------
LEAF, OR, AND = range(3)
OP_WIDTH = 4
#: Bounds of a program: past them a mask runs as a bitmask (:mod:`.lower`).
MAX_LEAVES = 8
REGISTERS = 4

_NEUTRAL_AXIS = (1, 1, 1, 1, 1)
NEUTRAL_ORDER = (1, 1, 0, 0, 0, 0, 0, *_NEUTRAL_AXIS * MAX_AXES)


@dataclass(frozen=True)
class MaskSpec:
    """A pattern's mask for the kernels, as the flat tuple ``ints`` (see the module)."""

    ints: tuple[int, ...]

    def __post_init__(self):
        ints = tuple(int(x) for x in self.ints)
        if len(ints) < LEAVES or len(ints) != LEAVES + ints[N_LEAVES] * LEAF_WIDTH + ints[N_OPS] * OP_WIDTH:
            raise ValueError(f"not a flat mask spec: {len(ints)} ints {ints[:8]}...")
        object.__setattr__(self, "ints", ints)

    # -- parts -----------------------------------------------------------------------------------
    @property
    def order(self) -> tuple[int, ...]:
        return self.ints[NDIM:LEAVES]

    def leaf(self, i: int) -> tuple[int, ...]:
        base = LEAVES + i * LEAF_WIDTH
        return self.ints[base:base + LEAF_WIDTH]

    @property
    def leaves(self) -> list[tuple[int, ...]]:
        return [self.leaf(i) for i in range(self.ints[N_LEAVES])]

    @property
    def ops(self) -> list[tuple[int, ...]]:
        base = LEAVES + self.ints[N_LEAVES] * LEAF_WIDTH
        return [self.ints[base + i * OP_WIDTH:base + (i + 1) * OP_WIDTH] for i in range(self.ints[N_OPS])]

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kind of each leaf (``"band"``, ``"rect"``, ``"window"``, ``"bits"``)."""
        return tuple(KIND_NAMES[leaf[0]] for leaf in self.leaves)

    @property
    def path(self) -> str:
        """How the kernels mask partial blocks: ``"bitmask"`` (bits evaluated from ``mask_mod``),
        ``"composed"`` (several predicates combined) or ``"structured"`` (one predicate)."""
        if self.uses_bits:
            return "bitmask"
        return "composed" if self.ints[N_LEAVES] > 1 else "structured"

    @property
    def uses_bits(self) -> bool:
        """Whether a leaf reads the layout's partial bitmask."""
        return bool(self.ints[HAS_BITS])

    @property
    def bit_blocks(self) -> tuple[int, int]:
        """The layout blocks ``(block_q, block_kv)`` the bitmask is laid out for."""
        return self.ints[BLOCK_Q], self.ints[BLOCK_KV]

    @property
    def uses_ids(self) -> bool:
        """Whether a leaf reads per-token segment ids (the layout's ``token_ids``)."""
        return bool(self.ints[HAS_IDS])

    def with_gathered_bits(self) -> "MaskSpec":
        """This spec with its ``BITS`` leaves read one word per element (``BITS_GATHERED``: no
        layout-free ``arange`` to spread a word's bits, which Gluon kernels need)."""
        ints = list(self.ints)
        for i in range(self.ints[N_LEAVES]):
            if ints[LEAVES + i * LEAF_WIDTH] == BITS:
                ints[LEAVES + i * LEAF_WIDTH] = BITS_GATHERED
        return MaskSpec(tuple(ints))

    # -- the token order -------------------------------------------------------------------------
    @property
    def raster_io(self) -> bool:
        """Whether the kernels read and write raster-order tensors while walking tiled
        positions (the token permutation fused into their loads and stores)."""
        return bool(self.ints[RASTER_IO])

    @property
    def padded_io(self) -> bool:
        """Whether some positions have no memory row: canvas padding under ``raster_io``."""
        return self.raster_io and bool(self.ints[PADDED])

    def in_tiled_order(self) -> "MaskSpec":
        """This spec for tensors already in the tiled order (``raster_io`` off)."""
        ints = list(self.ints)
        ints[RASTER_IO] = 0
        return MaskSpec(tuple(ints))

    def _axes(self) -> list[tuple[int, ...]]:
        return [self.ints[AXES + a * AXIS_LEN:AXES + (a + 1) * AXIS_LEN] for a in range(self.ints[NDIM])]

    def tiled_order(self):
        """The :class:`~foveate.tiling.TiledOrder` of a tiled canvas spec."""
        from ....tiling.order import TiledOrder

        axes = self._axes()
        return TiledOrder(tuple(axis[AXIS_L] for axis in axes), tuple(axis[AXIS_T] for axis in axes))

    def positions(self, q_rows: int, kv_rows: int) -> tuple[int, int]:
        """The kernels' query and key lengths (tiled positions, padding included) for
        tensors of ``q_rows`` and ``kv_rows`` tokens; the same lengths unless ``raster_io``."""
        if not self.raster_io:
            return q_rows, kv_rows
        n_canvas = math.prod(axis[AXIS_L] for axis in self._axes())
        return self.ints[N_TOKENS], self.ints[N_TOKENS] + kv_rows - n_canvas

    # -- forms -----------------------------------------------------------------------------------
    @functools.cached_property
    def constexpr(self) -> tuple[int, ...]:
        """The kernels' ``MASK`` argument (the flat tuple)."""
        return self.ints

    def to_ints(self) -> list[int]:
        """The flat list (what a custom operator's schema can carry)."""
        return list(self.ints)

    @classmethod
    def from_ints(cls, ints) -> "MaskSpec":
        """The inverse of :meth:`to_ints`."""
        return cls(tuple(ints))

    def fields(self) -> dict:
        """Every parameter by name, for inspection: the head and the order (axis fields
        suffixed with the axis), ``leaves`` (a dict per leaf, ``KIND`` its kind's name) and
        ``ops``."""
        out = {"N_LEAVES": self.ints[N_LEAVES], "N_OPS": self.ints[N_OPS], "BLOCK_Q": self.ints[BLOCK_Q],
               "BLOCK_KV": self.ints[BLOCK_KV], "HAS_BITS": self.ints[HAS_BITS], "HAS_IDS": self.ints[HAS_IDS],
               **dict(zip(ORDER_FIELDS, self.ints[NDIM:AXES]))}
        for a in range(MAX_AXES):
            axis = self.ints[AXES + a * AXIS_LEN:AXES + (a + 1) * AXIS_LEN]
            out.update({f"{name}{a}": value for name, value in zip(AXIS_FIELDS, axis)})
        out["leaves"] = [{"KIND": KIND_NAMES[leaf[0]], **dict(zip(LEAF_FIELDS[leaf[0]], leaf[1:]))}
                         for leaf in self.leaves]
        out["ops"] = [(("LEAF", "OR", "AND")[op], dst, a, b) for op, dst, a, b in self.ops]
        return out


__all__ = ["MaskSpec"]
