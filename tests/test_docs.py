"""The documentation site builds from the repository with every warning an error.

``mkdocs build --strict`` (mkdocs.yml): broken links between pages, pages missing from the
navigation, and docstrings the API reference cannot read (parameters that are not in the
signature, say) all fail it.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "return_lse" in api and "Neighborhood" in api  # the reference is generated from the code


def test_every_reference_to_the_design_page_resolves():
    """The code and tests cite docs/design.md by section: each cited section exists."""
    design = (ROOT / "docs" / "design.md").read_text()
    headings = {line.lstrip("#").strip() for line in design.splitlines() if line.startswith("#")}
    for name in ("Patterns (contract)", "Neighborhood", "Sequence patterns", "BlockLayout (contract)", "Simulator",
                 "Numerics in tests", "Benchmarks"):
        assert name in headings, name
    outside = "DESIGN" + ".md"  # (the founders' page outside the repository)
    for path in [*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/*.py")]:
        assert outside not in path.read_text(), f"{path} cites {outside}, which is not in the repository"


def _python_blocks(path: pathlib.Path) -> list[str]:
    text = path.read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_the_examples_run(page):
    """The Python examples of the README and the getting-started page run as written, one
    namespace per page (on a CPU: the ``torch`` backend; a few seconds each)."""
    blocks = _python_blocks(ROOT / page)
    assert blocks, f"{page} has no Python example"
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, page, "exec"), namespace)
    assert "out" in namespace
