"""adaclip.tuning: sweeps, summaries, suggestions, recording and plots, against NumPy references."""

import ast
import pathlib
import re

import _refs
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest

import adaclip
import adaclip.tuning

matplotlib.use("Agg")


def _shifted_norms(steps=400, shift_at=200, seed=0):
    rng = np.random.default_rng(seed)
    norms = np.exp(rng.normal(0.0, 0.3, size=steps))
    norms[shift_at:] *= 6.0
    return norms.astype(np.float32)


def _np_summary(stats, thr, shift_at=None, window=100, tol=0.05):
    """Plain-loop summary of a 1-D all-finite trace, from summarize's docstring."""
    stats = np.asarray(stats, np.float64)
    thr = np.asarray(thr, np.float64)
    clipped = stats > thr
    out = {
        "clip_rate": clipped.mean(),
        "mean_threshold": thr.mean(),
        "max_threshold": thr.max(),
        "max_let_through": np.minimum(stats, thr).max(),
    }
    if shift_at is not None:
        w = min(window, len(stats) - shift_at)
        base = clipped[max(shift_at - window, 0) : shift_at].mean()
        out["steps_to_adapt"] = np.inf
        for k in range(len(stats) - w - shift_at + 1):
            if clipped[shift_at + k : shift_at + k + w].mean() <= base + tol:
                out["steps_to_adapt"] = k
                break
    return out


def test_sweep_matches_numpy_reference():
    norms = _shifted_norms()
    grid = {"multiplier": [1.2, 2.0, 4.0], "decay": [0.5, 0.9, 0.99]}
    table = adaclip.tuning.sweep(adaclip.ema, norms, grid, shift_at=200, adapt_window=50)
    assert len(table["clip_rate"]) == 9
    k = 0
    for m in grid["multiplier"]:
        for d in grid["decay"]:  # the last name varies fastest
            assert table["multiplier"][k] == m and table["decay"][k] == d
            thr = _refs.ema(norms.astype(np.float64), m, d)
            ref = _np_summary(norms, thr, 200, 50)
            # Thresholds agree to float32 rounding; a step within rounding of
            # its threshold could flip, so compare rates loosely.
            np.testing.assert_allclose(table["clip_rate"][k], ref["clip_rate"], atol=2 / 400)
            for name in ("mean_threshold", "max_threshold", "max_let_through"):
                np.testing.assert_allclose(table[name][k], ref[name], rtol=1e-4)
            assert table["steps_to_adapt"][k] == ref["steps_to_adapt"]
            k += 1
    # A slow rule takes longer to adapt than a fast one.
    assert table["steps_to_adapt"][1] > table["steps_to_adapt"][0]


def test_sweep_static_windows_and_chunks():
    norms = _shifted_norms(200, 100)
    grid = {"window": [3, 10], "multiplier": [1.1, 1.5, 2.0, 3.0]}
    full = adaclip.tuning.sweep(
        adaclip.moving_average, norms, grid, static=["window"], shift_at=100
    )
    small = adaclip.tuning.sweep(
        adaclip.moving_average, norms, grid, static=["window"], shift_at=100, chunk_size=3
    )
    for name in full:
        np.testing.assert_array_equal(full[name], small[name])
    for k in range(8):
        w, m = int(full["window"][k]), float(full["multiplier"][k])
        thr = _refs.moving_average(norms.astype(np.float64), m, w)
        ref = _np_summary(norms, thr, 100)
        np.testing.assert_allclose(full["mean_threshold"][k], ref["mean_threshold"], rtol=1e-5)
        assert full["steps_to_adapt"][k] == ref["steps_to_adapt"]


def test_sweep_strings_are_static_and_single_config_works():
    norms = _shifted_norms(100, 50)
    table = adaclip.tuning.sweep(
        lambda feed, multiplier: adaclip.ema(multiplier, 0.9, feed=feed),
        norms,
        {"feed": ["raw", "clipped"], "multiplier": [2.0]},
    )
    assert list(table["feed"]) == ["raw", "clipped"]
    one = adaclip.tuning.sweep(
        lambda value: adaclip.fixed(value), norms, {"value": [1.5]}, static=["value"]
    )
    assert one["clip_rate"][0] == pytest.approx(np.mean(norms > 1.5))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(grid={}), ValueError),
        (dict(grid={"multiplier": "abc"}), TypeError),
        (dict(grid={"multiplier": []}), ValueError),
        (dict(grid={"multiplier": [2.0]}, static=["window"]), ValueError),
        (dict(grid={"multiplier": [2.0]}, shift_at=1000), ValueError),
        (dict(grid={"multiplier": [-2.0]}), ValueError),
    ],
)
def test_sweep_bad_arguments(kwargs, error):
    with pytest.raises(error):
        adaclip.tuning.sweep(lambda multiplier: adaclip.ema(multiplier, 0.9), np.ones(50), **kwargs)


def test_summarize_per_leaf_and_nonfinite():
    norms = np.stack([_shifted_norms(seed=1), _shifted_norms(seed=2)], axis=1)
    norms[5, 1] = np.nan
    trace = adaclip.replay(adaclip.ema(2.0, 0.9), norms)
    s = adaclip.tuning.summarize(trace)
    ok = np.isfinite(norms).all(axis=1)
    thr = np.asarray(trace.threshold)[ok]
    assert s["clip_rate"] == pytest.approx((norms[ok] > thr).mean(), abs=1e-6)
    assert s["max_threshold"] == pytest.approx(thr.max())
    empty = adaclip.tuning.summarize(adaclip.replay(1.0, np.full(4, np.nan)))
    assert all(np.isnan(v) for v in empty.values())


def test_fixed_threshold_never_adapts_and_scaled_rule_does():
    norms = _shifted_norms()
    fixed = adaclip.tuning.summarize(adaclip.replay(2.0, norms), shift_at=200)
    assert fixed["steps_to_adapt"] == np.inf
    ema = adaclip.tuning.summarize(adaclip.replay(adaclip.ema(2.0, 0.9), norms), shift_at=200)
    assert 0 < ema["steps_to_adapt"] < 100


def test_suggest_fixed():
    rng = np.random.default_rng(0)
    norms = np.exp(rng.normal(size=500)).astype(np.float32)
    norms[3] = np.nan
    ok = np.isfinite(norms)
    assert adaclip.tuning.suggest_fixed(norms) == pytest.approx(np.percentile(norms[ok], 10))
    value = adaclip.tuning.suggest_fixed(norms, percentile=95)
    assert np.mean(norms[ok] > value) == pytest.approx(0.05, abs=0.005)
    per_leaf = adaclip.tuning.suggest_fixed(np.stack([norms, 2 * norms], axis=1), percentile=50)
    np.testing.assert_allclose(per_leaf, np.median(norms[ok]) * np.array([1, 2]), rtol=1e-6)
    with pytest.raises(ValueError, match="percentile"):
        adaclip.tuning.suggest_fixed(norms, percentile=101)
    with pytest.raises(ValueError, match="finite"):
        adaclip.tuning.suggest_fixed(np.full(3, np.nan))


def test_suggest_for_clip_rate_is_the_smallest_value_reaching_the_target():
    rng = np.random.default_rng(1)
    norms = np.exp(rng.normal(size=1500)).astype(np.float32)

    def make(m):
        return adaclip.ema(m, 0.95)

    def rate(m):
        return adaclip.tuning.summarize(adaclip.replay(make(m), norms))["clip_rate"]

    m = adaclip.tuning.suggest_for_clip_rate(make, norms, 0.1)
    assert rate(m) <= np.float32(0.1)
    assert rate(m * 0.99) > np.float32(0.1)
    with pytest.raises(ValueError, match="target_clip_rate"):
        adaclip.tuning.suggest_for_clip_rate(make, norms, 1.5)


def test_suggest_for_clip_rate_says_when_the_target_is_out_of_reach():
    rng = np.random.default_rng(1)
    norms = np.exp(rng.normal(size=1500)).astype(np.float32)

    def make(m):
        return adaclip.ema(m, 0.95)

    def rate(m):
        return adaclip.tuning.summarize(adaclip.replay(make(m), norms))["clip_rate"]

    # Reached at low already: the answer may lie below the interval.
    at_low, at_high = rate(2.0), rate(3.0)
    target = (at_low + 1.0) / 2
    with pytest.warns(UserWarning, match="target_clip_rate") as record:
        assert adaclip.tuning.suggest_for_clip_rate(make, norms, target, low=2.0, high=3.0) == 2.0
    message = str(record[0].message)
    assert f"{target!r}" in message
    assert f"{at_low:.4g}" in message and f"{at_high:.4g}" in message
    # Not reached even at high.
    with pytest.raises(ValueError, match="cannot be reached") as info:
        adaclip.tuning.suggest_for_clip_rate(make, norms, at_high / 2, low=2.0, high=3.0)
    assert f"{at_low:.4g}" in str(info.value) and f"{at_high:.4g}" in str(info.value)


def _train_and_record(clipper, grads_seq, extra=True):
    params = jax.tree.map(jnp.zeros_like, grads_seq[0])
    tx = optax.chain(clipper, optax.sgd(0.1))
    state = tx.init(params)
    update = jax.jit(tx.update)
    recorder = adaclip.tuning.Recorder()
    for i, g in enumerate(grads_seq):
        _, state = update(g, state, params)
        if extra:
            recorder.record(adaclip.metrics(state), loss=jnp.float32(i))
        else:
            recorder.record(adaclip.metrics(state))
    return recorder


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_recorded_norms_replay_to_the_recorded_thresholds(tmp_path, suffix):
    norms = _shifted_norms(80, 40)
    norms[[10, 11, 50]] = [np.nan, np.inf, np.nan]
    grads = [jnp.array([n, 0.0]) for n in norms]
    rule = adaclip.ema(2.0, 0.9, warmup_steps=3)
    recorder = _train_and_record(adaclip.clip_by_global_norm(rule), grads)
    assert len(recorder) == 80
    path = recorder.save(tmp_path / f"run{suffix}")
    data = adaclip.tuning.load_record(path)
    assert list(data)[:2] == ["step", "norm"]
    np.testing.assert_array_equal(data["step"], np.arange(80))
    np.testing.assert_array_equal(data["loss"], np.arange(80))
    bad = ~np.isfinite(norms)
    assert np.isnan(data["norm"][bad]).all()
    np.testing.assert_allclose(data["norm"][~bad], norms[~bad], rtol=1e-7)
    np.testing.assert_array_equal(data["nonfinite_count"], np.cumsum(bad))
    trace = adaclip.replay(rule, data["norm"])
    np.testing.assert_allclose(trace.threshold, data["threshold"], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(trace.clipped), data["clipped"].astype(bool))


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_per_leaf_recording_round_trips(tmp_path, suffix):
    norms = np.stack([_shifted_norms(30, 10, seed=s) for s in (1, 2, 3)], axis=1)
    grads = [{"a": jnp.array([a]), "b": jnp.array([b]), "c": jnp.array([c])} for a, b, c in norms]
    recorder = _train_and_record(adaclip.clip_by_leaf_norm(adaclip.ema(1.5, 0.8)), grads, False)
    data = adaclip.tuning.load_record(recorder.save(tmp_path / f"leaf{suffix}"))
    assert data["norm"].shape == (30, 3)
    np.testing.assert_allclose(data["norm"], norms, rtol=1e-7)
    trace = adaclip.replay(adaclip.ema(1.5, 0.8), data["norm"])
    np.testing.assert_allclose(trace.threshold, data["threshold"], rtol=1e-6)


def test_recorder_errors(tmp_path):
    recorder = adaclip.tuning.Recorder()
    recorder.record({"norm": 1.0})
    with pytest.raises(ValueError, match="same names"):
        recorder.record({"norm": 1.0, "loss": 2.0})
    with pytest.raises(ValueError, match=".csv or .npy"):
        recorder.save(tmp_path / "run.txt")


def test_load_record_csv_details(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text("step,name,grad_norm[1],grad_norm[0]\n0,a,2,1\n1,b,,3\n\n")
    data = adaclip.tuning.load_record(path)
    assert list(data) == ["step", "name", "grad_norm"]
    assert list(data["name"]) == ["a", "b"]
    np.testing.assert_array_equal(data["grad_norm"], [[1, 2], [3, np.nan]])
    path.write_text("a,b\n1\n")
    with pytest.raises(ValueError, match="line 2"):
        adaclip.tuning.load_record(path)
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        adaclip.tuning.load_record(path)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        adaclip.tuning.load_record(obj)


def test_plots_draw():
    norms = _shifted_norms(100, 50)
    norms[7] = np.nan
    trace = adaclip.replay(adaclip.ema(1.5, 0.9), norms)
    ax = adaclip.tuning.plot_trace(norms, trace, label="ema")
    assert "ema" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["statistic", "threshold", "clipped", "non-finite"]
    leaf_norms = np.stack([norms, norms], axis=1)
    leaf_trace = adaclip.replay(adaclip.ema(1.5, 0.9), leaf_norms)
    with pytest.raises(ValueError, match="leaf"):
        adaclip.tuning.plot_trace(leaf_norms, leaf_trace)
    adaclip.tuning.plot_trace(leaf_norms, leaf_trace, leaf=1)
    table = adaclip.tuning.sweep(
        adaclip.ema, norms, {"multiplier": [1.5, 2.0], "decay": [0.5, 0.9]}
    )
    ax = adaclip.tuning.plot_sweep(table, "multiplier", "decay")
    assert ax.get_xlabel() == "multiplier" and ax.get_ylabel() == "decay"
    ax = adaclip.tuning.plot_sweep(table, "multiplier", value="mean_threshold")
    assert ax.get_ylabel() == "mean_threshold"
    with pytest.raises(KeyError):
        adaclip.tuning.plot_sweep(table, "window", "decay")
    matplotlib.pyplot.close("all")


def test_sweep_validates_each_configuration_as_its_factory_does():
    norms = _shifted_norms(50, 25)
    # The rule's own message, for the offending value.
    with pytest.raises(ValueError) as expected:
        adaclip.ema(2.0, 1.5)
    with pytest.raises(ValueError) as got:
        adaclip.tuning.sweep(adaclip.ema, norms, {"multiplier": [2.0], "decay": [0.5, 1.5]})
    assert str(got.value) == str(expected.value)
    # A traced integer beyond int32 is an error, never wrapped around (2**32 + 5 -> 5).
    with pytest.raises(ValueError, match=r"warmup_steps.*4294967301"):
        adaclip.tuning.sweep(
            lambda warmup_steps: adaclip.ema(2.0, 0.9, warmup_steps=warmup_steps),
            norms,
            {"warmup_steps": [3, 2**32 + 5]},
        )


def test_sweep_keeps_integers_and_floats_apart_in_a_column():
    norms = _shifted_norms(60, 30)
    table = adaclip.tuning.sweep(
        lambda warmup_steps, multiplier: adaclip.ema(multiplier, 0.9, warmup_steps=warmup_steps),
        norms,
        {"warmup_steps": [0, 10], "multiplier": [2, 2.5]},
    )
    assert table["warmup_steps"].dtype.kind == "i"
    for k in range(4):
        w, m = int(table["warmup_steps"][k]), float(table["multiplier"][k])
        thr = _refs.ema(norms.astype(np.float64), m, 0.9, warmup_steps=w)
        ref = _np_summary(norms, thr)
        np.testing.assert_allclose(table["mean_threshold"][k], ref["mean_threshold"], rtol=1e-4)


@pytest.mark.parametrize(
    "header, rows, message",
    [
        ("step,grad_norm,grad_norm", ["0,1,2"], "'grad_norm' appears more than once"),
        ("step,norm,norm[0]", ["0,1,2"], "'norm' is ambiguous"),
        ("norm[0],norm[0]", ["1,2"], r"'norm\[0\]' appears more than once"),
        ("norm[0],norm[00]", ["1,2"], r"norm\[0\] appears more than once"),
        ("norm[0],norm[2]", ["1,2"], r"numbered 0\.\.1"),
        ("step,train/grad_norm", ["0,1.5", "1,-0.5"], "'train/grad_norm'.*negative.*-0.5.*row 1"),
        ("step,norm[0],norm[1]", ["0,1,2", "1,1,-3"], "'norm'.*negative"),
    ],
)
def test_load_record_rejects_ambiguous_columns_and_negative_norms(tmp_path, header, rows, message):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    with pytest.raises(ValueError, match=message):
        adaclip.tuning.load_record(path)


def test_load_record_rejects_negative_norms_in_npy(tmp_path):
    path = tmp_path / "norms.npy"
    np.save(path, np.array([1.0, -2.0, 3.0]))
    with pytest.raises(ValueError, match="'norm'.*negative"):
        adaclip.tuning.load_record(path)
    # Other columns may be negative (a loss, a log-norm).
    ok = tmp_path / "ok.csv"
    ok.write_text("step,loss,log_norm_ratio\n0,-1.5,-2\n")
    assert adaclip.tuning.load_record(ok)["loss"][0] == -1.5


def test_recorder_csv_is_written_exactly(tmp_path):
    values = np.array([0.1, 1 / 3, 1e-30, 3.4e38], np.float32)
    recorder = adaclip.tuning.Recorder()
    for v in values:
        recorder.record({"norm": jnp.float32(v), "clipped": jnp.bool_(v > 0.2)})
    data = adaclip.tuning.load_record(recorder.save(tmp_path / "exact.csv"))
    np.testing.assert_array_equal(data["norm"].astype(np.float32), values)
    np.testing.assert_array_equal(data["clipped"], [0, 1, 0, 1])


def test_plot_trace_overlays_the_loss_on_a_second_axis():
    norms = _shifted_norms(100, 50)
    loss = np.linspace(3.0, 1.0, 100)
    trace = adaclip.replay(adaclip.ema(1.5, 0.9), norms)
    ax = adaclip.tuning.plot_trace(norms, trace, loss=loss)
    right = ax.right_ax
    assert right.get_ylabel() == "loss"
    np.testing.assert_array_equal(right.get_lines()[0].get_ydata(), loss)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["statistic", "threshold", "clipped", "loss"]
    with pytest.raises(ValueError, match="loss"):
        adaclip.tuning.plot_trace(norms, trace, loss=loss[:10])
    matplotlib.pyplot.close("all")


def _threshold_line(ax):
    return next(line for line in ax.get_lines() if line.get_label() == "threshold")


def test_plot_trace_draws_no_threshold_where_the_rule_sets_no_bound():
    rng = np.random.default_rng(3)
    norms = (1.0 + 0.1 * rng.normal(size=120)).astype(np.float32)
    norms[[60, 90]] = [5.0, 6.0]  # two spikes
    rule = adaclip.zscore(alpha=0.9, z_thresh=2.5, warmup_steps=10)
    trace = adaclip.replay(rule, norms)
    drawn = np.asarray(_threshold_line(adaclip.tuning.plot_trace(norms, trace)).get_ydata())
    # Independent of the plot: zscore bounds exactly the spikes (docstring:
    # "without a spike c_t = s_t"), and the line shows just those steps.
    spikes = np.asarray(trace.clipped)
    assert spikes[[60, 90]].all()
    np.testing.assert_array_equal(np.isfinite(drawn), spikes)
    np.testing.assert_array_equal(drawn[spikes], np.asarray(trace.threshold)[spikes])
    # A rule with a bound of its own at every step is drawn at every step.
    fixed_trace = adaclip.replay(adaclip.fixed(1.1), norms)
    drawn = _threshold_line(adaclip.tuning.plot_trace(norms, fixed_trace)).get_ydata()
    assert np.isfinite(drawn).all()
    matplotlib.pyplot.close("all")


@pytest.mark.parametrize("y", ["decay", None])
def test_plot_sweep_keeps_its_labels_inside_the_figure(y):
    norms = _shifted_norms(100, 50)
    grid = {"multiplier": [1.25, 1.5, 2.0, 3.0], "decay": [0.5, 0.9, 0.99]}
    table = adaclip.tuning.sweep(adaclip.ema, norms, grid, shift_at=50)
    ax = adaclip.tuning.plot_sweep(table, "multiplier", y, value="steps_to_adapt")
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    # Everything drawn (tick labels, axis labels, title, the colour bar) lies
    # inside the figure.
    for axes in fig.axes:
        drawn = axes.get_tightbbox(renderer)
        assert drawn.x0 >= -0.5 and drawn.y0 >= -0.5, (axes, drawn)
        assert drawn.x1 <= fig.bbox.x1 + 0.5 and drawn.y1 <= fig.bbox.y1 + 0.5, (axes, drawn)
    matplotlib.pyplot.close("all")


@pytest.mark.parametrize("name", adaclip.tuning.__all__)
def test_public_tuning_name_is_documented(name):
    obj = getattr(adaclip.tuning, name)
    doc = obj.__doc__ or ""
    assert doc.strip(), f"adaclip.tuning.{name} has no docstring"
    assert "Examples:" in doc and ">>> " in doc, f"adaclip.tuning.{name} lacks an Examples doctest"
    api = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    assert re.search(rf"^::: adaclip\.tuning\.{name}$", api, re.M), name


def test_tuning_uses_only_the_public_core():
    # adaclip.tuning imports adaclip's public names, its own private modules
    # and, for argument checks, adaclip._validation; nothing else of the core.
    root = pathlib.Path(adaclip.tuning.__file__).parent
    allowed = {"adaclip", "adaclip._validation"}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("adaclip")
            ):
                modules = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                ok = node.module.startswith("adaclip.tuning") or node.module == "adaclip"
                assert ok, f"{path.name} imports from {node.module}"
                if node.module == "adaclip":
                    private = {m for m in modules if m.split(".")[-1].startswith("_")}
                    assert private <= allowed, f"{path.name} imports {private - allowed}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("adaclip"):
                        assert alias.name in {"adaclip", "adaclip.tuning"}, (path.name, alias.name)


def test_core_namespace_keeps_the_core_only():
    moved = {"Recorder", "load_record", "sweep", "summarize", "suggest_fixed",
             "suggest_for_clip_rate", "format_table", "plot_trace", "plot_sweep"}  # fmt: skip
    assert not moved & set(dir(adaclip))
    assert "importlib" not in dir(adaclip)
    assert {"replay", "Trace", "metrics"} <= set(adaclip.__all__)


# --- No silent failure (issue 21, item 7) ---


def test_recorder_refuses_tracers_at_record_time():
    tx = adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9))
    recorder = adaclip.tuning.Recorder()

    def step(g, state):
        _, state = tx.update(g, state)
        recorder.record(adaclip.metrics(state), loss=jnp.sum(g))
        return state

    state = tx.init(jnp.zeros(2))
    with pytest.raises(TypeError, match=r"Recorder.record got a traced value for 'norm'.*jax.jit"):
        jax.jit(step)(jnp.ones(2), state)
    batch = jax.vmap(tx.init)(jnp.zeros((3, 2)))
    with pytest.raises(TypeError, match="traced value for 'norm'"):
        jax.vmap(step)(jnp.ones((3, 2)), batch)
    # An extra value alone is checked too, and nothing was stored.
    with pytest.raises(TypeError, match="traced value for 'loss'"):
        jax.jit(lambda x: recorder.record({"norm": 1.0}, loss=x))(1.0)
    assert len(recorder) == 0
    with pytest.raises(TypeError, match="initial_metrics"):
        adaclip.tuning.Recorder(initial_metrics=[1.0])


def _run_steps(update, state, norms):
    for n in norms:
        _, state = update(jnp.array([n, 0.0]), state)
    return state


def test_recorder_started_mid_run_keeps_its_first_norm():
    tx = adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9))
    update = jax.jit(tx.update)
    # Two non-finite steps before the recording starts (e.g. before a checkpoint).
    state = _run_steps(update, tx.init(jnp.zeros(2)), [1.0, np.nan, np.inf, 2.0])
    assert int(adaclip.metrics(state)["nonfinite_count"]) == 2
    later = [3.0, 1.5, np.nan, 2.5]
    for initial in (None, adaclip.metrics(state)):
        recorder = adaclip.tuning.Recorder(initial_metrics=initial)
        s = state
        for n in later:
            _, s = update(jnp.array([n, 0.0]), s)
            recorder.record(adaclip.metrics(s))
        np.testing.assert_array_equal(recorder.arrays()["norm"], [3.0, 1.5, np.nan, 2.5])


def test_recorder_marks_a_nonfinite_first_step_given_the_initial_metrics():
    tx = optax.chain(adaclip.clip_by_leaf_norm(adaclip.ema(2.0, 0.9)), optax.sgd(0.1))
    params = {"a": jnp.zeros(1), "b": jnp.zeros(1)}
    state = tx.init(params)
    recorder = adaclip.tuning.Recorder(initial_metrics=adaclip.metrics(state))
    for a in [np.nan, 2.0, np.inf, 4.0]:
        _, state = tx.update({"a": jnp.array([a]), "b": jnp.array([1.0])}, state, params)
        recorder.record(adaclip.metrics(state))
    norm = recorder.arrays()["norm"]
    # One non-finite leaf makes the whole step non-finite.
    assert np.isnan(norm[[0, 2]]).all()
    np.testing.assert_array_equal(norm[[1, 3]], [[2.0, 1.0], [4.0, 1.0]])


def test_load_record_skips_a_bom_and_refuses_python_only_numbers(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("step,grad_norm\r\n0,1.5\r\n1,2e-3\r\n2,+inf\r\n3,.25\r\n".encode("utf-8-sig"))
    data = adaclip.tuning.load_record(path)
    assert list(data) == ["step", "grad_norm"]  # not "\ufeffstep"
    np.testing.assert_array_equal(data["grad_norm"], [1.5, 2e-3, np.inf, 0.25])
    for cell in ["1_000", "1_0.5", "\u0661\u0662", "\uff11"]:  # underscores, non-ASCII digits
        assert np.isfinite(float(cell))  # what a plain float() would have accepted
        path.write_text(f"step,grad_norm\n0,1\n\n1,{cell}\n", encoding="utf-8")
        with pytest.raises(ValueError, match=rf"line 4, column 'grad_norm': '{cell}'.* '_'"):
            adaclip.tuning.load_record(path)
    # A column of names is still text, underscores and all.
    path.write_text("run_name,norm\nbase_1,1\nwide_2,2\n")
    assert list(adaclip.tuning.load_record(path)["run_name"]) == ["base_1", "wide_2"]


def test_sweep_refuses_a_huge_grid_before_building_it():
    import tracemalloc

    calls = []

    def make_rule(multiplier, decay):
        calls.append(1)
        return adaclip.ema(multiplier, decay)

    grid = {"multiplier": np.linspace(1, 3, 10_000), "decay": np.linspace(0.5, 0.99, 10_000)}
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            adaclip.tuning.sweep(make_rule, np.ones(10), grid)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "100,000,000 configurations" in message and "max_configurations=1,000,000" in message
    assert "10000 multiplier x 10000 decay" in message
    assert not calls and peak < 20e6  # refused from the sizes: nothing per configuration
    # The limit is the caller's to raise; at the limit the grid runs.
    small = {"multiplier": [1.5, 2.0], "decay": [0.5, 0.9]}
    with pytest.raises(ValueError, match="4 configurations.*max_configurations=3"):
        adaclip.tuning.sweep(adaclip.ema, np.ones(10), small, max_configurations=3)
    table = adaclip.tuning.sweep(adaclip.ema, np.ones(10), small, max_configurations=4)
    np.testing.assert_array_equal(table["decay"], [0.5, 0.9, 0.5, 0.9])
    with pytest.raises(ValueError, match="max_configurations"):
        adaclip.tuning.sweep(adaclip.ema, np.ones(10), small, max_configurations=0)
