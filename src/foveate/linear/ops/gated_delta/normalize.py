"""The L2 normalisation Gated DeltaNet applies to its queries and keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Floor of the norm: a zero vector stays zero.
EPS = 1e-6


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / max(||x||, 1e-6)`` over the last axis."""
    return F.normalize(x, p=2.0, dim=-1, eps=EPS)
