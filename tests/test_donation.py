"""Every transformation's state can be donated: ``init`` returns distinct buffers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest
from _cases import make, names

PARAMS = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}


@pytest.mark.parametrize("name", names("contract"))
def test_init_leaves_are_distinct_buffers(name):
    state = make(name).init(PARAMS)
    pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(state)]
    assert len(set(pointers)) == len(pointers), name


@pytest.mark.parametrize("name", names("contract"))
def test_donated_train_step_runs(name):
    tx = optax.chain(make(name), optax.sgd(0.1))

    def train_step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    step = jax.jit(train_step, donate_argnums=(0, 1))
    params = jax.tree.map(jnp.array, PARAMS)
    opt_state = tx.init(params)
    for scale in (1.0, 5.0, 0.1):
        grads = jax.tree.map(lambda p, s=scale: s * jnp.ones_like(p), PARAMS)
        params, opt_state = step(params, opt_state, grads)
    jax.block_until_ready((params, opt_state))
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))
