"""Rules over a window of past statistics, kept in a static ring buffer."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from adaclip import _validation
from adaclip._base import ThresholdRule, as_f32
from adaclip._ema_rules import FEEDS


class WindowState(NamedTuple):
    """A ring buffer of the last ``window`` statistics.

    Slots not yet written hold zeros; ``count`` tells how many are valid.
    """

    buffer: jax.Array  # float32, (window, *statistic.shape)
    count: jax.Array  # int32, (): statistics pushed so far (finite steps).


def window_init(statistic: jax.Array, window: int) -> WindowState:
    """An empty ring buffer for statistics shaped like ``statistic``."""
    return WindowState(
        buffer=jnp.zeros((window, *jnp.shape(statistic)), jnp.float32),
        count=jnp.zeros([], jnp.int32),
    )


def window_push(state: WindowState, value: jax.Array, window: int) -> WindowState:
    """Writes ``value`` over the oldest slot. O(size of one statistic)."""
    slot = lax.rem(state.count, jnp.int32(window))
    buffer = lax.dynamic_update_index_in_dim(state.buffer, as_f32(value), slot, axis=0)
    return WindowState(buffer=buffer, count=optax.safe_increment(state.count))


def window_filled(state: WindowState, window: int) -> jax.Array:
    """How many slots hold data: ``min(count, window)``, int32."""
    return jnp.minimum(state.count, jnp.int32(window))


def moving_average(multiplier: Any, window: int, *, feed: str = "raw") -> ThresholdRule:
    """A multiple of the mean of the last ``window`` statistics.

    $$c_t = m \\cdot \\frac{1}{n_t} \\sum_{k=t-n_t}^{t-1} x_k,\\qquad
      n_t = \\min(t, w)$$

    the seed formula ``threshold = clip_multiplier * moving_average(grad_norms,
    window)``. The current statistic is **not** included: the threshold that
    applies at step $t$ is the average of the $w$ steps before it, so a spike
    is judged against the past. At step 0 there is no data and nothing is
    clipped (the threshold reported is the statistic itself); before the
    window is full the mean is over the steps seen so far. $x_k$ is the raw
    statistic (``feed="raw"``, the default, as in the seed formula) or the
    clipped one $\\min(s_k, c_k)$ (``feed="clipped"``, which keeps spikes out
    of the average). Non-finite steps never enter the window.

    The state is a ring buffer of ``window`` float32 statistics; each step
    costs O(``window``) per entry of the statistic, independent of the step
    count.

    Args:
        multiplier: $m > 0$.
        window: $w$, a Python int >= 1 (static: it sets the buffer's size).
        feed: ``"raw"`` or ``"clipped"``, what enters the window.

    Returns:
        An :class:`adaclip.ThresholdRule`.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of its range or ``feed`` is unknown.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.moving_average(2.0, window=3)
        >>> state = rule.init(jnp.zeros(()))
        >>> for s in [1.0, 2.0, 3.0, 10.0]:
        ...     threshold, state = rule.update(jnp.float32(s), state)
        ...     print(float(threshold))
        1.0
        2.0
        3.0
        4.0
    """
    _validation.check_positive("multiplier", multiplier)
    _validation.check_int("window", window, low=1, static=True)
    _validation.check_choice("feed", feed, FEEDS)
    window = int(window)

    def init_fn(statistic):
        return window_init(statistic, window)

    def update_fn(statistic, state):
        n = window_filled(state, window)
        mean = jnp.sum(state.buffer, axis=0) / jnp.maximum(n, 1).astype(jnp.float32)
        threshold = jnp.where(n > 0, as_f32(multiplier) * mean, statistic)
        fed = jnp.minimum(statistic, threshold) if feed == "clipped" else statistic
        return threshold, window_push(state, fed, window)

    return ThresholdRule(init_fn, update_fn)
