"""Panels of a pattern: a query's index, the mask matrix, the block layout, a neighborhood
on its canvas."""

from __future__ import annotations

import math

import torch

from ..layout import EMPTY, FULL, PARTIAL, BlockLayout
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


# -- the mask matrix ----------------------------------------------------------------------------


def mask_pixels(pattern: Pattern, q_len: int, kv_len: int, *, layout: BlockLayout | None = None,
                max_cells: int = 512) -> tuple[torch.Tensor, tuple[int, int]]:
    """The mask max-pooled to at most ``max_cells`` pixels per side.

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
    row, col, full = (t.cpu() for t in layout.pairs())
    first = row < layout.num_q_blocks  # batch 0, head 0
    mask_mod = pattern.mask_mod(q_len, kv_len)
    _set_pixels(pixels, width, pool, layout, row[first & full], col[first & full], None)
    _set_pixels(pixels, width, pool, layout, row[first & ~full], col[first & ~full], mask_mod)
    return pixels.view(height, width), pool


def _set_pixels(pixels, width, pool, layout, q_block, kv_block, mask_mod) -> None:
    """Set the pixels that hold allowed pairs of the block pairs ``(q_block, kv_block)``.
    ``mask_mod=None`` means the blocks are full: one query (key) per pixel row (column) will do."""
    fq, fk = pool
    qo = _offsets(layout.block_q, fq if mask_mod is None else 1)
    ko = _offsets(layout.block_kv, fk if mask_mod is None else 1)
    step = max(1, _CHUNK // (qo.numel() * ko.numel()))
    zero = torch.zeros((), dtype=torch.long)
    for lo in range(0, q_block.numel(), step):
        # Clamping keeps a short last block's tokens inside it (repeats are harmless).
        qi = (q_block[lo : lo + step, None, None].long() * layout.block_q + qo[:, None]).clamp(max=layout.q_len - 1)
        ki = (kv_block[lo : lo + step, None, None].long() * layout.block_kv + ko).clamp(max=layout.kv_len - 1)
        index = ((qi // fq) * width + ki // fk).expand(-1, qo.numel(), ko.numel())
        if mask_mod is not None:
            index = index[mask_mod(zero, zero, qi, ki).expand_as(index)]
        pixels[index.reshape(-1)] = True


def _offsets(block: int, step: int) -> torch.Tensor:
    """Offsets inside a block that reach every pixel it covers: every ``step``-th and the last."""
    return torch.unique(torch.cat([torch.arange(0, block, step), torch.tensor([block - 1])]))


def draw_mask(pattern: Pattern, q_len: int, kv_len: int, ax, *, layout: BlockLayout | None = None,
              query: int | None = None, max_cells: int = 512) -> None:
    """Draw the mask matrix (queries down, keys across) into ``ax``; ``query`` marks a row."""
    layout = layout if layout is not None else pattern.build(q_len, kv_len)
    pixels, (fq, fk) = mask_pixels(pattern, q_len, kv_len, layout=layout, max_cells=max_cells)
    image = pixels.to(torch.int8)
    _imshow(ax, image, TOKEN_COLORS, extent=(0, kv_len, q_len, 0), aspect="auto")
    title = f"mask: {q_len} queries x {kv_len} keys, density {layout.density():.2%}"
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


def layout_cells(layout: BlockLayout, max_cells: int = 512) -> tuple[torch.Tensor, tuple[int, int]]:
    """The layout (batch 0, head 0) as an int8 grid of EMPTY / PARTIAL / FULL, downsampled
    to at most ``max_cells`` cells per side. Returns ``(cells, (fq, fk))``: each cell covers
    ``fq x fk`` blocks and shows the busiest of them (partial over full over empty)."""
    nq, nkv = layout.num_q_blocks, layout.num_kv_blocks
    pool = (-(-nq // max_cells), -(-nkv // max_cells))
    if pool == (1, 1):
        return layout.to_dense()[0, 0].cpu(), pool
    # Downsampled: scatter the visited pairs, never the dense nq x nkv grid.
    height, width = -(-nq // pool[0]), -(-nkv // pool[1])
    row, col, full = (t.cpu() for t in layout.pairs())
    first = row < nq
    rank = torch.where(full[first], 1, 2)  # busier blocks rank higher
    cells = torch.zeros(height * width, dtype=torch.long)
    cells.scatter_reduce_(0, (row[first] // pool[0]) * width + col[first] // pool[1], rank, "amax")
    to_code = torch.tensor([EMPTY, FULL, PARTIAL], dtype=torch.int8)
    return to_code[cells].view(height, width), pool


def layout_summary(layout: BlockLayout) -> str:
    """Two lines: blocks and their sizes; visited / full / partial counts and densities."""
    nq, nkv = layout.num_q_blocks, layout.num_kv_blocks
    visited = layout.num_visited()
    full = int(layout.full_kv_num_blocks.sum())
    return (
        f"{nq}x{nkv} blocks of {layout.block_q}x{layout.block_kv} tokens\n"
        f"visited {visited} ({layout.block_density():.1%}): {full} full, {visited - full} partial\n"
        f"density {layout.density():.2%} of {layout.q_len}x{layout.kv_len} pairs"
    )


def _cell_lines(ax, cells, nq: int, nkv: int) -> None:
    """Thin white lines between the cells of a block grid drawn over ``(0, nkv) x (0, nq)``,
    when there are few enough cells (they keep neighbouring blocks apart)."""
    if max(cells.shape) <= 64:
        ax.set_xticks(range(nkv + 1), minor=True)
        ax.set_yticks(range(nq + 1), minor=True)
        ax.grid(which="minor", color="white", lw=0.5)
        ax.tick_params(which="minor", length=0)


def draw_layout(layout: BlockLayout, ax, *, title: str | None = None, max_cells: int = 512) -> None:
    """Draw the layout's blocks (q blocks down, kv blocks across) into ``ax``. ``title``
    heads the block counts (:func:`layout_summary`)."""
    cells, (fq, fk) = layout_cells(layout, max_cells)
    nq, nkv = layout.num_q_blocks, layout.num_kv_blocks
    _imshow(ax, cells, BLOCK_COLORS, extent=(0, nkv, nq, 0), aspect="auto")
    _cell_lines(ax, cells, nq, nkv)
    text = (title + "\n" if title else "") + layout_summary(layout)
    if (fq, fk) != (1, 1):
        text += f"\ndownsampled: {fq}x{fk} blocks per cell (partial > full > empty)"
    ax.set(title=text, xlabel="kv block", ylabel="q block")


# -- neighborhoods on a canvas ------------------------------------------------------------------


def neighborhood_keys(pattern: Pattern, query: int) -> tuple[torch.Tensor, int]:
    """``(keys, extra)``: bool tensor of the canvas shape, the canvas keys that query
    ``query`` (flat index) may see, and how many of the extra keys it may see."""
    q_len, kv_len = pattern.default_lengths()
    mask_mod = pattern.mask_mod(q_len, kv_len)
    zero, q = torch.zeros((), dtype=torch.long), torch.tensor(query)
    allowed = torch.cat([
        mask_mod(zero, zero, q, torch.arange(lo, min(lo + _CHUNK, kv_len)))
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
