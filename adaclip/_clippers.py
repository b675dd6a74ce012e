"""Clippers: measure a statistic of the gradients, ask a rule for a threshold, scale."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from adaclip import _numerics, _validation
from adaclip._base import PyTree, ThresholdLike, as_rule, step_rule

NONFINITE = ("skip", "propagate")


class ClipState(NamedTuple):
    """State of every adaclip clipper; its fields other than ``rule_state`` are
    the metrics that [`adaclip.metrics`][adaclip.metrics] reports.

    Shapes are ``()`` for global and value clipping and ``(n_leaves,)`` for
    per-leaf clipping. On a step whose statistic is not finite, ``norm``,
    ``threshold``, ``clip_rate`` and ``rule_state`` keep their previous values,
    ``clipped`` is False and ``nonfinite_count`` goes up by one.

    Examples:
        A clipper's state is a ``ClipState``; after a step it holds that step's
        metrics:

        >>> import jax.numpy as jnp
        >>> import optax
        >>> import adaclip
        >>> tx = adaclip.clip_by_global_norm(1.0)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, state)
        >>> print(float(state.norm), float(state.threshold), bool(state.clipped))
        5.0 1.0 True
        >>> updates["w"]
        Array([0.6, 0.8], dtype=float32)

        Inside a chain (or any other wrapper), read it with
        [`adaclip.metrics`][adaclip.metrics]:

        >>> tx = optax.chain(adaclip.clip_by_global_norm(1.0), optax.sgd(0.1))
        >>> opt_state = tx.init({"w": jnp.zeros(2)})
        >>> for g in [0.5, 4.0]:
        ...     _, opt_state = tx.update({"w": jnp.array([g, 0.0])}, opt_state)
        >>> m = adaclip.metrics(opt_state)
        >>> print(float(m["norm"]), float(m["clip_rate"]), int(m["nonfinite_count"]))
        4.0 0.5 0
    """

    norm: jax.Array  # float32: the last finite statistic (L2 norm, or max |g|).
    threshold: jax.Array  # float32: the threshold the rule set for that step.
    clipped: jax.Array  # bool: whether that step was clipped.
    clip_rate: jax.Array  # float32: fraction of finite steps clipped so far.
    nonfinite_count: jax.Array  # int32, (): steps with a NaN/Inf statistic.
    count: jax.Array  # int32, (): all steps taken, finite or not.
    rule_state: PyTree  # the threshold rule's own state.


def _make_clipper(
    threshold: ThresholdLike,
    nonfinite: str,
    axis_name: Any,
    statistic_fn: Callable[[list[jax.Array], Any], jax.Array],
    factor_fn: Callable[[jax.Array, jax.Array], jax.Array],
    apply_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    per_leaf: bool,
) -> optax.GradientTransformationExtraArgs:
    """The machinery shared by all clippers.

    ``statistic_fn(leaves, axis_name)`` returns the float32 statistic;
    ``factor_fn(statistic, bound)`` turns it and the bound into the float32
    factor the leaves need (a scale, or the clamp bound), on the whole
    statistic at once; ``apply_fn(g, factor, keep)`` returns the clipped leaf
    ``g`` from its entry of the factor and whether the step is kept (False
    zeroes the leaf).
    """
    _validation.check_choice("nonfinite", nonfinite, NONFINITE)
    rule = as_rule(threshold)

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        shape = (len(leaves),) if per_leaf else ()
        zeros = jnp.zeros(shape, jnp.float32)
        return ClipState(
            norm=zeros,
            threshold=zeros,
            clipped=jnp.zeros(shape, jnp.bool_),
            clip_rate=zeros,
            nonfinite_count=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
            rule_state=rule.init(zeros),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves, treedef = jax.tree.flatten(updates)
        # Integer, bool and float0 leaves carry no gradient: they count as a
        # zero statistic and pass through untouched.
        is_float = [_is_float(g) for g in leaves]
        zero = jnp.zeros([], jnp.float32)
        stat_leaves = [g if f else zero for g, f in zip(leaves, is_float, strict=True)]

        def step(stat):
            # The rule's step and the clip factor, from the statistic. Run
            # inside the statistic's loop (see _numerics._measure), so that
            # XLA computes these scalars once instead of fusing a copy into
            # every leaf's optimizer loop.
            new_threshold, rule_state, finite = step_rule(rule, stat, state.rule_state)
            threshold = jnp.where(finite, new_threshold, state.threshold)
            # A non-finite step is zeroed ("skip") or let through untouched
            # ("propagate": an infinite threshold makes the clip the identity).
            bound = jnp.where(finite, new_threshold, jnp.inf)
            # One float32 factor per statistic entry, on the whole vector.
            return factor_fn(stat, bound), threshold, rule_state, finite

        stat, (factor, threshold, rule_state, finite) = statistic_fn(stat_leaves, axis_name, step)
        clipped = finite & (stat > threshold)
        keep = jnp.asarray(True) if nonfinite == "propagate" else finite
        # Each leaf reads its own entry of the factor as a separate scalar.
        factors = _entries(factor) if per_leaf else [factor] * len(leaves)
        new_leaves = [
            apply_fn(g, factor, keep) if f else g
            for g, f, factor in zip(leaves, is_float, factors, strict=True)
        ]

        finite_steps = (state.count - state.nonfinite_count + 1).astype(jnp.float32)
        clip_rate = state.clip_rate + (clipped.astype(jnp.float32) - state.clip_rate) / finite_steps
        new_state = ClipState(
            norm=jnp.where(finite, stat, state.norm),
            threshold=threshold,
            clipped=clipped,
            clip_rate=jnp.where(finite, clip_rate, state.clip_rate),
            nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
            count=optax.safe_increment(state.count),
            rule_state=rule_state,
        )
        return jax.tree.unflatten(treedef, new_leaves), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# Up to this many leaves, per-leaf thresholds are read with one-hot masks
# (n**2 booleans of constants); beyond, with slices (slower to compile).
_MAX_MASKED_LEAVES = 1024


def _entries(vector: jax.Array) -> list[jax.Array]:
    """The entries of a ``(n,)`` vector as ``n`` scalars.

    Each is a masked sum with a constant one-hot mask, so all ``n`` are
    computed by one compiled kernel that reads a different mask. A slice
    ``vector[i]`` would be clearer, but its offset is part of the kernel: every
    leaf's kernel (and Adam's loops that the entry fuses into) would be a
    different one, and XLA:CPU compiles each separately (500 leaves: ~15 s).
    """
    n = vector.shape[0]
    if n > _MAX_MASKED_LEAVES:
        return [vector[i] for i in range(n)]
    eye = np.eye(n, dtype=bool)
    zero = jnp.zeros([], vector.dtype)
    return [jnp.sum(jnp.where(eye[i], vector, zero)) for i in range(n)]


def _is_float(g: Any) -> bool:
    dtype = getattr(g, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _norm_scale(norm: jax.Array, threshold: jax.Array) -> jax.Array:
    """``min(1, threshold / norm)``, and exactly 0 for a zero threshold.

    The zero case matters when the norm itself underflows to 0 (every element
    below ~1e-19): ``0 > 0`` is false, but a zero threshold must still zero
    the gradient.
    """
    scale = jnp.where(norm > threshold, threshold / norm, 1.0)
    return jnp.where(threshold > 0, scale, 0.0)


def _broadcast(x: jax.Array, like: jax.Array) -> jax.Array:
    return lax.broadcast_in_dim(x, like.shape, ())


def _finish_leaf(g: jax.Array, out: jax.Array, keep: jax.Array) -> jax.Array:
    """``out`` where ``keep`` else 0 (a select, so NaN elements become 0), cast
    back to ``g``'s dtype."""
    out = lax.select(_broadcast(keep, out), out, lax.full_like(out, 0))
    return out if out.dtype == g.dtype else lax.convert_element_type(out, g.dtype)


def _scale_leaf(g: jax.Array, scale: jax.Array, keep: jax.Array) -> jax.Array:
    """``g * scale`` with one float32 scalar multiply.

    The scale is a scalar, so XLA fuses the multiply into whatever reads the
    clipped gradient next (Adam's moment updates) instead of writing a new
    gradient tree. ``keep=False`` zeroes the leaf (a skipped step), with a
    select rather than a multiply so NaN elements become 0. Written with
    ``lax`` ops, which are cheaper to trace than ``jnp``'s for a function
    that runs once per leaf.
    """
    y = _numerics.leaf_f32(g)
    return _finish_leaf(g, lax.mul(y, _broadcast(scale, y)), keep)


def _value_bound(max_abs: jax.Array, threshold: jax.Array) -> jax.Array:
    """Value clipping's factor is the bound itself."""
    del max_abs
    return threshold


def _clamp_leaf(g: jax.Array, bound: jax.Array, keep: jax.Array) -> jax.Array:
    """Element-wise clamp of ``g`` to ``[-bound, bound]`` (NaN stays NaN)."""
    y = _numerics.leaf_f32(g)
    b = _broadcast(bound, y)
    return _finish_leaf(g, lax.min(lax.max(y, lax.neg(b)), b), keep)


def clip_by_global_norm(
    threshold: ThresholdLike, *, nonfinite: str = "skip", axis_name: Any = None
) -> optax.GradientTransformationExtraArgs:
    """Clips the whole gradient tree by its global L2 norm.

    $$g \\leftarrow g \\cdot \\min\\left(1, \\frac{c_t}{\\lVert g \\rVert_2}\\right)$$

    where $c_t$ is the threshold the rule sets at step $t$ from the global
    norm $\\lVert g \\rVert_2$ over all leaves. On finite gradients with a fixed
    threshold this equals ``optax.clip_by_global_norm``, but the scale is one
    float32 scalar, so the clip costs one read of the gradients when chained
    with an optimizer.
        ``threshold`` is a float (a fixed threshold), an optax schedule (a callable
    of the step count) or an [`adaclip.ThresholdRule`][adaclip.ThresholdRule]. The statistic is
    accumulated in float32 whatever the gradient dtype, and is exact even when
    a sum of squares would overflow float32 (elements above ~1e19): a
    rescaled second pass runs then, and only then.

    **Non-finite steps.** When the statistic is NaN or infinite, the rule's
    state is left untouched and ``nonfinite_count`` goes up; with
    ``nonfinite="skip"`` (the default) the step's update is all zeros, with
    ``"propagate"`` the gradients pass through unchanged (NaN included).

    Args:
        threshold: a float >= 0, an optax schedule or a rule.
        nonfinite: ``"skip"`` or ``"propagate"``.
        axis_name: the mapped axis (``shard_map``/``pmap``) over which the
            gradients are split; the squared norms are summed over it so
            every device uses the true global norm. ``None`` under plain
            ``jax.jit``, where sharded arrays are already global.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState].

    Raises:
        TypeError, ValueError: a bad ``threshold`` or ``nonfinite``.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> import adaclip
        >>> params = {"w": jnp.ones(3)}
        >>> tx = optax.chain(adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.99)), optax.adam(1e-3))
        >>> opt_state = tx.init(params)
        >>> grads = {"w": jnp.array([3.0, 0.0, 4.0])}
        >>> updates, opt_state = jax.jit(tx.update)(grads, opt_state, params)
        >>> float(adaclip.metrics(opt_state)["norm"])
        5.0
    """
    return _make_clipper(
        threshold, nonfinite, axis_name, _numerics.global_norm, _norm_scale, _scale_leaf, False
    )


def clip_by_leaf_norm(
    threshold: ThresholdLike, *, nonfinite: str = "skip", axis_name: Any = None
) -> optax.GradientTransformationExtraArgs:
    """Clips each leaf by its own L2 norm ("local" or per-layer clipping).

    $$g_i \\leftarrow g_i \\cdot \\min\\left(1, \\frac{c_{t,i}}{\\lVert g_i \\rVert_2}\\right)$$

    One norm and one threshold per leaf, in ``jax.tree.leaves`` order; the
    rule runs element-wise on the vector of leaf norms, so each leaf gets its
    own adaptive threshold (like Keras ``clipnorm``, which clips each
    variable separately). A step counts as non-finite when any leaf's norm is.
        ``threshold`` is a float (a fixed threshold), an optax schedule (a callable
    of the step count) or an [`adaclip.ThresholdRule`][adaclip.ThresholdRule]. The statistic is
    accumulated in float32 whatever the gradient dtype, and is exact even when
    a sum of squares would overflow float32 (elements above ~1e19): a
    rescaled second pass runs then, and only then.

    **Non-finite steps.** When the statistic is NaN or infinite, the rule's
    state is left untouched and ``nonfinite_count`` goes up; with
    ``nonfinite="skip"`` (the default) the step's update is all zeros, with
    ``"propagate"`` the gradients pass through unchanged (NaN included).

    Args:
        threshold: a float >= 0, an optax schedule or a rule.
        nonfinite: ``"skip"`` or ``"propagate"``.
        axis_name: the mapped axis over which each leaf is split; each leaf's
            squared norm is summed over it.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState] with metrics of shape ``(n_leaves,)``.

    Raises:
        TypeError, ValueError: a bad ``threshold`` or ``nonfinite``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_leaf_norm(1.0)
        >>> grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}
        >>> updates, state = tx.update(grads, tx.init(grads))
        >>> updates["a"], updates["b"]
        (Array([0.6, 0.8], dtype=float32), Array([0.3, 0.4], dtype=float32))
    """
    return _make_clipper(
        threshold, nonfinite, axis_name, _numerics.leaf_norms, _norm_scale, _scale_leaf, True
    )


def clip_by_value(
    threshold: ThresholdLike, *, nonfinite: str = "skip", axis_name: Any = None
) -> optax.GradientTransformationExtraArgs:
    """Clamps every gradient element to ``[-c_t, c_t]``.

    $$g \\leftarrow \\mathrm{clip}(g, -c_t, c_t)$$

    The statistic the rule sees (and the ``norm`` metric records) is the
    largest absolute element $\\max |g|$ over the whole tree, so an adaptive
    rule learns a bound on element size (like Keras ``clipvalue`` with a
    threshold that can move). Unlike norm clipping this changes the
    gradient's direction.
        ``threshold`` is a float (a fixed threshold), an optax schedule (a callable
    of the step count) or an [`adaclip.ThresholdRule`][adaclip.ThresholdRule]. The statistic is
    accumulated in float32 whatever the gradient dtype, and is exact even when
    a sum of squares would overflow float32 (elements above ~1e19): a
    rescaled second pass runs then, and only then.

    **Non-finite steps.** When the statistic is NaN or infinite, the rule's
    state is left untouched and ``nonfinite_count`` goes up; with
    ``nonfinite="skip"`` (the default) the step's update is all zeros, with
    ``"propagate"`` the gradients pass through unchanged (NaN included).

    Args:
        threshold: a float >= 0, an optax schedule or a rule.
        nonfinite: ``"skip"`` or ``"propagate"``.
        axis_name: the mapped axis; the max is taken over it (``pmax``).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState].

    Raises:
        TypeError, ValueError: a bad ``threshold`` or ``nonfinite``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_value(0.5)
        >>> grads = jnp.array([-2.0, 0.1, 0.7])
        >>> updates, state = tx.update(grads, tx.init(grads))
        >>> updates
        Array([-0.5,  0.1,  0.5], dtype=float32)
    """
    return _make_clipper(
        threshold, nonfinite, axis_name, _numerics.global_max_abs, _value_bound, _clamp_leaf, False
    )
