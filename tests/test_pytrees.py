"""Unusual gradient trees: None leaves, empty trees, integer and float0
leaves, and optax.MaskedNode (inside optax.masked). Documented in
docs/robustness.md."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cases import make

import adaclip

NAMES = ["global-ema", "leaf-moving_average", "value-percentile", "autoclip", "zclip", "adagc"]


def _float_grads(step):
    rng = np.random.default_rng(step)
    scale = 30.0 if step == 3 else 1.0
    return {
        "w": (scale * rng.standard_normal((2, 3))).astype(np.float32),
        "b": (scale * rng.standard_normal(3)).astype(np.float32),
    }


def _run(tx, grads_seq, params=None):
    state = tx.init(grads_seq[0] if params is None else params)
    update = jax.jit(tx.update)
    out = []
    for g in grads_seq:
        u, state = update(g, state)
        out.append(u)
    return out, state


def _equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", NAMES)
def test_none_leaves_are_absent_leaves(name):
    """A None in the gradient tree (a parameter without gradient) is not a
    leaf: the clip behaves exactly as without it and returns None there."""
    seq = [_float_grads(t) for t in range(6)]
    with_none = [{**g, "frozen": None} for g in seq]
    ref, ref_state = _run(make(name), seq)
    got, state = _run(make(name), with_none)
    for u, r in zip(got, ref, strict=True):
        assert u["frozen"] is None
        _equal({"w": u["w"], "b": u["b"]}, r)
    _equal(state, ref_state)


@pytest.mark.parametrize("name", NAMES)
def test_integer_and_float0_leaves_pass_through(name):
    """Integer and float0 leaves (no gradient: a step counter, an embedding
    index; jax.grad(allow_int=True) gives float0) pass through untouched and
    count as zero in the statistic: the float leaves are clipped exactly as
    without them. (Before, an int leaf was multiplied by the float scale and
    truncated.)"""
    seq = [_float_grads(t) for t in range(6)]
    counter = np.array([7, -3], np.int32)
    f0 = np.zeros((2,), jax.dtypes.float0)
    mixed = [{**g, "count": counter, "idx": f0} for g in seq]
    ref, ref_state = _run(make(name), seq)
    got, state = _run(make(name), mixed)
    for u, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(u["count"], counter)
        assert u["count"].dtype == np.int32 and u["idx"].dtype == jax.dtypes.float0
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), {"w": u["w"], "b": u["b"]}, r
        )
    m, ref_m = adaclip.metrics(state), adaclip.metrics(ref_state)
    if np.ndim(m["norm"]) == 0:  # global statistics: the extra leaves add nothing
        np.testing.assert_allclose(m["norm"], ref_m["norm"], rtol=1e-6)
    else:  # per-leaf: leaves in key order b, count, idx, w; the extra ones read 0
        norm = np.asarray(m["norm"])
        np.testing.assert_array_equal(norm[1:3], 0.0)
        np.testing.assert_allclose(norm[[0, 3]], ref_m["norm"], rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_empty_tree(name):
    """An empty gradient tree (no trainable parameters): init and update
    work under jit, the update is empty, the state stays finite and keeps its
    shapes; the global statistic is 0 and per-leaf metrics have shape (0,)."""
    tx = make(name)
    state = tx.init({})
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for _ in range(3):
        u, state = jax.jit(tx.update)({}, state)
        assert u == {}
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state) if x.dtype != bool)
    norm = adaclip.metrics(state)["norm"]
    assert norm.shape in ((), (0,))
    np.testing.assert_array_equal(norm, 0.0)


@pytest.mark.parametrize("clipper", [adaclip.clip_by_global_norm, adaclip.clip_by_leaf_norm])
def test_masked_node_leaves_take_no_part(clipper):
    """Inside optax.masked the clip sees optax.MaskedNode for masked-out
    leaves: they are not leaves, so they take no part in the statistic and
    come back untouched; the masked-in leaves are clipped as on their own."""
    grads = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([30.0, 40.0]), "c": jnp.array([0.6, 0.8])}
    mask = {"w": True, "b": False, "c": True}
    tx = optax.masked(clipper(1.0), mask)
    u, state = tx.update(grads, tx.init(grads))
    np.testing.assert_array_equal(u["b"], grads["b"])
    alone = {"w": grads["w"], "c": grads["c"]}
    ref, ref_state = clipper(1.0).update(alone, clipper(1.0).init(alone))
    np.testing.assert_allclose(u["w"], ref["w"], rtol=1e-6)
    np.testing.assert_allclose(u["c"], ref["c"], rtol=1e-6)
    norm = adaclip.metrics(state)["norm"]
    expected = np.hypot(5.0, 1.0) if clipper is adaclip.clip_by_global_norm else [1.0, 5.0]
    np.testing.assert_allclose(norm, expected, rtol=1e-6)


def test_masked_node_with_skip_bad_steps():
    """skip_bad_steps around optax.masked(clip) with a NaN in a masked-out
    leaf: the clip never sees it (not skipped); a NaN in a masked-in leaf is
    skipped."""
    inner = optax.chain(
        optax.masked(adaclip.clip_by_global_norm(1.0), {"w": True, "b": False}), optax.sgd(1.0)
    )
    tx = adaclip.skip_bad_steps(inner)
    params = {"w": jnp.zeros(2), "b": jnp.zeros(2)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones(2), "b": jnp.array([jnp.nan, 0.0])}, state, params)
    assert not bool(state.skipped)
    _, state = tx.update({"w": jnp.array([jnp.nan, 0.0]), "b": jnp.ones(2)}, state, params)
    assert bool(state.skipped)
