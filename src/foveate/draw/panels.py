"""Panels of a pattern: a query's index, the mask matrix, the block layout, a neighborhood
on its canvas."""

from __future__ import annotations

import math

import torch

from ..layout import EMPTY, FULL, PARTIAL, BlockLayout, block_areas, count_allowed
from ..patterns import Pattern
from .style import _CHUNK, BLOCK_COLORS, QUERY, TOKEN_COLORS, _aspect, _imshow


# -- queries ------------------------------------------------------------------------------------


def resolve_query(pattern: Pattern, q_len: int, query=None) -> int | None:
    """The flat (raster-order) index of ``query``: an int (flat index), a tuple with one
    coordinate per canvas axis, or ``None`` (the canvas centre; no query for sequences)."""
    canvas = pattern.canvas
    if query is None:
        return None if canvas is None else _flat(canvas, [n // 2 for n in canvas])
    if isinstance(query, int) and not isinstance(query, bool):
        if not 0 <= query < q_len:
            raise ValueError(f"query={query}: a flat query index must be in [0, {q_len})")
        return query
    if (canvas is not None and isinstance(query, (tuple, list)) and len(query) == len(canvas)
            and all(isinstance(c, int) and not isinstance(c, bool) for c in query)):
        if not all(0 <= c < n for c, n in zip(query, canvas)):
            raise ValueError(f"query={tuple(query)}: coordinates must lie inside canvas={canvas}")
        return _flat(canvas, query)
    expected = "an int" if canvas is None else f"an int (flat index) or {len(canvas)} coordinates"
    raise ValueError(f"query={query!r}: expected {expected} for {pattern!r}")


def _flat(canvas, coords) -> int:
    return sum(c * math.prod(canvas[a + 1 :]) for a, c in enumerate(coords))


def _coords(canvas, flat: int) -> tuple[int, ...]:
    return tuple((flat // math.prod(canvas[a + 1 :])) % n for a, n in enumerate(canvas))


# -- (batch, head) slots ------------------------------------------------------------------------
#
# A pattern that differs per batch element or head (``P.PerHead``, ``P.StridedHeads``, ``P.Mask``
# with ``heads=``, ...) has a layout with leading axes ``(B, H)``; a panel shows one slot of it,
# ``slot = (batch, head)`` (an axis of 1 is shared by every batch element or head).


def _slot_row(layout: BlockLayout, slot: tuple[int, int]) -> int:
    """The flat ``b * H + h`` of ``slot`` among the layout's leading axes (``ValueError`` when out
    of range)."""
    (nb, nh), (b, h) = layout.batch_heads, slot
    for name, value, n in (("batch", b, nb), ("head", h, nh)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"{name}={value!r}: expected a non-negative int")
        if n > 1 and value >= n:
            raise ValueError(f"{name}={value}: the layout has {n} ({name} axis of {layout.batch_heads})")
    return (b if nb > 1 else 0) * nh + (h if nh > 1 else 0)


def slot_pairs(layout: BlockLayout, slot: tuple[int, int] = (0, 0)):
    """``(q block, kv block, full)`` of the visited pairs of one ``(batch, head)`` slot."""
    row, col, full = (t.cpu() for t in layout.pairs())
    keep = row // layout.num_q_blocks == _slot_row(layout, slot)
    return row[keep] % layout.num_q_blocks, col[keep], full[keep]


def slot_allowed_pairs(layout: BlockLayout, slot: tuple[int, int] = (0, 0)) -> int:
    """The allowed pairs of one slot (the layout's own count when it has one slot; else full
    blocks' areas plus ``mask_mod`` evaluated on the slot's partial blocks)."""
    if layout.batch_heads == (1, 1):
        return layout.allowed_pairs()
    qb, kb, full = slot_pairs(layout, slot)
    count = block_areas(qb, kb, layout)
    part = ~full
    if bool(part.any()):
        row = torch.full_like(qb[part], _slot_row(layout, slot))
        count[part] = count_allowed(layout.mask_mod, qb[part], kb[part], layout, heads=row,
                                    num_heads=layout.batch_heads[1])
    return int(count.sum())


def slot_label(layout: BlockLayout, slot: tuple[int, int] = (0, 0)) -> str:
    """``"query head 2 of 8"`` (and ``"batch 0 of 2"``) for a layout with leading axes, else ``""``."""
    (nb, nh), (b, h) = layout.batch_heads, slot
    parts = ([f"batch {b} of {nb}"] if nb > 1 else []) + ([f"query head {h} of {nh}"] if nh > 1 else [])
    return ", ".join(parts)


# -- the mask matrix ----------------------------------------------------------------------------


def mask_pixels(pattern: Pattern, q_len: int, kv_len: int, *, layout: BlockLayout | None = None,
                max_cells: int = 512, slot: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, tuple[int, int]]:
    """The mask of one ``(batch, head)`` slot (``slot``; patterns that differ per batch element
    or head) max-pooled to at most ``max_cells`` pixels per side.

    Returns ``(pixels, (fq, fk))``: ``pixels`` bool ``(ceil(q_len / fq), ceil(kv_len / fk))``,
    true where some pair of the ``fq x fk`` pairs of the pixel is allowed. ``mask_mod`` is
    evaluated only in the layout's partial blocks (in chunks); full blocks are set and empty
    ones skipped, so the cost follows the visited blocks, not ``q_len * kv_len``.
    """
    if layout is None:
        layout = pattern.build(q_len, kv_len)
    if (layout.q_len, layout.kv_len) != (q_len, kv_len):
        raise ValueError(f"layout is for lengths ({layout.q_len}, {layout.kv_len}), not ({q_len}, {kv_len})")
    pool = (-(-q_len // max_cells), -(-kv_len // max_cells))
    height, width = -(-q_len // pool[0]), -(-kv_len // pool[1])
    pixels = torch.zeros(height * width, dtype=torch.bool)
    qb, kb, full = slot_pairs(layout, slot)
    mask_mod = pattern.mask_mod(q_len, kv_len)
    _set_pixels(pixels, width, pool, layout, qb[full], kb[full], None)
    _set_pixels(pixels, width, pool, layout, qb[~full], kb[~full], mask_mod, slot)
    return pixels.view(height, width), pool


def _set_pixels(pixels, width, pool, layout, q_block, kv_block, mask_mod, slot=(0, 0)) -> None:
    """Set the pixels that hold allowed pairs of the block pairs ``(q_block, kv_block)``.
    ``mask_mod=None`` means the blocks are full: one query (key) per pixel row (column) will do."""
    fq, fk = pool
    qo = _offsets(layout.block_q, fq if mask_mod is None else 1)
    ko = _offsets(layout.block_kv, fk if mask_mod is None else 1)
    step = max(1, _CHUNK // (qo.numel() * ko.numel()))
    b, h = (torch.tensor(x, dtype=torch.long) for x in slot)
    for lo in range(0, q_block.numel(), step):
        # Clamping keeps a short last block's tokens inside it (repeats are harmless).
        qi = (q_block[lo : lo + step, None, None].long() * layout.block_q + qo[:, None]).clamp(max=layout.q_len - 1)
        ki = (kv_block[lo : lo + step, None, None].long() * layout.block_kv + ko).clamp(max=layout.kv_len - 1)
        index = ((qi // fq) * width + ki // fk).expand(-1, qo.numel(), ko.numel())
        if mask_mod is not None:
            index = index[mask_mod(b, h, qi, ki).expand_as(index)]
        pixels[index.reshape(-1)] = True


def _offsets(block: int, step: int) -> torch.Tensor:
    """Offsets inside a block that reach every pixel it covers: every ``step``-th and the last."""
    return torch.unique(torch.cat([torch.arange(0, block, step), torch.tensor([block - 1])]))


def draw_mask(pattern: Pattern, q_len: int, kv_len: int, ax, *, layout: BlockLayout | None = None,
              query: int | None = None, max_cells: int = 512, slot: tuple[int, int] = (0, 0)) -> None:
    """Draw the mask matrix (queries down, keys across) into ``ax``; ``query`` marks a row;
    ``slot``: the ``(batch, head)`` drawn (patterns that differ per batch element or head: the
    title names it)."""
    layout = layout if layout is not None else pattern.build(q_len, kv_len)
    pixels, (fq, fk) = mask_pixels(pattern, q_len, kv_len, layout=layout, max_cells=max_cells, slot=slot)
    image = pixels.to(torch.int8)
    _imshow(ax, image, TOKEN_COLORS, extent=(0, kv_len, q_len, 0), aspect="auto")
    density = slot_allowed_pairs(layout, slot) / (q_len * kv_len)
    label = slot_label(layout, slot)
    title = (f"{label}\n" if label else "") + f"mask: {q_len} queries x {kv_len} keys, density {density:.2%}"
    if (fq, fk) != (1, 1):
        title += f"\nmax-pooled: {fq}x{fk} pairs per pixel (allowed if any is)"
    if query is not None:
        ax.axhline(query + 0.5, color=TOKEN_COLORS[QUERY][0], lw=1.2)
        title += f"\nquery {query} marked"
    _block_lines(ax, q_len, kv_len, layout.block_q, layout.block_kv)
    ax.set(title=title, xlabel="key index", ylabel="query index")


def _block_lines(ax, q_len: int, kv_len: int, block_q: int, block_kv: int) -> None:
    """Block boundaries on a mask panel (up to 16 blocks a side): they relate the mask to the
    block panel beside it."""
    nq, nkv = -(-q_len // block_q), -(-kv_len // block_kv)
    if max(nq, nkv) <= 16:
        for b in range(1, nq):
            ax.axhline(b * block_q, color="white", lw=0.6)
        for b in range(1, nkv):
            ax.axvline(b * block_kv, color="white", lw=0.6)


# -- the block layout ---------------------------------------------------------------------------


def layout_cells(layout: BlockLayout, max_cells: int = 512,
                 slot: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, tuple[int, int]]:
    """The layout of one ``(batch, head)`` slot (default the first) as an int8 grid of EMPTY /
    PARTIAL / FULL, downsampled to at most ``max_cells`` cells per side. Returns ``(cells, (fq,
    fk))``: each cell covers ``fq x fk`` blocks and shows the busiest of them (partial over full
    over empty)."""
    nq, nkv = layout.num_q_blocks, layout.num_kv_blocks
    pool = (-(-nq // max_cells), -(-nkv // max_cells))
    if pool == (1, 1):
        return layout.to_dense().flatten(0, 1)[_slot_row(layout, slot)].cpu(), pool
    # Downsampled: scatter the visited pairs, never the dense nq x nkv grid.
    height, width = -(-nq // pool[0]), -(-nkv // pool[1])
    qb, kb, full = slot_pairs(layout, slot)
    rank = torch.where(full, 1, 2)  # busier blocks rank higher
    cells = torch.zeros(height * width, dtype=torch.long)
    cells.scatter_reduce_(0, (qb // pool[0]) * width + kb // pool[1], rank, "amax")
    to_code = torch.tensor([EMPTY, FULL, PARTIAL], dtype=torch.int8)
    return to_code[cells].view(height, width), pool


def layout_summary(layout: BlockLayout, slot: tuple[int, int] | None = None) -> str:
    """Three lines: blocks and their sizes; visited / full / partial counts and densities (of
    one ``(batch, head)`` slot when ``slot`` is given, else summed over the slots)."""
    nq, nkv = layout.num_q_blocks, layout.num_kv_blocks
    if slot is None or layout.batch_heads == (1, 1):
        visited, full = layout.num_visited(), int(layout.full_kv_num_blocks.sum())
        block_density, density = layout.block_density(), layout.density()
    else:
        _, _, is_full = slot_pairs(layout, slot)
        visited, full = is_full.numel(), int(is_full.sum())
        block_density = visited / (nq * nkv)
        density = slot_allowed_pairs(layout, slot) / (layout.q_len * layout.kv_len)
    return (
        f"{nq}x{nkv} blocks of {layout.block_q}x{layout.block_kv} tokens\n"
        f"visited {visited} ({block_density:.1%}): {full} full, {visited - full} partial\n"
        f"density {density:.2%} of {layout.q_len}x{layout.kv_len} pairs"
    )


def _cell_lines(ax, cells, nq: int, nkv: int) -> None:
    """Thin white lines between the cells of a block grid drawn over ``(0, nkv) x (0, nq)``,
    when there are few enough cells (they keep neighbouring blocks apart)."""
    if max(cells.shape) <= 64:
        ax.set_xticks(range(nkv + 1), minor=True)
        ax.set_yticks(range(nq + 1), minor=True)
        ax.grid(which="minor", color="white", lw=0.5)
        ax.tick_params(which="minor", length=0)


def draw_layout(layout: BlockLayout, ax, *, title: str | None = None, max_cells: int = 512,
                slot: tuple[int, int] = (0, 0)) -> None:
    """Draw the layout's blocks (q blocks down, kv blocks across) of one ``(batch, head)``
    slot into ``ax``. ``title`` heads the block counts (:func:`layout_summary`); a layout with
    leading axes names the slot drawn."""
    cells, (fq, fk) = layout_cells(layout, max_cells, slot)
    nq, nkv = layout.num_q_blocks, layout.num_kv_blocks
    _imshow(ax, cells, BLOCK_COLORS, extent=(0, nkv, nq, 0), aspect="auto")
    _cell_lines(ax, cells, nq, nkv)
    label = slot_label(layout, slot)
    head = ", ".join(t for t in (title, label) if t)
    text = (head + "\n" if head else "") + layout_summary(layout, slot if label else None)
    if (fq, fk) != (1, 1):
        text += f"\ndownsampled: {fq}x{fk} blocks per cell (partial > full > empty)"
    ax.set(title=text, xlabel="kv block", ylabel="q block")


# -- neighborhoods on a canvas ------------------------------------------------------------------


def neighborhood_keys(pattern: Pattern, query: int, slot: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, int]:
    """``(keys, extra)``: bool tensor of the canvas shape, the canvas keys that query
    ``query`` (flat index) may see (in the ``(batch, head)`` ``slot``), and how many of the
    extra keys it may see."""
    q_len, kv_len = pattern.default_lengths()
    mask_mod = pattern.mask_mod(q_len, kv_len)
    (b, h), q = (torch.tensor(x, dtype=torch.long) for x in slot), torch.tensor(query)
    allowed = torch.cat([
        mask_mod(b, h, q, torch.arange(lo, min(lo + _CHUNK, kv_len)))
        for lo in range(0, kv_len, _CHUNK)
    ])
    return allowed[:q_len].view(pattern.canvas), int(allowed[q_len:].sum())


def planes_to_draw(keys: torch.Tensor, query_plane: int, max_planes: int = 8) -> tuple[list[int], int]:
    """For a 3-D canvas: ``(planes, holding)``, the slices along axis 0 to draw (those that
    hold allowed keys, plus the query's, at most ``max_planes``, nearest to the query's
    first; in order) and how many slices hold allowed keys or the query."""
    holding = set(torch.nonzero(keys.flatten(1).any(1)).flatten().tolist()) | {query_plane}
    nearest = sorted(holding, key=lambda p: (abs(p - query_plane), p))[:max_planes]
    return sorted(nearest), len(holding)


def draw_neighborhood(pattern: Pattern, query: int, ax, *, plane: int | None = None,
                      keys: tuple[torch.Tensor, int] | None = None, max_cells: int = 512) -> None:
    """Draw the keys that ``query`` (flat index) may see on a 2-D canvas, or on slice
    ``plane`` along axis 0 of a 3-D canvas (default: the query's slice). ``keys`` is
    :func:`neighborhood_keys`' result, if already computed."""
    canvas = pattern.canvas
    if canvas is None or len(canvas) not in (2, 3):
        raise ValueError(f"draw_neighborhood needs a 2-D or 3-D canvas pattern, got {pattern!r}")
    allowed, extra = keys if keys is not None else neighborhood_keys(pattern, query)
    coords = _coords(canvas, query)
    if len(canvas) == 3:
        plane = coords[0] if plane is None else plane
        allowed, (qy, qx), labels = allowed[plane], coords[1:], ("axis 2", "axis 1")
        title = f"slice {plane}{' (query)' if plane == coords[0] else ''}: {int(allowed.sum())} keys"
    else:
        (qy, qx), labels = coords, ("axis 1", "axis 0")
        title = f"query {coords} (flat {query})\nsees {int(allowed.sum())} canvas keys"
        title += f" + {extra} extra keys" if pattern.extra_kv else ""
    on_panel = plane is None or plane == coords[0]
    height, width = allowed.shape
    image = allowed.to(torch.int8)
    if on_panel:
        image[qy, qx] = QUERY
    pool = (-(-height // max_cells), -(-width // max_cells))
    if pool != (1, 1):  # max-pool: the query (2) and allowed (1) win over not allowed (0)
        image = torch.nn.functional.max_pool2d(image[None].float(), pool, ceil_mode=True)[0].to(torch.int8)
        title += f"\nmax-pooled: {pool[0]}x{pool[1]} tokens per pixel"
    _imshow(ax, image, TOKEN_COLORS, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
            aspect=_aspect(height, width))
    if on_panel and max(height, width) >= 32:  # one token is small: ring it
        ax.plot(qx, qy, marker="o", ms=10, mfc="none", mec=TOKEN_COLORS[QUERY][0], mew=1.5)
    ax.set(title=title, xlabel=labels[0], ylabel=labels[1])
