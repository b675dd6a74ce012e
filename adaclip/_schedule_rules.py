"""Rules that ignore the statistics: fixed, scheduled and decaying thresholds."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from adaclip import _validation
from adaclip._base import FixedState as FixedState
from adaclip._base import (
    Schedule,
    ThresholdRule,
    as_f32,
    check_schedule,
    constant_rule,
    schedule_rule,
)
from adaclip._base import ScheduleState as ScheduleState


def fixed(value: Any) -> ThresholdRule:
    """A constant threshold.

    $$c_t = v$$

    The current statistic plays no part; there is no warm-up.

    Args:
        value: the threshold, a number >= 0 that is finite in float32, or
            ``math.inf`` to measure without clipping (may be traced, e.g.
            under ``optax.inject_hyperparams``). With ``value=0`` every
            gradient is clipped to zero (a zero gradient stays zero, never NaN).

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule].

    Raises:
        TypeError: ``value`` is not a real number (an array with a shape,
            even a size-1 one, is not).
        ValueError: ``value`` is negative, NaN, ``-inf`` or a finite number
            beyond the float32 maximum (e.g. ``1e39``).

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_global_norm(adaclip.fixed(1.0))
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, state)
        >>> updates["w"]
        Array([0.6, 0.8], dtype=float32)
    """
    _validation.check_threshold("value", value, allow_inf=True)

    return constant_rule(value)


def scheduled(schedule: Schedule) -> ThresholdRule:
    """A threshold that follows an optax schedule of the step count.

    $$c_t = \\mathrm{schedule}(t)$$

    ``t`` counts the steps this rule has taken, starting at 0; a step whose
    statistic is not finite is not counted (its state is left untouched), just
    as ``optax.apply_if_finite`` leaves its inner schedules alone. The
    current statistic plays no part.

    Args:
        schedule: any callable of the int32 step count returning a threshold,
            e.g. ``optax.linear_schedule(1.0, 0.1, 1000)``. Values below 0 are
            clipped to 0 so a schedule that decays to 0 never gives NaN.

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule].

    Raises:
        TypeError: ``schedule`` is not callable.

    Examples:
        >>> import optax
        >>> import adaclip
        >>> rule = adaclip.scheduled(optax.cosine_decay_schedule(5.0, 10_000, alpha=0.1))
        >>> tx = adaclip.clip_by_global_norm(rule)
    """
    if not callable(schedule):
        raise TypeError(f"schedule must be a callable of the step count, got {schedule!r}.")

    check_schedule("schedule", schedule)
    return schedule_rule(schedule)


def decaying(
    init_value: Any, decay_rate: Any, *, transition_steps: Any = 1, floor: Any = 0.0
) -> ThresholdRule:
    """An exponentially decaying threshold with a floor.

    $$c_t = \\max\\left(\\text{floor},\\ c_0 \\cdot r^{t / T}\\right)$$

    with ``t`` the number of finite steps taken so far (0 at the first step),
    ``r = decay_rate`` and ``T = transition_steps``. The current statistic
    plays no part.

    Args:
        init_value: $c_0$, the threshold at step 0, >= 0.
        decay_rate: $r$ in (0, 1]; 1 keeps the threshold constant.
        transition_steps: $T > 0$, the number of steps over which the
            threshold is multiplied by ``decay_rate`` once.
        floor: the threshold never goes below this value (>= 0).

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule].

    Raises:
        TypeError: an argument is not a real number.
        ValueError: an argument is out of its range.

    Examples:
        >>> import adaclip
        >>> import jax.numpy as jnp
        >>> rule = adaclip.decaying(8.0, 0.5, transition_steps=2, floor=3.0)
        >>> state = rule.init(jnp.zeros(()))
        >>> for _ in range(5):
        ...     threshold, state = rule.update(jnp.zeros(()), state)
        ...     print(float(threshold))
        8.0
        5.65...
        4.0
        3.0
        3.0
    """
    _validation.check_nonnegative("init_value", init_value)
    _validation.check_real("decay_rate", decay_rate, low=0.0, high=1.0, low_open=True)
    _validation.check_positive("transition_steps", transition_steps)
    _validation.check_nonnegative("floor", floor)

    def schedule(count):
        exponent = count.astype(jnp.float32) / as_f32(transition_steps)
        value = as_f32(init_value) * jnp.power(as_f32(decay_rate), exponent)
        return jnp.maximum(value, as_f32(floor))

    return scheduled(schedule)
