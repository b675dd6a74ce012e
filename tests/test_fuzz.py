"""Bad input, with nothing lost: property tests over every rule and recipe.

Each example is a sequence of STEPS two-leaf gradients ``{"a": [x], "b": [y]}``
whose entries mix NaN, +-Inf, 0, +-1e-30, +-1e30 and ordinary values; the
statistic is ``hypot(x, y)`` (global norm), ``(|x|, |y|)`` (per leaf) or
``max(|x|, |y|)`` (value). One jitted ``lax.scan`` per transformation runs
every example, so hypothesis adds no compilations.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import MAX_WARMUP, make, names
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaclip._find import clip_states

STEPS = 48
SPIKE = 1e3  # ordinary values are at most 2 in magnitude
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, 1e-30, -1e-30, 1e30, -1e30]
NONFINITE = [np.nan, np.inf, -np.inf]

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ordinary = st.floats(0.5, 2.0, width=32) | st.floats(-2.0, -0.5, width=32)
anything = st.sampled_from(SPECIAL) | ordinary
pair = st.tuples(anything, anything)
ordinary_pair = st.tuples(ordinary, ordinary)
nonfinite_pair = st.tuples(st.sampled_from(NONFINITE), anything).flatmap(
    lambda p: st.sampled_from([p, p[::-1]])
)


@functools.cache
def _runner(name):
    tx = make(name)
    params = {"a": jnp.zeros(1, jnp.float32), "b": jnp.zeros(1, jnp.float32)}

    def run(values):
        def body(state, v):
            updates, state = tx.update({"a": v[0:1], "b": v[1:2]}, state)
            return state, (updates, state)

        _, out = jax.lax.scan(body, tx.init(params), values)
        return out

    return jax.jit(run)


def _clip_state(state):
    (found,) = clip_states(state)  # the library's one finder
    return found


def _kind(name):
    if name.startswith("moment-"):
        return "moment"
    if name.startswith(("leaf-", "unit-")) or name == "adagc":
        return "leaf"  # the unit rows' leaves here are vectors: one unit each
    return "value" if name.startswith("value-") else "global"


def _statistic(kind, a, b):
    """The clipper's statistic from the two entries, in float64."""
    a, b = np.abs(np.float64(a)), np.abs(np.float64(b))
    if kind == "global":
        return np.array(np.hypot(a, b))
    if kind == "leaf":
        return np.array([a, b])
    return np.array(max(a, b))


def _post(kind, a, b, clip, t):
    """The statistic of step ``t``'s update; for second-moment clipping the
    largest u^2 / v over the entries whose v before the step is > 0."""
    if kind != "moment":
        return _statistic(kind, a, b)
    u = np.array([a, b], np.float64)
    if t == 0:
        return np.array(0.0)
    nu = clip.rule_state.nu
    v = np.array([nu["a"][t - 1, 0], nu["b"][t - 1, 0]], np.float64)
    return np.array(np.max(np.where(v > 0, u * u / np.where(v > 0, v, 1.0), 0.0)))


def _run(name, values):
    values = np.asarray(values, np.float32)
    assert values.shape == (STEPS, 2)
    updates, states = _runner(name)(values)
    return values, jax.tree.map(np.asarray, updates), jax.tree.map(np.asarray, states)


def _check_invariants(name, values, updates, states):
    kind = _kind(name)
    clip = _clip_state(states)
    for leaf in jax.tree.leaves(states):
        if np.issubdtype(leaf.dtype, np.floating):
            assert np.all(np.isfinite(leaf)), f"non-finite state leaf {leaf}"
    assert np.all(np.isfinite(clip.threshold)) and np.all(clip.threshold >= 0)
    for t in range(STEPS):
        u = np.array([updates["a"][t, 0], updates["b"][t, 0]], np.float64)
        if not np.all(np.isfinite(values[t])):
            np.testing.assert_array_equal(u, 0.0)  # nonfinite="skip"
            continue
        assert np.all(np.isfinite(u))
        post = _post(kind, *u, clip, t)
        bound = np.float64(clip.threshold[t])
        # 1e-18: float32 squares of entries below ~1e-19 underflow, so such a
        # gradient's norm is 0 and it passes unclipped (docs/nonfinite.md).
        assert np.all(post <= bound * (1 + 1e-5) + 1e-18), (t, post, bound)


@pytest.mark.parametrize("name", names("scale"))
@SETTINGS
@given(seq=st.lists(pair, min_size=STEPS, max_size=STEPS))
def test_any_sequence_keeps_state_and_threshold_finite(name, seq):
    """For any mix of NaN, +-Inf, 0, +-1e-30, +-1e30 and ordinary values:
    every float in the state stays finite at every step; the threshold is
    finite and >= 0; a finite step's clipped update is finite and its
    statistic is within the threshold; a non-finite step's update is zero."""
    _check_invariants(name, *_run(name, seq))


@pytest.mark.parametrize("name", names("scale"))
@SETTINGS
@given(
    prefix=st.lists(ordinary_pair, min_size=MAX_WARMUP + 2, max_size=14),
    stretch=st.lists(nonfinite_pair, min_size=1, max_size=16),
    tail=st.lists(ordinary_pair, min_size=STEPS, max_size=STEPS),
)
def test_spike_after_nonfinite_stretch_is_still_clipped(name, prefix, stretch, tail):
    """After ordinary steps (past every warm-up) and any stretch of non-finite
    steps, a spike of 1e3 (every rule's definition of a spike: at least 250x
    the ordinary magnitude, so far beyond every bound in the registry) is
    clipped to the threshold, and everything matches the run with the
    stretch removed: the rule's state right before the spike is the state
    after the prefix, and the spike step's update is bit-identical."""
    spike = [(SPIKE, SPIKE)]
    with_stretch = (prefix + stretch + spike + tail)[:STEPS]
    without = (prefix + spike + tail)[:STEPS]
    i, j = len(prefix) + len(stretch), len(prefix)
    values, updates, states = _run(name, with_stretch)
    _check_invariants(name, values, updates, states)
    _, ref_updates, ref_states = _run(name, without)

    clip, ref_clip = _clip_state(states), _clip_state(ref_states)
    assert np.all(clip.clipped[i]), "the spike was not clipped"
    kind = _kind(name)
    post = _post(kind, updates["a"][i, 0], updates["b"][i, 0], clip, i)
    assert np.all(post <= np.float64(clip.threshold[i]) * (1 + 1e-5))
    assert np.all(post < _post(kind, SPIKE, SPIKE, clip, i))

    def at(tree, t):
        return jax.tree.map(lambda x: x[t], tree)

    same = ("norm", "threshold", "clip_rate", "rule_state")
    for field in same:
        for x, y in zip(
            jax.tree.leaves(getattr(at(clip, i - 1), field)),
            jax.tree.leaves(getattr(at(ref_clip, j - 1), field)),
            strict=True,
        ):
            np.testing.assert_array_equal(x, y, err_msg=field)
    for x, y in zip(
        jax.tree.leaves(at(updates, i)), jax.tree.leaves(at(ref_updates, j)), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    assert int(clip.nonfinite_count[i]) == len(stretch)
