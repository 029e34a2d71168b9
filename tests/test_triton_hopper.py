"""The Hopper forward (``backends/triton/fwd_hopper.py``, Gluon) on a machine without a GPU.

Gluon kernels do not run in Triton's interpreter, so here the kernel is compiled for sm_90
(Triton lowers it to PTX on this machine, the ``ptxas`` of Triton's package assembles it)
for every kind of mask it takes: a change that breaks its compilation, its warp
specialisation or its register budget fails here. Also checked: which inputs it takes
(:func:`hopper_reason`) and how ``attention_forward`` chooses it. Its results are checked on
the GPU against the float32 reference and the portable kernel (``tests/test_gpu.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from foveate import patterns as P
from foveate.backends.base import cached_layout
from foveate.backends.triton import fwd as fwd_module
from foveate.backends.triton.masks import mask_spec
from foveate.tiling import Tiled

fwd_hopper = pytest.importorskip("foveate.backends.triton.fwd_hopper")

CPU = torch.device("cpu")
HOPPER = (9, 0)


COMPILED = {  # id: (pattern, length, options)
    "dense": (P.Dense(), 4096, dict()),
    "causal-ragged": (P.Causal(), 1000, dict(even_n=False)),
    "sliding-d64-fp16": (P.SlidingWindow(300, 200), 4096, dict(head_dim=64, dtype="float16")),
    "1d-strided": (P.Neighborhood((4096,), 1025, stride=128), 4096, dict()),
    "2d-raster-lists": (P.Neighborhood((64, 64), 13), 4096, dict(full_runs=False)),
    "3d-dilated-causal": (P.Neighborhood((16, 32, 32), (5, 7, 7), dilation=(1, 2, 1), causal=(True, False, False)),
                          16 * 32 * 32, dict(full_runs=False)),
    "layout-256": (P.SlidingWindow(700, 300), 4096, dict(layout_block=256)),
    "composed-streaming": ((P.SlidingWindow(300) | P.Sinks(16)) & P.Causal(), 4096, dict()),
    "documents-ids": (P.Documents([1000, 1, 2000, 1095], inner=P.SlidingWindow(300)), 4096, dict()),
    "segments-table": (P.Segments([0] * 96 + [1] * 2000 + [2] * 2000, [["full", "none", "none"], ["causal", "causal", "none"],
                                                                       ["full", "none", "causal"]]), 4096, dict()),
    "bitmask-ragged": (P.Mask(lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) | (kv_idx < 100)), 1000,
                       dict(even_n=False)),
}


@pytest.fixture(scope="module")
def reports():
    """The compile reports of every ``COMPILED`` kernel, from one child process without
    ``TRITON_INTERPRET`` (under it, the masks' ``triton.jit`` functions are plain Python)."""
    items = [[mask_spec(pattern, n, n).to_ints(), options] for pattern, n, options in COMPILED.values()]
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "foveate.backends.triton.offline", json.dumps(items)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(zip(COMPILED, json.loads(done.stdout)))


@pytest.mark.parametrize("case", list(COMPILED))
def test_compiles_for_hopper_warp_specialized_within_its_registers(reports, case):
    report = reports[case]
    assert report["wgmma"], "no asynchronous warpgroup matmuls"
    assert report["setmaxnreg"], "no partitions with their own register budgets: not warp-specialized"
    assert report["tma"], "no TMA loads"
    assert report["shared"] <= 227 * 1024
    # 240 registers per consumer thread is all there is; the kernel spills at most a few words
    # (4-32 bytes), a register budget that does not fit spills hundreds.
    assert report["spilled"] <= 64, f"{report['spilled']} bytes spilled"


def _inputs(n=1024, d=128, dtype=torch.bfloat16, heads=2):
    q, k, v = (torch.randn(1, heads, n, d, dtype=dtype) for _ in range(3))
    layout = cached_layout(P.Causal(), n, n, block_q=128, block_kv=128, device=CPU)
    return q, k, v, layout, mask_spec(P.Causal(), n, n)


def test_hopper_reason_takes_its_inputs():
    assert fwd_hopper.hopper_reason(*_inputs(), capability=HOPPER) is None
    assert fwd_hopper.hopper_reason(*_inputs(d=64, dtype=torch.float16), capability=HOPPER) is None
    q, k, v, layout, spec = _inputs()
    bnhd = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]  # (B, N, H, D) memory
    assert fwd_hopper.hopper_reason(*bnhd, layout, spec, capability=HOPPER) is None


@pytest.mark.parametrize("change,words", [
    (dict(capability=(8, 0)), "Hopper"),
    (dict(capability=None), "not a CUDA tensor"),
    (dict(dtype=torch.float32), "dtype"),
    (dict(d=96), "head dims"),
    (dict(v_dim=64), "head dims"),
    (dict(raster_io=True), "raster"),
    (dict(block=256, layout_block=64), "layout blocks"),
    (dict(padded_rows=True), "strides"),
])
def test_hopper_reason_names_what_it_cannot_take(change, words):
    d = change.get("d", 128)
    q, k, v, layout, spec = _inputs(d=d, dtype=change.get("dtype", torch.bfloat16))
    if "v_dim" in change:
        v = torch.randn(1, 2, 1024, change["v_dim"], dtype=q.dtype)
    if change.get("raster_io"):
        spec = mask_spec(Tiled(P.Neighborhood((32, 32), 7), (8, 16)), 1024, 1024, raster_io=True)
    if "layout_block" in change:
        layout = cached_layout(P.Causal(), 1024, 1024, block_q=64, block_kv=64, device=CPU)
    if change.get("padded_rows"):  # rows of 136 bytes: not a multiple of 16
        q = torch.randn(1, 2, 1024, d + 4, dtype=q.dtype)[..., :d]
    before = [t.clone() for t in (q, k, v)]
    why = fwd_hopper.hopper_reason(q, k, v, layout, spec, capability=change.get("capability", HOPPER))
    assert why is not None and words in why
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v)))


def test_attention_forward_kernel_argument():
    q, k, v, layout, spec = _inputs()
    with pytest.raises(ValueError, match="kernel"):
        fwd_module.attention_forward(q, k, v, layout, spec, 0.1, kernel="gluon")
    with pytest.raises(ValueError, match="not a CUDA tensor"):
        fwd_module.attention_forward(q, k, v, layout, spec, 0.1, kernel="hopper")
    with pytest.raises(ValueError, match="fixed"):
        fwd_module.attention_forward(q, k, v, layout, spec, 0.1, kernel="hopper", block_m=64)
