"""Kernel configs: per-GPU tables, and the launch that shrinks a config that does not fit."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from triton.runtime.errors import OutOfResources  # noqa: E402

from foveate.backends.triton import tuning  # noqa: E402
from foveate.backends.triton.tuning import KernelConfig  # noqa: E402


class _FakeKernel:
    """Raises OutOfResources while a config's tiles exceed ``limit`` elements x stages."""

    def __init__(self, limit):
        self.limit, self.tried = limit, []

    def __getitem__(self, grid):
        def run(*args, BLOCK_M, BLOCK_N, num_warps, num_stages, **constexprs):
            self.tried.append((grid, KernelConfig(BLOCK_M, BLOCK_N, num_warps, num_stages)))
            if BLOCK_M * BLOCK_N * num_stages > self.limit:
                raise OutOfResources(BLOCK_M * BLOCK_N * num_stages, self.limit, "shared memory")

        return run


def test_launch_shrinks_stages_then_the_inner_tile_and_remembers():
    kernel = _FakeKernel(limit=128 * 32)
    start = KernelConfig(128, 64, 8, 3)
    ran = tuning.launch(kernel, start, lambda c: (1024 // c.block_m,), (), {"X": 1}, inner="n")
    assert ran == KernelConfig(128, 32, 8, 1)
    assert [c for _, c in kernel.tried] == [start, KernelConfig(128, 64, 8, 2), KernelConfig(128, 64, 8, 1), ran]
    assert kernel.tried[-1][0] == (8,)  # the grid follows the config that runs
    kernel.tried.clear()
    assert tuning.launch(kernel, start, lambda c: (1,), (), {"X": 1}) == ran
    assert [c for _, c in kernel.tried] == [ran], "the fitting config is remembered"


def test_launch_gives_up_when_nothing_smaller_fits():
    kernel = _FakeKernel(limit=1)
    with pytest.raises(OutOfResources):
        tuning.launch(kernel, KernelConfig(32, 32, 4, 1), lambda c: (1,), (), {"Y": 2}, inner="m")
    assert [c for _, c in kernel.tried][-1] == KernelConfig(16, 16, 4, 1)


def test_configs_divide_the_layout_blocks_and_fit_head_dims():
    cpu = torch.device("cpu")
    for d in (8, 64, 80, 128, 256):
        cfg = tuning.forward_config(cpu, d, d, 128, 128, torch.float16)
        assert 128 % cfg.block_m == 0 and 128 % cfg.block_n == 0
        b = tuning.backward_config(cpu, d, d, 128, 128, torch.float16)
        assert 128 % b.dq.block_m == 0 and 128 % b.dkdv.block_n == 0
    with pytest.raises(ValueError, match="exceed 256"):
        tuning.forward_config(cpu, 264, 264, 128, 128, torch.float16)


def test_forward_tiles_on_hopper(monkeypatch):
    """On Hopper at D=128 every mask runs 128x128 tiles (tuned on the H200); at D=64 128x64;
    fp32 small tiles; an override of the tuning script wins."""
    monkeypatch.setattr(tuning, "_capability", lambda device: (9, 0))
    cuda = torch.device("cuda")
    assert tuning.forward_config(cuda, 128, 128, 128, 128, torch.bfloat16) == KernelConfig(128, 128, 8, 3)
    assert tuning.forward_config(cuda, 64, 64, 128, 128, torch.float16) == KernelConfig(128, 64, 4, 3)
    assert tuning.forward_config(cuda, 128, 128, 128, 128, torch.float32) == KernelConfig(64, 32, 4, 1)
    monkeypatch.setitem(tuning.OVERRIDES, ("fwd", 128), KernelConfig(64, 64, 4, 2))
    assert tuning.forward_config(cuda, 128, 128, 128, 128, torch.bfloat16) == KernelConfig(64, 64, 4, 2)
