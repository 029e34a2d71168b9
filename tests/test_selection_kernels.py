"""The Triton kernels of the content-selection path against their PyTorch versions: the
grid-to-lists layout builder and the fused antidiagonal score (interpreter without a GPU)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from foveate.layout import BlockLayout
from foveate.selection import SelectionGeometry, antidiagonal_mass
from foveate.selection.naive import naive_antidiagonal_mass

from kernel_spy import DEVICE, KernelSpy

_LIST_FIELDS = ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks")


def _lists(layout: BlockLayout, name: str) -> list[list[int]]:
    """Each row's list of a layout (entries past the count dropped)."""
    counts = getattr(layout, name).flatten().tolist()
    indices = getattr(layout, name.replace("num_blocks", "indices"))
    indices = indices.reshape(len(counts), -1).tolist()
    return [row[:c] for row, c in zip(indices, counts)]


@settings(deadline=None, max_examples=30)  # the first example compiles the kernel
@given(b=st.integers(1, 2), h=st.integers(1, 3), nq=st.integers(1, 9), nkv=st.integers(1, 40),
       seed=st.integers(0, 2 ** 16), transposed=st.booleans(), small=st.booleans())
def test_triton_lists_equal_torch_lists(b, h, nq, nkv, seed, transposed, small):
    """``small``: 2 lines per program, 16 positions per step (several tiles and steps)."""
    from foveate import layout_triton

    gen = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, 3, (b, h, nkv, nq) if transposed else (b, h, nq, nkv), generator=gen, dtype=torch.int8)
    if transposed:  # a strided grid is read in place
        grid = grid.transpose(-1, -2)
    dims = dict(block_q=16, block_kv=32, q_len=nq * 16 - 5, kv_len=nkv * 32 - 1)
    by_torch = BlockLayout.from_block_grid(grid, method="torch", **dims)
    config = dict(lists=3, max_chunk=16, tile=48) if small else {}
    with mock.patch.dict(layout_triton.CONFIG, config):
        by_triton = BlockLayout.from_block_grid(grid.to(DEVICE), method="triton", **dims)
    assert torch.equal(by_triton.to_dense().cpu(), grid)
    for name in _LIST_FIELDS:
        assert _lists(by_triton, name) == _lists(by_torch, name), name
    # Lists as wide as the grid: no host sync to find the longest one.
    assert by_triton.kv_indices.shape[-1] == nkv and by_triton.q_indices.shape[-1] == nq


@settings(deadline=None, max_examples=20)
@given(b=st.integers(1, 2), h=st.integers(1, 3), nq=st.integers(1, 9), nkv=st.integers(1, 40),
       seed=st.integers(0, 2 ** 16), with_states=st.booleans(), lazy=st.booleans(), small=st.booleans())
def test_lists_of_a_selection_with_its_states(b, h, nq, nkv, seed, with_states, lazy, small):
    """A bool selection whose blocks take given states (or are full): the lists of the combined
    grid, by both builders, the transposed ones built on first read when ``lazy``."""
    from foveate import layout_triton

    gen = torch.Generator().manual_seed(seed)
    selection = torch.rand(b, h, nq, nkv, generator=gen) < 0.4
    states = torch.randint(0, 3, (nkv, nq), generator=gen, dtype=torch.int8).T if with_states else None
    combined = torch.where(selection, states, 0).to(torch.int8) if with_states else selection.to(torch.int8) * 2
    dims = dict(block_q=16, block_kv=32, q_len=nq * 16, kv_len=nkv * 32)
    expected = BlockLayout.from_block_grid(combined, method="torch", **dims)
    config = dict(lists=2, max_chunk=16, tile=32) if small else {}
    for method, device in (("torch", "cpu"), ("triton", DEVICE)):
        with mock.patch.dict(layout_triton.CONFIG, config):
            layout = BlockLayout.from_block_grid(selection.to(device), method=method, lazy_transposed=lazy,
                                                 states=None if states is None else states.to(device), **dims)
            assert layout.has_transposed is not lazy
            for name in _LIST_FIELDS:
                assert _lists(layout, name) == _lists(expected, name), (method, name)
        assert layout.has_transposed
        assert torch.equal(layout.to_dense().cpu(), combined)


@pytest.mark.parametrize("grid, states, match", [
    pytest.param(torch.zeros(1, 1, 2, 3, dtype=torch.int8), torch.zeros(2, 3, dtype=torch.int8), "bool grid",
                 id="states-with-an-int8-grid"),
    pytest.param(torch.zeros(1, 1, 2, 3, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.int8), "states",
                 id="states-transposed"),
    pytest.param(torch.zeros(1, 1, 2, 3, dtype=torch.bool), torch.zeros(2, 3), "states", id="states-float"),
])
def test_from_block_grid_refuses_bad_states(grid, states, match):
    with pytest.raises(ValueError, match=match):
        BlockLayout.from_block_grid(grid, states=states, block_q=4, block_kv=4, q_len=8, kv_len=12)


def test_layout_takes_the_transposed_lists_or_a_function_for_them():
    lists = BlockLayout.from_block_grid(torch.full((1, 1, 2, 2), 2, dtype=torch.int8), block_q=4, block_kv=4,
                                        q_len=8, kv_len=8, method="torch")
    kv = dict(kv_num_blocks=lists.kv_num_blocks, kv_indices=lists.kv_indices,
              full_kv_num_blocks=lists.full_kv_num_blocks, full_kv_indices=lists.full_kv_indices)
    q = dict(q_num_blocks=lists.q_num_blocks, q_indices=lists.q_indices,
             full_q_num_blocks=lists.full_q_num_blocks, full_q_indices=lists.full_q_indices)
    dims = dict(block_q=4, block_kv=4, q_len=8, kv_len=8)
    with pytest.raises(ValueError, match="q_\\* lists"):
        BlockLayout(**dims, **kv, **{**q, "q_indices": None})
    with pytest.raises(ValueError, match="not both"):
        BlockLayout(**dims, **kv, **q, transposed=lambda: tuple(q.values()))
    calls = []
    layout = BlockLayout(**dims, **kv, transposed=lambda: calls.append(1) or tuple(q.values()))
    assert not calls and not layout.has_transposed
    assert layout.full_q_indices is q["full_q_indices"] and layout.q_num_blocks is q["q_num_blocks"]
    assert calls == [1]  # built once


def test_both_list_directions_come_from_one_launch(monkeypatch):
    from foveate import layout_triton

    spy = KernelSpy(layout_triton._grid_to_lists_kernel)
    monkeypatch.setattr(layout_triton, "_grid_to_lists_kernel", spy)
    grid = torch.randint(0, 3, (2, 3, 5, 9), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    layout = BlockLayout.from_block_grid(grid.to(DEVICE), block_q=16, block_kv=16, q_len=80, kv_len=144,
                                         method="triton")
    lines = layout_triton.CONFIG["lists"]  # per program (9 columns fit in one tile)
    assert spy.grids == [(-(-9 // lines), 2 * 3, 2)]  # (lines of the longer axis, batch x heads, direction)
    assert torch.equal(layout.to_dense().cpu(), grid)


def test_from_block_grid_method_is_checked():
    grid = torch.zeros(1, 1, 2, 2, dtype=torch.int8)
    with pytest.raises(ValueError, match="method"):
        BlockLayout.from_block_grid(grid, block_q=4, block_kv=4, q_len=8, kv_len=8, method="fast")


CASES = [  # q_len, kv_len, query_block, block, causal, stride, heads_q, heads_kv
    (256, 256, 128, 128, True, 8, 2, 1),
    (300, 200, 64, 128, True, 4, 2, 2),    # q_len > kv_len: the first query blocks see nothing
    (200, 520, 128, 256, False, 8, 4, 2),  # key blocks wider than a column tile
    (130, 260, 32, 512, True, 2, 1, 1),
    (512, 300, 128, 64, True, 8, 1, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("q_len,kv_len,query_block,block,causal,stride,hq,hkv", CASES)
def test_fused_antidiagonal_equals_chunked_and_naive(q_len, kv_len, query_block, block, causal, stride, hq, hkv,
                                                     dtype):
    gen = torch.Generator().manual_seed(q_len + kv_len)
    q = (torch.randn(1, hq, q_len, 32, generator=gen) * 2).to(dtype)
    k = torch.randn(1, hkv, kv_len, 32, generator=gen).to(dtype)
    geometry = SelectionGeometry(q_len, kv_len, query_block, block, causal, 1, 1)
    fused = antidiagonal_mass(q.to(DEVICE), k.to(DEVICE), geometry, 0.3, stride, method="triton").cpu()
    chunked = antidiagonal_mass(q.float(), k.float(), geometry, 0.3, stride, method="torch")
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(fused, chunked, atol=tol, rtol=0)
    if q_len * kv_len <= 256 * 256:
        naive = naive_antidiagonal_mass(q.float(), k.float(), geometry, 0.3, stride)
        torch.testing.assert_close(fused.double(), naive, atol=tol, rtol=0)


def test_antidiagonal_method_is_checked():
    q = torch.randn(1, 1, 64, 16)
    with pytest.raises(ValueError, match="method"):
        antidiagonal_mass(q, q, SelectionGeometry(64, 64, 32, 32, False, 0, 0), 0.25, 8, method="cuda")
