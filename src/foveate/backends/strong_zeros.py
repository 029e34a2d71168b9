"""Products in which a masked-out weight is a *strong* zero: ``0 * nan`` and ``0 * inf`` count as 0.

Attention weights are exactly 0 on the pairs a pattern forbids, but IEEE arithmetic makes
``0 * nan = nan``: one non-finite value row would reach every query whose block (or, for a
dense evaluation, whose whole row) holds it, allowed or not. The PyTorch backends contract
their probabilities with :func:`strong_zero_einsum`, so that a non-finite input reaches exactly
the outputs whose allowed pairs carry it (docs/usage.md, "Non-finite inputs").
"""

from __future__ import annotations

import torch


def strong_zero_einsum(equation: str, weights: torch.Tensor, allowed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``torch.einsum(equation, weights, x)`` where ``weights`` is 0 wherever ``allowed`` is
    False (it may be non-finite where allowed), and those zeros stay 0 against a non-finite
    ``x``. ``allowed`` broadcasts to ``weights``; the contracted axis is shared by both.

    With every element of ``x`` finite this is one einsum (plus one check). Otherwise the
    non-finite elements of ``x`` are taken out and their effect on each output is rebuilt
    from counts over the allowed pairs: a NaN, a zero weight against an infinity, or
    infinities of both signs give NaN; infinities of one sign give that infinity (IEEE sums).
    """
    if torch.compiler.is_compiling():
        # (the check below would be a graph break: traced code keeps IEEE products, and so the
        # block granularity of the fused kernels)
        return torch.einsum(equation, weights, x)
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return torch.einsum(equation, weights, x)
    out = torch.einsum(equation, weights, torch.where(finite, x, torch.zeros_like(x)))
    dtype = out.dtype
    a = allowed.expand_as(weights)

    def reaching(where_w: torch.Tensor, where_x: torch.Tensor) -> torch.Tensor:
        """For each output element: whether an allowed pair has ``where_w`` and ``where_x``."""
        return torch.einsum(equation, (a & where_w).to(dtype), where_x.to(dtype)) > 0

    pos_inf, neg_inf = x == float("inf"), x == float("-inf")
    positive, negative, zero = weights > 0, weights < 0, weights == 0
    nan = reaching(a, torch.isnan(x)) | reaching(zero, pos_inf | neg_inf)
    up = reaching(positive, pos_inf) | reaching(negative, neg_inf)
    down = reaching(positive, neg_inf) | reaching(negative, pos_inf)
    out = torch.where(up, torch.full_like(out, float("inf")), out)
    out = torch.where(down, torch.full_like(out, float("-inf")), out)
    return torch.where(nan | (up & down), torch.full_like(out, float("nan")), out)
