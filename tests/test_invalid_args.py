"""Every bad constructor argument fails at construction, naming the argument.

One row per invalid call across the public API: the call, the exception
type it must raise, and the argument name the message must contain. The
message must also echo the bad value.
"""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaclip

NAN, INF = math.nan, math.inf
_ema = adaclip.ema(1.5, 0.9)

# (id, factory, kwargs, exception, argument name, bad value)
CASES = [
    # fixed / scheduled / decaying
    ("fixed-negative", adaclip.fixed, {"value": -1.0}, ValueError, "value", -1.0),
    ("fixed-nan", adaclip.fixed, {"value": NAN}, ValueError, "value", NAN),
    ("fixed-neg-inf", adaclip.fixed, {"value": -INF}, ValueError, "value", -INF),
    ("fixed-f32-overflow", adaclip.fixed, {"value": 1e39}, ValueError, "value", 1e39),
    ("fixed-huge-int", adaclip.fixed, {"value": 10**400}, ValueError, "value", 10**400),
    ("fixed-size1-np", adaclip.fixed, {"value": np.array([1.0])}, TypeError, "value", "(1,)"),
    ("fixed-size1-jnp", adaclip.fixed, {"value": jnp.ones((1,))}, TypeError, "value", "(1,)"),
    ("fixed-complex", adaclip.fixed, {"value": 1 + 2j}, TypeError, "value", 1 + 2j),
    ("fixed-str", adaclip.fixed, {"value": "1"}, TypeError, "value", "1"),
    ("fixed-none", adaclip.fixed, {"value": None}, TypeError, "value", None),
    ("fixed-bool", adaclip.fixed, {"value": True}, TypeError, "value", True),
    ("scheduled-float", adaclip.scheduled, {"schedule": 1.0}, TypeError, "schedule", 1.0),
    (
        "decaying-init",
        adaclip.decaying,
        {"init_value": -2.0, "decay_rate": 0.9},
        ValueError,
        "init_value",
        -2.0,
    ),
    (
        "decaying-init-str",
        adaclip.decaying,
        {"init_value": "a", "decay_rate": 0.9},
        TypeError,
        "init_value",
        "a",
    ),
    (
        "decaying-rate-0",
        adaclip.decaying,
        {"init_value": 1.0, "decay_rate": 0.0},
        ValueError,
        "decay_rate",
        0.0,
    ),
    (
        "decaying-rate-big",
        adaclip.decaying,
        {"init_value": 1.0, "decay_rate": 1.5},
        ValueError,
        "decay_rate",
        1.5,
    ),
    (
        "decaying-transition",
        adaclip.decaying,
        {"init_value": 1.0, "decay_rate": 0.9, "transition_steps": 0},
        ValueError,
        "transition_steps",
        0,
    ),
    (
        "decaying-floor",
        adaclip.decaying,
        {"init_value": 1.0, "decay_rate": 0.9, "floor": -0.1},
        ValueError,
        "floor",
        -0.1,
    ),
    (
        "decaying-floor-nan",
        adaclip.decaying,
        {"init_value": 1.0, "decay_rate": 0.9, "floor": NAN},
        ValueError,
        "floor",
        NAN,
    ),
    # moving_average / ema
    (
        "ma-multiplier-0",
        adaclip.moving_average,
        {"multiplier": 0.0, "window": 3},
        ValueError,
        "multiplier",
        0.0,
    ),
    (
        "ma-multiplier-inf",
        adaclip.moving_average,
        {"multiplier": INF, "window": 3},
        ValueError,
        "multiplier",
        INF,
    ),
    (
        "ma-window-0",
        adaclip.moving_average,
        {"multiplier": 1.0, "window": 0},
        ValueError,
        "window",
        0,
    ),
    (
        "ma-window-float",
        adaclip.moving_average,
        {"multiplier": 1.0, "window": 2.5},
        TypeError,
        "window",
        2.5,
    ),
    (
        "ma-window-str",
        adaclip.moving_average,
        {"multiplier": 1.0, "window": "3"},
        TypeError,
        "window",
        "3",
    ),
    (
        "ma-feed",
        adaclip.moving_average,
        {"multiplier": 1.0, "window": 3, "feed": "mean"},
        ValueError,
        "feed",
        "mean",
    ),
    (
        "ema-multiplier",
        adaclip.ema,
        {"multiplier": -1.0, "decay": 0.9},
        ValueError,
        "multiplier",
        -1.0,
    ),
    ("ema-decay-1", adaclip.ema, {"multiplier": 1.0, "decay": 1.0}, ValueError, "decay", 1.0),
    ("ema-decay-neg", adaclip.ema, {"multiplier": 1.0, "decay": -0.1}, ValueError, "decay", -0.1),
    ("ema-decay-str", adaclip.ema, {"multiplier": 1.0, "decay": "0.9"}, TypeError, "decay", "0.9"),
    (
        "ema-warmup-neg",
        adaclip.ema,
        {"multiplier": 1.0, "decay": 0.9, "warmup_steps": -1},
        ValueError,
        "warmup_steps",
        -1,
    ),
    (
        "ema-warmup-float",
        adaclip.ema,
        {"multiplier": 1.0, "decay": 0.9, "warmup_steps": 1.5},
        TypeError,
        "warmup_steps",
        1.5,
    ),
    ("ema-feed", adaclip.ema, {"multiplier": 1.0, "decay": 0.9, "feed": 1}, TypeError, "feed", 1),
    (
        "ema-feed-none",
        adaclip.ema,
        {"multiplier": 1.0, "decay": 0.9, "feed": None},
        TypeError,
        "feed",
        None,
    ),
    # float32 rounding: in range as a Python float, out of range as computed.
    (
        "ema-decay-f32",
        adaclip.ema,
        {"multiplier": 2.0, "decay": 0.99999999},
        ValueError,
        "decay",
        0.99999999,
    ),
    (
        "ema-multiplier-f32",
        adaclip.ema,
        {"multiplier": 1e39, "decay": 0.9},
        ValueError,
        "multiplier",
        1e39,
    ),
    (
        "ema-multiplier-f32-zero",
        adaclip.ema,
        {"multiplier": 1e-50, "decay": 0.9},
        ValueError,
        "multiplier",
        1e-50,
    ),
    (
        "ema-warmup-int32",
        adaclip.ema,
        {"multiplier": 2.0, "decay": 0.9, "warmup_steps": 2**40},
        ValueError,
        "warmup_steps",
        2**40,
    ),
    (
        "ema-warmup-size1",
        adaclip.ema,
        {"multiplier": 2.0, "decay": 0.9, "warmup_steps": np.array([3])},
        TypeError,
        "warmup_steps",
        "(1,)",
    ),
    (
        "ema-decay-size1",
        adaclip.ema,
        {"multiplier": 2.0, "decay": jnp.full((1,), 0.9)},
        TypeError,
        "decay",
        "(1,)",
    ),
    (
        "decaying-rate-f32-zero",
        adaclip.decaying,
        {"init_value": 1.0, "decay_rate": 1e-50},
        ValueError,
        "decay_rate",
        1e-50,
    ),
    (
        "decaying-init-f32",
        adaclip.decaying,
        {"init_value": 1e39, "decay_rate": 0.9},
        ValueError,
        "init_value",
        1e39,
    ),
    (
        "decaying-floor-f32",
        adaclip.decaying,
        {"init_value": 1.0, "decay_rate": 0.9, "floor": 4e38},
        ValueError,
        "floor",
        4e38,
    ),
    (
        "decaying-transition-f32",
        adaclip.decaying,
        {"init_value": 1.0, "decay_rate": 0.9, "transition_steps": 1e39},
        ValueError,
        "transition_steps",
        1e39,
    ),
    (
        "ma-window-huge",
        adaclip.moving_average,
        {"multiplier": 1.0, "window": 2**40},
        ValueError,
        "window",
        2**40,
    ),
    (
        "ma-window-over-2-24",
        adaclip.moving_average,
        {"multiplier": 1.0, "window": 2**24 + 1},
        ValueError,
        "window",
        2**24 + 1,
    ),
    (
        "ma-window-array",
        adaclip.moving_average,
        {"multiplier": 1.0, "window": np.array(3)},
        TypeError,
        "window",
        "array(3)",
    ),
    (
        "ma-multiplier-f32",
        adaclip.moving_average,
        {"multiplier": 1e39, "window": 3},
        ValueError,
        "multiplier",
        1e39,
    ),
    (
        "percentile-window-huge",
        adaclip.percentile,
        {"p": 10.0, "window": 2**40},
        ValueError,
        "window",
        2**40,
    ),
    ("zscore-alpha-f32", adaclip.zscore, {"alpha": 0.999999999}, ValueError, "alpha", 0.999999999),
    ("zscore-z-f32", adaclip.zscore, {"z_thresh": 1e39}, ValueError, "z_thresh", 1e39),
    (
        "zscore-clip-factor-f32",
        adaclip.zscore,
        {"clip_factor": 1e39},
        ValueError,
        "clip_factor",
        1e39,
    ),
    (
        "zscore-warmup-int32",
        adaclip.zscore,
        {"warmup_steps": 2**31},
        ValueError,
        "warmup_steps",
        2**31,
    ),
    ("zscore-mode-none", adaclip.zscore, {"mode": None}, TypeError, "mode", None),
    (
        "zscore-skip-str",
        adaclip.zscore,
        {"skip_update_on_spike": "yes"},
        TypeError,
        "skip_update_on_spike",
        "yes",
    ),
    (
        "quantile-target-f32",
        adaclip.quantile,
        {"target": 0.999999999},
        ValueError,
        "target",
        0.999999999,
    ),
    (
        "quantile-lr-f32",
        adaclip.quantile,
        {"target": 0.5, "learning_rate": 1e39},
        ValueError,
        "learning_rate",
        1e39,
    ),
    (
        "quantile-initial-f32",
        adaclip.quantile,
        {"target": 0.5, "initial": 1e-50},
        ValueError,
        "initial",
        1e-50,
    ),
    # percentile / zscore / quantile
    ("percentile-p-big", adaclip.percentile, {"p": 101.0, "window": 5}, ValueError, "p", 101.0),
    ("percentile-p-neg", adaclip.percentile, {"p": -1.0, "window": 5}, ValueError, "p", -1.0),
    ("percentile-window", adaclip.percentile, {"p": 10.0, "window": 0}, ValueError, "window", 0),
    ("zscore-alpha-1", adaclip.zscore, {"alpha": 1.0}, ValueError, "alpha", 1.0),
    ("zscore-alpha-0", adaclip.zscore, {"alpha": 0.0}, ValueError, "alpha", 0.0),
    ("zscore-z", adaclip.zscore, {"z_thresh": 0.0}, ValueError, "z_thresh", 0.0),
    ("zscore-warmup-0", adaclip.zscore, {"warmup_steps": 0}, ValueError, "warmup_steps", 0),
    ("zscore-mode", adaclip.zscore, {"mode": "zs"}, ValueError, "mode", "zs"),
    (
        "zscore-clip-option",
        adaclip.zscore,
        {"clip_option": "max"},
        ValueError,
        "clip_option",
        "max",
    ),
    ("zscore-clip-factor", adaclip.zscore, {"clip_factor": -1.0}, ValueError, "clip_factor", -1.0),
    ("quantile-target-0", adaclip.quantile, {"target": 0.0}, ValueError, "target", 0.0),
    ("quantile-target-1", adaclip.quantile, {"target": 1.0}, ValueError, "target", 1.0),
    (
        "quantile-lr",
        adaclip.quantile,
        {"target": 0.5, "learning_rate": 0.0},
        ValueError,
        "learning_rate",
        0.0,
    ),
    # combinators
    ("clamp-lower-neg", adaclip.clamp, {"rule": _ema, "lower": -1.0}, ValueError, "lower", -1.0),
    (
        "clamp-order",
        adaclip.clamp,
        {"rule": _ema, "lower": 2.0, "upper": 1.0},
        ValueError,
        "lower",
        2.0,
    ),
    ("clamp-upper-str", adaclip.clamp, {"rule": _ema, "upper": "x"}, TypeError, "upper", "x"),
    ("clamp-upper-inf", adaclip.clamp, {"rule": _ema, "upper": INF}, ValueError, "upper", INF),
    ("clamp-upper-f32", adaclip.clamp, {"rule": _ema, "upper": 1e39}, ValueError, "upper", 1e39),
    (
        "clamp-lower-size1",
        adaclip.clamp,
        {"rule": _ema, "lower": np.ones(1)},
        TypeError,
        "lower",
        "(1,)",
    ),
    (
        "warmup-steps-int32",
        adaclip.warmup,
        {"rule": _ema, "steps": 2**40, "during": 1.0},
        ValueError,
        "steps",
        2**40,
    ),
    (
        "warmup-during-f32",
        adaclip.warmup,
        {"rule": _ema, "steps": 3, "during": 1e39},
        ValueError,
        "during",
        1e39,
    ),
    (
        "warmup-steps",
        adaclip.warmup,
        {"rule": _ema, "steps": -3, "during": 1.0},
        ValueError,
        "steps",
        -3,
    ),
    (
        "warmup-during",
        adaclip.warmup,
        {"rule": _ema, "steps": 3, "during": -1.0},
        ValueError,
        "during",
        -1.0,
    ),
    # clippers
    (
        "global-threshold",
        adaclip.clip_by_global_norm,
        {"threshold": -1.0},
        ValueError,
        "threshold",
        -1.0,
    ),
    (
        "global-threshold-str",
        adaclip.clip_by_global_norm,
        {"threshold": "1"},
        TypeError,
        "threshold",
        "1",
    ),
    (
        "global-nonfinite",
        adaclip.clip_by_global_norm,
        {"threshold": 1.0, "nonfinite": "zero"},
        ValueError,
        "nonfinite",
        "zero",
    ),
    (
        "leaf-threshold-nan",
        adaclip.clip_by_leaf_norm,
        {"threshold": NAN},
        ValueError,
        "threshold",
        NAN,
    ),
    (
        "leaf-nonfinite",
        adaclip.clip_by_leaf_norm,
        {"threshold": 1.0, "nonfinite": None},
        TypeError,
        "nonfinite",
        None,
    ),
    (
        "global-threshold-f32",
        adaclip.clip_by_global_norm,
        {"threshold": 1e39},
        ValueError,
        "threshold",
        1e39,
    ),
    (
        "global-threshold-size1",
        adaclip.clip_by_global_norm,
        {"threshold": jnp.ones((1,))},
        TypeError,
        "threshold",
        "Array([1.]",
    ),
    (
        "value-threshold-neg-inf",
        adaclip.clip_by_value,
        {"threshold": -INF},
        ValueError,
        "threshold",
        -INF,
    ),
    ("value-threshold", adaclip.clip_by_value, {"threshold": -0.5}, ValueError, "threshold", -0.5),
    (
        "value-nonfinite",
        adaclip.clip_by_value,
        {"threshold": 1.0, "nonfinite": "raise"},
        ValueError,
        "nonfinite",
        "raise",
    ),
    # recipes
    (
        "autoclip-percentile",
        adaclip.autoclip,
        {"percentile": 150.0},
        ValueError,
        "percentile",
        150.0,
    ),
    ("autoclip-window", adaclip.autoclip, {"window": -1}, ValueError, "window", -1),
    ("autoclip-nonfinite", adaclip.autoclip, {"nonfinite": "nan"}, ValueError, "nonfinite", "nan"),
    ("zclip-alpha", adaclip.zclip, {"alpha": 1.5}, ValueError, "alpha", 1.5),
    ("zclip-max-norm", adaclip.zclip, {"max_norm": -1.0}, ValueError, "max_norm", -1.0),
    ("zclip-warmup", adaclip.zclip, {"warmup_steps": 2.5}, TypeError, "warmup_steps", 2.5),
    ("zclip-max-norm-inf", adaclip.zclip, {"max_norm": INF}, ValueError, "max_norm", INF),
    ("zclip-max-norm-f32", adaclip.zclip, {"max_norm": 1e39}, ValueError, "max_norm", 1e39),
    ("zclip-alpha-f32", adaclip.zclip, {"alpha": 0.999999999}, ValueError, "alpha", 0.999999999),
    ("zclip-nonfinite-none", adaclip.zclip, {"nonfinite": None}, TypeError, "nonfinite", None),
    ("autoclip-window-huge", adaclip.autoclip, {"window": 2**40}, ValueError, "window", 2**40),
    (
        "autoclip-percentile-size1",
        adaclip.autoclip,
        {"percentile": np.array([10.0])},
        TypeError,
        "percentile",
        "(1,)",
    ),
    ("adagc-ratio", adaclip.adagc, {"ratio": 0.0}, ValueError, "ratio", 0.0),
    ("adagc-beta", adaclip.adagc, {"beta": 1.0}, ValueError, "beta", 1.0),
    ("adagc-beta-f32", adaclip.adagc, {"beta": 0.99999999}, ValueError, "beta", 0.99999999),
    ("adagc-ratio-f32", adaclip.adagc, {"ratio": 1e39}, ValueError, "ratio", 1e39),
    (
        "adagc-warmup-int32",
        adaclip.adagc,
        {"warmup_steps": 2**40},
        ValueError,
        "warmup_steps",
        2**40,
    ),
    (
        "adagc-warmup-max-norm-f32",
        adaclip.adagc,
        {"warmup_max_norm": 1e39},
        ValueError,
        "warmup_max_norm",
        1e39,
    ),
    ("adagc-warmup", adaclip.adagc, {"warmup_steps": -1}, ValueError, "warmup_steps", -1),
    (
        "adagc-warmup-max-norm",
        adaclip.adagc,
        {"warmup_max_norm": NAN},
        ValueError,
        "warmup_max_norm",
        NAN,
    ),
    # skip_bad_steps
    ("skip-inner", adaclip.skip_bad_steps, {"inner": 3}, TypeError, "inner", 3),
    (
        "skip-spike-0",
        adaclip.skip_bad_steps,
        {"inner": optax.sgd(1.0), "spike_factor": 0.0},
        ValueError,
        "spike_factor",
        0.0,
    ),
    (
        "skip-spike-str",
        adaclip.skip_bad_steps,
        {"inner": optax.sgd(1.0), "spike_factor": "3"},
        TypeError,
        "spike_factor",
        "3",
    ),
]


def test_table_is_large_and_covers_the_api():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)
    covered = {c[1].__name__ for c in CASES}
    # Every transformation, rule and recipe factory (min/max: tested below).
    factories = {
        "fixed", "scheduled", "decaying", "moving_average", "ema", "percentile", "zscore",
        "quantile", "clamp", "warmup", "clip_by_global_norm", "clip_by_leaf_norm",
        "clip_by_value", "autoclip", "zclip", "adagc", "skip_bad_steps",
    }  # fmt: skip
    assert factories <= set(adaclip.__all__)
    assert factories <= covered, factories - covered


@pytest.mark.parametrize(
    ("factory", "kwargs", "exc", "arg", "value"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_argument_raises_naming_it(factory, kwargs, exc, arg, value):
    with pytest.raises(exc) as info:
        factory(**kwargs)
    msg = str(info.value)
    assert arg in msg, msg
    assert repr(value) in msg or str(value) in msg, msg


@pytest.mark.parametrize("combinator", [adaclip.minimum, adaclip.maximum])
def test_min_max_reject_bad_rules(combinator):
    with pytest.raises((TypeError, ValueError)):
        combinator()
    with pytest.raises(TypeError, match="'x'"):
        combinator(_ema, "x")
    with pytest.raises(ValueError, match="-1"):
        combinator(_ema, -1.0)
