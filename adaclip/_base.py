"""The threshold-rule protocol and the one place where a rule is stepped.

A *threshold rule* turns a stream of statistics (a gradient norm, one norm per
leaf, or a max absolute value) into a stream of clipping thresholds. It never
sees gradients. It is a pair of pure functions, like an optax transformation:

- ``init(statistic) -> state``: ``statistic`` is a float32 array of zeros with
  the statistic's shape (``()`` for global clipping, ``(n_leaves,)`` for
  per-leaf clipping); the rule sizes its state from it.
- ``update(statistic, state) -> (threshold, new_state)``: the threshold for
  this step, same shape as ``statistic``, float32.

Rules work element-wise on the statistic's shape, so every rule serves every
clipper. The clipper, not the rule, guards against non-finite statistics: see
`step_rule`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp

from adaclip import _validation

PyTree: TypeAlias = Any
Schedule: TypeAlias = Callable[[jax.Array], Any]


class ThresholdRule(NamedTuple):
    """A threshold rule: pure ``init`` and ``update`` functions.

    Attributes:
        init: ``init(statistic) -> state``. ``statistic`` is a float32 array of
            zeros shaped like the statistic the rule will see.
        update: ``update(statistic, state) -> (threshold, new_state)``, with the
            threshold a float32 array shaped like ``statistic``. A rule only
            ever has to handle finite statistics: the clipper discards the new
            state of a step whose statistic is not finite.

    Examples:
        A hand-written rule that halves the threshold every step:

        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> halving = adaclip.ThresholdRule(
        ...     init=lambda stat: jnp.ones_like(stat),
        ...     update=lambda stat, c: (c, c / 2),
        ... )
        >>> tx = adaclip.clip_by_global_norm(halving)
    """

    init: Callable[[jax.Array], PyTree]
    update: Callable[[jax.Array, PyTree], tuple[jax.Array, PyTree]]


ThresholdLike: TypeAlias = float | jax.Array | Schedule | ThresholdRule


def as_f32(x: Any) -> jax.Array:
    """``x`` as a float32 array (hyper-parameters may arrive in any dtype)."""
    return jnp.asarray(x).astype(jnp.float32)


def as_rule(threshold: ThresholdLike, name: str = "threshold") -> ThresholdRule:
    """Turns a float, an optax schedule or a rule into a
    [`adaclip.ThresholdRule`][adaclip.ThresholdRule]."""
    # Imported here: the rule modules import this one.
    from adaclip._schedule_rules import fixed, scheduled

    if isinstance(threshold, ThresholdRule):
        return threshold
    if callable(threshold):
        return scheduled(threshold)
    try:
        _validation.check_nonnegative(name, threshold)
    except TypeError:
        raise TypeError(
            f"{name} must be a number, an optax schedule or an adaclip.ThresholdRule, "
            f"got {threshold!r}."
        ) from None
    return fixed(threshold)


def tree_select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """``jnp.where(pred, a, b)`` leaf by leaf, for a scalar ``pred``."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def step_rule(
    rule: ThresholdRule, statistic: jax.Array, state: PyTree
) -> tuple[jax.Array, PyTree, jax.Array]:
    """Steps ``rule`` once, keeping a non-finite statistic out of its state.

    Returns ``(threshold, new_state, finite)``. When any entry of
    ``statistic`` is NaN or infinite, ``finite`` is False and ``new_state`` is
    ``state`` unchanged; the threshold returned for such a step is not
    meaningful and callers replace it. Clippers and offline replay both step
    rules through this function, so they agree step for step.
    """
    statistic = as_f32(statistic)
    finite = jnp.all(jnp.isfinite(statistic))
    threshold, new_state = rule.update(statistic, state)
    threshold = jnp.broadcast_to(as_f32(threshold), statistic.shape)
    new_state = tree_select(finite, new_state, state)
    return threshold, new_state, finite
