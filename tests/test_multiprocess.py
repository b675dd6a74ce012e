"""Many processes: two ``jax.distributed`` processes x 4 CPU devices, one global mesh.

Each process runs tests/_multiprocess_worker.py (gloo CPU collectives, the
coordinator on 127.0.0.1 at a free port): every gradient leaf is sharded over
the 8 devices of both processes, each clipper's ``update`` runs under plain
``jax.jit``, and both processes' updates and metrics must equal a NumPy
float64 reference of the single-process result, step by step.
"""

import os
import pathlib
import socket
import subprocess
import sys

import _multiprocess_worker as worker
import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
NUM_PROCESSES = 2
RTOL = 1e-5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference():
    """Updates and metrics of every transformation, computed in NumPy float64."""
    grads = [
        {k: v.astype(np.float64) for k, v in worker.gradients(t).items()}
        for t in range(worker.STEPS)
    ]
    out = {}

    def record(name, t, updates, norm, threshold):
        for k, v in updates.items():
            out[f"{name}/{t}/updates/{k}"] = v
        out[f"{name}/{t}/metrics/norm"] = norm
        out[f"{name}/{t}/metrics/threshold"] = threshold
        out[f"{name}/{t}/metrics/clipped"] = norm > threshold

    def global_norm(g):
        return np.sqrt(sum(np.sum(v**2) for v in g.values()))

    # Fixed global-norm clipping (optax.clip_by_global_norm's maths).
    c = worker.FIXED_GLOBAL
    for t, g in enumerate(grads):
        n = global_norm(g)
        record("global-fixed", t, {k: v * min(1.0, c / n) for k, v in g.items()}, n, c)
    # EMA rule, feed="clipped", no warm-up: step 0 is not clipped (threshold =
    # norm); then c_t = m * e_t / (1 - beta^t), e fed min(norm, c).
    m, beta = worker.EMA_GLOBAL
    e = 0.0
    for t, g in enumerate(grads):
        n = global_norm(g)
        c = n if t == 0 else m * e / (1.0 - beta**t)
        record("global-ema", t, {k: v * min(1.0, c / n) for k, v in g.items()}, n, c)
        e = beta * e + (1.0 - beta) * min(n, c)
    # Per-leaf norms (leaves in key order, as jax.tree.leaves orders a dict).
    c = worker.FIXED_LEAF
    for t, g in enumerate(grads):
        keys = sorted(g)
        norms = np.array([np.sqrt(np.sum(g[k] ** 2)) for k in keys])
        updates = {k: g[k] * min(1.0, c / nk) for k, nk in zip(keys, norms, strict=True)}
        record("leaf-fixed", t, updates, norms, np.full(len(keys), c))
    # Element-wise value clipping; the statistic is the max |g|.
    c = worker.FIXED_VALUE
    for t, g in enumerate(grads):
        n = max(np.max(np.abs(v)) for v in g.values())
        record("value-fixed", t, {k: np.clip(v, -c, c) for k, v in g.items()}, n, c)
    return out


def test_two_processes_match_the_single_process_reference(tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "_multiprocess_worker.py"), str(i), str(NUM_PROCESSES)]
            + [str(port), str(tmp_path)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(NUM_PROCESSES)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log

    expected = _reference()
    # Every step of every transformation has its updates and metrics.
    assert {k.split("/")[0] for k in expected} == set(worker.NAMES)
    for i in range(NUM_PROCESSES):
        got = np.load(tmp_path / f"process_{i}.npz")
        assert set(expected) <= set(got.files), set(expected) - set(got.files)
        for key, want in expected.items():
            have = got[key]
            assert have.shape == np.shape(want), key
            if have.dtype == np.bool_:
                np.testing.assert_array_equal(have, want, err_msg=key)
            else:
                np.testing.assert_allclose(have, want, rtol=RTOL, atol=1e-7, err_msg=key)
        # Something was clipped and something was not: the test can tell.
        clipped = [got[k] for k in got.files if k.endswith("/clipped")]
        assert any(np.any(c) for c in clipped) and not all(np.all(c) for c in clipped)


@pytest.mark.parametrize("step", [0, 3])
def test_reference_norms_are_the_global_ones(step):
    """The reference's global norm is over the whole tree (no shard's own norm)."""
    g = worker.gradients(step)
    flat = np.concatenate([v.ravel().astype(np.float64) for v in g.values()])
    ref = _reference()
    np.testing.assert_allclose(ref[f"global-fixed/{step}/metrics/norm"], np.linalg.norm(flat))
