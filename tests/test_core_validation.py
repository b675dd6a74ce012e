"""Validation beyond the bad-argument table (tests/test_invalid_args.py): edge values
that are accepted, float32 rounding, traced and static hyper-parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _standard import schedule

import adaclip


@pytest.mark.parametrize(
    "factory, kwargs",
    [
        (adaclip.fixed, {"value": 0.0}),
        (adaclip.fixed, {"value": np.float32(2.0)}),
        (adaclip.fixed, {"value": jnp.asarray(2.0)}),
        (adaclip.decaying, {"init_value": 1.0, "decay_rate": 1.0}),
        (adaclip.ema, {"multiplier": 2.0, "decay": 0.0}),
        (adaclip.ema, {"multiplier": 2, "decay": 0.9, "warmup_steps": np.int64(3)}),
        (adaclip.moving_average, {"multiplier": 1.0, "window": np.int32(1)}),
        # math.inf is the measure-only fixed threshold (a clipper's, and the rule's).
        (adaclip.fixed, {"value": float("inf")}),
        # 0-d arrays are scalars; only arrays with a shape are refused.
        (adaclip.ema, {"multiplier": jnp.asarray(2.0), "decay": np.asarray(0.9)}),
        (adaclip.ema, {"multiplier": 2.0, "decay": 0.9, "warmup_steps": jnp.asarray(3)}),
        # The largest values that survive float32 rounding / fit int32.
        (adaclip.ema, {"multiplier": 3.4e38, "decay": 0.9999999, "warmup_steps": 2**31 - 1}),
        (adaclip.decaying, {"init_value": 1.0, "decay_rate": 1e-45}),  # a float32 subnormal
        (adaclip.zscore, {"alpha": 0.9999999, "warmup_steps": 2**31 - 1}),
        (adaclip.percentile, {"p": 10.0, "window": 2**24}),  # built, not initialised
        (adaclip.warmup, {"rule": 1.0, "steps": 2**31 - 1, "during": 2.0}),
    ],
)
def test_edge_values_accepted(factory, kwargs):
    factory(**kwargs)


@pytest.mark.parametrize(
    "factory, kwargs, name, value, rounded",
    [
        (adaclip.ema, {"multiplier": 2.0, "decay": 0.99999999}, "decay", "0.99999999", "1.0"),
        (adaclip.fixed, {"value": 1e39}, "value", "1e+39", "inf"),
        (adaclip.ema, {"multiplier": 1e39, "decay": 0.9}, "multiplier", "1e+39", "inf"),
        (adaclip.quantile, {"target": 1 - 1e-9}, "target", repr(1 - 1e-9), "1.0"),
        (adaclip.decaying, {"init_value": 1.0, "decay_rate": 1e-46}, "decay_rate", "1e-46", "0.0"),
    ],
)
def test_float32_rounding_is_named_in_the_message(factory, kwargs, name, value, rounded):
    # The value is in range as a Python float; float32 (what the rule computes
    # in) is the reference for the rounding.
    x = next(iter(v for k, v in kwargs.items() if k == name))
    with np.errstate(over="ignore", under="ignore"):
        assert str(float(np.float32(x))) == rounded
    with pytest.raises(ValueError) as info:
        factory(**kwargs)
    message = str(info.value)
    assert name in message and value in message, message
    assert f"rounds to {rounded} in float32" in message, message


def test_decay_that_rounds_to_one_would_have_poisoned_the_state():
    """Why the check exists: decay 1.0 in float32 gives a 0/0 bias correction."""
    decay = np.float32(0.99999999)
    assert decay == 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        debiased = np.float32(0.0) / (np.float32(1.0) - decay**1)
    assert np.isnan(debiased)
    with pytest.raises(ValueError, match="decay"):
        adaclip.ema(2.0, float("0.99999999"))


def test_traced_hyperparameters_pass_validation():
    """Validation checks concrete values only, so rules build under jit/vmap."""

    def threshold_after(multiplier, decay, warmup):
        rule = adaclip.ema(multiplier, decay, warmup_steps=warmup, feed="raw")
        state = rule.init(jnp.zeros(()))
        for s in (1.0, 2.0, 3.0):
            c, state = rule.update(jnp.float32(s), state)
        return c

    out = jax.jit(jax.vmap(threshold_after, in_axes=(0, None, None)))(jnp.array([1.0, 2.0]), 0.5, 0)
    # EMA after 1, 2 with decay .5, bias-corrected: (0.25*1 + 0.5*2) / 0.75.
    np.testing.assert_allclose(out, np.array([1.0, 2.0]) * (1.25 / 0.75), rtol=1e-6)


def test_window_must_be_static():
    with pytest.raises(TypeError, match="window"):
        jax.jit(lambda w: adaclip.moving_average(2.0, w).init(jnp.zeros(())))(3)


def test_schedule_is_accepted_as_threshold():
    tx = adaclip.clip_by_global_norm(schedule(optax.constant_schedule(0.5)))
    out, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    np.testing.assert_allclose(out, [0.3, 0.4], rtol=1e-6)
