"""Launch a Triton kernel with less host time than ``kernel[grid](...)``.

``kernel[grid](*args, **constexprs)`` costs tens of microseconds of Python per launch: Triton
binds the arguments, specialises each of them (type, alignment, ``== 1``, multiple of 16),
builds and hashes a cache key with the options, looks up the device and stream, then calls the
compiled kernel's C launcher. On problems whose GPU work is small that host time is what a
call costs. :func:`launch` keeps, per kernel, the compiled kernel of every argument signature it
has seen, keyed by what the specialisation is a function of: the exact integer arguments, the
dtype and 16-byte alignment of every tensor, the constexprs and the options. A known key goes
straight to the C launcher; an unknown one takes Triton's own path (compiling if need be) and
records the compiled kernel it returns. Results are those of ``kernel[grid](...)``: the key
determines Triton's specialisation, so the same compiled kernel runs.

Triton's path is always taken under the interpreter, when launch hooks are set (profilers read
them), and for kernels or Triton versions without the compiled-kernel attributes used here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import triton.runtime
from triton import knobs

_CACHE_SIZE = 256  # signatures per kernel (distinct integer arguments: shapes and strides)


class _Bound:
    """The compiled kernels of one JIT function, by argument signature."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.params = [(p.name, p._param.default) for p in kernel.params]
        self.tails: dict[int, list] = {}  # number of leading arguments -> the later (name, default)s
        self.compiled: OrderedDict = OrderedDict()


_BOUND: dict[int, _Bound] = {}


def _key(values) -> tuple:
    """What Triton specialises ``values`` on: a tensor's dtype and 16-byte alignment, an int's
    value (== 1, % 16, i32 / i64), not a float's; a bool apart from the int 1 (equal as keys);
    a TMA tensor descriptor's dtype, block shape and shared layout (not its shape or strides)."""
    # (plain ints first: the commonest, and isinstance(x, torch.Tensor) is slow for non-tensors)
    return tuple([a if type(a) is int else (a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else
                  float if type(a) is float else (bool, a) if type(a) is bool else
                  (a.base.dtype, tuple(a.block_shape), a.layout) if hasattr(a, "block_shape") else a for a in values])


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for launch grids: ``triton.cdiv`` is a constexpr function whose call from
    Python costs microseconds."""
    return -(-a // b)


def _hooked(hook) -> bool:
    """Whether a launch hook is set: Triton 3.6 keeps them in (normally empty) chains."""
    calls = getattr(hook, "calls", None)
    return bool(calls) if calls is not None else hook is not None


def launch(kernel, grid: tuple[int, ...], args: tuple, constexprs: dict, *, num_warps: int, num_stages: int):
    """``kernel[grid](*args, **constexprs, num_warps=..., num_stages=...)``, where ``args`` are the
    kernel's leading parameters in order and ``constexprs`` every later one that has no default."""
    bound = _BOUND.get(id(kernel))
    if bound is None or bound.kernel is not kernel:
        if not hasattr(kernel, "params"):  # the interpreter's function
            kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
            return
        bound = _BOUND[id(kernel)] = _Bound(kernel)
    names = bound.tails.get(len(args))
    if names is None:
        names = bound.tails[len(args)] = bound.params[len(args):]
    tail = [constexprs.get(name, default) for name, default in names]
    active = triton.runtime.driver.active
    device = active.get_current_device()
    key = (device, num_warps, num_stages, _key(args), _key(tail))
    compiled = bound.compiled.get(key)
    if compiled is None or _hooked(knobs.runtime.launch_enter_hook) or _hooked(knobs.runtime.launch_exit_hook):
        compiled = kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        if hasattr(compiled, "result"):
            compiled = compiled.result()
        if all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata")):
            bound.compiled[key] = compiled
            if len(bound.compiled) > _CACHE_SIZE:
                bound.compiled.popitem(last=False)
        return
    compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1,
                 active.get_current_stream(device), compiled.function, compiled.packed_metadata, None, None, None,
                 *args, *tail)


__all__ = ["cdiv", "launch"]
