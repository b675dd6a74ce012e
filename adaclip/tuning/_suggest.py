"""Suggestions read off a recorded trace: a fixed threshold, or a value for a target clip rate."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adaclip import ThresholdRule, _validation, replay
from adaclip.tuning import _checks
from adaclip.tuning._summaries import _summary


def suggest_fixed(statistics: Any, percentile: float = 10.0) -> float | np.ndarray:
    """A fixed threshold read off a recorded trace: a percentile of its norms.

    $$c = \\mathrm{percentile}_p(s_1, \\dots, s_T)$$

    over the finite statistics (linear interpolation, as ``np.percentile``).
    On the recorded trace a fixed threshold at the $p$-th percentile clips
    about $1 - p/100$ of the steps. AutoClip uses $p = 10$ of the history
    (so it clips most steps, normalising their size); Pascanu et al. suggest
    a threshold near the average norm; a high percentile (90 to 99) only
    cuts the outliers.

    Args:
        statistics: recorded statistics, ``(steps,)`` or ``(steps, n_leaves)``
            (one threshold per leaf).
        percentile: $p$ in [0, 100].

    Returns:
        A float, or one float per leaf for 2-D statistics.

    Raises:
        ValueError: ``percentile`` is out of range or there is no finite step.

    Examples:
        >>> import numpy as np
        >>> import adaclip.tuning
        >>> adaclip.tuning.suggest_fixed(np.arange(1.0, 101.0), percentile=90)
        90.1...

    References:
        Seetharaman et al. 2020, AutoClip: Adaptive Gradient Clipping for
        Source Separation Networks (https://arxiv.org/abs/2007.14469);
        Pascanu et al. 2013, On the difficulty of training recurrent neural
        networks (https://arxiv.org/abs/1211.5063).
    """
    stats = _checks.statistics_array(statistics).astype(np.float64)
    _validation.check_real("percentile", percentile, low=0.0, high=100.0)
    p = float(percentile)
    finite = np.isfinite(stats).all(axis=tuple(range(1, stats.ndim)))
    if not finite.any():
        raise ValueError("statistics has no finite step.")
    value = np.percentile(stats[finite], p, axis=0)
    return float(value) if np.ndim(value) == 0 else value


def suggest_for_clip_rate(
    make_rule: Callable[[Any], ThresholdRule],
    statistics: Any,
    target_clip_rate: float,
    *,
    low: float = 1.0,
    high: float = 100.0,
    num: int = 64,
    rounds: int = 3,
) -> float:
    """The smallest value of one hyper-parameter that clips at most a target rate.

    Searches $x \\in$ [``low``, ``high``] for the smallest $x$ whose replay
    of ``make_rule(x)`` over the trace clips a fraction of the finite steps
    no larger than ``target_clip_rate``. The search evaluates ``num``
    geometrically spaced values at once (one vmapped replay), narrows to the
    bracket around the target, and repeats ``rounds`` times. It assumes the
    clip rate does not grow with $x$, as for a multiplier or a percentile.

    Args:
        make_rule: builds a rule from the value, e.g. ``lambda m:
            adaclip.ema(m, 0.99)``.
        statistics: recorded statistics, ``(steps,)`` or ``(steps, n_leaves)``.
        target_clip_rate: the clip rate to reach, in [0, 1].
        low: the lower end of the search interval, ``0 < low < high``.
        high: the upper end of the search interval.
        num: values tried per round (>= 2).
        rounds: refinement rounds (>= 1).

    Returns:
        The value, a float. When ``low`` already clips no more than the
        target, the answer may lie below the search interval: the function
        returns ``low`` and warns.

    Raises:
        TypeError, ValueError: a bad argument, or the target is out of reach:
            even ``high`` clips more than ``target_clip_rate`` (the message
            gives the clip rates reachable in [``low``, ``high``]).

    Warns:
        UserWarning: ``low`` already clips no more than the target (the
            message gives the target and the reachable clip rates); lower
            ``low`` to search further.

    Examples:
        >>> import numpy as np
        >>> import adaclip.tuning
        >>> rng = np.random.default_rng(0)
        >>> norms = np.exp(rng.normal(size=2000)).astype(np.float32)
        >>> make_rule = lambda m: adaclip.ema(m, 0.99)
        >>> m = adaclip.tuning.suggest_for_clip_rate(make_rule, norms, 0.05)
        >>> trace = adaclip.replay(make_rule(m), norms)
        >>> rate = adaclip.tuning.summarize(trace)["clip_rate"]
        >>> print(f"multiplier {m:.2f}: clip rate {rate:.3f}")
        multiplier 3.53: clip rate 0.050
    """
    stats = jnp.asarray(_checks.statistics_array(statistics))
    _validation.check_real("target_clip_rate", target_clip_rate, low=0.0, high=1.0)
    _validation.check_positive("low", low)
    _validation.check_positive("high", high)
    if not float(low) < float(high):
        raise ValueError(f"low must be below high, got low={low!r}, high={high!r}.")
    _validation.check_int("num", num, low=2, static=True)
    _validation.check_int("rounds", rounds, low=1, static=True)

    @jax.jit
    def rates(values):
        def one(x):
            return _summary(replay(make_rule(x), stats), None)["clip_rate"]

        return jax.vmap(one)(values)

    target = np.float32(target_clip_rate)  # clip rates are float32
    lo, hi = float(low), float(high)
    first = np.asarray(rates(jnp.asarray([lo, hi], jnp.float32)))
    reachable = (
        f"clip rates reachable in [low, high] = [{low!r}, {high!r}] run from "
        f"{float(first[0]):.4g} (at low) down to {float(first[1]):.4g} (at high)"
    )
    if first[0] <= target:
        warnings.warn(
            f"target_clip_rate={target_clip_rate!r} is reached already at low: the {reachable}, "
            "so the smallest value may lie below low; returning low. Lower low to search "
            "further.",
            UserWarning,
            stacklevel=2,
        )
        return lo
    if first[1] > target:
        raise ValueError(
            f"target_clip_rate={target_clip_rate!r} cannot be reached: the {reachable}; raise high."
        )
    for _ in range(int(rounds)):
        values = np.geomspace(lo, hi, int(num)).astype(np.float32)
        r = np.asarray(rates(jnp.asarray(values)))
        ok = np.nonzero(r <= target)[0]
        k = int(ok[0]) if ok.size else len(values) - 1
        hi = float(values[k])
        lo = float(values[k - 1]) if k > 0 else lo
    return hi
