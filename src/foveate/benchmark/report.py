"""Benchmark output: the terminal table, and the report folder (``report.md``,
``results.json``, PNG plots)."""

from __future__ import annotations

import json
import os
import sys

from .runner import BWD_FLOP_FACTOR

#: Plot label of the dense baselines (causal SDPA for causal cases).
BASELINE = "dense baseline (SDPA)"
#: Width of the terminal table when the output is not a terminal (a pipe, a file, a CI log)
#: and ``COLUMNS`` is not set.
DEFAULT_WIDTH = 120


def _is_baseline(rec: dict) -> bool:
    # Records written before the "baseline" field existed name their baseline sdpa/cudnn.
    return rec.get("baseline", rec["backend"].startswith(("sdpa", "cudnn")))


COLUMNS = ["case", "backend", "dir", "ms", "timing", "TFLOP/s", "speedup", "speed of light", "% of SoL", "check"]
#: Columns of text: on a narrow terminal they wrap between words; the others (numbers) never do.
TEXT_COLUMNS = ("case", "backend", "timing", "check")
#: Shorter headers on the terminal, spelt out in the table's caption.
TERMINAL_HEADERS = {"speed of light": "SoL", "% of SoL": "% SoL"}
CAPTION = "SoL: speed of light, the simulator's bound of the speedup over the baseline; % SoL = speedup / SoL"
#: Characters between two columns of the terminal table (a padding space and the rule's).
GAP = 2
DIRECTIONS = ("fwd", "fwd+bwd")


def sol_bound(rec: dict) -> float | None:
    """The *speed of light* of a sparse record: the simulator's bound of its speedup over the
    case's own baseline (:func:`foveate.benchmark.runner.speed_of_light`); ``None`` for a
    baseline. The table's column, its *% of SoL* and ``speed_of_light.png`` all use it."""
    if _is_baseline(rec) or rec.get("speed_of_light") is None:
        return None
    if "blocks_baseline" not in rec and rec.get("pattern") == "Causal()" and rec["q_len"] == rec["kv_len"]:
        # Runs before the field existed gave causal cases the bound over a dense kernel, while
        # their speedups are over causal SDPA, which visits the very blocks of the pattern.
        return 1.0
    return rec["speed_of_light"]


def sol_fraction(rec: dict) -> float | None:
    """*% of SoL* (as a fraction): the measured speedup over :func:`sol_bound`."""
    bound = sol_bound(rec)
    return None if bound is None or rec.get("speedup") is None else rec["speedup"] / bound


def allowed_tflops(rec: dict) -> float:
    """Effective TFLOP/s of a timed record over the allowed pairs of its case's pattern, for
    a dense baseline too (its *TFLOP/s* column counts the pairs it computes): the work that
    every bar of a case in ``tflops.png`` is measured by."""
    pairs = rec["density"] * rec["q_len"] * rec["kv_len"] * rec["batch"] * rec["heads"]
    flops = 4 * pairs * rec["head_dim"] * (BWD_FLOP_FACTOR if rec["direction"] == "fwd+bwd" else 1)
    return flops / (rec["ms"] * 1e-3) / 1e12


def _timing(rec: dict) -> str:
    """The *timing* cell: ``eager``, or under GPU timing both times of the same calls, the one
    in *ms* first (records from before the field existed were timed eagerly)."""
    if rec.get("timing", "eager") == "eager":
        return "eager"
    times = {"GPU": rec.get("graph_ms"), "eager": rec.get("eager_ms")}
    if times["GPU"] is None:  # the calls could not be captured (results.json: reason)
        return "eager (no GPU time)"
    order = sorted(times, key=lambda name: times[name])
    return f"{order[0]} (or {order[1]} {times[order[1]]:.3f})"


def _cells(rec: dict) -> list[str]:
    def num(key, fmt):
        return format(rec[key], fmt) if rec.get(key) is not None else ""

    if rec["status"] == "ok":
        check = f"ok ({rec['rel_error']:.1e})" if rec.get("rel_error") is not None else "baseline"
    else:
        check = f"{rec['status'].upper()}: {rec['reason']}"
    bound, fraction = sol_bound(rec), sol_fraction(rec)
    return [
        rec["case"], rec["backend"] + (f" {'x'.join(map(str, rec['tile']))}" if rec.get("tile") else ""),
        rec["direction"], num("ms", ".3f"), _timing(rec), num("tflops", ".3g"),
        num("speedup", ".2f") + ("x" if rec.get("speedup") is not None else ""),
        "" if bound is None else f"{bound:.2f}x", "" if fraction is None else f"{100 * fraction:.0f}%", check,
    ]


def table_width(file=None) -> int:
    """Columns of the terminal table on ``file`` (default stdout): ``COLUMNS`` when set, else
    the terminal's width, else (not a terminal) :data:`DEFAULT_WIDTH`."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    stream = sys.stdout if file is None else file
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # no file descriptor: not a terminal
        pass
    return DEFAULT_WIDTH


def column_widths(headers: list[str], rows: list[list[str]], width: int) -> list[int]:
    """Widths of the terminal table's columns within ``width`` characters (:data:`GAP` between
    columns): each column's widest cell when they all fit; else the text columns
    (:data:`TEXT_COLUMNS`) narrowed one character at a time, each time the one that wraps the
    fewest more cells (then the widest), down to their longest word (cells wrap between
    words), then down to their header (long words fold); the numbers stay whole. On a
    terminal too narrow even for that, the widths add up to more than ``width`` (rich then
    shrinks every column)."""
    columns = list(zip(headers, *rows))
    widths = [max(map(len, col)) for col in columns]
    words = [max(len(word) for cell in col for word in cell.split() or [""]) for col in columns]
    excess = sum(widths) + GAP * (len(widths) - 1) - width
    for floor in (words, list(map(len, headers))):
        floor = [f if name in TEXT_COLUMNS else w for name, f, w in zip(COLUMNS, floor, widths)]
        while excess > 0:
            above = [j for j in range(len(widths)) if widths[j] > floor[j]]
            if not above:
                break
            wrapped = lambda j: sum(len(cell) >= widths[j] for cell in columns[j][1:])  # noqa: E731
            widths[min(above, key=lambda j: (wrapped(j), -widths[j]))] -= 1
            excess -= 1
    return widths


def _terminal_rows(records: list[dict]) -> tuple[list[list[str]], list[str]]:
    """The cells of the terminal table and its notes: the reason of a failure, which would
    take many lines of a narrow *check* column, is a numbered note under the table (one per
    distinct reason)."""
    rows, notes = [], {}
    for rec in records:
        cells = _cells(rec)
        if rec["status"] != "ok":
            number = notes.setdefault(rec["reason"], len(notes) + 1)
            cells[COLUMNS.index("check")] = f"{rec['status'].upper()} [{number}]"
        rows.append(cells)
    return rows, [f"[{number}] {reason}" for reason, number in notes.items()]


def print_table(records: list[dict], file=None, width: int | None = None) -> None:
    """The results as a table on the terminal (rich when installed), at most ``width``
    characters wide (default :func:`table_width`): text cells wrap onto more lines, numbers
    are never cut (down to a width that holds them), failures' reasons are notes under it."""
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        for line in markdown_table(records).splitlines():
            print(line, file=file)
        return
    width = table_width(file) if width is None else width
    headers = [TERMINAL_HEADERS.get(col, col) for col in COLUMNS]
    rows, notes = _terminal_rows(records)
    # A rule under the header only: vertical rules and edges would take 11 more characters.
    table = Table(title=_title(records), title_justify="left", caption="\n".join([CAPTION, *notes]),
                  caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    for col, header, w in zip(COLUMNS, headers, column_widths(headers, rows, width)):
        table.add_column(header, width=w, justify="left" if col in TEXT_COLUMNS or col == "dir" else "right",
                         no_wrap=col not in TEXT_COLUMNS, overflow="fold")
    for rec, row in zip(records, rows):
        table.add_row(*row, style=None if rec["status"] == "ok" else "red")
    Console(file=file, width=width).print(table)


def _title(records: list[dict]) -> str:
    if not records:
        return "foveate bench: no results"
    r = records[0]
    return (f"foveate bench — {r['device']}, torch {r['torch']}, triton {r['triton']}, "
            f"foveate {r['foveate']}, {r['dtype']}, {r['date']}")


def markdown_table(records: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for rec in records:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(rec)) + " |")
    return "\n".join(lines)


def write_report(records: list[dict], out_dir: str, command: str) -> list[str]:
    """Write ``results.json``, the plots and ``report.md`` under ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json")]
    with open(paths[0], "w") as f:
        json.dump(records, f, indent=1, default=str)
    plots = _plots(records, out_dir)
    md = [
        "# foveate bench", "", _title(records), "", f"Command: `{command}`", "",
        "Speedups are over the dense baseline of each case in the same run (cuDNN SDPA on CUDA; causal "
        "SDPA for causal cases), warm medians; *timing* says how: *eager*, the calls' host and GPU time; "
        "*GPU* / *eager*, for cases whose calls may be bound by the host, the lower of their eager time and of "
        "their GPU work alone (the calls replayed as a CUDA graph, each after a clear of the L2 cache), the "
        "other one in brackets. Effective TFLOP/s count only allowed pairs (forward 4·pairs·D, "
        "forward+backward 3.5× that): in the table the pairs each kernel computes (for a dense baseline all "
        "pairs, or the causal ones), in *tflops.png* those of the case's pattern for every bar, the "
        "baseline's too, so that the bars of a case measure the same work. *Speed of light* is the "
        "simulator's bound of the speedup over the same baseline: the blocks the baseline's kernel visits "
        "(all of them, or the causal ones for a causal case) / the blocks the pattern's layout visits; "
        "*% of SoL* = *speedup* / *speed of light*, and *speed_of_light.png* plots the same two numbers. "
        "Every timed result was first checked against the float32 reference backend (*check*: relative "
        "error).", "",
        markdown_table(records), "",
    ]
    md += [f"![{os.path.splitext(os.path.basename(p))[0]}]({os.path.basename(p)})" for p in plots]
    paths.append(os.path.join(out_dir, "report.md"))
    with open(paths[-1], "w") as f:
        f.write("\n".join(md) + "\n")
    return paths + plots


def _mpl():
    """matplotlib (an optional dependency), used without pyplot: writing a report leaves the
    caller's backend and figures alone."""
    import matplotlib
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.lines  # noqa: F401
    import matplotlib.patches  # noqa: F401

    return matplotlib


def _figure(figsize):
    mpl = _mpl()
    fig = mpl.figure.Figure(figsize=figsize, layout="constrained")
    mpl.backends.backend_agg.FigureCanvasAgg(fig)
    return fig


def _timed(records: list[dict]) -> list[dict]:
    return [r for r in records if r["status"] == "ok" and r["ms"] is not None]


def _plots(records: list[dict], out_dir: str) -> list[str]:
    try:
        _mpl()
    except ImportError:
        return []  # the report says so by having no images; results.json has everything
    if not _timed(records):
        return []
    figures = {
        "time.png": bars_figure(records, lambda r: r["ms"], "time (ms, log scale)", log=True),
        "tflops.png": bars_figure(
            records, allowed_tflops, "effective TFLOP/s\n(allowed pairs of the case's pattern only)",
            note="effective TFLOP/s: the FLOPs of the allowed (query, key) pairs of each case's pattern / time,\n"
                 "for every bar: the dense baseline's too, which computes more pairs than that"),
        "speed_of_light.png": speed_of_light_figure(records),
    }
    paths = []
    for name, fig in figures.items():
        paths.append(os.path.join(out_dir, name))
        fig.savefig(paths[-1], dpi=110)
    return paths


def bars_figure(records: list[dict], value, ylabel: str, *, log: bool = False, note: str | None = None):
    """Bars of ``value(record)`` of the timed records: one group per case, one bar per series
    (the dense baselines, then each backend); forward on top, forward+backward below."""
    timed = _timed(records)
    cases = list(dict.fromkeys(r["case"] for r in timed))
    series = lambda r: BASELINE if r["backend"].startswith(("sdpa", "cudnn")) else r["backend"]  # noqa: E731
    backends = list(dict.fromkeys(series(r) for r in timed))
    palette = _mpl().colormaps["tab10"]
    colors = {b: palette(i % 10) for i, b in enumerate(backends)}
    fig = _figure((max(8, 0.8 * len(cases)), 9))
    width = 0.8 / max(1, len(backends))
    for ax, direction in zip(fig.subplots(2, 1, squeeze=False)[:, 0], DIRECTIONS):
        for i, backend in enumerate(backends):
            vals = {r["case"]: value(r) for r in timed if series(r) == backend and r["direction"] == direction}
            if vals:
                xs = [j + i * width for j, c in enumerate(cases) if c in vals]
                ax.bar(xs, [vals[c] for c in cases if c in vals], width, label=backend, color=colors[backend])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
        ax.set_xticklabels(cases, rotation=35, ha="right", fontsize=8)
        ax.set_title(direction)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("\n".join([_title(records)] + ([note] if note else [])), fontsize=9)
    return fig


#: Markers of the backends in ``speed_of_light.png``.
MARKERS = "osD^vP*Xph"


def speed_of_light_figure(records: list[dict]):
    """``speed_of_light.png``: the measured speedup of each timed sparse record (y) against its
    speed of light (x, :func:`sol_bound`, the table's column), both over the case's baseline,
    on log axes with the line y = x. Colour: the case; marker: the backend; filled: forward,
    hollow: forward+backward. One legend beside the axes names them all: labels on the points
    would collide where points crowd (a case's backends and directions share one x)."""
    points = [(sol_bound(r), r) for r in _timed(records) if sol_bound(r) is not None]
    cases = list(dict.fromkeys(r["case"] for _, r in points))
    backends = list(dict.fromkeys(r["backend"] for _, r in points))
    palette = _mpl().colormaps["tab10" if len(cases) <= 10 else "tab20"]
    color = {c: palette(i % palette.N) for i, c in enumerate(cases)}
    marker = {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(backends)}
    fig = _figure((10, max(6, 0.22 * (len(cases) + len(backends) + 8))))
    ax = fig.subplots()
    for bound, r in points:
        c = color[r["case"]]
        ax.scatter([bound], [r["speedup"]], s=50, marker=marker[r["backend"]], edgecolors=[c], linewidths=1.5,
                   facecolors=[c] if r["direction"] == "fwd" else "none", zorder=3)
    if points:
        values = [v for bound, r in points for v in (bound, r["speedup"])]
        lim = (min(values) / 1.5, max(values) * 1.5)
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim)
    ax.set_xlabel("speed of light: the simulator's bound of the speedup over the baseline")
    ax.set_ylabel("measured speedup over the baseline")
    ax.set_title("measured speedup vs speed of light (on the dashed line: at the speed of light)", fontsize=10)
    ax.grid(alpha=0.3)
    _sol_legend(fig, color, marker)
    return fig


def _sol_legend(fig, color: dict, marker: dict) -> None:
    """The legend of :func:`speed_of_light_figure`, outside the axes: a section per meaning
    (the colour of each case, the marker of each backend, the fill of each direction), each
    under a bold heading, then the dashed line."""
    mpl = _mpl()
    line, patch = mpl.lines.Line2D, mpl.patches.Patch
    point = dict(ls="none", mec="0.3", ms=7, mew=1.5)
    sections = {
        "case (colour)": [patch(facecolor=c, label=case) for case, c in color.items()],
        "backend (marker)": [line([], [], marker=m, mfc="0.3", label=b, **point) for b, m in marker.items()],
        "direction (fill)": [line([], [], marker="o", mfc="0.3", label="fwd", **point),
                             line([], [], marker="o", mfc="none", label="fwd+bwd", **point)],
    }
    handles = []
    for heading, entries in sections.items():
        handles += [line([], [], ls="none", label=heading)] + entries
    handles.append(line([], [], color="k", ls="--", lw=0.8, label="at the speed of light"))
    legend = fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False,
                        ncols=1 + len(handles) // 30)
    for text in legend.get_texts():
        if text.get_text() in sections:
            text.set_fontweight("bold")
