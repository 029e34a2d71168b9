"""The ``flex`` backend (FlexAttention from foveate's block layout) against ``reference``.

On CPU, FlexAttention runs through ``torch.compile`` (forward only, no lse), and every new
shape or pattern costs a compile of several seconds: the ``flex``-marked tests use four
small problems, each compiled once. The tests of backend selection and refusal compile
nothing.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

import foveate
from foveate import patterns as P
from foveate.backends import Problem, select

from conftest import make_qkv

needs_flex = pytest.mark.skipif("flex" not in foveate.backends.available(), reason="FlexAttention not available")


def _compare_with_reference(q, k, v, pattern, tile="auto"):
    out = foveate.attention(q, k, v, pattern, backend="flex", tile=tile)
    ref = foveate.attention(q, k, v, pattern, backend="reference", tile=None)
    assert out.shape == ref.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    return out, ref


_NBHD_2D = P.Neighborhood(canvas=(12, 20), kernel=(5, 7), dilation=(2, 1), stride=(1, 3), causal=(False, True))

# (id, pattern, batch, heads (q, kv), q_shape, kv_shape, head dims (D, Dv), tile)
FLEX_CASES = [
    ("nbhd2d-gqa-canvas-shaped-tile-auto", _NBHD_2D, 2, (4, 2), (12, 20), (12, 20), (16, 16), "auto"),
    ("nbhd2d-gqa-canvas-shaped-tile-8x16", _NBHD_2D, 2, (4, 2), (12, 20), (12, 20), (16, 16), (8, 16)),
    ("causal-q130-kv300-dv32", P.Causal(), 1, (2, 2), (130,), (300,), (16, 32), "auto"),
    ("nbhd2d-extra-kv-mqa-raster", P.Neighborhood(canvas=(10, 15), kernel=(3, 5), extra_kv=7),
     1, (2, 1), (150,), (157,), (16, 16), None),
    ("union-q200-kv130-empty-rows", P.Causal() | P.SlidingWindow(0, 50), 1, (2, 2), (200,), (130,), (16, 16), "auto"),
]


@pytest.mark.flex
@needs_flex
@pytest.mark.parametrize("name,pattern,batch,heads,q_shape,kv_shape,dims,tile", FLEX_CASES,
                         ids=[c[0] for c in FLEX_CASES])
def test_flex_forward_matches_reference(rng, name, pattern, batch, heads, q_shape, kv_shape, dims, tile):
    q, k, v = make_qkv(rng, batch=batch, heads_q=heads[0], heads_kv=heads[1], q_shape=q_shape,
                       kv_shape=kv_shape, head_dim=dims[0], head_dim_v=dims[1], dtype=torch.float32)
    out, ref = _compare_with_reference(q, k, v, pattern, tile=tile)
    assert out.shape == (batch, heads[0], *q_shape, dims[1])

    if name.startswith("union"):
        # Queries before the first key see nothing: output exactly 0 in both backends.
        p = torch.arange(q_shape[0]) + (kv_shape[0] - q_shape[0])
        empty = p + 50 < 0
        assert empty.any()
        assert (out[:, :, empty] == 0).all() and (ref[:, :, empty] == 0).all()
        assert torch.isfinite(out).all()


@pytest.mark.flex
@needs_flex
def test_flex_under_no_grad_with_inputs_that_require_grad(rng):
    """Inference on inputs that require grad (model weights' activations under torch.no_grad):
    no backward is needed, so the flex backend must run (it declares it supports the problem)."""
    name, pattern, batch, heads, q_shape, kv_shape, dims, _ = FLEX_CASES[0]  # same shape: no new compile
    q, k, v = make_qkv(rng, batch=batch, heads_q=heads[0], heads_kv=heads[1], q_shape=q_shape,
                       kv_shape=kv_shape, head_dim=dims[0], head_dim_v=dims[1], dtype=torch.float32,
                       requires_grad=True)
    with torch.no_grad():
        out = foveate.attention(q, k, v, pattern, backend="flex")
        ref = foveate.attention(q, k, v, pattern, backend="reference")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    assert q.grad is None and not out.requires_grad


# -- selection and refusal (no compile) ---------------------------------------------------------


def _problem(pattern=None, **kw):
    fields = dict(batch=1, heads_q=2, heads_kv=2, q_len=16, kv_len=16, head_dim=16, head_dim_v=16,
                  dtype=torch.float32, device=torch.device("cpu"), requires_grad=False, return_lse=False,
                  pattern=pattern or P.Causal())
    fields.update(kw)
    known = {f.name for f in dataclasses.fields(Problem)}
    return Problem(**{name: value for name, value in fields.items() if name in known})


def test_flex_is_registered():
    assert "flex" in foveate.backends.names()


@needs_flex
def test_flex_refuses_autograd_on_cpu(rng):
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(16,), head_dim=16, dtype=torch.float32,
                       requires_grad=True)
    with pytest.raises(ValueError, match=r"backend='flex'.*backward.*CPU"):
        foveate.attention(q, k, v, P.Causal(), backend="flex")
    assert q.grad is None


@needs_flex
def test_flex_refuses_lse_on_cpu(rng):
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(16,), head_dim=16, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"backend='flex'.*lse"):
        foveate.attention(q, k, v, P.Causal(), backend="flex", return_lse=True)


@needs_flex
def test_flex_supports_reasons():
    flex = foveate.backends.get("flex")
    assert flex.supports(_problem()) is None
    assert "backward" in flex.supports(_problem(requires_grad=True))
    assert "lse" in flex.supports(_problem(return_lse=True))
    assert "float64" in flex.supports(_problem(dtype=torch.float64))
    assert "head dim" in flex.supports(_problem(head_dim=8, head_dim_v=8))
    assert select(_problem(), "flex") is flex


@pytest.mark.parametrize(
    "kw",
    [{}, {"requires_grad": True}, {"return_lse": True}, {"dtype": torch.float16},
     {"pattern": P.Neighborhood(canvas=(4, 4), kernel=3)}],
    ids=["plain", "grad", "lse", "f16", "nbhd"],
)
def test_auto_picks_the_block_sparse_torch_backend_on_cpu(kw):
    assert select(_problem(**kw)).name == "torch"
    assert select(_problem(**kw), "auto").name == "torch"


def test_auto_logs_its_choice(rng, caplog):
    q, k, v = make_qkv(rng, batch=1, heads_q=2, q_shape=(16,), head_dim=16, dtype=torch.float32)
    with caplog.at_level(logging.DEBUG, logger="foveate"):
        out = foveate.attention(q, k, v, P.Causal())
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("foveate")]
    assert any("'torch' selected" in m for m in messages), messages
    if "flex" in foveate.backends.available():
        assert any("'flex' passed over" in m for m in messages), messages
    chosen = foveate.attention(q, k, v, P.Causal(), backend="torch")
    torch.testing.assert_close(out, chosen, atol=0, rtol=0)


def test_reasons_report_every_backend():
    why = foveate.backends.reasons(_problem(requires_grad=True))
    assert set(why) == set(foveate.backends.names())
    assert why["reference"] is None and why["torch"] is None
    if "flex" in why:
        assert isinstance(why["flex"], str) and why["flex"]
