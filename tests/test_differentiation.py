"""``update`` is differentiable in reverse and forward mode (meta-gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cases import make, names

import adaclip

GRADS = {"a": jnp.array([3.0, 4.0, 1.0]), "b": jnp.array([[0.5, -2.0]])}


def _loss(tx, grads):
    updates, _ = tx.update(grads, tx.init(grads))
    return sum(jnp.sum(jnp.sin(u) * u) for u in jax.tree.leaves(updates))


def _close(a, b, rtol=1e-5, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("threshold", [0.5, 2.0, 100.0])
@pytest.mark.parametrize("jit", [False, True])
def test_reverse_mode_equals_optax(threshold, jit):
    """Gradient w.r.t. the gradients and the threshold, clipped and not."""

    def ours(g, c):
        return _loss(adaclip.clip_by_global_norm(c), g)

    def ref(g, c):
        return _loss(optax.clip_by_global_norm(c), g)

    grad = jax.grad(ours, argnums=(0, 1))
    if jit:
        grad = jax.jit(grad)
    _close(grad(GRADS, threshold), jax.grad(ref, argnums=(0, 1))(GRADS, threshold))


@pytest.mark.parametrize("threshold", [0.5, 100.0])
def test_forward_mode_equals_optax(threshold):
    def ours(c):
        return _loss(adaclip.clip_by_global_norm(c), GRADS)

    def ref(c):
        return _loss(optax.clip_by_global_norm(c), GRADS)

    _close(jax.jacfwd(ours)(threshold), jax.jacfwd(ref)(threshold))
    _, tangent = jax.jvp(
        lambda g: _loss(adaclip.clip_by_global_norm(threshold), g), (GRADS,), (GRADS,)
    )
    _, ref_tangent = jax.jvp(
        lambda g: _loss(optax.clip_by_global_norm(threshold), g), (GRADS,), (GRADS,)
    )
    _close(tangent, ref_tangent)


def test_value_clipping_equals_optax_clip():
    def ours(g, c):
        return _loss(adaclip.clip_by_value(c), g)

    def ref(g, c):
        return _loss(optax.clip(c), g)

    _close(jax.grad(ours, (0, 1))(GRADS, 1.5), jax.grad(ref, (0, 1))(GRADS, 1.5))


def test_leaf_norm_equals_per_leaf_optax():
    def ours(g, c):
        return _loss(adaclip.clip_by_leaf_norm(c), g)

    def ref(g, c):
        tx = optax.clip_by_global_norm(c)
        return sum(_loss(tx, {k: v}) for k, v in g.items())

    _close(jax.grad(ours, (0, 1))(GRADS, 1.0), jax.grad(ref, (0, 1))(GRADS, 1.0))


def test_multiplier_gradient_matches_finite_difference():
    """A float hyper-parameter of an adaptive rule (ema's multiplier) after a
    few steps: reverse mode against a central finite difference in float64
    numpy terms (the loss is smooth around this point)."""

    def run(m):
        tx = adaclip.clip_by_global_norm(adaclip.ema(m, 0.5))
        state = tx.init(GRADS)
        total = 0.0
        for s in (1.0, 1.0, 3.0):
            g = jax.tree.map(lambda x, s=s: s * x, GRADS)
            updates, state = tx.update(g, state)
            total = total + sum(jnp.sum(u**2) for u in jax.tree.leaves(updates))
        return total

    m, h = 1.5, 1e-2
    fd = (run(m + h) - run(m - h)) / (2 * h)
    np.testing.assert_allclose(float(jax.grad(run)(m)), float(fd), rtol=1e-3)


def test_zero_gradient_has_finite_derivative():
    zeros = jax.tree.map(jnp.zeros_like, GRADS)
    grads = jax.grad(lambda g: _loss(adaclip.clip_by_global_norm(1.0), g))(zeros)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(grads))


def test_ema_zscore_zero_variance_without_floor_has_finite_derivative():
    """A constant history has variance 0; with ``std_floor=0`` the square root
    sits at 0, where its derivative is infinite. The threshold's derivative
    must be that of the floored rule (the std term contributes nothing)."""

    def total(statistics, floor):
        rule = adaclip.ema_zscore(3.0, 0.5, min_weight=0.0, std_floor=floor, feed="raw")
        state = rule.init(jnp.zeros(()))
        out = jnp.zeros(())
        for s in statistics:
            threshold, state = rule.update(s, state)
            out = out + threshold
        return out

    xs = jnp.ones(3)
    unfloored = jax.grad(total)(xs, 0.0)
    assert bool(jnp.all(jnp.isfinite(unfloored))), unfloored
    np.testing.assert_allclose(unfloored, jax.grad(total)(xs, 1e-6), rtol=1e-6)


@pytest.mark.parametrize("name", names("contract"))
def test_every_transformation_differentiates(name):
    """jax.grad through two steps of every transformation runs and is finite."""

    # Parameters for the measures relative to them (the others ignore them).
    params = jax.tree.map(lambda x: jnp.full_like(x, 0.5), GRADS)

    def run(g):
        tx = make(name)
        state = tx.init(g)
        updates, state = tx.update(g, state, params)
        updates, state = tx.update(jax.tree.map(lambda x: 2.0 * x, g), state, params)
        return sum(jnp.sum(u * u) for u in jax.tree.leaves(updates))

    grads = jax.jit(jax.grad(run))(GRADS)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(grads))
    tangent = jax.jvp(run, (GRADS,), (GRADS,))[1]
    assert bool(jnp.isfinite(tangent))
