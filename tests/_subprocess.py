"""Runs a test script in a fresh Python process (for simulated devices).

A script that sets ``XLA_FLAGS`` (``--xla_force_host_platform_device_count``)
before importing JAX must run in its own process, so that the other tests keep
one device. It prints ``OK`` when every check passed.
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_script(script: str, timeout: float = 600) -> None:
    """Runs ``script`` on the CPU backend, without the caller's ``XLA_FLAGS``;
    fails with its stderr unless it exits with 0 and prints ``OK``."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "OK" in out.stdout
