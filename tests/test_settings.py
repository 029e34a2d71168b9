"""``foveate.policy``: every setting validated, ``override`` scoped and all-or-nothing, and the
settings read where the choices are made."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import foveate
from foveate import patterns as P
from foveate.settings import Policy


def test_defaults_are_documented_in_the_docstring():
    doc = Policy.__doc__
    for field in dataclasses.fields(Policy):
        assert f"{field.name}:" in doc, field.name


@pytest.mark.parametrize("name, value, error, match", [
    ("bitmask_budget", -1, ValueError, "bitmask_budget must be >= 0"),
    ("bitmask_budget", 1.5, TypeError, "bitmask_budget must be an int"),
    ("force_bitmask", 1, TypeError, "force_bitmask must be a bool"),
    ("hopper_forward", "yes", TypeError, "hopper_forward must be a bool"),
    ("concurrent_min_programs", True, TypeError, "concurrent_min_programs must be an int"),
    ("tiled_order_min_row_blocks", -0.5, ValueError, "tiled_order_min_row_blocks must be >= 0"),
    ("mean_topk_method", "numpy", ValueError, "mean_topk_method must be one of"),
    ("budget", 3, AttributeError, "no setting 'budget'"),
])
def test_bad_settings_are_refused_and_change_nothing(name, value, error, match):
    before = dataclasses.asdict(foveate.policy)
    with pytest.raises(error, match=match):
        setattr(foveate.policy, name, value)
    with pytest.raises(error, match=match):
        with foveate.policy.override(**{"concurrent_dq": False, name: value}):
            pass
    assert dataclasses.asdict(foveate.policy) == before


def test_override_is_scoped_and_restored_after_an_exception():
    with pytest.raises(RuntimeError):
        with foveate.policy.override(tiled_order_min_row_blocks=0.5, concurrent_dq=False):
            assert foveate.policy.tiled_order_min_row_blocks == 0.5 and foveate.policy.concurrent_dq is False
            raise RuntimeError
    assert foveate.policy.tiled_order_min_row_blocks == 48 and foveate.policy.concurrent_dq is True


def test_the_selection_reads_its_method_from_the_policy(monkeypatch):
    """``mean_topk_method`` reaches ``BlockTopK``'s selection (here: the torch method, on CPU
    the only one that runs without the interpreter, asked for by name)."""
    from foveate.patterns import content_selected as selected

    seen = []
    real = selected.mean_topk_with_lists
    monkeypatch.setattr(selected, "mean_topk_with_lists",
                        lambda *a, method, **kw: seen.append(method) or real(*a, method=method, **kw))
    q = k = torch.randn(1, 1, 256, 16)
    with foveate.policy.override(mean_topk_method="torch"):
        P.BlockTopK(2, block=64, query_block=64).select(q, k)
    assert seen == ["torch"]
