"""Shared memory, registers and spills of foveate's Triton attention kernels, compiled offline.

Compiles the forward, dq and dk/dv kernels for a GPU architecture (default sm_90, Hopper)
without a GPU: Triton lowers them to PTX here and the ``ptxas`` that Triton's package
carries assembles it, with ``-v`` for the resource report. Launch-time specialisation is
mimicked (head-dim strides of 1 become constants, other integer arguments are taken as
multiples of 16, pointers as 16-byte aligned), so the report is the one a launch on the GPU
would compile: a config whose shared memory exceeds the GPU's (227 KB on Hopper) is one that
``tuning.launch`` would shrink. This answers "does it fit, does it spill" at no device time.

Usage::

    python benchmarks/kernel_resources.py --kernel dkdv --configs 64,128,8,2 64,128,8,3 \\
        [--mask dense|causal|2d|3d] [--head-dim 128] [--arch 90] [--dump DIR]

``--configs``: ``BLOCK_M,BLOCK_N,num_warps,num_stages`` (for dk/dv ``BLOCK_M`` is the queries
per step and ``BLOCK_N`` the key rows per program). ``--dump DIR`` keeps the TTGIR and PTX of
each config (to read what the pipeliner allocated).
"""

from __future__ import annotations

import argparse
import os
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from foveate import patterns as P
from foveate.backends.triton import bwd, fwd
from foveate.backends.triton.common import head_block
from foveate.backends.triton.masks import mask_spec
from foveate.backends.triton.offline import ptxas_report
from foveate.simulator import choose_tile
from foveate.tiling import Tiled

BF16, F32, I32 = "bf16", "fp32", "i32"
#: Pointer arguments and their element types, per kernel.
KERNELS = {
    "fwd": (fwd._fwd_kernel, dict(Q=BF16, K=BF16, V=BF16, O=BF16, LSE=F32, KV_NUM=I32, KV_IDX=I32, FULL_NUM=I32,
                                  FULL_IDX=I32, BITS=I32, BIT_ROWS=I32)),
    "dq": (bwd._dq_kernel, dict(Q=BF16, K=BF16, V=BF16, DO=BF16, DQ=BF16, LSE=F32, DELTA=F32, KV_NUM=I32,
                                KV_IDX=I32, FULL_NUM=I32, FULL_IDX=I32, BITS=I32, BIT_ROWS=I32)),
    "dkdv": (bwd._dkdv_kernel, dict(Q=BF16, K=BF16, V=BF16, DO=BF16, DK=BF16, DV=BF16, LSE=F32, DELTA=F32,
                                    Q_NUM=I32, Q_IDX=I32, FULL_NUM=I32, FULL_IDX=I32, BITS=I32, BIT_COLS=I32)),
}
FLOATS = ("qk_scale", "scale")
#: Integer arguments that are not multiples of 16 in general (head counts, the lists' strides).
_NOT_ALIGNED = re.compile(r"^(H|H_KV|GROUP|(f?num|f?idx|bits)_s[a-z]+)$")


def _masks():
    nb2, nb3 = P.Neighborhood((128, 128), 13), P.Neighborhood((16, 64, 64), (7, 15, 15))
    video = P.Neighborhood((16, 64, 64), (7, 15, 15)) & P.Neighborhood((16, 64, 64), (16, 64, 64),
                                                                      causal=(True, False, False))
    return {
        "dense": (P.Dense(), 8192),
        "causal": (P.Causal(), 8192),
        "2d": (Tiled(nb2, choose_tile(nb2, block_q=128, block_kv=128)), 128 * 128),
        "3d": (Tiled(nb3, choose_tile(nb3, block_q=128, block_kv=128)), 16 * 64 * 64),
        "sinks": ((P.SlidingWindow(2047) | P.Sinks(128)) & P.Causal(), 8192),
        "3d-composed": (Tiled(video, (2, 8, 8)), 16 * 64 * 64),
        "bitmask": (P.Mask(_prefix_lm), 8192),
    }


def _prefix_lm(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) | (kv_idx < 1024)


def compile_kernel(kernel: str, config, mask: str, head_dim: int, arch: int):
    """The compiled kernel (``triton.compile``) of ``kernel`` at ``config`` for ``sm_<arch>``."""
    jit, pointers = KERNELS[kernel]
    bm, bn, warps, stages = config
    pattern, n = _masks()[mask]
    constexprs = dict(HEAD_DIM=head_dim, HEAD_DIM_V=head_dim, BLOCK_D=head_block(head_dim),
                      BLOCK_DV=head_block(head_dim), LAYOUT_BLOCK_Q=128, LAYOUT_BLOCK_KV=128,
                      BLOCK_M=bm, BLOCK_N=bn, EVEN_M=True, EVEN_N=True, PAD_KEYS=False, IEEE=False,
                      MASK=mask_spec(pattern, n, n).constexpr)
    if "FULL_RUNS" in jit.arg_names:  # (the list walk of the full blocks, as before the range walk)
        constexprs["FULL_RUNS"] = False
    signature, attrs = {}, {}
    for i, name in enumerate(jit.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.startswith("stride") and name.endswith("d"):  # contiguous head dim: specialised to 1
            signature[name], constexprs[name] = "constexpr", 1
        elif name in pointers:
            signature[name] = "*" + pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if not _NOT_ALIGNED.match(name):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(jit, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps, num_stages=stages))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=sorted(KERNELS), required=True)
    parser.add_argument("--configs", nargs="+", required=True, help="BLOCK_M,BLOCK_N,num_warps,num_stages")
    parser.add_argument("--mask", choices=sorted(_masks()), default="dense")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for Hopper")
    parser.add_argument("--dump", help="folder for the TTGIR and PTX of each config")
    args = parser.parse_args()
    print(f"{args.kernel}, mask {args.mask}, D={args.head_dim}, bf16, sm_{args.arch} (compiled offline)")
    for text in args.configs:
        config = tuple(int(x) for x in text.split(","))
        if len(config) != 4:
            parser.error(f"--configs {text!r}: expected BLOCK_M,BLOCK_N,num_warps,num_stages")
        compiled = compile_kernel(args.kernel, config, args.mask, args.head_dim, args.arch)
        regs, spills = ptxas_report(compiled.asm["ptx"], args.arch)
        print(f"  {text:14s} shared {compiled.metadata.shared / 1024:6.1f} KB, {regs} registers, "
              f"{spills} bytes spilled", flush=True)
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            stem = os.path.join(args.dump, f"{args.kernel}_{text.replace(',', '_')}")
            for ext in ("ttgir", "ptx"):
                with open(f"{stem}.{ext}", "w") as f:
                    f.write(compiled.asm[ext])


if __name__ == "__main__":
    main()
