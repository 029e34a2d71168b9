"""Kernel tiles, warps and pipeline stages for the Triton kernels, per GPU generation and head dim.

The layout's blocks (128x128) are what the pattern is compiled to; the kernels may walk each
block in smaller tiles (``block_m`` query rows per program, ``block_n`` keys per step), which
is where register pressure and occupancy are decided. The tables below were chosen with
``benchmarks/tune_triton.py`` (timings on the GPU named in each table) and offline
``ptxas -v`` reports (no register spills); other GPUs get the conservative defaults.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from triton.runtime.errors import OutOfResources

from ...triton_launch import launch as fast_launch


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def _head_bucket(head_dim: int, head_dim_v: int) -> int:
    d = max(head_dim, head_dim_v)
    for bucket in (64, 128, 256):
        if d <= bucket:
            return bucket
    raise ValueError(f"head dims {head_dim}/{head_dim_v} exceed 256")


# (compute capability major, head-dim bucket) -> forward config. Hopper, D=128: tuned on the
# H200 (2026-12-01, benchmarks/tune_triton.py --kinds fwd): 128x128 tiles, 8 warps, 3 stages on
# dense 8K, causal 8K, 2-D k13 and 3-D k7x15x15 (1.19 / 0.68 / 0.38 / 5.20 ms against 1.25 /
# 0.72 / 0.40 / 5.47 for 128x64). Before the masks' per-element work was cut (masks.allowed_block)
# 3-axis canvas masks needed the smaller tiles' registers. D=256: the largest tiles whose
# buffers fit in shared memory (64x64 at 2 stages asks for 288 KiB).
_FORWARD = {
    (9, 64): KernelConfig(128, 64, 4, 3),
    (9, 128): KernelConfig(128, 128, 8, 3),
    (9, 256): KernelConfig(64, 32, 4, 2),
}
_FORWARD_DEFAULT = {64: KernelConfig(64, 64, 4, 2), 128: KernelConfig(64, 64, 4, 2), 256: KernelConfig(64, 32, 4, 2)}


#: Overrides for this process, set by the tuning script: ``{("fwd" | "bwd", bucket): config}``.
OVERRIDES: dict = {}


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        return (0, 0)
    return torch.cuda.get_device_capability(device)


def _fit(cfg: KernelConfig, block_q: int, block_kv: int) -> KernelConfig:
    """``cfg`` with tiles shrunk to divide the layout's blocks."""
    bm, bn = cfg.block_m, cfg.block_n
    while block_q % bm:
        bm //= 2
    while block_kv % bn:
        bn //= 2
    return KernelConfig(max(bm, 16), max(bn, 16), cfg.num_warps, cfg.num_stages)


def forward_config(device: torch.device, head_dim: int, head_dim_v: int, block_q: int, block_kv: int,
                   dtype: torch.dtype) -> KernelConfig:
    """The forward kernel's config for these inputs and layout blocks."""
    bucket = _head_bucket(head_dim, head_dim_v)
    if device.type != "cuda":  # the interpreter: the layout's blocks, fewest programs
        return KernelConfig(block_q, block_kv, 4, 1)
    major = _capability(device)[0]
    cfg = OVERRIDES.get(("fwd", bucket)) or _FORWARD.get((major, bucket), _FORWARD_DEFAULT[bucket])
    if dtype == torch.float32:  # twice the bytes per element (and IEEE dots): small tiles, one stage
        cfg = KernelConfig(64, 32, 4, 1)
    return _fit(cfg, block_q, block_kv)


@dataclass(frozen=True)
class BackwardConfig:
    """``dq``: ``block_m`` query rows per program, ``block_n`` keys per step; ``dkdv``:
    ``block_n`` key rows per program, ``block_m`` queries per step."""

    dq: KernelConfig
    dkdv: KernelConfig


# Hopper, D=128: tuned on the H100 (2026-11-23): dq 128x64 and dk/dv 64x128, 8 warps, 2 stages
# (3 stages do not fit in shared memory).
_BACKWARD = {
    (9, 64): BackwardConfig(KernelConfig(128, 64, 8, 2), KernelConfig(64, 128, 8, 2)),
    (9, 128): BackwardConfig(KernelConfig(128, 64, 8, 2), KernelConfig(64, 128, 8, 2)),
    (9, 256): BackwardConfig(KernelConfig(64, 32, 8, 1), KernelConfig(32, 64, 8, 1)),
}
_BACKWARD_DEFAULT = {
    64: BackwardConfig(KernelConfig(64, 32, 4, 2), KernelConfig(32, 64, 4, 2)),
    128: BackwardConfig(KernelConfig(64, 32, 4, 2), KernelConfig(32, 64, 4, 2)),
    256: BackwardConfig(KernelConfig(32, 32, 4, 1), KernelConfig(32, 32, 4, 1)),
}


def backward_config(device: torch.device, head_dim: int, head_dim_v: int, block_q: int, block_kv: int,
                    dtype: torch.dtype) -> BackwardConfig:
    """The backward kernels' configs for these inputs and layout blocks."""
    bucket = _head_bucket(head_dim, head_dim_v)
    if device.type != "cuda":  # the interpreter: few, large programs
        return BackwardConfig(KernelConfig(block_q, 64, 4, 1), KernelConfig(64, block_kv, 4, 1))
    major = _capability(device)[0]
    cfg = OVERRIDES.get(("bwd", bucket)) or _BACKWARD.get((major, bucket), _BACKWARD_DEFAULT[bucket])
    if dtype == torch.float32:
        cfg = BackwardConfig(KernelConfig(64, 32, 4, 1), KernelConfig(16, 64, 4, 1))
    return BackwardConfig(_fit(cfg.dq, block_q, block_kv), _fit(cfg.dkdv, block_q, block_kv))


def smaller(cfg: KernelConfig, inner: str) -> KernelConfig | None:
    """The next config to try when ``cfg`` does not fit the GPU's shared memory: fewer
    pipeline stages, then a halved ``inner`` tile (``"n"``: keys per step, ``"m"``: queries per
    step), then the other one; ``None`` when nothing smaller is left."""
    if cfg.num_stages > 1:
        return KernelConfig(cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages - 1)
    order = ("block_n", "block_m") if inner == "n" else ("block_m", "block_n")
    for field in order:
        if getattr(cfg, field) > 16:
            values = {"block_m": cfg.block_m, "block_n": cfg.block_n, field: getattr(cfg, field) // 2}
            return KernelConfig(values["block_m"], values["block_n"], cfg.num_warps, cfg.num_stages)
    return None


#: Configs that fit, found by :func:`launch`: ``(kernel id, constexprs, cfg) -> cfg``.
_FITTING: dict = {}


def launch(kernel, cfg: KernelConfig, grid, args, constexprs: dict, *, inner: str = "n") -> KernelConfig:
    """Launch ``kernel[grid(cfg)](*args, BLOCK_M=.., BLOCK_N=.., **constexprs)``; when the
    config needs more shared memory than the GPU has, retry with :func:`smaller` configs (the
    one that fits is remembered). Returns the config that ran."""
    # (each call site builds its constexprs in one order: no need to sort them)
    key = (id(kernel), tuple(constexprs.items()), cfg)
    run = _FITTING.get(key, cfg)
    while True:
        try:
            fast_launch(kernel, grid(run), args, dict(constexprs, BLOCK_M=run.block_m, BLOCK_N=run.block_n),
                        num_warps=run.num_warps, num_stages=run.num_stages)
        except OutOfResources:
            nxt = smaller(run, inner)
            if nxt is None:
                raise
            run = nxt
            continue
        _FITTING[key] = run
        return run
