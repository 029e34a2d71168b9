"""Panels and the figure of a content selection: the blocks each (batch, head) chose, the
token mask they imply, heads side by side."""

from __future__ import annotations

import math
import textwrap

import torch

from ..layout import BlockLayout
from ..patterns import SelectedBlocks
from ..selection import SelectionGeometry
from .panels import _block_lines, _cell_lines, mask_pixels
from .style import ALLOWED, NOT_ALLOWED, QUERY, TOKEN_COLORS, _cells, _imshow, _mpl


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
    from ..patterns import Causal

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
