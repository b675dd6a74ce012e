"""Checkpoints: an optimizer state holding adaclip saves, restores and resumes
bit for bit, with orbax-checkpoint and with flax.serialization."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from _cases import make, names
from _standard import adam, multi_steps, standard
from flax import serialization

import adaclip

STEPS = 16
# Saved after 3 steps: every ring buffer (windows 4, 6, 16) is part-filled,
# every warm-up of 4 or more steps (zscore, zclip, adagc, warmup) is under way,
# and the EMA of ``ema(..., warmup_steps=2)`` has left its warm-up.
SAVE_AT = 3


def _params():
    return {"a": jnp.zeros((3, 2), jnp.float32), "b": {"c": jnp.zeros((4,), jnp.float32)}}


@functools.cache
def _grads(step):
    rng = np.random.default_rng(step)
    scale = 25.0 if step % 5 == 4 else 1.0 + 0.1 * step
    g = {
        "a": (scale * rng.standard_normal((3, 2))).astype(np.float32),
        "b": {"c": (scale * rng.standard_normal(4)).astype(np.float32)},
    }
    if step == SAVE_AT + 2:  # a non-finite step after the restart
        g["a"][0, 0] = np.nan
    return g


def _optimizer(name):
    return optax.chain(make(name), adam(1e-2))


def _run(step, params, state, steps):
    updates = []
    for t in steps:
        u, state = step(_grads(t), state, params)
        updates.append(u)
    return updates, state


def _assert_bitwise(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _flax_roundtrip(template, state, tmp_path):
    del tmp_path
    return serialization.from_bytes(template, serialization.to_bytes(state))


def _orbax_roundtrip(template, state, tmp_path):
    path = tmp_path / "ckpt"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state)
        ckptr.wait_until_finished()
        return ckptr.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, template))


ROUNDTRIPS = {"flax": _flax_roundtrip, "orbax": _orbax_roundtrip}


def _check_resume(tx, params, save_at, tmp_path):
    step = jax.jit(tx.update)
    full_updates, full_state = _run(step, params, tx.init(params), range(STEPS))
    _, mid_state = _run(step, params, tx.init(params), range(save_at))
    for backend, roundtrip in ROUNDTRIPS.items():
        # Restored into a fresh template, as a new process would.
        restored = roundtrip(tx.init(params), mid_state, tmp_path / backend)
        _assert_bitwise(restored, mid_state)
        resumed_updates, resumed_state = _run(step, params, restored, range(save_at, STEPS))
        _assert_bitwise(resumed_updates, full_updates[save_at:])
        _assert_bitwise(resumed_state, full_state)
    return full_state


@pytest.mark.parametrize("name", names("scale"))
def test_resume_is_bit_identical(name, tmp_path):
    """With flax.serialization and with orbax: stopping after SAVE_AT steps,
    saving, restoring into a fresh template and continuing gives the
    uninterrupted run's updates and final state bit for bit (ring buffers
    mid-fill, warm-ups mid-way, a NaN step after the restart included)."""
    full_state = _check_resume(_optimizer(name), _params(), SAVE_AT, tmp_path)
    assert int(adaclip.metrics(full_state)["nonfinite_count"]) == 1


def test_wrapped_chain_resumes(tmp_path):
    """MultiSteps around skip_bad_steps around a chain of a per-leaf clipper
    and inject_hyperparams(adam): the whole nested state checkpoints and
    resumes bit for bit, including the accumulator mid-accumulation."""
    inner = optax.chain(
        adaclip.clip_by_leaf_norm(adaclip.ema(2.0, 0.8)),
        standard(optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)),
    )
    skip = adaclip.skip_bad_steps(inner, spike_factor=1.5)
    tx = multi_steps(skip, every_k_schedule=2).gradient_transformation()
    state = _check_resume(tx, _params(), 5, tmp_path)  # 5: mid-accumulation
    assert int(state.inner_opt_state.skip_count) >= 1
