"""Run-time thresholds (NaN, +inf, "measure only") and misuse caught at construction."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _standard import adam, schedule

import adaclip

GRADS = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[12.0]])}  # global norm 13
CLIPPERS = [adaclip.clip_by_global_norm, adaclip.clip_by_leaf_norm, adaclip.clip_by_value]


def _stat(clipper, grads):
    leaves = [np.asarray(x) for x in jax.tree.leaves(grads)]
    if clipper is adaclip.clip_by_global_norm:
        return np.sqrt(sum(np.sum(x**2) for x in leaves))
    if clipper is adaclip.clip_by_leaf_norm:
        return np.array([np.linalg.norm(x) for x in leaves])
    return max(np.max(np.abs(x)) for x in leaves)


@pytest.mark.parametrize("clipper", CLIPPERS)
def test_inf_threshold_measures_without_clipping(clipper):
    tx = clipper(math.inf)
    state = tx.init(GRADS)
    for scale in (1.0, 10.0):
        grads = jax.tree.map(lambda g, s=scale: s * g, GRADS)
        updates, state = jax.jit(tx.update)(grads, state)
        for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
            assert np.array_equal(np.asarray(u), np.asarray(g))
        metrics = adaclip.metrics(state)
        np.testing.assert_allclose(np.asarray(metrics["norm"]), _stat(clipper, grads), rtol=1e-6)
        # The threshold metric reports the statistic: finite, nothing cut.
        np.testing.assert_allclose(
            np.asarray(metrics["threshold"]), _stat(clipper, grads), rtol=1e-6
        )
        assert not np.any(np.asarray(metrics["clipped"]))
        assert np.all(np.asarray(metrics["clip_rate"]) == 0)


def test_inf_from_a_schedule_is_no_bound_that_step():
    schedule = lambda count: jnp.where(count == 0, jnp.inf, 1.0)  # noqa: E731
    tx = adaclip.clip_by_global_norm(schedule)
    state = tx.init(GRADS)
    updates, state = tx.update(GRADS, state)
    assert np.array_equal(np.asarray(updates["a"]), np.asarray(GRADS["a"]))
    assert float(state.threshold) == pytest.approx(13.0)
    updates, state = tx.update(GRADS, state)
    ref, _ = optax.clip_by_global_norm(1.0).update(GRADS, None)
    np.testing.assert_allclose(np.asarray(updates["a"]), np.asarray(ref["a"]), rtol=1e-6)
    assert bool(state.clipped)


@pytest.mark.parametrize("clipper", CLIPPERS)
def test_nan_threshold_is_a_nonfinite_step(clipper):
    """A NaN threshold never silently zeroes steps: it is counted, and the
    rule's state (here a schedule's step count) is left untouched."""
    schedule = lambda count: jnp.where(count == 1, jnp.nan, 100.0)  # noqa: E731
    tx = clipper(schedule)
    state = tx.init(GRADS)
    _, state = tx.update(GRADS, state)
    assert int(state.rule_state.count) == 1
    updates, state = tx.update(GRADS, state)
    assert int(state.nonfinite_count) == 1
    assert int(state.rule_state.count) == 1  # untouched: the next step retries
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))  # "skip"
    np.testing.assert_allclose(np.asarray(state.threshold), 100.0)  # previous one kept
    updates, state = tx.update(GRADS, state)  # count is still 1: NaN again
    assert int(state.nonfinite_count) == 2
    assert int(adaclip.metrics(state)["nonfinite_count"]) == 2


def test_nan_threshold_propagate_passes_gradients():
    tx = adaclip.clip_by_global_norm(lambda count: jnp.nan, nonfinite="propagate")
    updates, state = tx.update(GRADS, tx.init(GRADS))
    assert np.array_equal(np.asarray(updates["a"]), np.asarray(GRADS["a"]))
    assert int(state.nonfinite_count) == 1


def test_nan_from_a_hand_written_rule_leaves_its_state():
    rule = adaclip.ThresholdRule(
        init=lambda stat: jnp.zeros_like(stat),
        update=lambda stat, s: (jnp.where(s > 0, jnp.nan, 1.0 + s), s + 1.0),
    )
    tx = adaclip.clip_by_global_norm(rule)
    state = tx.init(GRADS)
    _, state = tx.update(GRADS, state)
    _, state = tx.update(GRADS, state)
    assert float(state.rule_state) == 1.0
    assert int(state.nonfinite_count) == 1


@pytest.mark.parametrize(
    "factory", [adaclip.ema, adaclip.zscore, adaclip.percentile, adaclip.fixed, adaclip.quantile]
)
def test_uncalled_factory_as_threshold_is_a_type_error(factory):
    with pytest.raises(TypeError, match="threshold"):
        adaclip.clip_by_global_norm(factory)


@pytest.mark.parametrize(
    "make",
    [
        lambda bad: adaclip.clamp(adaclip.ema(2.0, 0.9), lower=bad),
        lambda bad: adaclip.clamp(adaclip.ema(2.0, 0.9), upper=bad),
        lambda bad: adaclip.warmup(adaclip.ema(2.0, 0.9), 3, during=bad),
        lambda bad: adaclip.scheduled(bad),
    ],
    ids=["lower", "upper", "during", "schedule"],
)
def test_uncalled_factory_names_its_argument(make, request):
    name = request.node.callspec.id
    with pytest.raises(TypeError, match=name):
        make(adaclip.ema)


def test_callable_returning_a_non_scalar_is_a_type_error():
    with pytest.raises(TypeError, match="threshold"):
        adaclip.clip_by_leaf_norm(lambda count: jnp.ones(3))
    with pytest.raises(TypeError, match="threshold"):
        adaclip.clip_by_global_norm(lambda: 1.0)


def test_real_schedules_still_accepted():
    for fn in (
        schedule(optax.linear_schedule(1.0, 0.1, 10)),
        lambda count: 2.0,
        lambda c: c + 1,
    ):
        tx = adaclip.clip_by_global_norm(fn)
        tx.update(GRADS, tx.init(GRADS))


def test_inf_only_for_a_measuring_threshold():
    # math.inf measures without clipping (a clipper's threshold, adaclip.fixed);
    # an upper bound of inf would be no bound, and -inf or NaN no threshold.
    tx = adaclip.clip_by_global_norm(adaclip.fixed(math.inf))
    g = {"w": jnp.array([3.0, 4.0])}
    u, s = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(np.asarray(u["w"]), [3.0, 4.0])
    assert float(s.threshold) == 5.0 and not bool(s.clipped)
    with pytest.raises(ValueError):
        adaclip.clamp(adaclip.ema(2.0, 0.9), upper=math.inf)
    with pytest.raises(ValueError):
        adaclip.clip_by_global_norm(-math.inf)
    with pytest.raises(ValueError):
        adaclip.clip_by_global_norm(math.nan)


def test_rule_chained_as_a_transformation_fails_at_init():
    tx = optax.chain(adaclip.ema(2.0, 0.99), adam(1e-3))
    with pytest.raises(TypeError, match="pass it to a clipper"):
        tx.init({"w": jnp.ones((3, 2))})
    with pytest.raises(TypeError, match="pass it to a clipper"):
        adaclip.percentile(50.0, 4).init({"w": jnp.ones(3)})


def test_hand_written_rules_stay_constructible():
    rule = adaclip.ThresholdRule(init=lambda stat: jnp.ones_like(stat), update=lambda s, c: (c, c))
    assert isinstance(rule, tuple) and rule._fields == ("init", "update")
    state = rule.init(jnp.zeros((3,)))
    np.testing.assert_array_equal(np.asarray(state), np.ones(3))
    # A pytree round trip rebuilds the rule without wrapping it twice.
    leaves, treedef = jax.tree.flatten(rule)
    assert jax.tree.unflatten(treedef, leaves).init is rule.init
    tx = adaclip.clip_by_leaf_norm(rule)
    tx.update(GRADS, tx.init(GRADS))
