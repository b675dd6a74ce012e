"""``rolling_zscore``: mean + k std of a window of past statistics (spike bounds)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax

from adaclip import _validation
from adaclip._base import F32_MAX, FEEDS, ThresholdRule, as_f32, safe_sqrt
from adaclip._window_rules import (
    WindowState,
    window_empty,
    window_feed,
    window_filled,
    window_init,
)

_STD_FLOOR = 1e-6  # Levanter's floor on the standard deviation.


# The state of rolling_zscore is a WindowState (a ring buffer of the fed
# statistics, as moving_average's). The old name stays importable, as a plain
# alias, so that code and checkpoints that name it keep working.
RollingZScoreState = WindowState


def rolling_zscore(
    sigma: Any,
    window: int,
    *,
    min_history: Any = None,
    feed: str = "raw",
    ddof: int = 0,
) -> ThresholdRule:
    """Mean plus ``sigma`` standard deviations of the previous ``window`` statistics.

    With $x_{t-n}, \\dots, x_{t-1}$ the $n_t = \\min(t, w)$ statistics fed
    before step $t$ (the current one is **not** among them):

    $$c_t = \\bar x + \\sigma \\max\\left(\\sqrt{\\tfrac{1}{n_t - d}
      \\textstyle\\sum_k (x_k - \\bar x)^2},\\ 10^{-6}\\right)
      \\quad\\text{once } n_t \\ge h,$$

    with $d$ = ``ddof`` (0: the population standard deviation) and $h$ =
    ``min_history``. No bound yet for the first $h$ finite steps (until $h$
    statistics are held): the threshold reported is the statistic itself and
    nothing is cut, while the window is fed (``docs/concepts.md``, "Before a
    rule has a bound"). ``feed="raw"`` (the default) puts every finite
    statistic into the window, spikes included, as Levanter and OLMo-core
    do; ``feed="clipped"`` puts $\\min(s_t, c_t)$, so a spike cannot widen
    the band it is judged by. A NaN or infinite statistic never enters the
    window (nor counts towards $h$). Element-wise: a per-leaf statistic gets
    one window per leaf.

    This is the spike test of Levanter's ``SkipStepConfig`` and OLMo-core's
    ``SkipStepOptimizer``, for the loss or the gradient norm. Used in
    [`adaclip.skip_bad_steps`][adaclip.skip_bad_steps] (``loss_rule=``, or
    as a clipper's rule with ``spike_factor=1``) it reproduces their
    decisions: Levanter with ``rolling_zscore(sigma_factor,
    rolling_interval_length)`` (its buffer holds the last
    ``rolling_interval_length`` steps and it decides once half of them
    exist, this rule's default ``min_history``), OLMo-core with
    ``rolling_zscore(sigma_factor, rolling_interval_length, min_history=
    max(2, rolling_interval_length // 2) - 1, ddof=1)`` (it keeps
    ``rolling_interval_length + 1`` values, the current one included, and
    uses torch's sample standard deviation).

    It is also Levanter's and Marin's update-norm clip
    (``clip_update_by_historical_norm``: ``rolling_zscore(sigma_factor,
    rolling_interval_length)`` with the defaults, on the clipper placed
    after Adam and weight decay); see the "Update clipping" docs page.

    **Differences from both.** In Levanter and OLMo-core a NaN loss or norm
    enters the history, after which every step is skipped until it leaves
    the window (a NaN mean makes every comparison fail); here it never
    enters it (and [`adaclip.skip_bad_steps`][adaclip.skip_bad_steps] skips
    the NaN step itself). OLMo-core does not floor the standard deviation.

    Cost: O(``window``) per entry of the statistic per step, whatever the
    step count.

    Args:
        sigma: $\\sigma > 0$ (may be traced).
        window: $w$, a Python int >= 1 (static: it sets the buffer's size).
        min_history: $h$, an int in [1, ``window``] (may be traced; default
            ``max(window // 2, 2)``): no bound yet for the first $h$ finite
            steps.
        feed: ``"raw"`` or ``"clipped"``, what enters the window.
        ddof: 0 (population standard deviation, Levanter) or 1 (sample
            standard deviation, torch's default, OLMo-core).

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule] whose state is a
        [`adaclip.WindowState`][adaclip.WindowState] (``adaclip.RollingZScoreState``
        is another name for it).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of its range or ``feed`` is unknown.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.rolling_zscore(2.0, window=4, min_history=3)
        >>> state = rule.init(jnp.zeros(()))
        >>> for s in [1.0, 3.0, 2.0, 9.0, 2.5]:
        ...     threshold, state = rule.update(jnp.float32(s), state)
        ...     print(round(float(threshold), 3))
        1.0
        3.0
        2.0
        3.633
        9.975
    """
    _validation.check_positive("sigma", sigma)
    _validation.check_window("window", window)
    window = int(window)
    if min_history is None:
        min_history = max(window // 2, 2)
    _validation.check_window("window", window, min_history=min_history)
    _validation.check_choice("feed", feed, FEEDS)
    if isinstance(ddof, bool) or ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}.")

    def init_fn(statistic):
        return window_init(statistic, window)

    def update_fn(statistic, state):
        s = as_f32(statistic)
        n = window_filled(state.count, window)
        # Slots 0..n-1 hold data (the ring fills from slot 0 before it wraps).
        idx = lax.broadcasted_iota(jnp.int32, state.buffer.shape, 0)
        valid = idx < n
        nf = jnp.maximum(n, 1).astype(jnp.float32)
        mean = jnp.sum(jnp.where(valid, state.buffer, 0.0), axis=0) / nf
        dev = jnp.where(valid, state.buffer - mean[None], 0.0)
        var = jnp.sum(jnp.square(dev), axis=0) / jnp.maximum(n - ddof, 1).astype(jnp.float32)
        std = jnp.maximum(safe_sqrt(var), _STD_FLOOR)
        level = jnp.minimum(mean + as_f32(sigma) * std, F32_MAX)
        active = (n >= min_history) & ~window_empty(feed, state.buffer)
        threshold = jnp.where(active, level, s)
        return threshold, window_feed(feed, state, s, threshold, window)

    return ThresholdRule(init_fn, update_fn)
