"""Rules built on exponential moving averages of the statistic."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaclip import _validation
from adaclip._base import (
    F32_MAX,
    FEEDS,
    ThresholdRule,
    as_f32,
    ema_span,
    feed_patience,
    feed_run_init,
    feed_step,
    increment,
    no_scale,
    safe_sqrt,
)


class EmaState(NamedTuple):
    """State of [`adaclip.ema`][adaclip.ema]: the biased EMA and how many statistics fed it.

    The threshold is ``multiplier`` times the bias-corrected EMA,
    ``ema / (1 - decay**count)``; with ``feed="clipped"`` the EMA is fed the
    clipped statistic, so a spike moves it no further than the threshold.

    Examples:
        The state is the clipper's ``rule_state``:

        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9))
        >>> state = tx.init({"w": jnp.zeros(1)})
        >>> state.rule_state
        EmaState(ema=Array(0., dtype=float32), count=Array(0, dtype=int32), run=Array(0, dtype=int32))
        >>> for g in [1.0, 2.0, 10.0]:
        ...     _, state = tx.update({"w": jnp.array([g])}, state)
        ...     print(f"{float(state.threshold):.3f} {bool(state.clipped)}")
        1.000 False
        2.000 False
        3.053 True
        >>> ema, count, _ = state.rule_state
        >>> print(f"{float(ema / (1 - 0.9 ** count)):.3f}")  # fed 1, 2, then 3.053
        2.090
    """  # noqa: E501

    ema: jax.Array  # float32, statistic's shape: biased EMA of the fed statistics.
    count: jax.Array  # int32, (): statistics fed so far (finite steps taken).
    # int32, statistic's shape: consecutive steps each entry was cut (the
    # clipped feed's patience, see adaclip._base.feed_step); 0 with feed="raw".
    run: jax.Array


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
    against the past. No bound yet for the first ``max(warmup_steps, 1)``
    finite steps (at step 0 there is no data): the threshold reported is the
    statistic itself and nothing is cut, while the EMA is fed
    (``docs/concepts.md``, "Before a rule has a bound"). Non-finite steps
    are not counted and never enter the EMA.

    **No absorbing state.** A zero statistic carries no scale: an entry
    whose EMA is exactly 0 (every statistic it was fed so far was 0, or a
    long dormant run underflowed it) sets no bound (the threshold is the
    statistic) and takes its next nonzero statistic as its whole history
    (its EMA becomes the value that statistic fed at every past step would
    give), so a zero first gradient (a LoRA ``B`` or an adaLN-Zero gate at
    initialisation, a fully masked batch) costs nothing. With
    ``feed="clipped"``, an entry cut on $K = \\lceil 8/(1-\\beta)\\rceil$
    consecutive steps is fed the raw statistic until a step is not cut (the
    statistic has left the remembered level for good; see
    ``docs/robustness.md``). Hence, after any prefix, a run of statistics at
    a steady level brings the threshold back to the one it would have
    without the prefix within about $K + \\log(\\epsilon)/\\log\\beta$ steps
    ($\\epsilon$ the relative tolerance; with ``feed="raw"``,
    $\\log(\\epsilon)/\\log\\beta$). On sequences that start with a nonzero
    statistic and cut no entry $K$ steps in a row, the rule is exactly the
    formula above.

    Args:
        multiplier: $m > 0$, how far above the average a statistic may go.
        decay: $\\beta \\in [0, 1)$, also after rounding to float32 (so
            ``0.99999999``, which rounds to 1, is rejected); the average spans
            about $1/(1-\\beta)$ steps.
        warmup_steps: an int >= 0: no bound yet for the first
            ``max(warmup_steps, 1)`` finite steps.
        feed: ``"clipped"`` or ``"raw"``, what enters the EMA.

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule].

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
            run=feed_run_init(statistic),
        )

    def update_fn(statistic, state):
        mean = debiased(state.ema, decay, state.count)
        # With a clipped feed, an entry whose EMA is 0 holds no scale: no
        # bound from it (a raw feed is not trapped by a zero memory, and
        # keeps the formula's zero threshold for that step).
        empty = no_scale(feed, state.ema == 0)
        active = (state.count >= warmup_steps) & (state.count > 0) & ~empty
        threshold = jnp.where(active, as_f32(multiplier) * mean, statistic)
        fed, run = feed_step(feed, statistic, threshold, state.run, feed_patience(ema_span(decay)))
        beta = as_f32(decay)
        count = increment(state.count)
        new_ema = beta * state.ema + (1.0 - beta) * fed
        # ... and takes its first nonzero statistic as its whole history, so
        # that the bias correction does not count the empty steps.
        refill = fed * -jnp.expm1(count.astype(jnp.float32) * jnp.log1p(beta - 1.0))
        new_ema = jnp.where(empty & (state.count > 0), refill, new_ema)
        return threshold, EmaState(ema=new_ema, count=count, run=run)

    return ThresholdRule(init_fn, update_fn)


ZSCORE_MODES = ("zscore", "percentile")
ZSCORE_CLIP_OPTIONS = ("adaptive_scaling", "mean")
_ZSCORE_EPS = 1e-6  # ZClip's eps in z = (s - mean) / (std + eps).


class ZScoreState(NamedTuple):
    """State of [`adaclip.zscore`][adaclip.zscore]: the running mean and variance of the norm.

    During the warm-up ``mean`` is the plain running mean and ``var`` the sum of
    squared deviations from it (Welford's update); at the end of the warm-up
    ``var`` becomes the population variance, and from then on both are
    exponential moving averages with weight ``alpha``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_global_norm(adaclip.zscore(warmup_steps=3))
        >>> state = tx.init({"w": jnp.zeros(1)})
        >>> for g in [1.0, 2.0, 3.0]:
        ...     _, state = tx.update({"w": jnp.array([g])}, state)
        >>> mean, var, count = state.rule_state
        >>> print(f"{float(mean):.4f} {float(var):.4f} {int(count)}")
        2.0000 0.6667 3
        >>> _, state = tx.update({"w": jnp.array([20.0])}, state)  # a spike
        >>> print(bool(state.clipped), f"{float(state.threshold):.3f}")
        True 2.231
    """

    mean: jax.Array  # float32, statistic's shape: running mean (warm-up), then EMA.
    # float32, statistic's shape: during warm-up the sum of squared deviations
    # from the running mean, then the EMA variance.
    var: jax.Array
    count: jax.Array  # int32, (): finite steps taken so far.


def zscore(
    alpha: Any = 0.97,
    z_thresh: Any = 2.5,
    warmup_steps: Any = 25,
    *,
    mode: str = "zscore",
    clip_option: str = "adaptive_scaling",
    clip_factor: Any = 1.0,
    skip_update_on_spike: bool = False,
) -> ThresholdRule:
    """ZClip's rule: clip statistics that are outliers against an EMA mean and variance.

    **Warm-up.** No bound yet for the first $W$ = ``warmup_steps`` finite
    steps: the threshold reported is the statistic itself and nothing is
    cut, while the statistics are summarised into their mean $\\mu$ and
    *population* variance $\\sigma^2$ (running sums, so $W$ may be traced)
    (``docs/concepts.md``, "Before a rule has a bound").

    **After warm-up**, with $\\sigma = \\sqrt{v}$, $z_t = (s_t - \\mu) /
    (\\sigma + 10^{-6})$ and $z^\\ast$ = ``z_thresh``:

    - ``mode="zscore"``: a spike is $z_t > z^\\ast$; its threshold is
      $c_t = k\\,(\\mu + z^{\\ast 2}\\sigma / z_t)$ with $k$ = ``clip_factor``
      (``clip_option="adaptive_scaling"``: the larger the outlier, the lower
      its bound) or $c_t = \\mu$ (``clip_option="mean"``, which ignores $k$);
    - ``mode="percentile"``: a spike is $s_t > \\mu + z^\\ast\\sigma$ and
      $c_t = \\mu + z^\\ast \\sigma$ (``clip_option`` and $k$ are ignored).

    Without a spike $c_t = s_t$ (nothing is cut). Then, in ZClip's order,
    with $x_t = c_t$ on a spike and $s_t$ otherwise:

    $$\\mu \\leftarrow \\alpha\\mu + (1-\\alpha)x_t,\\qquad
      v \\leftarrow \\alpha v + (1-\\alpha)(x_t - \\mu)^2$$

    (the variance uses the already-updated mean; no bias correction). With
    ``skip_update_on_spike=True`` a spike leaves $\\mu$ and $v$ unchanged.
    Statistics with several entries (per-leaf norms) get one $\\mu$, $v$ and
    spike test per entry.

    This is the rule of ZClip (Kumar et al. 2025); [`adaclip.zclip`][adaclip.zclip] adds
    ZClip's cap ``max_grad_norm`` and clips the global norm. On finite
    statistics it is the original rule, quirks included: ``clip_factor``
    scales the whole bound, and under a sustained upward shift of the
    statistic the EMA is fed about its own mean, so the variance collapses
    and later steps keep being clipped to the old level.

    **Differences from ZClip.** A NaN or infinite statistic never enters the
    mean or variance (in the original one NaN makes both NaN forever, after
    which no spike is ever detected again), so a later spike is still
    clipped; the variance is kept finite (capped at the float32 maximum) and
    the threshold is always finite.

    Args:
        alpha: EMA factor $\\alpha \\in (0, 1)$.
        z_thresh: $z^\\ast > 0$.
        warmup_steps: $W$, an int >= 1 (may be traced): no bound yet for the
            first $W$ finite steps.
        mode: ``"zscore"`` or ``"percentile"``.
        clip_option: ``"adaptive_scaling"`` or ``"mean"`` (``mode="zscore"`` only).
        clip_factor: $k > 0$, scales the adaptive bound.
        skip_update_on_spike: keep spikes out of the EMA (a Python bool).

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule] whose state is a
        [`adaclip.ZScoreState`][adaclip.ZScoreState].

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of its range or a string is unknown.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.zscore(alpha=0.9, z_thresh=2.0, warmup_steps=4)
        >>> state = rule.init(jnp.zeros(()))
        >>> for s in [1.0, 1.2, 0.8, 1.0, 1.1, 9.0]:
        ...     threshold, state = rule.update(jnp.float32(s), state)
        ...     print(round(float(threshold), 3))
        1.0
        1.2
        0.8
        1.0
        1.1
        1.019

    References:
        Kumar, Owen, Ashraf, Sarkar. *ZClip: Adaptive Spike Mitigation for LLM
        Pre-Training*, 2025. [arXiv:2504.02507](https://arxiv.org/abs/2504.02507)
    """
    _validation.check_real("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    _validation.check_positive("z_thresh", z_thresh)
    _validation.check_int("warmup_steps", warmup_steps, low=1)
    _validation.check_choice("mode", mode, ZSCORE_MODES)
    _validation.check_choice("clip_option", clip_option, ZSCORE_CLIP_OPTIONS)
    _validation.check_positive("clip_factor", clip_factor)
    _validation.check_bool("skip_update_on_spike", skip_update_on_spike)

    def init_fn(statistic):
        shape = jnp.shape(statistic)
        return ZScoreState(
            mean=jnp.zeros(shape, jnp.float32),
            var=jnp.zeros(shape, jnp.float32),
            count=jnp.zeros([], jnp.int32),
        )

    def update_fn(statistic, state):
        s = as_f32(statistic)
        a, zt = as_f32(alpha), as_f32(z_thresh)
        in_warmup = state.count < warmup_steps

        # Warm-up: Welford's running mean and sum of squared deviations; at the
        # last warm-up step the sum becomes the population variance.
        n = increment(state.count)
        delta = s - state.mean
        w_mean = state.mean + delta / n.astype(jnp.float32)
        w_m2 = state.var + delta * (s - w_mean)
        w_var = jnp.where(n >= warmup_steps, w_m2 / n.astype(jnp.float32), w_m2)

        # After warm-up: the spike test and its bound.
        std = safe_sqrt(state.var)
        if mode == "percentile":
            level = state.mean + zt * std
            spike = s > level
            bound = level
        else:
            z = (s - state.mean) / (std + _ZSCORE_EPS)
            spike = z > zt
            if clip_option == "mean":
                bound = state.mean
            else:
                safe_z = jnp.where(spike, z, zt)  # z > zt > 0 where used.
                bound = as_f32(clip_factor) * (state.mean + zt * std / (safe_z / zt))
        bound = jnp.minimum(bound, F32_MAX)  # finite even for extreme statistics
        fed = jnp.where(spike, bound, s)
        e_mean = a * state.mean + (1.0 - a) * fed
        e_var = a * state.var + (1.0 - a) * jnp.square(fed - e_mean)
        if skip_update_on_spike:
            e_mean = jnp.where(spike, state.mean, e_mean)
            e_var = jnp.where(spike, state.var, e_var)

        threshold = jnp.where(in_warmup | ~spike, s, bound)
        new_state = ZScoreState(
            mean=jnp.where(in_warmup, w_mean, e_mean),
            var=jnp.minimum(jnp.where(in_warmup, w_var, e_var), F32_MAX),
            count=n,
        )
        return threshold, new_state

    return ThresholdRule(init_fn, update_fn)
