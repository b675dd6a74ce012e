"""The adaclip command line, in-process and as `python -m adaclip`."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaclip
import adaclip.tuning

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def norms_csv(tmp_path):
    rng = np.random.default_rng(0)
    norms = np.exp(rng.normal(0, 0.3, size=300))
    norms[150:] *= 5
    norms[20] = np.nan
    path = tmp_path / "norms.csv"
    lines = ["step,loss,train/grad_norm,other_norm"]
    lines += [f"{i},{1.0 / (i + 1)},{n if np.isfinite(n) else ''},1.0" for i, n in enumerate(norms)]
    path.write_text("\n".join(lines) + "\n")
    return path, norms.astype(np.float32)


def _run(capsys, *argv):
    code = adaclip.tuning.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_replay_prints_a_table_matching_replay_and_writes_a_plot(norms_csv, tmp_path, capsys):
    path, norms = norms_csv
    plot = tmp_path / "out.png"
    code, out, err = _run(
        capsys,
        "replay",
        path,
        "--rule",
        "ema(multiplier=2.0, decay=0.99)",
        "--rule",
        "autoclip",
        "--rule",
        "clamp(ema(2.0, 0.9), lower=0.5)",
        "--plot",
        plot,
        "--shift-at",
        150,
    )
    assert code == 0, err
    assert "'train/grad_norm', 300 steps (1 non-finite)" in out
    rows = {line.split()[0]: line for line in out.splitlines()[2:-1]}
    assert out.splitlines()[-1] == f"wrote {plot}"
    assert set(rows) == {"ema(multiplier=2.0,", "autoclip", "clamp(ema(2.0,"}
    expected = adaclip.tuning.summarize(adaclip.replay(adaclip.ema(2.0, 0.99), norms), shift_at=150)
    assert f"{expected['clip_rate']:.4g}" in rows["ema(multiplier=2.0,"]
    # "autoclip" replays exactly what the adaclip.autoclip recipe does in training.
    tx = adaclip.autoclip()
    state = tx.init(jnp.zeros(2))
    update = jax.jit(tx.update)
    for n in norms:
        _, state = update(jnp.array([n, 0.0]), state)
    assert f"{float(adaclip.metrics(state)['clip_rate']):.4g}" in rows["autoclip"]
    assert plot.stat().st_size > 10_000
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_replay_npy_per_leaf_and_column(tmp_path, capsys):
    norms = np.abs(np.random.default_rng(1).normal(size=(50, 3))).astype(np.float32) + 0.5
    path = tmp_path / "leaf.npy"
    np.save(path, norms)
    code, out, err = _run(capsys, "replay", path, "--rule", "adagc(warmup_steps=5)")
    assert code == 0, err
    assert "50 steps, 3 leaves" in out


def test_replay_reads_a_recorder_csv(tmp_path, capsys):
    recorder = adaclip.tuning.Recorder()
    for n in [1.0, 2.0, 9.0, 1.0]:
        recorder.record({"norm": n, "threshold": 0.0}, loss=n)
    path = recorder.save(tmp_path / "rec.csv")
    code, out, _ = _run(capsys, "replay", path, "--rule", "fixed(1.5)", "--column", "loss")
    assert code == 0 and "column 'loss', 4 steps" in out
    assert " 0.5 " in out  # two of four steps above 1.5


def test_sweep_table_and_outputs(norms_csv, tmp_path, capsys):
    path, norms = norms_csv
    out_csv, plot = tmp_path / "table.csv", tmp_path / "sweep.png"
    code, out, err = _run(
        capsys,
        "sweep",
        path,
        "--rule",
        "ema(decay=0.99)",
        "--grid",
        "multiplier=1.5,2,3",
        "--grid",
        "decay=geomspace(0.9, 0.99, 2)",
        "--sort",
        "clip_rate",
        "--out",
        out_csv,
        "--plot",
        plot,
    )
    assert code == 0, err
    assert "6 configurations" in out
    table = adaclip.tuning.load_record(out_csv)
    assert list(table)[:3] == ["multiplier", "decay", "clip_rate"]
    assert np.all(np.diff(table["clip_rate"]) >= 0)
    for m, d, rate in zip(table["multiplier"], table["decay"], table["clip_rate"], strict=True):
        ref = adaclip.tuning.summarize(adaclip.replay(adaclip.ema(float(m), float(d)), norms))
        assert rate == pytest.approx(ref["clip_rate"], abs=1e-6)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_sweep_window_is_static(norms_csv, capsys):
    path, _ = norms_csv
    code, out, err = _run(
        capsys,
        "sweep",
        path,
        "--rule",
        "percentile",
        "--grid",
        "p=[10, 50]",
        "--grid",
        "window=[10, 100]",
        "--shift-at",
        "150",
    )
    assert code == 0, err
    assert "steps_to_adapt" in out and "4 configurations" in out


def test_rules_lists_the_registry(capsys):
    code, out, _ = _run(capsys, "rules")
    assert code == 0
    for name in ("ema", "autoclip", "zclip", "adagc", "percentile", "clamp"):
        assert name in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["replay", "{missing}"], "no such file"),
        (["replay", "{csv}", "--column", "nope"], "no column 'nope'"),
        (["replay", "{csv}", "--column", "loss", "--rule", "magic(1)"], "unknown rule 'magic'"),
        (["replay", "{csv}", "--rule", "ema(multiplier=-1.0, decay=0.9)"], "multiplier"),
        (["replay", "{csv}", "--rule", "ema(2.0)"], "missing 1 required"),
        (["replay", "{csv}", "--rule", "ema(__import__('os'), 0.9)"], "unknown rule '__import__'"),
        (["replay", "{csv}", "--rule", "ema(os.sep, 0.9)"], "literals"),
        (["replay", "{csv}", "--rule", "ema(2.0,"], "bad rule"),
        (["replay", "{csv}", "--rule", "ema.x(1)"], "bad rule"),
        (["replay", "{csv}", "--rule", "percentile(10, window=1.5)"], "window"),
        (["replay", "{csv}", "--shift-at", "5000"], "shift_at must be in [0, 300)"),
        (["replay", "{nonorm}"], "no column name ends in 'norm'"),
        (["replay", "{empty}"], "empty"),
        (["replay", "{ragged}"], "line 3"),
        (["replay", "{text}", "--column", "name_norm"], "not numeric"),
        (["replay", "{objnpy}"], "cannot read"),
        (["replay", "{csv}", "--plot", "{tmp}/no/such/dir/x.png"], "cannot write the plot"),
        (["sweep", "{csv}", "--rule", "ema(decay=0.9)"], "--grid"),
        (["sweep", "{csv}", "--rule", "ema(decay=0.9)", "--grid", "multiplier"], "bad grid"),
        (["sweep", "{csv}", "--rule", "ema(decay=0.9)", "--grid", "multiplier=os.x"], "bad grid"),
        (["sweep", "{csv}", "--rule", "ema(decay=0.9)", "--grid", "multiplier=[-1]"], "multiplier"),
        (["sweep", "{csv}", "--rule", "ema(decay=0.9)", "--grid", "x=[1]"], "unexpected keyword"),
        (
            [
                "sweep",
                "{csv}",
                "--rule",
                "ema(decay=0.9)",
                "--grid",
                "multiplier=[2]",
                "--sort",
                "q",
            ],
            "--sort",
        ),
    ],
)
def test_errors_are_one_line_and_nonzero(argv, message, norms_csv, tmp_path, capsys):
    path, _ = norms_csv
    (tmp_path / "nonorm.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "ragged.csv").write_text("norm,b\n1,2\n3\n")
    (tmp_path / "text.csv").write_text("name_norm\nabc\n")
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    names = {
        "missing": tmp_path / "missing.csv",
        "csv": path,
        "nonorm": tmp_path / "nonorm.csv",
        "empty": tmp_path / "empty.csv",
        "ragged": tmp_path / "ragged.csv",
        "text": tmp_path / "text.csv",
        "objnpy": tmp_path / "obj.npy",
        "tmp": tmp_path,
    }
    code, out, err = _run(capsys, *[a.format(**names) for a in argv])
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("adaclip: error:") and message in lines[0], lines[0]
    assert "Traceback" not in err


def test_python_dash_m(norms_csv):
    path, _ = norms_csv
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    ok = subprocess.run(
        [sys.executable, "-m", "adaclip", "replay", str(path), "--rule", "ema(2.0, 0.9)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "ema(2.0, 0.9)" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "adaclip", "replay", str(path), "--rule", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("adaclip: error: unknown rule 'nope'")
    assert "Traceback" not in bad.stderr


def test_usage_errors_are_one_line(norms_csv, capsys):
    path, _ = norms_csv
    with pytest.raises(SystemExit) as exit_info:
        adaclip.tuning.main(["replay", str(path), "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adaclip: error: unrecognized arguments")


def _grads(steps, seed, per_leaf):
    """Gradients of several elements whose norms wander and spike, with one NaN step."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0.0, 0.4, size=steps)) * np.where(np.arange(steps) < 60, 1.0, 3.0)
    scale[[30, 75]] *= 8.0
    grads = []
    for t in range(steps):
        a = (scale[t] * rng.normal(size=3)).astype(np.float32)
        b = (0.5 * scale[t] * rng.normal(size=2)).astype(np.float32)
        if t == 40:
            a[0] = np.nan
        grads.append({"a": jnp.asarray(a), "b": jnp.asarray(b)} if per_leaf else jnp.asarray(a))
    return grads


RECIPE_SPECS = [
    ("autoclip(percentile=20.0, window=16)", False),
    ("autoclip", False),
    ("zclip(warmup_steps=5, max_norm=3.0)", False),
    ("zclip(z_thresh=2.0, max_norm=None)", False),
    ("adagc(warmup_steps=5, warmup_max_norm=2.0)", True),
]


def _recipe_of(spec):
    """The recipe a spec names, called in Python (independently of the CLI's parser)."""
    return eval("adaclip." + spec if "(" in spec else f"adaclip.{spec}()", {"adaclip": adaclip})


@pytest.mark.parametrize("spec, per_leaf", RECIPE_SPECS)
def test_recipe_replay_equals_the_recipe_run_in_training(spec, per_leaf, tmp_path, capsys):
    # Train with the recipe itself (real multi-element gradients), record its
    # metrics, then replay the recorded norms with the command line's spec.
    recipe = _recipe_of(spec)
    grads = _grads(100, seed=len(spec), per_leaf=per_leaf)
    state = recipe.init(jax.tree.map(jnp.zeros_like, grads[0]))
    update = jax.jit(recipe.update)
    recorder = adaclip.tuning.Recorder()
    for g in grads:
        _, state = update(g, state)
        recorder.record(adaclip.metrics(state))
    path = recorder.save(tmp_path / "run.csv")
    data = adaclip.tuning.load_record(path)

    # Step by step: the spec, built as the command line builds it, replays
    # to the recipe's own thresholds and clip decisions.
    from adaclip.tuning import _specs

    trace = adaclip.replay(_specs.parse_rule(spec).build(), data["norm"])
    finite = np.isfinite(data["norm"]).reshape(100, -1).all(axis=1)
    assert (~finite).sum() == 1
    np.testing.assert_array_equal(np.asarray(trace.threshold), data["threshold"].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(trace.clipped), data["clipped"].astype(bool))
    assert 0 < data["clipped"].mean() < 1

    # What the command line prints: the clip rate the recipe reported.
    code, out, err = _run(capsys, "replay", path, "--rule", spec)
    assert code == 0, err
    row = out.splitlines()[2]
    assert row.startswith(spec)
    clip_rate = float(np.asarray(adaclip.metrics(state)["clip_rate"]).mean())
    assert f"{clip_rate:.4g}" == row[len(spec) :].split()[0]


@pytest.mark.parametrize(
    "spec, make",
    [
        ("adagc(ratio=-1, beta=5)", lambda: adaclip.adagc(ratio=-1, beta=5)),
        ("autoclip(percentile=101)", lambda: adaclip.autoclip(percentile=101)),
        ("zclip(alpha=1.5)", lambda: adaclip.zclip(alpha=1.5)),
        ("ema(2.0, 1.0)", lambda: adaclip.ema(2.0, 1.0)),
        (
            "clamp(ema(2.0, 0.9), lower=2, upper=1)",
            lambda: adaclip.clamp(adaclip.ema(2.0, 0.9), 2, 1),
        ),
    ],
)
def test_specs_are_validated_by_their_factories(spec, make, norms_csv, capsys):
    path, _ = norms_csv
    with pytest.raises((TypeError, ValueError)) as expected:
        make()
    code, _, err = _run(capsys, "replay", path, "--rule", spec)
    assert code == 1
    assert err.strip() == f"adaclip: error: bad rule {spec!r}: {expected.value}"


def test_recipe_specs_take_no_transformation_arguments(norms_csv, capsys):
    path, _ = norms_csv
    code, _, err = _run(capsys, "replay", path, "--rule", "autoclip(nonfinite='propagate')")
    assert code == 1 and "unexpected keyword argument 'nonfinite'" in err


def test_sweep_grid_values_are_validated_as_in_python(norms_csv, capsys):
    path, _ = norms_csv
    with pytest.raises(ValueError) as expected:
        adaclip.adagc(ratio=1.04, beta=5)
    code, _, err = _run(
        capsys, "sweep", path, "--rule", "adagc(warmup_steps=5)", "--grid", "beta=[0.9, 5]"
    )
    assert code == 1 and str(expected.value) in err
    # An integer beyond int32 is refused, not wrapped around to 5.
    code, _, err = _run(
        capsys,
        "sweep",
        path,
        "--rule",
        "ema(2.0, 0.9)",
        "--grid",
        f"warmup_steps=[3, {2**32 + 5}]",
    )
    assert code == 1 and "warmup_steps" in err and "4294967301" in err


def test_replay_plot_overlays_the_recorded_loss(norms_csv, tmp_path, capsys, monkeypatch):
    path, norms = norms_csv
    drawn = {}
    real = adaclip.tuning._cli.plot_trace

    def spy(*args, **kwargs):
        drawn["loss"] = kwargs.get("loss")
        return real(*args, **kwargs)

    monkeypatch.setattr(adaclip.tuning._cli, "plot_trace", spy)
    plot = tmp_path / "replay.png"
    code, _, err = _run(capsys, "replay", path, "--rule", "ema(2.0, 0.9)", "--plot", plot)
    assert code == 0, err
    expected = 1.0 / (np.arange(len(norms)) + 1)  # the fixture's loss column
    np.testing.assert_allclose(drawn["loss"], expected)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_console_script_is_the_public_main():
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["adaclip"].partition(":")
    assert getattr(importlib.import_module(module), name) is adaclip.tuning.main


# --- No silent failure (issue 21, item 7) ---


def test_a_directory_or_a_pipe_is_reported_as_what_it_is(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    fifo = tmp_path / "trace.csv"
    os.mkfifo(fifo)
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "gone.csv")
    for name, what in [
        ("runs", "is a directory"),
        ("trace.csv", "is a pipe"),
        ("dangling.csv", "broken symbolic link"),
        ("missing.csv", "no such file"),
    ]:
        code, out, err = _run(capsys, "replay", tmp_path / name)
        assert code == 1 and not out
        assert err.startswith(f"adaclip: error: cannot read {str(tmp_path / name)!r}: ")
        assert err.count("\n") == 1
        assert what in err, err
        if what != "no such file":
            assert "no such file" not in err


def test_repeated_keywords_are_refused_as_python_does(norms_csv, capsys):
    path, _ = norms_csv
    with pytest.raises(SyntaxError, match="keyword argument repeated: multiplier"):
        compile("ema(multiplier=2.0, multiplier=3.0)", "<spec>", "eval")
    for spec, name in [
        ("ema(multiplier=2.0, decay=0.9, multiplier=3.0)", "multiplier"),
        ("clamp(ema(2.0, decay=0.9, decay=0.5), lower=0.1)", "decay"),
        ("clamp(ema(2.0, 0.9), lower=0.1, lower=1.0)", "lower"),
    ]:
        code, _, err = _run(capsys, "replay", path, "--rule", spec)
        assert code == 1
        assert f"bad rule {spec!r}: keyword argument repeated: {name}" in err
    code, _, err = _run(
        capsys, "sweep", path, "--rule", "ema", "--grid", "decay=0.9", "--grid", "decay=0.5"
    )
    assert code == 1 and "--grid decay is given more than once" in err


def test_sweep_of_a_huge_grid_fails_with_its_size(norms_csv, capsys):
    path, _ = norms_csv
    code, _, err = _run(
        capsys,
        "sweep",
        path,
        "--rule",
        "ema",
        "--grid",
        "multiplier=linspace(1, 3, 10000)",
        "--grid",
        "decay=linspace(0.5, 0.99, 10000)",
    )
    assert code == 1
    assert "100,000,000 configurations" in err and "max_configurations=1,000,000" in err
