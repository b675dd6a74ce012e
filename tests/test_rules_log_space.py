"""adaclip.log_space and adaclip.ema_zscore against NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaclip
from adaclip._base import step_rule


def _ema_zscore_ref(stats, sigma, decay, min_weight=0.0, floor=1e-6, feed="clipped"):
    m = q = w = 0.0
    out = []
    for s in stats.astype(np.float64):
        ww = max(w, 1e-6)
        mean = m / ww
        level = mean + sigma * np.sqrt(max(q / ww - mean**2, floor**2))
        out.append((level if w > min_weight else s) if np.isfinite(s) else np.nan)
        if np.isfinite(s):
            x = min(s, level) if feed == "clipped" else s
            m, q, w = (
                decay * m + (1 - decay) * x,
                decay * q + (1 - decay) * x * x,
                decay * w + 1 - decay,
            )
    return np.array(out)


def _replay(rule, stats):
    state = rule.init(jnp.zeros(np.shape(stats)[1:]))
    update = jax.jit(lambda s, st: step_rule(rule, s, st))
    out = []
    for s in stats:
        c, state, finite = update(jnp.asarray(s, jnp.float32), state)
        out.append(np.asarray(c) if bool(finite) else np.full(np.shape(s), np.nan))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
    return np.array(out)


def _stats(seed, n=80):
    rng = np.random.default_rng(seed)
    s = np.exp(0.3 * rng.standard_normal(n))
    s[[15, 40]] *= 10.0
    s[60:] *= 3.0
    s[[7, 50]] = np.nan
    return s.astype(np.float32)


@pytest.mark.parametrize(
    "sigma,decay,min_weight,feed", [(2.0, 0.9, 0.0, "raw"), (3.0, 0.8, 0.5, "clipped")]
)
def test_ema_zscore_matches_numpy(sigma, decay, min_weight, feed):
    stats = _stats(0)
    rule = adaclip.ema_zscore(sigma, decay, min_weight=min_weight, feed=feed)
    np.testing.assert_allclose(
        _replay(rule, stats),
        _ema_zscore_ref(stats, sigma, decay, min_weight, feed=feed),
        # E[x^2] - mean^2 in float32 (as Lingvo computes it) loses about
        # sqrt(eps) * mean of the std when the values are nearly equal.
        rtol=2e-3,
        equal_nan=True,
    )


def test_log_space_maps_the_inner_threshold_back():
    """log_space(moving_average(1, 3)) bounds s_t by the geometric mean of the
    last three (statistics + offset), minus the offset, cutting exactly where
    the log statistic is above the inner bound."""
    stats = _stats(1)
    offset = 0.5
    rule = adaclip.log_space(adaclip.moving_average(1.2, 3), offset=offset)
    got = _replay(rule, stats)
    history = []
    for s, c in zip(stats, got, strict=True):
        if not np.isfinite(s):
            continue
        u = np.log(s + offset)
        if history:
            t = 1.2 * np.mean(history[-3:])
            if t < u:
                assert c < s
            else:
                assert c >= s
            if abs(t - u) > 1e-4:
                np.testing.assert_allclose(c, np.exp(t) - offset, rtol=1e-4)
        else:
            assert c == s
        history.append(u)


def test_zero_statistics_never_put_minus_inf_into_the_state():
    rule = adaclip.log_space(adaclip.ema_zscore(2.0, 0.9, feed="raw"))
    stats = np.array([0.0, 0.0, 1.0, 0.0, 2.0, 0.0], np.float32)
    got = _replay(rule, stats)
    assert np.isfinite(got).all() and (got >= 0).all()
    tx = adaclip.clip_by_global_norm(rule)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    for g in stats:
        u, state = tx.update({"w": jnp.array([g, 0.0])}, state, params)
        assert np.isfinite(np.asarray(u["w"])).all()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def test_floor_decides_on_the_floored_statistic():
    """A statistic below the floor is tested as the floor: once the inner
    bound maps back below the floor, every nonzero statistic is cut."""
    rule = adaclip.log_space(adaclip.fixed(np.log(1.02)), offset=1.0, floor=0.05)
    c, _ = rule.update(jnp.float32(0.01), rule.init(jnp.zeros(())))
    assert float(c) < 0.01
    rule = adaclip.log_space(adaclip.fixed(np.log(1.1)), offset=1.0, floor=0.05)
    c, _ = rule.update(jnp.float32(0.01), rule.init(jnp.zeros(())))
    np.testing.assert_allclose(float(c), 0.1, rtol=1e-5)


def test_injected_offset_sigma_decay_do_not_recompile():
    traces = []

    def make(sigma, decay, offset):
        return adaclip.clip_by_global_norm(
            adaclip.log_space(
                adaclip.ema_zscore(sigma, decay, min_weight=0.0, feed="raw"), offset=offset
            )
        )

    tx = optax.inject_hyperparams(make)(sigma=3.0, decay=0.9, offset=1.0)
    params = {"w": jnp.zeros(1)}

    def step(g, state):
        traces.append(1)
        return tx.update(g, state, params)

    step = jax.jit(step)
    out = []
    for values in [dict(sigma=3.0, decay=0.9, offset=1.0), dict(sigma=0.5, decay=0.5, offset=0.0)]:
        state = tx.init(params)
        for k, v in values.items():
            state.hyperparams[k] = state.hyperparams[k] * 0.0 + v
        for g in [1.0, 1.5, 0.8, 1.2, 4.0]:
            u, state = step({"w": jnp.array([g])}, state)
        out.append(float(u["w"][0]))
        ref = _ema_zscore_ref(
            np.log(np.array([1.0, 1.5, 0.8, 1.2, 4.0]) + values["offset"]),
            values["sigma"],
            values["decay"],
            feed="raw",
        )[-1]
        np.testing.assert_allclose(out[-1], min(4.0, np.exp(ref) - values["offset"]), rtol=1e-4)
    assert len(traces) == 1 and out[0] != out[1]
