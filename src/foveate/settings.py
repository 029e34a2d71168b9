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
    """

    bitmask_budget: int = 1 << 30
    force_bitmask: bool = False
    compile_bitmask: bool = True

    def __setattr__(self, name, value):
        if name not in {f.name for f in dataclasses.fields(self)}:
            raise AttributeError(f"foveate.policy has no setting {name!r}; settings: "
                                 f"{[f.name for f in dataclasses.fields(self)]}")
        if name == "bitmask_budget" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"bitmask_budget must be an int >= 0 (bytes), got {value!r}")
        if name in ("force_bitmask", "compile_bitmask") and not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
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
