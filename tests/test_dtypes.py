"""float64 (``jax_enable_x64``) and complex gradients.

Run in a subprocess: x64 is process-wide and the other tests run without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaclip

X64_SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np, optax, adaclip

    rng = np.random.default_rng(0)
    g = {"a": jnp.asarray(rng.normal(size=5)), "b": jnp.asarray(rng.normal(size=(3, 2))),
         "c": jnp.asarray(rng.normal(size=3) + 1j * rng.normal(size=3))}
    for c in (100.0, 0.3):
        tx = adaclip.clip_by_global_norm(c)
        state = tx.init(g)
        dtypes0 = jax.tree.map(lambda x: x.dtype, state)
        u, state = jax.jit(tx.update)(g, state)
        assert jax.tree.map(lambda x: x.dtype, state) == dtypes0
        assert state.norm.dtype == jnp.float32
        ref, _ = optax.clip_by_global_norm(c).update(g, None)
        for k in g:
            assert u[k].dtype == g[k].dtype, k
            if c == 100.0:
                assert np.array_equal(np.asarray(u[k]), np.asarray(g[k])), k
            else:
                np.testing.assert_allclose(np.asarray(u[k]), np.asarray(ref[k]), rtol=1e-12)
    # Per-leaf: each leaf against optax on that leaf alone.
    u, _ = adaclip.clip_by_leaf_norm(0.3).update(g, adaclip.clip_by_leaf_norm(0.3).init(g))
    for k in g:
        r, _ = optax.clip_by_global_norm(0.3).update(g[k], None)
        np.testing.assert_allclose(np.asarray(u[k]), np.asarray(r), rtol=1e-12)
    # Value clipping of a float64 leaf: exact.
    u, _ = adaclip.clip_by_value(0.3).update(g["a"], adaclip.clip_by_value(0.3).init(g["a"]))
    assert np.array_equal(np.asarray(u), np.clip(np.asarray(g["a"]), -0.3, 0.3))
    # The statistic of a float64 leaf beyond float32's range is float64-accurate.
    big = {"x": jnp.array([3e200, 4e200])}
    tx = adaclip.clip_by_global_norm(1.0)
    u, s = tx.update(big, tx.init(big))
    np.testing.assert_allclose(np.asarray(u["x"]), [0.6, 0.8], rtol=1e-12)
    # An adaptive rule keeps a float32 state on float64 gradients.
    tx = adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9))
    state = tx.init(g)
    dtypes0 = jax.tree.map(lambda x: x.dtype, state)
    for _ in range(3):
        u, state = jax.jit(tx.update)(g, state)
    assert jax.tree.map(lambda x: x.dtype, state) == dtypes0
    assert all(u[k].dtype == g[k].dtype for k in g)
    print("OK")
    """
)


def test_float64_exact_and_equal_to_optax():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", X64_SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


COMPLEX = {
    "z": jnp.array([3.0 + 4.0j, 1.0 - 2.0j, 0.5j], jnp.complex64),
    "r": jnp.array([1.0, -2.0], jnp.float32),
}


@pytest.mark.parametrize("threshold", [1.0, 100.0])
def test_complex_clipped_by_modulus_like_optax(threshold):
    tx = adaclip.clip_by_global_norm(threshold)
    updates, state = tx.update(COMPLEX, tx.init(COMPLEX))
    ref, _ = optax.clip_by_global_norm(threshold).update(COMPLEX, None)
    expected_norm = np.sqrt(sum(np.sum(np.abs(np.asarray(x)) ** 2) for x in COMPLEX.values()))
    np.testing.assert_allclose(float(state.norm), expected_norm, rtol=1e-6)
    for k in COMPLEX:
        assert updates[k].dtype == COMPLEX[k].dtype
        np.testing.assert_allclose(np.asarray(updates[k]), np.asarray(ref[k]), rtol=1e-6)


def test_complex_leaf_norm():
    tx = adaclip.clip_by_leaf_norm(1.0)
    updates, state = tx.update(COMPLEX, tx.init(COMPLEX))
    for k, i in (("r", 0), ("z", 1)):
        np.testing.assert_allclose(
            float(state.norm[i]), np.linalg.norm(np.asarray(COMPLEX[k])), rtol=1e-6
        )
        ref, _ = optax.clip_by_global_norm(1.0).update(COMPLEX[k], None)
        np.testing.assert_allclose(np.asarray(updates[k]), np.asarray(ref), rtol=1e-6)


@pytest.mark.parametrize("part", ["real", "imag"])
def test_nan_in_complex_is_nonfinite(part):
    bad = complex(np.nan, 1.0) if part == "real" else complex(1.0, np.nan)
    grads = {"z": jnp.array([1.0 + 1.0j, bad], jnp.complex64)}
    tx = adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9))
    state = tx.init(grads)
    updates, new_state = tx.update(grads, state)
    assert int(new_state.nonfinite_count) == 1
    assert np.array_equal(np.asarray(updates["z"]), np.zeros(2, np.complex64))
    for a, b in zip(jax_leaves(new_state.rule_state), jax_leaves(state.rule_state), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_clip_by_value_rejects_complex_like_optax():
    with pytest.raises(ValueError):
        optax.clip(1.0).update(COMPLEX, None)
    tx = adaclip.clip_by_value(1.0)
    with pytest.raises(ValueError, match="clip_by_value cannot clip complex"):
        tx.update(COMPLEX, tx.init(COMPLEX))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_goes_through_float32(dtype):
    g = {"w": jnp.array([3.0, 4.0], dtype)}
    updates, _ = adaclip.clip_by_global_norm(1.0).update(
        g, adaclip.clip_by_global_norm(1.0).init(g)
    )
    assert updates["w"].dtype == dtype
    np.testing.assert_allclose(np.asarray(updates["w"], np.float32), [0.6, 0.8], rtol=1e-2)
