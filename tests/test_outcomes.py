"""The outcomes benchmark: its scoring against a hand computation, and a smoke run."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "outcomes.py"


def _load():
    spec = importlib.util.spec_from_file_location("outcomes_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeTask:
    def __init__(self, name, lrs):
        self.name, self.lrs = name, lrs


def test_score_oracle_regret_and_divergence():
    oc = _load()
    rows = oc.strategy_rows()
    tasks = [_FakeTask("a", (0.1, 1.0))]
    rng = np.random.default_rng(0)
    results = {"a": {}}
    for key, (_, hps) in oc.STRATEGIES.items():
        shape = (len(hps), 2, 2)
        results["a"][key] = {
            "v0": np.full(shape, 2.0),
            "final": rng.uniform(0.5, 1.5, shape),
            "clipped": np.zeros((*shape, 3)),
        }
    # one seed of "no clipping" diverges at lr 1.0 (NaN), the other is above its initial loss
    results["a"]["no clipping"]["final"][0, 1] = [np.nan, 3.0]
    rows, cells, loss, diverged, ratio, oracle, _ = oc.score(tasks, results)
    fixed = results["a"]["fixed"]["final"].mean(axis=-1)  # (hp, lr)
    np.testing.assert_allclose(oracle, fixed.min(axis=0))
    r_none = [r for r, row in enumerate(rows) if row[0] == "no clipping"][0]
    assert diverged[r_none].tolist() == [0, 2]
    # diverged seeds score their initial loss
    np.testing.assert_allclose(loss[r_none, 1], 2.0)
    np.testing.assert_allclose(ratio[r_none, 1], 2.0 / fixed[:, 1].min())
    r_best = [
        r for r, row in enumerate(rows) if row[0] == f"fixed {oc.FIXED[fixed[:, 0].argmin()]:g}"
    ]
    assert ratio[r_best[0], 0] == pytest.approx(1.0)
    summ = oc.summary(rows, ratio, diverged)
    by_name = {s["strategy"]: s for s in summ}
    assert by_name["no clipping"]["diverged"] == 2
    expected = int(np.sum(ratio[r_none] <= 1.05))
    assert by_name["no clipping"]["within_5pct"] == expected


def test_spearman_matches_numpy_ranks():
    oc = _load()
    a = np.array([0.1, 0.4, 0.2, 0.9])
    assert oc.spearman(a, a) == pytest.approx(1.0)
    assert oc.spearman(a, -a) == pytest.approx(-1.0)


def test_smoke_run_writes_every_output(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--smoke",
            "--out",
            str(tmp_path),
            "--json",
            str(tmp_path / "outcomes.json"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tables = (tmp_path / "outcomes_tables.md").read_text()
    blob = json.loads((tmp_path / "outcomes.json").read_text())
    oc = _load()
    names = [row[0] for row in oc.strategy_rows()]
    assert [s["strategy"] for s in blob["summary"]] == names
    for name in names:
        assert f"| {name} |" in tables
    assert (tmp_path / "img" / "outcomes.png").stat().st_size > 10_000
    ratio = np.array(blob["ratio"], dtype=float)
    fixed = [i for i, n in enumerate(names) if n.startswith("fixed ")]
    # the smoke run trains every strategy on the regression task only; there the
    # oracle is the best fixed threshold of each cell
    cols = [c for c, (task, _) in enumerate(blob["cells"]) if task == "regression"]
    assert cols and np.isfinite(ratio[:, cols]).all()
    np.testing.assert_allclose(ratio[fixed][:, cols].min(axis=0), 1.0)


def test_score_is_the_mean_of_the_last_evaluations():
    # A one-parameter task whose held-out "loss" is the parameter itself:
    # SGD on (w - 1)^2 from w = 0 gives w_t = 1 - (1 - 2 lr)^t, so the score
    # must be the mean of w at the ends of the last SCORED of EVALS chunks.
    import jax
    import jax.numpy as jnp
    import optax

    oc = _load()
    steps, lrs = 40, (0.01, 0.05)
    task = oc.Task(
        "toy",
        "toy",
        lambda key: {"w": jnp.zeros([], jnp.float32)},
        lambda key, step: jnp.zeros([], jnp.float32),
        lambda p, b, step: jnp.square(p["w"] - 1.0),
        lambda p: p["w"],
        lambda lr, n: optax.sgd(lr),
        steps,
        lrs,
        "sgd",
    )
    with jax.numpy_dtype_promotion("standard"):
        out = oc.run_task(task, seeds=[0, 1], keys={"no clipping"}, log=lambda *a: None)
    got = out["no clipping"]
    chunk = steps // oc.EVALS
    for j, lr in enumerate(lrs):
        w = [1 - (1 - 2 * lr) ** (chunk * (k + 1)) for k in range(oc.EVALS)]
        np.testing.assert_allclose(got["evals"][0, j, 0], w, rtol=1e-5)
        np.testing.assert_allclose(got["final"][0, j], np.mean(w[-oc.SCORED :]), rtol=1e-5)
        np.testing.assert_allclose(got["v0"][0, j], 0.0)
    assert got["loss"].shape == (1, len(lrs), 2, steps)


def test_strategies_option_keeps_commas_inside_names():
    # "ema(2, .99)" is one name; an unknown one is refused before training.
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--strategies", "ema(2, .99),nope(1, 2)"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 2, result.stderr
    assert "unknown ['nope(1, 2)']" in result.stderr
    assert "'ema(2, .99)'" in result.stderr.split("known:")[1]
