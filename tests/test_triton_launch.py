"""``foveate.triton_launch.launch`` against Triton's own launch path, with a stand-in kernel.

The stand-in has the two things ``launch`` reads from a JIT function (its ``params`` and
``kernel[grid](...)``, which returns the compiled kernel) and a compiled kernel whose C launcher
records its arguments. What is checked: a first signature goes through ``kernel[grid]``; the
same signature again goes straight to the compiled launcher with every argument in signature
order (constexprs and defaults included); any change that Triton would specialise on (an
integer's value, a tensor's dtype or alignment, a constexpr, the warps) goes through
``kernel[grid]`` again; floats do not; set launch hooks and the interpreter always take Triton's
path. On the GPU every kernel of the triton backend launches through it (``tests/test_gpu.py``
and the kernel tests run there).
"""

from __future__ import annotations

import inspect

import pytest
import torch
from triton import knobs

from foveate import triton_launch


class _Param:
    def __init__(self, name, default=inspect.Parameter.empty):
        self.name = name
        self._param = inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)


class _Compiled:
    function, packed_metadata = "function", "metadata"

    def __init__(self, log):
        self.log = log

    def run(self, g0, g1, g2, stream, function, metadata, launch_metadata, enter, exit_, *args):
        self.log.append(("fast", (g0, g1, g2), args))


class _Kernel:
    """A JIT function ``k(X, n, scale, BLOCK: constexpr, FLAG: constexpr = 7)``."""

    def __init__(self):
        self.params = [_Param("X"), _Param("n"), _Param("scale"), _Param("BLOCK"), _Param("FLAG", 7)]
        self.log = []

    def __getitem__(self, grid):
        def run(*args, num_warps, num_stages, **constexprs):
            self.log.append(("triton", grid, args, constexprs, num_warps))
            return _Compiled(self.log)
        return run


@pytest.fixture
def kernel(monkeypatch):
    class _Driver:  # the device and stream lookups of the CUDA driver
        class active:
            get_current_device = staticmethod(lambda: 0)
            get_current_stream = staticmethod(lambda device: 1234)

    import triton.runtime
    monkeypatch.setattr(triton.runtime, "driver", _Driver)
    return _Kernel()


def _launch(kernel, x, n=32, scale=0.5, block=64, warps=4, **extra):
    triton_launch.launch(kernel, (3, 2), (x, n, scale), dict(BLOCK=block, **extra), num_warps=warps, num_stages=2)
    return kernel.log[-1]


def test_a_known_signature_skips_tritons_path(kernel):
    x = torch.zeros(64)
    first = _launch(kernel, x)
    assert first[0] == "triton" and first[2] == (x, 32, 0.5) and first[3] == {"BLOCK": 64}
    again = _launch(kernel, x, scale=0.25)  # floats are not specialised
    assert again == ("fast", (3, 2, 1), (x, 32, 0.25, 64, 7))  # defaults filled in, signature order
    assert _launch(kernel, x, FLAG=9)[0] == "triton"  # another constexpr
    assert _launch(kernel, x, FLAG=9) == ("fast", (3, 2, 1), (x, 32, 0.5, 64, 9))


@pytest.mark.parametrize("change", ["int value", "int one", "dtype", "alignment", "constexpr", "warps",
                                    "bool for int"])
def test_what_triton_specialises_on_takes_its_path(kernel, change):
    x = torch.zeros(64)
    base = dict(x=x, n=1, block=1) if change == "bool for int" else dict(x=x)
    assert _launch(kernel, **base)[0] == "triton"
    assert _launch(kernel, **base)[0] == "fast"
    kw = {"int value": dict(n=48), "int one": dict(n=1), "constexpr": dict(block=128), "warps": dict(warps=8),
          "dtype": dict(x=torch.zeros(64, dtype=torch.float16)), "alignment": dict(x=x[1:]),
          "bool for int": dict(n=True, block=True)}[change]
    args = base | kw
    assert _launch(kernel, **args)[0] == "triton"
    assert _launch(kernel, **args)[0] == "fast"


def test_launch_hooks_take_tritons_path(kernel, monkeypatch):
    x = torch.zeros(64)
    _launch(kernel, x)
    chain = knobs.HookChain()
    chain.add(lambda *a, **k: None)
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", chain)
    assert _launch(kernel, x)[0] == "triton"


def test_a_function_without_params_takes_tritons_path(kernel):
    del kernel.params  # the interpreter's functions
    x = torch.zeros(64)
    assert _launch(kernel, x)[0] == "triton"
    assert _launch(kernel, x)[0] == "triton"


def test_tma_descriptors_are_keyed_by_what_triton_specialises_on():
    """Two descriptors get the same launch key exactly when Triton compiles the same kernel
    for them: dtype, block shape and shared layout count, the tensor's shape and strides not."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    def desc(shape, rows, dtype=torch.bfloat16):
        t = torch.empty(*shape, dtype=dtype)
        block = [1, 1, rows, shape[3]]
        layout = gl.NVMMASharedLayout.get_default_for(block, {torch.bfloat16: gl.bfloat16,
                                                              torch.float16: gl.float16}[dtype])
        return TensorDescriptor(t, list(t.shape), list(t.stride()), block, layout)

    descs = [desc((1, 1, 1024, 128), 64), desc((2, 3, 1000, 128), 64), desc((1, 1, 1024, 128), 128),
             desc((1, 1, 1024, 64), 64), desc((1, 1, 1024, 128), 64, torch.float16)]
    triton_says = [native_specialize_impl(BaseBackend, d, False, True, True)[0] for d in descs]
    keys = [triton_launch._key([d]) for d in descs]
    for i in range(len(descs)):
        for j in range(len(descs)):
            assert (keys[i] == keys[j]) == (triton_says[i] == triton_says[j]), (i, j)
    assert keys[0] == keys[1] and len(set(keys)) == 4
