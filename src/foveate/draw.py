"""Drawings of patterns and block layouts (matplotlib; ``pip install foveate[bench]``).

One function per panel, each drawing into a matplotlib ``Axes`` that the caller owns:

* :func:`draw_mask`: the ``q_len x kv_len`` mask matrix of a pattern (max-pooled for long
  sequences), optionally with one query's row marked;
* :func:`draw_layout`: a :class:`~foveate.layout.BlockLayout` as a grid of empty / partial /
  full blocks (downsampled beyond ``max_cells`` blocks per side);
* :func:`draw_neighborhood`: the keys one query may see on a 2-D canvas, or on one slice
  along axis 0 of a 3-D canvas;

and :func:`figure_for`, which assembles them into one figure: the mask and the layout for
1-D patterns; the query's neighborhood (slices for 3-D) and the layouts in raster and tiled
order for 2-D/3-D canvases. Every panel is computed from ``mask_mod`` or from the layout,
never from a second definition of the pattern, in bounded memory.

>>> fig = figure_for(P.Neighborhood((64, 64), (13, 13)), query=(10, 20))  # doctest: +SKIP
>>> fig.savefig("neighborhood.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math

import torch

from .layout import EMPTY, FULL, PARTIAL, BlockLayout
from .patterns import Pattern

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
        import matplotlib.patches  # noqa: F401
        import matplotlib.ticker  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "foveate's drawings need matplotlib, which is not installed: pip install foveate[bench]"
        ) from err
    return matplotlib


def _imshow(ax, image: torch.Tensor, colors: dict, extent, aspect="equal"):
    """Show a small integer image through a fixed 3-colour map (no interpolation), with
    integer ticks. ``aspect="auto"`` fills a square panel (matrices of any shape)."""
    mpl = _mpl()
    cmap = mpl.colors.ListedColormap([colors[k][0] for k in sorted(colors)])
    ax.imshow(image.numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest",
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
    nq, nkv = layout.num_q_blocks, layout.num_kv_blocks
    if max(nq, nkv) <= 16:  # block boundaries relate the mask to the layout beside it
        for b in range(1, nq):
            ax.axhline(b * layout.block_q, color="white", lw=0.6)
        for b in range(1, nkv):
            ax.axvline(b * layout.block_kv, color="white", lw=0.6)
    ax.set(title=title, xlabel="key index", ylabel="query index")


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


def draw_layout(layout: BlockLayout, ax, *, title: str | None = None, max_cells: int = 512) -> None:
    """Draw the layout's blocks (q blocks down, kv blocks across) into ``ax``. ``title``
    heads the block counts (:func:`layout_summary`)."""
    cells, (fq, fk) = layout_cells(layout, max_cells)
    nq, nkv = layout.num_q_blocks, layout.num_kv_blocks
    _imshow(ax, cells, BLOCK_COLORS, extent=(0, nkv, nq, 0), aspect="auto")
    if max(cells.shape) <= 64:  # thin lines between cells keep neighbouring blocks apart
        ax.set_xticks(range(nkv + 1), minor=True)
        ax.set_yticks(range(nq + 1), minor=True)
        ax.grid(which="minor", color="white", lw=0.5)
        ax.tick_params(which="minor", length=0)
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

    Lengths default to the canvas (``kv_len`` to ``q_len``). Block sizes default to
    :func:`default_block`; with an explicit tile, to the tile size (the tiled layout needs
    blocks that are whole tiles). Bad values raise ``ValueError`` / ``TypeError``.
    """
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
    "figure_for", "draw_mask", "draw_layout", "draw_neighborhood", "mask_pixels", "layout_cells",
    "neighborhood_keys", "planes_to_draw", "resolve_query", "default_block", "legend_handles",
]
