"""``foveate show`` and ``foveate simulate`` end to end, and the drawings against the masks.

The commands run through ``foveate.cli.main`` (and once through ``python -m foveate`` in a
subprocess, for the exit status and stderr of a real process). Pictures are checked as
files (PNG signature, size from the dpi, the legend's colours present in the panels); what
the panels show is checked against the brute-force masks through the ``foveate.draw``
functions that compute them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import brute
from foveate import patterns as P
from foveate.cli import main
from foveate.layout import EMPTY, FULL, PARTIAL
from foveate.simulator import simulate

import matplotlib.colors  # noqa: E402  (matplotlib is a test dependency: no skip if missing)
import matplotlib.image  # noqa: E402

from foveate import draw  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 50  # small files, quick tests


def run_show(tmp_path, capsys, *args: str, name: str = "out.png"):
    """Run ``foveate show ARGS --out tmp/NAME``; return the PNG as an ``(H, W, 4)`` array."""
    out = tmp_path / name
    assert main(["show", *args, "--out", str(out), "--dpi", str(DPI)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min(image.shape[:2]) >= 5 * DPI  # figures are several inches on each side
    return image


def has_colour(image, colour: str, min_pixels: int = 20) -> bool:
    """Whether at least ``min_pixels`` pixels have exactly ``colour`` (panels are drawn
    without interpolation, so their cells keep the legend's colours)."""
    rgb = torch.tensor(matplotlib.colors.to_rgb(colour))
    close = (torch.from_numpy(image[..., :3].copy()) - rgb).abs().max(dim=-1).values < 1.5 / 255
    return int(close.sum()) >= min_pixels


COLOUR = {
    "allowed": draw.TOKEN_COLORS[draw.ALLOWED][0], "query": draw.TOKEN_COLORS[draw.QUERY][0],
    "partial": draw.BLOCK_COLORS[PARTIAL][0], "full": draw.BLOCK_COLORS[FULL][0],
}


# -- foveate show ------------------------------------------------------------------------------

SHOW_CASES = {
    # name: (arguments, colours that must appear)
    "causal": (["causal", "--len", "200"], ["allowed", "partial", "full"]),
    "sliding-kv-longer": (
        ["sliding", "--left", "30", "--right", "5", "--len", "150", "--kv-len", "230", "--query", "70"],
        ["allowed", "partial", "full", "query"],
    ),
    "dense-q-longer": (["dense", "--len", "90", "--kv-len", "40"], ["allowed", "full"]),
    "neighborhood-1d": (["neighborhood", "--canvas", "100", "--kernel", "9"], ["allowed", "partial", "full"]),
    "2d-dilation-stride-causal-extra-explicit-tile": (
        ["neighborhood", "--canvas", "24", "20", "--kernel", "5", "7", "--dilation", "2", "1",
         "--stride", "1", "3", "--causal", "0", "1", "--extra-kv", "3", "--tile", "4x4", "--query", "10", "10"],
        ["allowed", "query", "partial", "full"],
    ),
    "2d-stride-auto-tile": (  # auto picks 8x8
        ["neighborhood", "--canvas", "32", "32", "--kernel", "16", "16", "--stride", "8", "8"],
        ["allowed", "query", "partial", "full"],
    ),
    "3d-auto-tile": (  # auto picks 4x4x4
        ["neighborhood", "--canvas", "4", "16", "16", "--kernel", "3", "8", "8", "--query", "0", "15", "3"],
        ["allowed", "query", "partial", "full"],
    ),
    "3d-causal-auto-keeps-raster-flat-query": (
        ["neighborhood", "--canvas", "6", "12", "12", "--kernel", "3", "5", "5", "--causal", "1", "0", "0",
         "--extra-kv", "2", "--query", "400"],
        ["allowed", "query", "partial", "full"],
    ),
    "3d-dilation-stride-explicit-tile": (
        ["neighborhood", "--canvas", "8", "8", "8", "--kernel", "3", "4", "4", "--dilation", "2", "1", "1",
         "--stride", "1", "2", "2", "--tile", "1x4x4", "--query", "3", "2", "5"],
        ["allowed", "query", "partial", "full"],
    ),
    "windows-shifted": (["windows", "--canvas", "16", "16", "--window", "4", "--shift", "2"], ["allowed", "partial"]),
    "axial": (["axial", "--canvas", "8", "12", "--axes", "1"], ["allowed", "partial"]),
    "halo": (["halo", "--canvas", "16", "16", "--block", "4", "--halo", "1"], ["allowed", "partial"]),
    "circular": (["circular", "--canvas", "24", "24", "--radius", "5.5"], ["allowed", "partial"]),
    "with-text": (["neighborhood", "--canvas", "24", "24", "--kernel", "7", "7", "--text", "100"],
                  ["allowed", "partial", "full"]),
}


@pytest.mark.parametrize("case", list(SHOW_CASES))
def test_show_writes_png(tmp_path, capsys, case):
    args, colours = SHOW_CASES[case]
    image = run_show(tmp_path, capsys, *args)
    for name in colours:
        assert has_colour(image, COLOUR[name]), f"{case}: no {name} pixels"


def test_show_size_follows_dpi(tmp_path, capsys):
    small = run_show(tmp_path, capsys, "causal", "--len", "64", name="small.png")
    assert main(["show", "causal", "--len", "64", "--out", str(tmp_path / "big.png"), "--dpi", str(2 * DPI)]) == 0
    big = matplotlib.image.imread(tmp_path / "big.png")
    assert abs(big.shape[0] - 2 * small.shape[0]) <= 2 and abs(big.shape[1] - 2 * small.shape[1]) <= 2


def test_show_default_output_and_long_sequence(tmp_path, capsys, monkeypatch):
    """Without --out the picture goes to ./foveate-show.png; a long sequence is pooled."""
    monkeypatch.chdir(tmp_path)
    assert main(["show", "causal", "--len", "60000", "--dpi", str(DPI)]) == 0
    assert capsys.readouterr().out.strip() == "foveate-show.png"
    assert (tmp_path / "foveate-show.png").read_bytes().startswith(PNG_SIGNATURE)


def titles(fig) -> str:
    """Every title of a figure (suptitles of the figure and its subfigures, axes titles)."""
    texts = [t.get_text() for f in [fig, *fig.subfigs] if (t := f._suptitle) is not None]
    texts += [t.get_text() for ax in fig.get_axes() for t in ax.texts]
    return "\n".join(texts + [ax.get_title() for ax in fig.get_axes()])


def test_figure_titles():
    pattern = P.Neighborhood((32, 32), (16, 16), stride=(8, 8))
    text = titles(draw.figure_for(pattern, query=(3, 4)))
    assert repr(pattern) in text and "query (3, 4) (flat 100)\nsees 256 canvas keys" in text
    assert "raster order\n16x16 blocks of 64x64 tokens\nvisited " in text
    assert "tiled order, tile 8x8 (auto)" in text and "density 25.00%" in text
    text = titles(draw.figure_for(pattern, block_q=32, tile=(4, 8)))
    assert "tiled order, tile 4x8\n32x32 blocks of 32x32 tokens" in text
    assert "tiled order" not in titles(draw.figure_for(pattern, tile=None))

    pattern = P.Neighborhood((6, 12, 12), (3, 5, 5), causal=(True, False, False), extra_kv=2)
    text = titles(draw.figure_for(pattern, query=(4, 0, 0)))
    assert "query (4, 0, 0) (flat 576) sees 75 canvas keys + 2 extra keys" in text
    assert "slices along axis 0: 3 with allowed keys" in text and "slice 4 (query): 25 keys" in text
    assert "tile='auto' keeps raster order" in text
    text = titles(draw.figure_for(P.Neighborhood((20, 4, 4), (13, 3, 3))))
    assert "slices along axis 0: 8 nearest of 13 with allowed keys" in text

    text = titles(draw.figure_for(P.SlidingWindow(4), q_len=3000, kv_len=5000, block_q=8, query=7))
    assert "SlidingWindow(left=4, right=0)   q_len=3000, kv_len=5000" in text
    assert "max-pooled: " in text and "query 7 marked" in text
    assert "375x625 blocks of 8x8 tokens" in text and "downsampled: " in text


# -- what the panels show, against the brute-force masks ---------------------------------------


def maxpool(mask: torch.Tensor, fq: int, fk: int) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(mask[None].float(), (fq, fk), ceil_mode=True)[0].bool()


MASK_CASES = {
    "causal": (P.Causal(), 50, 70, brute.causal_mask(50, 70)),
    "causal-q-longer": (P.Causal(), 70, 50, brute.causal_mask(70, 50)),
    "sliding": (P.SlidingWindow(7, 3), 61, 61, brute.sliding_window_mask(61, 61, 7, 3)),
    "neighborhood-2d-extra": (
        P.Neighborhood((7, 9), (3, 5), dilation=(2, 1), causal=(False, True), extra_kv=4), 63, 67, None,
    ),
    "union": (P.SlidingWindow(3) | P.Causal() & P.SlidingWindow(20, 5), 45, 45, None),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
@pytest.mark.parametrize("max_cells", [512, 16])
@pytest.mark.parametrize("block", [8, 13])
def test_mask_pixels_match_brute(case, max_cells, block):
    pattern, q_len, kv_len, expected = MASK_CASES[case]
    if expected is None and isinstance(pattern, P.Neighborhood):
        expected = brute.neighborhood_mask_of(pattern)
    elif expected is None:  # (a | (b & c)) from the parts' brute masks
        expected = brute.sliding_window_mask(q_len, kv_len, 3) | (
            brute.causal_mask(q_len, kv_len) & brute.sliding_window_mask(q_len, kv_len, 20, 5))
    layout = pattern.build(q_len, kv_len, block_q=block, block_kv=block)
    pixels, (fq, fk) = draw.mask_pixels(pattern, q_len, kv_len, layout=layout, max_cells=max_cells)
    assert max(pixels.shape) <= max_cells
    assert torch.equal(pixels, maxpool(expected, fq, fk))


@pytest.mark.parametrize("max_cells", [512, 7, 3])
def test_layout_cells_match_dense_layout(max_cells):
    pattern = P.Neighborhood((12, 10), (5, 3), stride=(2, 1), extra_kv=5)
    layout = pattern.build(120, 125, block_q=8, block_kv=6)
    cells, (fq, fk) = draw.layout_cells(layout, max_cells)
    dense = brute.block_grid(brute.neighborhood_mask_of(pattern), 8, 6)
    assert torch.equal(layout.to_dense()[0, 0], dense.to(torch.int8))
    # A pooled cell shows its busiest block: partial over full over empty.
    rank = torch.tensor([0, 2, 1])[dense.long()]  # EMPTY -> 0, PARTIAL -> 2, FULL -> 1
    pooled = torch.nn.functional.max_pool2d(rank[None].float(), (fq, fk), ceil_mode=True)[0].long()
    assert torch.equal(cells.long(), torch.tensor([EMPTY, FULL, PARTIAL])[pooled])
    assert max(cells.shape) <= max_cells


@pytest.mark.parametrize("kw", [
    dict(canvas=(9, 11), kernel=(3, 5), dilation=(2, 1), stride=(1, 2), causal=(False, True), extra_kv=2),
    dict(canvas=(5, 6, 7), kernel=(2, 3, 3), dilation=(1, 2, 1), causal=(True, False, False)),
])
def test_neighborhood_keys_match_brute(kw):
    pattern = P.Neighborhood(**kw)
    expected = brute.neighborhood_mask_of(pattern)
    n = expected.shape[0]
    for query in (0, n // 2, n - 1, 17):
        keys, extra = draw.neighborhood_keys(pattern, query)
        assert torch.equal(keys.flatten(), expected[query, :n])
        assert extra == int(expected[query, n:].sum())


def test_planes_to_draw_nearest_eight():
    keys = torch.zeros(20, 3, 3, dtype=torch.bool)
    keys[2:15, 1, 1] = True
    assert draw.planes_to_draw(keys, 3) == ([2, 3, 4, 5, 6, 7, 8, 9], 13)
    assert draw.planes_to_draw(keys, 18) == ([8, 9, 10, 11, 12, 13, 14, 18], 14)


def test_resolve_query():
    pattern = P.Neighborhood((4, 6), 3)
    assert draw.resolve_query(pattern, 24) == 2 * 6 + 3  # the centre
    assert draw.resolve_query(pattern, 24, (1, 5)) == 11
    assert draw.resolve_query(pattern, 24, 7) == 7
    assert draw.resolve_query(P.Causal(), 10) is None
    for bad in ((4, 0), 24, -1, (1, 2, 3), "x"):
        with pytest.raises(ValueError, match="query="):
            draw.resolve_query(pattern, 24, bad)


def test_default_block():
    assert [draw.default_block(n) for n in (1, 200, 512, 1024, 2048, 10**6)] == [16, 16, 32, 64, 128, 128]


# -- foveate simulate ------------------------------------------------------------------------------

SIMULATE_CASES = {
    "causal": (["causal", "--len", "1000", "--kv-len", "1500", "--block-q", "64", "--block-kv", "32"],
               P.Causal(), dict(q_len=1000, kv_len=1500, block_q=64, block_kv=32)),
    "sliding": (["sliding", "--left", "100", "--right", "7", "--len", "777"],
                P.SlidingWindow(100, 7), dict(q_len=777, kv_len=777)),
    "dense": (["dense", "--len", "300", "--kv-len", "100"], P.Dense(), dict(q_len=300, kv_len=100)),
    "neighborhood-auto-tile": (
        ["neighborhood", "--canvas", "32", "32", "--kernel", "9", "9", "--stride", "3", "3", "--tile", "auto"],
        P.Neighborhood((32, 32), (9, 9), stride=(3, 3)), dict(tile="auto"),
    ),
    "neighborhood-3d-tile": (
        ["neighborhood", "--canvas", "4", "8", "10", "--kernel", "3", "3", "5", "--dilation", "1", "2", "1",
         "--causal", "1", "0", "0", "--extra-kv", "6", "--tile", "2x4x4", "--block-q", "32", "--block-kv", "32"],
        P.Neighborhood((4, 8, 10), (3, 3, 5), dilation=(1, 2, 1), causal=(True, False, False), extra_kv=6),
        dict(tile=(2, 4, 4), block_q=32, block_kv=32),
    ),
    "windows-cyclic": (["windows", "--canvas", "16", "32", "--window", "4", "8", "--shift", "2", "0", "--cyclic", "1", "0"],
                       P.Windows((16, 32), (4, 8), (2, 0), (True, False)), {}),
    "grid": (["grid", "--canvas", "16", "16", "--grid", "4"], P.Grid((16, 16), 4), {}),
    "circular": (["circular", "--canvas", "40", "40", "--radius", "6"], P.Circular((40, 40), 6), {}),
    "windows-text-first": (["windows", "--canvas", "16", "16", "--window", "4", "--text", "40", "--text-first"],
                           P.WithText(P.Windows((16, 16), 4), 40, first=True), {}),
    "tile-neighborhood": (["tile-neighborhood", "--canvas", "8", "16", "16", "--tile-shape", "2", "4", "4",
                           "--window", "3", "3", "3", "--tile", "auto"],
                          P.TileNeighborhood((8, 16, 16), (2, 4, 4), (3, 3, 3)), dict(tile="auto")),
}


@pytest.mark.parametrize("case", list(SIMULATE_CASES))
def test_simulate_json_matches_python(capsys, case):
    args, pattern, kwargs = SIMULATE_CASES[case]
    expected = json.loads(json.dumps(simulate(pattern, **kwargs).as_dict()))  # tuples -> lists
    assert main(["simulate", *args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected


@pytest.mark.parametrize("case", ["causal", "neighborhood-3d-tile"])
def test_simulate_text_matches_python(capsys, case):
    args, pattern, kwargs = SIMULATE_CASES[case]
    expected = simulate(pattern, **kwargs).as_dict()
    assert main(["simulate", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    got = dict(line.split(None, 1) for line in lines)
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name] == (f"{value:.4g}" if isinstance(value, float) else str(value)), name


# -- bad arguments: status 2, one line, no traceback ------------------------------------------------

ARGPARSE_ERRORS = {
    # argparse's own errors: usage, then one "error:" line
    "unknown pattern": (["show", "spiral", "--len", "8"], "invalid choice: 'spiral'"),
    "missing --canvas": (["show", "neighborhood", "--kernel", "3"], "required: --canvas"),
    "bad tile string": (["show", "neighborhood", "--canvas", "8", "8", "--kernel", "3", "--tile", "4y4"],
                        "tile must be 'auto', 'none' or like 16x8"),
    "simulate bad tile string": (["simulate", "neighborhood", "--canvas", "8", "8", "--kernel", "3",
                                  "--tile", "big"], "tile must be"),
}


@pytest.mark.parametrize("case", list(ARGPARSE_ERRORS))
def test_argparse_errors_exit_2(capsys, case):
    args, message = ARGPARSE_ERRORS[case]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message in err.strip().splitlines()[-1]


VALUE_ERRORS = {
    # errors from the pattern classes and the drawing: exactly one line on stderr
    "kernel larger than canvas": (["neighborhood", "--canvas", "8", "8", "--kernel", "9", "3"],
                                  "does not fit canvas=(8, 8)"),
    "negative --left": (["sliding", "--left", "-1", "--len", "10"], "left must be >= 0, got -1"),
    "query outside canvas": (["neighborhood", "--canvas", "8", "8", "--kernel", "3", "--query", "8", "0"],
                             "query=(8, 0): coordinates must lie inside canvas=(8, 8)"),
    "flat query too large": (["causal", "--len", "10", "--query", "10"], "query=10"),
    "query with wrong arity": (["neighborhood", "--canvas", "8", "8", "8", "--kernel", "3", "--query", "1", "2"],
                               "query=(1, 2): expected an int (flat index) or 3 coordinates"),
    "tile of wrong rank": (["neighborhood", "--canvas", "8", "8", "--kernel", "3", "--tile", "4x4x4"],
                           "tile=(4, 4, 4)"),
    "tile on a sequence": (["causal", "--len", "10", "--tile", "4x4"], "only 2-D/3-D canvas patterns are tiled"),
    "tile and block disagree": (["neighborhood", "--canvas", "16", "16", "--kernel", "3", "--tile", "4x4",
                                 "--block-q", "32"], "must equal the tile size 16"),
    "zero length": (["dense", "--len", "0"], "q_len must be >= 1"),
    "text-first without text": (["halo", "--canvas", "8", "8", "--block", "4", "--halo", "1", "--text-first"],
                                "--text-first needs --text N"),
    "no such folder": (["causal", "--len", "10", "--out", "/nonexistent-foveate/x.png"], "does not exist"),
}


@pytest.mark.parametrize("case", list(VALUE_ERRORS))
def test_bad_values_exit_2_with_one_line(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    args, message = VALUE_ERRORS[case]
    assert main(["show", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("foveate show: error: "), captured.err
    assert message in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("case", ["kernel larger than canvas", "negative --left"])
def test_simulate_bad_values_exit_2(capsys, case):
    args, message = VALUE_ERRORS[case]
    assert main(["simulate", *args]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("foveate simulate: error: ") and message in lines[0]


def test_show_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    assert main(["show", "causal", "--len", "8", "--out", str(tmp_path / "x.png")]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "pip install foveate[bench]" in lines[0]
    with pytest.raises(ImportError, match=r"pip install foveate\[bench\]"):
        draw.figure_for(P.Causal(), q_len=8)


def test_python_m_foveate_bad_argument(tmp_path):
    """A real process: exit status 2, one line on stderr, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "foveate", "show", "neighborhood", "--canvas", "8", "8", "--kernel", "9", "3",
         "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("foveate show: error: kernel=(9, 3)")
    assert not (tmp_path / "x.png").exists()
