"""Tests written to kill mutants that every other test let live (benchmarks/mutation.py).

Each compares with an independent reference: plain jnp/NumPy formulas (with
JAX's own derivative rules for ``jnp.max``, ``jnp.clip``) or central finite
differences in float64, never with adaclip's own output.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaclip

# A rule whose threshold is half the statistic: the clip bound then depends on
# max |g|, so the derivative of the clipped gradient runs through the
# statistic's tangent (with a fixed threshold it never does).
HALF = adaclip.ThresholdRule(
    init=lambda stat: jnp.zeros_like(stat), update=lambda stat, s: (0.5 * stat, s)
)
GRADS = {"a": jnp.array([3.0, -1.0, 0.2]), "b": jnp.array([[0.5, -2.0], [1.75, 0.0]])}
WEIGHTS = {"a": jnp.array([0.3, -1.1, 2.0]), "b": jnp.array([[0.7, 1.3], [-0.4, 0.9]])}


def _ours(grads):
    tx = adaclip.clip_by_value(HALF)
    updates, _ = tx.update(grads, tx.init(grads))
    return sum(
        jnp.sum(w * u)
        for w, u in zip(jax.tree.leaves(WEIGHTS), jax.tree.leaves(updates), strict=True)
    )


def _reference(grads):
    """jnp's own max and clip: c = max|g| / 2, g <- clip(g, -c, c)."""
    c = 0.5 * jnp.max(jnp.concatenate([jnp.abs(g).reshape(-1) for g in jax.tree.leaves(grads)]))
    return sum(
        jnp.sum(w * jnp.clip(g, -c, c))
        for w, g in zip(jax.tree.leaves(WEIGHTS), jax.tree.leaves(grads), strict=True)
    )


def _finite_difference(grads, eps=1e-6):
    """Central differences of the same formula in float64 NumPy."""
    flat = np.concatenate([np.asarray(g, np.float64).reshape(-1) for g in jax.tree.leaves(grads)])
    w = np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in jax.tree.leaves(WEIGHTS)])

    def f(x):
        c = 0.5 * np.max(np.abs(x))
        return np.sum(w * np.clip(x, -c, c))

    out = np.empty_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = eps
        out[i] = (f(flat + e) - f(flat - e)) / (2 * eps)
    return out


@pytest.mark.parametrize("jit", [False, True])
def test_value_clipper_gradient_runs_through_the_max_abs_tangent(jit):
    grad = jax.grad(_ours)
    if jit:
        grad = jax.jit(grad)
    ours = np.concatenate([np.asarray(g).reshape(-1) for g in jax.tree.leaves(grad(GRADS))])
    ref = np.concatenate(
        [np.asarray(g).reshape(-1) for g in jax.tree.leaves(jax.grad(_reference)(GRADS))]
    )
    fd = _finite_difference(GRADS)
    np.testing.assert_allclose(ref, fd, rtol=1e-5, atol=1e-6)  # the reference itself
    np.testing.assert_allclose(ours, fd, rtol=1e-5, atol=1e-6)
    # The largest element (3.0) carries the threshold's share: not zero.
    assert abs(ours[0]) > 0.1


def test_value_clipper_forward_mode_runs_through_the_max_abs_tangent():
    tangents = jax.tree.map(lambda g: jnp.linspace(-1.0, 1.0, g.size).reshape(g.shape), GRADS)
    _, ours = jax.jvp(_ours, (GRADS,), (tangents,))
    _, ref = jax.jvp(_reference, (GRADS,), (tangents,))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert abs(float(ref)) > 0.1


def test_max_abs_tangent_of_a_negative_maximum_and_of_ties():
    """d max|g| for a negative extreme element (sign) and a tie (averaged, as jnp.max)."""

    def stat(grads):
        tx = adaclip.clip_by_value(HALF)
        _, state = tx.update(grads, tx.init(grads))
        return state.norm

    def ref(grads):
        return jnp.max(jnp.concatenate([jnp.abs(g).reshape(-1) for g in jax.tree.leaves(grads)]))

    for grads in (
        {"a": jnp.array([-4.0, 1.0]), "b": jnp.array([2.0])},
        {"a": jnp.array([-4.0, 1.0]), "b": jnp.array([4.0])},
        {"a": jnp.array([4.0, 4.0, -4.0]), "b": jnp.array([0.5])},
    ):
        ours = jax.grad(stat)(grads)
        want = jax.grad(ref)(grads)
        for o, w in zip(jax.tree.leaves(ours), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(o, w, rtol=1e-6)


# ---------------------------------------------------------------------------
# The clipped feed's patience (adaclip._base.feed_step, documented there and in
# each rule's ``feed`` argument): an entry cut on each of the last ``P`` steps,
# and cut again, is fed the raw statistic; ``P = ceil(8 * span)``, the span of
# an EMA being ``1 / (1 - decay)`` and of a window its length. No other test
# ran a cut long enough to reach it.


def _ema_patience_reference(stats, multiplier, decay, warmup_steps, patience):
    """The documented ema(feed="clipped") with the patience rule, float64 NumPy."""
    e, n, run, out = 0.0, 0, 0, []
    for s in stats:
        empty = e == 0.0  # a zero memory holds no scale: no bound, refill
        if n > 0 and n >= warmup_steps and not empty:
            c = multiplier * e / (1.0 - decay**n)
        else:
            c = s
        cut = s > c
        run = min(run, patience) + 1 if cut else 0
        x = s if run > patience else min(s, c)
        n += 1
        e = x * (1.0 - decay**n) if (empty and n > 1) else decay * e + (1.0 - decay) * x
        out.append(c)
    return np.array(out)


def _window_patience_reference(stats, multiplier, window, patience):
    """The documented moving_average(feed="clipped") with the patience rule."""
    history, run, out = [], 0, []
    for s in stats:
        held = history[-window:]
        empty = not any(h != 0 for h in held)
        c = s if empty else multiplier * np.mean(held)
        cut = s > c
        run = min(run, patience) + 1 if cut else 0
        x = s if run > patience else min(s, c)
        if empty and held:  # an all-zero window takes x as its whole memory
            history[-len(held) :] = [x] * len(held)
        history.append(x)
        out.append(c)
    return np.array(out)


def _thresholds(rule, stats):
    """Thresholds of clip_by_global_norm(rule) over 1-element gradients, jit + scan."""
    tx = adaclip.clip_by_global_norm(rule)

    def body(state, s):
        _, state = tx.update(jnp.reshape(s, (1,)), state)
        return state, state.threshold

    run = jax.jit(lambda st, xs: jax.lax.scan(body, st, xs), donate_argnums=0)
    return np.asarray(run(tx.init(jnp.zeros(1)), jnp.asarray(stats, jnp.float32))[1])


@pytest.mark.parametrize("decay", [0.5, 0.75])
def test_ema_multiplier_below_one_switches_to_raw_after_patience(decay):
    # A multiplier below 1 cuts a constant statistic on every step: after
    # P = ceil(8 / (1 - decay)) cut steps the raw statistic enters.
    stats = np.ones(120)
    patience = int(np.ceil(8.0 / (1.0 - decay)))
    ref = _ema_patience_reference(stats, 0.5, decay, 0, patience)
    np.testing.assert_allclose(_thresholds(adaclip.ema(0.5, decay), stats), ref, rtol=2e-5)
    # The reference itself: the threshold shrinks until step P + 1, then jumps.
    assert ref[patience + 1] < 0.2 < ref[patience + 3]


def test_ema_spike_at_the_end_of_a_long_warmup_is_clipped_in_the_feed():
    # During the warm-up the threshold is the statistic itself: no step is
    # cut, so the run counter stays 0 and a spike on the first bounded step
    # enters the EMA clipped (a warm-up longer than the patience, P = 16).
    rng = np.random.default_rng(0)
    stats = np.exp(rng.normal(0.0, 0.1, 60))
    stats[30] = 100.0
    ref = _ema_patience_reference(stats, 2.0, 0.5, 30, 16)
    ours = _thresholds(adaclip.ema(2.0, 0.5, warmup_steps=30), stats)
    np.testing.assert_allclose(ours, ref, rtol=2e-5)
    assert ref[31] < 5.0  # the spike stayed out of the memory


@pytest.mark.parametrize("window", [1, 3])
def test_moving_average_multiplier_below_one_switches_to_raw_after_patience(window):
    stats = np.ones(80)
    ref = _window_patience_reference(stats, 0.5, window, 8 * window)
    np.testing.assert_allclose(
        _thresholds(adaclip.moving_average(0.5, window, feed="clipped"), stats), ref, rtol=2e-5
    )


# ---------------------------------------------------------------------------
# Documented defaults (DESIGN.md's signatures, the docstrings), each against a
# NumPy loop of the documented formula with the default written out.


def _outputs(rule, stats):
    """Norms of the clipped 1-element gradients and the clipped flags."""
    tx = adaclip.clip_by_global_norm(rule)

    def body(state, s):
        out, state = tx.update(jnp.reshape(s, (1,)), state)
        return state, (jnp.abs(out[0]), state.clipped, state.threshold)

    run = jax.jit(lambda st, xs: jax.lax.scan(body, st, xs), donate_argnums=0)
    _, (out, clipped, thr) = run(tx.init(jnp.zeros(1)), jnp.asarray(stats, jnp.float32))
    return np.asarray(out), np.asarray(clipped), np.asarray(thr)


def _quantile_reference(stats, target, eta=0.2, initial=1.0):
    """Andrew et al.: c_t = C_t; b = 1[s <= C]; C <- C exp(-eta (b - q))."""
    c, out = initial, []
    for s in stats:
        out.append(c)
        c = c * np.exp(-eta * ((1.0 if s <= c else 0.0) - target))
    return np.array(out)


def test_quantile_defaults_and_a_statistic_equal_to_the_estimate():
    # learning_rate=0.2 and initial=1.0 by default; s_0 = C_0 = 1 exactly
    # counts as below (b = 1[s <= C]), and so do the later equal steps.
    stats = np.array([1.0, 3.0, 0.25, 2.0, 1.0, 0.5, 4.0, 0.1, 1.0, 2.5])
    _, _, thr = _outputs(adaclip.quantile(0.5), stats)
    np.testing.assert_allclose(thr, _quantile_reference(stats, 0.5), rtol=1e-6)
    _, _, thr = _outputs(adaclip.quantile(0.3), np.ones(6))
    np.testing.assert_allclose(thr, _quantile_reference(np.ones(6), 0.3), rtol=1e-6)


# A hand-written inner rule: the bound on u_t is u_{t-1} (0 at the first step).
PREVIOUS = adaclip.ThresholdRule(init=lambda u: jnp.zeros_like(u), update=lambda u, prev: (prev, u))


def test_log_space_defaults_offset_and_floor_zero():
    # log_space(rule) with offset o = 0 and floor f = 0: u = log(max(s, f) + o),
    # the statistic is cut where T < u, down to c = e^T - o.
    stats = np.array([0.5, 2.0, 3.5, 0.2, 0.69, 10.0, 0.05, 0.3, 0.6, 1.5])
    out, clipped, _ = _outputs(adaclip.log_space(PREVIOUS), stats)
    u = np.log(stats)
    bound = np.concatenate([[0.0], u[:-1]])
    cut = bound < u
    np.testing.assert_array_equal(clipped, cut)
    np.testing.assert_allclose(out, np.where(cut, np.exp(bound), stats), rtol=1e-5)


def test_decaying_defaults_transition_one_step_floor_zero():
    stats = np.full(12, 3.0)
    _, _, thr = _outputs(adaclip.decaying(8.0, 0.5), stats)
    np.testing.assert_allclose(thr, 8.0 * 0.5 ** np.arange(12), rtol=1e-6)


def test_ema_zero_start_takes_the_first_nonzero_statistic_as_its_history():
    # A clipped-feed EMA whose memory is 0 sets no bound and refills with its
    # first nonzero statistic (debiased mean = that statistic).
    rng = np.random.default_rng(1)
    stats = np.concatenate([np.zeros(4), np.exp(rng.normal(0.0, 0.2, 30))])
    stats[20] = 50.0
    for decay in (0.9, 0.5):
        ref = _ema_patience_reference(stats, 2.0, decay, 0, int(np.ceil(8.0 / (1.0 - decay))))
        np.testing.assert_allclose(_thresholds(adaclip.ema(2.0, decay), stats), ref, rtol=2e-5)


def test_rolling_zscore_with_a_history_of_one():
    # min_history=1: from the second step, mean + sigma * max(std, 1e-6) of
    # the previous (up to) `window` statistics, population std (ddof=0).
    rng = np.random.default_rng(2)
    stats = np.exp(rng.normal(0.0, 0.5, 20))
    ref = [stats[0]]
    for t in range(1, len(stats)):
        h = stats[max(0, t - 4) : t]
        ref.append(h.mean() + 2.0 * max(h.std(), 1e-6))
    ours = _thresholds(adaclip.rolling_zscore(2.0, 4, min_history=1), stats)
    np.testing.assert_allclose(ours, np.minimum(ref, np.maximum(ref, stats)), rtol=2e-5)


@pytest.mark.parametrize("scale", [1e30, 1e20])
def test_unit_norms_of_huge_and_tiny_rows_equal_numpy(scale):
    # Columns whose sum of squares overflows float32 take the
    # rescaled fallback of _numerics.block_norms; float64 NumPy is the reference.
    g = np.array([[3.0, 4.0, 0.0], [1.0, -2.0, 2.0], [0.5, 0.0, 0.0]], np.float32) * scale
    threshold = 2.5 * scale
    tx = adaclip.clip_by_unit_norm(threshold, axis=0)
    out, state = jax.jit(tx.update)({"w": jnp.asarray(g)}, tx.init({"w": jnp.zeros((3, 3))}))
    norms = np.linalg.norm(g.astype(np.float64), axis=0, keepdims=True)  # axis: reduced
    want = g * np.minimum(1.0, threshold / norms)
    np.testing.assert_allclose(np.asarray(out["w"], np.float64), want, rtol=1e-5)


# ----------------------------------------------------------------------------
# _blocks: the axes a callable ``axis`` returns are checked at init, and a
# negative stack axis counts from the end as NumPy's does.


@pytest.mark.parametrize("bad", [1.5, (0.5,), (True,), "0"])
def test_callable_axis_of_a_wrong_type_fails_at_init_naming_axis(bad):
    tx = adaclip.clip_by_unit_norm(1.0, axis=lambda path, leaf: bad)
    with pytest.raises(TypeError, match=r"axis must be an int.*got"):
        tx.init({"w": jnp.zeros((3, 4))})


def test_negative_stack_axis_counts_from_the_end_like_numpy():
    g = np.arange(1.0, 13.0, dtype=np.float32).reshape(3, 4)
    params = {"layers": {"w": jnp.ones((3, 4))}}
    for stack_axis, kept in [(0, 0), (-2, 0), (1, 1), (-1, 1)]:
        tx = adaclip.clip_by_unit_norm(
            math.inf, axis=adaclip.stacked("layers", stack_axis=stack_axis)
        )
        _, state = tx.update({"layers": {"w": jnp.asarray(g)}}, tx.init(params))
        want = np.linalg.norm(g, axis=1 - kept)  # one norm per index of the stack axis
        np.testing.assert_allclose(adaclip.metrics(state, params)["norm/layers/w"], want, rtol=1e-6)
    with pytest.raises(ValueError, match="stack_axis -3"):
        tx = adaclip.clip_by_unit_norm(1.0, axis=adaclip.stacked("layers", stack_axis=-3))
        tx.init(params)
