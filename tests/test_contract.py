"""The contract every public transformation keeps (optax's _common_test style)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cases import make, names
from _standard import adam, multi_steps

import adaclip

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _params(dtype=jnp.float32):
    return {
        "dense": {"w": jnp.ones((3, 4), dtype), "b": jnp.zeros((4,), dtype)},
        "out": jnp.ones((2,), dtype),
    }


def _grads(step, dtype=jnp.float32):
    key = jax.random.PRNGKey(step)
    k1, k2, k3 = jax.random.split(key, 3)
    # Every few steps a spike, so adaptive rules clip some steps.
    scale = 20.0 if step % 5 == 4 else 1.0
    return {
        "dense": {
            "w": (scale * jax.random.normal(k1, (3, 4))).astype(dtype),
            "b": (scale * jax.random.normal(k2, (4,))).astype(dtype),
        },
        "out": (scale * jax.random.normal(k3, (2,))).astype(dtype),
    }


def _structure(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [(x.shape, x.dtype) for x in leaves]


@pytest.mark.parametrize("name", names("contract"))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_dtype_and_state_structure_are_stable(name, dtype):
    tx = make(name)
    params = _params(dtype)
    state = tx.init(params)
    before = _structure(state)
    update = jax.jit(tx.update)
    for step in range(8):
        grads = _grads(step, dtype)
        updates, state = update(grads, state, params)
        assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda g: g.dtype, grads)
        assert _structure(state) == before
        assert jax.tree.structure(updates) == jax.tree.structure(grads)
    m = adaclip.metrics(state)
    assert set(m) == {"norm", "threshold", "clipped", "clip_rate", "nonfinite_count"}
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in m.values())


@pytest.mark.parametrize("name", names("contract"))
def test_jit_and_no_jit_agree(name):
    tx = make(name)
    params = _params()
    s_eager = s_jit = tx.init(params)
    update = jax.jit(tx.update)
    for step in range(10):
        grads = _grads(step)
        u_eager, s_eager = tx.update(grads, s_eager, params)
        u_jit, s_jit = update(grads, s_jit, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u_eager, u_jit)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s_eager, s_jit)


@pytest.mark.parametrize("name", names("contract"))
def test_scan_matches_python_loop(name):
    tx = make(name)
    params = _params()
    grads = [_grads(step) for step in range(12)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)

    def body(state, g):
        updates, state = tx.update(g, state, params)
        return state, updates

    s_scan, u_scan = jax.lax.scan(body, tx.init(params), stacked)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step, g in enumerate(grads):
        u, state = update(g, state, params)
        jax.tree.map(lambda a, b, i=step: np.testing.assert_allclose(a[i], b, rtol=1e-6), u_scan, u)
    assert _structure(s_scan) == _structure(state)


@pytest.mark.parametrize("name", names("contract"))
def test_state_stable_under_cond(name):
    tx = make(name)
    params = _params()
    state = tx.init(params)

    @jax.jit
    def step(state, grads, flag):
        return jax.lax.cond(flag, lambda s: tx.update(grads, s, params)[1], lambda s: s, state)

    for i in range(4):
        state = step(state, _grads(i), i % 2 == 0)
    assert _structure(state) == _structure(tx.init(params))


@pytest.mark.parametrize("name", names("contract"))
def test_chain_with_adam_trains(name):
    tx = optax.chain(make(name), adam(1e-2))
    params = _params()
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for i in range(6):
        params, state = step(params, state, _grads(i))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    assert int(adaclip.metrics(state)["nonfinite_count"]) == 0


@pytest.mark.parametrize("name", names("contract"))
def test_multisteps_sees_accumulated_gradient(name):
    k = 3
    inner = make(name)
    tx = multi_steps(inner, every_k_schedule=k)
    params = _params()
    state = tx.init(params)
    ref_state = inner.init(params)
    update = jax.jit(tx.update)
    for real_step in range(4):
        micro = [_grads(10 * real_step + j) for j in range(k)]
        for g in micro:
            updates, state = update(g, state, params)
        mean = jax.tree.map(lambda *xs: sum(xs) / k, *micro)
        ref_updates, ref_state = inner.update(mean, ref_state, params)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
            updates,
            ref_updates,
        )
    m = adaclip.metrics(state)
    np.testing.assert_allclose(m["norm"], ref_state.norm, rtol=1e-5)


@pytest.mark.parametrize(
    "clipper",
    [adaclip.clip_by_global_norm, adaclip.clip_by_leaf_norm, adaclip.clip_by_value],
    ids=lambda c: c.__name__,
)
def test_inject_hyperparams_threshold(clipper):
    tx = optax.inject_hyperparams(clipper)(threshold=1.0)
    params = _params()
    state = tx.init(params)
    compiles = []

    @jax.jit
    def step(grads, state):
        compiles.append(1)  # runs once per trace
        return tx.update(grads, state, params)

    grads = _grads(4)
    u1, state = step(grads, state)
    state.hyperparams["threshold"] = jnp.array(0.25, jnp.float32)
    u2, state = step(grads, state)
    assert len(compiles) == 1
    ref1 = clipper(1.0).update(grads, clipper(1.0).init(params))[0]
    ref2 = clipper(0.25).update(grads, clipper(0.25).init(params))[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, ref1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u2, ref2)
    assert float(adaclip.metrics(state)["threshold"].max()) == 0.25


@pytest.mark.parametrize("name", names("contract"))
def test_partition_gives_each_group_its_own_clip(name):
    tx = optax.partition(
        {"hidden": optax.chain(make(name), optax.sgd(0.1)), "out": optax.sgd(0.1)},
        {"dense": {"w": "hidden", "b": "hidden"}, "out": "out"},
    )
    params = _params()
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(_grads(4), state, params)
    m = adaclip.metrics(state)
    assert set(m) == {"norm", "threshold", "clipped", "clip_rate", "nonfinite_count"}
    np.testing.assert_allclose(updates["out"], -0.1 * _grads(4)["out"], rtol=1e-6)


def test_transformations_are_extra_args_aware():
    tx = adaclip.clip_by_global_norm(1.0)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    state = tx.init(_params())
    # Extra keyword arguments (e.g. a loss passed down the chain) are accepted.
    tx.update(_grads(0), state, _params(), value=jnp.float32(1.0))


@functools.cache
def _np_params():
    return _params()
