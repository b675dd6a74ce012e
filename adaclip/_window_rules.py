"""Rules over a window of past statistics, kept in a static ring buffer."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from adaclip import _validation
from adaclip._base import (
    F32_MAX,
    FEEDS,
    ThresholdRule,
    as_f32,
    feed_patience,
    feed_run_init,
    feed_step,
    increment,
    no_scale,
)


class WindowState(NamedTuple):
    """A ring buffer of the last ``window`` statistics: the state of
    [`adaclip.moving_average`][adaclip.moving_average] and
    [`adaclip.rolling_zscore`][adaclip.rolling_zscore].

    Slots not yet written hold zeros; ``count`` tells how many are valid. The
    statistic of step ``count`` (counting from 0) goes to slot
    ``count % window``, overwriting the oldest. ``run`` counts, per entry,
    the consecutive steps the statistic was cut (the patience of the clipped
    feed, see ``docs/robustness.md``; always 0 with ``feed="raw"``).

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_global_norm(adaclip.moving_average(2.0, window=3))
        >>> state = tx.init({"w": jnp.zeros(1)})
        >>> state.rule_state
        WindowState(buffer=Array([0., 0., 0.], dtype=float32), count=Array(0, dtype=int32), run=Array(0, dtype=int32))
        >>> for g in [1.0, 2.0, 3.0, 4.0]:
        ...     _, state = tx.update({"w": jnp.array([g])}, state)
        >>> state.rule_state.buffer, int(state.rule_state.count)
        (Array([4., 2., 3.], dtype=float32), 4)
    """  # noqa: E501

    buffer: jax.Array  # float32, (window, *statistic.shape)
    count: jax.Array  # int32, (): statistics pushed so far (finite steps).
    run: jax.Array  # int32, statistic's shape: consecutive steps each entry was cut.


def window_init(statistic: jax.Array, window: int) -> WindowState:
    """An empty ring buffer for statistics shaped like ``statistic``."""
    return WindowState(
        buffer=jnp.zeros((window, *jnp.shape(statistic)), jnp.float32),
        count=jnp.zeros([], jnp.int32),
        run=feed_run_init(statistic),
    )


def window_push(
    buffer: jax.Array, count: jax.Array, value: jax.Array, window: int
) -> tuple[jax.Array, jax.Array]:
    """Writes ``value`` over the oldest slot: ``(buffer, count)``. O(size of one statistic)."""
    slot = lax.rem(count, jnp.int32(window))
    buffer = lax.dynamic_update_index_in_dim(buffer, as_f32(value), slot, axis=0)
    return buffer, increment(count)


def window_filled(count: jax.Array, window: int) -> jax.Array:
    """How many slots hold data: ``min(count, window)``, int32."""
    return jnp.minimum(count, jnp.int32(window))


def window_empty(feed: str, buffer: jax.Array) -> jax.Array:
    """The entries whose window holds only zeros, with a clipped feed (see
    `adaclip._base.no_scale`), bool, statistic's shape."""
    return no_scale(feed, ~jnp.any(buffer != 0, axis=0))


def window_feed(
    feed: str, state: WindowState, statistic: jax.Array, level: jax.Array, window: int
) -> WindowState:
    """Feeds one statistic into a window rule's state (the shared feed of
    `adaclip._base.feed_step`, patience 8 windows).

    An entry whose window holds only zeros (no scale yet, or a dormant leaf
    whose zeros filled it) takes its first nonzero statistic as its whole
    window: the held slots are overwritten with the fed value, so the zeros
    do not dilute the next thresholds. Unwritten slots stay 0.
    """
    fed, run = feed_step(feed, statistic, level, state.run, feed_patience(window))
    n = window_filled(state.count, window)
    idx = lax.broadcasted_iota(jnp.int32, state.buffer.shape, 0)
    empty = window_empty(feed, state.buffer)
    buffer = jnp.where(empty[None] & (idx < n), as_f32(fed)[None], state.buffer)
    buffer, count = window_push(buffer, state.count, fed, window)
    return WindowState(buffer=buffer, count=count, run=run)


def moving_average(multiplier: Any, window: int, *, feed: str = "raw") -> ThresholdRule:
    """A multiple of the mean of the last ``window`` statistics.

    $$c_t = m \\cdot \\frac{1}{n_t} \\sum_{k=t-n_t}^{t-1} x_k,\\qquad
      n_t = \\min(t, w)$$

    the seed formula ``threshold = clip_multiplier * moving_average(grad_norms,
    window)``. The current statistic is **not** included: the threshold that
    applies at step $t$ is the average of the $w$ steps before it, so a spike
    is judged against the past. No bound yet for the first finite step
    (there is no data): the threshold reported is the statistic itself and
    nothing is cut, while the window is fed (``docs/concepts.md``, "Before a rule has a bound").
    Before the window is full the mean is over the steps seen so far. $x_k$ is the raw
    statistic (``feed="raw"``, the default, as in the seed formula) or the
    clipped one $\\min(s_k, c_k)$ (``feed="clipped"``, which keeps spikes out
    of the average). Non-finite steps never enter the window.

    The state is a ring buffer of ``window`` float32 statistics; each step
    costs O(``window``) per entry of the statistic, independent of the step
    count.

    Args:
        multiplier: $m > 0$.
        window: $w$, a Python int in [1, 2**24] (static: it sets the buffer's
            size; the mean divides by the count of statistics held in
            float32, which holds every count up to 2**24 exactly).
        feed: ``"raw"`` or ``"clipped"``, what enters the window.

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule].

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
    _validation.check_window("window", window)
    _validation.check_choice("feed", feed, FEEDS)
    window = int(window)

    def init_fn(statistic):
        return window_init(statistic, window)

    def update_fn(statistic, state):
        n = window_filled(state.count, window)
        mean = jnp.sum(state.buffer, axis=0) / jnp.maximum(n, 1).astype(jnp.float32)
        active = (n > 0) & ~window_empty(feed, state.buffer)
        threshold = jnp.where(active, as_f32(multiplier) * mean, statistic)
        return threshold, window_feed(feed, state, statistic, threshold, window)

    return ThresholdRule(init_fn, update_fn)


# Fills the unused tail of the sorted copy: larger than any finite statistic
# can be (ties with a statistic equal to it are harmless), and finite, so the
# state stays finite.
_EMPTY = F32_MAX  # the filler of unwritten slots sorts last


class PercentileState(NamedTuple):
    """State of [`adaclip.percentile`][adaclip.percentile]: a ring buffer and a sorted
    copy of it.

    ``buffer`` is a ring buffer as in [`adaclip.WindowState`][adaclip.WindowState];
    ``sorted`` holds the same values in ascending order (slots not yet written
    sort last, as the float32 maximum), so a percentile is read without sorting.
    Both are ``window`` long: [`adaclip.autoclip`][adaclip.autoclip]'s default
    window of 10 000 makes two float32 arrays of that length.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_global_norm(adaclip.percentile(50.0, window=4))
        >>> state = tx.init({"w": jnp.zeros(1)})
        >>> for g in [3.0, 1.0, 4.0, 1.5, 5.0]:
        ...     _, state = tx.update({"w": jnp.array([g])}, state)
        >>> state.rule_state.buffer
        Array([5. , 1. , 4. , 1.5], dtype=float32)
        >>> state.rule_state.sorted
        Array([1. , 1.5, 4. , 5. ], dtype=float32)
        >>> adaclip.autoclip().init({"w": jnp.zeros(1)}).rule_state.sorted.shape
        (10000,)
    """

    buffer: jax.Array  # float32, (window, *statistic.shape): statistics in arrival order.
    sorted: jax.Array  # float32, (window, *statistic.shape): the same, ascending; tail = max.
    count: jax.Array  # int32, (): statistics pushed so far (finite steps).


def _sorted_replace(sorted_: jax.Array, old: jax.Array, new: jax.Array) -> jax.Array:
    """Removes one copy of ``old`` from the sorted array and inserts ``new``.

    Exact and O(window) per entry of the statistic: two counts find the
    positions, two shifted selects move the elements (no sort, no gather).
    ``old`` must be present in ``sorted_`` (the evicted value, or the
    ``_EMPTY`` filler while the window is not full).
    """
    idx = lax.broadcasted_iota(jnp.int32, sorted_.shape, 0)
    old, new = old[None], new[None]  # broadcast over the window axis
    filler = jnp.full_like(sorted_[:1], _EMPTY)
    # Remove: every element from the first copy of `old` on moves one left.
    at_old = jnp.sum(sorted_ < old, axis=0, dtype=jnp.int32)[None]
    shifted_left = jnp.concatenate([sorted_[1:], filler], axis=0)
    removed = jnp.where(idx < at_old, sorted_, shifted_left)
    # Insert: the elements after `new`'s place move one right.
    at_new = jnp.sum(removed[:-1] < new, axis=0, dtype=jnp.int32)[None]
    shifted_right = jnp.concatenate([filler, removed[:-1]], axis=0)
    return jnp.where(idx < at_new, removed, jnp.where(idx == at_new, new, shifted_right))


def _float32_rank(n: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The position ``p / 100 * (n - 1)`` for a float32 ``p`` in [0, 100],
    split into its integer part (int32) and its fraction (float32, in [0, 1]);
    ``1 <= n <= 2**24``.

    The product is formed exactly, in integers: float32 cannot hold it (near
    ``n = 2**24``, ``p * (n - 1)`` is spaced 64 apart, so a fraction computed
    from it is off by up to 0.64). Write ``p`` as $M \\cdot 2^{-k}$ with an
    integer mantissa $M < 2^{24}$ ($k \\ge 17$, as $p \\le 100$). Then
    $(n - 1) M < 2^{48}$ is assembled in two 24-bit limbs from four products
    of 12-bit halves, each of which int32 holds exactly; its bits above $2^k$
    are $\\lfloor p (n - 1) \\rfloor < 100 \\cdot 2^{24} < 2^{31}$, whose
    quotient and remainder by 100 give the position's integer part and, with
    the bits below $2^k$, its fraction. Only the fraction is rounded, to
    float32 (for $p < 1$ the bits below $2^k$ are also summed in float32).
    A NaN ``p`` gives a NaN fraction.
    """
    m, e = jnp.frexp(p)  # p = m * 2**e, m in [0.5, 1) (or 0)
    mant = (m * 2.0**24).astype(jnp.int32)  # exact: an integer below 2**24
    k = 24 - e  # p = mant * 2**-k
    a = n - 1
    a_hi, a_lo = a >> 12, a & 0xFFF
    m_hi, m_lo = mant >> 12, mant & 0xFFF
    # (n - 1) * mant = s1 * 2**24 + s0, s0 < 2**24; every partial sum < 2**26.
    mid = a_hi * m_lo + a_lo * m_hi  # weight 2**12
    low = a_lo * m_lo + ((mid & 0xFFF) << 12)  # weight 1
    s0 = low & 0xFFFFFF
    s1 = a_hi * m_hi + (mid >> 12) + (low >> 24)  # weight 2**24
    # Shift right by k: floor(p * (n - 1)), and the bits shifted out.
    up = jnp.clip(24 - k, 0, 31)
    down = jnp.clip(k - 24, 0, 31)
    whole = ((s1 << up) >> down) + (s0 >> jnp.minimum(k, 31))
    below0 = s0 & ((1 << jnp.clip(k, 0, 24)) - 1)
    below1 = s1 & ((1 << jnp.clip(k - 24, 0, 30)) - 1)
    shifted_out = jnp.ldexp(below0.astype(jnp.float32), -k) + jnp.ldexp(
        below1.astype(jnp.float32), 24 - k
    )
    lo = whole // 100
    frac = ((whole - 100 * lo).astype(jnp.float32) + shifted_out) / 100.0
    return lo, jnp.where(jnp.isnan(p), jnp.nan, jnp.clip(frac, 0.0, 1.0))


def _float32_residual(p: Any) -> Any:
    """``p - float32(p)`` as a float32: what ``p`` loses when rounded to float32.

    Computed in float64: on the host for a Python or NumPy number, in the
    graph for a float64 array (``jax_enable_x64``); 0 for a float32 one.
    """
    if isinstance(p, jax.Array):  # traced or not
        wide = jnp.asarray(p)
        return (wide - wide.astype(jnp.float32).astype(wide.dtype)).astype(jnp.float32)
    return np.float32(float(p) - float(np.float32(p)))


def _rank(n: jax.Array, p: Any) -> tuple[jax.Array, jax.Array]:
    """``np.percentile``'s interpolation position ``p / 100 * (n - 1)``, split
    into its integer part (int32, in [0, n - 1]) and its fraction (float32,
    in [0, 1]); ``1 <= n <= 2**24``, ``0 <= p <= 100``.

    The position for the float32 ``p`` is exact up to the rounding of the
    fraction (`_float32_rank`). A ``p`` given wider (a Python float such as
    99.9) moves it by $(n - 1) \\cdot (p - \\mathrm{fl}_{32}(p)) / 100$, up to
    0.64 at ``n = 2**24``: that correction is added to the fraction in float32
    and carried into the integer part, so the position is that of
    ``np.percentile`` with the ``p`` given, to about ``1e-7``.
    """
    low = _float32_residual(p)
    lo, frac = _float32_rank(n, jnp.clip(as_f32(p), 0.0, 100.0))
    moved = frac + as_f32(low) * (n - 1).astype(jnp.float32) / 100.0
    carry = jnp.where(jnp.isnan(moved), 0.0, jnp.floor(moved))  # a NaN p stays NaN
    lo = lo + carry.astype(jnp.int32)
    frac = jnp.where(lo < 0, 0.0, jnp.clip(moved - carry, 0.0, 1.0))
    return jnp.clip(lo, 0, n - 1), frac


def _interpolated_percentile(sorted_: jax.Array, n: jax.Array, p: Any) -> jax.Array:
    """``np.percentile(sorted_[:n], p)`` (linear interpolation) along axis 0, n >= 1."""
    lo, frac = _rank(n, p)
    hi = jnp.minimum(lo + 1, n - 1)
    a = lax.dynamic_index_in_dim(sorted_, lo, axis=0, keepdims=False)
    b = lax.dynamic_index_in_dim(sorted_, hi, axis=0, keepdims=False)
    return a + (b - a) * frac


def percentile(p: Any, window: int) -> ThresholdRule:
    """The p-th percentile of the last ``window`` statistics, the current one included.

    With $n_t = \\min(t + 1, w)$ and $s_{(1)} \\le \\dots \\le s_{(n_t)}$ the
    statistics $s_{t-n_t+1}, \\dots, s_t$ in ascending order:

    $$c_t = s_{(k)} + f \\left(s_{(k+1)} - s_{(k)}\\right),\\qquad
      k + f = 1 + \\frac{p}{100}(n_t - 1)$$

    the linear interpolation of ``np.percentile``. This is AutoClip's rule
    (Seetharaman et al. 2020): since the current statistic is included, at
    step 0 the threshold is the statistic itself, and a spike can raise the
    threshold it is clipped to only by one rank.

    **Differences from AutoClip.** The original keeps the whole history, so
    its memory and per-step cost grow with the step count; here the history
    is the last ``window`` statistics (before the window is full, all steps
    so far, so with ``window`` at least the number of steps taken this is the
    original rule). A NaN or infinite statistic never enters the window (in
    the original one NaN makes every later threshold NaN), so a later spike
    is still clipped and the threshold stays finite. Zero statistics do
    enter the window, as in the original.

    **Cost.** The state keeps the window twice: in arrival order (a ring
    buffer, to know which value leaves) and sorted. Each step removes the
    leaving value from the sorted copy and inserts the new one with two
    counts and two shifted selects: O(``window``) per entry of the statistic,
    exact, no sort, independent of the step count.

    Args:
        p: the percentile, in [0, 100] (may be traced). AutoClip recommends 10.
        window: $w$, a Python int in [1, 2**24] (static: it sets the buffer's
            size). The interpolation position $p (n_t - 1) / 100$ is
            computed in integer arithmetic, so that its fraction is that of
            ``np.percentile`` to about 1e-7 at every window size (in float32
            it would be off by up to 0.64 near 2**24).

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule] whose state is a
        [`adaclip.PercentileState`][adaclip.PercentileState].

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of its range.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.percentile(50.0, window=3)
        >>> state = rule.init(jnp.zeros(()))
        >>> for s in [4.0, 2.0, 9.0, 1.0, 3.0]:
        ...     threshold, state = rule.update(jnp.float32(s), state)
        ...     print(float(threshold))
        4.0
        3.0
        4.0
        2.0
        3.0

    References:
        Seetharaman, Wichern, Pardo, Le Roux. *AutoClip: Adaptive gradient
        clipping for source separation networks*, MLSP 2020.
        [arXiv:2007.14469](https://arxiv.org/abs/2007.14469)
    """
    _validation.check_real("p", p, low=0.0, high=100.0)
    _validation.check_window("window", window)
    window = int(window)

    def init_fn(statistic):
        ring = window_init(statistic, window)
        return PercentileState(
            buffer=ring.buffer, sorted=jnp.full_like(ring.buffer, _EMPTY), count=ring.count
        )

    def update_fn(statistic, state):
        statistic = as_f32(statistic)
        full = state.count >= window
        slot = lax.rem(state.count, jnp.int32(window))
        oldest = lax.dynamic_index_in_dim(state.buffer, slot, axis=0, keepdims=False)
        leaving = jnp.where(full, oldest, _EMPTY)
        sorted_ = _sorted_replace(state.sorted, leaving, statistic)
        buffer, count = window_push(state.buffer, state.count, statistic, window)
        threshold = _interpolated_percentile(sorted_, window_filled(count, window), p)
        return threshold, PercentileState(buffer=buffer, sorted=sorted_, count=count)

    return ThresholdRule(init_fn, update_fn)
