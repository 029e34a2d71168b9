"""The backend registry.

Backends are objects with a ``name``, ``available()`` and ``supports(problem) -> reason``;
``backend="auto"`` takes the first one, in priority order, that supports the problem, and
logs (logger ``foveate``, level DEBUG) why the others declined. Adding a backend is one
module plus one :func:`register` line below.
"""

from __future__ import annotations

import logging

import torch

from .base import Backend, Problem, cached_layout

_log = logging.getLogger("foveate")
_REGISTRY: list[Backend] = []


def register(backend: Backend) -> Backend:
    """Add ``backend`` at the lowest priority (replacing one of the same name)."""
    _REGISTRY[:] = [b for b in _REGISTRY if b.name != backend.name]
    _REGISTRY.append(backend)
    return backend


def names() -> list[str]:
    """All registered backend names, in priority order."""
    return [b.name for b in _REGISTRY]


def available() -> list[str]:
    """Names of the backends that can run on this machine, in priority order."""
    return [b.name for b in _REGISTRY if b.available()]


def get(name: str) -> Backend:
    for b in _REGISTRY:
        if b.name == name:
            return b
    raise ValueError(f"backend={name!r} is unknown; expected 'auto' or one of {names()}")


def check_name(backend) -> str:
    """``backend`` as :func:`foveate.attention` takes it, checked where it is stored (a module,
    an integration): ``"auto"`` or a registered name; ``TypeError`` / ``ValueError`` naming it."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__} {backend!r}")
    if backend != "auto":
        get(backend)
    return backend


def reasons(problem: Problem, *, auto: bool = True) -> dict[str, str | None]:
    """For each backend, why it would not take ``problem`` (``None``: it would)."""
    out = {}
    for b in _REGISTRY:
        if not b.available():
            out[b.name] = b.unavailable_reason()
            continue
        reason = b.supports(problem)
        if reason is None and auto:
            reason = b.auto_reason(problem)
        out[b.name] = reason
    return out


def select(problem: Problem, name: str = "auto") -> Backend:
    """The backend that runs ``problem``: the named one, or the first suitable one."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__} {name!r}")
    if name != "auto":
        backend = get(name)
        if not backend.available():
            raise ValueError(f"backend={name!r} cannot run on this machine: {backend.unavailable_reason()} "
                             f"(available: {available()})")
        reason = backend.supports(problem)
        if reason is not None:
            raise ValueError(f"backend={name!r} cannot run this problem: {reason}")
        return backend
    why = reasons(problem)
    for b in _REGISTRY:
        if why[b.name] is None:
            if not torch.compiler.is_compiling():  # (dynamo does not trace logging calls)
                for other, reason in why.items():
                    if other != b.name and reason is not None:
                        _log.debug("backend %r passed over: %s", other, reason)
                _log.debug("backend %r selected", b.name)
            return b
    detail = "; ".join(f"{n}: {r}" for n, r in why.items())
    raise ValueError(f"backend='auto': no backend can run this problem ({detail})")


# Registration, in priority order.
from . import decode as _decode  # noqa: E402
from . import flex as _flex  # noqa: E402
from . import reference as _reference  # noqa: E402
from . import torch_blocks as _torch_blocks  # noqa: E402
from . import triton as _triton  # noqa: E402

# The Triton kernels first (forward and backward; their GPU test suite passes in full on every
# dtype and head dim): on CUDA, `auto` runs them for inference and training, every pattern (a
# mask_mod-only one from its bitmask, within foveate.policy.bitmask_budget). On a CPU, `auto` runs
# the block-sparse PyTorch backend (flex compiles per shape there, so it runs only when named);
# the dense reference is the oracle of the tests and the last resort.
register(_triton.TritonBackend())
register(_flex.FlexBackend())
register(_torch_blocks.TorchBlocksBackend())
register(_reference.ReferenceBackend())
# Decoding (1-16 queries against long keys, inference): where named, until measured on a GPU.
register(_decode.DecodeBackend())

__all__ = [
    "check_name",
    "Backend", "Problem", "register", "names", "available", "get", "reasons", "select", "cached_layout",
]
