"""The per-head decays of the papers: Lightning Attention's (ALiBi slopes) and RetNet's."""

from __future__ import annotations

import torch

from ....score_mods import alibi_slopes

#: The rules :func:`default_decay` knows.
RULES = ("lightning", "retnet")


def default_decay(heads: int, rule: str = "lightning") -> torch.Tensor:
    """Per-head decays ``lambda_h``, ``h = 0 .. heads - 1``, as a float32 ``(heads,)`` tensor.

    - ``"lightning"`` (the default of :func:`foveate.linear.decayed`): Lightning Attention-2's
      (Qin et al., 2024) released code, ``lambda_h = exp(-m_h)`` with ``m_h`` ALiBi's slopes
      for ``heads`` heads (:func:`foveate.score_mods.alibi_slopes`: ``2^(-8 (h + 1) / heads)``
      for a power of two). TransNormerLLM's per-layer rescaling of the slopes is not applied:
      pass your own decays for it.
    - ``"retnet"``: RetNet's (Sun et al., 2023) ``lambda_h = 1 - 2^(-5 - h)``.
    """
    if isinstance(heads, bool) or not isinstance(heads, int):
        raise TypeError(f"heads must be an int, got {type(heads).__name__} {heads!r}")
    if heads < 1:
        raise ValueError(f"heads must be at least 1, got {heads}")
    if rule == "lightning":
        return torch.exp(-alibi_slopes(heads).to(torch.float64)).to(torch.float32)
    if rule == "retnet":
        return (1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float64))).to(torch.float32)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
