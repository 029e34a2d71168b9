"""``foveate show`` / ``foveate simulate`` for the content-selected patterns (topk, topp, moba,
xattention), and the drawings of a selection (``foveate.draw.figure_for_selection``).

What a figure shows is read back from the arrays handed to matplotlib (each panel's image) and
compared with the selection computed here from the same inputs, and with definitions written
here: the candidate and forced blocks by loops over positions (``SelectionGeometry``'s
docstring), the token mask expanded from the block grid by loops, block states and counts
from that mask (``brute.block_grid``). The synthetic inputs plant known key blocks; a working
top-k selection is exactly the forced and the planted blocks.
"""

from __future__ import annotations

import itertools
import json
import sys

import brute
import matplotlib.image
import pytest
import torch

from foveate import draw
from foveate import patterns as P
from foveate.cli import main
from foveate.cli.selection_inputs import free_blocks, synthetic_inputs
from foveate.draw import CHOSEN, FORCED, NOT_CANDIDATE, NOT_SELECTED
from foveate.layout import EMPTY, FULL

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 50  # small files, quick tests; panels still show up to 150 cells a side unpooled


# -- definitions ----------------------------------------------------------------------------------


def brute_candidates(pattern, q_len: int, kv_len: int) -> torch.Tensor:
    """``(nq, nkv)``: every key block, or (causal) those with a key at or before the last
    query's position (bottom-right aligned)."""
    qb, b, offset = pattern.q_block, pattern.block, kv_len - q_len
    nq, nkv = -(-q_len // qb), -(-kv_len // b)
    out = torch.zeros(nq, nkv, dtype=torch.bool)
    for i in range(nq):
        last = min((i + 1) * qb, q_len) - 1 + offset
        for j in range(nkv):
            out[i, j] = not pattern.causal or j * b <= last
    return out


def brute_forced(pattern, q_len: int, kv_len: int) -> torch.Tensor:
    """``(nq, nkv)``: the sink blocks and, for some position ``p`` of the query block, the block
    of ``p`` and the ``local_blocks - 1`` before it (and after it when not causal); within the
    candidates."""
    qb, b, offset = pattern.q_block, pattern.block, kv_len - q_len
    nq, nkv = -(-q_len // qb), -(-kv_len // b)
    out = torch.zeros(nq, nkv, dtype=torch.bool)
    for i in range(nq):
        for j in range(nkv):
            local = any(0 <= p // b - j < pattern.local_blocks
                        or (not pattern.causal and 0 <= j - p // b < pattern.local_blocks)
                        for p in range(i * qb + offset, min((i + 1) * qb, q_len) + offset))
            out[i, j] = j < pattern.sink_blocks or local
    return out & brute_candidates(pattern, q_len, kv_len)


def brute_mask(selected: torch.Tensor, pattern, q_len: int, kv_len: int) -> torch.Tensor:
    """``(q_len, kv_len)`` token mask of one head's block selection ``(nq, nkv)``, by loops."""
    causal = brute.causal_mask(q_len, kv_len) if pattern.causal else brute.dense_mask(q_len, kv_len)
    out = torch.zeros(q_len, kv_len, dtype=torch.bool)
    for i in range(q_len):
        for j in range(kv_len):
            out[i, j] = bool(causal[i, j]) and bool(selected[i // pattern.q_block, j // pattern.block])
    return out


def panel(fig, name: str):
    """The image array of the panel labelled ``name`` (e.g. ``"blocks, batch 0, head 2"``)."""
    axes = [ax for ax in fig.get_axes() if ax.get_label() == name]
    assert len(axes) == 1, f"no single panel {name!r} in {[ax.get_label() for ax in fig.get_axes()]}"
    return torch.from_numpy(axes[0].images[0].get_array().data.copy())


def panel_names(fig) -> list[str]:
    return [ax.get_label() for ax in fig.get_axes() if ax.get_label().startswith(("blocks", "mask"))]


@pytest.fixture
def figures(monkeypatch):
    """The figures that ``foveate show`` draws (``figure_for_selection`` spied on)."""
    drawn = []
    real = draw.figure_for_selection

    def spy(*args, **kwargs):
        drawn.append(real(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(draw, "figure_for_selection", spy)
    return drawn


def check_panels(fig, selected: torch.Tensor, pattern, q_len: int, kv_len: int, batch: int, heads) -> None:
    """Every block panel is the selection of its head (forced and chosen apart, the
    non-candidates apart); every mask panel is the expanded token mask."""
    cand, forced = brute_candidates(pattern, q_len, kv_len), brute_forced(pattern, q_len, kv_len)
    assert panel_names(fig)[: len(heads)] == [f"blocks, batch {batch}, head {h}" for h in heads]
    for h in heads:
        sel = selected[batch, h]
        cells = panel(fig, f"blocks, batch {batch}, head {h}").long()
        expected = torch.where(sel, torch.where(forced, FORCED, CHOSEN), torch.where(cand, NOT_SELECTED, NOT_CANDIDATE))
        assert torch.equal(cells, expected), f"head {h}"
        title = titled(fig, f"blocks, batch {batch}, head {h}")
        n, total = int(sel.sum()), int(cand.sum())
        of = "the causal" if pattern.causal else "all"
        assert title.startswith(f"head {h}: {n / total:.1%} of {of} blocks\n{n} of {total} blocks: "
                                f"{int((sel & forced).sum())} forced, {int((sel & ~forced).sum())} chosen")
        if max(q_len, kv_len) <= 150:
            mask = panel(fig, f"mask, batch {batch}, head {h}").bool()
            expected_mask = brute_mask(sel, pattern, q_len, kv_len)
            assert torch.equal(mask, expected_mask), f"head {h}"
            counterpart = brute.causal_mask(q_len, kv_len) if pattern.causal else brute.dense_mask(q_len, kv_len)
            assert titled(fig, f"mask, batch {batch}, head {h}").startswith(
                f"mask, head {h}: {int(expected_mask.sum())} of {int(counterpart.sum())} pairs\n")


def titled(fig, name: str) -> str:
    return next(ax.get_title() for ax in fig.get_axes() if ax.get_label() == name)


def run_show(tmp_path, capsys, *args: str):
    out = tmp_path / "out.png"
    assert main(["show", *args, "--out", str(out), "--dpi", str(DPI)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and min(image.shape[:2]) >= 4 * DPI
    return image


# -- foveate show on synthetic inputs -----------------------------------------------------------

SHOW_CASES = {
    # name: (arguments, the pattern they mean, q_len, kv_len, heads, kv_heads, heads drawn)
    "topk-mean": (["topk", "--k", "4", "--block", "16", "--len", "128"],
                  P.BlockTopK(4, block=16), 128, 128, 4, 4, [0, 1, 2, 3]),
    "topk-antidiagonal-causal-gqa-kv-longer": (
        ["topk", "--k", "3", "--block", "16", "--score", "antidiagonal", "--stride", "4", "--causal", "1",
         "--len", "100", "--kv-len", "150", "--heads", "6", "--kv-heads", "2", "--head", "5", "1", "--seed", "3"],
        P.BlockTopK(3, block=16, score="antidiagonal", stride=4, causal=True), 100, 150, 6, 2, [5, 1]),
    "topk-query-block-sink2-local2": (
        ["topk", "--k", "6", "--block", "16", "--query-block", "8", "--sink-blocks", "2", "--local-blocks", "2",
         "--causal", "1", "--len", "96", "--heads", "2"],
        P.BlockTopK(6, block=16, query_block=8, sink_blocks=2, local_blocks=2, causal=True), 96, 96, 2, 2, [0, 1]),
    "topp-antidiagonal": (["topp", "--mass", "0.9", "--block", "16", "--len", "112", "--heads", "1"],
                          P.BlockTopP(0.9, block=16), 112, 112, 1, 1, [0]),
    "moba": (["moba", "--block", "32", "--topk", "3", "--query-block", "8", "--len", "120", "--head", "2"],
             P.MoBA(block=32, topk=3, query_block=8), 120, 120, 4, 4, [2]),
    "xattention": (["xattention", "--block", "16", "--stride", "4", "--len", "128", "--head", "0", "3"],
                   P.XAttention(block=16, stride=4), 128, 128, 4, 4, [0, 3]),
}


@pytest.mark.parametrize("case", list(SHOW_CASES))
def test_show_synthetic_draws_the_selection_of_the_planted_blocks(tmp_path, capsys, figures, case):
    args, pattern, q_len, kv_len, heads, kv_heads, drawn = SHOW_CASES[case]
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
    run_show(tmp_path, capsys, *args)
    (fig,) = figures
    q, k, planted = synthetic_inputs(pattern, q_len=q_len, kv_len=kv_len, heads=heads, kv_heads=kv_heads,
                                     dim=64, seed=seed)
    selected = pattern.select(q, k).selected
    # The planted structure is found: exactly the forced and the planted blocks.
    assert torch.equal(selected, brute_forced(pattern, q_len, kv_len) | planted)
    check_panels(fig, selected, pattern, q_len, kv_len, 0, drawn)
    text = "\n".join([fig._suptitle.get_text()] + [ax.get_title() for ax in fig.get_axes()])
    assert repr(pattern) in text and "synthetic inputs (seed" in text
    assert ("of the causal blocks" if pattern.causal else "of all blocks") in text


def test_show_default_heads_are_the_first_four_and_rings_mark_the_planted_blocks(tmp_path, capsys, figures):
    pattern = P.BlockTopK(2, block=16, sink_blocks=0, local_blocks=0)
    run_show(tmp_path, capsys, "topk", "--k", "2", "--block", "16", "--sink-blocks", "0", "--local-blocks", "0",
             "--len", "64", "--heads", "6", "--planted", "1", "--seed", "7")
    (fig,) = figures
    assert panel_names(fig) == [f"{kind}, batch 0, head {h}" for kind in ("blocks", "mask") for h in range(4)]
    _, _, planted = synthetic_inputs(pattern, q_len=64, kv_len=64, heads=6, planted=1, seed=7)
    assert planted.sum((2, 3)).tolist() == [[4] * 6]  # one planted block per query block
    for h in range(4):
        ax = next(a for a in fig.get_axes() if a.get_label() == f"blocks, batch 0, head {h}")
        (rings,) = ax.collections
        centres = {(int(x), int(y)) for x, y in rings.get_offsets().tolist()}
        assert centres == {(j, i) for i, j in torch.nonzero(planted[0, h]).tolist()}
        assert "planted 4, 4 of them selected" in ax.get_title()
    # Heads plant (and so select) different blocks.
    assert len({tuple(planted[0, h].flatten().tolist()) for h in range(6)}) > 1


def test_show_long_sequence_has_no_mask_panel_and_pools_blocks(tmp_path, capsys, figures):
    run_show(tmp_path, capsys, "topk", "--k", "3", "--block", "16", "--causal", "1", "--len", "5000",
             "--heads", "1", "--dim", "16")
    (fig,) = figures
    assert panel_names(fig) == ["blocks, batch 0, head 0"]
    ax = fig.get_axes()[0]
    assert "downsampled: 3x3 blocks per cell" in ax.get_title() and "of the causal pairs" in ax.get_title()
    assert max(ax.images[0].get_array().shape) <= 150


@pytest.mark.parametrize("kw,q_len,kv_len,heads,kv_heads", [
    ({"k": 4, "block": 16}, 96, 96, 3, 3),
    ({"k": 3, "block": 16, "causal": True, "score": "antidiagonal", "stride": 8}, 100, 150, 4, 2),
    ({"k": 5, "block": 16, "query_block": 8, "causal": True, "sink_blocks": 2, "local_blocks": 2}, 90, 120, 2, 1),
    ({"k": 3, "block": 8, "query_block": 16, "sink_blocks": 0, "local_blocks": 0}, 100, 70, 2, 2),
    ({"k": 2, "block": 16, "causal": True, "local_blocks": 2}, 80, 80, 2, 2),  # forced fill most rows
])
def test_planted_inputs_yield_the_planted_blocks(kw, q_len, kv_len, heads, kv_heads):
    pattern = P.BlockTopK(**kw)
    q, k, planted = synthetic_inputs(pattern, q_len=q_len, kv_len=kv_len, heads=heads, kv_heads=kv_heads, dim=32)
    assert q.shape == (1, heads, q_len, 32) and k.shape == (1, kv_heads, kv_len, 32)
    forced, free = brute_forced(pattern, q_len, kv_len), free_blocks(pattern, q_len, kv_len)
    assert not (planted & ~free).any()
    # k minus the forced blocks per query block, or every free block where fewer are free.
    want = torch.minimum((pattern.k - forced.sum(-1)).clamp_min(0), free.sum(-1))
    assert torch.equal(planted.sum(-1), want.expand(1, heads, -1))
    assert torch.equal(pattern.select(q, k).selected, forced | planted)


@pytest.mark.parametrize("causal", [False, True])
def test_planted_inputs_top_p_keeps_the_planted_blocks(causal):
    """With the antidiagonal score (XAttention's rule; the mean score of 16-token blocks is
    too noisy to split the mass evenly between two planted blocks)."""
    pattern = P.BlockTopP(0.9, block=16, score="antidiagonal", stride=4, causal=causal)
    q, k, planted = synthetic_inputs(pattern, q_len=128, kv_len=160, heads=2, dim=32, seed=1)
    free = free_blocks(pattern, 128, 160)
    assert torch.equal(planted.sum(-1), free.sum(-1).clamp(max=2).expand(1, 2, -1))
    assert torch.equal(pattern.select(q, k).selected, brute_forced(pattern, 128, 160) | planted)


def test_synthetic_inputs_are_deterministic_per_seed():
    pattern = P.BlockTopK(3, block=16)
    a = synthetic_inputs(pattern, q_len=64, kv_len=64, seed=5)
    b = synthetic_inputs(pattern, q_len=64, kv_len=64, seed=5)
    c = synthetic_inputs(pattern, q_len=64, kv_len=64, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


# -- --inputs FILE.pt ------------------------------------------------------------------------------


def save_inputs(tmp_path, *, batch=2, heads_q=4, heads_kv=2, q_len=80, kv_len=96, dim=16, seed=0, **extra):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads_q, q_len, dim, generator=gen)
    k = torch.randn(batch, heads_kv, kv_len, dim, generator=gen)
    path = tmp_path / "qk.pt"
    torch.save({"q": q, "k": k, "v": torch.zeros(1), **extra}, path)
    return path, q, k


def test_show_inputs_file_round_trip(tmp_path, capsys, figures):
    path, q, k = save_inputs(tmp_path)
    pattern = P.BlockTopK(3, block=16, causal=True, score="antidiagonal", stride=4)
    run_show(tmp_path, capsys, "topk", "--k", "3", "--block", "16", "--causal", "1", "--score", "antidiagonal",
             "--stride", "4", "--inputs", str(path), "--batch", "1", "--head", "3", "0")
    (fig,) = figures
    selected = pattern.select(q, k).selected
    check_panels(fig, selected, pattern, 80, 96, 1, [3, 0])
    assert not any(ax.collections for ax in fig.get_axes())  # nothing planted, no rings
    assert "inputs qk.pt: q (2, 4, 80, 16), k (2, 2, 96, 16), float32" in fig._suptitle.get_text()


def test_inputs_file_scale_is_used(tmp_path, capsys, figures):
    path, q, k = save_inputs(tmp_path, scale=3.0)
    run_show(tmp_path, capsys, "topp", "--mass", "0.5", "--block", "16", "--score", "mean", "--inputs", str(path))
    pattern = P.BlockTopP(0.5, block=16, score="mean")
    expected = pattern.select(q, k, scale=3.0).selected
    assert not torch.equal(expected, pattern.select(q, k).selected)  # the scale matters here
    check_panels(figures[0], expected, pattern, 80, 96, 0, [0, 1, 2, 3])


def test_figure_for_draws_a_selection_and_refuses_a_content_pattern():
    pattern = P.BlockTopK(2, block=8, causal=True)
    q, k, _ = synthetic_inputs(pattern, q_len=40, kv_len=40, heads=2, dim=16)
    selection = pattern.select(q, k)
    fig = draw.figure_for(selection, dpi=DPI)
    check_panels(fig, selection.selected, pattern, 40, 40, 0, [0, 1])
    assert fig._suptitle.get_text().startswith(repr(pattern))
    with pytest.raises(ValueError, match=r"depends on the inputs: draw its selection"):
        draw.figure_for(pattern, q_len=40)
    with pytest.raises(ValueError, match="do not apply to a selection"):
        draw.figure_for(selection, query=3)
    for bad, match in (({"heads": [2]}, "heads=\\[2\\]: the selection has 2 query heads"),
                       ({"batch": 1}, "batch=1: the selection has batch size 1"),
                       ({"heads": [0, 0]}, "at most 4 distinct heads")):
        with pytest.raises(ValueError, match=match):
            draw.figure_for_selection(selection, **bad)


def test_selection_without_a_source_has_no_forced_blocks():
    selected = torch.zeros(1, 1, 3, 4, dtype=torch.bool)
    selected[0, 0, 1, 2] = selected[0, 0, 2, 0] = True
    selection = P.SelectedBlocks(selected, q_len=24, kv_len=32, query_block=8, block=8, causal=True)
    cells, pool = draw.selection_cells(selection)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 2, 0], [2, 1, 1, 1]])  # causal, keys 8 ahead
    assert pool == (1, 1) and torch.equal(cells.long(), expected)


# -- foveate simulate ------------------------------------------------------------------------------


def expected_record(selected, pattern, q_len, kv_len, block_q, block_kv, pairs) -> dict:
    """The simulator's counts by definition: block states and areas of the token masks of the
    (batch, head) ``pairs``, against the dense or causal mask."""
    total = dict.fromkeys(("blocks_full", "blocks_partial", "pairs_useful", "pairs_computed"), 0)
    areas = brute.block_areas(q_len, kv_len, block_q, block_kv)
    for b, h in pairs:
        mask = brute_mask(selected[b, h], pattern, q_len, kv_len)
        grid = brute.block_grid(mask, block_q, block_kv)
        total["blocks_full"] += int((grid == FULL).sum())
        total["blocks_partial"] += int(((grid != FULL) & (grid != EMPTY)).sum())
        total["pairs_useful"] += int(mask.sum())
        total["pairs_computed"] += int(areas[grid != EMPTY].sum())
    counterpart = brute.causal_mask(q_len, kv_len) if pattern.causal else brute.dense_mask(q_len, kv_len)
    c_blocks = len(pairs) * int((brute.block_grid(counterpart, block_q, block_kv) != EMPTY).sum())
    visited = total["blocks_full"] + total["blocks_partial"]
    return {
        "q_len": q_len, "kv_len": kv_len, "block_q": block_q, "block_kv": block_kv, "heads_counted": len(pairs),
        "blocks_total": len(pairs) * areas.numel(), **total, "blocks_visited": visited,
        "speedup_bound": len(pairs) * areas.numel() / visited,
        "counterpart": "causal" if pattern.causal else "dense",
        "counterpart_blocks": c_blocks, "counterpart_pairs": len(pairs) * int(counterpart.sum()),
        "speedup_bound_vs_counterpart": c_blocks / visited,
        "density": total["pairs_useful"] / (len(pairs) * q_len * kv_len),
    }


def check_record(got: dict, expected: dict) -> None:
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name


def test_simulate_synthetic_counts_every_head(capsys):
    pattern = P.BlockTopK(3, block=32, causal=True)
    args = ["topk", "--k", "3", "--block", "32", "--causal", "1", "--len", "96", "--kv-len", "112", "--heads", "3",
            "--block-q", "16", "--block-kv", "8", "--json"]
    assert main(["simulate", *args]) == 0
    got = json.loads(capsys.readouterr().out)
    q, k, _ = synthetic_inputs(pattern, q_len=96, kv_len=112, heads=3)
    selected = pattern.select(q, k).selected
    check_record(got, expected_record(selected, pattern, 96, 112, 16, 8, [(0, h) for h in range(3)]))
    assert got["pattern"] == repr(pattern) and got["inputs"].startswith("synthetic inputs (seed 0)")


def test_simulate_inputs_file_some_heads_default_blocks(tmp_path, capsys):
    path, q, k = save_inputs(tmp_path, q_len=64, kv_len=64)
    pattern = P.MoBA(block=32, topk=2, query_block=16)
    assert main(["simulate", "moba", "--block", "32", "--topk", "2", "--query-block", "16", "--inputs", str(path),
                 "--batch", "1", "--head", "2", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    got = dict(line.split(None, 1) for line in lines)
    assert got["block_q"] == "16" and got["block_kv"] == "32"  # powers of two up to 128 dividing the blocks
    selected = pattern.select(q, k).selected
    expected = expected_record(selected, pattern, 64, 64, 16, 32, [(1, 2), (1, 3)])
    for name, value in expected.items():
        assert got[name] == (f"{value:.4g}" if isinstance(value, float) else str(value)), name


# -- bad arguments ---------------------------------------------------------------------------------

ARGPARSE_ERRORS = {
    "missing --k": (["show", "topk", "--block", "16"], "required: --k"),
    "missing --mass": (["simulate", "topp"], "required: --mass"),
    "bad --score": (["show", "topk", "--k", "2", "--score", "max"], "argument --score: invalid choice: 'max'"),
    "bad --causal": (["show", "xattention", "--causal", "2"], "argument --causal: invalid choice: 2"),
    "zero --len": (["show", "topk", "--k", "2", "--len", "0"], "argument --len: must be >= 1, got 0"),
    "negative --planted": (["show", "topp", "--mass", "0.5", "--planted", "-1"], "argument --planted: must be >= 0"),
    "--tile on a selection": (["show", "topk", "--k", "2", "--tile", "4x4"], "unrecognized arguments: --tile"),
    "--query on a selection (no abbreviation of --query-block)": (
        ["show", "moba", "--query", "3"], "unrecognized arguments: --query"),
    "simulate --out": (["simulate", "xattention", "--out", "x.png"], "unrecognized arguments: --out"),
}


@pytest.mark.parametrize("case", list(ARGPARSE_ERRORS))
def test_argparse_errors_exit_2(capsys, case):
    args, message = ARGPARSE_ERRORS[case]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1]


def write(tmp_path, name: str, obj) -> str:
    path = tmp_path / name
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        torch.save(obj, path)
    return str(path)


QK = {"q": torch.randn(1, 2, 32, 8), "k": torch.randn(1, 2, 32, 8)}

VALUE_ERRORS = {
    # name: (arguments after the pattern's, message); {dir} is a folder with input files
    "k zero": (["topk", "--k", "0"], "k must be >= 1, got 0"),
    "mass above 1": (["topp", "--mass", "1.5"], "mass must be in (0, 1], got 1.5"),
    "moba topk zero": (["moba", "--topk", "0"], "--topk must be >= 1, got 0"),
    "xattention threshold zero": (["xattention", "--threshold", "0"], "--threshold must be in (0, 1], got 0.0"),
    "stride not dividing": (["topp", "--mass", "0.5", "--block", "20", "--stride", "8"],
                            "stride=8 must divide query_block=20 and block=20"),
    "negative sink": (["topk", "--k", "2", "--sink-blocks", "-1"], "sink_blocks must be >= 0, got -1"),
    "kv heads not dividing": (["topk", "--k", "2", "--block", "16", "--len", "32", "--heads", "4", "--kv-heads", "3"],
                              "--kv-heads 3 must divide --heads 4"),
    "synthetic inputs too large": (["topk", "--k", "2", "--len", "1000000", "--heads", "64"],
                                   "synthetic q or k of 4096000000 elements, more than 268435456"),
    "head out of range": (["topk", "--k", "2", "--block", "16", "--len", "32", "--head", "4"],
                          "--head 4: the inputs have 4 query heads (0 to 3)"),
    "batch out of range": (["topk", "--k", "2", "--block", "16", "--len", "32", "--batch", "1"],
                           "--batch 1: the inputs have batch size 1 (0 to 0)"),
    "repeated head": (["topk", "--k", "2", "--block", "16", "--len", "32", "--head", "1", "1"],
                      "--head 1 1: each head at most once"),
    "no such inputs": (["topk", "--k", "2", "--inputs", "{dir}/none.pt"], "--inputs {dir}/none.pt: no such file"),
    "inputs not torch": (["topk", "--k", "2", "--inputs", "{dir}/junk.pt"], "--inputs {dir}/junk.pt: torch.load cannot read it"),
    "inputs not a dict": (["topk", "--k", "2", "--inputs", "{dir}/list.pt"], "expected a dict with tensors \"q\""),
    "inputs without k": (["topk", "--k", "2", "--inputs", "{dir}/q.pt"], "'k' missing or not a tensor (keys: ['q'])"),
    "inputs of mismatched shapes": (["topk", "--k", "2", "--block", "8", "--inputs", "{dir}/bad.pt"],
                                    "--inputs {dir}/bad.pt: k of shape (1, 2, 32, 4) does not fit q"),
    "inputs bad scale": (["topk", "--k", "2", "--inputs", "{dir}/scale.pt"], "\"scale\" must be a positive float"),
    "synthetic option with inputs": (["topk", "--k", "2", "--inputs", "{dir}/qk.pt", "--heads", "2"],
                                     "--heads: only for synthetic inputs, not with --inputs"),
}


def input_files(tmp_path) -> None:
    write(tmp_path, "junk.pt", b"not a torch file")
    write(tmp_path, "list.pt", [QK["q"], QK["k"]])
    write(tmp_path, "q.pt", {"q": QK["q"]})
    write(tmp_path, "bad.pt", {"q": QK["q"], "k": torch.randn(1, 2, 32, 4)})
    write(tmp_path, "scale.pt", {**QK, "scale": -1.0})
    write(tmp_path, "qk.pt", QK)


@pytest.mark.parametrize("command", ["show", "simulate"])
@pytest.mark.parametrize("case", list(VALUE_ERRORS))
def test_bad_values_exit_2_with_one_line(tmp_path, capsys, monkeypatch, command, case):
    input_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    args, message = VALUE_ERRORS[case]
    args = [a.replace("{dir}", str(tmp_path)) for a in args]
    before = set(tmp_path.iterdir())
    assert main([command, *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"foveate {command}: error: "), captured.err
    assert message.replace("{dir}", str(tmp_path)) in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert set(tmp_path.iterdir()) == before  # nothing written


def test_show_only_errors(tmp_path, capsys):
    for args, message in (
        (["topk", "--k", "2", "--head", "0", "1", "2", "3", "4"], "--head: at most 4 heads side by side, got 5"),
        (["topk", "--k", "2", "--out", "/nonexistent-foveate/x.png"], "--out /nonexistent-foveate/x.png: folder"),
    ):
        assert main(["show", *args]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and message in lines[0]


def test_simulate_block_sizes_must_divide_the_selection(capsys):
    assert main(["simulate", "topk", "--k", "2", "--block", "64", "--block-kv", "48", "--len", "64"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("foveate simulate: error: --block-q 64 --block-kv 48: BlockTopK(2, block=64) runs 64x48")


def test_show_selection_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    out = tmp_path / "x.png"
    assert main(["show", "topk", "--k", "2", "--block", "16", "--len", "32", "--out", str(out)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "pip install foveate[bench]" in lines[0] and not out.exists()


# -- the MoBA drawing: layout, and a selection with nothing to choose (#32 item 6) ----------------


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """The pairs of texts (or a text and a panel) of different owners that overlap as drawn by
    the figure's last ``savefig``: the suptitle, the legend, and per panel its box, title, axis
    labels and tick labels (those of one panel are placed by matplotlib around it)."""
    renderer = fig.canvas.get_renderer()
    boxes = [("suptitle", fig._suptitle.get_window_extent(renderer))]
    boxes += [("legend", legend.get_window_extent(renderer)) for legend in fig.legends]
    for ax in fig.get_axes():
        parts = [("box", ax.get_window_extent(renderer)), ("x axis", ax.xaxis.get_tightbbox(renderer)),
                 ("y axis", ax.yaxis.get_tightbbox(renderer))]
        parts += [("title", ax.title.get_window_extent(renderer))] if ax.get_title() else []
        boxes += [(f"{ax.get_label()}: {part}", box) for part, box in parts if box is not None]
    owner = lambda name: name.split(":")[0]  # noqa: E731
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
            if owner(a) != owner(b) and box_a.overlaps(box_b)]


@pytest.mark.parametrize("args", [
    ["--block", "64", "--topk", "3", "--query-block", "16", "--len", "8192", "--heads", "4"],  # one row
    ["--block", "32", "--topk", "3", "--query-block", "8", "--len", "120", "--heads", "4"],  # blocks over masks
], ids=["blocks-only", "blocks-and-masks"])
def test_show_moba_title_legend_and_panels_do_not_overlap(tmp_path, capsys, figures, args):
    run_show(tmp_path, capsys, "moba", *args, "--dim", "16")
    (fig,) = figures
    assert len(panel_names(fig)) in (4, 8)
    assert overlapping_texts(fig) == []


@pytest.mark.parametrize("args,hint", [
    # MoBA's defaults: 4096-key blocks, 12 kept; 2048 keys are not even one block.
    (["moba", "--len", "2048"], "2048 keys make 1 key block of 4096, not more than the k=12 kept per query block, "
                                "so every block is kept (causal attention); a selection needs more than 49152 keys"),
    (["topk", "--k", "8", "--block", "16", "--len", "128", "--causal", "0"],
     "128 keys make 8 key blocks of 16, not more than the k=8 kept per query block, so every block is kept "
     "(dense attention); a selection needs more than 128 keys"),
], ids=["moba-shorter-than-a-block", "topk-k-covers-all"])
def test_show_a_selection_with_nothing_to_choose_says_so(tmp_path, capsys, figures, args, hint):
    out = tmp_path / "out.png"
    assert main(["show", *args, "--heads", "1", "--dim", "16", "--out", str(out), "--dpi", str(DPI)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and out.read_bytes().startswith(PNG_SIGNATURE)
    (line,) = captured.err.splitlines()
    assert line.startswith("foveate show: note: nothing to select: ") and hint in line
    (fig,) = figures
    title = " ".join(fig._suptitle.get_text().split())  # the note is wrapped to the figure's width
    assert "NOTE: nothing to select: " + hint in title
    assert overlapping_texts(fig) == []


def test_show_a_selection_with_blocks_to_choose_has_no_note(tmp_path, capsys, figures):
    out = tmp_path / "out.png"
    assert main(["show", "moba", "--block", "32", "--topk", "3", "--query-block", "8", "--len", "128", "--heads", "1",
                 "--dim", "16", "--out", str(out), "--dpi", str(DPI)]) == 0  # 4 key blocks, 3 kept
    assert capsys.readouterr().err == ""
    (fig,) = figures
    assert "NOTE" not in fig._suptitle.get_text() and draw.selection_hint(P.MoBA(block=32, topk=3).select(
        torch.randn(1, 1, 128, 16), torch.randn(1, 1, 128, 16))) is None
