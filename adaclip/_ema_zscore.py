"""``ema_zscore``: bias-corrected EMA mean + k std (the RNMT+ / Lingvo spike bound)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adaclip import _validation
from adaclip._base import (
    F32_MAX,
    FEEDS,
    ThresholdRule,
    as_f32,
    ema_span,
    feed_patience,
    feed_run_init,
    feed_step,
    safe_sqrt,
)

_MIN_WEIGHT = 1e-6  # the bias correction divides by max(weight, this).
_SQRT_EPS = float(np.sqrt(np.finfo(np.float32).eps))  # ~3.5e-4


def _weight_limit(decay: float) -> float:
    """The largest weight ``w <- w + (1 - decay) * (1 - w)`` reaches in float32.

    The increment rounds to zero once ``(1 - decay) * (1 - w)`` falls below
    half a unit in the last place of ``w``; for a decay close to 1 that
    happens well below 1 (0.97 at ``decay=1 - 1e-6``). The first float32 at
    which it does is found by bisection over the float32 values in [0, 1]
    (the update's increment shrinks as ``w`` grows).
    """
    rate = np.float32(1.0) - np.float32(decay)
    if rate >= 1.0:
        return 1.0

    def stuck(bits: int) -> bool:
        w = np.array(bits, np.uint32).view(np.float32)[()]
        return bool(w + rate * (np.float32(1.0) - w) == w)

    lo, hi = 0, int(np.array(1.0, np.float32).view(np.uint32))
    while lo < hi:  # the first bit pattern at which the update is stuck
        mid = (lo + hi) // 2
        if stuck(mid):
            hi = mid
        else:
            lo = mid + 1
    return float(np.array(lo, np.uint32).view(np.float32))


def _check_reachable(decay: Any, min_weight: Any) -> None:
    """Rejects a ``min_weight`` that the float32 weight can never exceed."""
    if _validation.is_traced(decay) or _validation.is_traced(min_weight):
        return
    limit = _weight_limit(float(np.asarray(decay)))
    if float(np.float32(np.asarray(min_weight))) >= limit:
        raise ValueError(
            f"min_weight must be below {limit!r}, the largest bias-correction weight "
            f"that an EMA with decay={decay!r} reaches in float32 (so the rule could "
            f"never act), got min_weight={min_weight!r}. Lower min_weight or the decay."
        )


class EmaZScoreState(NamedTuple):
    """State of [`adaclip.ema_zscore`][adaclip.ema_zscore]: three biased EMAs.

    ``mean / weight`` is the bias-corrected mean of the statistics fed so far.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.ema_zscore(3.0, 0.5, feed="raw")
        >>> state = rule.init(jnp.zeros(()))
        >>> for s in [1.0, 2.0]:
        ...     _, state = rule.update(jnp.asarray(s), state)
        >>> print(float(state.mean), float(state.square), float(state.weight))
        1.25 2.25 0.75
    """

    mean: jax.Array  # float32, statistic's shape: biased EMA of the fed statistics.
    square: jax.Array  # float32, statistic's shape: biased EMA of their squares.
    weight: jax.Array  # float32, (): biased EMA of 1, i.e. 1 - decay**(finite steps).
    # int32, statistic's shape: consecutive steps each entry was cut (the
    # clipped feed's patience, see adaclip._base.feed_step); 0 with feed="raw".
    run: jax.Array


def ema_zscore(
    sigma: Any,
    decay: Any,
    *,
    min_weight: Any = 0.999,
    std_floor: Any = 1e-6,
    feed: str = "clipped",
) -> ThresholdRule:
    """Bias-corrected EMA mean plus ``sigma`` EMA standard deviations.

    With $\\beta$ = ``decay`` and $x_k$ the statistics fed before step $t$,
    the EMAs $m$, $q$ and $w$ of $x_k$, $x_k^2$ and $1$ (all starting at 0)
    give

    $$\\mu = \\frac{m}{\\max(w, 10^{-6})},\\qquad
      \\sigma_t = \\sqrt{\\max\\left(\\frac{q}{\\max(w, 10^{-6})} - \\mu^2,\\
      f^2\\right)},\\qquad c_t = \\mu + \\sigma\\,\\sigma_t$$

    with $f$ = ``std_floor``, raised to $\\sqrt{\\epsilon_{32}}\\,|\\mu|$
    (3.5e-4 of the mean: below that the float32 variance is rounding noise)
    ($w = 1 - \\beta^n$ after $n$ steps: the bias correction of Adam). No
    bound yet for the first finite steps until $w$ exceeds $\\omega$ =
    ``min_weight`` (the smallest $n$ with $1 - \\beta^n > \\omega$, about
    $\\log(1-\\omega)/\\log\\beta$): the threshold reported is the statistic
    itself and nothing is cut, while the EMAs are fed (``docs/concepts.md``,
    "Before a rule has a bound"). Then
    $m \\leftarrow \\beta m + (1-\\beta) x_t$, likewise $q$ with $x_t^2$ and
    $w$ with 1, where $x_t = \\min(s_t, c_t)$ with ``feed="clipped"`` (from
    the first step on, whether or not the bound applies yet) or $x_t = s_t$
    with ``feed="raw"``. A NaN or infinite statistic never enters the EMAs.

    **No absorbing state.** The clipped feed is adaclip's shared one
    (``docs/robustness.md``): an entry cut on $K = \\lceil 8/(1-\\beta)
    \\rceil$ consecutive steps is fed the raw statistic until a step is not
    cut, so a start of zeros, tiny or constant values, or a level the
    statistics have left for good, holds the EMAs for at most $K$ steps;
    after that they follow the raw statistic, and the threshold is back at
    its steady state within about $K + \\log(\\epsilon)/\\log\\beta$ steps
    ($\\epsilon$ the relative tolerance). On sequences that cut no entry $K$
    steps in a row this is exactly the formula above.

    This is the rule of RNMT+ (Chen et al. 2018) as Lingvo's
    ``GradNormTracker`` implements it, once run on the log of the norm with
    [`adaclip.log_space`][adaclip.log_space]:
    ``log_space(ema_zscore(4.0, 0.995, min_weight=0.75, std_floor=1e-3),
    offset=1.0, floor=1e-2)`` and
    [`adaclip.skip_bad_steps`][adaclip.skip_bad_steps] with
    ``spike_factor=1`` take Lingvo's decisions step for step. No other
    adaclip rule has this form: [`adaclip.zscore`][adaclip.zscore] is
    ZClip's (a warm-up average, then an EMA without bias correction and
    with the variance about the updated mean) and [`adaclip.ema`][adaclip.ema]
    has no standard deviation.

    Args:
        sigma: $\\sigma > 0$ (may be traced).
        decay: $\\beta \\in [0, 1)$ (may be traced).
        min_weight: $\\omega$, a number in [0, 1) (may be traced): no bound
            yet for the first finite steps until $w$ exceeds it, about
            $\\log(1 - \\omega) / \\log\\beta$ of them. It must lie below the largest weight
            the float32 EMA of 1 reaches for this decay (0.99970 at decay
            0.9999, 0.997 at 0.99999), or the rule could never act. The
            default, 0.999 (about 6.9 spans), is set from runs: with
            ``feed="clipped"`` the EMAs start at 0 and are fed the capped
            value $\\sigma f$ from the first step, so in linear space they
            need several spans to climb to the statistic's level. With
            Lingvo's 0.75 a *constant* norm of 1 was cut on 27 of 300 steps
            at decay 0.9 (down to 6e-4); with 0.999, constant norms from
            1e-4 to 1 at decays 0.9 to 0.999 are never cut and noisy ones
            are cut about as often as with ``feed="raw"`` (norms near 1e4
            at decay 0.9 still climb for a few steps past it: raise
            ``std_floor`` or use [`adaclip.log_space`][adaclip.log_space]).
            Lingvo's recipe passes its own 0.75 (in log space the climb is
            short).
        std_floor: $f \\ge 0$, the smallest standard deviation (may be traced).
        feed: ``"clipped"`` or ``"raw"``, what enters the EMAs.

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule] whose state is an
        [`adaclip.EmaZScoreState`][adaclip.EmaZScoreState].

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of its range or ``feed`` is unknown.

    Examples:
        No bound while the EMAs' weight is at most ``min_weight`` (three steps
        at decay 0.5 with ``min_weight=0.75``), then the spike at 9 is cut to
        $\\mu + 3\\sigma_t$:

        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.ema_zscore(3.0, 0.5, min_weight=0.75, feed="raw")
        >>> state = rule.init(jnp.zeros(()))
        >>> for s in [1.0, 2.0, 1.0, 9.0]:
        ...     threshold, state = rule.update(jnp.float32(s), state)
        ...     print(round(float(threshold), 3))
        1.0
        2.0
        1.0
        2.641

    References:
        Chen et al. *The Best of Both Worlds: Combining Recent Advances in
        Neural Machine Translation*, ACL 2018.
        [arXiv:1804.09849](https://arxiv.org/abs/1804.09849)
    """
    _validation.check_positive("sigma", sigma)
    _validation.check_real("decay", decay, low=0.0, high=1.0, high_open=True)
    _validation.check_real("min_weight", min_weight, low=0.0, high=1.0, high_open=True)
    _check_reachable(decay, min_weight)
    _validation.check_nonnegative("std_floor", std_floor)
    _validation.check_choice("feed", feed, FEEDS)

    def init_fn(statistic):
        shape = jnp.shape(statistic)
        return EmaZScoreState(
            mean=jnp.zeros(shape, jnp.float32),
            square=jnp.zeros(shape, jnp.float32),
            weight=jnp.zeros([], jnp.float32),
            run=feed_run_init(statistic),
        )

    def update_fn(statistic, state):
        s = as_f32(statistic)
        w = jnp.maximum(state.weight, _MIN_WEIGHT)
        mean = state.mean / w
        var = state.square / w - mean * mean
        # E[x^2] - mean^2 in float32 resolves the std only down to about
        # sqrt(eps) * |mean|: below that it is rounding noise, which made a
        # constant statistic above ~10 "spike" over its own mean on every step.
        resolution = _SQRT_EPS * jnp.abs(mean)
        floor = jnp.maximum(as_f32(std_floor), resolution)
        std = safe_sqrt(jnp.maximum(var, jnp.square(floor)))
        level = mean + as_f32(sigma) * std
        level = jnp.where(jnp.isnan(level), F32_MAX, jnp.minimum(level, F32_MAX))
        threshold = jnp.where(state.weight > as_f32(min_weight), level, s)
        fed, run = feed_step(feed, s, level, state.run, feed_patience(ema_span(decay)))
        rate = 1.0 - as_f32(decay)
        weight = state.weight + rate * (1.0 - state.weight)
        new_mean = state.mean + rate * (fed - state.mean)
        new_square = state.square + rate * (jnp.square(fed) - state.square)
        return threshold, EmaZScoreState(
            mean=new_mean,
            square=jnp.minimum(new_square, F32_MAX),
            weight=weight,
            run=run,
        )

    return ThresholdRule(init_fn, update_fn)
