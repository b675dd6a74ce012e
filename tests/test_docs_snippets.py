"""The Python snippets a newcomer copies first (README, Getting started) run."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/getting-started.md", "docs/index.md"]
SNIPPETS = [
    (page, i, code)
    for page in PAGES
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S))
]


@pytest.mark.parametrize("page, index, code", SNIPPETS, ids=[f"{p}#{i}" for p, i, _ in SNIPPETS])
def test_snippet_runs(page, index, code, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, f"{page} snippet {index}:\n{result.stderr}"
