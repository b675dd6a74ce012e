"""Gradient accumulation: optax.MultiSteps with k micro-batches clips exactly
as one step on the big batch, and the clip statistics advance once per real
step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cases import make, names
from _standard import multi_steps

import adaclip
from adaclip._find import clip_states

K = 3  # micro-batches per real step
MICRO = 4  # examples per micro-batch
REAL_STEPS = 10


def _loss(params, x, y):
    pred = x @ params["w"] + params["b"][None, :]
    return jnp.mean(jnp.square(pred - y))


_grad = jax.jit(jax.grad(_loss))


def _batch(step):
    """A big batch of K * MICRO examples; loss spikes at steps 7 and 9 (after
    every warm-up in the registry, so the spike-detecting rules fire)."""
    rng = np.random.default_rng(step)
    x = rng.standard_normal((K * MICRO, 5)).astype(np.float32)
    y = rng.standard_normal((K * MICRO, 2)).astype(np.float32)
    if step in (7, 9):
        y *= 40.0
    return x, y


def _params():
    return {"w": jnp.full((5, 2), 0.1, jnp.float32), "b": jnp.zeros((2,), jnp.float32)}


def _clip_state(opt_state):
    (found,) = clip_states(opt_state)  # the library's one finder
    return found


@pytest.mark.parametrize("name", names("scale"))
def test_k_micro_batches_clip_like_one_big_batch(name):
    """Per real step: MultiSteps over K micro-batch gradients gives the same
    update, the same parameters and the same clip metrics (norm, threshold,
    clipped) as one step on the big batch's gradient (float32 rtol 1e-5);
    the clip's statistic is the big batch's gradient norm; between real steps
    the clip state does not move, and its step counts equal the real steps."""
    big = optax.chain(make(name), optax.sgd(0.1))
    multi = multi_steps(optax.chain(make(name), optax.sgd(0.1)), every_k_schedule=K)
    p_big, p_multi = _params(), _params()
    s_big, s_multi = big.init(p_big), multi.init(p_multi)
    big_update, multi_update = jax.jit(big.update), jax.jit(multi.update)

    for step in range(REAL_STEPS):
        x, y = _batch(step)
        g_big = _grad(p_big, x, y)
        u_big, s_big = big_update(g_big, s_big, p_big)
        p_big = optax.apply_updates(p_big, u_big)

        for j in range(K):
            before = _clip_state(s_multi)
            sl = slice(j * MICRO, (j + 1) * MICRO)
            g = _grad(p_multi, x[sl], y[sl])
            u, s_multi = multi_update(g, s_multi, p_multi)
            p_multi = optax.apply_updates(p_multi, u)
            after = _clip_state(s_multi)
            if j < K - 1:  # not a real step: the statistics stand still
                for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
                    np.testing.assert_array_equal(a, b)
                assert all(not np.any(leaf) for leaf in jax.tree.leaves(u))

        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), u, u_big)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p_multi, p_big
        )
        m_big, m_multi = adaclip.metrics(s_big), adaclip.metrics(s_multi)
        # A second-moment ratio g^2 / v doubles g's relative rounding and adds v's.
        rtol = 4e-5 if name.startswith("moment-") else 1e-5
        np.testing.assert_allclose(m_multi["norm"], m_big["norm"], rtol=rtol)
        np.testing.assert_allclose(m_multi["threshold"], m_big["threshold"], rtol=rtol)
        np.testing.assert_array_equal(m_multi["clipped"], m_big["clipped"])
        if name.startswith("global-"):
            leaves = [np.asarray(v, np.float64) for v in jax.tree.leaves(g_big)]
            expected = np.sqrt(sum(np.sum(v**2) for v in leaves))
            np.testing.assert_allclose(m_multi["norm"], expected, rtol=1e-5)
        assert int(_clip_state(s_multi).count) == step + 1
        assert int(_clip_state(s_big).count) == step + 1
    # Adaptive rules had something to do: some step was clipped.
    assert float(np.max(adaclip.metrics(s_multi)["clip_rate"])) > 0.0


def test_rule_counters_advance_once_per_real_step():
    """A window rule's ring buffer holds exactly one entry per real step: the
    norms of the accumulated gradients, in order."""
    multi = multi_steps(
        adaclip.clip_by_global_norm(adaclip.moving_average(100.0, 8)), every_k_schedule=K
    )
    params = _params()
    state = multi.init(params)
    update = jax.jit(multi.update)
    expected = []
    for step in range(5):
        x, y = _batch(step)
        flat = [np.ravel(v) for v in jax.tree.leaves(_grad(params, x, y))]
        expected.append(np.linalg.norm(np.concatenate(flat)))
        for j in range(K):
            sl = slice(j * MICRO, (j + 1) * MICRO)
            _, state = update(_grad(params, x[sl], y[sl]), state, params)
    window = _clip_state(state).rule_state
    assert int(window.count) == 5
    np.testing.assert_allclose(window.buffer[:5], expected, rtol=1e-5)
    np.testing.assert_array_equal(window.buffer[5:], 0.0)
