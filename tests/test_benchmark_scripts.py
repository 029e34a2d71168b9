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


def test_sequence_patterns_smoke_run_writes_every_group(benchmarks_path, tmp_path):
    """``benchmarks/sequence_patterns.py --tiny`` (tiny shapes; without CUDA the torch and
    reference backends) runs every group and writes its JSON: each row checked and timed, or
    skipped with the reason (a pattern not written yet); the derived columns present."""
    import json

    module = importlib.import_module("sequence_patterns")
    out = tmp_path / "sequence_patterns.json"
    argv = ["--tiny", "--json", str(out), "--markdown", str(tmp_path / "sequence_patterns.md")]
    module.main(argv + (["--no-flex"] if torch.cuda.is_available() else []))  # (no Flex compiles on a GPU)
    records = json.loads(out.read_text())
    assert {r["group"] for r in records} == {"baselines", "documents", "streaming", "strided"}
    for r in records:
        assert r["status"] in ("ok", "skipped"), (r["name"], r["kernel"], r["status"], r.get("reason"))
        if r["status"] == "skipped":
            assert r["reason"], r["name"]
            continue
        assert r["max_err"] < module.ERROR_LIMIT and r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0, r
        assert r["fwd_of_ideal"] > 0 and r["fwdbwd_sol"] > 0, r
    ran = {(r["group"], r["name"], r["kernel"]) for r in records if r["status"] == "ok"}
    assert {("baselines", "dense", "cudnn"), ("baselines", "causal", "cudnn"), ("baselines", "causal", "triton"),
            ("documents", "documents one by one (causal kernel)", "triton")} <= ran
    assert any(g == "streaming" and "sinks" in name for g, name, _ in ran)
    # (the rows measured against another carry the ratio, and the streaming rows the target)
    compared = [r for r in records if r["status"] == "ok" and r["kernel"] == "triton" and r.get("compare")]
    assert compared and all("fwd_vs_compare" in r and "compare_ideal" in r for r in compared)
    assert all(r.get("fwd_target") in ("met", "missed") for r in compared if r["group"] == "streaming")
    assert (tmp_path / "sequence_patterns.md").read_text().count("\n| ") == len(records) + 1


def test_canvas_patterns_smoke_run_writes_every_group(benchmarks_path, tmp_path):
    """``benchmarks/canvas_patterns.py --tiny`` (tiny canvases; without CUDA the torch and
    reference backends) runs every group and writes its JSON: each row checked and timed, the
    layout build timed."""
    import json

    module = importlib.import_module("canvas_patterns")
    out = tmp_path / "canvas_patterns.json"
    argv = ["--tiny", "--json", str(out), "--markdown", str(tmp_path / "canvas_patterns.md")]
    module.main(argv + (["--no-flex"] if torch.cuda.is_available() else []))  # (no Flex compiles on a GPU)
    records = json.loads(out.read_text())
    assert {r["group"] for r in records} == {"baselines", *module.GROUPS}
    for r in records:
        assert r["status"] in ("ok", "skipped"), (r["name"], r["kernel"], r["status"], r.get("reason"))
        if r["status"] == "skipped":
            assert r["reason"], r["name"]
            continue
        assert r["max_err"] < module.ERROR_LIMIT and r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0, r
        assert r["fwd_of_ideal"] > 0 and r["fwdbwd_sol"] > 0 and r["fwd_vs_dense"] > 0, r
        assert r["group"] == "baselines" or r["layout_ms"] > 0, r
    ran = {(r["group"], r["kernel"]) for r in records if r["status"] == "ok"}
    assert {("baselines", "cudnn"), ("swin", "triton"), ("sta", "triton"), ("radial", "triton"),
            ("circular", "triton"), ("halo", "triton")} <= ran
    assert all(r.get("fwd_target") in ("met", "missed") for r in records
               if r["status"] == "ok" and r["kernel"] == "triton" and r["group"] in ("swin", "sta"))
    assert (tmp_path / "canvas_patterns.md").read_text().count("\n| ") == len(records) + 1


def test_integrations_smoke_run(benchmarks_path, tmp_path):
    """``benchmarks/integrations.py --tiny`` (CPU, float32, small shapes) runs both groups through
    the real transformers and diffusers models and writes its records: foveate's logits and the
    dense Wan block agree with the models' own attention before anything is timed."""
    import json

    module = importlib.import_module("integrations")
    out = tmp_path / "integrations.json"
    module.main(["--tiny", "--json", str(out), "--markdown", str(tmp_path / "integrations.md")])
    rows = json.loads(out.read_text())["rows"]
    llm = [r for r in rows if r["group"] == "smollm2"]
    wan = [r for r in rows if r["group"] == "wan"]
    assert len(llm) == 2 and all(r["max_logit_diff"] < 1e-4 * max(1.0, r["logit_scale"]) for r in llm)
    assert len(wan) == 3 and wan[0]["dense_check"] < 1e-4
    assert all(r["block_ms"] > 0 and r["attention_ms"] > 0 for r in wan)
    assert 0 < wan[1]["density"] < 1 and "stride" in wan[2]["case"]


def test_decode_smoke_run_writes_every_group(benchmarks_path, tmp_path):
    """``benchmarks/decode.py --tiny`` (tiny shapes; without CUDA the kernels in Triton's
    interpreter) runs the dense, paged and sparse rows, each checked and timed."""
    import json

    module = importlib.import_module("decode")
    out = tmp_path / "decode.json"
    module.main(["--tiny", "--json", str(out), "--markdown", str(tmp_path / "decode.md")])
    records = json.loads(out.read_text())
    assert {r["group"] for r in records} == {"dense", "paged", "sparse"}
    ok = [r for r in records if r["status"] == "ok"]
    assert all(r["status"] in ("ok", "skipped") for r in records), [r for r in records if r["status"] == "error"]
    assert {r["kernel"] for r in ok} >= {"foveate", "foveate-paged", "window+sinks", "quest (selection included)"}
    assert all(r["ms"] > 0 and (r["max_err"] is None or r["max_err"] < module.ERROR_LIMIT) for r in ok)
    assert (tmp_path / "decode.md").read_text().count("\n| ") == len(records) + 1


def test_host_overhead_stub_mode_runs_on_a_cpu():
    """``benchmarks/host_overhead.py --stub``: foveate's own host time per call with the launches
    stubbed, on any machine (its own process: the mode sets TRITON_INTERPRET before importing)."""
    import os
    import subprocess

    root = pathlib.Path(__file__).parent.parent
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    run = subprocess.run([sys.executable, str(root / "benchmarks" / "host_overhead.py"), "--stub", "--calls", "20",
                          "--top", "3"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "launchers stubbed" in run.stdout and run.stdout.count("us per call") == 2
    stubbed = int(run.stdout.split("triton backend, ")[1].split(" launchers")[0])
    assert stubbed >= 3  # the forward's and the backward's launchers (else kernels would have run)
