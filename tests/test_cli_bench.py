"""``foveate bench`` end to end on the tiny suite (CPU, reference backend: no compiles)."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys

import matplotlib.figure
import numpy as np
import pytest
import torch
from matplotlib.markers import MarkerStyle

import foveate
from foveate import patterns as P
from foveate.backends import Backend, register
from foveate.backends.reference import ReferenceBackend
from foveate.benchmark.suites import TINY_SUITE, Case, dense_pairs
from foveate.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    code = main(["bench", "--suite", "tiny", "--backends", "reference", "--reps", "2", "--out", str(out)])
    return code, out


def test_exit_code_and_report_files(tiny_report):
    code, out = tiny_report
    assert code == 0
    for name in ("results.json", "report.md", "time.png", "tflops.png", "speed_of_light.png"):
        path = out / name
        assert path.stat().st_size > 0, name
    for name in ("time.png", "tflops.png", "speed_of_light.png"):
        assert (out / name).read_bytes()[:8] == PNG
    report = (out / "report.md").read_text()
    assert "| case | backend |" in report and "time.png" in report
    for case in TINY_SUITE:
        assert case.name in report


def test_results_schema_and_values(tiny_report):
    _, out = tiny_report
    records = json.loads((out / "results.json").read_text())
    # every case: baseline and reference, forward and forward+backward
    assert len(records) == len(TINY_SUITE) * 2 * 2
    required = {"case", "backend", "direction", "ms", "timing", "tflops", "speedup", "speed_of_light", "sol_fraction",
                "blocks_baseline", "rel_error", "status", "device", "torch", "triton", "foveate", "date", "dtype", "q_len", "kv_len"}
    cases = {c.name: c for c in TINY_SUITE}
    for rec in records:
        assert required <= rec.keys()
        assert rec["status"] == "ok"
        assert rec["device"] and rec["foveate"] == foveate.__version__ and rec["dtype"] == "float32"
        assert rec["ms"] > 0
        case = cases[rec["case"]]
        baseline = next(r for r in records if r["case"] == rec["case"] and r["direction"] == rec["direction"]
                        and r["backend"].startswith("sdpa"))
        assert rec["speedup"] == pytest.approx(baseline["ms"] / rec["ms"])
        factor = 3.5 if rec["direction"] == "fwd+bwd" else 1.0
        if rec["backend"] == "reference":
            pairs = case.allowed_pairs()
            assert rec["rel_error"] < 1e-5
            assert rec["sol_fraction"] == pytest.approx(rec["speedup"] / rec["speed_of_light"])
        else:
            pairs = dense_pairs(case)
        flops = 4 * case.batch * case.heads * pairs * case.head_dim * factor
        assert rec["tflops"] == pytest.approx(flops / (rec["ms"] * 1e-3) / 1e12)


def test_table_on_stdout_and_json_mode(tmp_path, capsys):
    assert main(["bench", "--suite", "tiny", "--cases", "2d", "--backends", "reference", "--no-backward",
                 "--reps", "1", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "tiny-2d" in text and "reference" in text and "tiny-causal" not in text
    assert main(["bench", "--suite", "tiny", "--cases", "2d", "--backends", "reference", "--no-backward",
                 "--reps", "1", "--out", str(tmp_path), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["direction"] for r in records} == {"fwd"} and {r["case"] for r in records} == {"tiny-2d"}


def test_timing_column_and_field(tmp_path, capsys):
    # Off CUDA every call is timed eagerly, also for a case that asks for GPU time.
    assert main(["bench", "--suite", "tiny", "--backends", "reference", "--no-backward", "--reps", "1",
                 "--out", str(tmp_path), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["timing"] for r in records} == {"eager"}
    assert "| timing |" in (tmp_path / "report.md").read_text()
    assert "| eager |" in (tmp_path / "report.md").read_text()


def test_gpu_timed_case_runs_eagerly_off_cuda():
    import dataclasses

    from foveate.benchmark.runner import run_cases

    case = dataclasses.replace(TINY_SUITE[0], timing="gpu")
    records = run_cases([case], ["reference"], dtype=torch.float32, device=torch.device("cpu"), backward=False,
                        reps=1, rep_ms=1)
    assert [r["timing"] for r in records] == ["eager", "eager"] and all(r["ms"] > 0 for r in records)


def test_bad_timing_is_refused_before_any_work():
    from foveate.benchmark.runner import CaseRunner
    from foveate.benchmark.timing import gpu_ms

    with pytest.raises(ValueError, match="timing='fast'"):
        CaseRunner(TINY_SUITE[0], dtype=torch.float32, device=torch.device("cpu"), backward=False, reps=1,
                   rep_ms=1, timing="fast")
    with pytest.raises(ValueError, match="calls must be >= 1"):
        gpu_ms(lambda: None, calls=0)


@pytest.mark.parametrize("fields,cell", [
    (dict(timing="eager", eager_ms=None, graph_ms=None), "eager"),
    (dict(timing="gpu", eager_ms=0.196, graph_ms=0.086), "GPU (or eager 0.196)"),
    (dict(timing="gpu", eager_ms=0.791, graph_ms=0.870), "eager (or GPU 0.870)"),
    (dict(timing="gpu", eager_ms=0.791, graph_ms=None), "eager (no GPU time)"),
], ids=["eager", "host-bound", "slower-in-graphs", "not-capturable"])
def test_timing_cell_names_the_time_that_counts_first(fields, cell):
    from foveate.benchmark.report import COLUMNS, _cells

    rec = dict(case="c", backend="triton", direction="fwd", ms=0.1, tflops=1.0, speedup=2.0, speed_of_light=3.0,
               sol_fraction=0.5, status="ok", rel_error=1e-3, baseline=False, **fields)
    assert _cells(rec)[COLUMNS.index("timing")] == cell


def test_gpu_timing_falls_back_to_eager_when_capture_fails(monkeypatch):
    """A run that cannot be captured into a CUDA graph (a host sync) keeps its eager time and
    says why; the others are not affected."""
    from foveate.benchmark import runner as runner_module

    def no_capture(run, **kw):
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(runner_module, "gpu_ms", no_capture)
    runner = runner_module.CaseRunner(TINY_SUITE[0], dtype=torch.float32, device=torch.device("cpu"),
                                      backward=False, reps=1, rep_ms=1)
    runner.timing = "gpu"  # as on CUDA
    (base,) = runner.run_baseline()
    (rec,) = runner.run_backend("reference", {"fwd": base["ms"]})
    for r in (base, rec):
        assert r["status"] == "ok" and r["ms"] == r["eager_ms"] > 0 and r["graph_ms"] is None
        assert r["reason"] == ("no GPU time (graph capture failed: operation not permitted when stream is "
                               "capturing): eager time")


def test_case_refuses_an_unknown_timing():
    from foveate.benchmark.suites import Case

    with pytest.raises(ValueError, match="timing='fast'"):
        Case("c", None, 1, 16, 64, timing="fast")


def test_report_of_old_records_reads_them_as_eager(tiny_report, tmp_path, capsys):
    _, out = tiny_report
    records = json.loads((out / "results.json").read_text())
    for rec in records:
        del rec["timing"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(records))
    assert main(["bench", "--from-json", str(old), "--out", str(tmp_path / "rebuilt")]) == 0
    assert "| eager |" in (tmp_path / "rebuilt" / "report.md").read_text()


def test_list(capsys):
    assert main(["bench", "--suite", "gpu", "--list"]) == 0
    text = capsys.readouterr().out
    assert "gna-3d-hunyuan" in text and "Neighborhood(canvas=(30, 48, 80)" in text


class _WrongBackend(ReferenceBackend):
    """The reference with its output shifted: a fast wrong result."""

    name = "wrong-for-test"

    def forward(self, q, k, v, problem, scale):
        out, lse = super().forward(q, k, v, problem, scale)
        return out + 1.0, lse


class _DecliningBackend(Backend):
    name = "declines-for-test"

    def available(self):
        return True

    def supports(self, problem):
        return "never takes anything"

    def auto_reason(self, problem):
        return None


@pytest.fixture
def extra_backends():
    before = list(foveate.backends._REGISTRY)
    register(_WrongBackend())
    register(_DecliningBackend())
    yield
    foveate.backends._REGISTRY[:] = before


def test_wrong_result_is_a_failure_without_time(extra_backends, tmp_path, capsys):
    code = main(["bench", "--suite", "tiny", "--cases", "causal", "--backends", "wrong-for-test",
                 "declines-for-test", "--reps", "1", "--no-backward", "--out", str(tmp_path), "--json"])
    assert code == 1
    records = {r["backend"]: r for r in json.loads(capsys.readouterr().out)}
    wrong = records["wrong-for-test"]
    assert wrong["status"] == "wrong" and wrong["ms"] is None and wrong["speedup"] is None
    assert "relative error" in wrong["reason"]
    declined = records["declines-for-test"]
    assert declined["status"] == "unsupported" and "never takes anything" in declined["reason"]


@pytest.mark.parametrize("argv,needle", [
    pytest.param(["--suite", "nope"], "--suite 'nope' is unknown", id="unknown-suite"),
    pytest.param(["--backends", "nope"], "backend='nope' is unknown", id="unknown-backend"),
    pytest.param(["--suite", "tiny", "--cases", "nothing-like-this"], "matches no case", id="no-case"),
    pytest.param(["--device", "tpu"], "--device 'tpu'", id="bad-device"),
    pytest.param(["--device", "cpu", "--suite", "tiny", "--timing", "gpu"], "--timing gpu", id="gpu-timing-on-cpu"),
])
def test_bad_values_exit_2_with_one_line(argv, needle, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--heads", "0"], ["--dtype", "int8"], ["--reps", "x"]],
                         ids=["heads-0", "bad-dtype", "bad-reps"])
def test_bad_arguments_exit_2_from_argparse(argv):
    proc = subprocess.run([sys.executable, "-m", "foveate", "bench", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr


def test_cuda_device_without_cuda_is_refused(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["bench", "--device", "cuda", "--suite", "tiny"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.flex
def test_flex_dense_second_baseline(tmp_path, capsys):
    """--flex-dense times FlexAttention on the dense problem of each case (forward only on CPU)."""
    assert main(["bench", "--suite", "tiny", "--cases", "2d", "--backends", "reference", "--flex-dense",
                 "--reps", "1", "--out", str(tmp_path), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    by = {(r["backend"], r["direction"]): r for r in records}
    sdpa, flex = by[("sdpa dense", "fwd")], by[("flex dense", "fwd")]
    assert flex["baseline"] and flex["status"] == "ok" and flex["tile"] is None
    assert flex["speedup"] == pytest.approx(sdpa["ms"] / flex["ms"])
    case = TINY_SUITE[1]
    assert flex["tflops"] == pytest.approx(4 * case.heads * dense_pairs(case) * case.head_dim / (flex["ms"] * 1e-3) / 1e12)
    assert by[("flex dense", "fwd+bwd")]["status"] == "unsupported"
    assert not by[("reference", "fwd")]["baseline"]


def test_from_json_merges_runs_in_parts(tmp_path, capsys):
    # A suite run in two parts (as on a machine with a per-command time limit), then one
    # report of both: every record once, in order, and each part's command named.
    parts = []
    for name in ("tiny-causal", "tiny-2d"):
        out = tmp_path / name
        assert main(["bench", "--suite", "tiny", "--cases", name, "--backends", "reference", "--reps", "1",
                     "--out", str(out)]) == 0
        parts.append(out / "results.json")
    capsys.readouterr()
    merged = tmp_path / "merged"
    assert main(["bench", "--from-json", *map(str, parts), "--out", str(merged)]) == 0
    want = [r for p in parts for r in json.loads(p.read_text())]
    assert json.loads((merged / "results.json").read_text()) == want
    report = (merged / "report.md").read_text()
    for rec in want:
        assert rec["command"] in report
    assert {r["case"] for r in want} == {"tiny-causal", "tiny-2d"}
    assert "tiny-causal" in report and "tiny-2d" in report
    assert (merged / "time.png").read_bytes()[:8] == PNG


# -- the report: table width, speed of light, plots (#32 item 6) --------------------------------

CPU = torch.device("cpu")
#: Cases of the synthetic records: causal SDPA is the baseline of the first, dense SDPA of the others.
REPORT_CASES = {c.name: c for c in [
    Case("causal-1k", P.Causal(), 2, 16, 1024),
    Case("sliding-127-2k", P.SlidingWindow(127), 2, 16, 2048),
    Case("2d-32x64-k7", P.Neighborhood((32, 64), (7, 7)), 2, 16),
]}
#: Made-up times (fwd, fwd+bwd) of the baseline and two backends; flex and torch close
#: together, as where labels on the points collide.
REPORT_MS = {"baseline": (10.0, 30.0), "flex": (8.0, 9.0), "torch": (8.2, 9.1)}


def synthetic_records() -> list[dict]:
    """Records as ``foveate bench`` writes them (``CaseRunner.record``), with made-up times."""
    from foveate.benchmark.runner import CaseRunner, environment, sdpa_baseline

    records = []
    for case in REPORT_CASES.values():
        runner = CaseRunner(case, dtype=torch.float32, device=CPU, backward=True, reps=1, rep_ms=1)
        for d, direction in enumerate(("fwd", "fwd+bwd")):
            base = REPORT_MS["baseline"][d]
            records.append(runner.record(sdpa_baseline(case, cudnn=False)[0], direction, baseline=True, ms=base,
                                         speedup=1.0))
            for backend in ("flex", "torch"):
                ms = REPORT_MS[backend][d]
                records.append(runner.record(backend, direction, ms=ms, speedup=base / ms, rel_error=1e-7))
    return [dict(rec, **environment(CPU)) for rec in records]


def long_records() -> list[dict]:
    """Synthetic records with the longest cells of a GPU run: a long case name, a tiled
    backend, GPU timing, a failure with a long reason."""
    records = synthetic_records()
    records[1] = dict(records[1], case="gna-3d-hunyuan-s", backend="triton", tile=[2, 8, 8], timing="gpu",
                      eager_ms=0.196, graph_ms=0.086, ms=1864.166)
    records[2] = dict(records[2], status="unsupported", ms=None, tflops=None, speedup=None, sol_fraction=None,
                      rel_error=None, reason="backend='torch' cannot run this problem: a reason long enough "
                                             "to take many lines of a narrow check column")
    return records


def test_table_fits_a_terminal_of_100_columns_without_cutting_numbers():
    from foveate.benchmark.report import COLUMNS, _cells, print_table

    records = long_records()
    out = io.StringIO()
    print_table(records, file=out, width=100)
    text = out.getvalue()
    assert max(map(len, text.splitlines())) <= 100
    rows = {line.split()[0] for line in text.splitlines() if line.strip()}
    assert {r["case"] for r in records} <= rows  # one row per record, case names whole
    for rec in records:  # every number whole, on one line
        cells = _cells(rec)
        for col in ("ms", "TFLOP/s", "speedup", "speed of light", "% of SoL"):
            assert cells[COLUMNS.index(col)] in text
    # The long reason of the failure is printed in full (under the table).
    assert records[2]["reason"] in " ".join(text.split())


def test_table_follows_the_terminal_width(tmp_path, monkeypatch, capsys):
    from foveate.benchmark.report import DEFAULT_WIDTH, table_width

    monkeypatch.delenv("COLUMNS", raising=False)
    assert table_width(io.StringIO()) == DEFAULT_WIDTH == 120  # not a terminal
    monkeypatch.setenv("COLUMNS", "100")
    assert table_width(io.StringIO()) == 100
    results = tmp_path / "results.json"
    results.write_text(json.dumps(long_records()))
    assert main(["bench", "--from-json", str(results), "--out", str(tmp_path / "report")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "gna-3d-hunyuan-s" in "\n".join(lines) and max(map(len, lines[:-1])) <= 100  # the last: report paths


@pytest.mark.parametrize("case,bound", [
    (Case("causal-1k", P.Causal(), 1, 16, 1024), 1.0),  # causal SDPA visits the same 36 blocks
    (Case("causal-1k-kv-longer", P.Causal(), 1, 16, 256, 1024), 16 / 15),  # dense SDPA: all 16 blocks
    (Case("sliding-127-2k", P.SlidingWindow(127), 1, 16, 2048), 256 / 31),
], ids=["causal", "causal-kv-longer", "sliding"])
def test_speed_of_light_is_over_the_baseline_of_the_speedup(case, bound):
    """The *speed of light* column is the bound of the speedup over the same baseline as the
    *speedup* column (causal SDPA for a causal case), and *% of SoL* is one over the other."""
    from foveate.benchmark.report import COLUMNS, _cells
    from foveate.benchmark.runner import CaseRunner

    runner = CaseRunner(case, dtype=torch.float32, device=CPU, backward=False, reps=1, rep_ms=1)
    (base,) = runner.run_baseline()
    (rec,) = runner.run_backend("reference", {"fwd": base["ms"]})
    assert rec["speed_of_light"] == pytest.approx(bound)
    assert base["speed_of_light"] == pytest.approx(bound)  # the case's, on every row
    assert rec["sol_fraction"] == pytest.approx(rec["speedup"] / bound)
    cells = _cells(rec)
    assert cells[COLUMNS.index("speed of light")] == f"{bound:.2f}x"
    assert cells[COLUMNS.index("% of SoL")] == f"{100 * rec['speedup'] / bound:.0f}%"


@pytest.mark.parametrize("fields,sol,percent", [
    # A result row: % of SoL is its speedup over its speed of light, whatever sol_fraction says.
    (dict(speed_of_light=1.78, blocks_baseline=64, speedup=0.58, sol_fraction=0.65), "1.78x", "33%"),
    (dict(speed_of_light=8.26, blocks_baseline=256, speedup=2.43, sol_fraction=0.29), "8.26x", "29%"),
    # A causal row of a run before blocks_baseline existed: its speed_of_light was over a
    # dense kernel (1.78x), its speedup is over causal SDPA, which visits the same blocks.
    (dict(speed_of_light=1.78, speedup=0.58, sol_fraction=0.65), "1.00x", "58%"),
], ids=["row", "sliding-row", "old-causal-row"])
def test_percent_of_sol_is_speedup_over_the_sol_column(fields, sol, percent):
    from foveate.benchmark.report import COLUMNS, _cells

    rec = dict(case="causal-1k", pattern="Causal()", q_len=1024, kv_len=1024, backend="flex", direction="fwd",
               ms=25.4, tflops=0.02, status="ok", rel_error=1e-7, baseline=False, timing="eager", blocks_visited=36,
               **fields)
    cells = _cells(rec)
    assert (cells[COLUMNS.index("speed of light")], cells[COLUMNS.index("% of SoL")]) == (sol, percent)


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures that the report saves, by file name (``Figure.savefig`` spied on)."""
    saved = {}
    real = matplotlib.figure.Figure.savefig

    def spy(self, fname, *args, **kwargs):
        saved[os.path.basename(str(fname))] = self
        return real(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return saved


def _marker_vertices(marker) -> np.ndarray:
    style = MarkerStyle(marker)
    return style.get_path().transformed(style.get_transform()).vertices


def test_speed_of_light_plot_has_the_table_numbers_and_names_every_point(tmp_path, saved_figures):
    from foveate.benchmark.report import COLUMNS, _cells, write_report

    records = synthetic_records()
    write_report(records, str(tmp_path), "foveate bench")
    fig = saved_figures["speed_of_light.png"]
    (ax,) = fig.axes
    points = [(tuple(xy), coll) for coll in ax.collections for xy in coll.get_offsets()]
    sparse = [r for r in records if not r["baseline"]]
    assert len(points) == len(sparse)
    legend = fig.legends[0] if fig.legends else ax.get_legend()
    handles = dict(zip((t.get_text() for t in legend.get_texts()), legend.legend_handles))
    styles = set()
    for rec in sparse:
        # At (the table's speed of light, the table's speedup): the causal case at 1, not 0.5.
        cells = _cells(rec)
        sol = float(cells[COLUMNS.index("speed of light")].rstrip("x"))
        (coll,) = [c for (x, y), c in points if x == pytest.approx(sol, abs=0.005) and y == pytest.approx(rec["speedup"])]
        # Named by the legend: the case's colour, the backend's marker, filled for the forward.
        edge, face = coll.get_edgecolor()[0], coll.get_facecolor()
        assert tuple(edge) == pytest.approx(handles[rec["case"]].get_facecolor())
        assert np.allclose(coll.get_paths()[0].vertices, _marker_vertices(handles[rec["backend"]].get_marker()))
        filled = len(face) > 0 and face[0][3] > 0
        assert filled == (rec["direction"] == "fwd")
        assert (handles[rec["direction"]].get_markerfacecolor() != "none") == filled
        styles.add((rec["case"], rec["backend"], rec["direction"], coll.get_paths()[0].vertices.tobytes(),
                    tuple(edge), filled))
    assert len({s[3:] for s in styles}) == len(sparse)  # no two points alike
    # No text on another: the legend beside the axes, no labels on the points.
    renderer = fig.canvas.get_renderer()
    ticks = set(ax.xaxis.get_ticklabels(which="both")) | set(ax.yaxis.get_ticklabels(which="both"))
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip() and t not in ticks]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    assert not [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]
    assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_tflops_plot_counts_the_allowed_pairs_of_every_bar(tmp_path, saved_figures):
    from foveate.benchmark.report import BASELINE, write_report

    records = synthetic_records()
    write_report(records, str(tmp_path), "foveate bench")
    fig = saved_figures["tflops.png"]
    for ax, d, direction in zip(fig.axes, (0, 1), ("fwd", "fwd+bwd")):
        assert "allowed pairs" in ax.get_ylabel()
        bars = {c.get_label(): [bar.get_height() for bar in c] for c in ax.containers}
        assert set(bars) == {BASELINE, "flex", "torch"}
        for series, heights in bars.items():
            ms = REPORT_MS["baseline" if series == BASELINE else series][d]
            # Every bar of a case measured by the same work: the allowed pairs of its pattern.
            want = [4 * c.batch * c.heads * c.allowed_pairs() * c.head_dim * (3.5 if d else 1) / (ms * 1e-3) / 1e12
                    for c in REPORT_CASES.values()]
            assert heights == pytest.approx(want)
    assert "allowed (query, key) pairs" in fig.get_suptitle()
