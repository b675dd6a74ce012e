"""adaclip.replay: equal to training, to NumPy references, jittable and vmappable."""

import _paper_refs
import _refs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import CASES, RULES, names

import adaclip


def _norms(steps=60, seed=0, nan_steps=(7, 8, 30), inf_steps=(41,)):
    rng = np.random.default_rng(seed)
    norms = np.exp(rng.normal(0.0, 0.5, size=steps)) * np.where(np.arange(steps) % 9 == 5, 10, 1)
    norms[list(nan_steps)] = np.nan
    norms[list(inf_steps)] = np.inf
    return norms.astype(np.float32)


def _train_metrics(clipper, grads_seq):
    """Runs a clipper on a sequence of gradient trees, returning stacked metrics."""
    state = clipper.init(grads_seq[0])
    update = jax.jit(clipper.update)
    rows = []
    for g in grads_seq:
        _, state = update(g, state)
        rows.append(jax.device_get(adaclip.metrics(state)))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _check_against_metrics(trace, m, stats):
    finite = np.isfinite(stats).reshape(len(stats), -1).all(axis=1)
    np.testing.assert_array_equal(np.asarray(trace.finite), finite)
    np.testing.assert_allclose(np.asarray(trace.threshold), m["threshold"], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(trace.clipped), m["clipped"])
    # The running clip rate of training, recomputed from the trace.
    clipped = np.asarray(trace.clipped).reshape(len(stats), -1).astype(np.float64)
    n_finite = np.cumsum(finite)
    rate = np.cumsum(clipped * finite[:, None], axis=0) / np.maximum(n_finite, 1)[:, None]
    np.testing.assert_allclose(rate.reshape(m["clip_rate"].shape), m["clip_rate"], atol=1e-6)
    np.testing.assert_array_equal(m["nonfinite_count"], np.cumsum(~finite))
    stat_finite = np.where(finite.reshape((-1,) + (1,) * (stats.ndim - 1)), stats, 0)
    np.testing.assert_allclose(
        np.asarray(trace.clipped_statistic)[finite],
        np.minimum(stat_finite, m["threshold"])[finite],
        rtol=1e-6,
    )


class _Feed:
    """The documented clipped feed: min(s, level), or s itself once the
    statistic was cut on more than K = ceil(8 * span) steps in a row."""

    def __init__(self, feed, span):
        self.feed, self.patience, self.run = feed, int(np.ceil(8 * span)), 0

    def __call__(self, s, level):
        if self.feed == "raw":
            return s
        self.run = min(self.run, self.patience) + 1 if s > level else 0
        return s if self.run > self.patience else min(s, level)


def _rolling_zscore(stats, sigma, window, min_history, feed="raw", ddof=0):
    """Mean + sigma std (floored at 1e-6) of the previous `window` fed values."""
    history, out, fed = [], [], _Feed(feed, window)
    for s in stats:
        h = np.array(history[-window:])
        if len(h) >= min_history:
            std = np.sqrt(np.sum((h - h.mean()) ** 2) / max(len(h) - ddof, 1))
            c = h.mean() + sigma * max(std, 1e-6)
        else:
            c = s
        out.append(c)
        history.append(fed(s, c))
    return np.array(out)


def _ema_zscore(stats, sigma, decay, min_weight, std_floor=1e-6, feed="clipped"):
    """Bias-corrected EMA mean + sigma EMA std; the floor is raised to
    sqrt(float32 eps) * |mean|. The clipped feed cuts at the level from the
    first step, also before the bound applies (Lingvo's order)."""
    m = q = w = 0.0
    out, fed = [], _Feed(feed, 1.0 / (1.0 - decay))
    for s in stats:
        ww = max(w, 1e-6)
        mean = m / ww
        floor = max(std_floor, np.sqrt(np.finfo(np.float32).eps) * abs(mean))
        level = mean + sigma * np.sqrt(max(q / ww - mean**2, floor**2))
        out.append(level if w > min_weight else s)
        x = fed(s, level)
        m = decay * m + (1 - decay) * x
        q = decay * q + (1 - decay) * x * x
        w = decay * w + 1 - decay
    return np.array(out)


def _log_space(stats, inner, offset, floor):
    u = np.log(np.maximum(stats, floor) + offset)
    return np.exp(inner(u)) - offset


# NumPy loops of the registry's rules (tests/_cases.py RULES, same
# hyper-parameters), from the documented maths: the thresholds of the finite
# steps of a sequence, given those steps (a non-finite step never reaches a
# rule, nor advances a schedule).
NUMPY_RULES = {
    "float": lambda s: _refs.fixed(s, 1.0),
    "schedule": lambda s: np.interp(np.arange(len(s)), [0, 100], [2.0, 0.5]),
    "fixed": lambda s: _refs.fixed(s, 1.0),
    "scheduled": lambda s: 2.0 * 0.9 ** (np.arange(len(s)) / 10),
    "decaying": lambda s: _refs.decaying(s, 2.0, 0.9, 5, 0.1),
    "moving_average": lambda s: _refs.moving_average(s, 1.5, 4),
    "ema": lambda s: _refs.ema(s, 1.5, 0.9, 2),
    "ema_raw": lambda s: _refs.ema(s, 1.5, 0.9, feed="raw"),
    "percentile": lambda s: _paper_refs.window_percentile(s, 50.0, 4),
    "zscore": lambda s: _paper_refs.zclip(s, 0.9, 1.5, 3, max_grad_norm=None)[1],
    "quantile": lambda s: _paper_refs.quantile(s, 0.5, 0.2, 2.0),
    "rolling_zscore": lambda s: _rolling_zscore(s, 2.0, 4, 2),
    "rolling_zscore_clipped": lambda s: _rolling_zscore(s, 1.5, 5, 2, "clipped", ddof=1),
    "ema_zscore": lambda s: _ema_zscore(s, 2.0, 0.9, 0.3, feed="raw"),
    "log_space": lambda s: _log_space(s, lambda u: _ema_zscore(u, 3.0, 0.9, 0.0), 1.0, 1e-2),
}


@pytest.mark.parametrize("name", names("rule"))
def test_replay_equals_global_norm_training(name):
    norms = _norms()
    grads = [jnp.array([n, 0.0], jnp.float32) for n in norms]  # global norm = n
    make_rule = CASES[name].rule
    m = _train_metrics(adaclip.clip_by_global_norm(make_rule()), grads)
    rule = make_rule()
    trace = jax.jit(lambda s: adaclip.replay(rule, s))(norms)
    _check_against_metrics(trace, m, norms)
    # Both run adaclip's step_rule: check them against an independent loop
    # (atol: log_space's float32 exp(T) - 1 at thresholds near 1e-5).
    finite = np.isfinite(norms)
    want = NUMPY_RULES[name.split("-", 1)[1]](norms[finite].astype(np.float64))
    for got in (np.asarray(trace.threshold), m["threshold"]):
        np.testing.assert_allclose(got[finite], want, rtol=1e-4, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("rule_name", ["ema", "moving_average", "decaying", "float"])
def test_replay_equals_leaf_norm_training(rule_name):
    norms = np.stack([_norms(seed=1), _norms(seed=2, nan_steps=(3,), inf_steps=())], axis=1)
    grads = [{"a": jnp.array([-a]), "b": jnp.array([b, 0.0])} for a, b in norms]
    make_rule = RULES[rule_name][0]
    m = _train_metrics(adaclip.clip_by_leaf_norm(make_rule()), grads)
    trace = adaclip.replay(make_rule(), norms)
    assert trace.threshold.shape == norms.shape
    assert trace.finite.shape == (len(norms),)
    _check_against_metrics(trace, m, norms)
    # And against the NumPy loop, one per leaf, over the steps on which every
    # leaf is finite (a step with a non-finite leaf is non-finite as a whole).
    finite = np.isfinite(norms).all(axis=1)
    for j in range(norms.shape[1]):
        want = NUMPY_RULES[rule_name](norms[finite, j].astype(np.float64))
        np.testing.assert_allclose(np.asarray(trace.threshold)[finite, j], want, rtol=1e-4)


def test_replay_equals_value_clipping_training():
    norms = _norms(seed=3)
    grads = [jnp.array([0.5 * n, -n], jnp.float32) for n in norms]  # max |g| = n
    m = _train_metrics(adaclip.clip_by_value(adaclip.ema(1.5, 0.9)), grads)
    _check_against_metrics(adaclip.replay(adaclip.ema(1.5, 0.9), norms), m, norms)
    finite = np.isfinite(norms)
    want = _refs.ema(norms[finite].astype(np.float64), 1.5, 0.9)
    np.testing.assert_allclose(m["threshold"][finite], want, rtol=1e-4)


def test_nonfinite_step_keeps_previous_threshold_and_is_not_clipped():
    norms = np.array([np.nan, 1.0, 1.0, 50.0, np.nan, np.inf, 1.0], np.float32)
    trace = adaclip.replay(adaclip.ema(2.0, 0.5), norms)
    thr = np.asarray(trace.threshold)
    assert thr[0] == 0.0  # no finite step yet: the clipper's initial threshold
    assert thr[4] == thr[3] and thr[5] == thr[3]
    np.testing.assert_array_equal(
        np.asarray(trace.clipped), [False, False, False, True, False, False, False]
    )
    assert np.isnan(trace.clipped_statistic[4]) and np.isinf(trace.clipped_statistic[5])
    # The NaN steps never entered the rule: same as replaying without them.
    clean = adaclip.replay(adaclip.ema(2.0, 0.5), norms[[1, 2, 3, 6]])
    np.testing.assert_allclose(thr[[1, 2, 3, 6]], clean.threshold, rtol=1e-6)
    want = _refs.ema(norms[[1, 2, 3, 6]].astype(np.float64), 2.0, 0.5)
    np.testing.assert_allclose(thr[[1, 2, 3, 6]], want, rtol=1e-6)


@pytest.mark.parametrize(
    "rule, ref",
    [
        (adaclip.ema(2.0, 0.9, warmup_steps=3), lambda s: _refs.ema(s, 2.0, 0.9, 3)),
        (adaclip.ema(1.5, 0.99, feed="raw"), lambda s: _refs.ema(s, 1.5, 0.99, feed="raw")),
        (adaclip.moving_average(1.5, 5), lambda s: _refs.moving_average(s, 1.5, 5)),
        (adaclip.decaying(3.0, 0.9, floor=0.5), lambda s: _refs.decaying(s, 3.0, 0.9, 1, 0.5)),
    ],
)
def test_replay_matches_numpy_reference(rule, ref):
    norms = _norms(nan_steps=(), inf_steps=()).astype(np.float64)
    trace = adaclip.replay(rule, norms)
    expected = ref(norms)
    np.testing.assert_allclose(trace.threshold, expected, rtol=2e-5)
    np.testing.assert_array_equal(trace.clipped, norms.astype(np.float32) > trace.threshold)
    np.testing.assert_allclose(trace.clipped_statistic, np.minimum(norms, expected), rtol=2e-5)


def test_vmap_over_hyperparameters_equals_one_by_one():
    norms = _norms()
    mults = jnp.array([1.2, 1.5, 2.0, 3.0, 1.2, 2.0])
    decays = jnp.array([0.9, 0.9, 0.95, 0.99, 0.5, 0.0])
    warm = jnp.array([0, 1, 2, 5, 0, 3], jnp.int32)

    @jax.jit
    def grid(m, d, w):
        return jax.vmap(lambda m, d, w: adaclip.replay(adaclip.ema(m, d, warmup_steps=w), norms))(
            m, d, w
        )

    batched = grid(mults, decays, warm)
    assert batched.threshold.shape == (6, len(norms))
    for i in range(6):
        one = adaclip.replay(
            adaclip.ema(float(mults[i]), float(decays[i]), warmup_steps=int(warm[i])), norms
        )
        np.testing.assert_allclose(batched.threshold[i], one.threshold, rtol=1e-6)
        np.testing.assert_array_equal(batched.clipped[i], one.clipped)
        # And against the NumPy reference on the finite steps.
        ok = np.isfinite(norms)
        ref = _refs.ema(
            norms[ok].astype(np.float64), float(mults[i]), float(decays[i]), int(warm[i])
        )
        np.testing.assert_allclose(np.asarray(one.threshold)[ok], ref, rtol=2e-5)


def test_replay_accepts_floats_and_schedules():
    norms = np.array([0.5, 2.0, 3.0], np.float32)
    np.testing.assert_array_equal(adaclip.replay(1.0, norms).clipped, [False, True, True])
    trace = adaclip.replay(lambda count: 1.0 + count.astype(jnp.float32), norms)
    np.testing.assert_allclose(trace.threshold, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("shape", [(), (2, 3, 4)])
def test_replay_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="1-D"):
        adaclip.replay(adaclip.fixed(1.0), np.ones(shape))


def test_replay_rejects_bad_rule():
    with pytest.raises(TypeError, match="rule"):
        adaclip.replay("ema", np.ones(3))
