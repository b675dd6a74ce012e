"""Invariants of the clippers, checked on generated inputs (hypothesis)."""

import functools

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import make, names
from hypothesis import given, settings

import adaclip

SHAPES = {"a": (7,), "b": (3, 4)}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ULPS = 4


def _eps(dtype):
    return float(jnp.finfo(dtype).eps)


@functools.cache
def _jitted(clipper, dtype_name):
    tx = clipper(adaclip.fixed(1.0))

    @jax.jit
    def run(grads, threshold):
        tx = clipper(threshold)
        return tx.update(grads, tx.init(grads))

    del tx
    return run


def _grads(draw_values, dtype):
    return {k: jnp.asarray(v).astype(dtype) for k, v in draw_values.items()}


# XLA:CPU flushes subnormals to zero in arithmetic (as Adam would too).
finite_elems = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32)
grad_trees = st.fixed_dictionaries(
    {k: hnp.arrays(np.float32, shape, elements=finite_elems) for k, shape in SHAPES.items()}
)


thresholds = st.one_of(st.just(0.0), st.floats(0.0009765625, 1024.0, width=32))


def _norm64(x):
    return float(np.linalg.norm(np.asarray(x, np.float64)))


@settings(max_examples=40, deadline=None)
@given(values=grad_trees, threshold=thresholds, dtype=st.sampled_from(sorted(DTYPES)))
def test_global_norm_bound_identity_and_direction(values, threshold, dtype):
    grads = _grads(values, DTYPES[dtype])
    out, state = _jitted(adaclip.clip_by_global_norm, dtype)(grads, jnp.float32(threshold))
    g = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(grads)])
    o = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(out)])
    norm = np.linalg.norm(g)
    tol = ULPS * _eps(DTYPES[dtype])
    assert np.linalg.norm(o) <= threshold * (1 + tol) + 1e-30
    if norm <= threshold:
        np.testing.assert_array_equal(o, g)  # identity below the threshold
    elif np.linalg.norm(o) > 0:
        # Same direction: o is a positive multiple of g, up to rounding.
        cos = o @ g / (np.linalg.norm(o) * norm)
        assert cos >= 1 - 10 * tol


@settings(max_examples=40, deadline=None)
@given(values=grad_trees, threshold=thresholds, dtype=st.sampled_from(sorted(DTYPES)))
def test_leaf_norm_bound_per_leaf(values, threshold, dtype):
    grads = _grads(values, DTYPES[dtype])
    out, _ = _jitted(adaclip.clip_by_leaf_norm, dtype)(grads, jnp.float32(threshold))
    tol = ULPS * _eps(DTYPES[dtype])
    for g, o in zip(jax.tree.leaves(grads), jax.tree.leaves(out), strict=True):
        assert _norm64(o) <= threshold * (1 + tol) + 1e-30
        if _norm64(g) <= threshold:
            np.testing.assert_array_equal(np.asarray(o), np.asarray(g))


@settings(max_examples=40, deadline=None)
@given(values=grad_trees, threshold=thresholds, dtype=st.sampled_from(sorted(DTYPES)))
def test_value_bound_and_identity(values, threshold, dtype):
    grads = _grads(values, DTYPES[dtype])
    out, _ = _jitted(adaclip.clip_by_value, dtype)(grads, jnp.float32(threshold))
    for g, o in zip(jax.tree.leaves(grads), jax.tree.leaves(out), strict=True):
        g64, o64 = np.asarray(g, np.float64), np.asarray(o, np.float64)
        # The bound is cast to the gradient dtype: within one rounding of it.
        assert np.all(np.abs(o64) <= threshold * (1 + _eps(DTYPES[dtype])))
        inside = np.abs(g64) <= threshold
        np.testing.assert_array_equal(o64[inside], g64[inside])
        if threshold > 0:
            assert np.all(np.sign(o64[~inside]) == np.sign(g64[~inside]))


special = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e-30, 1e30])
ordinary = st.floats(1e-3, 1e3)
sequences = st.lists(st.one_of(special, ordinary, ordinary), min_size=1, max_size=40)


@functools.cache
def _sequence_runner(name):
    tx = make(name)
    params = {"a": jnp.zeros(2), "b": jnp.zeros(3)}

    @jax.jit
    def run(seq):
        def body(state, s):
            grads = {"a": jnp.array([s, 0.5 * s]), "b": jnp.full(3, -s)}
            _, state = tx.update(grads, state)
            return state, None

        return jax.lax.scan(body, tx.init(params), seq)[0]

    return run


@pytest.mark.parametrize("name", names("clipper"))
@settings(max_examples=15, deadline=None)
@given(seq=sequences)
def test_state_stays_finite_after_bad_sequences(name, seq):
    seq = np.asarray(seq, np.float32)
    state = _sequence_runner(name)(jnp.asarray(seq))
    for leaf in jax.tree.leaves(state):
        assert bool(jnp.all(jnp.isfinite(leaf))), (name, seq)
    assert bool(jnp.all(state.threshold >= 0))
    assert int(state.nonfinite_count) == int(np.sum(~np.isfinite(seq)))
