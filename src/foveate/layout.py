"""BlockLayout: the compiled, block-level form of a pattern that kernels consume.

Field names and meanings follow FlexAttention's ``BlockMask`` so that conversion is direct.
All index tensors are ``int32`` with leading axes ``(B or 1, H or 1)`` (1 = broadcast).
For each query block, ``kv_indices`` lists the **partial** kv blocks (some but not all pairs
allowed: the kernel applies the mask) and ``full_kv_indices`` the **full** ones (every pair
allowed: no mask work), both ascending; blocks with no allowed pair are not listed. The
``q_*`` fields are the transpose (for each kv block, the q blocks that visit it), used by the
backward pass; a layout may build them when they are first read (layouts made on every call,
as content-selected ones, then leave them to the backward: inference never builds them).
Entries past a row's count are padding (zeros).

Lengths need not be multiples of the block sizes: the last block of each axis is short, and
"full" refers to the pairs that exist.

Where every row's full blocks are one run of consecutive blocks (dense, causal and banded
patterns), a layout may hold each run as its first block (``full_kv_starts``, ``full_q_starts``)
and build the full lists only when a consumer reads them: a million-token causal layout then
takes memory in proportion to its query blocks, not to its visited blocks.
"""

from __future__ import annotations

from typing import Callable

import torch

from .kernel_choice import triton_importable, use_triton

#: A layout's eight list tensors, in the order the kernels' operator takes them (FlexAttention's
#: BlockMask has fields of the same names).
LIST_FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
               "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices")

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: Elements of the boolean scratch tensor evaluated at once by the generic builder.
_EVAL_ELEMS = 1 << 23

EMPTY, PARTIAL, FULL = 0, 1, 2


class BlockLayout:
    """Which kv blocks each q block visits, split into partial and full blocks.

    Build one with a pattern's ``build()``, :meth:`from_pairs`, :meth:`from_block_grid` or
    :func:`layout_from_mask_mod`. ``mask_mod`` (optional) is the pattern's mask for these
    lengths; ``allowed_pairs`` (optional) the number of allowed (query, key) pairs summed
    over the leading axes, known analytically by structured builders. The four ``q_*`` lists
    are given, or ``transposed`` is: a function returning them, called when one is first read.
    """

    def __init__(
        self,
        *,
        block_q: int,
        block_kv: int,
        q_len: int,
        kv_len: int,
        kv_num_blocks: torch.Tensor,
        kv_indices: torch.Tensor,
        full_kv_num_blocks: torch.Tensor,
        full_kv_indices: torch.Tensor | None = None,
        full_kv_starts: torch.Tensor | None = None,
        q_num_blocks: torch.Tensor | None = None,
        q_indices: torch.Tensor | None = None,
        full_q_num_blocks: torch.Tensor | None = None,
        full_q_indices: torch.Tensor | None = None,
        full_q_starts: torch.Tensor | None = None,
        mask_mod: MaskMod | None = None,
        allowed_pairs: int | None = None,
        transposed: Callable[[], tuple[torch.Tensor, ...]] | None = None,
    ) -> None:
        self.block_q, self.block_kv = block_q, block_kv
        self.q_len, self.kv_len = q_len, kv_len
        self.kv_num_blocks, self.kv_indices = kv_num_blocks, kv_indices
        self.full_kv_num_blocks = full_kv_num_blocks
        if (full_kv_indices is None) == (full_kv_starts is None):
            raise ValueError("give full_kv_indices or full_kv_starts (the first block of each row's run), one of them")
        self._full_kv_indices, self.full_kv_starts = full_kv_indices, full_kv_starts
        given = (q_num_blocks, q_indices, full_q_num_blocks, full_q_indices if full_q_starts is None else full_q_starts)
        if transposed is None and any(t is None for t in given):
            raise ValueError("the four q_* lists are needed (full_q_starts may stand for full_q_indices), "
                             "or transposed: a function that returns them")
        if transposed is not None and any(t is not None for t in given):
            raise ValueError("give the q_* lists or transposed (a function that returns them), not both")
        if full_q_starts is not None and full_q_indices is not None:
            raise ValueError("give full_q_indices or full_q_starts, not both")
        #: The first block of each column's run of full q blocks, when the layout holds runs.
        self.full_q_starts = full_q_starts
        self._transposed = given[:3] + (full_q_indices,) if transposed is None else None
        self._build_transposed = transposed
        self.mask_mod = mask_mod
        self._allowed_pairs = allowed_pairs
        #: ``True`` when every query block's full kv blocks are one run of consecutive blocks
        #: (dense, causal and windowed rows; the forward kernel then walks them as a range),
        #: ``False`` when not, ``None`` when not known (:meth:`find_full_runs`).
        self.full_runs: bool | None = True if full_kv_starts is not None else None
        #: The mean number of kv blocks a query block visits (full and partial, over batch rows
        #: and heads), ``None`` when not known (:meth:`find_row_blocks`).
        self.row_blocks: float | None = None

    def find_row_blocks(self) -> float:
        """Set and return :attr:`row_blocks` (one host sync; for layouts used many times)."""
        if self.row_blocks is None:
            self.row_blocks = float((self.kv_num_blocks + self.full_kv_num_blocks).float().mean())
        return self.row_blocks

    def find_full_runs(self) -> bool:
        """Set and return :attr:`full_runs` (one host sync; for layouts used many times)."""
        if self.full_runs is None and self.full_kv_starts is not None:
            self.full_runs = True
        if self.full_runs is None:
            count, idx = self.full_kv_num_blocks, self.full_kv_indices
            step = torch.arange(idx.shape[-1], device=idx.device, dtype=idx.dtype)
            listed = step < count[..., None]
            self.full_runs = bool(((idx - idx[..., :1] == step) | ~listed).all())
        return self.full_runs

    # -- lists built on first use (full runs held as starts; the transposed lists) -------
    @property
    def full_kv_indices(self) -> torch.Tensor:
        if self._full_kv_indices is None:
            self._full_kv_indices = runs_to_lists(self.full_kv_num_blocks, self.full_kv_starts)
        return self._full_kv_indices

    @property
    def holds_runs(self) -> bool:
        """Whether the full kv lists are held as runs (:attr:`full_kv_starts`) and not built yet."""
        return self._full_kv_indices is None

    def _held_q_lists(self) -> tuple:
        """The four ``q_*`` lists as held (the last ``None`` while they are runs: ``full_q_starts``)."""
        if self._transposed is None:
            self._transposed = tuple(self._build_transposed())
            self._build_transposed = None
        return self._transposed

    def _q_lists(self) -> tuple[torch.Tensor, ...]:
        held = self._held_q_lists()
        if held[3] is None:  # (a run per column: its list built now)
            self._transposed = held = held[:3] + (runs_to_lists(held[2], self.full_q_starts),)
        return held

    @property
    def has_transposed(self) -> bool:
        """Whether the ``q_*`` lists exist yet (``False``: built when first read)."""
        return self._transposed is not None

    @property
    def q_num_blocks(self) -> torch.Tensor:
        return self._held_q_lists()[0]

    @property
    def q_indices(self) -> torch.Tensor:
        return self._held_q_lists()[1]

    @property
    def full_q_num_blocks(self) -> torch.Tensor:
        return self._held_q_lists()[2]

    @property
    def full_q_indices(self) -> torch.Tensor:
        return self._q_lists()[3]

    # -- shapes ------------------------------------------------------------------------
    @property
    def num_q_blocks(self) -> int:
        return -(-self.q_len // self.block_q)

    @property
    def num_kv_blocks(self) -> int:
        return -(-self.kv_len // self.block_kv)

    @property
    def batch_heads(self) -> tuple[int, int]:
        """``(B or 1, H or 1)``: the leading axes of every index tensor."""
        return tuple(self.kv_num_blocks.shape[:2])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.kv_indices.device

    def __repr__(self) -> str:
        b, h = self.batch_heads
        return (
            f"BlockLayout(q_len={self.q_len}, kv_len={self.kv_len}, block=({self.block_q}, "
            f"{self.block_kv}), batch_heads=({b}, {h}), visited={self.num_visited()}/"
            f"{b * h * self.num_q_blocks * self.num_kv_blocks} blocks, "
            f"full={int(self.full_kv_num_blocks.sum())})"
        )

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def from_pairs(
        cls,
        row: torch.Tensor,
        col: torch.Tensor,
        full: torch.Tensor,
        *,
        batch_heads: tuple[int, int] = (1, 1),
        block_q: int,
        block_kv: int,
        q_len: int,
        kv_len: int,
        mask_mod: MaskMod | None = None,
        allowed_pairs: int | None = None,
    ) -> "BlockLayout":
        """Build from a flat list of visited block pairs.

        ``row`` is ``(b * H + h) * nq + q_block`` (``b, h`` index the leading axes given by
        ``batch_heads``), ``col`` the kv block, ``full`` whether every pair is allowed.
        Pairs must be unique; any order is accepted.
        """
        bh = batch_heads[0] * batch_heads[1]
        nq, nkv = -(-q_len // block_q), -(-kv_len // block_kv)
        row, col, full = row.long(), col.long(), full.bool()
        # kv lists: order by (row, col); builders usually hand the pairs over in that order.
        key = row * nkv + col
        if key.numel() > 1 and not bool((key[1:] > key[:-1]).all()):
            order = torch.argsort(key)
            row, col, full = row[order], col[order], full[order]
        kv = _pack_lists(row, col, full, bh * nq, batch_heads, nq)
        # q lists (transpose): order by (b, h, col, q_block); a stable sort keeps q ascending.
        bh_idx, qb = row // nq, row % nq
        t_row = bh_idx * nkv + col
        order = torch.argsort(t_row, stable=True)
        q = _pack_lists(t_row[order], qb[order], full[order], bh * nkv, batch_heads, nkv)
        return cls(
            block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
            kv_num_blocks=kv[0], kv_indices=kv[1], full_kv_num_blocks=kv[2], full_kv_indices=kv[3],
            q_num_blocks=q[0], q_indices=q[1], full_q_num_blocks=q[2], full_q_indices=q[3],
            mask_mod=mask_mod, allowed_pairs=allowed_pairs,
        )

    @classmethod
    def from_block_grid(
        cls, grid: torch.Tensor, *, block_q: int, block_kv: int, q_len: int, kv_len: int,
        mask_mod: MaskMod | None = None, allowed_pairs: int | None = None, method: str = "auto",
        states: torch.Tensor | None = None, lazy_transposed: bool = False,
        row_lists: list[torch.Tensor] | None = None,
    ) -> "BlockLayout":
        """Build from a dense ``(B|1, H|1, nq, nkv)`` grid of 0 (empty), 1 (partial), 2 (full),
        or from a bool selection of blocks: full ones, or given ``states`` (int8 ``(nq, nkv)``,
        0/1/2, the same for every batch and head), the state there of each selected block
        (e.g. a causal selection: its blocks' causal states), without writing the combined grid.

        ``method``: ``"torch"`` (lists trimmed to the longest one; one host sync), ``"triton"``
        (a Triton kernel, lists as wide as the grid, no host sync) or ``"auto"`` (triton for
        CUDA grids). ``lazy_transposed``: build the ``q_*`` lists when first read (the layout
        keeps ``grid`` and ``states`` until then). ``row_lists``: the kv lists of this grid
        (``[counts, indices, full_counts, full_indices]``), when already built elsewhere (the
        selection kernel writes those of its selection): only the transposed lists are built.
        """
        if grid.dim() != 4:
            raise ValueError(f"grid must have 4 dims (B|1, H|1, nq, nkv), got shape {tuple(grid.shape)}")
        b, h, nq, nkv = grid.shape
        if (nq, nkv) != (-(-q_len // block_q), -(-kv_len // block_kv)):
            raise ValueError(
                f"grid of shape {tuple(grid.shape)} does not match q_len={q_len}, kv_len={kv_len} "
                f"with blocks ({block_q}, {block_kv})"
            )
        if states is not None:
            if grid.dtype != torch.bool:
                raise ValueError(f"states go with a bool grid (a selection of blocks), got a grid of dtype {grid.dtype}")
            if states.shape != (nq, nkv) or states.dtype != torch.int8:
                raise ValueError(f"states must be int8 of shape {(nq, nkv)}, got {states.dtype} "
                                 f"{tuple(states.shape)}")
        if use_triton(method, grid, triton_importable):
            # Lists as wide as the grid, no host sync: the path of per-call (selected) layouts.
            from .layout_triton import grid_to_lists

            def lists(rows: bool, columns: bool):
                return grid_to_lists(grid, states, rows=rows, columns=columns)
        else:
            # A block's place in its row's list is the count of listed blocks before it
            # (cumsum): O(grid) work and one host sync per build (the list widths).
            states_grid = grid_states(grid, states)

            def lists(rows: bool, columns: bool):
                return _trimmed_lists([states_grid if rows else None,
                                       states_grid.transpose(-1, -2) if columns else None])
        if row_lists is not None:
            if len(row_lists) != 4 or row_lists[0].shape != (b, h, nq) or row_lists[1].shape[:3] != (b, h, nq):
                raise ValueError(f"row_lists must be the 4 kv lists of a {(b, h, nq, nkv)} grid, got shapes "
                                 f"{[tuple(t.shape) for t in row_lists]}")
            kv, q = row_lists, (None if lazy_transposed else lists(False, True)[1])
        else:
            kv, q = lists(True, not lazy_transposed)
        transposed = (lambda: lists(False, True)[1]) if lazy_transposed else None
        return cls(
            block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
            kv_num_blocks=kv[0], kv_indices=kv[1], full_kv_num_blocks=kv[2], full_kv_indices=kv[3],
            **({} if lazy_transposed else dict(q_num_blocks=q[0], q_indices=q[1], full_q_num_blocks=q[2],
                                               full_q_indices=q[3])),
            mask_mod=mask_mod, allowed_pairs=allowed_pairs, transposed=transposed,
        )

    # -- views -------------------------------------------------------------------------
    def pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The visited block pairs as flat ``(row, col, full)``, ordered by row then col.

        ``row = (b * H + h) * nq + q_block`` as in :meth:`from_pairs`.
        """
        rows, cols, fulls = [], [], []
        for num, idx, is_full in (
            (self.kv_num_blocks, self.kv_indices, False),
            (self.full_kv_num_blocks, self.full_kv_indices, True),
        ):
            num = num.reshape(-1).long()
            idx = idx.reshape(num.numel(), -1).long()
            keep = torch.arange(idx.shape[1], device=idx.device)[None, :] < num[:, None]
            r = torch.arange(num.numel(), device=idx.device)[:, None].expand_as(idx)[keep]
            rows.append(r)
            cols.append(idx[keep])
            fulls.append(torch.full_like(r, is_full, dtype=torch.bool))
        row, col, full = torch.cat(rows), torch.cat(cols), torch.cat(fulls)
        order = torch.argsort(row * self.num_kv_blocks + col)
        return row[order], col[order], full[order]

    def to_dense(self) -> torch.Tensor:
        """``int8`` tensor ``(B|1, H|1, nq, nkv)``: 0 = not visited, 1 = partial, 2 = full."""
        b, h = self.batch_heads
        nq, nkv = self.num_q_blocks, self.num_kv_blocks
        row, col, full = self.pairs()
        grid = torch.zeros(b * h * nq * nkv, dtype=torch.int8, device=self.device)
        grid[row * nkv + col] = torch.where(full, FULL, PARTIAL).to(torch.int8)
        return grid.view(b, h, nq, nkv)

    def num_visited(self) -> int:
        return int(self.kv_num_blocks.sum() + self.full_kv_num_blocks.sum())

    def num_full(self) -> int:
        return int(self.full_kv_num_blocks.sum())

    def computed_pairs(self) -> int:
        """The (query, key) pairs inside visited blocks (clipped at the sequence ends), summed
        over the leading axes: what a block-sparse kernel computes. Full runs are counted from
        their starts (no list is built)."""
        q_rows = torch.clamp(self.q_len - torch.arange(self.num_q_blocks, device=self.device) * self.block_q,
                             max=self.block_q).long()
        kv_cols = torch.clamp(self.kv_len - torch.arange(self.num_kv_blocks, device=self.device) * self.block_kv,
                              max=self.block_kv).long()

        def listed_columns(counts, indices):
            listed = torch.arange(indices.shape[-1], device=self.device) < counts[..., None]
            return (kv_cols[indices.long()] * listed).sum(-1)

        columns = listed_columns(self.kv_num_blocks, self.kv_indices)
        if self.holds_runs:
            start, count = self.full_kv_starts.long(), self.full_kv_num_blocks.long()
            end = torch.clamp((start + count) * self.block_kv, max=self.kv_len)
            columns = columns + torch.where(count > 0, end - start * self.block_kv, 0)
        else:
            columns = columns + listed_columns(self.full_kv_num_blocks, self.full_kv_indices)
        return int((columns * q_rows).sum())

    def block_density(self) -> float:
        """Fraction of block pairs visited (averaged over the leading axes)."""
        b, h = self.batch_heads
        return self.num_visited() / (b * h * self.num_q_blocks * self.num_kv_blocks)

    def allowed_pairs(self) -> int:
        """Number of allowed (query, key) pairs, summed over the leading axes."""
        if self._allowed_pairs is None:
            if self.mask_mod is None:
                raise ValueError("this layout has no mask_mod: cannot count allowed pairs")
            row, col, full = self.pairs()
            nq = self.num_q_blocks
            count = block_areas(row % nq, col, self)
            part = ~full
            count[part] = count_allowed(
                self.mask_mod, row[part] % nq, col[part], self, heads=row[part] // nq,
                num_heads=self.batch_heads[1],
            )
            self._allowed_pairs = int(count.sum())
        return self._allowed_pairs

    def density(self) -> float:
        """Fraction of (query, key) pairs allowed (averaged over the leading axes)."""
        b, h = self.batch_heads
        return self.allowed_pairs() / (b * h * self.q_len * self.kv_len)

    def partial_bitmask(self):
        """The packed bits of the partial blocks (:mod:`foveate.bitmask`: the Triton kernels'
        mask for patterns without a kernel mask description), evaluated from :attr:`mask_mod`
        on the layout's device when first asked for, then kept with the layout (on CUDA through
        ``torch.compile`` unless ``foveate.policy.compile_bitmask`` is off)."""
        bits = self.__dict__.get("_bitmask")
        if bits is None:
            from .bitmask import build_bitmask
            from .settings import policy

            compiled = policy.compile_bitmask and self.device.type == "cuda"
            bits = self.__dict__["_bitmask"] = build_bitmask(self, compiled=compiled)
        return bits

    def bitmask_bytes(self) -> int:
        """The memory :meth:`partial_bitmask` takes (whether built or not): ``block_q *
        block_kv / 8`` bytes per partial block, plus its index tensors."""
        from .bitmask import bitmask_bytes

        return bitmask_bytes(self)

    def to_flex_block_mask(self, mask_mod: MaskMod | None = None):
        """A FlexAttention ``BlockMask`` with the same blocks; ``mask_mod`` defaults to the layout's."""
        from torch.nn.attention.flex_attention import BlockMask

        mask_mod = mask_mod if mask_mod is not None else self.mask_mod
        if mask_mod is None:
            raise ValueError("to_flex_block_mask needs a mask_mod (the layout has none)")
        # FlexAttention's index tensors are as wide as the number of blocks on the other axis
        # (its own helpers read the width as that number); ours are as wide as the longest list.
        nq, nkv = self.num_q_blocks, self.num_kv_blocks
        return BlockMask(
            seq_lengths=(self.q_len, self.kv_len),
            kv_num_blocks=self.kv_num_blocks, kv_indices=_pad_width(self.kv_indices, nkv),
            full_kv_num_blocks=self.full_kv_num_blocks,
            full_kv_indices=_pad_width(self.full_kv_indices, nkv),
            q_num_blocks=self.q_num_blocks, q_indices=_pad_width(self.q_indices, nq),
            full_q_num_blocks=self.full_q_num_blocks,
            full_q_indices=_pad_width(self.full_q_indices, nq),
            BLOCK_SIZE=(self.block_q, self.block_kv), mask_mod=mask_mod,
        )

    def to(self, device: torch.device | str) -> "BlockLayout":
        # (runs stay runs: only the lists already built are moved)
        held = {"kv_num_blocks": self.kv_num_blocks, "kv_indices": self.kv_indices,
                "full_kv_num_blocks": self.full_kv_num_blocks}
        held.update({"full_kv_starts": self.full_kv_starts} if self.holds_runs else
                    {"full_kv_indices": self.full_kv_indices})
        q_lists = self._held_q_lists()
        held.update(zip(("q_num_blocks", "q_indices", "full_q_num_blocks"), q_lists[:3]))
        held.update({"full_q_starts": self.full_q_starts} if q_lists[3] is None else {"full_q_indices": q_lists[3]})
        fields = {name: t.to(device) for name, t in held.items()}
        moved = BlockLayout(
            block_q=self.block_q, block_kv=self.block_kv, q_len=self.q_len, kv_len=self.kv_len,
            mask_mod=self.mask_mod, allowed_pairs=self._allowed_pairs, **fields,
        )
        moved.full_runs, moved.row_blocks = self.full_runs, self.row_blocks
        return moved


def stack_layouts(layouts: list[BlockLayout], index: torch.Tensor, *, axis: int, mask_mod: MaskMod | None = None,
                  allowed_pairs: int | None = None) -> BlockLayout:
    """One layout from layouts of one (batch, head) each (the same lengths and blocks): entry
    ``i`` of its leading axis ``axis`` (0: batch, 1: heads) is ``layouts[index[i]]``. The lists
    are padded to the widest and gathered, no pair sorted: a per-head or per-batch pattern's
    distinct parts are built once each."""
    for lay in layouts:
        if lay.batch_heads != (1, 1):
            raise ValueError(f"stack_layouts takes layouts of one batch element and head, got {lay.batch_heads}")
    index = index.to(layouts[0].device)

    def stacked(lists):
        if lists[0].dim() == 4:
            width = max(t.shape[-1] for t in lists)
            lists = [_pad_width(t, width) for t in lists]
        return torch.cat(lists, dim=axis).index_select(axis, index).contiguous()

    names = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks", "q_indices",
             "full_q_num_blocks", "full_q_indices")
    lists = {name: stacked([getattr(lay, name) for lay in layouts]) for name in names}
    first = layouts[0]
    return BlockLayout(block_q=first.block_q, block_kv=first.block_kv, q_len=first.q_len, kv_len=first.kv_len,
                       **lists, mask_mod=mask_mod, allowed_pairs=allowed_pairs)


def runs_to_lists(counts: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Index lists of runs of consecutive blocks: row ``r`` lists ``starts[r] ..
    starts[r] + counts[r] - 1``, padded with zeros to the longest run (at least 1 wide)."""
    width = max(1, int(counts.max())) if counts.numel() else 1
    step = torch.arange(width, device=counts.device, dtype=torch.int32)
    return torch.where(step < counts[..., None], starts[..., None].int() + step, 0).to(torch.int32)


def _pad_width(indices: torch.Tensor, width: int) -> torch.Tensor:
    pad = width - indices.shape[-1]
    return torch.nn.functional.pad(indices, (0, pad)).contiguous() if pad > 0 else indices.contiguous()



def _lists_from_grid(grid: torch.Tensor) -> list[torch.Tensor]:
    """Partial and full lists along the last axis of a 0/1/2 grid ``(B, H, n, m)``, each as
    ``(counts (B, H, n) int32, indices (B, H, n, m) int32)`` (lists as wide as ``m``)."""
    m = grid.shape[-1]
    out = []
    for code in (PARTIAL, FULL):
        sel = grid == code
        counts = sel.sum(-1, dtype=torch.int32)
        # Unlisted blocks are scattered into a spare last column, dropped afterwards.
        slot = torch.where(sel, sel.cumsum(-1) - 1, m)
        cols = torch.arange(m, dtype=torch.int32, device=grid.device).expand(grid.shape)
        idx = torch.zeros(*grid.shape[:-1], m + 1, dtype=torch.int32, device=grid.device)
        idx.scatter_(-1, slot, cols)
        out += [counts, idx[..., :m]]
    return out


def _trimmed_lists(grids: list[torch.Tensor | None]) -> list[list[torch.Tensor] | None]:
    """:func:`_lists_from_grid` of each grid (``None``: none), each cut to its longest list (at
    least 1; one host sync for all)."""
    lists = [None if g is None else _lists_from_grid(g) for g in grids]
    counts = [c for part in lists if part is not None for c in (part[0], part[2])]
    widths = torch.stack([c.amax() if c.numel() else c.new_zeros(()) for c in counts]).tolist() if counts else []
    out = []
    for part in lists:
        if part is not None:
            (w, w_full), widths = widths[:2], widths[2:]
            part = [part[0], part[1][..., : max(w, 1)].contiguous(), part[2], part[3][..., : max(w_full, 1)].contiguous()]
        out.append(part)
    return out


def grid_states(grid: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
    """The int8 0/1/2 grid of a grid, or of a bool selection with its blocks' ``states``
    (``None``: every selected block full), as :meth:`BlockLayout.from_block_grid` reads them."""
    if grid.dtype != torch.bool:
        return grid
    if states is None:  # (a bool tensor read as its int8 0/1 bytes: one operation)
        return grid.view(torch.int8) * FULL
    return torch.where(grid, states.to(grid.device), 0).to(torch.int8)


def _pack_lists(row, col, full, n_rows, batch_heads, n_blocks):
    """Pack ``(row, col)`` pairs sorted by row into padded partial and full lists."""
    out = []
    for sel in (~full, full):
        r, c = row[sel], col[sel]
        counts = torch.bincount(r, minlength=n_rows)
        width = max(int(counts.max()) if counts.numel() else 0, 1)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(r.numel(), device=r.device) - starts[r]
        idx = torch.zeros(n_rows * width, dtype=torch.int32, device=r.device)
        idx[r * width + pos] = c.to(torch.int32)
        idx = idx.view(n_rows, width)
        out += [counts.to(torch.int32).view(*batch_heads, n_blocks), idx.view(*batch_heads, n_blocks, width)]
    return out


def block_areas(q_block: torch.Tensor, kv_block: torch.Tensor, layout_or_dims) -> torch.Tensor:
    """Number of existing pairs in each block pair (the last block of each axis is short)."""
    bq, bkv, q_len, kv_len = _dims(layout_or_dims)
    q_size = torch.clamp(q_len - q_block * bq, max=bq)
    kv_size = torch.clamp(kv_len - kv_block * bkv, max=bkv)
    return q_size.long() * kv_size.long()


def _dims(x):
    if isinstance(x, BlockLayout):
        return x.block_q, x.block_kv, x.q_len, x.kv_len
    return x


def count_allowed(
    mask_mod: MaskMod,
    q_block: torch.Tensor,
    kv_block: torch.Tensor,
    dims,
    *,
    heads: torch.Tensor | None = None,
    num_heads: int = 1,
) -> torch.Tensor:
    """Evaluate ``mask_mod`` on each listed block pair; returns the allowed-pair counts (int64).

    ``dims`` is a layout or ``(block_q, block_kv, q_len, kv_len)``. ``heads`` (optional) is
    the flat ``b * num_heads + h`` index of each pair, passed to ``mask_mod`` as ``(b, h)``.
    Memory is bounded: pairs are evaluated in chunks of about ``_EVAL_ELEMS`` elements.
    """
    bq, bkv, q_len, kv_len = _dims(dims)
    device = q_block.device
    n = q_block.numel()
    counts = torch.zeros(n, dtype=torch.int64, device=device)
    step = max(1, _EVAL_ELEMS // (bq * bkv))
    qo = torch.arange(bq, device=device)[None, :, None]
    ko = torch.arange(bkv, device=device)[None, None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    for lo in range(0, n, step):
        qb = q_block[lo : lo + step].long()[:, None, None]
        kb = kv_block[lo : lo + step].long()[:, None, None]
        qi, ki = qb * bq + qo, kb * bkv + ko
        valid = (qi < q_len) & (ki < kv_len)
        if heads is None:
            b = h = zero
        else:
            bh = heads[lo : lo + step].long()[:, None, None]
            b, h = bh // num_heads, bh % num_heads
        allowed = mask_mod(b, h, qi.clamp(max=q_len - 1), ki.clamp(max=kv_len - 1))
        counts[lo : lo + step] = (allowed & valid).sum(dim=(1, 2))
    return counts


def layout_from_mask_mod(
    mask_mod: MaskMod,
    q_len: int,
    kv_len: int,
    *,
    block_q: int = 128,
    block_kv: int = 128,
    device: torch.device | str = "cpu",
    candidates: tuple[torch.Tensor, torch.Tensor] | None = None,
    batch_heads: tuple[int, int] = (1, 1),
) -> BlockLayout:
    """The generic builder: evaluate ``mask_mod`` on every block pair (or on ``candidates``,
    a ``(q_block, kv_block)`` pair of 1-D tensors known to contain every visited pair).

    ``batch_heads``: the layout's leading axes ``(B|1, H|1)``; ``mask_mod`` is evaluated for
    every ``(b, h)`` of them (``(1, 1)``: once, with ``b = h = 0``, for every batch and head).
    Costs ``O(q_len * kv_len)`` mask evaluations per ``(b, h)`` without candidates, in bounded
    memory; structured patterns have analytic builders instead.
    """
    device = torch.device(device)
    nq, nkv = -(-q_len // block_q), -(-kv_len // block_kv)
    dims = (block_q, block_kv, q_len, kv_len)
    n_bh = batch_heads[0] * batch_heads[1]
    if candidates is None:
        rows_per_chunk = max(1, (1 << 22) // nkv)
        parts = []
        for row0 in range(0, n_bh * nq, rows_per_chunk):
            rows = torch.arange(row0, min(n_bh * nq, row0 + rows_per_chunk), device=device)
            rows, kb = rows.repeat_interleave(nkv), torch.arange(nkv, device=device).repeat(rows.numel())
            parts.append(_classify(mask_mod, rows, kb, dims, nq, batch_heads[1]))
        row, kb, full, allowed = (torch.cat(t) for t in zip(*parts))
    else:
        qb, kb = candidates[0].to(device), candidates[1].to(device)
        bh = torch.arange(n_bh, device=device).repeat_interleave(qb.numel())
        rows = bh * nq + qb.long().repeat(n_bh)
        row, kb, full, allowed = _classify(mask_mod, rows, kb.long().repeat(n_bh), dims, nq, batch_heads[1])
    return BlockLayout.from_pairs(
        row, kb, full, batch_heads=batch_heads, block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
        mask_mod=mask_mod, allowed_pairs=int(allowed.sum()),
    )


def _classify(mask_mod, rows, kb, dims, nq, num_heads):
    """The visited pairs among ``rows`` (``(b * num_heads + h) * nq + q_block``) x ``kb``:
    ``(rows, kb, full, allowed counts)``."""
    qb = rows % nq
    allowed = count_allowed(mask_mod, qb, kb, dims, heads=rows // nq, num_heads=num_heads)
    keep = allowed > 0
    rows, qb, kb, allowed = rows[keep], qb[keep], kb[keep], allowed[keep]
    return rows, kb, allowed == block_areas(qb, kb, dims), allowed
