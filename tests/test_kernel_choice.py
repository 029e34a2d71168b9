"""The one ``method="auto"|"torch"|"triton"`` rule (``foveate.kernel_choice``) and its callers."""

from __future__ import annotations

import pytest
import torch

from foveate.kernel_choice import use_triton
from foveate.layout import BlockLayout
from foveate.selection import SelectionGeometry, antidiagonal_mass, mean_topk
from foveate.tiling import TiledOrder


def test_rule():
    cpu = torch.zeros(1)
    asked = []

    def supported():
        asked.append(True)
        return True

    assert use_triton("triton", cpu, supported) and not use_triton("torch", cpu, supported)
    assert not use_triton("auto", cpu, supported)  # auto: CUDA tensors only
    assert not asked, "supported() is asked only under auto, for a CUDA tensor"
    if torch.cuda.is_available():
        gpu = cpu.cuda()
        assert use_triton("auto", gpu, supported) and asked
        assert not use_triton("auto", gpu, lambda: False)
    with pytest.raises(ValueError, match="method='fast'"):
        use_triton("fast", cpu)


def test_every_caller_refuses_an_unknown_method():
    q = torch.zeros(1, 1, 16, 8)
    geometry = SelectionGeometry(16, 16, 8, 8, False, 0, 0)
    calls = {
        "from_block_grid": lambda m: BlockLayout.from_block_grid(torch.zeros(1, 1, 2, 2, dtype=torch.int8),
                                                                 block_q=8, block_kv=8, q_len=16, kv_len=16,
                                                                 method=m),
        "mean_topk": lambda m: mean_topk(q, q, geometry, 1.0, 1, method=m),
        "antidiagonal_mass": lambda m: antidiagonal_mass(q, q, geometry, 1.0, 4, method=m),
        "tile_tokens": lambda m: TiledOrder((4, 4), (2, 2)).tile_tokens(q, method=m),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="method='fast'"):
            call("fast")
        call("torch")  # the same call with a known method runs
