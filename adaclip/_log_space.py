"""``log_space``: run any rule on the logarithm of the statistic."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from adaclip import _validation
from adaclip._base import F32_MAX, ThresholdLike, ThresholdRule, as_f32, as_rule

# In NumPy: a jnp computation at import would start JAX's backend (too early
# for jax.distributed.initialize).
_LOG_F32_MAX = float(np.log(np.float32(F32_MAX)))
# log of the smallest normal float32: what a zero statistic becomes with offset 0.
_TINY = float(jnp.finfo(jnp.float32).tiny)


def log_space(rule: ThresholdLike, *, offset: Any = 0.0, floor: Any = 0.0) -> ThresholdRule:
    """Runs ``rule`` on the log of the statistic and maps its threshold back.

    With $u_t = \\log(\\max(s_t, f) + o)$ ($f$ = ``floor``, $o$ =
    ``offset``) and $T_t$ the threshold ``rule`` sets for $u_t$:

    $$c_t = e^{T_t} - o$$

    so "mean + k std" of the log norm becomes a bound on the norm that is
    relative to its typical size (a factor, not a difference), as in RNMT+.
    The statistic is cut exactly when ``rule`` would cut $u_t$: where
    $T_t < u_t$ the reported threshold is below $s_t$, elsewhere it is at
    least $s_t$ (so rounding in $\\log$/$\\exp$ never turns one into the
    other). A statistic below ``floor`` counts as ``floor``, so where
    $e^{T_t} - o < f$ every nonzero statistic is cut.

    A zero statistic with ``offset=0`` and ``floor=0`` enters ``rule`` as
    the log of the smallest normal float32 (about $-87.3$), never as
    $-\\infty$; the threshold is kept within [0, float32 maximum]. The inner
    rule's state is the state of this rule; a non-finite statistic never
    reaches it.

    Args:
        rule: the rule to run in log space (a rule, float or schedule; a
            float $T$ is the fixed bound $e^T - o$).
        offset: $o \\ge 0$, added before the logarithm (1 gives
            $\\log(1 + s)$, which is 0 at $s = 0$; may be traced).
        floor: $f \\ge 0$, the smallest statistic the rule sees (may be traced).

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule] whose state is
        ``rule``'s.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``offset`` or ``floor`` is negative or not finite.

    Examples:
        Lingvo's ``GradNormTracker`` (RNMT+), skipping the step:

        >>> import optax
        >>> import adaclip
        >>> rule = adaclip.log_space(
        ...     adaclip.ema_zscore(4.0, 0.995, min_weight=0.75, std_floor=1e-3),
        ...     offset=1.0,
        ...     floor=1e-2,
        ... )
        >>> tx = adaclip.skip_bad_steps(
        ...     optax.chain(adaclip.clip_by_global_norm(rule), optax.adam(1e-3)),
        ...     spike_factor=1.0,
        ... )

        A geometric band: the bound is twice the previous statistic.

        >>> import jax.numpy as jnp
        >>> rule = adaclip.log_space(adaclip.moving_average(1.0, 1), offset=0.0)
        >>> state = rule.init(jnp.zeros(()))
        >>> c, state = rule.update(jnp.float32(4.0), state)
        >>> c, state = rule.update(jnp.float32(9.0), state)
        >>> round(float(c), 4)
        4.0
    """
    inner = as_rule(rule, "rule")
    _validation.check_nonnegative("offset", offset)
    _validation.check_nonnegative("floor", floor)

    def init_fn(statistic):
        return inner.init(jnp.zeros(jnp.shape(statistic), jnp.float32))

    def update_fn(statistic, state):
        s = as_f32(statistic)
        o = as_f32(offset)
        u = jnp.log(jnp.maximum(jnp.maximum(s, as_f32(floor)) + o, _TINY))
        t, new_state = inner.update(u, state)
        t = as_f32(t)
        back = jnp.clip(jnp.exp(jnp.minimum(t, _LOG_F32_MAX)) - o, 0.0, F32_MAX)
        back = jnp.where(jnp.isnan(back), F32_MAX, back)
        # One float below the statistic; nextafter has no derivative, so its
        # offset from s is held constant (the threshold then moves with s).
        s0 = lax.stop_gradient(s)
        below = jnp.maximum(s + (jnp.nextafter(s0, jnp.float32(0.0)) - s0), 0.0)
        threshold = jnp.where(t < u, jnp.minimum(back, below), jnp.maximum(back, s))
        return threshold, new_state

    return ThresholdRule(init_fn, update_fn)
