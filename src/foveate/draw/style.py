"""What every drawing shares: colours and codes, the lazy matplotlib import, image panels,
legends."""

from __future__ import annotations

import torch

from ..layout import EMPTY, FULL, PARTIAL

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


def _cells(fig, panel_inches: float) -> int:
    """Most cells per side that a panel shows without dropping any (about its axes' pixels)."""
    return max(16, min(512, int(0.75 * panel_inches * fig.dpi)))
