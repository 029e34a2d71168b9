"""What a backend is, and the description of one attention call that it is asked to run."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..layout import BlockLayout
from ..patterns import Pattern


@dataclass(frozen=True)
class Problem:
    """One attention call, as backends see it (token axes already flat).

    ``q`` is ``(batch, heads_q, q_len, head_dim)``, ``k`` ``(batch, heads_kv, kv_len, head_dim)``,
    ``v`` ``(batch, heads_kv, kv_len, head_dim_v)``.
    """

    batch: int
    heads_q: int
    heads_kv: int
    q_len: int
    kv_len: int
    head_dim: int
    head_dim_v: int
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool
    return_lse: bool
    pattern: Pattern
    #: A :class:`~foveate.score_mods.ScoreMod` applied to the scaled scores before the mask, or
    #: ``None`` (low-rank biases arrive already folded into the features: ``head_dim`` counts them).
    score_mod: object = None


class Backend:
    """A way to run attention. Subclasses set ``name`` and implement the three methods."""

    name: str = "?"
    #: Whether the backend walks a block layout (and so gains from token tiling).
    uses_layout: bool = True
    #: Tokens per block of the layouts it walks (a tile must hold exactly this many).
    block_size: int = 128

    def available(self) -> bool:
        """Whether this backend can run on this machine at all."""
        raise NotImplementedError

    def unavailable_reason(self) -> str:
        """Why :meth:`available` is ``False`` here, and what would change it."""
        return "not available on this machine"

    def supports(self, problem: Problem) -> str | None:
        """``None`` if this backend can run ``problem``, else the reason it cannot."""
        raise NotImplementedError

    def block_reason(self, problem: Problem) -> str | None:
        """For a layout backend: why it cannot run a pattern whose block size is fixed (e.g.
        ``Blocks``) at another size than its own; ``None`` when the sizes agree."""
        return problem.pattern.block_size_reason(self.block_size, self.block_size)

    def layout(self, problem: Problem, device: torch.device) -> BlockLayout:
        """The problem's layout at this backend's block size (memoised: :func:`cached_layout`)."""
        return cached_layout(problem.pattern, problem.q_len, problem.kv_len, block_q=self.block_size,
                             block_kv=self.block_size, device=device)

    def auto_reason(self, problem: Problem) -> str | None:
        """A reason for ``backend="auto"`` to pass over this backend although it supports the
        problem (it can still be named explicitly); ``None`` by default."""
        return None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, problem: Problem, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``out`` ``(B, Hq, Nq, Dv)`` in the input dtype and, when
        ``problem.return_lse``, ``lse`` ``(B, Hq, Nq)`` float32 (else ``None``)."""
        raise NotImplementedError

    def forward_tiled(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, problem: Problem, scale: float,
        tile: tuple[int, ...],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward` of ``problem`` (a canvas pattern, tensors in raster order) run in
        the tiled order of ``tile``; results in raster order. By default the tokens are
        permuted into tiled order, run, and permuted back; a backend that can address raster
        rows from tiled positions itself overrides this."""
        tiled_problem, order = tiled(problem, tile)
        out, lse = self.forward(order.tile_tokens(q), order.tile_keys(k), order.tile_keys(v), tiled_problem, scale)
        return order.untile_tokens(out), (order.untile_tokens(lse) if lse is not None else None)

    def __repr__(self) -> str:
        return f"<foveate backend {self.name!r}>"


def score_mod_reason(problem: Problem) -> str | None:
    """Why a backend without score modifications cannot run ``problem`` (``None``: it has none)."""
    if problem.score_mod is None:
        return None
    return (f"score_mod={problem.score_mod!r}: this backend takes no score modification (the reference and flex "
            "backends take every one, triton Softcap, ALiBi, 1-D DistanceDecay and DenseBias, all LowRankBias)")


class PyTorchBackend(Backend):
    """A backend of plain PyTorch operations (``torch``, ``reference``): it runs on any device,
    for every floating dtype (computing in float32, float64 kept)."""

    DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

    def available(self) -> bool:
        return True

    def supports(self, problem: Problem) -> str | None:
        if problem.dtype not in self.DTYPES:
            return f"dtype {problem.dtype} is not one of {self.DTYPES}"
        return None


def tiled(problem: Problem, tile: tuple[int, ...]):
    """``(problem in the tiled order of tile, that TiledOrder)``: the pattern becomes
    :class:`~foveate.tiling.Tiled` and the lengths those of the padded, tiled canvas."""
    from ..patterns.tiled import Tiled

    pattern = Tiled(problem.pattern, tile)
    q_len, kv_len = pattern.default_lengths()
    score_mod = problem.score_mod
    if score_mod is not None:  # (it takes raster indices: the tiled positions mapped back)
        from ..score_mods.base import Reordered

        score_mod = Reordered(score_mod, pattern.order, problem.pattern.extra_kv)
    return (dataclasses.replace(problem, pattern=pattern, q_len=q_len, kv_len=kv_len, score_mod=score_mod),
            pattern.order)


_LAYOUT_CACHE: "OrderedDict[tuple, BlockLayout]" = OrderedDict()
_LAYOUT_CACHE_SIZE = 64


def cached_layout(
    pattern: Pattern, q_len: int, kv_len: int, *, block_q: int, block_kv: int,
    device: torch.device, tile: tuple[int, ...] | None = None,
) -> BlockLayout:
    """``pattern.build(...)``, memoised for static patterns (patterns are hashable), so that
    repeated calls (every layer, every step) do not rebuild the layout."""
    if pattern.content_dependent:
        raise ValueError(f"{pattern!r} depends on the inputs: build it with q and k")
    if not pattern.cacheable:
        return pattern.build(q_len, kv_len, block_q=block_q, block_kv=block_kv, device=device, tile=tile)
    key = (pattern, q_len, kv_len, block_q, block_kv, str(device), tile)
    layout = _LAYOUT_CACHE.get(key)
    if layout is None:
        layout = pattern.build(q_len, kv_len, block_q=block_q, block_kv=block_kv, device=device, tile=tile)
        layout.find_full_runs()  # (once per cached layout: the kernels may then skip the lists)
        layout.find_row_blocks()  # (and the backward choose its token order)
        _LAYOUT_CACHE[key] = layout
        if len(_LAYOUT_CACHE) > _LAYOUT_CACHE_SIZE:
            _LAYOUT_CACHE.popitem(last=False)
    else:
        _LAYOUT_CACHE.move_to_end(key)
    return layout
