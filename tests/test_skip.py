"""adaclip.skip_bad_steps: a skipped step leaves the inner optimizer untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _standard import adam, multi_steps

import adaclip


def _params():
    return {"w": jnp.ones((3,), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}


def _grads(step, scale=1.0):
    rng = np.random.default_rng(step)
    return {
        "w": (scale * rng.standard_normal(3)).astype(np.float32),
        "b": (scale * rng.standard_normal(2)).astype(np.float32),
    }


def _nan_grads(step):
    g = _grads(step)
    g["w"][1] = np.nan
    return g


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _adam_state(skip_state):
    return skip_state.inner_state[1][0]  # chain(clip, adam): adam's ScaleByAdamState


@pytest.mark.parametrize("nonfinite", ["skip", "propagate"])
def test_nonfinite_step_leaves_adam_moments_and_count_unchanged(nonfinite):
    """On a NaN step Adam's mu, nu and count are bit-identical to before, the
    update is zero, and the run continues exactly as if the step had been
    removed from the sequence (checked against plain optax on the filtered
    sequence), with either clipper ``nonfinite`` mode."""
    clip = adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9), nonfinite=nonfinite)
    tx = adaclip.skip_bad_steps(optax.chain(clip, adam(0.1)))
    params = _params()
    state = tx.init(params)
    update = jax.jit(tx.update)
    seq = [_grads(0), _grads(1), _nan_grads(2), _grads(3), _nan_grads(4), _grads(5)]
    updates = []
    for g in seq:
        before = _adam_state(state)
        u, state = update(g, state, params)
        updates.append(u)
        if np.isnan(g["w"]).any():
            _equal(_adam_state(state), before)
            assert bool(state.skipped)
            assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(u))
        else:
            assert not bool(state.skipped)
    assert int(_adam_state(state).count) == 4
    assert int(state.skip_count) == int(state.nonfinite_skip_count) == 2
    assert int(adaclip.metrics(state)["nonfinite_count"]) == 2

    # Reference: the same chain without the wrapper, on the finite steps only.
    ref = optax.chain(adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9)), adam(0.1))
    ref_state = ref.init(params)
    finite_updates = [u for u, g in zip(updates, seq, strict=True) if not np.isnan(g["w"]).any()]
    for g, u in zip([seq[i] for i in (0, 1, 3, 5)], finite_updates, strict=True):
        ref_u, ref_state = ref.update(g, ref_state, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u, ref_u)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6)  # noqa: E731
    jax.tree.map(close, _adam_state(state), ref_state[1][0])
    jax.tree.map(close, state.inner_state[0].rule_state, ref_state[0].rule_state)


def test_spike_beyond_factor_is_skipped_and_clip_records_it():
    """With a fixed threshold 1 and spike_factor 3: a norm of 5 is skipped
    (Adam untouched, zero update), a norm of 2 is clipped and applied; the
    clip state records both steps (norm metric, clip_rate)."""
    tx = adaclip.skip_bad_steps(
        optax.chain(adaclip.clip_by_global_norm(1.0), adam(0.1)), spike_factor=3.0
    )
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    u, state = tx.update({"w": jnp.array([1.2, 1.6])}, state, params)  # norm 2
    assert not bool(state.skipped)
    np.testing.assert_allclose(u["w"], -0.1 * np.sign([1.2, 1.6]), rtol=1e-5)
    before = _adam_state(state)
    u, state = tx.update({"w": jnp.array([3.0, 4.0])}, state, params)  # norm 5
    assert bool(state.skipped) and int(state.skip_count) == 1
    assert int(state.nonfinite_skip_count) == 0
    _equal(_adam_state(state), before)
    np.testing.assert_array_equal(u["w"], 0.0)
    m = adaclip.metrics(state)
    assert float(m["norm"]) == 5.0 and float(m["clip_rate"]) == 1.0


def test_spike_in_any_leaf_skips_per_leaf_clipping():
    """Per-leaf clipping: one leaf beyond spike_factor x its threshold skips
    the whole step."""
    tx = adaclip.skip_bad_steps(
        optax.chain(adaclip.clip_by_leaf_norm(1.0), optax.sgd(1.0)), spike_factor=2.0
    )
    g = {"a": jnp.array([0.1]), "b": jnp.array([2.5])}
    u, state = tx.update(g, tx.init(g), g)
    assert bool(state.skipped)
    g = {"a": jnp.array([0.1]), "b": jnp.array([1.5])}
    u, state = tx.update(g, state, g)
    assert not bool(state.skipped)
    np.testing.assert_allclose(u["b"], [-1.0], rtol=1e-6)


def test_adaptive_rule_follows_a_level_shift_instead_of_skipping_forever():
    """The rule inside sees skipped spikes as usual (a raw-fed EMA), so after
    a permanent 10x jump in the norm the skipping stops by itself."""
    rule = adaclip.ema(2.0, 0.5, feed="raw")
    tx = adaclip.skip_bad_steps(
        optax.chain(adaclip.clip_by_global_norm(rule), optax.sgd(0.1)), spike_factor=1.5
    )
    params = {"w": jnp.zeros(1)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    skipped = []
    for step in range(30):
        level = 1.0 if step < 10 else 10.0
        _, state = update({"w": jnp.array([level])}, state, params)
        skipped.append(bool(state.skipped))
    assert skipped[10]  # the jump is a spike
    assert not any(skipped[15:])  # and is the new normal a few steps later


def test_any_clipper_in_a_partition_triggers_the_skip():
    """Two clippers under optax.partition: a NaN in one group skips the whole
    step; both groups' SGD/Adam states stay as they were."""
    inner = optax.partition(
        {
            "x": optax.chain(adaclip.clip_by_global_norm(1.0), adam(0.1)),
            "y": optax.chain(adaclip.clip_by_value(1.0), adam(0.1)),
        },
        {"w": "x", "b": "y"},
    )
    tx = adaclip.skip_bad_steps(inner)
    params = _params()
    state = tx.init(params)
    _, state = tx.update(_grads(0), state, params)
    before = state.inner_state
    g = _grads(1)
    g["b"][0] = np.inf
    u, state = jax.jit(tx.update)(g, state, params)
    assert bool(state.skipped)
    adam_state = lambda s, k: s.inner_states[k].inner_state[1][0]  # noqa: E731
    for k in ("x", "y"):
        _equal(adam_state(state.inner_state, k), adam_state(before, k))
    names = set(adaclip.metrics(state))
    assert any(n.startswith("x/") for n in names) and any(n.startswith("y/") for n in names)


def test_multisteps_outside_skip_resets_the_accumulator():
    """optax.MultiSteps(skip_bad_steps(...)): a real step whose accumulated
    gradient is a spike is skipped (Adam untouched), the accumulator still
    resets, and the next real step is applied. MultiSteps inside the wrapper
    is refused at init (a rolled-back accumulator would skip forever)."""
    inner = optax.chain(adaclip.clip_by_global_norm(1.0), adam(0.1))
    tx = multi_steps(adaclip.skip_bad_steps(inner, spike_factor=5.0), every_k_schedule=2)
    params = _params()
    state = tx.init(params)
    update = jax.jit(tx.update)
    skipped = []
    for g in [_grads(0), _grads(1), _grads(2, 50.0), _grads(3), _grads(4), _grads(5)]:
        _, state = update(g, state, params)
        skipped.append(bool(state.inner_opt_state.skipped))
    assert skipped == [False, False, False, True, True, False]  # mini-steps keep the flag
    assert int(_adam_state(state.inner_opt_state).count) == 2
    wrong = adaclip.skip_bad_steps(optax.MultiSteps(inner, 2).gradient_transformation())
    with pytest.raises(ValueError, match="MultiSteps"):
        wrong.init(params)


def test_nan_micro_batch_with_multisteps_skip_not_finite():
    """A NaN micro-batch poisons optax.MultiSteps' accumulator for good (it
    resets by multiplying by 0); with should_skip_update_fn=
    optax.skip_not_finite the micro-batch is dropped, the clip never sees a
    NaN, and training goes on (documented in docs/robustness.md)."""
    inner = optax.chain(adaclip.clip_by_global_norm(1.0), adam(0.1))
    tx = multi_steps(inner, 2, should_skip_update_fn=optax.skip_not_finite)
    params = _params()
    state = tx.init(params)
    for g in [_grads(0), _nan_grads(1), _grads(2), _grads(3), _grads(4)]:
        u, state = tx.update(g, state, params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
    assert int(adaclip.metrics(state)["nonfinite_count"]) == 0
    assert int(state.inner_opt_state[1][0].count) == 2


def test_requires_a_clipper():
    # Bad constructor arguments: tests/test_invalid_args.py.
    tx = adaclip.skip_bad_steps(adam(0.1))
    with pytest.raises(ValueError, match="inner must contain an adaclip clipper"):
        tx.init(_params())


def test_state_structure_is_stable_and_metrics_readable():
    tx = adaclip.skip_bad_steps(
        optax.chain(adaclip.clip_by_leaf_norm(adaclip.moving_average(2.0, 3)), adam(0.1)),
        spike_factor=4.0,
    )
    params = _params()
    state = tx.init(params)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for step in range(5):
        g = _nan_grads(step) if step == 2 else _grads(step, scale=1.0 + 10 * (step == 3))
        _, state = jax.jit(tx.update)(g, state, params)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
    assert set(adaclip.metrics(state)) == {
        "norm",
        "threshold",
        "clipped",
        "clip_rate",
        "nonfinite_count",
        "skipped",
        "skip_count",
        "nonfinite_skip_count",
        "spike_skip_count",
        "loss_skip_count",
        "skip_reason",
    }


# --- Skipping on the loss ------------------------------------------------------


def _loss_tx(loss_rule, spike_factor=None, lr=0.1):
    inner = optax.chain(adaclip.clip_by_global_norm(adaclip.ema(3.0, 0.9)), adam(lr))
    return adaclip.skip_bad_steps(inner, spike_factor=spike_factor, loss_rule=loss_rule)


def test_loss_spike_skips_and_leaves_adam_untouched():
    """A loss above the loss rule's threshold (a NumPy mean + 2 std of the
    previous 5 losses) skips the step: zero update, Adam's moments and count
    bit-identical, reason 3; the loss enters the rule's history all the same."""
    tx = _loss_tx(adaclip.rolling_zscore(2.0, 5, min_history=3))
    params = _params()
    state = tx.init(params)
    update = jax.jit(tx.update)
    losses = [2.0, 1.9, 1.95, 1.8, 6.0, 1.7, 1.75, 1.72, 1.6, 1.65]
    history = []
    for step, loss in enumerate(losses):
        before = _adam_state(state)
        u, state = update(_grads(step), state, params, loss=loss)
        h = np.array(history[-5:])
        expect = len(h) >= 3 and loss > h.mean() + 2.0 * max(h.std(), 1e-6)
        assert bool(state.skipped) == expect, step
        history.append(loss)
        if expect:
            _equal(_adam_state(state), before)
            assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(u))
            assert int(adaclip.metrics(state)["skip_reason"]) == 3
    m = adaclip.metrics(state)
    assert int(m["loss_skip_count"]) == int(m["skip_count"]) == 1
    assert int(_adam_state(state).count) == len(losses) - 1
    np.testing.assert_allclose(float(m["loss"]), losses[-1])
    h = np.array(losses[-6:-1])
    np.testing.assert_allclose(float(m["loss_threshold"]), h.mean() + 2 * h.std(), rtol=1e-5)


def test_loss_requires_the_loss_argument_at_trace_time():
    tx = _loss_tx(adaclip.rolling_zscore(2.0, 5))
    params = _params()
    state = tx.init(params)
    with pytest.raises(TypeError, match="loss"):
        jax.jit(tx.update)(_grads(0), state, params)
    with pytest.raises(ValueError, match="loss must be a scalar"):
        tx.update(_grads(0), state, params, loss=jnp.ones(3))


def test_nan_loss_is_a_nonfinite_skip_and_stays_out_of_the_rule():
    tx = _loss_tx(adaclip.rolling_zscore(2.0, 4, min_history=2))
    params = _params()
    state = tx.init(params)
    for step, loss in enumerate([1.0, 1.1, 0.9]):
        _, state = tx.update(_grads(step), state, params, loss=loss)
    rule_before = state.loss_rule_state
    _, state = tx.update(_grads(3), state, params, loss=jnp.nan)
    assert bool(state.skipped) and int(state.skip_reason) == 1
    assert int(state.nonfinite_skip_count) == 1
    _equal(state.loss_rule_state, rule_before)
    assert int(adaclip.metrics(state)["nonfinite_count"]) == 0  # the gradient was fine


def test_loss_is_passed_on_to_the_inner_optimizer():
    """optax's extra-args convention: reduce_on_plateau inside sees the loss
    (as ``value``), and the loss rule sees ``loss``."""
    seen = []

    def spy_update(updates, state, params=None, **extra):
        seen.append(sorted(extra))
        return updates, state

    spy = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), spy_update)
    inner = optax.chain(adaclip.clip_by_global_norm(1.0), spy)
    tx = adaclip.skip_bad_steps(inner, loss_rule=adaclip.fixed(10.0))
    params = _params()
    tx.update(_grads(0), tx.init(params), params, loss=1.0)
    assert seen == [["loss"]]


def test_reason_precedence_and_counters_sum():
    """A step that is both a norm spike and a loss spike counts once, as a
    clip-statistic skip; counters by reason sum to skip_count."""
    tx = _loss_tx(adaclip.fixed(5.0), spike_factor=2.0)
    params = _params()
    state = tx.init(params)
    plan = [(1.0, 1.0, 0), (1.0, 9.0, 3), (40.0, 9.0, 2), (40.0, 1.0, 2), (1.0, 1.0, 0)]
    for step, (scale, loss, reason) in enumerate(plan):
        _, state = tx.update(_grads(step, scale), state, params, loss=loss)
        assert int(state.skip_reason) == reason, step
    m = adaclip.metrics(state)
    assert int(m["skip_count"]) == 3
    assert (int(m["spike_skip_count"]), int(m["loss_skip_count"])) == (2, 1)
    assert int(m["nonfinite_skip_count"]) == 0


def test_loss_rule_under_multisteps_and_inject_hyperparams():
    """MultiSteps outside: the loss of the real step (the last micro-batch's,
    as passed) decides; inject_hyperparams: a new sigma changes decisions
    without a new compilation."""
    params = _params()
    tx = multi_steps(_loss_tx(adaclip.rolling_zscore(2.0, 4, min_history=2)), 2)
    state = tx.init(params)
    for step, loss in enumerate([1.0, 1.0, 1.1, 1.1, 0.9, 0.9, 8.0, 8.0, 1.0, 1.0]):
        _, state = tx.update(_grads(step), state, params, loss=loss)
        if step == 7:
            assert bool(state.inner_opt_state.skipped)
    assert int(state.inner_opt_state.loss_skip_count) == 1

    traces = []

    def make(sigma):
        return _loss_tx(adaclip.rolling_zscore(sigma, 4, min_history=2))

    injected = optax.inject_hyperparams(make)(sigma=100.0)
    state = injected.init(params)

    def step(g, state, loss):
        traces.append(1)
        return injected.update(g, state, params, loss=loss)

    step = jax.jit(step)
    for i, loss in enumerate([1.0, 1.1, 0.9, 3.0]):
        _, state = step(_grads(i), state, loss)
    assert not bool(state.inner_state.skipped)
    state = injected.init(params)
    state.hyperparams["sigma"] = state.hyperparams["sigma"] * 0.0 + 2.0
    for i, loss in enumerate([1.0, 1.1, 0.9, 3.0]):
        _, state = step(_grads(i), state, loss)
    assert bool(state.inner_state.skipped)
    assert len(traces) == 1


def _shares_buffers(tree):
    ptrs = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)]
    return len(ptrs) != len(set(ptrs))


def test_init_returns_distinct_buffers_and_the_state_can_be_donated():
    """Every buffer of SkipState and of the loss rule's state is its own, so
    jax.jit(step, donate_argnums=(0, 1)) runs."""
    loss_rule = adaclip.rolling_zscore(3.0, 8)  # shift-invariant: no scale-rule warning
    tx = adaclip.skip_bad_steps(
        optax.chain(adaclip.clip_by_global_norm(adaclip.rolling_zscore(3.0, 8)), adam(0.1)),
        spike_factor=1.0,
        loss_rule=loss_rule,
    )
    params = _params()
    state = tx.init(params)
    assert not _shares_buffers(state._replace(inner_state=None))
    for rule in (adaclip.rolling_zscore(2.0, 4), adaclip.ema_zscore(2.0, 0.9), loss_rule):
        assert not _shares_buffers(rule.init(jnp.zeros(3)))
    assert not _shares_buffers(state.inner_state)

    def train_step(params, state, grads, loss):
        u, state = tx.update(grads, state, params, loss=loss)
        return optax.apply_updates(params, u), state

    step = jax.jit(train_step, donate_argnums=(0, 1))
    plain = jax.jit(train_step)
    ref_params, ref_state = _params(), tx.init(_params())
    for i in range(3):
        loss = jnp.float32(1.0 + i)
        ref_params, ref_state = plain(ref_params, ref_state, _grads(i), loss)
        params, state = step(params, state, _grads(i), loss)
    # Donation changes nothing: the same parameters and state as without it.
    _equal((params, state), (ref_params, ref_state))


_MULTIDEVICE = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import adaclip

assert len(jax.devices()) == 4
rule = adaclip.rolling_zscore(2.0, 6, min_history=3)
tx = adaclip.skip_bad_steps(
    optax.chain(adaclip.clip_by_global_norm(rule), optax.adam(0.1)),
    spike_factor=1.0,
    loss_rule=rule,
)
rng = np.random.default_rng(0)
steps = 24
grads = rng.standard_normal((steps, 8, 4)).astype(np.float32)
grads[[9, 17]] *= 30.0
grads[13, 5, 1] = np.nan
losses = (1.0 + 0.05 * rng.standard_normal(steps)).astype(np.float32)
losses[[6, 20]] += 3.0

def run(shard):
    params = {"w": jnp.zeros((8, 4))}
    if shard:
        mesh = Mesh(np.array(jax.devices()), ("d",))
        spec = NamedSharding(mesh, P("d"))
        params = jax.device_put(params, spec)
    state = tx.init(params)
    step = jax.jit(lambda g, s, l: tx.update(g, s, params, loss=l))
    out = []
    for g, l in zip(grads, losses):
        g = {"w": jax.device_put(g, spec) if shard else jnp.asarray(g)}
        u, state = step(g, state, l)
        out.append((bool(state.skipped), int(state.skip_reason), np.asarray(u["w"]).tolist()))
    return out

json.dump({"one": run(False), "four": run(True)}, open(sys.argv[1], "w"))
"""


def test_loss_and_norm_skips_on_four_devices_match_one(tmp_path):
    """jit over gradients sharded on 4 CPU devices (FSDP): the same skip
    decisions, reasons and updates as on one device."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-c", _MULTIDEVICE, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    one, four = result["one"], result["four"]
    assert [s[:2] for s in one] == [s[:2] for s in four]
    assert sum(s[0] for s in one) >= 4  # spikes, loss spikes and the NaN were skipped
    assert {s[1] for s in one} >= {1, 2, 3}
    for a, b in zip(one, four, strict=True):
        np.testing.assert_allclose(a[2], b[2], rtol=1e-6, atol=1e-7)
