"""``P.Blocks``: static block-sparse patterns, per (batch, head), against the block grid
expanded to tokens."""

from __future__ import annotations

import pytest
import torch

import foveate
from foveate import patterns as P

from naive import naive_attention


def expand(grid: torch.Tensor, block_q: int, block_kv: int, q_len: int, kv_len: int) -> torch.Tensor:
    """The token mask of a block grid ``(B|1, H|1, nq, nkv)``, by plain repetition."""
    return grid.repeat_interleave(block_q, 2).repeat_interleave(block_kv, 3)[:, :, :q_len, :kv_len]


def random_grid(shape, density=0.4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen) < density


def test_mask_mod_is_the_expanded_grid():
    grid = random_grid((2, 3, 4, 5))
    pattern = P.Blocks(grid, block_q=8, block_kv=4)
    q_len, kv_len = 29, 18
    b = torch.arange(2).view(-1, 1, 1, 1)
    h = torch.arange(3).view(1, -1, 1, 1)
    got = pattern.mask_mod(q_len, kv_len)(b, h, torch.arange(q_len).view(1, 1, -1, 1),
                                          torch.arange(kv_len).view(1, 1, 1, -1))
    assert torch.equal(got, expand(grid, 8, 4, q_len, kv_len))


@pytest.mark.parametrize("lead", [(1, 1), (2, 1), (1, 3), (2, 3)], ids=["bcast", "per-batch", "per-head", "both"])
def test_layout_lists_exactly_the_selected_blocks(lead):
    grid = random_grid((*lead, 4, 6), seed=1)
    layout = P.Blocks(grid, 16, 8).build(60, 41, block_q=16, block_kv=8)
    assert layout.batch_heads == lead
    assert torch.equal(layout.to_dense(), grid.to(torch.int8) * 2)  # every selected block is full
    assert int(layout.kv_num_blocks.sum()) == 0
    assert layout.allowed_pairs() == int(expand(grid, 16, 8, 60, 41).sum())
    assert torch.equal(layout.full_q_num_blocks.sum(-1), layout.full_kv_num_blocks.sum(-1))


@pytest.mark.parametrize("lead", [(1, 1), (2, 4), (1, 4)], ids=["bcast", "per-batch-head", "per-head"])
def test_reference_attention_with_gqa(rng, lead):
    grid = random_grid((*lead, 3, 4), density=0.5, seed=2)  # some rows select nothing
    q = torch.randn(2, 4, 40, 16, generator=rng, dtype=torch.float64)
    k = torch.randn(2, 2, 60, 16, generator=rng, dtype=torch.float64)
    v = torch.randn(2, 2, 60, 8, generator=rng, dtype=torch.float64)
    out, lse = foveate.attention(q, k, v, P.Blocks(grid, 16, 16), return_lse=True)
    ref_out, ref_lse = naive_attention(q, k, v, expand(grid, 16, 16, 40, 60), 16 ** -0.5)
    assert torch.allclose(out, ref_out, atol=1e-12)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    fin = torch.isfinite(ref_lse)
    assert torch.allclose(lse[fin].double(), ref_lse[fin], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_triton_forward_per_head_blocks(rng, dtype):
    grid = random_grid((2, 2, 3, 3), density=0.5, seed=3)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(2, 2, 300, 32, generator=rng).to(dtype) for _ in range(3))
    out, lse = foveate.attention(q.to(device), k.to(device), v.to(device), P.Blocks(grid), backend="triton",
                                 return_lse=True)
    out, lse = out.cpu(), lse.cpu()
    ref_out, ref_lse = naive_attention(q.double(), k.double(), v.double(), expand(grid, 128, 128, 300, 300),
                                       32 ** -0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert (out.double() - ref_out).abs().max().item() < tol
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))


@pytest.mark.flex
def test_flex_forward_per_head_blocks(rng):
    grid = random_grid((1, 2, 2, 3), density=0.6, seed=4)
    q = torch.randn(1, 2, 256, 16, generator=rng)
    k, v = (torch.randn(1, 2, 300, 16, generator=rng) for _ in range(2))
    out = foveate.attention(q, k, v, P.Blocks(grid), backend="flex")
    ref_out, _ = naive_attention(q.double(), k.double(), v.double(), expand(grid, 128, 128, 256, 300), 0.25)
    assert (out.double() - ref_out).abs().max().item() < 1e-5


def test_equality_hash_and_copy():
    grid = random_grid((4, 4))
    a, b = P.Blocks(grid), P.Blocks(grid.clone())
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != P.Blocks(grid, block_q=64) and a != P.Blocks(~grid)
    before = a.mask.clone()
    grid[0, 0] = ~grid[0, 0]  # the pattern kept its own copy
    assert torch.equal(a.mask[0, 0], before[0, 0])
    assert repr(a).startswith("Blocks(shape=(1, 1, 4, 4), block=(128, 128)")


@pytest.mark.parametrize("make,error,match", [
    (lambda: P.Blocks(torch.ones(2, 2)), TypeError, "dtype torch.bool"),
    (lambda: P.Blocks([[True]]), TypeError, "mask must be a bool torch.Tensor"),
    (lambda: P.Blocks(torch.ones(2, 2, 2, dtype=torch.bool)), ValueError, "shape"),
    (lambda: P.Blocks(torch.ones(2, 2, dtype=torch.bool), block_q=0), ValueError, "block_q"),
    (lambda: P.Blocks(torch.ones(2, 2, dtype=torch.bool), 64, 64) | P.Blocks(torch.ones(1, 1, dtype=torch.bool)),
     ValueError, "cannot compose block masks of different block sizes"),
], ids=["not-bool", "not-tensor", "3-dims", "block-0", "composition"])
def test_bad_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_use(rng):
    pattern = P.Blocks(torch.ones(2, 3, 2, 2, dtype=torch.bool), 16, 16)
    q = torch.randn(2, 3, 32, 16, generator=rng)
    with pytest.raises(ValueError, match="q_len=40"):
        foveate.attention(torch.randn(2, 3, 40, 16), q, q, pattern)
    with pytest.raises(ValueError, match=r"leading axes \(2, 3\).*\(1, 3\)"):
        foveate.attention(q[:1], q[:1], q[:1], pattern)
    with pytest.raises(ValueError, match="runs 128x128 blocks, the pattern has 16x16"):
        foveate.attention(q, q, q, pattern, backend="flex")
    with pytest.raises(ValueError, match="cannot be built with blocks"):
        pattern.build(32, 32, block_q=128, block_kv=128)
    with pytest.raises(ValueError, match="tile"):
        foveate.attention(q, q, q, pattern, tile=(4, 4))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("combine", ["|", "&"])
def test_blocks_compose_with_other_patterns(backend, combine):
    """``Blocks | Causal`` and ``Blocks & SlidingWindow`` run (the composition's partial blocks
    masked by its bitmask on the kernels) and equal masked attention."""
    if backend not in foveate.backends.available():
        pytest.skip(f"{backend} is not available")
    grid = torch.tensor([[True, False, True], [False, False, True], [True, True, False]])
    blocks = P.Blocks(grid)
    pattern = blocks | P.Causal() if combine == "|" else blocks & P.SlidingWindow(40, 10)
    assert pattern.fixed_blocks == (128, 128)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 300, 16, generator=gen).to(device) for _ in range(3))
    qi, ki = torch.arange(300)[:, None], torch.arange(300)[None, :]
    in_blocks = grid[qi // 128, ki // 128]
    mask = in_blocks | (ki <= qi) if combine == "|" else in_blocks & (ki >= qi - 40) & (ki <= qi + 10)
    want, _ = naive_attention(q.double(), k.double(), v.double(), mask.to(device))
    got = foveate.attention(q, k, v, pattern, backend=backend)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)
