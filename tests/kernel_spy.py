"""What the tests of Triton kernels share: the device, the skip mark, and a spy that proves a
kernel ran.

A test that means to exercise a kernel replaces the module's kernel object with a
:class:`KernelSpy` (``monkeypatch.setattr(module, "_kernel", KernelSpy(module._kernel))``) and
checks ``spy.launches`` afterwards: a silent fallback to another path fails the test.
"""

from __future__ import annotations

import os

import pytest
import torch

#: Where the kernels' tests put their tensors: the GPU if there is one, else the CPU (the kernels
#: then run in Triton's interpreter: ``conftest.py`` sets ``TRITON_INTERPRET=1``).
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

#: The kernels run on CUDA, or on the CPU in Triton's interpreter.
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="no CUDA and TRITON_INTERPRET is not 1",
)


class KernelSpy:
    """Stands in for a Triton kernel: records each launch (``launches``: dicts of ``grid``,
    ``args``, ``kwargs``), then launches the real kernel."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches: list[dict] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append({"grid": grid, "args": args, "kwargs": kwargs})
            return self.kernel[grid](*args, **kwargs)

        return launch

    @property
    def grids(self) -> list:
        """The grid of each launch."""
        return [launch["grid"] for launch in self.launches]

    @property
    def settings(self) -> list[dict]:
        """The constexpr keyword arguments (upper-case names) of each launch."""
        return [{k: v for k, v in launch["kwargs"].items() if k.isupper()} for launch in self.launches]
