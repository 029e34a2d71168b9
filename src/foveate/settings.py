"""Settings of the library's choices that users may change: one object, :data:`policy`.

>>> import foveate
>>> foveate.policy.bitmask_budget                      # bytes
1073741824
>>> with foveate.policy.override(bitmask_budget=0):   # for a scope (tests, benchmarks)
...     pass
>>> foveate.policy.bitmask_budget = 2 << 30           # for the process
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass


MEAN_TOPK_METHODS = ("auto", "torch", "triton")


@dataclass
class Policy:
    """The library's settings.

    Attributes:
        bitmask_budget: the most memory (bytes) the Triton backend gives the packed bitmask of
            one layout's partial blocks (patterns without a kernel mask description:
            :mod:`foveate.bitmask`). Past it, ``backend="auto"`` runs another backend and says
            why (:func:`foveate.backends.reasons`), ``backend="triton"`` raises ``ValueError``.
        force_bitmask: mask every pattern's partial blocks in the Triton kernels from the
            bitmask, as if it had no kernel mask description (to test and measure that path on
            patterns that have one; same results, more memory).
        compile_bitmask: evaluate a layout's bitmask on CUDA through ``torch.compile`` (one
            fused kernel per chunk of blocks instead of a dozen PyTorch operations; compiled
            once per ``mask_mod``, which runs eagerly if it does not compile).
        hopper_forward: run the warp-specialized Hopper forward (Gluon) where it applies
            (off: the portable kernel everywhere, as its tests and side-by-side benchmarks want).
        full_runs: let the forward walk a row's full blocks as a range on layouts known to hold
            runs of them (``BlockLayout.full_runs``), reading no list entry but the first.
        tiled_order_backward: run the backward of a tiled canvas given in raster order on
            copies in the tiled order when its query blocks visit at least
            ``tiled_order_min_row_blocks`` kv blocks on average (whole blocks of consecutive
            rows pay for moving nine tensors when each token has enough work; the copies hold
            one more q, k, v, out and dO while the kernels run: off saves that memory).
        tiled_order_min_row_blocks: that threshold (mean kv blocks per query block).
        concurrent_dq: run the dq kernel on a second CUDA stream beside the dk/dv kernel (the
            gradients are bitwise the same) when it has at least ``concurrent_min_programs``
            programs.
        concurrent_min_programs: that threshold.
        mean_topk_method: how ``BlockTopK(score="mean")`` selects: ``"auto"`` (the fused Triton
            kernels on CUDA where they take the inputs, PyTorch elsewhere), ``"torch"`` or
            ``"triton"`` (on CPU under ``TRITON_INTERPRET=1``).

    The measurements behind the defaults are in docs/decisions.md.
    """

    bitmask_budget: int = 1 << 30
    force_bitmask: bool = False
    compile_bitmask: bool = True
    hopper_forward: bool = True
    full_runs: bool = True
    tiled_order_backward: bool = True
    tiled_order_min_row_blocks: float = 48.0
    concurrent_dq: bool = True
    concurrent_min_programs: int = 512
    mean_topk_method: str = "auto"

    def __setattr__(self, name, value):
        fields = {f.name: f for f in dataclasses.fields(self)}
        if name not in fields:
            raise AttributeError(f"foveate.policy has no setting {name!r}; settings: {list(fields)}")
        kind = fields[name].type
        if kind == "bool" and not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
        if kind in ("int", "float"):
            number = (int,) if kind == "int" else (int, float)
            if not isinstance(value, number) or isinstance(value, bool):
                raise TypeError(f"{name} must be {'an int' if kind == 'int' else 'a number'}, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if name == "mean_topk_method" and value not in MEAN_TOPK_METHODS:
            raise ValueError(f"mean_topk_method must be one of {MEAN_TOPK_METHODS}, got {value!r}")
        super().__setattr__(name, value)

    @contextlib.contextmanager
    def override(self, **settings):
        """Change settings for the duration of a ``with`` block; they are restored after it
        (also on an exception). Unknown names and bad values raise before anything changes."""
        probe = dataclasses.replace(self)
        for name, value in settings.items():  # validate all first: nothing changes on a bad one
            setattr(probe, name, value)
        old = {name: getattr(self, name) for name in settings}
        try:
            for name, value in settings.items():
                setattr(self, name, value)
            yield self
        finally:
            for name, value in old.items():
                setattr(self, name, value)


#: The settings in force.
policy = Policy()

__all__ = ["Policy", "policy"]
