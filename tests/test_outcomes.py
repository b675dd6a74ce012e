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
    summ = oc.summary(rows, ratio, diverged, cells)
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
        lambda lr, n: (optax.identity(), optax.scale_by_learning_rate(lr)),
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


def _fake_cells(oc, per_task=2):
    return [(t, j, 0.1 * (j + 1)) for t in oc.SELECTION + oc.HELD_OUT for j in range(per_task)]


def test_protocol_chooses_on_the_selection_cells_alone():
    oc = _load()
    rows = oc.strategy_rows()
    cells = _fake_cells(oc)
    sel = [c for c, cell in enumerate(cells) if cell[0] in oc.SELECTION]
    held = [c for c, cell in enumerate(cells) if cell[0] in oc.HELD_OUT]
    ratio = np.full((len(rows), len(cells)), 2.0)
    index = {row[0]: r for r, row in enumerate(rows)}
    # a candidate that is perfect on the held-out tasks only must not be chosen
    ratio[index["zclip()"], held] = 1.0
    # two candidates tie on the count of selection cells; the smaller geometric
    # mean wins, and its held-out count is reported as it is
    ratio[index["agc()"], sel] = 1.04
    ratio[index["quantile(0.9)"], sel] = 1.01
    ratio[index["quantile(0.9)"], held[:1]] = 1.0
    # the fixed rows: "fixed 1" wins on selection, "fixed 3" would win on held out
    ratio[index["fixed 1"], sel[:3]] = 1.0
    ratio[index["fixed 3"], held] = 1.0
    # rows that are not candidates never become the default
    ratio[index["no clipping"]] = 1.0
    ratio[index["optax 1.0"]] = 1.0
    got = oc.protocol(rows, cells, ratio)
    assert got["default"]["strategy"] == "quantile(0.9)"
    assert got["default"]["selection"] == (len(sel), len(sel))
    assert got["default"]["held_out"] == (1, len(held))
    assert got["default"]["selection_geomean"] == pytest.approx(1.01)
    assert got["fixed"]["strategy"] == "fixed 1"
    assert got["fixed"]["selection"] == (3, len(sel))
    assert got["fixed"]["held_out"] == (0, len(held))
    assert got["fixed_hindsight"]["strategy"] == "fixed 3"


def test_selection_and_held_out_tasks_are_declared_and_disjoint():
    oc = _load()
    names = [t.name for t in oc.build_tasks(smoke=True)]
    assert set(oc.SELECTION).isdisjoint(oc.HELD_OUT)
    assert sorted(names) == sorted(oc.SELECTION + oc.HELD_OUT)
    assert oc.RECOMMENDED in oc.STRATEGIES
    assert oc.RECOMMENDED not in oc.NOT_CANDIDATES


def test_committed_results_chose_the_recommended_default():
    # The committed numbers, re-scored by the protocol, choose the default that
    # the benchmark, the README and the docs recommend.
    oc = _load()
    blob = json.loads((ROOT / "benchmarks" / "outcomes.json").read_text())
    rows = [(name, name.removesuffix(" (recommended)"), 0) for name in blob["rows"]]
    rows = [(name, "fixed" if key.startswith("fixed ") else key, i) for name, key, i in rows]
    cells = [(t, j, lr) for j, (t, lr) in enumerate(blob["cells"])]
    ratio = np.array(blob["ratio"], dtype=float)
    got = oc.protocol(rows, cells, ratio)
    assert got["default"]["key"] == oc.RECOMMENDED == blob["recommended"]
    assert blob["selection_tasks"] == list(oc.SELECTION)
    assert blob["held_out_tasks"] == list(oc.HELD_OUT)
    code = oc.RECOMMENDED_CODE
    for page in ("README.md", "docs/index.md", "docs/getting-started.md"):
        text = (ROOT / page).read_text()
        first_block = text.split("```python", 1)[1].split("```", 1)[0]
        assert code in first_block, f"{page}: the first code block does not use {code}"
