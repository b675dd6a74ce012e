"""Float32 accumulation, overflow safety, zero thresholds and non-finite steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _standard import schedule

import adaclip

CLIPPERS = [adaclip.clip_by_global_norm, adaclip.clip_by_leaf_norm, adaclip.clip_by_value]


def _np_global_norm(tree):
    return np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("magnitude", [1e19, 1e25, 1e30, 1e36])
def test_global_norm_exact_for_huge_float32_elements(magnitude):
    rng = np.random.default_rng(0)
    grads = {
        "a": jnp.asarray(rng.normal(size=(64, 33)) * magnitude, jnp.float32),
        "b": jnp.asarray(rng.normal(size=(17,)), jnp.float32),
    }
    tx = adaclip.clip_by_global_norm(1.0)
    out, state = jax.jit(tx.update)(grads, tx.init(grads))
    want = _np_global_norm(grads)
    np.testing.assert_allclose(float(state.norm), want, rtol=1e-5)
    np.testing.assert_allclose(_np_global_norm(out), 1.0, rtol=1e-5)
    assert int(state.nonfinite_count) == 0


def test_leaf_norms_exact_for_huge_and_ordinary_leaves():
    rng = np.random.default_rng(1)
    grads = [
        jnp.asarray(rng.normal(size=(40,)) * 1e30, jnp.float32),
        jnp.asarray(rng.normal(size=(40,)), jnp.float32),
        jnp.zeros((3,), jnp.float32),
    ]
    tx = adaclip.clip_by_leaf_norm(2.0)
    out, state = jax.jit(tx.update)(grads, tx.init(grads))
    want = [np.linalg.norm(np.asarray(g, np.float64)) for g in grads]
    np.testing.assert_allclose(np.asarray(state.norm), want, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out[0], np.float64)), 2.0, rtol=1e-5)
    np.testing.assert_array_equal(out[2], 0.0)


def test_float16_norm_far_above_float16_range():
    g = jnp.full((10_000,), 6.0e4, jnp.float16)  # norm 6e6 >> 65504
    tx = adaclip.clip_by_global_norm(1.0)
    out, state = jax.jit(tx.update)(g, tx.init(g))
    want = np.sqrt(10_000) * 6.0e4
    np.testing.assert_allclose(float(state.norm), want, rtol=1e-5)
    assert out.dtype == jnp.float16
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out, np.float64)), 1.0, rtol=2 * 2.0**-10)


def test_bfloat16_huge_elements():
    g = jnp.full((100,), 1e30, jnp.bfloat16)
    tx = adaclip.clip_by_global_norm(1.0)
    _, state = tx.update(g, tx.init(g))
    want = 10.0 * float(np.asarray(g[0], np.float64))
    np.testing.assert_allclose(float(state.norm), want, rtol=1e-5)


@pytest.mark.parametrize("clipper", CLIPPERS, ids=lambda c: c.__name__)
def test_zero_threshold_zero_gradient_gives_zeros(clipper):
    g = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2), jnp.float16)}
    tx = clipper(0.0)
    out, state = jax.jit(tx.update)(g, tx.init(g))
    for x in jax.tree.leaves(out):
        assert bool(jnp.all(x == 0)) and bool(jnp.all(jnp.isfinite(x)))
    assert int(state.nonfinite_count) == 0
    g2 = {"a": jnp.ones(3), "b": jnp.ones((2, 2), jnp.float16)}
    out2, _ = tx.update(g2, state)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(out2))


def test_schedule_decaying_to_zero_never_nan():
    import optax

    tx = adaclip.clip_by_global_norm(schedule(optax.linear_schedule(1.0, 0.0, 3)))
    g = jnp.zeros(4)
    state = tx.init(g)
    for _ in range(6):
        out, state = tx.update(g, state)
        assert bool(jnp.all(out == 0))
    out, state = tx.update(jnp.ones(4), state)
    np.testing.assert_array_equal(out, 0.0)
    assert float(state.threshold) == 0.0


@pytest.mark.parametrize("clipper", CLIPPERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_skip_zeroes_update_and_keeps_state(clipper, bad):
    rule = adaclip.ema(2.0, 0.9)
    tx = clipper(rule)
    params = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for s in [1.0, 2.0, 1.5]:
        _, state = update({"a": jnp.full(3, s), "b": jnp.full(2, -s)}, state)
    bad_grads = {"a": jnp.array([1.0, bad, 2.0]), "b": jnp.ones(2)}
    out, new_state = update(bad_grads, state)
    for x in jax.tree.leaves(out):
        np.testing.assert_array_equal(x, 0.0)
    assert int(new_state.nonfinite_count) == int(state.nonfinite_count) + 1
    assert int(new_state.count) == int(state.count) + 1
    jax.tree.map(np.testing.assert_array_equal, new_state.rule_state, state.rule_state)
    for name in ("norm", "threshold", "clip_rate"):
        np.testing.assert_array_equal(getattr(new_state, name), getattr(state, name))
    assert not bool(jnp.any(new_state.clipped))
    # A spike right after the bad step is still clipped against the old level.
    spike = {"a": jnp.full(3, 100.0), "b": jnp.full(2, 100.0)}
    out, after = update(spike, new_state)
    assert bool(jnp.all(after.clipped))


@pytest.mark.parametrize("clipper", CLIPPERS, ids=lambda c: c.__name__)
def test_nonfinite_propagate_passes_through(clipper):
    tx = clipper(1.0, nonfinite="propagate")
    g = {"a": jnp.array([1.0, np.nan, 2.0]), "b": jnp.array([5.0, 5.0])}
    out, state = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(np.asarray(out["a"]), np.asarray(g["a"]))
    np.testing.assert_array_equal(np.asarray(out["b"]), np.asarray(g["b"]))
    assert int(state.nonfinite_count) == 1


def test_infinite_element_is_nonfinite_not_overflow():
    g = jnp.array([1.0, np.inf], jnp.float32)
    tx = adaclip.clip_by_global_norm(1.0)
    out, state = tx.update(g, tx.init(g))
    assert int(state.nonfinite_count) == 1
    np.testing.assert_array_equal(out, 0.0)


def test_empty_tree():
    tx = adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9))
    out, state = tx.update({}, tx.init({}))
    assert out == {} and float(state.norm) == 0.0
    tx = adaclip.clip_by_leaf_norm(1.0)
    out, state = tx.update({}, tx.init({}))
    assert state.norm.shape == (0,)


def test_per_leaf_many_leaves_path_matches(monkeypatch):
    # Above _MAX_MASKED_LEAVES leaves the per-leaf clipper reads factors with
    # slices instead of one-hot masks: same results, exactly.
    from adaclip import _clippers

    rng = np.random.default_rng(0)
    steps = [
        {f"w{i}": jnp.asarray(rng.normal(size=(3,)) * (i + 1) * s, jnp.float32) for i in range(5)}
        for s in (1.0, 1.0, 30.0, np.nan, 1.0, 0.1)
    ]

    def run():
        tx = adaclip.clip_by_leaf_norm(adaclip.ema(1.5, 0.9))
        update = jax.jit(tx.update)
        state, outs = tx.init(steps[0]), []
        for g in steps:
            out, state = update(g, state)
            outs.append(out)
        return outs, state

    masked = run()
    monkeypatch.setattr(_clippers, "_MAX_MASKED_LEAVES", 2)
    sliced = run()
    for a, b in zip(jax.tree.leaves(masked), jax.tree.leaves(sliced), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("scale", [1.0, 1e20])
def test_overflow_fallback_covers_large_and_small_leaves(scale):
    # Leaves above 2**14 elements are reduced outside the statistic's loop and
    # rescaled by their own conditional: both kinds must be exact on overflow.
    rng = np.random.default_rng(1)
    big = rng.normal(size=(20_000,)) * scale
    small = rng.normal(size=(300,)) * scale
    g = {"big": jnp.asarray(big, jnp.float32), "small": jnp.asarray(small, jnp.float32)}
    want = np.sqrt(np.sum(np.float64(g["big"]) ** 2) + np.sum(np.float64(g["small"]) ** 2))
    tx = adaclip.clip_by_global_norm(1.0)
    out, state = jax.jit(tx.update)(g, tx.init(g))
    np.testing.assert_allclose(float(state.norm), want, rtol=1e-5)
    out_norm = np.sqrt(sum(np.sum(np.float64(x) ** 2) for x in jax.tree.leaves(out)))
    np.testing.assert_allclose(out_norm, 1.0, rtol=1e-5)
    tx = adaclip.clip_by_leaf_norm(1.0)
    _, state = jax.jit(tx.update)(g, tx.init(g))
    per_leaf = [np.linalg.norm(np.float64(g[k])) for k in sorted(g)]
    np.testing.assert_allclose(np.asarray(state.norm), per_leaf, rtol=1e-5)
