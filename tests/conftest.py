"""Shared fixtures and helpers of the foveate tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# CI runs the same hypothesis examples every time (reproducible); local runs explore.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Without a GPU, the Triton kernels run in Triton's interpreter; it must be chosen before
# Triton compiles (decorates) any kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The helper modules of the tests (naive.py, brute.py, layout_checks.py, strategies.py) import
# as top-level modules.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# Their asserts get pytest's detailed failure messages, as those of the test modules do.
pytest.register_assert_rewrite("brute", "layout_checks")


@pytest.fixture
def rng() -> torch.Generator:
    """A CPU generator with a fixed seed: every test draws the same numbers on every run."""
    return torch.Generator().manual_seed(0)


def make_qkv(
    gen: torch.Generator,
    *,
    batch: int = 2,
    heads_q: int = 2,
    heads_kv: int | None = None,
    q_shape: tuple[int, ...] = (16,),
    kv_shape: tuple[int, ...] | None = None,
    head_dim: int = 16,
    head_dim_v: int | None = None,
    dtype: torch.dtype = torch.float64,
    requires_grad: bool = False,
):
    """Random ``q, k, v``: ``q`` is ``(B, Hq, *q_shape, D)``, ``k``/``v`` are
    ``(B, Hkv, *kv_shape, D or Dv)``. Values are drawn in float64 and then cast, so every
    dtype sees the same numbers (rounded)."""
    heads_kv = heads_q if heads_kv is None else heads_kv
    kv_shape = q_shape if kv_shape is None else kv_shape
    head_dim_v = head_dim if head_dim_v is None else head_dim_v

    def draw(*shape):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
        return t.requires_grad_(requires_grad)

    q = draw(batch, heads_q, *q_shape, head_dim)
    k = draw(batch, heads_kv, *kv_shape, head_dim)
    v = draw(batch, heads_kv, *kv_shape, head_dim_v)
    return q, k, v


@pytest.fixture
def qkv(rng):
    """``qkv(**kwargs)``: :func:`make_qkv` with the test's seeded generator."""

    def factory(**kwargs):
        return make_qkv(rng, **kwargs)

    return factory


def leaf(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A detached copy of ``t`` (optionally cast) that requires grad: a fresh autograd leaf."""
    t = t.detach()
    if dtype is not None:
        t = t.to(dtype)
    return t.clone().requires_grad_(True)


def grads_of(run, q, k, v, d_out, d_lse):
    """``(out, lse, dq, dk, dv)`` of ``run(q, k, v) -> (out, lse)`` on fresh leaves, for the loss
    ``sum(out * d_out) + sum(finite lse * d_lse)``."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = run(q, k, v)
    loss = (out * d_out).sum() + (torch.where(torch.isinf(lse), 0, lse) * d_lse).sum()
    return (out.detach(), lse.detach(), *torch.autograd.grad(loss, (q, k, v)))


@pytest.fixture
def triton_spy(monkeypatch):
    """Counts the Triton forward and backward launches (a silent fall-back leaves them at 0)."""
    from foveate.backends.triton import bwd as bwd_module
    from foveate.backends.triton import fwd as fwd_module

    calls = {"fwd": 0, "bwd": 0}
    real_fwd, real_bwd = fwd_module.attention_forward, bwd_module.attention_backward

    def attention_forward(*args, **kw):
        calls["fwd"] += 1
        return real_fwd(*args, **kw)

    def attention_backward(*args, **kw):
        calls["bwd"] += 1
        return real_bwd(*args, **kw)

    monkeypatch.setattr(fwd_module, "attention_forward", attention_forward)
    monkeypatch.setattr(bwd_module, "attention_backward", attention_backward)
    return calls
