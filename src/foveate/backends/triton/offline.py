"""Compile foveate's Triton kernels for a GPU without one: Triton lowers them to PTX on this
machine and the ``ptxas`` that Triton's package carries assembles it. What it answers at no
device time: does a kernel compile for that architecture, how many registers, does it spill
(``benchmarks/kernel_resources.py``, the CPU tests of the Hopper forward)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget

from .masks import MaskSpec


def ptxas_report(ptx: str, arch: int) -> tuple[int, int]:
    """``(registers, spill store bytes)`` from ``ptxas -v`` on ``ptx`` for ``sm_<arch>``."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        suffix = "a" if arch == 90 else ""
        text = subprocess.run([ptxas, f"-arch=sm_{arch}{suffix}", "-v", f.name, "-o", os.devnull],
                              capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores", text)
    return int(regs.group(1)) if regs else -1, int(spills.group(1)) if spills else 0


def compile_hopper_forward(spec: MaskSpec, *, head_dim: int = 128, dtype: torch.dtype = torch.bfloat16,
                           even_n: bool = True, full_runs: bool = True, layout_block: int = 128,
                           stages: int | None = None):
    """The Hopper forward (:mod:`.fwd_hopper`) compiled for sm_90 (``triton.compile``'s kernel,
    with ``asm["ptx"]``, ``asm["ttgir"]``, ``metadata.shared``), as a launch on these inputs
    would compile it."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from . import fwd_hopper as H

    block_q, q_layout = H._box(dtype, H.HALF_M.value, head_dim)
    block_kv, kv_layout = H._box(dtype, H.BLOCK_N.value, head_dim)
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    q_desc = f"tensordesc<{name}{block_q},{q_layout!r}>"
    kv_desc = f"tensordesc<{name}{block_kv},{kv_layout!r}>"
    types = dict(q_desc=q_desc, k_desc=kv_desc, v_desc=kv_desc, o_desc=q_desc, LSE="*fp32", KV_NUM="*i32",
                 KV_IDX="*i32", FULL_NUM="*i32", FULL_IDX="*i32", BITS="*i32", BIT_ROWS="*i32", qk_scale="fp32")
    constexprs = dict(HEAD_DIM=head_dim, HEAD_DIM_V=head_dim, LAYOUT_BLOCK_Q=layout_block,
                      LAYOUT_BLOCK_KV=layout_block, EVEN_N=even_n, MASK=H._mask_constants(spec), FULL_RUNS=full_runs,
                      STAGES=H.STAGES if stages is None else stages)
    signature = {p: types.get(p, "constexpr" if p in constexprs else "i32") for p in H._fwd_kernel.arg_names}
    src = GluonASTSource(H._fwd_kernel, signature, constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def hopper_forward_report(spec_ints, **options) -> dict:
    """What :func:`compile_hopper_forward` of ``MaskSpec.from_ints(spec_ints)`` with ``options``
    gives, as plain data: ``shared`` bytes, ``registers``, ``spilled`` bytes, and whether the
    PTX has warpgroup matmuls (``wgmma``), partitions with their own register budgets
    (``setmaxnreg``) and TMA loads (``tma``)."""
    compiled = compile_hopper_forward(MaskSpec.from_ints(spec_ints), **options)
    ptx = compiled.asm["ptx"]
    registers, spilled = ptxas_report(ptx, 90)
    return dict(shared=compiled.metadata.shared, registers=registers, spilled=spilled,
                wgmma="wgmma.mma_async" in ptx, setmaxnreg="setmaxnreg" in ptx, tma="cp.async.bulk.tensor" in ptx)


def _main() -> None:
    """``python -m foveate.backends.triton.offline '<json list of [spec ints, options]>'``: one
    :func:`hopper_forward_report` per item, as a JSON list on stdout. For callers whose process
    cannot compile (Triton's interpreter turns every ``triton.jit`` function into Python)."""
    import json
    import sys

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    reports = []
    for spec_ints, options in json.loads(sys.argv[1]):
        if "dtype" in options:
            options["dtype"] = dtypes[options["dtype"]]
        reports.append(hopper_forward_report(spec_ints, **options))
    print(json.dumps(reports))


if __name__ == "__main__":
    _main()


__all__ = ["compile_hopper_forward", "hopper_forward_report", "ptxas_report"]
