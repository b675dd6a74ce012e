"""Each core rule, run through a real clipper, against a plain NumPy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _refs import decaying, ema, fixed, moving_average
from _standard import schedule

import adaclip


def _trace(n=300, seed=0):
    """Norms with noise, spikes, a level shift, a decay and a few zeros."""
    rng = np.random.default_rng(seed)
    s = np.exp(rng.normal(0.0, 0.3, n))
    s[n // 3 :] *= 10.0  # level shift up
    s[2 * n // 3 :] *= np.geomspace(1.0, 1e-2, n - 2 * n // 3)  # decay
    s[rng.choice(n, 12, replace=False)] *= 50.0  # spikes
    s[[5, n // 2, n // 2 + 1]] = 0.0
    return s.astype(np.float32)


def _run(rule, stats):
    """Feeds 1-element gradients whose norm is |stat| through the clipper."""
    tx = adaclip.clip_by_global_norm(rule)
    state = tx.init(jnp.zeros(1))

    def body(state, s):
        g = jnp.reshape(s, (1,))
        out, state = tx.update(g, state)
        return state, (state.threshold, jnp.abs(out[0]), state.clipped)

    _, (thr, out, clipped) = jax.jit(lambda st: jax.lax.scan(body, st, stats))(state)
    return np.asarray(thr), np.asarray(out), np.asarray(clipped)


CASES = {
    "fixed": (lambda: adaclip.fixed(3.0), lambda s: fixed(s, 3.0)),
    "float": (lambda: 3.0, lambda s: fixed(s, 3.0)),
    "decaying": (
        lambda: adaclip.decaying(20.0, 0.5, transition_steps=40, floor=0.7),
        lambda s: decaying(s, 20.0, 0.5, 40, 0.7),
    ),
    "schedule": (
        lambda: schedule(optax.linear_schedule(10.0, 1.0, 200)),
        lambda s: np.interp(np.arange(len(s)), [0, 200], [10.0, 1.0]),
    ),
    "moving_average": (
        lambda: adaclip.moving_average(2.0, 10),
        lambda s: moving_average(s, 2.0, 10),
    ),
    "moving_average_clipped": (
        lambda: adaclip.moving_average(1.5, 7, feed="clipped"),
        lambda s: moving_average(s, 1.5, 7, feed="clipped"),
    ),
    "moving_average_window1": (
        lambda: adaclip.moving_average(1.0, 1),
        lambda s: moving_average(s, 1.0, 1),
    ),
    "ema_clipped": (
        lambda: adaclip.ema(2.0, 0.95, warmup_steps=10),
        lambda s: ema(s, 2.0, 0.95, 10, "clipped"),
    ),
    "ema_raw": (
        lambda: adaclip.ema(3.0, 0.99, feed="raw"),
        lambda s: ema(s, 3.0, 0.99, 0, "raw"),
    ),
    "ema_decay0": (
        lambda: adaclip.ema(1.2, 0.0, feed="raw"),
        lambda s: ema(s, 1.2, 0.0, 0, "raw"),
    ),
    "ema_slow": (
        lambda: adaclip.ema(2.0, 0.9999),
        lambda s: ema(s, 2.0, 0.9999, 0, "clipped"),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_matches_numpy_loop(name):
    make, ref = CASES[name]
    stats = _trace()
    thr, out, clipped = _run(make(), stats)
    want = ref(stats.astype(np.float64))
    np.testing.assert_allclose(thr, want, rtol=2e-5, atol=1e-6)
    # Post-clip norm is min(stat, threshold); clipped iff stat > threshold.
    np.testing.assert_allclose(out, np.minimum(stats, want), rtol=2e-5, atol=1e-6)
    decided = np.abs(stats - want) > 1e-4 * np.maximum(stats, 1e-6)
    np.testing.assert_array_equal(clipped[decided], (stats > want)[decided])


@pytest.mark.parametrize("name", ["moving_average", "ema_clipped", "decaying"])
def test_rule_is_elementwise_over_leaves(name):
    """With per-leaf clipping each leaf follows its own 1-D reference."""
    make, ref = CASES[name]
    a, b = _trace(seed=1), 3.0 * _trace(seed=2)
    tx = adaclip.clip_by_leaf_norm(make())
    grads0 = {"a": jnp.zeros(1), "b": jnp.zeros(1)}
    state = tx.init(grads0)
    update = jax.jit(tx.update)
    thr = []
    for sa, sb in zip(a, b, strict=True):
        _, state = update({"a": jnp.array([sa]), "b": jnp.array([-sb])}, state)
        thr.append(np.asarray(state.threshold))
    thr = np.array(thr)
    np.testing.assert_allclose(thr[:, 0], ref(a.astype(np.float64)), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(thr[:, 1], ref(b.astype(np.float64)), rtol=2e-5, atol=1e-6)


def test_clip_by_value_rule_sees_max_abs():
    stats = _trace(100)
    tx = adaclip.clip_by_value(adaclip.moving_average(2.0, 5))
    params = jnp.zeros(3)
    state = tx.init(params)
    update = jax.jit(tx.update)
    want = moving_average(stats.astype(np.float64), 2.0, 5)
    for t, s in enumerate(stats):
        g = jnp.array([0.1 * s, -s, 0.5 * s], jnp.float32)
        out, state = update(g, state)
        np.testing.assert_allclose(state.norm, s, rtol=1e-6)
        np.testing.assert_allclose(state.threshold, want[t], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(out, np.clip(np.asarray(g), -want[t], want[t]), rtol=2e-5)


def test_fixed_equals_optax_clip_by_global_norm():
    key = jax.random.PRNGKey(0)
    params = {"a": jnp.zeros((5, 7)), "b": [jnp.zeros(3), jnp.zeros((2, 2, 2))]}
    ours = adaclip.clip_by_global_norm(1.5)
    theirs = optax.clip_by_global_norm(1.5)
    s1, s2 = ours.init(params), theirs.init(params)
    for step in range(200):
        key, sub = jax.random.split(key)
        scale = float(np.exp(np.sin(step) * 3))
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(sub, len(leaves))
        grads = treedef.unflatten(
            [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
        )
        u1, s1 = ours.update(grads, s1)
        u2, s2 = theirs.update(grads, s2)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=0), u1, u2)
    assert 0.0 < float(s1.clip_rate) < 1.0


def test_clip_rate_counts_finite_steps():
    tx = adaclip.clip_by_global_norm(1.0)
    state = tx.init(jnp.zeros(1))
    seq = [0.5, 2.0, np.nan, 3.0, 0.1, np.inf, 0.2, 5.0]
    for s in seq:
        _, state = tx.update(jnp.array([s], jnp.float32), state)
    finite = [s for s in seq if np.isfinite(s)]
    assert int(state.nonfinite_count) == 2
    assert int(state.count) == len(seq)
    np.testing.assert_allclose(state.clip_rate, np.mean([s > 1.0 for s in finite]), rtol=1e-6)
