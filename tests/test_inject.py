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
        dict(init_value=3.0, decay_rate=0.8, transition_steps=2, floor=0.5),
        dict(init_value=1.0, decay_rate=0.5, transition_steps=7, floor=2.5),
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
}


def _params(dtype=jnp.float32):
    return {"w": jnp.ones((3, 2), dtype), "b": jnp.zeros((2,), dtype)}


def _grads(step, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.PRNGKey(step))
    scale = 8.0 if step % 3 == 2 else 1.0
    return {
        "w": (scale * jax.random.normal(k1, (3, 2))).astype(dtype),
        "b": (scale * jax.random.normal(k2, (2,))).astype(dtype),
    }


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
        grads = _grads(10 + k, dtype)
        inner_before = state.inner_state
        old_hps = {n: state.hyperparams[n] for n in initial}
        # Same dtype and weak type as before (a Python int hyper-parameter is
        # stored weakly typed; a strongly typed int32 would be a new signature).
        old_value = state.hyperparams[hp]
        state.hyperparams[hp] = old_value - old_value + value
        updates, state = step(grads, state)
        new_hps = {n: state.hyperparams[n] for n in initial}
        # Same as the plain transformation built with the new values, run from
        # the same inner state; and different from the old values.
        ref, _ = factory(**new_hps).update(grads, inner_before, params)
        old, _ = factory(**old_hps).update(grads, inner_before, params)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(
                np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-6, atol=1e-7
            ),
            updates,
            ref,
        )
        differs = jax.tree.leaves(
            jax.tree.map(
                lambda a, b: not np.allclose(np.asarray(a, np.float32), np.asarray(b, np.float32)),
                updates,
                old,
            )
        )
        assert any(differs), f"changing {hp} had no effect"
    assert len(traces) == 1, f"{len(traces)} compilations"
    return state


@pytest.mark.parametrize("name", sorted(CASES))
def test_injected_hyperparameters_change_behaviour_without_recompiling(name):
    _run_case(name, jnp.float32)


@pytest.mark.parametrize("name", ["ema", "decaying"])
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
