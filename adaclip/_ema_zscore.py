"""``ema_zscore``: bias-corrected EMA mean + k std (the RNMT+ / Lingvo spike bound)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaclip import _validation
from adaclip._base import F32_MAX, FEEDS, ThresholdRule, as_f32, safe_sqrt

_MIN_WEIGHT = 1e-6  # the bias correction divides by max(weight, this).


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


def ema_zscore(
    sigma: Any,
    decay: Any,
    *,
    min_weight: Any = 0.75,
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

    with $f$ = ``std_floor`` ($w = 1 - \\beta^n$ after $n$ steps: the
    bias correction of Adam). The bound applies once $w$ exceeds
    ``min_weight``; before that nothing is cut (the threshold reported is the
    statistic itself). Then $m \\leftarrow \\beta m + (1-\\beta) x_t$,
    likewise $q$ with $x_t^2$ and $w$ with 1, where $x_t = \\min(s_t, c_t)$
    with ``feed="clipped"`` (from the first step on, whether or not the
    bound applies yet) or $x_t = s_t$ with ``feed="raw"``. A NaN or
    infinite statistic never enters the EMAs.

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
        min_weight: a number in [0, 1): the bound applies once $w$ exceeds
            it, after about $\\log(1 - \\text{min\\_weight}) / \\log\\beta$
            steps (may be traced). The default, Lingvo's 0.75, matters with
            ``feed="clipped"``: the EMAs start at 0 and are fed capped values
            from the first step, so a bound applied from step 0 would cut the
            first steps' gradients almost to zero.
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
        at decay 0.5), then the spike at 9 is cut to $\\mu + 3\\sigma_t$:

        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.ema_zscore(3.0, 0.5, feed="raw")
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
    _validation.check_nonnegative("std_floor", std_floor)
    _validation.check_choice("feed", feed, FEEDS)

    def init_fn(statistic):
        shape = jnp.shape(statistic)
        return EmaZScoreState(
            mean=jnp.zeros(shape, jnp.float32),
            square=jnp.zeros(shape, jnp.float32),
            weight=jnp.zeros([], jnp.float32),
        )

    def update_fn(statistic, state):
        s = as_f32(statistic)
        w = jnp.maximum(state.weight, _MIN_WEIGHT)
        mean = state.mean / w
        var = state.square / w - mean * mean
        std = safe_sqrt(jnp.maximum(var, jnp.square(as_f32(std_floor))))
        level = mean + as_f32(sigma) * std
        level = jnp.where(jnp.isnan(level), F32_MAX, jnp.minimum(level, F32_MAX))
        threshold = jnp.where(state.weight > as_f32(min_weight), level, s)
        fed = jnp.minimum(s, level) if feed == "clipped" else s
        rate = 1.0 - as_f32(decay)
        return threshold, EmaZScoreState(
            mean=state.mean + rate * (fed - state.mean),
            square=jnp.minimum(state.square + rate * (jnp.square(fed) - state.square), F32_MAX),
            weight=state.weight + rate * (1.0 - state.weight),
        )

    return ThresholdRule(init_fn, update_fn)
