"""adaclip.rolling_zscore against a NumPy loop of its documented semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaclip


def _reference(stats, sigma, window, min_history, feed="raw", ddof=0):
    """Threshold per step from the previous `window` finite fed values."""
    history, out = [], []
    for s in stats:
        h = np.array(history[-window:], np.float64)
        if len(h) >= min_history:
            std = np.sqrt(np.sum((h - h.mean()) ** 2) / max(len(h) - ddof, 1))
            c = h.mean() + sigma * max(std, 1e-6)
        else:
            c = s
        out.append(c if np.isfinite(s) else np.nan)
        if np.isfinite(s):
            history.append(min(s, c) if feed == "clipped" else s)
    return np.array(out)


def _replay(rule, stats):
    state = rule.init(jnp.zeros(()))
    out = []
    update = jax.jit(lambda s, st: adaclip._base.step_rule(rule, s, st))
    for s in stats:
        c, state, finite = update(jnp.float32(s), state)
        out.append(float(c) if bool(finite) else np.nan)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
    return np.array(out)


def _stats(seed, n=60):
    rng = np.random.default_rng(seed)
    s = np.abs(1.0 + 0.3 * rng.standard_normal(n))
    s[[10, 25, 40]] *= 8.0
    s[45:] *= 3.0
    s[[5, 33]] = np.nan
    s[20] = np.inf
    return s.astype(np.float32)


@pytest.mark.parametrize(
    "sigma,window,min_history,feed,ddof",
    [
        (2.0, 8, 4, "raw", 0),
        (1.5, 5, 2, "clipped", 0),
        (3.0, 12, None, "raw", 1),
        (1.0, 1, 1, "raw", 0),
    ],
)
def test_matches_numpy(sigma, window, min_history, feed, ddof):
    stats = _stats(0)
    rule = adaclip.rolling_zscore(sigma, window, min_history=min_history, feed=feed, ddof=ddof)
    expected = _reference(
        stats,
        sigma,
        window,
        max(window // 2, 2) if min_history is None else min_history,
        feed,
        ddof,
    )
    got = _replay(rule, stats)
    np.testing.assert_allclose(got, expected, rtol=2e-5, equal_nan=True)


def test_per_leaf_is_element_wise():
    """Three leaves with different scales: each entry follows its own window."""
    stats = np.stack([_stats(1), 10 * _stats(2), 0.1 * _stats(3)], axis=1)
    stats[~np.isfinite(stats).all(axis=1)] = np.nan  # a non-finite step is dropped whole
    rule = adaclip.rolling_zscore(2.0, 6, min_history=3)
    state = rule.init(jnp.zeros(3))
    expected = np.stack([_reference(stats[:, i], 2.0, 6, 3) for i in range(3)], axis=1)
    for s, e in zip(stats, expected, strict=True):
        c, state, finite = adaclip._base.step_rule(rule, jnp.asarray(s), state)
        if bool(finite):
            np.testing.assert_allclose(np.asarray(c), e, rtol=2e-5)


def test_no_bound_before_min_history_and_threshold_finite():
    rule = adaclip.rolling_zscore(2.0, 4, min_history=3)
    state = rule.init(jnp.zeros(()))
    for s in [5.0, 1e30, 0.0]:
        c, state = rule.update(jnp.float32(s), state)
        assert float(c) == float(np.float32(s))
    c, state = rule.update(jnp.float32(3e38), state)
    assert np.isfinite(float(c))


def test_injected_sigma_and_min_history_do_not_recompile():
    traces = []

    def make(sigma, min_history):
        return adaclip.clip_by_global_norm(
            adaclip.rolling_zscore(sigma, 6, min_history=min_history)
        )

    tx = optax.inject_hyperparams(make)(sigma=3.0, min_history=2)
    params = {"w": jnp.zeros(2)}

    def step(g, state):
        traces.append(1)
        return tx.update(g, state, params)

    step = jax.jit(step)
    results = []
    for sigma, min_history in [(3.0, 2), (0.1, 2), (3.0, 50)]:
        state = tx.init(params)
        state.hyperparams["sigma"] = state.hyperparams["sigma"] * 0.0 + sigma
        state.hyperparams["min_history"] = state.hyperparams["min_history"] * 0 + min_history
        for g in [1.0, 1.2, 0.9, 1.1, 1.3]:
            u, state = step({"w": jnp.array([g, 0.0])}, state)
        results.append(float(u["w"][0]))
    assert len(traces) == 1
    h = np.array([1.0, 1.2, 0.9, 1.1])
    np.testing.assert_allclose(results[0], 1.3, rtol=1e-6)  # within 3 std
    np.testing.assert_allclose(results[1], h.mean() + 0.1 * h.std(), rtol=1e-5)
    np.testing.assert_allclose(results[2], 1.3, rtol=1e-6)  # no bound yet
