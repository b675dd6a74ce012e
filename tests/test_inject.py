"""Every numeric hyper-parameter works under optax.inject_hyperparams without recompiling.

Rules return a ThresholdRule, not a transformation, so they are injected the
documented way: a factory that builds the clipper around the rule,

    optax.inject_hyperparams(
        lambda multiplier, decay: adaclip.clip_by_global_norm(adaclip.ema(multiplier, decay))
    )(multiplier=2.0, decay=0.99)

Window sizes fix array shapes: they are closed over (or listed in static_args).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaclip

G = adaclip.clip_by_global_norm

# name -> (factory of a transformation, initial hyper-parameters, new values).
# Each new value is injected on its own, after a few steps, and must change
# the update without a new compilation.
CASES = {
    "clip_by_global_norm": (
        lambda threshold: G(threshold),
        dict(threshold=1.0),
        dict(threshold=0.3),
    ),
    "clip_by_leaf_norm": (
        lambda threshold: adaclip.clip_by_leaf_norm(threshold),
        dict(threshold=1.0),
        dict(threshold=0.3),
    ),
    "clip_by_value": (
        lambda threshold: adaclip.clip_by_value(threshold),
        dict(threshold=1.0),
        dict(threshold=0.3),
    ),
    "fixed": (lambda value: G(adaclip.fixed(value)), dict(value=1.0), dict(value=0.3)),
    "scheduled": (
        lambda start, end: G(adaclip.scheduled(optax.linear_schedule(start, end, 20))),
        dict(start=2.0, end=0.5),
        dict(start=0.7, end=0.1),
    ),
    "decaying": (
        lambda init_value, decay_rate, transition_steps, floor: G(
            adaclip.decaying(init_value, decay_rate, transition_steps=transition_steps, floor=floor)
        ),
        dict(init_value=3.0, decay_rate=0.8, transition_steps=2, floor=0.0),
        dict(init_value=10.0, decay_rate=0.5, transition_steps=7, floor=8.0),
    ),
    "ema": (
        lambda multiplier, decay, warmup_steps: G(
            adaclip.ema(multiplier, decay, warmup_steps=warmup_steps)
        ),
        dict(multiplier=2.0, decay=0.9, warmup_steps=2),
        dict(multiplier=0.2, decay=0.3, warmup_steps=50),
    ),
    "ema_raw_leaf": (
        lambda multiplier, decay: adaclip.clip_by_leaf_norm(
            adaclip.ema(multiplier, decay, feed="raw")
        ),
        dict(multiplier=2.0, decay=0.9),
        dict(multiplier=0.2, decay=0.3),
    ),
    "moving_average": (
        lambda multiplier: G(adaclip.moving_average(multiplier, 4)),
        dict(multiplier=2.0),
        dict(multiplier=0.1),
    ),
    "percentile": (
        lambda p: G(adaclip.percentile(p, 6)),
        dict(p=90.0),
        dict(p=10.0),
    ),
    "zscore": (
        lambda alpha, z_thresh, warmup_steps, clip_factor: G(
            adaclip.zscore(alpha, z_thresh, warmup_steps, clip_factor=clip_factor)
        ),
        dict(alpha=0.9, z_thresh=2.5, warmup_steps=3, clip_factor=1.0),
        dict(alpha=0.3, z_thresh=0.5, clip_factor=0.3, warmup_steps=50),
    ),
    "quantile": (
        lambda target, learning_rate, initial: G(
            adaclip.quantile(target, learning_rate=learning_rate, initial=initial)
        ),
        dict(target=0.5, learning_rate=0.2, initial=2.0),
        dict(target=0.05, learning_rate=2.0),  # initial only matters at init
    ),
    "clamp_lower": (
        lambda lower, upper: G(adaclip.clamp(adaclip.ema(2.0, 0.9), lower, upper)),
        dict(lower=0.1, upper=50.0),
        dict(lower=40.0),
    ),
    "clamp_upper": (
        lambda lower, upper: G(adaclip.clamp(adaclip.ema(2.0, 0.9), lower, upper)),
        dict(lower=0.1, upper=50.0),
        dict(upper=0.5),
    ),
    "minimum_maximum": (
        lambda a, b: G(adaclip.maximum(adaclip.minimum(adaclip.ema(2.0, 0.9), a), b)),
        dict(a=50.0, b=0.1),
        dict(a=0.5, b=5.0),
    ),
    "warmup": (
        lambda steps, during: G(adaclip.warmup(adaclip.ema(1.5, 0.9), steps, during)),
        dict(steps=100, during=50.0),
        dict(during=0.2, steps=2),
    ),
    "autoclip": (
        lambda percentile: adaclip.autoclip(percentile, window=8),
        dict(percentile=90.0),
        dict(percentile=5.0),
    ),
    "zclip": (
        lambda alpha, z_thresh, warmup_steps, max_norm, clip_factor: adaclip.zclip(
            alpha, z_thresh, warmup_steps, max_norm=max_norm, clip_factor=clip_factor
        ),
        dict(alpha=0.9, z_thresh=2.5, warmup_steps=3, max_norm=100.0, clip_factor=1.0),
        dict(alpha=0.3, z_thresh=0.5, clip_factor=0.3, max_norm=0.5, warmup_steps=50),
    ),
    "adagc": (
        lambda ratio, beta, warmup_steps, warmup_max_norm: adaclip.adagc(
            ratio, beta, warmup_steps, warmup_max_norm
        ),
        dict(ratio=1.04, beta=0.99, warmup_steps=2, warmup_max_norm=1.0),
        dict(ratio=0.5, beta=0.2, warmup_steps=50, warmup_max_norm=0.1),
    ),
}


def _params(dtype=jnp.float32):
    return {"w": jnp.ones((3, 2), dtype), "b": jnp.zeros((2,), dtype)}


def _grads(step, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.PRNGKey(step))
    scale = 8.0 if step % 2 == 1 else 1.0  # a spike in every two steps
    return {
        "w": (scale * jax.random.normal(k1, (3, 2))).astype(dtype),
        "b": (scale * jax.random.normal(k2, (2,))).astype(dtype),
    }


def _leaves(tree):
    return [np.asarray(x, np.float32) for x in jax.tree.leaves(tree)]


def _assert_close(a, b):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def _close(a, b):
    return all(np.allclose(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _run_case(name, dtype, hyperparam_dtype=None):
    factory, initial, changes = CASES[name]
    tx = optax.inject_hyperparams(factory, hyperparam_dtype=hyperparam_dtype)(**initial)
    params = _params(dtype)
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(grads, state):
        traces.append(1)  # runs once per compilation
        return tx.update(grads, state, params)

    for i in range(4):
        _, state = step(_grads(i, dtype), state)
    for k, (hp, value) in enumerate(changes.items()):
        grads_seq = [_grads(10 + 2 * k + j, dtype) for j in range(2)]
        inner_new = inner_old = state.inner_state
        old_hps = {n: state.hyperparams[n] for n in initial}
        # Same dtype and weak type as before (a Python int hyper-parameter is
        # stored weakly typed; a strongly typed int32 would be a new signature).
        old_value = state.hyperparams[hp]
        state.hyperparams[hp] = old_value - old_value + value
        new_hps = {n: state.hyperparams[n] for n in initial}
        new_tx, old_tx = factory(**new_hps), factory(**old_hps)
        differs = False
        for grads in grads_seq:
            updates, state = step(grads, state)
            # Same as the plain transformation built with the new values, run
            # from the same inner state; different from the old values.
            ref, inner_new = new_tx.update(grads, inner_new, params)
            old, inner_old = old_tx.update(grads, inner_old, params)
            _assert_close((updates, state.inner_state), (ref, inner_new))
            differs |= not _close((ref, inner_new), (old, inner_old))
        assert differs, f"changing {hp} had no effect"
    assert len(traces) == 1, f"{len(traces)} compilations"
    return state


@pytest.mark.parametrize("name", sorted(CASES))
def test_injected_hyperparameters_change_behaviour_without_recompiling(name):
    _run_case(name, jnp.float32)


@pytest.mark.parametrize("name", ["ema"])
def test_injected_hyperparameters_with_bf16_params(name):
    # inject_hyperparams casts float hyper-parameters to the params' dtype
    # (bf16 here) unless hyperparam_dtype is given; rules compute in float32
    # either way, and nothing recompiles.
    state = _run_case(name, jnp.bfloat16)
    assert all(
        v.dtype == jnp.float32 for v in adaclip.metrics(state).values() if v.dtype.kind == "f"
    )
    _run_case(name, jnp.bfloat16, hyperparam_dtype=jnp.float32)


def test_window_is_static_under_inject():
    factory = lambda multiplier, window: G(adaclip.moving_average(multiplier, window))  # noqa: E731
    tx = optax.inject_hyperparams(factory, static_args=("window",))(multiplier=2.0, window=5)
    state = tx.init(_params())
    assert state.inner_state.rule_state.buffer.shape == (5,)
    # Without static_args the window would be traced: a clear error.
    with pytest.raises(TypeError, match="window"):
        jax.jit(optax.inject_hyperparams(factory)(multiplier=2.0, window=5).init)(_params())
