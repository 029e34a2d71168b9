"""The inverse of unit lower-triangular matrices by blocks: the UT transform's solve.

``torch.linalg.solve_triangular`` runs batches of small systems one by one on a CPU (slow for
the thousands of chunks of a long sequence); this doubles the inverted diagonal blocks,
``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``, ``log2(c)`` batched matmuls for
every chunk at once. It forms only blocks of the inverse itself (no powers of the matrix,
whose alternating sums cancel catastrophically), and autograd goes through its matmuls.
"""

from __future__ import annotations

import torch


def unit_lower_inverse(m: torch.Tensor) -> torch.Tensor:
    """``m^-1`` for ``m (..., c, c)`` unit lower-triangular (its diagonal and upper part are
    not read: taken as 1 and 0)."""
    c = m.shape[-1]
    size = 1 << max(c - 1, 0).bit_length()                               # c rounded up to a power of 2
    if size != c:  # block-diagonal with an identity: the inverse's first block is m's inverse
        m = torch.nn.functional.pad(m, (0, size - c, 0, size - c))
    batch = m.shape[:-2]
    blocks = m.new_ones(*batch, size, 1, 1)                              # the inverted diagonal blocks
    s = 1
    while s < size:
        pairs = size // (2 * s)
        grid = m.reshape(*batch, pairs, 2, s, pairs, 2, s)
        # The lower-left s x s block of each diagonal 2s x 2s block.
        lower_left = torch.diagonal(grid[..., :, 1, :, :, 0, :], dim1=-4, dim2=-2).movedim(-1, -3)
        top, bottom = blocks[..., 0::2, :, :], blocks[..., 1::2, :, :]
        corner = -(bottom @ lower_left @ top)
        blocks = torch.cat([torch.cat([top, torch.zeros_like(top)], -1), torch.cat([corner, bottom], -1)], -2)
        s *= 2
    inverse = blocks[..., 0, :, :]
    return inverse[..., :c, :c]
