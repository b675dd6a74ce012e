"""The Python code on the docs pages runs.

Three kinds of pages:

- ``PAGES`` (README, Getting started, Home): every ``python`` block is a
  program of its own.
- ``GUIDES`` (every page under docs/guides/): the page is one program, its
  ``python`` blocks run in order as a single script, as a reader pastes them
  one after the other.
- Any other page: a block right after a ``<!-- docs-test: run -->`` line runs
  as a program of its own (the other blocks there are excerpts of the
  examples, which run in tests/test_examples.py).

Deprecation warnings are errors, so a snippet that works only with a
deprecated API fails here.
"""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/getting-started.md", "docs/index.md"]
GUIDES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs" / "guides").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
MARKED = re.compile(r"^<!-- docs-test: run -->\n```python\n(.*?)^```", re.S | re.M)


def _blocks(page):
    return BLOCK.findall((ROOT / page).read_text())


SNIPPETS = [(page, i, code) for page in PAGES for i, code in enumerate(_blocks(page))]
SNIPPETS += [(page, "all", "\n".join(_blocks(page))) for page in GUIDES]
SNIPPETS += [
    (page.relative_to(ROOT).as_posix(), f"marked{i}", code)
    for page in sorted((ROOT / "docs").rglob("*.md"))
    if page.relative_to(ROOT).as_posix() not in PAGES + GUIDES
    for i, code in enumerate(MARKED.findall(page.read_text()))
]


def test_guides_and_marked_blocks_are_found():
    assert len(GUIDES) >= 3
    assert any(page == "docs/flax.md" for page, _, _ in SNIPPETS)


@pytest.mark.parametrize("page, index, code", SNIPPETS, ids=[f"{p}#{i}" for p, i, _ in SNIPPETS])
def test_snippet_runs(page, index, code, tmp_path):
    assert code.strip(), f"{page} has no python code"
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PYTHONPATH": str(ROOT),
            "PATH": "/usr/bin:/bin",
            "JAX_PLATFORMS": "cpu",
            "MPLBACKEND": "Agg",
        },
    )
    assert result.returncode == 0, f"{page} snippet {index}:\n{result.stderr}"
