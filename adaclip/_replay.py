"""Offline replay: run a threshold rule over a recorded sequence of statistics."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from adaclip._base import ThresholdLike, as_f32, as_rule, reported_threshold, step_rule


class Trace(NamedTuple):
    """What a clipper running a rule does, step by step, on a recorded sequence.

    Every field has the shape of the statistics given to [`adaclip.replay`][adaclip.replay]
    (``(steps,)`` for a global statistic, ``(steps, n_leaves)`` per leaf),
    except ``finite``, which has one entry per step.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> trace = adaclip.replay(adaclip.fixed(1.0), jnp.array([0.5, 2.0, jnp.nan, 3.0]))
        >>> trace.clipped
        Array([False,  True, False,  True], dtype=bool)
        >>> trace.clipped_statistic
        Array([0.5, 1. , nan, 1. ], dtype=float32)
        >>> trace.finite
        Array([ True,  True, False,  True], dtype=bool)
        >>> print(f"{float(trace.clipped[trace.finite].mean()):.3f}")  # clip rate
        0.667
    """

    threshold: jax.Array  # float32: the threshold in force at each step.
    clipped_statistic: jax.Array  # float32: min(statistic, threshold) (finite steps).
    clipped: jax.Array  # bool: whether the step (entry) was clipped.
    finite: jax.Array  # bool, (steps,): whether the step's statistic was finite.


def replay(rule: ThresholdLike, statistics: Any) -> Trace:
    """Runs a threshold rule over a recorded sequence of statistics.

    Steps the rule exactly as a clipper does in training (both go through the
    same stepping function), so on the same norms the trace equals the
    clipper's per-step metrics: with $s_t$ the statistic and $c_t$ the
    threshold at step $t$,

    $$\\text{clipped}_t = s_t > c_t,\\qquad
      \\text{clipped\\_statistic}_t = \\min(s_t, c_t).$$

    A step whose statistic is NaN or infinite (any entry of it, per leaf) leaves
    the rule's state untouched, keeps the previous threshold (0 before the
    first finite step), is not clipped, and its ``clipped_statistic`` is the
    statistic itself (the clipper skips or propagates such a step, it does
    not clip it).

    ``replay`` is a pure JAX function: jit it, or ``jax.vmap`` it over
    hyper-parameters by building the rule inside the mapped function (rules
    accept traced hyper-parameters; window sizes must stay Python ints).

    Args:
        rule: an [`adaclip.ThresholdRule`][adaclip.ThresholdRule], a float (a fixed threshold) or
            an optax schedule.
        statistics: the recorded statistics, e.g. the ``norm`` metric of each
            step: shape ``(steps,)`` for a global rule (``clip_by_global_norm``,
            ``clip_by_value``), ``(steps, n_leaves)`` for ``clip_by_leaf_norm``.

    Returns:
        A [`adaclip.Trace`][adaclip.Trace].

    Raises:
        ValueError: ``statistics`` is not 1-D or 2-D.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import adaclip
        >>> norms = jnp.array([1.0, 1.0, 1.0, 9.0, 1.0])
        >>> trace = adaclip.replay(adaclip.moving_average(2.0, window=3), norms)
        >>> trace.threshold
        Array([1.       , 2.       , 2.       , 2.       , 7.3333335], dtype=float32)
        >>> trace.clipped
        Array([False, False, False,  True, False], dtype=bool)

        A grid of multipliers in one call:

        >>> multipliers = jnp.array([1.5, 2.0, 4.0, 10.0])
        >>> run = lambda m: adaclip.replay(adaclip.moving_average(m, window=3), norms)
        >>> jax.vmap(run)(multipliers).clipped.mean(axis=1)
        Array([0.2, 0.2, 0.2, 0. ], dtype=float32)
    """
    statistics = as_f32(statistics)
    if statistics.ndim not in (1, 2):
        raise ValueError(
            "statistics must be 1-D (steps,) or 2-D (steps, n_leaves), "
            f"got shape {statistics.shape}."
        )
    rule = as_rule(rule, "rule", allow_inf=True)
    zeros = jnp.zeros(statistics.shape[1:], jnp.float32)

    def body(carry, stat):
        state, previous = carry
        threshold, state, finite = step_rule(rule, stat, state)
        # +inf (no bound) is reported as the statistic, as clippers do.
        threshold = jnp.where(finite, as_f32(reported_threshold(threshold, stat)), previous)
        clipped = finite & (stat > threshold)
        clipped_stat = jnp.where(finite, jnp.minimum(stat, threshold), stat)
        return (state, threshold), Trace(threshold, clipped_stat, clipped, finite)

    _, trace = lax.scan(body, (rule.init(zeros), zeros), statistics)
    return trace
