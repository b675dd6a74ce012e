"""adaclip.metrics finds clip states in every nesting users build."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _standard import adam, multi_steps

import adaclip

NAMES = {"norm", "threshold", "clipped", "clip_rate", "nonfinite_count"}
PARAMS = {"hidden": {"w": jnp.ones((4, 3))}, "out": {"w": jnp.ones((3,))}}
GRADS = {"hidden": {"w": jnp.full((4, 3), 2.0)}, "out": {"w": jnp.full((3,), 10.0)}}
GLOBAL_NORM = float(np.sqrt(12 * 4.0 + 3 * 100.0))


def _step(tx, steps=1):
    state = tx.init(PARAMS)
    for _ in range(steps):
        _, state = jax.jit(tx.update)(GRADS, state, PARAMS)
    return state


def test_single_clipper_in_chain():
    state = _step(optax.chain(adaclip.clip_by_global_norm(1.0), adam(1e-3)))
    m = adaclip.metrics(state)
    assert set(m) == NAMES
    np.testing.assert_allclose(m["norm"], GLOBAL_NORM, rtol=1e-6)
    assert float(m["threshold"]) == 1.0 and bool(m["clipped"])
    # optax.tree.get reads the same field where there is a single clipper.
    np.testing.assert_allclose(optax.tree.get(state, "norm"), GLOBAL_NORM, rtol=1e-6)


def test_inject_hyperparams():
    tx = optax.inject_hyperparams(adaclip.clip_by_global_norm)(threshold=100.0)
    m = adaclip.metrics(_step(optax.chain(tx, optax.sgd(0.1))))
    assert set(m) == NAMES and not bool(m["clipped"])


def test_multisteps():
    tx = multi_steps(optax.chain(adaclip.clip_by_global_norm(1.0), optax.sgd(0.1)), 2)
    m = adaclip.metrics(_step(tx, steps=2))
    np.testing.assert_allclose(m["norm"], GLOBAL_NORM, rtol=1e-6)


def test_several_clippers_have_distinct_keys():
    tx = optax.chain(
        adaclip.clip_by_value(5.0),
        adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9)),
        optax.sgd(0.1),
    )
    m = adaclip.metrics(_step(tx))
    assert set(m) == {f"{i}/{n}" for i in (0, 1) for n in NAMES}
    np.testing.assert_allclose(m["0/norm"], 10.0)  # max |g|
    np.testing.assert_allclose(m["1/norm"], np.sqrt(12 * 4.0 + 3 * 25.0), rtol=1e-6)


def test_partition_labels_become_prefixes():
    tx = optax.partition(
        {
            "hidden": optax.chain(adaclip.clip_by_global_norm(1.0), optax.sgd(0.1)),
            "out": optax.chain(adaclip.clip_by_global_norm(50.0), optax.sgd(0.1)),
        },
        {"hidden": {"w": "hidden"}, "out": {"w": "out"}},
    )
    m = adaclip.metrics(_step(tx))
    assert {k.split("/")[0] for k in m} == {"hidden", "out"}
    np.testing.assert_allclose(m["hidden/norm"], np.sqrt(48.0), rtol=1e-6)
    np.testing.assert_allclose(m["out/norm"], np.sqrt(300.0), rtol=1e-6)
    assert bool(m["hidden/clipped"]) and not bool(m["out/clipped"])


def test_nested_duplicate_short_names_fall_back_to_paths():
    inner = optax.chain(adaclip.clip_by_global_norm(1.0), adaclip.clip_by_leaf_norm(1.0))
    tx = optax.chain(inner, optax.sgd(0.1))
    m = adaclip.metrics(_step(tx))
    assert len(m) == 10
    assert len({k.rsplit("/", 1)[0] for k in m}) == 2


def test_no_clipper_gives_empty_dict():
    assert adaclip.metrics(adam(1e-3).init(PARAMS)) == {}


def test_metrics_is_jittable():
    tx = optax.chain(adaclip.clip_by_leaf_norm(adaclip.ema(2.0, 0.9)), adam(1e-3))
    state = _step(tx)
    m = jax.jit(adaclip.metrics)(state)
    assert m["norm"].shape == (2,)


def test_flax_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")

    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    tx = optax.chain(adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9)), adam(1e-3))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
        optimizer.update(model, grads)

    x = jnp.ones((2, 4))
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    want = np.sqrt(sum(np.sum(np.asarray(g) ** 2) for g in jax.tree.leaves(grads)))
    step(model, optimizer, x)
    m = adaclip.metrics(optimizer.opt_state)
    assert set(m) == NAMES
    np.testing.assert_allclose(m["norm"], want, rtol=1e-5)
