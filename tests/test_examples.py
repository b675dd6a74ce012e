"""Every example runs, in smoke mode, as part of the test suite."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# Examples that need an optional extra: skipped where it is not installed.
REQUIRES = {"tune_optuna.py": "optuna"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_in_smoke_mode(path, tmp_path):
    module = REQUIRES.get(path.name)
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"{path.name} needs {module}")
    result = subprocess.run(
        [sys.executable, str(path), "--smoke"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        # The checkout under test comes first, whatever is installed.
        env={**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
