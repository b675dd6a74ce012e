"""Rules built on exponential moving averages of the statistic."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adaclip import _validation
from adaclip._base import ThresholdRule, as_f32

FEEDS = ("clipped", "raw")


class EmaState(NamedTuple):
    """State of :func:`adaclip.ema`."""

    ema: jax.Array  # float32, statistic's shape: biased EMA of the fed statistics.
    count: jax.Array  # int32, (): statistics fed so far (finite steps taken).


def debiased(ema: jax.Array, decay: Any, count: jax.Array) -> jax.Array:
    """Adam-style bias correction ``ema / (1 - decay**count)``, for ``count >= 1``.

    ``1 - decay**count`` is computed as ``-expm1(count * log(decay))`` so that
    it stays accurate for decays close to 1. For ``count == 0`` it returns
    ``ema`` unchanged (callers must not use that value).
    """
    decay = as_f32(decay)
    log_decay = jnp.log1p(decay - 1.0)  # log(decay); -inf for decay == 0.
    n = jnp.maximum(count, 1).astype(jnp.float32)
    correction = -jnp.expm1(n * log_decay)
    return ema / correction


def ema(
    multiplier: Any, decay: Any, *, warmup_steps: Any = 0, feed: str = "clipped"
) -> ThresholdRule:
    """A multiple of the bias-corrected EMA of past statistics.

    With $s_t$ the statistic at step $t$, $\\beta$ = ``decay`` and $m$ =
    ``multiplier``:

    $$c_t = m \\cdot \\frac{e_{t}}{1 - \\beta^{t}},\\qquad
      e_{t+1} = \\beta\\, e_t + (1 - \\beta)\\, x_t,\\qquad e_0 = 0$$

    where $x_t = \\min(s_t, c_t)$ with ``feed="clipped"`` (a spike enters the
    average only up to the threshold, so it cannot drag the threshold up) or
    $x_t = s_t$ with ``feed="raw"``.

    The current statistic is **not** part of the average that sets its own
    threshold: $c_t$ uses steps $0..t-1$ only, so a spike is measured
    against the past. At step 0 there is no data yet and nothing is clipped;
    for the first ``max(warmup_steps, 1)`` steps the threshold reported is
    the statistic itself (nothing is clipped) while the EMA is still fed.
    Non-finite steps are not counted and never enter the EMA.

    With ``feed="clipped"``, a start made of zero statistics pins the
    threshold at zero (every later step is clipped to zero); use
    ``feed="raw"`` or a lower bound with ``adaclip.clamp`` if your gradients
    can be exactly zero at the start.

    Args:
        multiplier: $m > 0$, how far above the average a statistic may go.
        decay: $\\beta \\in [0, 1)$; the average spans about $1/(1-\\beta)$ steps.
        warmup_steps: int >= 0, steps during which nothing is clipped.
        feed: ``"clipped"`` or ``"raw"``, what enters the EMA.

    Returns:
        An :class:`adaclip.ThresholdRule`.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of its range or ``feed`` is unknown.

    Examples:
        >>> import jax.numpy as jnp
        >>> import optax
        >>> import adaclip
        >>> tx = optax.chain(
        ...     adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9, warmup_steps=10)),
        ...     optax.adam(1e-3),
        ... )
        >>> state = tx.init({"w": jnp.zeros(3)})
    """
    _validation.check_positive("multiplier", multiplier)
    _validation.check_real("decay", decay, low=0.0, high=1.0, high_open=True)
    _validation.check_int("warmup_steps", warmup_steps, low=0)
    _validation.check_choice("feed", feed, FEEDS)

    def init_fn(statistic):
        return EmaState(
            ema=jnp.zeros(jnp.shape(statistic), jnp.float32),
            count=jnp.zeros([], jnp.int32),
        )

    def update_fn(statistic, state):
        mean = debiased(state.ema, decay, state.count)
        active = (state.count >= warmup_steps) & (state.count > 0)
        threshold = jnp.where(active, as_f32(multiplier) * mean, statistic)
        fed = jnp.minimum(statistic, threshold) if feed == "clipped" else statistic
        beta = as_f32(decay)
        new_ema = beta * state.ema + (1.0 - beta) * fed
        return threshold, EmaState(ema=new_ema, count=optax.safe_increment(state.count))

    return ThresholdRule(init_fn, update_fn)
