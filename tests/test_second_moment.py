"""clip_by_second_moment and spam against independent references: a NumPy loop
of the clipping rule, optax.adam's own second moment, and a NumPy transcription
of the original SPAM optimizer (tests/_paper_refs.py)."""

import math

import _paper_refs as refs
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _standard import standard

import adaclip


def _spiky(steps, shape, seed, every=7, size=300.0):
    """Gaussian gradients with a spike of ``size`` on a few elements every ``every`` steps."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        g = rng.standard_normal(shape).astype(np.float32)
        if t % every == every - 1:
            flat = g.reshape(-1)
            flat[rng.integers(0, flat.size, 2)] *= size
        out.append(g)
    return out


def _reference_clip(grads, theta, b2, warmup, dtype=np.float64):
    """The rule, element by element: bound sqrt(theta v) where v > 0 after the warm-up."""
    v = np.zeros_like(grads[0], dtype)
    outs, stats, cuts = [], [], []
    for t, g in enumerate(grads):
        g = g.astype(dtype)
        ratio = np.where(v > 0, g * g / np.where(v > 0, v, 1.0), 0.0)
        cut = (t >= warmup) & (v > 0) & (g * g > theta * v)
        out = np.where(cut, np.sign(g) * np.sqrt(theta * v), g)
        v = b2 * v + (1 - b2) * out * out
        outs.append(out)
        stats.append(ratio.max())
        cuts.append(cut.any())
    return outs, np.array(stats), np.array(cuts)


def test_clip_matches_numpy_rule():
    theta, b2, warmup = 30.0, 0.9, 4
    grads = _spiky(40, (5, 3), 0, every=5, size=50.0)
    want, stats, cuts = _reference_clip(grads, theta, b2, warmup)
    tx = adaclip.clip_by_second_moment(theta, b2=b2, warmup_steps=warmup)
    state = tx.init(jnp.zeros((5, 3)))
    update = jax.jit(tx.update, donate_argnums=(1,))
    for t, g in enumerate(grads):
        out, state = update(jnp.asarray(g), state)
        np.testing.assert_allclose(out, want[t], rtol=2e-6, atol=1e-7)
        assert bool(state.clipped) == cuts[t], t
        np.testing.assert_allclose(float(state.norm), stats[t], rtol=1e-5)
        expected_threshold = theta if t >= warmup else stats[t]
        np.testing.assert_allclose(float(state.threshold), expected_threshold, rtol=1e-5)
    assert cuts.sum() >= 4  # the spikes were clipped
    np.testing.assert_allclose(float(state.clip_rate), cuts.mean(), rtol=1e-6)


@pytest.mark.parametrize("warmup", [0, 19])
def test_chain_before_adam_is_spams_rule_on_adams_nu(warmup):
    """Before optax.adam with the same b2, v is Adam's nu bit for bit, and each
    step's clip is SPAM's: g^2 > theta * nu (Adam's nu before the step) from
    step warmup + 1 on, replaced by sign(g) sqrt(theta nu)."""
    theta, b2 = 40.0, 0.99
    clip = adaclip.clip_by_second_moment(theta, b2=b2, warmup_steps=warmup)
    adam = standard(optax.adam(1e-2, b2=b2))
    tx = optax.chain(clip, adam)
    params = {"a": jnp.zeros((4, 3)), "b": jnp.zeros(5)}
    state = tx.init(params)

    @jax.jit
    def step(grads, state):
        # The chain's update, with the clipped gradient between its two parts.
        clipped, clip_state = clip.update(grads, state[0])
        _, adam_state = adam.update(clipped, state[1], params)
        return clipped, (clip_state, adam_state)

    ga, gb = _spiky(60, (4, 3), 1), _spiky(60, (5,), 2, every=9)
    n_cut = 0
    for t in range(60):
        grads = {"a": jnp.asarray(ga[t]), "b": jnp.asarray(gb[t])}
        nu_before = jax.tree.map(np.asarray, state[1][0].nu)
        clipped, state = step(grads, state)
        for k in grads:
            np.testing.assert_array_equal(state[0].rule_state.nu[k], state[1][0].nu[k])
            g = np.asarray(grads[k])
            cut = (t >= warmup) & (g * g > np.float32(theta) * nu_before[k])
            cut &= nu_before[k] > 0
            n_cut += cut.sum()
            np.testing.assert_array_equal(np.asarray(clipped[k]) != g, cut)
            want = np.where(cut, np.sign(g) * np.sqrt(np.float32(theta) * nu_before[k]), g)
            np.testing.assert_allclose(clipped[k], want, rtol=1e-6)
    assert n_cut >= 5


def _quadratic(dim_seed=0, spikes=True, dormant=False):
    """A noisy quadratic with rare spikes; with ``dormant``, one coordinate
    whose gradient is 0 for the first 30 steps."""
    rng = np.random.default_rng(dim_seed)
    a = rng.uniform(0.5, 2.0, (3, 4))
    b = rng.uniform(0.5, 2.0, (6,))
    noise = [(rng.standard_normal((3, 4)), rng.standard_normal(6)) for _ in range(400)]

    def grad_fn(params, t):
        w, c = params
        na, nb = noise[t - 1]
        gw = a * w + 0.3 * na
        gc = b * c + 0.3 * nb
        if spikes and t % 13 == 0:
            gw = gw.copy()
            gw[t % 3, t % 4] *= 500.0
        if dormant and t <= 30:
            gc = gc.copy()
            gc[0] = 0.0
        return [gw, gc]

    rng2 = np.random.default_rng(dim_seed + 100)
    params = [rng2.standard_normal((3, 4)), rng2.standard_normal(6)]
    params[1][0] = 0.7
    return params, grad_fn


def _run_spam(params, grad_fn, steps, dtype, **kw):
    opt = adaclip.spam(**kw)
    p = [jnp.asarray(x, dtype) for x in params]
    state = opt.init(p)

    @jax.jit
    def step(p, state, g):
        u, state = opt.update(g, state, p)
        return optax.apply_updates(p, u), state

    out = []
    for t in range(1, steps + 1):
        g = [jnp.asarray(x, dtype) for x in grad_fn([np.asarray(x) for x in p], t)]
        p, state = step(p, state, g)
        out.append([np.asarray(x) for x in p])
    return out, state


# The original's configuration, shrunk so that a few hundred steps cover
# several resets, ramps and warm-ups; and its defaults.
SMALL = dict(threshold=50, delta_t=40, grad_accu_steps=6, warmup_steps=15)


def _adaclip_kwargs(threshold, delta_t, grad_accu_steps, warmup_steps, lr, wd):
    return dict(
        learning_rate=lr,
        threshold=float(threshold),
        reset_interval=delta_t,
        warmup_steps=grad_accu_steps - 1,
        lr_ramp_steps=warmup_steps,
        weight_decay=wd,
    )


@pytest.mark.parametrize(
    "config, steps, wd",
    [
        (SMALL, 170, 0.0),
        (SMALL, 170, 0.05),
        (dict(threshold=5000, delta_t=500, grad_accu_steps=20, warmup_steps=150), 130, 0.0),
    ],
    ids=["small", "small-decay", "defaults"],
)
def test_spam_reproduces_original_trajectory_float32(config, steps, wd):
    params, live = _quadratic()
    want, masks = refs.spam(
        params, live, steps, lr=1e-2, weight_decay=wd, dtype=np.float32, **config
    )
    got, state = _run_spam(
        params, live, steps, jnp.float32, **_adaclip_kwargs(**config, lr=1e-2, wd=wd)
    )
    for t in range(steps):
        for x, y in zip(got[t], want[t], strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=f"step {t + 1}")
    n_clipped = sum(int(m.sum()) for step in masks for m in step)
    assert n_clipped >= 3, n_clipped  # the comparison covers clipped steps
    if config["delta_t"] < steps:
        assert int(state.count) == steps


def test_spam_reproduces_original_trajectory_x64():
    params, live = _quadratic(3)
    with jax.enable_x64(True):
        want, _ = refs.spam(params, live, 130, lr=1e-2, weight_decay=0.01, **SMALL)
        got, _ = _run_spam(
            params, live, 130, jnp.float64, **_adaclip_kwargs(**SMALL, lr=1e-2, wd=0.01)
        )
        assert got[-1][0].dtype == np.float64
    for t in range(130):
        for x, y in zip(got[t], want[t], strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-13, err_msg=f"step {t + 1}")


def test_dormant_weight_trains_where_the_original_freezes_it():
    """A weight whose gradient is 0 for the first 30 steps has v = 0 when its
    gradient arrives: the original clips it to sqrt(theta * 0) = 0 until the
    next momentum reset (forever without one); here it trains toward the minimum."""
    params, grad_fn = _quadratic(5, spikes=False, dormant=True)
    steps = 120
    config = dict(SMALL, delta_t=500)
    want, _ = refs.spam(params, grad_fn, steps, lr=1e-2, dtype=np.float32, **config)
    got, _ = _run_spam(
        params, grad_fn, steps, jnp.float32, **_adaclip_kwargs(**config, lr=1e-2, wd=0.0)
    )
    assert want[-1][1][0] == np.float32(0.7)  # frozen in the original
    assert abs(got[-1][1][0]) < 0.35  # trains here (its minimum is 0)
    # The clipper alone: a gradient that wakes after 30 zero steps passes.
    tx = adaclip.clip_by_second_moment(warmup_steps=0)
    state = tx.init(jnp.zeros(2))
    for _ in range(30):
        _, state = tx.update(jnp.array([1.0, 0.0]), state)
    out, state = tx.update(jnp.array([1.0, 2.0]), state)
    np.testing.assert_array_equal(out, [1.0, 2.0])
    assert float(state.rule_state.nu[1]) > 0


@pytest.mark.parametrize("nonfinite", ["skip", "propagate"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_gradient_never_reaches_the_moment(nonfinite, bad):
    b2 = 0.9
    tx = optax.chain(
        adaclip.clip_by_second_moment(5.0, b2=b2, warmup_steps=1, nonfinite=nonfinite),
        standard(optax.adam(1e-2, b2=b2)),
    )
    params = jnp.zeros(3)
    state = tx.init(params)
    for g in ([1.0, 2.0, 3.0], [1.5, -1.0, 2.0]):
        _, state = tx.update(jnp.array(g), state, params)
    before = state[0]
    updates, state = tx.update(jnp.array([bad, 100.0, 1.0]), state, params)
    clip = state[0]
    assert int(clip.nonfinite_count) == 1 and not bool(clip.clipped)
    for field in ("norm", "threshold", "clip_rate"):
        np.testing.assert_array_equal(getattr(clip, field), getattr(before, field))
    # v and the warm-up counter are as they were.
    np.testing.assert_array_equal(clip.rule_state.nu, before.rule_state.nu)
    assert int(clip.rule_state.count) == int(before.rule_state.count)
    if nonfinite == "skip":  # Adam stepped on a zero gradient: its momentum only
        assert bool(jnp.all(jnp.isfinite(updates)))
        np.testing.assert_array_equal(state[1][0].nu, np.float32(b2) * before.rule_state.nu)
    # The next finite step clips against the unpoisoned v.
    out, state = tx.update(jnp.array([1.0, 100.0, 1.0]), state, params)
    assert int(state[0].nonfinite_count) == 1
    assert bool(state[0].clipped)


def test_spam_nan_step_leaves_moments_finite():
    opt = adaclip.spam(1e-2, warmup_steps=0, threshold=10.0)
    params = {"w": jnp.ones(4)}
    state = opt.init(params)
    for t in range(5):
        g = jnp.full(4, jnp.nan) if t == 2 else jnp.arange(4.0) + t
        updates, state = opt.update({"w": g}, state, params)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
        assert bool(jnp.all(jnp.isfinite(updates["w"])))
    assert int(adaclip.metrics(state)["nonfinite_count"]) == 1


def test_inf_threshold_measures_only():
    tx = adaclip.clip_by_second_moment(math.inf, b2=0.5, warmup_steps=0)
    state = tx.init(jnp.zeros(2))
    _, state = tx.update(jnp.array([1.0, 1.0]), state)
    out, state = tx.update(jnp.array([100.0, 1.0]), state)
    np.testing.assert_array_equal(out, [100.0, 1.0])
    # v = 0.5 before the spike: ratio 1e4 / 0.5.
    np.testing.assert_allclose(float(state.norm), 2e4, rtol=1e-6)
    assert float(state.threshold) == float(state.norm) and not bool(state.clipped)


def test_schedule_threshold_and_zero_threshold():
    sched = lambda count: 100.0 / (1.0 + count.astype(jnp.float32))  # noqa: E731
    tx = adaclip.clip_by_second_moment(sched, b2=0.5, warmup_steps=0)
    state = tx.init(jnp.zeros(1))
    for t, g in enumerate([1.0, 5.0, 5.0]):
        _, state = tx.update(jnp.array([g]), state)
        np.testing.assert_allclose(float(state.threshold), 100.0 / (1 + t), rtol=1e-6)
    zero = adaclip.clip_by_second_moment(0.0, warmup_steps=0)
    state = zero.init(jnp.zeros(2))
    for _ in range(3):
        out, state = zero.update(jnp.array([1.0, -2.0]), state)
        np.testing.assert_array_equal(out, [0.0, 0.0])


def test_huge_gradient_does_not_make_v_absorbing():
    """A finite gradient whose square overflows float32 in the warm-up holds v
    at the float32 maximum instead of inf; v then decays and clipping resumes."""
    tx = adaclip.clip_by_second_moment(4.0, b2=0.5, warmup_steps=1)
    state = tx.init(jnp.zeros(1))
    _, state = tx.update(jnp.array([1e30]), state)
    v = float(state.rule_state.nu[0])
    assert v == float(np.finfo(np.float32).max)
    # theta * v and g^2 overflow float32; the comparison still cuts, to sqrt(theta v).
    out, state = tx.update(jnp.array([-1e30]), state)
    assert bool(state.clipped)
    np.testing.assert_allclose(float(out[0]), -np.sqrt(4.0 * v), rtol=1e-6)
    for _ in range(400):
        _, state = tx.update(jnp.array([1.0]), state)
    assert float(state.rule_state.nu[0]) < 2.0
    out, state = tx.update(jnp.array([100.0]), state)
    assert bool(state.clipped) and float(out[0]) < 10.0


def test_rule_threshold_is_refused():
    with pytest.raises(TypeError, match="threshold.*ThresholdRule"):
        adaclip.clip_by_second_moment(adaclip.ema(2.0, 0.9))
    with pytest.raises(TypeError, match="threshold"):
        adaclip.clip_by_second_moment(adaclip.ema)


def test_metrics_and_complex():
    tx = optax.chain(adaclip.clip_by_second_moment(), optax.sgd(0.1))
    state = tx.init({"w": jnp.zeros(2)})
    _, state = tx.update({"w": jnp.ones(2)}, state, {"w": jnp.zeros(2)})
    assert set(adaclip.metrics(state)) == {
        "norm",
        "threshold",
        "clipped",
        "clip_rate",
        "nonfinite_count",
    }
    c = adaclip.clip_by_second_moment()
    with pytest.raises(ValueError, match="complex"):
        c.update(jnp.ones(2, jnp.complex64), c.init(jnp.ones(2, jnp.complex64)))


def test_spam_weight_decay_needs_params():
    opt = adaclip.spam(1e-3, weight_decay=0.1)
    with pytest.raises(ValueError, match="params"):
        opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)}))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_spam_jit_donation_scan_and_dtypes(dtype):
    """spam as users run it: jitted with params and state donated; updates
    in the gradients' dtype; the state keeps its tree, shapes and dtypes; a
    lax.scan gives the loop's result; metrics are readable."""
    opt = adaclip.spam(1e-2, threshold=8.0, warmup_steps=2, reset_interval=5, lr_ramp_steps=3)
    params = {"w": jnp.ones((3, 2), dtype), "b": jnp.zeros(2, dtype)}
    grads = [
        jax.tree.map(
            lambda p, t=t: (
                (jnp.sin(jnp.arange(p.size) + t) * (1 + 9 * (t % 4 == 3)))
                .reshape(p.shape)
                .astype(dtype)
            ),
            params,
        )
        for t in range(12)
    ]

    def one(params, state, g):
        u, state = opt.update(g, state, params)
        return optax.apply_updates(params, u), state, u

    step = jax.jit(one, donate_argnums=(0, 1))
    state = opt.init(params)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    p = jax.tree.map(jnp.copy, params)
    for g in grads:
        p, state, u = step(p, state, g)
        assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, g)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(p))
    assert float(adaclip.metrics(state)["clip_rate"]) > 0

    def body(carry, g):
        p, s = carry
        p, s, _ = one(p, s, g)
        return (p, s), None

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
    (p_scan, _), _ = jax.lax.scan(body, (params, opt.init(params)), stacked)
    for a, b in zip(jax.tree.leaves(p_scan), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float32),
            np.asarray(b, np.float32),
            rtol=1e-2 if dtype == jnp.bfloat16 else 1e-5,
        )


def test_spam_differentiates_and_injects_without_recompiling():
    params = {"w": jnp.array([1.0, -2.0, 0.5])}

    def run(g):
        opt = adaclip.spam(1e-2, warmup_steps=0, threshold=4.0)
        state = opt.init(params)
        u, state = opt.update(g, state, params)
        u, state = opt.update(jax.tree.map(lambda x: 3.0 * x, g), state, params)
        return jnp.sum(u["w"] ** 2)

    grad = jax.jit(jax.grad(run))({"w": jnp.array([0.3, -0.1, 2.0])})
    assert bool(jnp.all(jnp.isfinite(grad["w"])))

    opt = optax.inject_hyperparams(adaclip.spam)(learning_rate=1e-2, threshold=8.0)
    state = opt.init(params)
    compiles = []

    @jax.jit
    def step(g, state):
        compiles.append(1)
        return opt.update(g, state, params)

    g = {"w": jnp.array([0.3, -0.1, 2.0])}
    u1, state = step(g, state)
    state.hyperparams["learning_rate"] = jnp.asarray(0.5, jnp.float32)
    u2, state = step(g, state)
    assert len(compiles) == 1
    assert not np.allclose(u1["w"], u2["w"])


def test_a_ratio_equal_to_the_threshold_is_not_clipped():
    # g^2 / v = 1 / 0.25 = 4 = theta exactly (all exact in float32): the rule
    # cuts where g^2 > theta v, strictly, so the step is not clipped.
    grads = [np.ones((2,), np.float32), np.ones((2,), np.float32), np.full((2,), 3.0, np.float32)]
    want, stats, cuts = _reference_clip(grads, 4.0, 0.75, 1)
    assert stats[1] == 4.0 and not cuts[1] and cuts[2]  # the reference itself
    tx = adaclip.clip_by_second_moment(4.0, b2=0.75, warmup_steps=1)
    state = tx.init(jnp.zeros(2))
    update = jax.jit(tx.update, donate_argnums=(1,))
    for t, g in enumerate(grads):
        out, state = update(jnp.asarray(g), state)
        np.testing.assert_allclose(out, want[t], rtol=1e-6)
        assert bool(state.clipped) == cuts[t], t


def test_spam_without_weight_decay_needs_no_params():
    # weight_decay=0 (the default, or given as 0 or 0.0): update works without
    # params and equals Adam-style SPAM with params given.
    grads = {"w": jnp.array([0.5, -1.0, 2.0])}
    params = {"w": jnp.array([1.0, 2.0, -3.0])}
    for kwargs in ({}, {"weight_decay": 0}, {"weight_decay": 0.0}):
        tx = adaclip.spam(0.1, **kwargs)
        no_params, _ = tx.update(grads, tx.init(params))
        with_params, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(no_params["w"], with_params["w"], rtol=1e-6)
        assert np.all(np.abs(np.asarray(no_params["w"])) > 0)
