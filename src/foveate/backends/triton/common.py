"""What the forward kernels (portable and Hopper) and the backward share on the host: the
layout's lists as kernel arguments, the mask's tensor operands, head-dim widths, bounds flags."""

from __future__ import annotations

import torch

from .masks import MaskSpec

LOG2E = 1.4426950408889634


def layout_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """Strides of the (B|1, H|1, nq, ...) leading axes, 0 on broadcast axes."""
    shape, stride = t.shape, t.stride()
    return (0 if shape[0] == 1 else stride[0], 0 if shape[1] == 1 else stride[1], 0 if shape[2] == 1 else stride[2])


def block_lists(layout, *, transposed: bool = False) -> tuple[tuple, tuple]:
    """The kernels' view of a layout's lists: ``(partial count, partial indices, full count,
    full indices)`` per query block (per kv block when ``transposed``: the backward's dk/dv),
    and their 12 leading-axis strides in the same order. Remembered on the layout (a call
    runs it once forward and twice backward) for as long as it holds the same tensors."""
    if transposed:
        lists = (layout.q_num_blocks, layout.q_indices, layout.full_q_num_blocks, layout.full_q_indices)
    else:
        lists = (layout.kv_num_blocks, layout.kv_indices, layout.full_kv_num_blocks, layout.full_kv_indices)
    memo = layout.__dict__.setdefault("_kernel_lists", {})
    known = memo.get(transposed)
    if known is not None and all(a is b for a, b in zip(known[0], lists)):
        return known
    known = memo[transposed] = lists, tuple(s for t in lists for s in layout_strides(t))
    return known


_NO_BITS: dict = {}


def mask_operands(layout, spec: MaskSpec, device: torch.device, *, transposed: bool = False) -> tuple:
    """The kernels' ``BITS, SLOTS`` arguments and the 3 leading strides of ``SLOTS``: the
    layout's partial bitmask (:meth:`~foveate.layout.BlockLayout.partial_bitmask`, built on
    first use and kept with the layout) and the number of each row's first partial block (of
    each transposed list entry when ``transposed``), for a spec that reads bits; the layout's
    ``token_ids`` (:func:`~.masks.mask_ids`, set by the backend) twice and their batch stride, for
    a spec that reads segment ids; else a placeholder the kernels never read."""
    if spec.uses_ids:
        ids = getattr(layout, "token_ids", None)
        if ids is None:
            raise ValueError("the mask spec reads segment ids and the layout carries none (layout.token_ids)")
        return ids, ids, (ids.stride(0) if ids.shape[0] > 1 else 0), 0, 0
    if not spec.uses_bits:
        none = _NO_BITS.get(device)
        if none is None:
            none = _NO_BITS[device] = torch.zeros(1, dtype=torch.int32, device=device)
        return none, none, 0, 0, 0
    if spec.bit_blocks != (layout.block_q, layout.block_kv):
        raise ValueError(f"the mask spec's bitmask is laid out for {spec.bit_blocks} blocks, the layout has "
                         f"{(layout.block_q, layout.block_kv)}")
    bits = layout.partial_bitmask()
    slots = bits.col_slot if transposed else bits.row_start
    return (bits.words, slots, *layout_strides(slots))


def head_block(dim: int) -> int:
    """The power-of-two register width that holds a head dim (at least 16, for tl.dot)."""
    return max(16, 1 << (dim - 1).bit_length())  # plain Python: this runs on every call


def bounds_flags(spec: MaskSpec, q_len: int, kv_len: int, block_q: int, block_kv: int) -> dict:
    """The kernels' bounds constexprs for ``q_len`` x ``kv_len`` positions: ``EVEN_M`` /
    ``EVEN_N``, every position of a ``block_q`` / ``block_kv`` block is before the end and has
    a memory row (full key blocks always have rows); ``PAD_KEYS``, partial key blocks may hold
    positions without one (canvas padding under ``raster_io``), so their loads are checked."""
    return dict(EVEN_M=q_len % block_q == 0 and not spec.padded_io, EVEN_N=kv_len % block_kv == 0,
                PAD_KEYS=spec.padded_io)


__all__ = ["LOG2E", "block_lists", "bounds_flags", "head_block", "layout_strides", "mask_operands"]
