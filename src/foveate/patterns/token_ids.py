"""Per-token integers that patterns carry (document and segment ids): validation of what users
hand in, and the tensors a ``mask_mod`` indexes, kept per device.

A pattern holds its ids as tuples (hashable: layouts are cached per pattern) and computes its
hash once, since a packed batch may hold a million tokens.
"""

from __future__ import annotations

import dataclasses

import torch

from .base import is_int


def int_rows(name: str, value, *, minimum: int) -> tuple[tuple[int, ...], bool]:
    """``(rows, per_batch)``: a 1-D sequence of ints (one row, ``per_batch=False``) or a 2-D one
    (a row per batch element) given as lists, tuples, NumPy arrays or integer tensors, as
    tuples of Python ints, each ``>= minimum``; ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, torch.Tensor) or hasattr(value, "__array__") and not isinstance(value, (list, tuple)):
        t = torch.as_tensor(value)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got a tensor of {t.dtype}")
        if t.dim() not in (1, 2):
            raise ValueError(f"{name} must be 1-D (one sequence) or 2-D (one row per batch element), got shape "
                             f"{tuple(t.shape)}")
        rows, per_batch = ([t.tolist()], False) if t.dim() == 1 else (t.tolist(), True)
    elif isinstance(value, (list, tuple)):
        if len(value) and all(isinstance(r, (list, tuple)) or hasattr(r, "__array__") for r in value):
            rows, per_batch = [list(r) for r in value], True
        else:
            rows, per_batch = [list(value)], False
    else:
        raise TypeError(f"{name} must be a list, tuple or integer tensor, got {type(value).__name__}")
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError(f"{name} must not be empty")
    out = []
    for r in rows:
        bad = next((x for x in r if not is_int(x)), None)
        if bad is not None:
            raise TypeError(f"{name} must hold ints, got {type(bad).__name__} {bad!r}")
        low = min(r)
        if low < minimum:
            raise ValueError(f"{name} must hold ints >= {minimum}, got {low}")
        out.append(tuple(int(x) for x in r))
    return tuple(out), per_batch


class HashedOnce:
    """Value equality of a frozen dataclass (``eq=False``) whose fields may be long tuples, with
    the hash computed once: call :meth:`_hash_fields` at the end of ``__post_init__``."""

    def _fields(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def _hash_fields(self) -> None:
        object.__setattr__(self, "_hash", hash((type(self), self._fields())))

    def __eq__(self, other):
        return type(other) is type(self) and (self is other or (self._hash == other._hash
                                                                and self._fields() == other._fields()))

    def __hash__(self):
        return self._hash


class DeviceTensors:
    """Tensors made once on the CPU and copied to each device on first use."""

    def __init__(self, **tensors: torch.Tensor):
        self._cpu = tensors
        self._by_device: dict = {torch.device("cpu"): tensors}

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        known = self._by_device.get(device)
        if known is None:
            known = self._by_device[device] = {k: t.to(device) for k, t in self._cpu.items()}
        return known


class TokenRows(HashedOnce):
    """A pattern defined by rows of per-token integers (``Documents``' lengths, ``Segments``'
    ids): one row for every batch element, or one per element (``per_batch``). It keeps the rows,
    checks the batch size, and makes its tensors once (:meth:`_make_tensors`, copied to each
    device on use) and its kernel operand once (:meth:`_make_token_ids`, on the CPU).

    Subclasses call :meth:`_set_rows` in ``__post_init__`` and name their rows in ``_rows_noun``."""

    _rows_noun = "rows"

    def _set_rows(self, rows: tuple, per_batch: bool) -> None:
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "_per_batch", per_batch)

    @property
    def batch(self) -> int | None:
        """The batch size the rows were given for (``None``: the same for every element)."""
        return len(self._rows) if self._per_batch else None

    def check_batch_heads(self, batch: int, heads: int) -> None:
        if self._per_batch and batch != len(self._rows):
            raise ValueError(f"{self!r} has {self._rows_noun} for batch={len(self._rows)}, the inputs have {batch}")

    def _make_tensors(self) -> "DeviceTensors":
        raise NotImplementedError

    def _make_token_ids(self, cpu: dict):
        raise NotImplementedError

    def _tensors(self) -> "DeviceTensors":
        known = self.__dict__.get("_device_tensors")
        if known is None:
            known = self._make_tensors()
            object.__setattr__(self, "_device_tensors", known)
        return known

    def _token_ids(self):
        """The kernels' :class:`~foveate.patterns.kernel_mask.TokenIds` of these rows."""
        known = self.__dict__.get("_kernel_ids")
        if known is None:
            known = self._make_token_ids(self._tensors().on(torch.device("cpu")))
            object.__setattr__(self, "_kernel_ids", known)
        return known


__all__ = ["int_rows", "HashedOnce", "DeviceTensors", "TokenRows"]
