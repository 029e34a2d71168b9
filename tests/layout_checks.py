"""Checks of a ``BlockLayout``: its index tensors against the contract (docs/design.md,
"BlockLayout (contract)") and, block by block, against the brute-force block classification
of ``brute.py``."""

from __future__ import annotations

import math

import pytest
import torch

import brute
from foveate.layout import BlockLayout

INDEX_FIELDS = (
    "kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
    "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices",
)


def read_lists(num: torch.Tensor, idx: torch.Tensor) -> dict[tuple[int, int, int], list[int]]:
    """``{(b, h, row): listed columns}`` read straight from a count / index tensor pair."""
    out = {}
    b_, h_, rows = num.shape
    for b in range(b_):
        for h in range(h_):
            for r in range(rows):
                out[b, h, r] = idx[b, h, r, : int(num[b, h, r])].tolist()
    return out


def check_structure(layout: BlockLayout) -> torch.Tensor:
    """Check the index tensors against the contract; return the grid they describe,
    ``int8 (B, H, nq, nkv)``, read from the kv lists without ``to_dense``."""
    nq, nkv = math.ceil(layout.q_len / layout.block_q), math.ceil(layout.kv_len / layout.block_kv)
    b_, h_ = layout.kv_num_blocks.shape[:2]
    for name in INDEX_FIELDS:
        t = getattr(layout, name)
        assert t.dtype == torch.int32, f"{name} has dtype {t.dtype}"
        assert t.shape[:2] == (b_, h_), f"{name} leading axes {tuple(t.shape[:2])} != {(b_, h_)}"
        rows = nq if name.startswith(("kv", "full_kv")) else nkv
        if name.endswith("num_blocks"):
            assert tuple(t.shape) == (b_, h_, rows), f"{name} shape {tuple(t.shape)}"
        else:
            assert t.dim() == 4 and t.shape[2] == rows, f"{name} shape {tuple(t.shape)}"
    assert (layout.num_q_blocks, layout.num_kv_blocks) == (nq, nkv)

    sets = {}
    for transposed, cols in ((False, nkv), (True, nq)):
        for kind in ("partial", "full"):
            prefix = "full_" if kind == "full" else ""
            num_name = prefix + ("q_num_blocks" if transposed else "kv_num_blocks")
            idx_name = prefix + ("q_indices" if transposed else "kv_indices")
            num, idx = getattr(layout, num_name), getattr(layout, idx_name)
            assert int(num.min()) >= 0 and int(num.max()) <= min(cols, idx.shape[-1]), (
                f"{num_name} counts outside [0, min({cols} blocks, width {idx.shape[-1]})]"
            )
            pairs = set()
            for (b, h, r), listed in read_lists(num, idx).items():
                assert listed == sorted(set(listed)), f"{idx_name}[{b}, {h}, {r}] not strictly ascending: {listed}"
                assert all(0 <= c < cols for c in listed), f"{idx_name}[{b}, {h}, {r}] out of range: {listed}"
                pairs |= {(b, h, c, r) if transposed else (b, h, r, c) for c in listed}
            sets[transposed, kind] = pairs
    assert not sets[False, "partial"] & sets[False, "full"], "a block is listed both partial and full"
    assert sets[True, "partial"] == sets[False, "partial"], "q_num_blocks/q_indices are not the transpose"
    assert sets[True, "full"] == sets[False, "full"], "full_q_num_blocks/full_q_indices are not the transpose"

    grid = torch.zeros(b_, h_, nq, nkv, dtype=torch.int8)
    for kind, value in (("partial", brute.PARTIAL), ("full", brute.FULL)):
        for b, h, r, c in sets[False, kind]:
            grid[b, h, r, c] = value
    dense = layout.to_dense()
    assert dense.dtype == torch.int8 and tuple(dense.shape) == (b_, h_, nq, nkv)
    assert torch.equal(dense, grid), "to_dense() disagrees with the index lists"
    assert layout.num_visited() == int((grid > 0).sum())
    assert layout.block_density() == pytest.approx(int((grid > 0).sum()) / (b_ * h_ * nq * nkv))
    return grid


def assert_grid(got: torch.Tensor, expected: torch.Tensor, what) -> None:
    """Equal block grids, else a message naming the first differing blocks."""
    assert got.shape == expected.shape, f"{what}: grid shape {tuple(got.shape)} != {tuple(expected.shape)}"
    diff = (got != expected).nonzero().tolist()
    if diff:
        names = {0: "empty", 1: "partial", 2: "full"}
        shown = ", ".join(
            f"(q block {i}, kv block {j}): got {names[int(got[i, j])]}, expected {names[int(expected[i, j])]}"
            for i, j in diff[:8]
        )
        pytest.fail(f"{what}: {len(diff)} blocks differ from the brute force, e.g. {shown}")


def check_layout(layout: BlockLayout, mask: torch.Tensor, block_q: int, block_kv: int, what) -> torch.Tensor:
    """The layout of ``mask`` with these blocks, block by block; counts and densities."""
    q_len, kv_len = mask.shape
    assert (layout.q_len, layout.kv_len, layout.block_q, layout.block_kv) == (q_len, kv_len, block_q, block_kv)
    assert layout.batch_heads == (1, 1)
    grid = check_structure(layout)
    expected = brute.block_grid(mask, block_q, block_kv)
    assert_grid(grid[0, 0], expected, what)
    allowed = int(mask.sum())
    assert layout.allowed_pairs() == allowed, f"{what}: allowed_pairs {layout.allowed_pairs()} != {allowed}"
    assert layout.density() == pytest.approx(allowed / (q_len * kv_len))
    # Consistency of the two densities: the allowed pairs lie in visited blocks, and fill
    # the full ones.
    areas = brute.block_areas(q_len, kv_len, block_q, block_kv)
    assert int(areas[expected == brute.FULL].sum()) <= allowed <= int(areas[expected > 0].sum())
    assert layout.block_density() == pytest.approx(float((expected > 0).float().mean()))
    return expected
