"""The scripts of ``benchmarks/`` import against the library as it is (CPU): a renamed or
removed name they use fails here, not on the GPU machine. They only run on a GPU (most) or
for minutes (selection quality, offline compiles), so this imports each and checks that the
GPU-only ones refuse a machine without CUDA in one line."""

from __future__ import annotations

import importlib
import pathlib
import sys

import pytest
import torch

SCRIPTS = sorted(p.stem for p in (pathlib.Path(__file__).parent.parent / "benchmarks").glob("*.py"))
# Scripts that run without a GPU (and take minutes): imported, not run.
RUN_ON_CPU = {"common", "kernel_resources", "selection_quality", "layouts", "cpu_backends"}


@pytest.fixture
def benchmarks_path(monkeypatch):
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parent.parent / "benchmarks"))
    yield
    for name in SCRIPTS:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports(name, benchmarks_path):
    module = importlib.import_module(name)
    assert module.__doc__, f"benchmarks/{name}.py says what it measures"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - RUN_ON_CPU))
def test_gpu_script_refuses_a_machine_without_cuda(name, benchmarks_path, monkeypatch):
    module = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert "needs a CUDA GPU" in str(exit_info.value)
