"""AutoClip, ZClip, AdaGC, quantile tracking and the combinators against
NumPy transcriptions of the originals (tests/_paper_refs.py)."""

import _paper_refs as ref
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaclip

STEPS = 240


def _sequence(seed, scale=1.0, n=STEPS, zeros=True):
    """Norms with noise, spikes, an upward level shift, a decay and zeros."""
    rng = np.random.default_rng(seed)
    level = np.ones(n)
    level[n // 3 :] *= 5.0  # sustained level shift
    level[2 * n // 3 :] *= np.geomspace(1.0, 1e-2, n - 2 * n // 3)  # decay
    norms = level * rng.lognormal(0.0, 0.25, n)
    spikes = rng.choice(np.arange(5, n), size=n // 15, replace=False)
    norms[spikes] *= rng.uniform(5.0, 50.0, size=spikes.size)
    if zeros:
        norms[rng.choice(np.arange(40, n), size=3, replace=False)] = 0.0
    return (scale * norms).astype(np.float32)


def _global_grads(norms):
    """A gradient tree whose global norm is exactly each norm (one non-zero element)."""
    norms = jnp.asarray(norms, jnp.float32)
    steps = norms.shape[0]
    return {"w": jnp.zeros((steps, 3)).at[:, 1].set(norms), "b": jnp.zeros((steps, 2))}


def _leaf_grads(leaf_norms):
    """A tree of leaves a, b, c whose L2 norms are the given columns."""
    n = jnp.asarray(leaf_norms, jnp.float32)
    steps = n.shape[0]
    return {
        "a": jnp.zeros((steps, 2)).at[:, 0].set(n[:, 0]),
        "b": n[:, 1:2],
        "c": jnp.zeros((steps, 2, 2)).at[:, 1, 0].set(n[:, 2]),
    }


def _run(tx, grads):
    """Runs ``tx`` over stacked gradients; returns the updates and per-step metrics."""

    def body(state, g):
        updates, state = tx.update(g, state)
        return state, (updates, adaclip.metrics(state), state)

    first = jax.tree.map(lambda x: x[0], grads)
    final, (updates, metrics, states) = jax.jit(lambda g: jax.lax.scan(body, tx.init(first), g))(
        grads
    )
    return updates, metrics, states


def _post_global(updates):
    sq = sum(
        np.sum(np.asarray(u, np.float64) ** 2, axis=tuple(range(1, u.ndim)))
        for u in jax.tree.leaves(updates)
    )
    return np.sqrt(sq)


def _post_leaf(updates):
    cols = [
        np.sqrt(np.sum(np.asarray(u, np.float64) ** 2, axis=tuple(range(1, u.ndim))))
        for u in jax.tree.leaves(updates)
    ]
    return np.stack(cols, axis=1)


def _all_finite(tree):
    return all(bool(np.all(np.isfinite(np.asarray(x, np.float64)))) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------- AutoClip


@pytest.mark.parametrize("scale", [1.0, 1e-3, 300.0])
@pytest.mark.parametrize("p", [10.0, 50.0, 90.0])
def test_autoclip_reproduces_original(p, scale):
    norms = _sequence(int(p) + int(scale * 1000), scale)
    updates, metrics, _ = _run(adaclip.autoclip(p, window=STEPS), _global_grads(norms))
    expected, thresholds = ref.autoclip(norms, p)
    np.testing.assert_allclose(_post_global(updates), expected, rtol=1e-5, atol=1e-30)
    # Quirk: the current norm is in the history, so at step 0 the threshold is
    # the first norm (reported as the norm it is clipped to, c * g / (g + eps)).
    np.testing.assert_allclose(metrics["threshold"][0], norms[0], rtol=1e-5 / scale)
    np.testing.assert_allclose(
        np.asarray(metrics["threshold"])[norms > 0],
        thresholds[norms > 0],
        rtol=1e-5 / min(scale, 1),
    )


def test_autoclip_window_keeps_the_last_norms():
    norms = _sequence(3)
    window = 17
    updates, _, _ = _run(adaclip.autoclip(25.0, window=window), _global_grads(norms))
    c = ref.window_percentile(norms, 25.0, window)
    expected = np.array([ref.torch_clip(g, ci) for g, ci in zip(norms, c, strict=True)])
    np.testing.assert_allclose(_post_global(updates), expected, rtol=1e-5)


def test_autoclip_never_clips_a_steadily_decaying_norm():
    # Quirk of the original, kept: the current norm is the smallest so far.
    # (Step 0, where the threshold is the norm itself, is scaled by torch's
    # g / (g + 1e-6) as in the original, and so counts as clipped.)
    norms = np.geomspace(10.0, 0.1, 50).astype(np.float32)
    updates, metrics, _ = _run(adaclip.autoclip(), _global_grads(norms))
    assert not np.any(np.asarray(metrics["clipped"])[1:])
    np.testing.assert_allclose(_post_global(updates), ref.autoclip(norms, 10.0)[0], rtol=1e-5)


# --------------------------------------------------------------------------- ZClip

ZCLIP_CASES = {
    "defaults": {},
    "no-cap": {"max_norm": None},
    "cap-5": {"max_norm": 5.0, "warmup_steps": 10},
    "mean": {"clip_option": "mean", "max_norm": None, "alpha": 0.9},
    "percentile-mode": {"mode": "percentile", "max_norm": None, "z_thresh": 2.0},
    "clip-factor": {"clip_factor": 0.7, "max_norm": None},
    "skip-on-spike": {"skip_update_on_spike": True, "max_norm": None, "warmup_steps": 5},
    "percentile-skip": {"mode": "percentile", "skip_update_on_spike": True, "max_norm": 2.0},
}


@pytest.mark.parametrize("scale", [1.0, 1e-3])
@pytest.mark.parametrize("case", sorted(ZCLIP_CASES))
def test_zclip_reproduces_original(case, scale):
    kwargs = ZCLIP_CASES[case]
    norms = _sequence(len(case), scale)
    updates, metrics, _ = _run(adaclip.zclip(**kwargs), _global_grads(norms))
    ref_kwargs = dict(kwargs)
    ref_kwargs["max_grad_norm"] = ref_kwargs.pop("max_norm", 1.0)
    expected, _ = ref.zclip(norms, **ref_kwargs)
    np.testing.assert_allclose(_post_global(updates), expected, rtol=1e-5, atol=1e-30)
    assert _all_finite(metrics)


def test_zclip_clips_during_warmup_only_when_capped():
    norms = np.array([0.5, 30.0, 2.0, 0.7, 0.9, 1.0, 1.1], np.float32)
    for max_norm, expected in [(None, norms[:5]), (1.0, np.minimum(norms[:5], 1.0))]:
        updates, _, _ = _run(adaclip.zclip(warmup_steps=5, max_norm=max_norm), _global_grads(norms))
        np.testing.assert_allclose(_post_global(updates)[:5], expected, rtol=1e-5)


def test_zclip_clip_factor_scales_the_whole_bound():
    # Constant norms through warm-up (std 0), then a spike: the bound is
    # clip_factor * (mean + z^2 std / z) = clip_factor * mean.
    norms = np.array([2.0] * 5 + [50.0], np.float32)
    for k in [1.0, 0.5]:
        updates, _, _ = _run(
            adaclip.zclip(warmup_steps=5, max_norm=None, clip_factor=k), _global_grads(norms)
        )
        np.testing.assert_allclose(_post_global(updates)[-1], k * 2.0 * 50 / (50 + 1e-6), rtol=1e-5)


def test_zscore_rule_per_entry_matches_reference():
    stats = np.stack([_sequence(11, zeros=False), _sequence(12, 0.01)], axis=1)
    kwargs = {"alpha": 0.9, "z_thresh": 2.0, "warmup_steps": 7}
    rule = adaclip.zscore(**kwargs, clip_factor=0.8)
    thresholds = _replay(rule, stats)
    for j in range(2):
        _, bounds = ref.zclip(stats[:, j], **kwargs, max_grad_norm=None, clip_factor=0.8)
        np.testing.assert_allclose(thresholds[:, j], bounds, rtol=1e-5)


# --------------------------------------------------------------------------- AdaGC


def _leaf_sequence(seed, n=STEPS):
    cols = [_sequence(seed, 1.0, n), _sequence(seed + 1, 0.01, n), _sequence(seed + 2, 3.0, n)]
    out = np.stack(cols, axis=1)
    out[:30] = np.abs(out[:30]) + 0.01  # no zero during warm-up (see the quirk test)
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        {"warmup_steps": 20},
        {"warmup_steps": 30, "warmup_max_norm": 0.5, "ratio": 1.2, "beta": 0.9},
        {"warmup_steps": 0},
        {},
    ],
    ids=["w20", "w30-custom", "w0", "defaults"],
)
def test_adagc_reproduces_original(kwargs):
    leaf_norms = _leaf_sequence(len(kwargs))
    updates, metrics, _ = _run(adaclip.adagc(**kwargs), _leaf_grads(leaf_norms))
    expected = ref.adagc(leaf_norms, **kwargs)
    np.testing.assert_allclose(_post_leaf(updates), expected, rtol=1e-5, atol=1e-30)
    assert metrics["threshold"].shape == (STEPS, 3)
    assert _all_finite(metrics)


def test_adagc_zero_leaf_in_warmup_is_clipped_to_zero_after():
    # Quirk of the original, kept: gamma is a running minimum, so a zero
    # gradient during warm-up pins that leaf's threshold at zero.
    leaf_norms = _leaf_sequence(5)
    leaf_norms[3, 1] = 0.0
    updates, _, _ = _run(adaclip.adagc(warmup_steps=10), _leaf_grads(leaf_norms))
    post = _post_leaf(updates)
    np.testing.assert_allclose(post, ref.adagc(leaf_norms, warmup_steps=10), rtol=1e-5, atol=1e-30)
    assert np.all(post[10:, 1] == 0.0)


# --------------------------------------------------------------------------- rules


def _replay(rule, stats):
    stats = jnp.asarray(stats, jnp.float32)

    def body(state, s):
        c, state, _ = adaclip._base.step_rule(rule, s, state)
        return state, c

    _, out = jax.jit(lambda x: jax.lax.scan(body, rule.init(jnp.zeros_like(x[0])), x))(stats)
    return np.asarray(out, np.float64)


@pytest.mark.parametrize("window", [1, 2, 10, 64])
@pytest.mark.parametrize("p", [0.0, 10.0, 33.3, 50.0, 100.0])
def test_percentile_rule_matches_numpy(p, window):
    stats = np.stack([_sequence(window), _sequence(window + 1, 0.1)], axis=1)
    stats[::7, 0] = stats[3, 0]  # ties
    np.testing.assert_allclose(
        _replay(adaclip.percentile(p, window), stats),
        ref.window_percentile(stats, p, window),
        rtol=1e-5,
    )


def test_percentile_position_is_exact_for_every_window():
    # The interpolation position p/100 * (n - 1), against exact rational
    # arithmetic, up to n = 2**24 (the largest window): for a float32 p (an
    # array, as when injected) and for a Python float p (wider than float32).
    # In float32, p * (n - 1) is spaced 64 apart there: the fraction was off
    # by up to 0.64.
    from fractions import Fraction

    from adaclip._window_rules import _rank

    rng = np.random.default_rng(0)
    ns = np.array(
        [1, 2, 3, 4097, 10_000, 2**23 + 1, 2**24 - 2, 2**24 - 1, 2**24]
        + rng.integers(2**23, 2**24 + 1, 200).tolist()
    )
    ps = [0.0, 1e-30, 1e-3, 0.5, 10.0, 33.3, 50.0, 99.9, 99.99999, 100.0]
    ps += rng.uniform(0, 100, 4).tolist()

    def check(p_exact, lo, frac):
        for n, lo_, frac_ in zip(ns.tolist(), np.asarray(lo), np.asarray(frac), strict=True):
            exact = Fraction(p_exact) / 100 * (n - 1)
            assert 0 <= lo_ <= n - 1 and 0.0 <= frac_ <= 1.0, (n, p_exact, lo_, frac_)
            assert abs(int(lo_) + float(frac_) - float(exact)) <= 2e-7, (n, p_exact, lo_, frac_)

    n = jnp.asarray(ns, jnp.int32)
    for p in ps:
        p32 = np.float32(p)
        check(float(p32), *jax.jit(jax.vmap(_rank, (0, None)))(n, jnp.asarray(p32)))
        check(p, *jax.jit(jax.vmap(lambda n, p=p: _rank(n, p)))(n))


def test_percentile_matches_numpy_at_a_window_of_2_to_the_24():
    # A full window of 2**24 statistics (a state built directly: filling it
    # would take 2**24 steps), one more statistic, then np.percentile of the
    # window it leaves. The values are 0 below a cut and 1 above, so the
    # threshold is the interpolation fraction itself where the cut sits at
    # the position.
    window = 2**24
    count = window + 7  # full; the statistic of step `count` replaces slot 7
    for p in [50.0, 10.0, 99.9]:
        cut = int(p / 100 * (window - 1))  # the last 0 of the sorted window
        values = (np.arange(window) > cut).astype(np.float32)
        ring = np.random.default_rng(1).permutation(values)
        slot = count % window
        # The statistic leaving is a 1 and the new one a 1: the sorted window is `values`.
        ones = np.flatnonzero(ring == 1.0)
        ring[[slot, ones[0]]] = ring[[ones[0], slot]]
        state = adaclip.PercentileState(
            buffer=jnp.asarray(ring),
            sorted=jnp.asarray(np.sort(ring)),
            count=jnp.int32(count),
        )
        rule = adaclip.percentile(p, window)
        threshold, state = jax.jit(rule.update, donate_argnums=1)(jnp.float32(1.0), state)
        window_after = np.concatenate([np.delete(ring, slot), [1.0]])
        expected = np.percentile(window_after, p)
        assert 0.0 < expected < 1.0  # the cut is at the position: a fraction
        np.testing.assert_allclose(float(threshold), expected, atol=1e-6)


@pytest.mark.parametrize("target,lr", [(0.5, 0.2), (0.9, 0.05), (0.1, 1.0)])
def test_quantile_rule_matches_reference(target, lr):
    stats = np.stack([_sequence(int(10 * target)), _sequence(7, 100.0)], axis=1)
    out = _replay(adaclip.quantile(target, learning_rate=lr, initial=2.0), stats)
    for j in range(2):
        np.testing.assert_allclose(out[:, j], ref.quantile(stats[:, j], target, lr, 2.0), rtol=1e-4)


def test_quantile_tracks_the_target_quantile():
    stats = np.random.default_rng(0).lognormal(0.0, 0.5, 4000).astype(np.float32)
    out = _replay(adaclip.quantile(0.8, learning_rate=0.05), stats)
    np.testing.assert_allclose(np.median(out[2000:]), np.quantile(stats, 0.8), rtol=0.1)


def test_combinators_match_their_definitions():
    stats = _sequence(21)
    t = np.arange(STEPS)
    p50 = ref.window_percentile(stats, 50.0, 5)
    q = ref.quantile(stats, 0.7)
    upper = 4.0 * 0.9**t
    got = _replay(
        adaclip.clamp(adaclip.percentile(50.0, 5), 0.5, adaclip.decaying(4.0, 0.9)), stats
    )
    np.testing.assert_allclose(got, np.minimum(np.maximum(p50, 0.5), upper), rtol=1e-5)
    got = _replay(adaclip.clamp(adaclip.percentile(50.0, 5), lower=2.0), stats)
    np.testing.assert_allclose(got, np.maximum(p50, 2.0), rtol=1e-5)
    got = _replay(adaclip.minimum(adaclip.percentile(50.0, 5), adaclip.quantile(0.7), 3.0), stats)
    np.testing.assert_allclose(got, np.minimum(np.minimum(p50, q), 3.0), rtol=1e-4)
    got = _replay(adaclip.maximum(adaclip.percentile(50.0, 5), adaclip.quantile(0.7)), stats)
    np.testing.assert_allclose(got, np.maximum(p50, q), rtol=1e-4)
    got = _replay(adaclip.warmup(adaclip.percentile(50.0, 5), 9, during=0.25), stats)
    np.testing.assert_allclose(got, np.where(t < 9, 0.25, p50), rtol=1e-5)


def test_warmup_steps_may_be_traced():
    stats = jnp.asarray(_sequence(2)[:30])

    @jax.jit
    def run(steps):
        rule = adaclip.warmup(adaclip.percentile(50.0, 5), steps, during=0.25)
        state = rule.init(jnp.zeros(()))
        return jax.lax.scan(lambda s, x: rule.update(x, s)[::-1], state, stats)[1]

    p50 = ref.window_percentile(np.asarray(stats), 50.0, 5)
    for steps in [0, 4, 12]:
        np.testing.assert_allclose(
            run(steps), np.where(np.arange(30) < steps, 0.25, p50), rtol=1e-5
        )


# --------------------------------------------------------------------------- robustness

RECIPES = {
    "autoclip": (lambda: adaclip.autoclip(10.0, STEPS), lambda n: ref.autoclip(n, 10.0)[0]),
    "zclip": (lambda: adaclip.zclip(max_norm=None), lambda n: ref.zclip(n, max_grad_norm=None)[0]),
    "zclip-capped": (
        lambda: adaclip.zclip(warmup_steps=10),
        lambda n: ref.zclip(n, warmup_steps=10)[0],
    ),
}


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_nonfinite_norm_never_enters_the_statistics(name, bad):
    make, reference = RECIPES[name]
    norms = _sequence(4)
    bad_steps = [2, 60, 61, 150]  # one during ZClip's warm-up
    dirty = norms.copy()
    dirty[bad_steps] = bad
    finite = np.isfinite(dirty)
    updates, metrics, states = _run(make(), _global_grads(dirty))
    post = _post_global(updates)
    # The finite steps are exactly the original's run on the finite norms.
    np.testing.assert_allclose(post[finite], reference(norms[finite]), rtol=1e-5, atol=1e-30)
    np.testing.assert_array_equal(post[~finite], 0.0)  # nonfinite="skip"
    assert int(metrics["nonfinite_count"][-1]) == len(bad_steps)
    assert _all_finite(metrics["threshold"]) and _all_finite(states)
    # A spike after the bad steps is still clipped.
    spike = 165
    spiky = dirty.copy()
    spiky[spike] = 1e4
    updates, metrics, _ = _run(make(), _global_grads(spiky))
    assert bool(metrics["clipped"][spike])
    assert _post_global(updates)[spike] < 1e3


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_adagc_nonfinite_leaf_skips_the_step(bad):
    leaf_norms = _leaf_sequence(8)
    dirty = leaf_norms.copy()
    dirty[[5, 70], 1] = bad
    finite = np.all(np.isfinite(dirty), axis=1)
    updates, metrics, states = _run(adaclip.adagc(warmup_steps=20), _leaf_grads(dirty))
    post = _post_leaf(updates)
    expected = ref.adagc(leaf_norms[finite], warmup_steps=20)
    np.testing.assert_allclose(post[finite], expected, rtol=1e-5, atol=1e-30)
    np.testing.assert_array_equal(post[~finite], 0.0)
    assert _all_finite(metrics["threshold"]) and _all_finite(states)


EXTREME = {
    "percentile": lambda: adaclip.clip_by_global_norm(adaclip.percentile(10.0, 8)),
    "zscore": lambda: adaclip.clip_by_global_norm(adaclip.zscore(0.9, 2.0, 3, clip_factor=10.0)),
    "zscore-percentile": lambda: adaclip.clip_by_leaf_norm(
        adaclip.zscore(0.9, 50.0, 3, mode="percentile")
    ),
    "quantile": lambda: adaclip.clip_by_leaf_norm(adaclip.quantile(0.5)),
    "clamp": lambda: adaclip.clip_by_global_norm(
        adaclip.clamp(adaclip.zscore(0.9, 2.0, 3), 0.1, 10.0)
    ),
    "warmup": lambda: adaclip.clip_by_value(
        adaclip.warmup(adaclip.quantile(0.9), 3, during=adaclip.percentile(50.0, 4))
    ),
    "autoclip": lambda: adaclip.autoclip(50.0, 8),
    "zclip": lambda: adaclip.zclip(0.9, 2.0, 3, max_norm=None, clip_factor=10.0),
    "adagc": lambda: adaclip.adagc(ratio=10.0, warmup_steps=3),
}


@pytest.mark.parametrize("name", sorted(EXTREME))
def test_state_and_threshold_stay_finite_on_extreme_statistics(name):
    stats = np.array(
        [0.0, 0.0, 0.0, 1.0, np.nan, 3e38, np.inf, 0.0, 1e-30, 2e38, 5.0, -np.inf, 1.0] * 3,
        np.float32,
    )
    grads = {"a": jnp.asarray(stats)[:, None], "b": jnp.asarray(stats[::-1].copy())[:, None]}
    _, metrics, states = _run(EXTREME[name](), grads)
    assert _all_finite(metrics["threshold"]) and _all_finite(states)


def test_quantile_recovers_from_a_long_run_of_zeros():
    stats = np.concatenate([np.zeros(3000), np.ones(1500)]).astype(np.float32)
    out = _replay(adaclip.quantile(0.5, learning_rate=0.2), stats)
    assert out[3000] > 0.0
    np.testing.assert_allclose(out[-1], 1.0, rtol=0.3)


# --------------------------------------------------------------------------- hyper-parameters


def test_recipes_accept_injected_hyperparameters_without_recompiling():
    params = {"w": jnp.zeros(3), "b": jnp.zeros(2)}
    norms = _sequence(9)[:40]
    grads = _global_grads(norms)
    for factory, values in [
        (
            adaclip.zclip,
            [{"z_thresh": 2.5, "warmup_steps": 5}, {"z_thresh": 1.5, "warmup_steps": 8}],
        ),
        (adaclip.adagc, [{"ratio": 1.04, "warmup_steps": 5}, {"ratio": 1.3, "warmup_steps": 2}]),
        (adaclip.autoclip, [{"percentile": 10.0}, {"percentile": 70.0}]),
    ]:
        compiles: list[int] = []
        static = ("window",) if factory is adaclip.autoclip else ()
        tx = optax.inject_hyperparams(factory, static_args=static)(**values[0])

        @jax.jit
        def run(state, grads, tx=tx, compiles=compiles):
            compiles.append(1)
            return jax.lax.scan(lambda s, g: tx.update(g, s)[::-1], state, grads)

        for v in values:
            state = tx.init(params)
            state.hyperparams.update({k: jnp.asarray(x) for k, x in v.items()})
            state, updates = run(state, grads)
            ref_updates, _, _ = _run(factory(**v), grads)
            np.testing.assert_allclose(_post_global(updates), _post_global(ref_updates), rtol=1e-6)
        assert len(compiles) == 1, factory.__name__


def test_rules_vmap_over_hyperparameters():
    stats = jnp.asarray(_sequence(31)[:60])

    def thresholds(make, value):
        rule = make(value)
        state = rule.init(jnp.zeros(()))
        return jax.lax.scan(lambda s, x: rule.update(x, s)[::-1], state, stats)[1]

    for make, values in [
        (lambda p: adaclip.percentile(p, 16), [10.0, 50.0, 90.0]),
        (lambda z: adaclip.zscore(0.9, z, 5), [1.0, 2.5]),
        (lambda lr: adaclip.quantile(0.5, learning_rate=lr), [0.05, 0.5]),
    ]:
        batched = jax.jit(jax.vmap(lambda v, make=make: thresholds(make, v)))(jnp.asarray(values))
        for i, v in enumerate(values):
            np.testing.assert_allclose(batched[i], thresholds(make, v), rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: adaclip.autoclip(10.0, 16, **kw),
        lambda **kw: adaclip.zclip(warmup_steps=3, max_norm=None, **kw),
        lambda **kw: adaclip.adagc(warmup_steps=3, **kw),
    ],
    ids=["autoclip", "zclip", "adagc"],
)
def test_recipes_with_axis_name_see_the_global_norm(make):
    # Two "devices" (a vmapped axis) each hold half of every leaf.
    norms = _leaf_sequence(13)[:12]
    grads = {
        "a": jnp.asarray(norms[:, :1] * np.ones((1, 4)) / 2.0, jnp.float32),
        "b": jnp.asarray(norms[:, 1:2] * np.ones((1, 4)) / 2.0, jnp.float32),
    }
    sharded = jax.tree.map(lambda g: g.reshape(g.shape[0], 2, 2), grads)
    tx, tx_sharded = make(), make(axis_name="dev")
    state = tx.init(jax.tree.map(lambda g: g[0], grads))
    sharded_state = jax.vmap(tx_sharded.init)(jax.tree.map(lambda g: g[0], sharded))
    update = jax.jit(jax.vmap(tx_sharded.update, axis_name="dev"))
    plain = jax.jit(tx.update)
    for t in range(12):
        expected, state = plain(jax.tree.map(lambda g, t=t: g[t], grads), state)
        got, sharded_state = update(jax.tree.map(lambda g, t=t: g[t], sharded), sharded_state)
        jax.tree.map(
            lambda e, g: np.testing.assert_allclose(np.asarray(g).reshape(-1), e, rtol=1e-5),
            expected,
            got,
        )
