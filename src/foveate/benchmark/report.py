"""Benchmark output: the terminal table, and the report folder (``report.md``,
``results.json``, PNG plots)."""

from __future__ import annotations

import json
import os

#: Plot label of the dense baselines (causal SDPA for causal cases).
BASELINE = "dense baseline (SDPA)"


def _is_baseline(rec: dict) -> bool:
    # Records written before the "baseline" field existed name their baseline sdpa/cudnn.
    return rec.get("baseline", rec["backend"].startswith(("sdpa", "cudnn")))


COLUMNS = ["case", "backend", "dir", "ms", "timing", "TFLOP/s", "speedup", "speed of light", "% of SoL", "check"]
DIRECTIONS = ("fwd", "fwd+bwd")


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
    is_baseline = _is_baseline(rec)
    return [
        rec["case"], rec["backend"] + (f" {'x'.join(map(str, rec['tile']))}" if rec.get("tile") else ""),
        rec["direction"], num("ms", ".3f"), _timing(rec), num("tflops", ".3g"),
        num("speedup", ".2f") + ("x" if rec.get("speedup") is not None else ""),
        "" if is_baseline else f"{rec['speed_of_light']:.2f}x",
        "" if rec.get("sol_fraction") is None else f"{100 * rec['sol_fraction']:.0f}%", check,
    ]


def print_table(records: list[dict], file=None) -> None:
    """The results as a table on the terminal (rich when installed)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        for line in markdown_table(records).splitlines():
            print(line, file=file)
        return
    table = Table(title=_title(records), title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col not in ("case", "backend", "dir", "check") else "left")
    for rec in records:
        table.add_row(*_cells(rec), style=None if rec["status"] == "ok" else "red")
    Console(file=file, width=200).print(table)


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
        "other one in brackets. Effective TFLOP/s count only the allowed pairs "
        "(forward 4·pairs·D, forward+backward 3.5× that). *Speed of light* is the simulator's bound of "
        "the layout (blocks of a dense kernel / visited blocks); *% of SoL* is the measured speedup over "
        "that bound (for causal cases, the bound relative to the causal baseline). Every timed result "
        "was first checked against the float32 reference backend (*check*: relative error).", "",
        markdown_table(records), "",
    ]
    md += [f"![{os.path.splitext(os.path.basename(p))[0]}]({os.path.basename(p)})" for p in plots]
    paths.append(os.path.join(out_dir, "report.md"))
    with open(paths[-1], "w") as f:
        f.write("\n".join(md) + "\n")
    return paths + plots


def _plots(records: list[dict], out_dir: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []  # the report says so by having no images; results.json has everything
    timed = [r for r in records if r["status"] == "ok" and r["ms"] is not None]
    if not timed:
        return []
    cases = list(dict.fromkeys(r["case"] for r in timed))
    series = lambda r: BASELINE if r["backend"].startswith(("sdpa", "cudnn")) else r["backend"]  # noqa: E731
    backends = list(dict.fromkeys(series(r) for r in timed))
    colors = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backends)}
    paths = []
    for key, label, name, log in (("ms", "time (ms, log scale)", "time.png", True),
                                  ("tflops", "effective TFLOP/s", "tflops.png", False)):
        fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.8 * len(cases)), 9), squeeze=False)
        for ax, direction in zip(axes[:, 0], DIRECTIONS):
            width = 0.8 / max(1, len(backends))
            for i, backend in enumerate(backends):
                vals = {r["case"]: r[key] for r in timed if series(r) == backend and r["direction"] == direction}
                if not vals:
                    continue
                xs = [j + i * width for j, c in enumerate(cases) if c in vals]
                ax.bar(xs, [vals[c] for c in cases if c in vals], width, label=backend, color=colors[backend])
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
            ax.set_xticklabels(cases, rotation=35, ha="right", fontsize=8)
            ax.set_title(f"{direction}")
            ax.set_ylabel(label)
            if log:
                ax.set_yscale("log")
            ax.grid(axis="y", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.suptitle(_title(records), fontsize=9)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, name))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 6))
    sparse = [r for r in timed if r.get("sol_fraction") is not None]
    bound = [r["speedup"] / r["sol_fraction"] for r in sparse]
    for direction, marker in zip(DIRECTIONS, ("o", "s")):
        pts = [(b, r) for b, r in zip(bound, sparse) if r["direction"] == direction]
        ax.scatter([b for b, _ in pts], [r["speedup"] for _, r in pts], marker=marker, label=direction)
        for b, r in pts if direction == "fwd" else []:  # one label per case is enough
            ax.annotate(f"{r['case']} ({r['backend']})", (b, r["speedup"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    if bound:
        lim = [min(bound + [r["speedup"] for r in sparse]) * 0.8, max(bound + [r["speedup"] for r in sparse]) * 1.2]
        ax.plot(lim, lim, "k--", lw=0.8, label="speed of light")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("speed-of-light speedup over the baseline (simulator)")
    ax.set_ylabel("measured speedup over the baseline")
    ax.set_title("achieved vs speed of light", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "speed_of_light.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
