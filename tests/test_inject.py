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
from _cases import CASES

import adaclip

G = adaclip.clip_by_global_norm

# "row" or "row:k" (the k-th spec of a row) -> the registry's Inject spec.
# Each new value is injected on its own, after a few steps, and must change
# the update without a new compilation.
SPECS = {
    (name if len(CASES[name].inject) == 1 else f"{name}:{k}"): spec
    for name in sorted(CASES)
    for k, spec in enumerate(CASES[name].inject)
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
    spec = SPECS[name]
    factory, initial, changes = spec.factory, spec.initial, spec.changes
    tx = optax.inject_hyperparams(factory, hyperparam_dtype=hyperparam_dtype)(**initial)
    params = _params(dtype)
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(grads, state, extra):
        traces.append(1)  # runs once per compilation
        return tx.update(grads, state, params, **extra)

    for i in range(4):
        _, state = step(_grads(i, dtype), state, spec.extra(i))
    for k, (hp, value) in enumerate(changes.items()):
        steps = [10 + 2 * k + j for j in range(2)]
        inner_new = inner_old = state.inner_state
        old_hps = {n: state.hyperparams[n] for n in initial}
        # Same dtype and weak type as before (a Python int hyper-parameter is
        # stored weakly typed; a strongly typed int32 would be a new signature).
        old_value = state.hyperparams[hp]
        state.hyperparams[hp] = old_value - old_value + value
        new_hps = {n: state.hyperparams[n] for n in initial}
        new_tx, old_tx = factory(**new_hps), factory(**old_hps)
        differs = False
        for t in steps:
            grads, extra = _grads(t, dtype), spec.extra(t)
            updates, state = step(grads, state, extra)
            # Same as the plain transformation built with the new values, run
            # from the same inner state; different from the old values.
            ref, inner_new = new_tx.update(grads, inner_new, params, **extra)
            old, inner_old = old_tx.update(grads, inner_old, params, **extra)
            _assert_close((updates, state.inner_state), (ref, inner_new))
            differs |= not _close((ref, inner_new), (old, inner_old))
        assert differs, f"changing {hp} had no effect"
    assert len(traces) == 1, f"{len(traces)} compilations"
    return state


@pytest.mark.parametrize("name", sorted(SPECS))
def test_injected_hyperparameters_change_behaviour_without_recompiling(name):
    _run_case(name, jnp.float32)


@pytest.mark.parametrize("name", ["global-ema"])
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
