"""No silent failure: what "skip" does, thresholds from foreign rules, a
changed tree, and loss-aware skipping as users write it (issue 21)."""

import contextlib
import io
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _standard import adam, multi_steps

import adaclip

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _host(tree):
    """A NumPy copy (donated buffers are gone after the call)."""
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _bit_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _adam_states(opt_state):
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    return [x for x in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(x)]


def _donating_step(tx):
    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=(0, 1))


def _nan_like(params):
    return jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)


def _ones_like(params):
    return jax.tree.map(jnp.ones_like, params)


def _assert_nan_step_is_skipped(tx, params, opt_state):
    """One ordinary step (so Adam has momentum), then a NaN step: params and
    Adam's state come back bit for bit, under jit with donation."""
    step = _donating_step(tx)
    params, opt_state = step(params, opt_state, _ones_like(params))
    before_params, before_state = _host(params), _host(opt_state)
    assert _adam_states(before_state), "the chain has no Adam state to check"
    params, opt_state = step(params, opt_state, _nan_like(params))
    _bit_identical(_host(params), before_params)
    for new, old in zip(_adam_states(opt_state), _adam_states(before_state), strict=True):
        _bit_identical(_host(new), old)
    assert int(adaclip.metrics(opt_state)["skip_count"]) == 1


# -- 2. "skip" means skipped --------------------------------------------------


def test_readme_quickstart_chain_skips_the_whole_nan_step():
    code = BLOCK.findall((ROOT / "README.md").read_text())[0]
    namespace: dict = {}
    with jax.numpy_dtype_promotion("standard"), contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
        _assert_nan_step_is_skipped(namespace["tx"], namespace["params"], namespace["opt_state"])


def test_getting_started_chain_skips_the_whole_nan_step():
    blocks = BLOCK.findall((ROOT / "docs" / "getting-started.md").read_text())
    code = next(b for b in blocks if "skip_bad_steps(" in b and "tx =" in b)
    namespace: dict = {}
    with jax.numpy_dtype_promotion("standard"):
        exec(compile(code, "getting-started.md", "exec"), namespace)  # noqa: S102
        tx = namespace["tx"]
        params = {"w": jnp.linspace(-1.0, 1.0, 5), "b": jnp.zeros(())}
        _assert_nan_step_is_skipped(tx, params, tx.init(params))


def test_zeroing_mode_still_lets_adam_step_as_documented():
    """nonfinite="zero" (and "skip", the same mode) zero the clipper's output;
    Adam after it still moves the params, by NumPy's Adam on a zero gradient."""
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    moved = []
    for mode in ("zero", "skip"):
        tx = optax.chain(adaclip.clip_by_global_norm(10.0, nonfinite=mode), adam(lr))
        params = {"w": jnp.zeros(2)}
        step = _donating_step(tx)
        params, state = step(params, tx.init(params), {"w": jnp.ones(2)})
        params, state = step(params, state, {"w": jnp.array([jnp.nan, 1.0])})
        assert int(adaclip.metrics(state)["nonfinite_count"]) == 1
        moved.append(_host(params)["w"])
    # NumPy reference: Adam on g = 1 then g = 0.
    m, v, p = 0.0, 0.0, 0.0
    for t, g in enumerate([1.0, 0.0], start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    np.testing.assert_allclose(moved[0], [p, p], rtol=2e-5)  # float32 Adam
    np.testing.assert_array_equal(moved[0], moved[1])
    assert abs(p - (-lr)) > 0.05  # the NaN step moved the params a lot


# -- 3. thresholds from rules that are not ours ------------------------------


def _constant_rule(value):
    """A hand-written rule with a counter, to see whether its state moves."""
    return adaclip.ThresholdRule(
        init=lambda stat: jnp.zeros([], jnp.int32),
        update=lambda stat, n: (jnp.full_like(stat, value), n + 1),
    )


@pytest.mark.parametrize("bad", [-1.0, -jnp.inf, jnp.nan])
@pytest.mark.parametrize("clipper", [adaclip.clip_by_value, adaclip.clip_by_global_norm])
def test_negative_or_minus_inf_threshold_is_a_nonfinite_step(clipper, bad):
    grads = jnp.array([0.5, -2.0, 3.0])
    for mode, expected in (("zero", np.zeros(3)), ("propagate", np.asarray(grads))):
        tx = clipper(_constant_rule(bad), nonfinite=mode)
        state = tx.init(grads)
        updates, state = jax.jit(tx.update, donate_argnums=(1,))(grads, state)
        np.testing.assert_array_equal(np.asarray(updates), expected)
        assert int(state.nonfinite_count) == 1
        assert int(state.rule_state) == 0  # the rule's state did not move
        assert np.isfinite(float(state.threshold))


def test_injected_negative_multiplier_is_counted_and_replay_agrees():
    make = lambda multiplier: adaclip.clip_by_global_norm(adaclip.ema(multiplier, 0.5))  # noqa: E731
    tx = optax.inject_hyperparams(make)(multiplier=2.0)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    # Set later (a sweep, a schedule gone wrong): never validated.
    state.hyperparams["multiplier"] = jnp.asarray(-2.0, jnp.float32)
    norms = [5.0, 4.0, 3.0]
    for t, n in enumerate(norms):
        updates, state = jax.jit(tx.update)({"w": jnp.array([n, 0.0])}, state)
        # The first step has no history: no bound. Later ones have a bound of
        # -2 x EMA: never a negative scale or a sign flip, but zeros (a
        # non-finite step).
        np.testing.assert_array_equal(np.asarray(updates["w"]), [n if t == 0 else 0.0, 0.0])
    m = adaclip.metrics(state)
    # A traced multiplier passes construction, as inside inject_hyperparams.
    replay = jax.jit(lambda mult: adaclip.replay(adaclip.ema(mult, 0.5), jnp.asarray(norms)))
    trace = replay(jnp.float32(-2.0))
    finite = np.asarray(trace.finite)
    # The first step has no history (no bound); every later one is -2 x EMA < 0.
    assert not finite[1:].any()
    assert int(m["nonfinite_count"]) == int((~finite).sum()) == len(norms) - 1


def test_threshold_of_the_wrong_shape_fails_naming_rule_and_shapes():
    def my_rule_update(stat, state):
        return jnp.ones((3,), jnp.float32), state

    rule = adaclip.ThresholdRule(init=lambda stat: (), update=my_rule_update)
    tx = adaclip.clip_by_global_norm(rule)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"my_rule_update.*\(3,\).*\(\)"):
        jax.jit(tx.update)(params, tx.init(params))


# -- 4. a changed tree --------------------------------------------------------


def test_update_on_another_tree_fails_naming_both_structures():
    tx = adaclip.clip_by_leaf_norm(adaclip.ema(2.0, 0.9))
    state = tx.init({"a": jnp.ones(2), "b": jnp.ones(2)})
    update = jax.jit(tx.update, donate_argnums=(1,))
    with pytest.raises(ValueError, match=r"'a'.*'b'.*'b'.*'c'"):
        update({"b": jnp.ones(2), "c": jnp.ones(2)}, state)
    # Inside a chain with Adam, too (the clipper fails before Adam would).
    chain = optax.chain(adaclip.clip_by_global_norm(1.0), optax.sgd(0.1))
    state = chain.init({"a": jnp.ones(2), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match="clip_by_global_norm was initialised"):
        jax.jit(chain.update)({"a": jnp.ones(2), "c": jnp.ones(3)}, state)


def test_one_transformation_on_two_trees_checks_each_state_against_its_own():
    tx = adaclip.clip_by_leaf_norm(1.0)
    t1, t2 = {"a": jnp.ones(2)}, {"x": jnp.ones(2), "y": jnp.ones(1)}
    s1, s2 = tx.init(t1), tx.init(t2)
    update = jax.jit(tx.update)
    update(t1, s1), update(t2, s2)
    with pytest.raises(ValueError, match="initialised on a tree"):
        update(t2, s1)
    with pytest.raises(ValueError, match="initialised on a tree"):
        update(t1, s2)


def test_structure_check_sees_through_flax_nnx_variables():
    """nnx.Optimizer inits on Param Variables and updates with their plain
    arrays (inside optax.partition: a Variable around a MaskedNode at init, a
    bare MaskedNode at update): the same tree. Another tree still fails."""
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Dict(a=nnx.Linear(2, 3, rngs=nnx.Rngs(0)), b=nnx.Linear(3, 1, rngs=nnx.Rngs(1)))
    variables = nnx.state(model, nnx.Param)
    arrays = nnx.as_pure(variables)
    for tx in (
        adaclip.clip_by_leaf_norm(adaclip.ema(2.0, 0.9)),
        optax.partition(
            {"x": adaclip.clip_by_unit_norm(1.0), "y": adaclip.clip_by_global_norm(1.0)},
            lambda tree: jax.tree_util.tree_map_with_path(
                lambda path, _: "x" if "a" in str(path[0]) else "y", tree
            ),
        ),
    ):
        state = tx.init(variables)
        jax.jit(tx.update)(arrays, state, arrays)
        with pytest.raises(ValueError, match="initialised on a tree"):
            jax.jit(tx.update)({"a": arrays["a"]}, state)


def test_structure_check_survives_tree_utilities_and_checkpoints(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    serialization = pytest.importorskip("flax.serialization")
    tx = adaclip.clip_by_leaf_norm(adaclip.ema(2.0, 0.9))
    grads = {"a": jnp.ones(2), "b": jnp.full(3, 2.0)}
    template = tx.init(grads)
    _, state = jax.jit(tx.update)(grads, template)
    path = tmp_path / "ckpt"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state)
        ckptr.wait_until_finished()
        from_orbax = ckptr.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, template))
    from_flax = serialization.from_bytes(template, serialization.to_bytes(state))
    for restored in (
        from_orbax,
        from_flax,
        jax.tree.map(jnp.copy, state),
        optax.tree.zeros_like(state),
        state._replace(count=state.count + 1),
    ):
        _bit_identical(restored, restored)  # a usable pytree
        assert jax.tree.structure(restored) == jax.tree.structure(state)
        jax.jit(tx.update)(grads, restored)
        with pytest.raises(ValueError, match="initialised on a tree"):
            jax.jit(tx.update)({"b": jnp.ones(2), "c": jnp.ones(3)}, restored)
    assert int(optax.tree.get(state, "nonfinite_count")) == 0
    _bit_identical(_host(from_orbax), _host(state))
    _bit_identical(_host(from_flax), _host(state))


# -- 5. loss-aware skipping ---------------------------------------------------


def _clip_sgd():
    return optax.chain(adaclip.clip_by_global_norm(1.0), optax.sgd(0.1))


@pytest.mark.parametrize(
    "rule",
    [
        adaclip.ema(2.0, 0.99),
        adaclip.moving_average(2.0, window=1),
        adaclip.quantile(0.9),
        adaclip.log_space(adaclip.rolling_zscore(3.0, 16)),
    ],
    ids=["ema", "moving_average", "quantile", "log_space"],
)
def test_scale_type_loss_rule_warns_naming_a_shift_invariant_one(rule):
    with pytest.warns(UserWarning, match=r"negative loss.*rolling_zscore"):
        adaclip.skip_bad_steps(_clip_sgd(), loss_rule=rule)


def test_recommended_loss_rule_takes_ordinary_negative_losses():
    """Log-likelihood-like losses around -5: the shift-invariant rule skips
    none of 20 ordinary steps, and does skip a spike."""
    rng = np.random.default_rng(0)
    losses = list(-5.0 + 0.05 * rng.standard_normal(20)) + [-1.0]
    tx = adaclip.skip_bad_steps(_clip_sgd(), loss_rule=adaclip.rolling_zscore(6.0, 16))
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    update = jax.jit(tx.update, donate_argnums=(1,))
    skipped = []
    for loss in losses:
        _, state = update({"w": jnp.ones(2)}, state, params, loss=jnp.float32(loss))
        skipped.append(bool(state.skipped))
    assert skipped == [False] * 20 + [True]


@pytest.mark.parametrize(
    "loss", ["1.0", None, b"x", 1 + 2j], ids=["str", "None", "bytes", "complex"]
)
def test_bad_loss_is_a_clear_error_naming_loss(loss):
    tx = adaclip.skip_bad_steps(_clip_sgd(), loss_rule=adaclip.rolling_zscore(3.0, 8))
    params = {"w": jnp.zeros(2)}
    with pytest.raises(TypeError, match=r"\bloss\b.*got"):
        tx.update({"w": jnp.ones(2)}, tx.init(params), params, loss=loss)


def test_rule_as_inner_fails_at_construction():
    with pytest.raises(TypeError, match=r"inner.*threshold rule"):
        adaclip.skip_bad_steps(adaclip.rolling_zscore(6.0, 128))


@pytest.mark.parametrize("bad", [jnp.nan, 50.0], ids=["nan", "spike"])
def test_multisteps_every_micro_step_loss_reaches_the_loss_rule(bad):
    """The documented pattern (pass the mean of the micro-step losses so far)
    skips a real step whose bad loss came on a non-final micro-step; passing
    only each micro-step's own loss does not see it."""
    k = 3
    inner = adaclip.skip_bad_steps(
        optax.chain(adaclip.clip_by_global_norm(100.0), adam(0.1)),
        loss_rule=adaclip.rolling_zscore(6.0, 16, min_history=4),
    )

    def run(accumulate):
        rng = np.random.default_rng(1)
        tx = multi_steps(inner, k)
        params = {"w": jnp.ones(2)}
        state = tx.init(params)
        update = jax.jit(tx.update)
        loss_sum = jnp.zeros([], jnp.float32)
        adam_before = None
        for real in range(8):
            last = real == 7
            if last:
                adam_before = _host(_adam_states(state))
            for micro in range(k):
                loss = 1.0 + 0.02 * ((real * k + micro) % 5 - 2)  # ordinary losses
                if last and micro == 0:
                    loss = bad
                loss = jnp.float32(loss)
                loss_sum = jnp.where(state.mini_step == 0, 0.0, loss_sum) + loss
                micro_steps = (state.mini_step + 1).astype(jnp.float32)
                passed = loss_sum / micro_steps if accumulate else loss
                grads = {"w": jnp.asarray(rng.standard_normal(2), jnp.float32)}
                _, state = update(grads, state, params, loss=passed)
        return _adam_states(state), adam_before, adaclip.metrics(state)

    after, before, m = run(accumulate=True)
    _bit_identical(_host(after), before)  # the real step was skipped
    assert int(m["skip_count"]) == 1
    after, before, m = run(accumulate=False)
    assert int(m["skip_count"]) == 0  # the naive way never saw it
    assert not np.array_equal(np.asarray(after[0].mu["w"]), before[0].mu["w"])
