"""Whole figures: :func:`figure_for` assembles the panels of a pattern (or of a content
selection) into one figure."""

from __future__ import annotations

import math

from ..patterns import Pattern, SelectedBlocks
from .panels import (_coords, draw_layout, draw_mask, draw_neighborhood, neighborhood_keys, planes_to_draw,
                     resolve_query, slot_label)
from .selection import figure_for_selection
from .style import _cells, _mpl, legend_handles


# -- whole figures ------------------------------------------------------------------------------

#: Heads drawn side by side by default for a pattern that differs per head.
MAX_DRAWN_HEADS = 4


def default_block(q_len: int) -> int:
    """Block size of :func:`figure_for` when none is given: 128, halved (down to 16) until
    there are at least 16 query blocks, so that small patterns still show block structure."""
    block = 128
    while block > 16 and q_len < 16 * block:
        block //= 2
    return block


def figure_for(pattern: Pattern, *, q_len: int | None = None, kv_len: int | None = None,
               query=None, block_q: int | None = None, block_kv: int | None = None,
               tile="auto", dpi: int = 100, heads=None):
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

    * A pattern that differs per query head (``P.PerHead``, ``P.StridedHeads``, ``P.Mask`` with
      ``heads=``: a layout with a head axis): for sequences, the mask and the layout of each of
      ``heads`` (query head indices; default the first 4) side by side; for canvases, the
      panels of ``heads[0]`` (default head 0). Every panel names its head. A layout with a
      batch axis is drawn for batch 0, and says so.

    Lengths default to the canvas (``kv_len`` to ``q_len``). Block sizes default to
    :func:`default_block`; with an explicit tile, to the tile size (the tiled layout needs
    blocks that are whole tiles). Bad values raise ``ValueError`` / ``TypeError``.
    """
    if isinstance(pattern, SelectedBlocks):
        if (query is not None or block_q is not None or block_kv is not None or tile not in ("auto", None)
                or heads is not None):
            raise ValueError("query, block_q, block_kv, tile and heads do not apply to a selection: "
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
    if grid and isinstance(heads, (list, tuple)) and len(heads) > 1:
        raise ValueError(f"heads={heads!r}: a canvas figure draws one head (heads=[h])")
    heads = _heads(layout, heads)

    fig = mpl.figure.Figure(dpi=dpi, layout="constrained")
    mpl.backends.backend_agg.FigureCanvasAgg(fig)
    if grid:
        _canvas_panels(fig, pattern, layout, query, tile, (0, heads[0]))
    else:
        _sequence_panels(fig, pattern, layout, query, heads)
    return fig


def _heads(layout, heads) -> list[int]:
    """The query heads to draw: ``heads`` checked against the layout's head axis (default: the
    first :data:`MAX_DRAWN_HEADS`; ``[0]`` for a layout without one)."""
    n = layout.batch_heads[1]
    if heads is None:
        return list(range(min(n, MAX_DRAWN_HEADS)))
    if n == 1:
        raise ValueError(f"heads={heads!r}: the pattern is the same for every head (its layout has no head axis)")
    if isinstance(heads, int) and not isinstance(heads, bool):
        heads = [heads]
    if (not isinstance(heads, (list, tuple)) or not heads
            or not all(isinstance(h, int) and not isinstance(h, bool) and 0 <= h < n for h in heads)):
        raise ValueError(f"heads={heads!r}: expected query head indices in [0, {n})")
    if len(heads) > MAX_DRAWN_HEADS:
        raise ValueError(f"heads={heads!r}: at most {MAX_DRAWN_HEADS} heads side by side")
    return list(heads)


def _lengths(pattern: Pattern, q_len, kv_len) -> tuple[int, int]:
    default = pattern.default_lengths()
    if q_len is None:
        if default is None:
            raise ValueError(f"{pattern!r} has no canvas: give q_len (and kv_len)")
        return default
    return q_len, q_len if kv_len is None else kv_len


def _sequence_panels(fig, pattern, layout, query, heads) -> None:
    suptitle = f"{pattern!r}   q_len={layout.q_len}, kv_len={layout.kv_len}"
    if layout.batch_heads[1] == 1:  # the mask beside its layout
        fig.set_size_inches(12, 7.8)
        ax_mask, ax_layout = fig.subplots(1, 2)
        axes = [(ax_mask, ax_layout)]
    else:  # per head: masks above their layouts, heads side by side
        fig.set_size_inches(max(12, 5.5 * len(heads)), 13)
        grid = fig.subplots(2, len(heads), squeeze=False)
        axes = list(zip(grid[0], grid[1]))
        shown = ", ".join(map(str, heads))
        suptitle += (f"\ndiffers per query head: head{'s' if len(heads) > 1 else ''} {shown} of "
                     f"{layout.batch_heads[1]} drawn")
    if layout.batch_heads[0] > 1:
        suptitle += f"\ndiffers per batch element: batch 0 of {layout.batch_heads[0]} drawn"
    for (ax_mask, ax_layout), h in zip(axes, heads):
        draw_mask(pattern, layout.q_len, layout.kv_len, ax_mask, layout=layout, query=query,
                  max_cells=_cells(fig, 5.5), slot=(0, h))
        draw_layout(layout, ax_layout, title="block layout", max_cells=_cells(fig, 5.5), slot=(0, h))
    fig.suptitle(suptitle, fontweight="bold")
    fig.legend(handles=legend_handles(), loc="outside lower center", ncols=6, frameon=False)


def _canvas_panels(fig, pattern, layout, query, tile, slot=(0, 0)) -> None:
    keys = neighborhood_keys(pattern, query, slot)
    coords = _coords(pattern.canvas, query)
    n_layouts = 1 if tile is None else 2
    label = slot_label(layout, slot)
    fig.suptitle(repr(pattern) + (f"\n{label} drawn (the pattern differs per head or batch element)" if label else ""),
                 fontweight="bold")
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
    draw_layout(layout, layout_axes[0], title="raster order", max_cells=_cells(fig, 5.5), slot=slot)
    if tile is not None:
        _draw_tiled(pattern, layout, tile, layout_axes[1], max_cells=_cells(fig, 5.5))
    fig.legend(handles=legend_handles(), loc="outside lower center", ncols=6, frameon=False)


def _draw_tiled(pattern, layout, tile, ax, *, max_cells) -> None:
    """The layout panel of the tiled order (``tile``: 'auto' or a shape)."""
    from ..patterns import Neighborhood
    from ..simulator import choose_tile
    from ..patterns.tiled import Tiled

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
