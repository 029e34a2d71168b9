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

from .figures import default_block, figure_for
from .panels import (draw_layout, draw_mask, draw_neighborhood, layout_cells, layout_summary, mask_pixels,
                     neighborhood_keys, planes_to_draw, resolve_query)
from .selection import (CHOSEN, FORCED, MAX_HEADS, NOT_CANDIDATE, NOT_SELECTED, counterpart_pairs, draw_selection,
                        draw_selection_mask, figure_for_selection, selection_cells, selection_hint,
                        selection_of_head, selection_of_heads, selection_rules)
from .style import ALLOWED, BLOCK_COLORS, NOT_ALLOWED, QUERY, TOKEN_COLORS, legend_handles


__all__ = [
    "figure_for", "figure_for_selection", "selection_hint", "draw_selection", "draw_selection_mask", "selection_cells",
    "selection_rules", "selection_of_head", "selection_of_heads", "counterpart_pairs", "draw_mask", "draw_layout", "draw_neighborhood", "mask_pixels", "layout_cells",
    "neighborhood_keys", "planes_to_draw", "resolve_query", "default_block", "legend_handles", "layout_summary",
    "MAX_HEADS", "NOT_CANDIDATE", "NOT_SELECTED", "CHOSEN", "FORCED", "NOT_ALLOWED", "ALLOWED", "QUERY",
    "TOKEN_COLORS", "BLOCK_COLORS",
]
