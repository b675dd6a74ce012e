"""Many devices: 8 simulated CPU devices give the single-device result.

The JAX work runs in a subprocess (tests/_multidevice_worker.py) that sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before importing JAX,
so every other test keeps one device. See the worker's docstring for the four
ways the work is spread (jit with FSDP-sharded gradients, shard_map FSDP with
``axis_name``, shard_map data parallel, pmap FSDP with ``axis_name``).
"""

import json
import os
import pathlib
import subprocess
import sys

from _cases import names

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def test_every_clipper_and_recipe_matches_one_device_on_eight(tmp_path):
    """Over 200 steps with spikes, a level shift, NaN, Inf and a float32
    overflow (each on one shard only), every transformation gives the updates,
    per-step metrics and final state of the single-device run (rtol 1e-6),
    every device holds the same state, the jit state is fully replicated and
    the jit updates keep the gradients' sharding."""
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, str(HERE / "_multidevice_worker.py"), str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert sorted(results) == names("multidevice")
    failures = [
        f"{name} / {scenario}:\n{r['error']}"
        for name, by_scenario in results.items()
        for scenario, r in by_scenario.items()
        if not r["ok"]
    ]
    assert not failures, "\n\n".join(failures)
    assert all(len(by_scenario) == 4 for by_scenario in results.values())
