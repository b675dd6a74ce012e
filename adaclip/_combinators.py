"""Rules made of rules: bounds, minimum, maximum and warm-up."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaclip import _validation
from adaclip._base import PyTree, ThresholdLike, ThresholdRule, as_f32, as_rule, increment


def _bound_rule(name: str, bound: ThresholdLike | None) -> ThresholdRule | None:
    """A bound as a rule, checking a plain number under its own name."""
    if bound is None:
        return None
    if _is_number(bound):
        _validation.check_nonnegative(name, bound)
    return as_rule(bound, name)


def _is_number(x: Any) -> bool:
    """Neither None, a rule nor a schedule: a threshold given as a number."""
    return x is not None and not isinstance(x, ThresholdRule) and not callable(x)


class ClampState(NamedTuple):
    """State of [`adaclip.clamp`][adaclip.clamp]: the states of the rule and of its bounds.

    ``rule`` is the bounded rule's state, ``lower`` and ``upper`` the states
    of the bounds (a number is a [`adaclip.fixed`][adaclip.fixed] rule, whose
    state is a [`adaclip.FixedState`][adaclip.FixedState]; an absent bound
    has the empty state ``()``). Each is the state its rule alone would have:
    all three see every finite statistic.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.clamp(adaclip.ema(2.0, 0.9), lower=0.1)
        >>> state = adaclip.clip_by_global_norm(rule).init({"w": jnp.zeros(2)})
        >>> state.rule_state
        ClampState(rule=EmaState(ema=Array(0., dtype=float32), count=Array(0, dtype=int32), run=Array(0, dtype=int32)), lower=FixedState(), upper=())
    """  # noqa: E501

    rule: PyTree
    lower: PyTree  # () when there is no lower bound.
    upper: PyTree  # () when there is no upper bound.


def clamp(
    rule: ThresholdLike, lower: ThresholdLike | None = None, upper: ThresholdLike | None = None
) -> ThresholdRule:
    """Keeps a rule's threshold between a lower and an upper bound.

    $$c_t = \\min\\left(\\max\\left(r_t,\\ l_t\\right),\\ u_t\\right)$$

    where $r_t$, $l_t$ and $u_t$ are the thresholds of ``rule``, ``lower``
    and ``upper`` at step $t$. Each of the three is a float, an optax
    schedule or a rule, so a bound may itself adapt or decay. If at some step
    the lower bound exceeds the upper one, the upper bound wins. All three
    rules see every (finite) statistic; an inner rule that feeds itself the
    clipped statistic (``ema(feed="clipped")``) uses its own threshold, not
    the clamped one.

    A lower bound keeps an adaptive rule from collapsing to zero (e.g. after
    a run of zero gradients); an upper bound is a safety cap, as ZClip's
    ``max_grad_norm`` is.

    Args:
        rule: the rule to bound (a float, schedule or rule).
        lower: a float >= 0, a schedule, a rule, or None for no lower bound.
        upper: a float >= 0, a schedule, a rule, or None for no upper bound.

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule].

    Raises:
        TypeError: an argument is not a number, schedule or rule.
        ValueError: a bound is negative, or ``lower > upper`` (both numbers).

    Examples:
        >>> import adaclip
        >>> rule = adaclip.clamp(adaclip.ema(2.0, 0.99), lower=0.1, upper=10.0)
        >>> tx = adaclip.clip_by_global_norm(rule)
    """
    inner = as_rule(rule, "rule")
    low = _bound_rule("lower", lower)
    high = _bound_rule("upper", upper)
    numbers = [b for b in (lower, upper) if _is_number(b)]
    if len(numbers) == 2 and not any(_validation.is_traced(b) for b in numbers):
        if float(jnp.asarray(lower)) > float(jnp.asarray(upper)):
            raise ValueError(f"lower must be <= upper, got lower={lower!r} and upper={upper!r}.")

    def init_fn(statistic):
        return ClampState(
            rule=inner.init(statistic),
            lower=() if low is None else low.init(statistic),
            upper=() if high is None else high.init(statistic),
        )

    def update_fn(statistic, state):
        threshold, rule_state = inner.update(statistic, state.rule)
        threshold = as_f32(threshold)
        lower_state, upper_state = state.lower, state.upper
        if low is not None:
            bound, lower_state = low.update(statistic, state.lower)
            threshold = jnp.maximum(threshold, as_f32(bound))
        if high is not None:
            bound, upper_state = high.update(statistic, state.upper)
            threshold = jnp.minimum(threshold, as_f32(bound))
        return threshold, ClampState(rule_state, lower_state, upper_state)

    return ThresholdRule(init_fn, update_fn)


def _reduce(name: str, op, rules: tuple[ThresholdLike, ...]) -> ThresholdRule:
    if not rules:
        raise TypeError(f"{name} needs at least one rule, got none.")
    for i, r in enumerate(rules):
        if _is_number(r):
            _validation.check_nonnegative(f"{name}'s argument {i}", r)
    members = tuple(as_rule(r, f"{name}'s argument {i}") for i, r in enumerate(rules))

    def init_fn(statistic):
        return tuple(r.init(statistic) for r in members)

    def update_fn(statistic, state):
        thresholds, new_state = [], []
        for r, s in zip(members, state, strict=True):
            c, s = r.update(statistic, s)
            thresholds.append(as_f32(c))
            new_state.append(s)
        return functools.reduce(op, thresholds), tuple(new_state)

    return ThresholdRule(init_fn, update_fn)


def minimum(*rules: ThresholdLike) -> ThresholdRule:
    """The smallest of several rules' thresholds: clip if any rule would.

    $$c_t = \\min_j\\, c^{(j)}_t$$

    Every rule sees every (finite) statistic and keeps its own state (a
    tuple, in argument order). Floats and schedules are accepted as rules.
    ``minimum(adaclip.zscore(), 1.0)`` is ZClip with its cap
    ``max_grad_norm=1.0``.

    Args:
        *rules: one or more floats, schedules or rules.

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule].

    Raises:
        TypeError: no rule given, or an argument is not a number, schedule or rule.
        ValueError: a number is negative.

    Examples:
        >>> import adaclip
        >>> rule = adaclip.minimum(adaclip.percentile(90.0, 1000), 5.0)
        >>> tx = adaclip.clip_by_global_norm(rule)
    """
    return _reduce("minimum", jnp.minimum, rules)


def maximum(*rules: ThresholdLike) -> ThresholdRule:
    """The largest of several rules' thresholds: clip only if every rule would.

    $$c_t = \\max_j\\, c^{(j)}_t$$

    Every rule sees every (finite) statistic and keeps its own state (a
    tuple, in argument order). Floats and schedules are accepted as rules,
    so ``maximum(rule, 0.1)`` is a floor.

    Args:
        *rules: one or more floats, schedules or rules.

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule].

    Raises:
        TypeError: no rule given, or an argument is not a number, schedule or rule.
        ValueError: a number is negative.

    Examples:
        >>> import adaclip
        >>> rule = adaclip.maximum(adaclip.ema(1.5, 0.9), 0.1)
        >>> tx = adaclip.clip_by_leaf_norm(rule)
    """
    return _reduce("maximum", jnp.maximum, rules)


class WarmupState(NamedTuple):
    """State of [`adaclip.warmup`][adaclip.warmup].

    ``rule`` is the main rule's state and ``during`` the warm-up rule's (a
    number is a [`adaclip.fixed`][adaclip.fixed] rule): both are fed every
    finite statistic from step 0. ``count`` is the number of finite steps
    taken; the threshold is ``during``'s while it is below ``steps``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.warmup(adaclip.moving_average(2.0, 4), 2, during=1.0)
        >>> state = rule.init(jnp.zeros(()))
        >>> for s in [3.0, 3.0, 3.0]:
        ...     threshold, state = rule.update(jnp.float32(s), state)
        ...     print(float(threshold), int(state.count))
        1.0 1
        1.0 2
        6.0 3
        >>> state.during
        FixedState()
    """

    rule: PyTree  # the main rule's state (fed from step 0).
    during: PyTree  # the warm-up rule's state.
    count: jax.Array  # int32, (): finite steps taken so far.


def warmup(rule: ThresholdLike, steps: Any, during: ThresholdLike) -> ThresholdRule:
    """Uses ``during`` for the first ``steps`` steps, then ``rule``.

    $$c_t = \\begin{cases} d_t & t < T \\\\ r_t & t \\ge T \\end{cases}$$

    with $t$ the number of finite steps taken before this one. This is a
    fallback bound, not a rule with no bound yet (``docs/concepts.md``,
    "Before a rule has a bound"): ``during`` bounds the first $T$ finite
    steps, typically while ``rule`` has none. Both rules see every finite
    statistic from step 0, so an adaptive ``rule`` has already learnt the
    statistic's level when it takes over. ``during`` is typically a fixed
    threshold, e.g. ``warmup(adaclip.ema(2.0, 0.99), 100, during=1.0)``.

    Args:
        rule: the rule used from step ``steps`` on (a float, schedule or rule).
        steps: $T$, an int >= 0 (may be traced): ``during`` bounds the first
            $T$ finite steps.
        during: the fallback bound used before (a float, schedule or rule).

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule].

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``steps`` is negative or a number is negative.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.warmup(adaclip.percentile(50.0, 100), 2, during=1.0)
        >>> state = rule.init(jnp.zeros(()))
        >>> for s in [4.0, 6.0, 8.0]:
        ...     threshold, state = rule.update(jnp.float32(s), state)
        ...     print(float(threshold))
        1.0
        1.0
        6.0
    """
    main = as_rule(rule, "rule")
    _validation.check_int("steps", steps, low=0)
    if _is_number(during):
        _validation.check_nonnegative("during", during)
    early = as_rule(during, "during")

    def init_fn(statistic):
        return WarmupState(
            rule=main.init(statistic),
            during=early.init(statistic),
            count=jnp.zeros([], jnp.int32),
        )

    def update_fn(statistic, state):
        c_main, s_main = main.update(statistic, state.rule)
        c_early, s_early = early.update(statistic, state.during)
        threshold = jnp.where(state.count < steps, as_f32(c_early), as_f32(c_main))
        return threshold, WarmupState(s_main, s_early, increment(state.count))

    return ThresholdRule(init_fn, update_fn)
