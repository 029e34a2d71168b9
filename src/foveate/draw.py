"""Drawings of patterns and block layouts (matplotlib; ``pip install foveate[bench]``).

One function per panel, each drawing into a matplotlib ``Axes`` that the caller owns:

* :func:`draw_mask`: the ``q_len x kv_len`` mask matrix of a pattern (max-pooled for long
  sequences), optionally with one query's row marked;
* :func:`draw_layout`: a :class:`~foveate.layout.BlockLayout` as a grid of empty / partial /
  full blocks (downsampled beyond ``max_cells`` blocks per side);
* :func:`draw_neighborhood`: the keys one query may see on a 2-D canvas, or on one slice
  along axis 0 of a 3-D canvas;
* :func:`draw_selection` / :func:`draw_selection_mask`: the blocks one (batch, head) of a
  content selection chose (forced ones apart) and the token mask they imply;

and :func:`figure_for`, which assembles them into one figure: the mask and the layout for
1-D patterns; the query's neighborhood (slices for 3-D) and the layouts in raster and tiled
order for 2-D/3-D canvases; for a content selection, :func:`figure_for_selection` (heads side
by side). Every panel is computed from ``mask_mod`` or from the layout, never from a second
definition of the pattern, in bounded memory.

>>> fig = figure_for(P.Neighborhood((64, 64), (13, 13)), query=(10, 20))  # doctest: +SKIP
>>> fig.savefig("neighborhood.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import textwrap

import torch

from .layout import EMPTY, FULL, PARTIAL, BlockLayout
from .patterns import Pattern, SelectedBlocks
from .selection import SelectionGeometry

#: Elements evaluated at once when a panel evaluates ``mask_mod``.
_CHUNK = 1 << 22

# One legend for every figure. Codes of the token panels: 0 / 1 / 2 below; of the block
# panels: EMPTY / PARTIAL / FULL. "allowed" and "full" share the hue: a full block is all allowed.
NOT_ALLOWED, ALLOWED, QUERY = 0, 1, 2
TOKEN_COLORS = {NOT_ALLOWED: ("#eeeeee", "not allowed"), ALLOWED: ("#3a6fb0", "allowed"), QUERY: ("#e0301e", "query")}
BLOCK_COLORS = {EMPTY: ("#eeeeee", "empty block"), PARTIAL: ("#f2a33a", "partial block"), FULL: ("#1d3f7a", "full block")}


def _mpl():
    """matplotlib, imported on first use (it is an optional dependency)."""
    try:
        import matplotlib
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.colors  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import matplotlib.lines  # noqa: F401
        import matplotlib.patches  # noqa: F401
        import matplotlib.ticker  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "foveate's drawings need matplotlib, which is not installed: pip install foveate[bench]"
        ) from err
    return matplotlib


def _imshow(ax, image: torch.Tensor, colors: dict, extent, aspect="equal"):
    """Show a small integer image (codes 0 to ``len(colors) - 1``) through a fixed colour map (no interpolation), with
    integer ticks. ``aspect="auto"`` fills a square panel (matrices of any shape)."""
    mpl = _mpl()
    cmap = mpl.colors.ListedColormap([colors[k][0] for k in sorted(colors)])
    ax.imshow(image.numpy(), cmap=cmap, vmin=-0.5, vmax=len(colors) - 0.5, interpolation="nearest",
              extent=extent, aspect=aspect)
    if aspect == "auto":
        ax.set_box_aspect(1)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(mpl.ticker.MaxNLocator(nbins=5, integer=True))


def _aspect(height: int, width: int) -> str:
    """Equal axes unless one side is much longer (a strip would be unreadable)."""
    return "equal" if max(height, width) <= 4 * min(height, width) else "auto"


def legend_handles(kinds=("tokens", "blocks")) -> list:
    """Legend patches: ``"tokens"`` (not allowed / allowed / query), ``"blocks"`` (empty /
    partial / full)."""
    patch = _mpl().patches.Patch
    out = []
    for kind in kinds:
        colors = TOKEN_COLORS if kind == "tokens" else BLOCK_COLORS
        out += [patch(facecolor=c, edgecolor="0.4", label=label) for c, label in colors.values()]
    return out


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


# -- content selections -------------------------------------------------------------------------

# Codes of the selection panels, in the order a downsampled cell prefers them (highest wins).
NOT_CANDIDATE, NOT_SELECTED, CHOSEN, FORCED = 0, 1, 2, 3
SELECTION_COLORS = {
    NOT_CANDIDATE: ("#ffffff", "not a candidate"),
    NOT_SELECTED: ("#eeeeee", "not selected"),
    CHOSEN: ("#1d3f7a", "chosen by score"),
    FORCED: ("#5aa469", "forced (sink / local)"),
}
PLANTED_COLOR = TOKEN_COLORS[QUERY][0]
#: Heads that :func:`figure_for_selection` draws side by side at most.
MAX_HEADS = 4


def selection_rules(selection: SelectedBlocks) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(candidates, forced)``, bool ``(nq, nkv)`` on the CPU: the blocks a query block may
    select (all, or the causal ones) and the sink and local blocks it always keeps (``None``
    when the selection does not say which pattern made it)."""
    source = selection.source
    if hasattr(source, "geometry"):  # BlockTopK / BlockTopP
        geometry = source.geometry(selection.q_len, selection.kv_len)
        return geometry.candidates("cpu"), geometry.forced("cpu")
    geometry = SelectionGeometry(selection.q_len, selection.kv_len, selection.query_block, selection.block,
                                 selection.causal, 0, 0)
    return geometry.candidates("cpu"), None


def _pick(grid: torch.Tensor, batch: int, head: int) -> torch.Tensor:
    """``grid[batch, head]`` of a ``(B|1, H|1, ...)`` tensor (size-1 axes broadcast), keeping
    both leading axes."""
    b, h = (batch if grid.shape[0] > 1 else 0), (head if grid.shape[1] > 1 else 0)
    return grid[b : b + 1, h : h + 1]


def selection_of_heads(selection: SelectedBlocks, batches, heads) -> SelectedBlocks:
    """The selection of the (batch, query head) pairs of ``batches x heads`` as a selection of
    its own (leading axes ``len(batches), len(heads)``; same lengths, blocks, source and token
    order)."""
    picked = torch.cat([torch.cat([_pick(selection.selected, b, h) for h in heads], 1) for b in batches], 0)
    return SelectedBlocks(picked, q_len=selection.q_len, kv_len=selection.kv_len, query_block=selection.query_block,
                          block=selection.block, causal=selection.causal, source=selection.source,
                          order=selection.order)


def selection_of_head(selection: SelectedBlocks, batch: int, head: int) -> SelectedBlocks:
    """The selection of one (batch, query head) (leading axes 1, 1): :func:`selection_of_heads`."""
    return selection_of_heads(selection, [batch], [head])


def _fine_layout(one: SelectedBlocks) -> BlockLayout:
    """A layout of a one-head selection whose partial blocks are few: square blocks of
    ``gcd(query_block, block)`` tokens when that is at least 16 (under ``causal`` only the
    diagonal ones are partial, so counting allowed pairs stays cheap when ``block`` is much
    larger than ``query_block``, as in MoBA), else the selection's own blocks."""
    g = math.gcd(one.query_block, one.block)
    bq, bkv = (g, g) if g >= 16 else (one.query_block, one.block)
    return one.build(one.q_len, one.kv_len, block_q=bq, block_kv=bkv)


def selection_cells(selection: SelectedBlocks, *, batch: int = 0, head: int = 0,
                    max_cells: int = 512) -> tuple[torch.Tensor, tuple[int, int]]:
    """The blocks of one (batch, query head) as an int8 grid ``(nq, nkv)`` of NOT_CANDIDATE /
    NOT_SELECTED / CHOSEN / FORCED, downsampled to at most ``max_cells`` cells per side.
    Returns ``(cells, (fq, fk))``: each cell covers ``fq x fk`` blocks and shows the highest
    code among them (forced over chosen over not selected over not a candidate)."""
    selected = selection_of_head(selection, batch, head).selected[0, 0].cpu()
    candidates, forced = selection_rules(selection)
    forced = torch.zeros_like(selected) if forced is None else forced
    cells = torch.where(selected, torch.where(forced, FORCED, CHOSEN),
                        torch.where(candidates, NOT_SELECTED, NOT_CANDIDATE)).to(torch.int8)
    nq, nkv = cells.shape
    pool = (-(-nq // max_cells), -(-nkv // max_cells))
    if pool != (1, 1):
        cells = torch.nn.functional.max_pool2d(cells[None].float(), pool, ceil_mode=True)[0].to(torch.int8)
    return cells, pool


def counterpart_pairs(q_len: int, kv_len: int, causal: bool) -> int:
    """(query, key) pairs of the dense counterpart: all, or those of
    :class:`~foveate.patterns.Causal` (from its layout)."""
    if not causal:
        return q_len * kv_len
    from .patterns import Causal

    return Causal().build(q_len, kv_len, block_q=128, block_kv=128).allowed_pairs()


def draw_selection(selection: SelectedBlocks, ax, *, batch: int = 0, head: int = 0,
                   planted: torch.Tensor | None = None, with_pairs: bool = True, max_cells: int = 512) -> None:
    """Draw the blocks that (``batch``, query ``head``) selected (query blocks down, key
    blocks across) into ``ax``: forced (sink / local) and chosen blocks in their own colours.
    ``planted`` (bool ``(B|1, H|1, nq, nkv)``, optional) rings the blocks that synthetic
    inputs planted; ``with_pairs`` adds the token density to the title. Counts in the title
    are relative to the dense counterpart (the causal blocks and pairs when causal)."""
    cells, (fq, fk) = selection_cells(selection, batch=batch, head=head, max_cells=max_cells)
    one = selection_of_head(selection, batch, head)
    selected = one.selected[0, 0].cpu()
    candidates, forced = selection_rules(selection)
    nq, nkv = selected.shape
    _imshow(ax, cells, SELECTION_COLORS, extent=(0, nkv, nq, 0), aspect="auto")
    _cell_lines(ax, cells, nq, nkv)
    of = "the causal" if selection.causal else "all"
    n, total = int(selected.sum()), int(candidates.sum())
    title = f"head {head}: {n / max(total, 1):.1%} of {of} blocks\n{n} of {total} blocks"
    if forced is not None:
        n_forced = int((selected & forced).sum())
        title += f": {n_forced} forced, {n - n_forced} chosen"
    if with_pairs:
        pairs = counterpart_pairs(one.q_len, one.kv_len, one.causal)
        title += f"\n{_fine_layout(one).allowed_pairs() / max(pairs, 1):.1%} of {of} pairs"
    if planted is not None:
        mark = _pick(planted, batch, head)[0, 0].cpu()
        title += f"\nplanted {int(mark.sum())}, {int((mark & selected).sum())} of them selected"
        if _rings_shown(cells.shape, (fq, fk)):
            rows, cols = torch.nonzero(mark, as_tuple=True)
            size = (0.45 * 72 * ax.get_position().width * ax.figure.get_figwidth() / max(nq, nkv)) ** 2
            ax.scatter(cols.numpy() + 0.5, rows.numpy() + 0.5, s=size, facecolors="none",
                       edgecolors=PLANTED_COLOR, linewidths=1.2)
    if (fq, fk) != (1, 1):
        title += f"\ndownsampled: {fq}x{fk} blocks per cell"
    ax.set_title(title, fontsize="medium")
    ax.set(xlabel=f"key block ({selection.block} keys)", ylabel=f"query block ({selection.query_block} queries)")
    ax.set_label(f"blocks, batch {batch}, head {head}")


def _rings_shown(cells_shape, pool) -> bool:
    """Whether planted blocks are ringed: one block per cell, at most 64 a side."""
    return pool == (1, 1) and max(cells_shape) <= 64


def draw_selection_mask(selection: SelectedBlocks, ax, *, batch: int = 0, head: int = 0,
                        max_cells: int = 512) -> None:
    """Draw the token-level mask that the selection of (``batch``, query ``head``) implies
    (max-pooled beyond ``max_cells`` pixels a side, evaluated only in the selected blocks)."""
    one = selection_of_head(selection, batch, head)
    layout = _fine_layout(one)
    pixels, (fq, fk) = mask_pixels(one, one.q_len, one.kv_len, layout=layout, max_cells=max_cells)
    _imshow(ax, pixels.to(torch.int8), TOKEN_COLORS, extent=(0, one.kv_len, one.q_len, 0), aspect="auto")
    _block_lines(ax, one.q_len, one.kv_len, one.query_block, one.block)
    of = "the causal" if one.causal else "all"
    pairs, total = layout.allowed_pairs(), counterpart_pairs(one.q_len, one.kv_len, one.causal)
    title = f"mask, head {head}: {pairs} of {total} pairs\n({pairs / max(total, 1):.1%} of {of} pairs)"
    if (fq, fk) != (1, 1):
        title += f"\nmax-pooled: {fq}x{fk} pairs per pixel"
    ax.set_title(title, fontsize="medium")
    ax.set(xlabel="key index", ylabel="query index")
    ax.set_label(f"mask, batch {batch}, head {head}")


def _heads_to_draw(selection: SelectedBlocks, batch, heads) -> tuple[int, list[int]]:
    b_size, h_size = selection.selected.shape[:2]
    if not isinstance(batch, int) or isinstance(batch, bool) or not 0 <= batch < b_size:
        raise ValueError(f"batch={batch!r}: the selection has batch size {b_size} (expected 0 to {b_size - 1})")
    if heads is None:
        return batch, list(range(min(MAX_HEADS, h_size)))
    heads = [heads] if isinstance(heads, int) and not isinstance(heads, bool) else heads
    if (not isinstance(heads, (list, tuple)) or not heads
            or not all(isinstance(h, int) and not isinstance(h, bool) for h in heads)):
        raise ValueError(f"heads={heads!r}: expected an int or a list of ints")
    if not all(0 <= h < h_size for h in heads):
        raise ValueError(f"heads={heads!r}: the selection has {h_size} query heads (expected 0 to {h_size - 1})")
    if len(set(heads)) != len(heads) or len(heads) > MAX_HEADS:
        raise ValueError(f"heads={heads!r}: expected at most {MAX_HEADS} distinct heads")
    return batch, list(heads)


def selection_hint(selection: SelectedBlocks) -> str | None:
    """Why the selection has nothing to choose, or ``None``: a top-k selection (``BlockTopK``,
    ``MoBA``) keeping at least as many blocks per query block as there are key blocks keeps
    every block, e.g. MoBA's 4096-key blocks (k=12) on a sequence shorter than 12 of them; its
    drawing is then the dense (causal) counterpart, however the inputs look."""
    k, nkv = getattr(selection.source, "k", None), selection.selected.shape[3]
    if k is None or nkv > k:
        return None
    blocks = f"{nkv} key block{'s' if nkv > 1 else ''} of {selection.block}"
    counterpart = "causal attention" if selection.causal else "dense attention"
    return (f"nothing to select: {selection.kv_len} keys make {blocks}, not more than the k={k} kept per query "
            f"block, so every block is kept ({counterpart}); a selection needs more than {k * selection.block} "
            f"keys, or smaller key blocks")


def figure_for_selection(selection: SelectedBlocks, *, batch: int = 0, heads=None,
                         planted: torch.Tensor | None = None, note: str | None = None,
                         max_mask_len: int = 4096, dpi: int = 100):
    """A matplotlib ``Figure`` of a content selection (:class:`~foveate.patterns.SelectedBlocks`,
    from ``pattern.select(q, k)``), ready for ``savefig``.

    One column per query head in ``heads`` (an int or up to 4 of them; default the first 4) of
    batch ``batch``: on top the selected blocks (:func:`draw_selection`: forced sink / local
    blocks and blocks chosen by score in their own colours, counts relative to the dense or
    causal counterpart), below them the token-level mask they imply
    (:func:`draw_selection_mask`) when neither length exceeds ``max_mask_len``. ``planted``
    (bool ``(B|1, H|1, nq, nkv)``) rings planted blocks; ``note`` is text under the title
    (e.g. where the inputs came from). A selection with nothing to choose says so under the
    title (:func:`selection_hint`). Bad values raise ``ValueError`` / ``TypeError``.
    """
    mpl = _mpl()
    if not isinstance(selection, SelectedBlocks):
        raise TypeError(f"figure_for_selection needs a SelectedBlocks (pattern.select(q, k)), got {selection!r}")
    batch, heads = _heads_to_draw(selection, batch, heads)
    nq, nkv = selection.selected.shape[2:]
    if planted is not None and (planted.dtype != torch.bool or planted.dim() != 4 or planted.shape[2:] != (nq, nkv)
                                or not all(p in (1, s) for p, s in zip(planted.shape[:2], selection.selected.shape))):
        raise ValueError(f"planted: expected a bool tensor (B|1, H|1, {nq}, {nkv}) like the selection's "
                         f"{tuple(selection.selected.shape)}, got {planted.dtype} {tuple(planted.shape)}")
    if not isinstance(dpi, int) or isinstance(dpi, bool) or dpi < 1:
        raise ValueError(f"dpi must be a positive int, got {dpi!r}")
    with_mask = max(selection.q_len, selection.kv_len) <= max_mask_len

    fig = mpl.figure.Figure(dpi=dpi, layout="constrained")
    mpl.backends.backend_agg.FigureCanvasAgg(fig)
    side = 4.0
    nrows = 2 if with_mask else 1
    fig.set_size_inches(max(len(heads), 2) * (side + 1.0), nrows * (side + 1.2) + 1.6)
    axes = fig.subplots(nrows, len(heads), squeeze=False)
    cells = _cells(fig, side)
    for col, head in enumerate(heads):
        draw_selection(selection, axes[0, col], batch=batch, head=head, planted=planted, with_pairs=not with_mask,
                       max_cells=cells)
        if with_mask:
            draw_selection_mask(selection, axes[1, col], batch=batch, head=head, max_cells=cells)
    for ax in axes.flat:
        # Square panels sit at the top of their cells: constrained layout places titles from the
        # cell's top, and a square centred in a taller cell would push its title into the one above.
        ax.set_anchor("N")
    b_size, h_size = selection.selected.shape[:2]
    of = "the causal" if selection.causal else "all"
    shape = (f"{selection.q_len} queries x {selection.kv_len} keys in {selection.query_block}x{selection.block}-token "
             f"blocks; batch {batch} of {b_size}, heads {', '.join(map(str, heads))} of {h_size}")
    lines = [repr(selection.source) if selection.source is not None else repr(selection), shape]
    lines += [note] if note else []
    lines.append(f"all batches and heads: {selection.block_density():.1%} of {of} blocks selected")
    hint = selection_hint(selection)
    if hint is not None:  # wrapped to the figure's width (about 9 bold characters an inch)
        lines.append(textwrap.fill(f"NOTE: {hint}", width=int(9 * fig.get_figwidth())))
    fig.suptitle("\n".join(lines), fontweight="bold")
    all_candidates = bool(selection_rules(selection)[0].all())
    codes = [code for code in SELECTION_COLORS if code != NOT_CANDIDATE or not all_candidates]
    handles = [mpl.patches.Patch(facecolor=SELECTION_COLORS[code][0], edgecolor="0.4",
                                 label=SELECTION_COLORS[code][1]) for code in codes]
    if planted is not None and _rings_shown((nq, nkv), (-(-nq // cells), -(-nkv // cells))):
        handles.append(mpl.lines.Line2D([], [], ls="none", marker="o", mfc="none", mec=PLANTED_COLOR,
                                        label="planted block"))
    if with_mask:
        handles += [mpl.patches.Patch(facecolor=TOKEN_COLORS[c][0], edgecolor="0.4", label=TOKEN_COLORS[c][1])
                    for c in (NOT_ALLOWED, ALLOWED)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    # Constrained layout sizes the cells from where the labels were at the previous draw, and a
    # square panel fills only part of its cell: a first draw leaves the legend on the panels'
    # labels, a second still moves them; from the third (savefig's) the layout is settled.
    for _ in range(2):
        fig.draw_without_rendering()
    return fig


# -- whole figures ------------------------------------------------------------------------------


def default_block(q_len: int) -> int:
    """Block size of :func:`figure_for` when none is given: 128, halved (down to 16) until
    there are at least 16 query blocks, so that small patterns still show block structure."""
    block = 128
    while block > 16 and q_len < 16 * block:
        block //= 2
    return block


def figure_for(pattern: Pattern, *, q_len: int | None = None, kv_len: int | None = None,
               query=None, block_q: int | None = None, block_kv: int | None = None,
               tile="auto", dpi: int = 100):
    """A matplotlib ``Figure`` (Agg canvas) of ``pattern``, ready for ``savefig``.

    * 1-D patterns (sequences, 1-D canvases): the mask matrix and the block layout;
      ``query`` (optional) marks one query's row.
    * 2-D/3-D canvases: the keys that ``query`` (flat index or coordinates; default the
      canvas centre) may see (for 3-D one panel per slice along axis 0 holding allowed keys,
      at most 8), and the block layout in raster order beside the tiled order of ``tile``:
      ``"auto"`` (:func:`~foveate.simulator.choose_tile`), a tile shape, or ``None`` (raster
      only).

    * A content selection (:class:`~foveate.patterns.SelectedBlocks`):
      :func:`figure_for_selection` with its defaults (batch 0, the first 4 heads); a
      content-selected pattern itself (``BlockTopK``, ...) needs its inputs and is refused.

    Lengths default to the canvas (``kv_len`` to ``q_len``). Block sizes default to
    :func:`default_block`; with an explicit tile, to the tile size (the tiled layout needs
    blocks that are whole tiles). Bad values raise ``ValueError`` / ``TypeError``.
    """
    if isinstance(pattern, SelectedBlocks):
        if query is not None or block_q is not None or block_kv is not None or tile not in ("auto", None):
            raise ValueError("query, block_q, block_kv and tile do not apply to a selection: "
                             "use figure_for_selection(selection, batch=..., heads=...)")
        if q_len is not None:
            pattern.check_lengths(q_len, q_len if kv_len is None else kv_len)
        return figure_for_selection(pattern, dpi=dpi)
    if pattern.content_dependent:
        raise ValueError(f"{pattern!r} depends on the inputs: draw its selection, "
                         f"figure_for(pattern.select(q, k))")
    mpl = _mpl()
    q_len, kv_len = _lengths(pattern, q_len, kv_len)
    pattern.check_lengths(q_len, kv_len)
    grid = pattern.canvas is not None and len(pattern.canvas) >= 2
    tile = tuple(tile) if isinstance(tile, list) else tile
    if isinstance(tile, str) and tile != "auto":
        raise ValueError(f"tile={tile!r}: expected 'auto', None or a tuple of ints")
    if tile not in ("auto", None):
        if not grid:
            raise ValueError(f"tile={tile!r}: only 2-D/3-D canvas patterns are tiled, not {pattern!r}")
        pattern._check_tile(tile)  # the Python API's message
    if block_q is None:
        block_q = math.prod(tile) if isinstance(tile, tuple) else default_block(q_len)
    block_kv = block_q if block_kv is None else block_kv
    if not isinstance(dpi, int) or isinstance(dpi, bool) or dpi < 1:
        raise ValueError(f"dpi must be a positive int, got {dpi!r}")
    query = resolve_query(pattern, q_len, query)
    layout = pattern.build(q_len, kv_len, block_q=block_q, block_kv=block_kv)

    fig = mpl.figure.Figure(dpi=dpi, layout="constrained")
    mpl.backends.backend_agg.FigureCanvasAgg(fig)
    if grid:
        _canvas_panels(fig, pattern, layout, query, tile)
    else:
        _sequence_panels(fig, pattern, layout, query)
    return fig


def _lengths(pattern: Pattern, q_len, kv_len) -> tuple[int, int]:
    default = pattern.default_lengths()
    if q_len is None:
        if default is None:
            raise ValueError(f"{pattern!r} has no canvas: give q_len (and kv_len)")
        return default
    return q_len, q_len if kv_len is None else kv_len


def _cells(fig, panel_inches: float) -> int:
    """Most cells per side that a panel shows without dropping any (about its axes' pixels)."""
    return max(16, min(512, int(0.75 * panel_inches * fig.dpi)))


def _sequence_panels(fig, pattern, layout, query) -> None:
    fig.set_size_inches(12, 7.8)
    ax_mask, ax_layout = fig.subplots(1, 2)
    draw_mask(pattern, layout.q_len, layout.kv_len, ax_mask, layout=layout, query=query,
              max_cells=_cells(fig, 5.5))
    draw_layout(layout, ax_layout, title="block layout", max_cells=_cells(fig, 5.5))
    fig.suptitle(f"{pattern!r}   q_len={layout.q_len}, kv_len={layout.kv_len}", fontweight="bold")
    fig.legend(handles=legend_handles(), loc="outside lower center", ncols=6, frameon=False)


def _canvas_panels(fig, pattern, layout, query, tile) -> None:
    keys = neighborhood_keys(pattern, query)
    coords = _coords(pattern.canvas, query)
    n_layouts = 1 if tile is None else 2
    fig.suptitle(repr(pattern), fontweight="bold")
    if len(pattern.canvas) == 2:  # one row: the neighborhood, then the layouts
        fig.set_size_inches(5.5 * (1 + n_layouts), 7.8)
        ax, *layout_axes = fig.subplots(1, 1 + n_layouts)
        draw_neighborhood(pattern, query, ax, keys=keys, max_cells=_cells(fig, 5.5))
    else:  # 3-D: up to 8 slices on top (4 per row), the layouts below
        planes, holding = planes_to_draw(keys[0], coords[0])
        ncols, nrows = min(len(planes), 4), -(-len(planes) // 4)
        side = 11 / max(ncols, 2)
        fig.set_size_inches(11, side * nrows + 7.4)
        top, bottom = fig.subfigures(2, 1, height_ratios=[side * nrows, 7.4])
        axes = top.subplots(nrows, ncols, squeeze=False).flatten()
        for ax, plane in zip(axes, planes):
            draw_neighborhood(pattern, query, ax, plane=plane, keys=keys, max_cells=_cells(fig, side))
        for ax in axes[len(planes):]:
            ax.set_axis_off()
        seen = f"query {coords} (flat {query}) sees {int(keys[0].sum())} canvas keys"
        seen += f" + {keys[1]} extra keys" if pattern.extra_kv else ""
        shown = f"{len(planes)} nearest of " if len(planes) < holding else ""
        top.suptitle(f"{seen}; slices along axis 0: {shown}{holding} with allowed keys")
        layout_axes = bottom.subplots(1, n_layouts, squeeze=False)[0]
    draw_layout(layout, layout_axes[0], title="raster order", max_cells=_cells(fig, 5.5))
    if tile is not None:
        _draw_tiled(pattern, layout, tile, layout_axes[1], max_cells=_cells(fig, 5.5))
    fig.legend(handles=legend_handles(), loc="outside lower center", ncols=6, frameon=False)


def _draw_tiled(pattern, layout, tile, ax, *, max_cells) -> None:
    """The layout panel of the tiled order (``tile``: 'auto' or a shape)."""
    from .patterns import Neighborhood
    from .simulator import choose_tile
    from .tiling import Tiled

    bq, bkv = layout.block_q, layout.block_kv
    chosen = choose_tile(pattern, block_q=bq, block_kv=bkv) if tile == "auto" else tuple(tile)
    if chosen is None:
        why = (f"no tile of {bq} tokens visits fewer blocks" if bq == bkv else "tiling needs block_q == block_kv")
        why = why if isinstance(pattern, Neighborhood) else "only a Neighborhood is tiled"
        ax.set_axis_off()
        ax.set_title("tiled order")
        ax.text(0.5, 0.5, f"tile='auto' keeps raster order:\n{why}", ha="center", va="center",
                transform=ax.transAxes, fontsize="large")
        return
    tiled = Tiled(pattern, chosen)
    t_layout = tiled.build(*tiled.default_lengths(), block_q=bq, block_kv=bkv)
    title = f"tiled order, tile {'x'.join(map(str, chosen))}" + (" (auto)" if tile == "auto" else "")
    if tiled.order.has_padding:
        title += f", canvas padded to {tiled.order.padded}"
    draw_layout(t_layout, ax, title=title, max_cells=max_cells)


__all__ = [
    "figure_for", "figure_for_selection", "selection_hint", "draw_selection", "draw_selection_mask", "selection_cells",
    "selection_rules", "selection_of_head", "selection_of_heads", "counterpart_pairs", "draw_mask", "draw_layout", "draw_neighborhood", "mask_pixels", "layout_cells",
    "neighborhood_keys", "planes_to_draw", "resolve_query", "default_block", "legend_handles",
]
