"""A bandwidth-bound Triton kernel for the token permutation of tiled canvases.

:meth:`foveate.tiling.TiledOrder.tile_tokens` / ``untile_tokens`` use it on CUDA tensors (and,
when asked, under the Triton interpreter). The reshape/permute copies of the torch path move
bytes at about half the rate of a plain copy; this kernel is a copy whose source rows are
gathered.

One program moves ``BLOCK_N`` consecutive *output* rows of one ``(batch, head)``, the whole
head dim (in chunks of ``BLOCK_D`` columns, masked when the head dim is not a power of two).
For each output row it computes the input row with the index arithmetic of
:meth:`~foveate.tiling.TiledOrder.coords` / ``to_raster`` (a few integer operations per row, not
per element), then loads rows and stores them. Writes are contiguous; reads are ``D``-element
row segments, and runs of ``tile[-1]`` rows (a tile row) are contiguous on both sides, so
every access is coalesced and the kernel is bound by memory bandwidth, as a clone is.

* tile (raster -> tiled): output rows are tiled positions; a padding position (coordinates
  past the canvas) has no input row and is written as zeros (its load is masked).
* untile (tiled -> raster): output rows are raster positions; each reads the tiled position of
  its coordinates, so the padding is never read (dropped).

The kernel copies bits: tensors are reinterpreted as integers of their element size, so every
dtype of 1, 2, 4 or 8 bytes (all float types, fp8 included) takes the same compiled kernel.
Inputs may have any strides; outputs are contiguous. Canvases of 1 to 3 axes are handled as
3-axis ones with leading sides of 1. A tensor without a feature axis (``(B, H, N)``, lse) is
moved as ``D = 1``.

Autograd: the permutation is linear, and the gradient of each direction is the other
direction applied to the gradient (``tile`` zero-fills padding, ``untile`` drops it, which is
exactly the adjoint), so :class:`_Permute`'s backward is itself in the other direction
(double backward works too).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from ..triton_launch import cdiv, launch

if TYPE_CHECKING:
    from .order import TiledOrder

#: Integer dtype of each element size: the kernel moves bits.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
MAX_AXES = 3
#: Bytes one program loads per column chunk (BLOCK_N rows x BLOCK_D columns): large enough to
#: keep many loads in flight per SM, small enough for several programs per SM.
PROGRAM_BYTES = 16384
MAX_BLOCK_D = 256


@triton.jit
def _permute_kernel(
    src, s_b, s_h, s_n, s_d,
    dst, o_b, o_h, o_n,
    H, n_rows, n_blocks, D,
    C0, C1, C2, G1, G2,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    TILE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_N: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    """``dst[b, h, r, :] = src[b, h, row(r), :]`` for ``BLOCK_N`` output rows ``r``.

    ``TILE``: ``r`` is a tiled position, ``row(r)`` its raster index (no row, i.e. zeros, at
    padding). Else ``r`` is a raster index and ``row(r)`` its tiled position. The canvas is
    ``(C0, C1, C2)``, the tile ``(T0, T1, T2)``, the tile grid ``(G0, G1, G2)``."""
    pid = tl.program_id(0)
    bh = pid // n_blocks
    rows = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    TILE_SIZE: tl.constexpr = T0 * T1 * T2
    if TILE:
        # TiledOrder.coords: tile index in raster order of the grid, inner index in the tile.
        tile_idx = rows // TILE_SIZE
        inner = rows % TILE_SIZE
        c0 = (tile_idx // (G1 * G2)) * T0 + inner // (T1 * T2)
        c1 = ((tile_idx // G2) % G1) * T1 + (inner // T2) % T1
        c2 = (tile_idx % G2) * T2 + inner % T2
        real = (c0 < C0) & (c1 < C1) & (c2 < C2)  # TiledOrder.to_raster
        if not EVEN_N:
            real = real & (rows < n_rows)
        src_rows = (c0 * C1 + c1) * C2 + c2
    else:
        c2 = rows % C2
        c1 = (rows // C2) % C1
        c0 = rows // (C1 * C2)
        tile_idx = ((c0 // T0) * G1 + c1 // T1) * G2 + c2 // T2
        src_rows = tile_idx * TILE_SIZE + ((c0 % T0) * T1 + c1 % T1) * T2 + c2 % T2
        real = rows < n_rows
    b = bh // H
    h = bh % H
    src_ptrs = src + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h + (src_rows.to(tl.int64) * s_n)[:, None]
    dst_ptrs = dst + b.to(tl.int64) * o_b + h.to(tl.int64) * o_h + (rows.to(tl.int64) * o_n)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        if EVEN_D:
            load_mask = real[:, None]
        else:
            load_mask = real[:, None] & (cols < D)[None, :]
        x = tl.load(src_ptrs + (cols.to(tl.int64) * s_d)[None, :], mask=load_mask, other=0)
        if EVEN_N and EVEN_D:
            tl.store(dst_ptrs + cols[None, :], x)
        elif EVEN_N:
            tl.store(dst_ptrs + cols[None, :], x, mask=(cols < D)[None, :])
        elif EVEN_D:
            tl.store(dst_ptrs + cols[None, :], x, mask=(rows < n_rows)[:, None])
        else:
            tl.store(dst_ptrs + cols[None, :], x, mask=(rows < n_rows)[:, None] & (cols < D)[None, :])


def supports(order: TiledOrder, x: torch.Tensor) -> str | None:
    """Why the kernel cannot move ``x`` for ``order`` (``None`` when it can)."""
    if order.ndim > MAX_AXES:
        return f"canvas {order.canvas} has {order.ndim} axes; the kernel handles 1 to {MAX_AXES}"
    if x.element_size() not in _BITS:
        return f"dtype {x.dtype} has {x.element_size()}-byte elements; the kernel moves 1, 2, 4 or 8"
    if x.dim() not in (3, 4):
        return f"x has shape {tuple(x.shape)}; expected (B, H, N, D) or (B, H, N)"
    return None


def launch_config(head_dim: int, element_size: int) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_D, num_warps)``: about :data:`PROGRAM_BYTES` per column chunk."""
    block_d = min(triton.next_power_of_2(max(head_dim, 1)), MAX_BLOCK_D)
    block_n = max(16, min(1024, triton.next_power_of_2(PROGRAM_BYTES // (block_d * element_size))))
    return block_n, block_d, 4


def _permute(order: TiledOrder, x: torch.Tensor, tile: bool, config=None) -> torch.Tensor:
    reason = supports(order, x)
    if reason is not None:
        raise ValueError(f"method='triton': {reason}")
    n_in, n_out = (order.num_canvas, order.num_tokens) if tile else (order.num_tokens, order.num_canvas)
    if x.shape[2] != n_in:
        name = "tile_tokens" if tile else "untile_tokens"
        raise ValueError(f"{name}: x has {x.shape[2]} tokens (shape {tuple(x.shape)}); expected {n_in} for {order}")
    squeeze = x.dim() == 3
    xs = x[..., None] if squeeze else x
    b, h, _, d = xs.shape
    out = torch.empty(b, h, n_out, d, dtype=x.dtype, device=x.device)
    if out.numel():
        bits = _BITS[x.element_size()]
        src, dst = xs.view(bits), out.view(bits)
        block_n, block_d, num_warps = config or launch_config(d, x.element_size())
        pad = MAX_AXES - order.ndim
        canvas, tile_shape, grid = (1,) * pad + order.canvas, (1,) * pad + order.tile, (1,) * pad + order.grid
        n_blocks = cdiv(n_out, block_n)
        with _on_device(x.device):
            launch(_permute_kernel, (n_blocks * b * h,),
                   (src, *src.stride(), dst, *dst.stride()[:3],
                    h, n_out, n_blocks, d, *canvas, grid[1], grid[2], *tile_shape),
                   dict(TILE=tile, BLOCK_N=block_n, BLOCK_D=block_d, EVEN_N=n_out % block_n == 0,
                        EVEN_D=d % block_d == 0), num_warps=num_warps, num_stages=3)
    return out[..., 0] if squeeze else out


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it ``device`` (a no-op context when it
    already is, or on CPU)."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


class _Permute(torch.autograd.Function):
    """One direction of the permutation (``tile``); its gradient is the other direction."""

    @staticmethod
    def forward(ctx, x, order, tile):
        ctx.order, ctx.tile = order, tile
        return _permute(order, x, tile=tile)

    @staticmethod
    def backward(ctx, grad):
        return _Permute.apply(grad, ctx.order, not ctx.tile), None, None


def _move(order: TiledOrder, x: torch.Tensor, tile: bool, config) -> torch.Tensor:
    """Either direction, through autograd when ``x`` needs a gradient (not with ``config``)."""
    if config is not None:
        return _permute(order, x, tile=tile, config=config)
    if x.requires_grad and torch.is_grad_enabled():
        return _Permute.apply(x, order, tile)
    return _permute(order, x, tile=tile)


def tile_tokens(order: TiledOrder, x: torch.Tensor, *, config=None) -> torch.Tensor:
    """``(B, H, N, D)`` (or ``(B, H, N)``) canvas tokens in raster order, any strides ->
    contiguous ``(B, H, order.num_tokens, D)`` in tiled order, zeros at padding.
    Differentiable. ``config``: ``(BLOCK_N, BLOCK_D, num_warps)`` instead of
    :func:`launch_config` (benchmarks), without autograd."""
    return _move(order, x, True, config)


def untile_tokens(order: TiledOrder, x: torch.Tensor, *, config=None) -> torch.Tensor:
    """Inverse of :func:`tile_tokens`: ``(B, H, order.num_tokens, D)`` (or ``(B, H,
    num_tokens)``) -> contiguous ``(B, H, N, D)`` in raster order, padding dropped."""
    return _move(order, x, False, config)
