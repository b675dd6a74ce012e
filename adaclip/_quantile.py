"""Geometric quantile tracking (Andrew et al. 2021): O(1) state per entry."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaclip import _validation
from adaclip._base import F32_MAX, ThresholdRule, as_f32

# The estimate is kept in [tiny, max] of float32: a long run of zero
# statistics would otherwise drive it to exactly 0, from which a
# multiplicative update can never recover, and a long run of huge ones to inf.
_LOW = float(jnp.finfo(jnp.float32).tiny)
_HIGH = F32_MAX


class QuantileState(NamedTuple):
    """State of [`adaclip.quantile`][adaclip.quantile]: the current quantile estimate.

    The estimate is the threshold of the next step. It grows by the factor
    ``exp(learning_rate * target)`` after a step that was clipped and shrinks by
    ``exp(-learning_rate * (1 - target))`` after one that was not.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.quantile(0.5, learning_rate=0.2, initial=1.0)
        >>> tx = adaclip.clip_by_global_norm(rule)
        >>> state = tx.init({"w": jnp.zeros(1)})
        >>> for g in [3.0, 3.0, 0.5]:
        ...     _, state = tx.update({"w": jnp.array([g])}, state)
        ...     print(bool(state.clipped), f"{float(state.rule_state.estimate):.4f}")
        True 1.1052
        True 1.2214
        False 1.1052
    """

    estimate: jax.Array  # float32, statistic's shape: the current quantile estimate C.


def quantile(target: Any, *, learning_rate: Any = 0.2, initial: Any = 1.0) -> ThresholdRule:
    """Tracks a quantile of the statistic with a geometric (multiplicative) update.

    With $C_t$ the estimate, $q$ = ``target`` and $\\eta$ = ``learning_rate``:

    $$c_t = C_t,\\qquad b_t = \\mathbb{1}[s_t \\le C_t],\\qquad
      C_{t+1} = C_t \\exp\\left(-\\eta\\,(b_t - q)\\right),\\qquad C_0 = \\text{initial}$$

    $C$ shrinks when the statistic is below it and grows when above, and
    settles where a fraction $q$ of the statistics fall below it: the $q$-th
    quantile of their distribution, in O(1) memory. The threshold at step
    $t$ is the estimate before it sees $s_t$, and the estimate is fed the
    unclipped statistic, as in the original (Andrew et al. 2021, used there
    for differentially private training). Each entry of the statistic
    (each leaf, with per-leaf clipping) gets its own estimate.

    **Differences from the original.** A NaN or infinite statistic leaves
    the estimate unchanged (the clipper keeps it out of the state); the
    estimate is kept within the positive finite float32 range, so a long run
    of zero statistics cannot pin it at exactly 0 for ever and the threshold
    is always finite.

    Args:
        target: $q \\in (0, 1)$, the quantile to track (0.5: the median).
        learning_rate: $\\eta > 0$; 0.2 is the paper's recommendation.
        initial: $C_0 > 0$, the first threshold.

    Returns:
        An [`adaclip.ThresholdRule`][adaclip.ThresholdRule] whose state is a
        [`adaclip.QuantileState`][adaclip.QuantileState].

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of its range.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> rule = adaclip.quantile(0.5, learning_rate=0.2, initial=1.0)
        >>> state = rule.init(jnp.zeros(()))
        >>> for s in [3.0, 3.0, 0.5]:
        ...     threshold, state = rule.update(jnp.float32(s), state)
        ...     print(round(float(threshold), 4))
        1.0
        1.1052
        1.2214

    References:
        Andrew, Thakkar, McMahan, Ramaswamy. *Differentially Private Learning
        with Adaptive Clipping*, NeurIPS 2021.
        [arXiv:1905.03871](https://arxiv.org/abs/1905.03871)
    """
    _validation.check_real("target", target, low=0.0, high=1.0, low_open=True, high_open=True)
    _validation.check_positive("learning_rate", learning_rate)
    _validation.check_positive("initial", initial)

    def init_fn(statistic):
        return QuantileState(estimate=jnp.full(jnp.shape(statistic), as_f32(initial)))

    def update_fn(statistic, state):
        c = state.estimate
        below = (as_f32(statistic) <= c).astype(jnp.float32)
        new = c * jnp.exp(-as_f32(learning_rate) * (below - as_f32(target)))
        return c, QuantileState(estimate=jnp.clip(new, _LOW, _HIGH))

    return ThresholdRule(init_fn, update_fn)
