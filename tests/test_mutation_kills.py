"""Tests written to kill mutants that every other test let live (benchmarks/mutation.py).

Each compares with an independent reference: plain jnp/NumPy formulas (with
JAX's own derivative rules for ``jnp.max``, ``jnp.clip``) or central finite
differences in float64, never with adaclip's own output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaclip

# A rule whose threshold is half the statistic: the clip bound then depends on
# max |g|, so the derivative of the clipped gradient runs through the
# statistic's tangent (with a fixed threshold it never does).
HALF = adaclip.ThresholdRule(
    init=lambda stat: jnp.zeros_like(stat), update=lambda stat, s: (0.5 * stat, s)
)
GRADS = {"a": jnp.array([3.0, -1.0, 0.2]), "b": jnp.array([[0.5, -2.0], [1.75, 0.0]])}
WEIGHTS = {"a": jnp.array([0.3, -1.1, 2.0]), "b": jnp.array([[0.7, 1.3], [-0.4, 0.9]])}


def _ours(grads):
    tx = adaclip.clip_by_value(HALF)
    updates, _ = tx.update(grads, tx.init(grads))
    return sum(
        jnp.sum(w * u)
        for w, u in zip(jax.tree.leaves(WEIGHTS), jax.tree.leaves(updates), strict=True)
    )


def _reference(grads):
    """jnp's own max and clip: c = max|g| / 2, g <- clip(g, -c, c)."""
    c = 0.5 * jnp.max(jnp.concatenate([jnp.abs(g).reshape(-1) for g in jax.tree.leaves(grads)]))
    return sum(
        jnp.sum(w * jnp.clip(g, -c, c))
        for w, g in zip(jax.tree.leaves(WEIGHTS), jax.tree.leaves(grads), strict=True)
    )


def _finite_difference(grads, eps=1e-6):
    """Central differences of the same formula in float64 NumPy."""
    flat = np.concatenate([np.asarray(g, np.float64).reshape(-1) for g in jax.tree.leaves(grads)])
    w = np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in jax.tree.leaves(WEIGHTS)])

    def f(x):
        c = 0.5 * np.max(np.abs(x))
        return np.sum(w * np.clip(x, -c, c))

    out = np.empty_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = eps
        out[i] = (f(flat + e) - f(flat - e)) / (2 * eps)
    return out


@pytest.mark.parametrize("jit", [False, True])
def test_value_clipper_gradient_runs_through_the_max_abs_tangent(jit):
    grad = jax.grad(_ours)
    if jit:
        grad = jax.jit(grad)
    ours = np.concatenate([np.asarray(g).reshape(-1) for g in jax.tree.leaves(grad(GRADS))])
    ref = np.concatenate(
        [np.asarray(g).reshape(-1) for g in jax.tree.leaves(jax.grad(_reference)(GRADS))]
    )
    fd = _finite_difference(GRADS)
    np.testing.assert_allclose(ref, fd, rtol=1e-5, atol=1e-6)  # the reference itself
    np.testing.assert_allclose(ours, fd, rtol=1e-5, atol=1e-6)
    # The largest element (3.0) carries the threshold's share: not zero.
    assert abs(ours[0]) > 0.1


def test_value_clipper_forward_mode_runs_through_the_max_abs_tangent():
    tangents = jax.tree.map(lambda g: jnp.linspace(-1.0, 1.0, g.size).reshape(g.shape), GRADS)
    _, ours = jax.jvp(_ours, (GRADS,), (tangents,))
    _, ref = jax.jvp(_reference, (GRADS,), (tangents,))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert abs(float(ref)) > 0.1


def test_max_abs_tangent_of_a_negative_maximum_and_of_ties():
    """d max|g| for a negative extreme element (sign) and a tie (averaged, as jnp.max)."""

    def stat(grads):
        tx = adaclip.clip_by_value(HALF)
        _, state = tx.update(grads, tx.init(grads))
        return state.norm

    def ref(grads):
        return jnp.max(jnp.concatenate([jnp.abs(g).reshape(-1) for g in jax.tree.leaves(grads)]))

    for grads in (
        {"a": jnp.array([-4.0, 1.0]), "b": jnp.array([2.0])},
        {"a": jnp.array([-4.0, 1.0]), "b": jnp.array([4.0])},
        {"a": jnp.array([4.0, 4.0, -4.0]), "b": jnp.array([0.5])},
    ):
        ours = jax.grad(stat)(grads)
        want = jax.grad(ref)(grads)
        for o, w in zip(jax.tree.leaves(ours), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(o, w, rtol=1e-6)
