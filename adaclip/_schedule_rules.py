"""Rules that ignore the statistics: fixed, scheduled and decaying thresholds."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adaclip import _validation
from adaclip._base import Schedule, ThresholdRule, as_f32


class FixedState(NamedTuple):
    """State of [`adaclip.fixed`][adaclip.fixed]: empty, a constant threshold needs no memory.

    A clipper given a plain number runs [`adaclip.fixed`][adaclip.fixed], so this is
    the ``rule_state`` of its [`adaclip.ClipState`][adaclip.ClipState].

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> state = adaclip.clip_by_global_norm(1.0).init({"w": jnp.zeros(3)})
        >>> state.rule_state
        FixedState()
        >>> adaclip.fixed(0.5).init(jnp.zeros(()))
        FixedState()
    """


class ScheduleState(NamedTuple):
    """State of [`adaclip.scheduled`][adaclip.scheduled] and [`adaclip.decaying`][adaclip.decaying].

    ``count`` is the step the schedule is evaluated at. It counts finite steps
    only: a step with a NaN or infinite gradient does not advance the schedule.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_global_norm(adaclip.decaying(1.0, 0.5))
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> for g in [1.0, jnp.nan, 1.0]:
        ...     _, state = tx.update({"w": jnp.full(2, g)}, state)
        ...     print(float(state.threshold), int(state.rule_state.count), int(state.count))
        1.0 1 1
        1.0 1 2
        0.5 2 3
    """

    count: jax.Array  # int32, (): finite steps taken so far.


def fixed(value: Any) -> ThresholdRule:
    """A constant threshold.

    $$c_t = v$$

    The current statistic plays no part; there is no warm-up.

    Args:
        value: the threshold, a finite number >= 0 (may be traced, e.g. under
            ``optax.inject_hyperparams``). With ``value=0`` every gradient is
            clipped to zero (a zero gradient stays zero, never NaN).

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule].

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is negative, infinite or NaN.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_global_norm(adaclip.fixed(1.0))
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, state)
        >>> updates["w"]
        Array([0.6, 0.8], dtype=float32)
    """
    _validation.check_nonnegative("value", value)

    def init_fn(statistic):
        del statistic
        return FixedState()

    def update_fn(statistic, state):
        return jnp.broadcast_to(as_f32(value), jnp.shape(statistic)), state

    return ThresholdRule(init_fn, update_fn)


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

    def init_fn(statistic):
        del statistic
        return ScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(statistic, state):
        threshold = jnp.maximum(as_f32(schedule(state.count)), 0.0)
        threshold = jnp.broadcast_to(threshold, jnp.shape(statistic))
        return threshold, ScheduleState(count=optax.safe_increment(state.count))

    return ThresholdRule(init_fn, update_fn)


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
