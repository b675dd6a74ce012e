"""Clippers: measure a statistic of the gradients, ask a rule for a threshold, scale."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from adaclip import _numerics, _validation
from adaclip._base import (
    PyTree,
    ThresholdLike,
    as_rule,
    check_structure,
    increment,
    reported_threshold,
    saturating_f32,
    step_rule,
)

# "skip" (the default, kept for the contract) and "zero" are one mode: the
# clipper's output is zeroed; "zero" says what it does.
NONFINITE = ("skip", "zero", "propagate")


class ClipState(NamedTuple):
    """State of every adaclip clipper; its fields other than ``rule_state`` are
    the metrics that [`adaclip.metrics`][adaclip.metrics] reports.

    ``init`` returns it as a subclass that records the structure of the
    params tree (as class data, no array), and ``update`` raises a
    ``ValueError`` naming both structures when it gets a tree of another
    structure (checked at trace time; equal leaf counts are not enough).

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


@functools.cache
def _state_type(structure: Any) -> type[ClipState]:
    """`ClipState` for a params tree of this structure.

    The structure must travel with the state through ``jax.jit``, donation,
    ``jax.tree.map``, ``optax`` wrappers and checkpoints, without an array
    and without a new field. As the state's type it does: pytrees rebuild a
    named tuple by its type, and so do orbax (from the target's treedef) and
    flax (``type(target)(**fields)``). One subclass per structure (cached),
    named ``ClipState``, so reprs and ``isinstance`` are unchanged.
    """
    return type(
        "ClipState",
        (ClipState,),
        {
            "__slots__": (),
            "__module__": ClipState.__module__,
            "__qualname__": ClipState.__qualname__,
            "__doc__": ClipState.__doc__,
            "__reduce__": _reduce_state,
            "_structure": structure,
        },
    )


def _reduce_state(state: ClipState) -> tuple[Any, tuple[Any, ...]]:
    """Pickles a structured state (its class is not importable by name)."""
    return _rebuild_state, (state._structure, tuple(state))  # type: ignore[attr-defined]


def _rebuild_state(structure: Any, fields: tuple[Any, ...]) -> ClipState:
    return _state_type(structure)(*fields)


class _ClipperSpec(NamedTuple):
    """What makes one clipper: its statistic, its factor and how a leaf is clipped.

    ``statistic(leaves, axis_name, step)`` measures the statistic (float32,
    or float64 with a float64 leaf) and runs ``step`` on it (see
    `_numerics._measure`); ``factor(statistic, bound)`` turns it and the
    rule's bound into what the leaves need (a scale, or the clamp bound), on
    the whole statistic at once; ``clip_leaf(g, factor, keep_update)``
    returns the clipped leaf ``g`` from its entry of the factor
    (``keep_update=False`` zeroes it); ``per_leaf`` says whether the
    statistic has one entry per leaf; ``complex_ok`` whether complex leaves
    can be clipped.
    """

    statistic: Callable[..., tuple[jax.Array, Any]]
    factor: Callable[[jax.Array, jax.Array], jax.Array]
    clip_leaf: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    per_leaf: bool
    complex_ok: bool
    name: str


def _make_clipper(
    spec: _ClipperSpec, *, threshold: ThresholdLike, nonfinite: str, axis_name: Any
) -> optax.GradientTransformationExtraArgs:
    """The machinery shared by all clippers (see `_ClipperSpec`)."""
    _validation.check_choice("nonfinite", nonfinite, NONFINITE)
    rule = as_rule(threshold, allow_inf=True)

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        shape = (len(leaves),) if spec.per_leaf else ()
        # Each field its own buffer, so that the state can be donated.
        return _state_type(jax.tree.structure(params))(
            norm=jnp.zeros(shape, jnp.float32),
            threshold=jnp.zeros(shape, jnp.float32),
            clipped=jnp.zeros(shape, jnp.bool_),
            clip_rate=jnp.zeros(shape, jnp.float32),
            nonfinite_count=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
            rule_state=rule.init(jnp.zeros(shape, jnp.float32)),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        check_structure(spec.name, getattr(state, "_structure", None), updates)
        leaves, treedef = jax.tree.flatten(updates)
        # Integer, bool and float0 leaves carry no gradient: they count as a
        # zero statistic and pass through untouched.
        clippable = [_is_inexact(g) for g in leaves]
        if not spec.complex_ok and any(
            c and jnp.issubdtype(g.dtype, jnp.complexfloating)
            for g, c in zip(leaves, clippable, strict=True)
        ):
            raise ValueError(
                f"{spec.name} cannot clip complex gradients: complex numbers have no "
                "order (optax.clip raises too). Use clip_by_global_norm or clip_by_leaf_norm, "
                "which clip by modulus, or clip the real and imaginary parts separately."
            )
        zero = jnp.zeros([], jnp.float32)
        stat_leaves = [g if c else zero for g, c in zip(leaves, clippable, strict=True)]

        def step(stat):
            # The rule's step and the clip factor, from the statistic. Run
            # inside the statistic's loop (see _numerics._measure), so that
            # XLA computes these scalars once instead of fusing a copy into
            # every leaf's optimizer loop.
            rule_threshold, rule_state, finite = step_rule(rule, stat, state.rule_state)
            # NumPy's promotion: both are float32 or float64, and jnp's would
            # refuse float64 with float32 under strict dtype promotion.
            wide = np.promote_types(stat.dtype, rule_threshold.dtype)
            stat_w, rule_threshold = stat.astype(wide), rule_threshold.astype(wide)
            # A non-finite step is zeroed ("skip") or let through untouched
            # ("propagate": an infinite bound makes the clip the identity). A
            # +inf threshold is no bound this step ("measure only").
            bound = jnp.where(finite, rule_threshold, jnp.inf)
            clipped = finite & (stat_w > bound)
            reported = saturating_f32(reported_threshold(rule_threshold, stat_w))
            threshold = jnp.where(finite, reported, state.threshold)
            return spec.factor(stat_w, bound), threshold, clipped, rule_state, finite

        stat, (factor, threshold, clipped, rule_state, finite) = spec.statistic(
            stat_leaves, axis_name, step
        )
        keep_update = jnp.asarray(True) if nonfinite == "propagate" else finite
        # Each leaf reads its own entry of the factor as a separate scalar.
        factors = _entries(factor) if spec.per_leaf else [factor] * len(leaves)
        new_leaves = [
            spec.clip_leaf(g, leaf_factor, keep_update) if c else g
            for g, c, leaf_factor in zip(leaves, clippable, factors, strict=True)
        ]

        finite_steps = (state.count - state.nonfinite_count + 1).astype(jnp.float32)
        clip_rate = state.clip_rate + (clipped.astype(jnp.float32) - state.clip_rate) / finite_steps
        new_state = type(state)(
            norm=jnp.where(finite, saturating_f32(stat), state.norm),
            threshold=threshold,
            clipped=clipped,
            clip_rate=jnp.where(finite, clip_rate, state.clip_rate),
            nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
            count=increment(state.count),
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


def _is_inexact(g: Any) -> bool:
    """A real or complex floating leaf (one that carries a gradient)."""
    dtype = getattr(g, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def _norm_scale(norm: jax.Array, threshold: jax.Array) -> jax.Array:
    """``min(1, threshold / norm)``, and exactly 0 for a zero threshold.

    The zero case matters when the norm itself underflows to 0 (every element
    below ~1e-19): ``0 > 0`` is false, but a zero threshold must still zero
    the gradient. An infinite threshold gives exactly 1.
    """
    over = norm > threshold
    scale = jnp.where(over, threshold / jnp.where(over, norm, 1.0), 1.0)
    return jnp.where(threshold > 0, scale, 0.0).astype(norm.dtype)


def _broadcast(x: jax.Array, like: jax.Array) -> jax.Array:
    return lax.broadcast_in_dim(x, like.shape, ())


def _finish_leaf(g: jax.Array, out: jax.Array, keep_update: jax.Array) -> jax.Array:
    """``out`` where ``keep_update`` else 0 (a select, so NaN elements become
    0), cast back to ``g``'s dtype."""
    out = lax.select(_broadcast(keep_update, out), out, lax.full_like(out, 0))
    return _numerics.convert(out, g.dtype)


def _scale_leaf(g: jax.Array, scale: jax.Array, keep_update: jax.Array) -> jax.Array:
    """``(g.astype(w) * scale).astype(g.dtype)`` with one scalar multiply,
    ``w`` the wider of float32 and ``g``'s dtype.

    The scale is a scalar, so XLA fuses the multiply into whatever reads the
    clipped gradient next (Adam's moment updates) instead of writing a new
    gradient tree. ``keep_update=False`` zeroes the leaf (a skipped step),
    with a select rather than a multiply so NaN elements become 0. Written
    with ``lax`` ops, which are cheaper to trace than ``jnp``'s for a function
    that runs once per leaf.
    """
    w = _numerics.work_dtype(g.dtype)
    y = _numerics.convert(g, w)
    return _finish_leaf(g, lax.mul(y, _broadcast(_numerics.convert(scale, w), y)), keep_update)


def _value_bound(max_abs: jax.Array, threshold: jax.Array) -> jax.Array:
    """Value clipping's factor is the bound itself."""
    del max_abs
    return threshold


def _clamp_leaf(g: jax.Array, bound: jax.Array, keep_update: jax.Array) -> jax.Array:
    """Element-wise clamp of ``g`` to ``[-bound, bound]`` (NaN stays NaN)."""
    w = _numerics.work_dtype(g.dtype)
    y = _numerics.convert(g, w)
    b = _broadcast(_numerics.convert(bound, w), y)
    return _finish_leaf(g, lax.min(lax.max(y, lax.neg(b)), b), keep_update)


_GLOBAL = _ClipperSpec(
    statistic=_numerics.global_norm,
    factor=_norm_scale,
    clip_leaf=_scale_leaf,
    per_leaf=False,
    complex_ok=True,
    name="clip_by_global_norm",
)
_LEAF = _ClipperSpec(
    statistic=_numerics.leaf_norms,
    factor=_norm_scale,
    clip_leaf=_scale_leaf,
    per_leaf=True,
    complex_ok=True,
    name="clip_by_leaf_norm",
)
_VALUE = _ClipperSpec(
    statistic=_numerics.global_max_abs,
    factor=_value_bound,
    clip_leaf=_clamp_leaf,
    per_leaf=False,
    complex_ok=False,
    name="clip_by_value",
)


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
    of the step count) or an [`adaclip.ThresholdRule`][adaclip.ThresholdRule];
    ``math.inf`` means "measure only": nothing is cut, every metric is
    recorded and the ``threshold`` metric reports the statistic. At run time
    a ``+inf`` threshold from a rule or schedule is no bound that step, and a
    NaN, negative or ``-inf`` one makes the step non-finite (below).

    **Dtypes.** The statistic is accumulated in float32, or in float64 when a
    leaf is float64 (``jax_enable_x64``), and is exact even when a sum of
    squares would overflow (float32 elements above ~1e19): a rescaled second
    pass runs then, and only then. Each leaf is scaled as
    ``(g.astype(w) * scale).astype(g.dtype)``, ``w`` the wider of float32 and
    the leaf's dtype, so an unclipped float64 leaf comes back bit for bit.
    Complex leaves count with their modulus ($|g|^2$), as in
    ``optax.clip_by_global_norm``; a NaN in either part is non-finite. The
    state's statistics stay float32.

    **Differentiable and donatable.** ``update`` differentiates in reverse
    and forward mode with respect to the gradients and to float
    hyper-parameters (a custom JVP rule on the statistic keeps the one-read
    loop), and ``init`` returns distinct buffers, so the state can be
    donated.

    **Non-finite steps.** When the statistic is NaN or infinite (or the
    rule's threshold is NaN, negative or ``-inf``), the rule's state is left
    untouched and ``nonfinite_count`` goes up. With ``nonfinite="zero"`` (or
    its older spelling ``"skip"``, the default) this clipper's output is all
    zeros, but an optimizer chained after it still steps: Adam's moments decay,
    its count advances and the parameters still move. To skip the whole step,
    wrap the chain: ``adaclip.skip_bad_steps(optax.chain(clipper, optimizer))``.
    With ``"propagate"`` the gradients pass through unchanged (NaN included).

    Args:
        threshold: a float >= 0, an optax schedule or a rule.
        nonfinite: ``"skip"`` (the default) or ``"zero"``, the same mode:
            zero this clipper's output on a non-finite step; ``"propagate"``:
            pass it through.
        axis_name: the mapped axis (``shard_map``/``pmap``) over which the
            gradients are split; the squared norms are summed over it so
            every device uses the true global norm. ``None`` under plain
            ``jax.jit``, where sharded arrays are already global.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState].

    Raises:
        TypeError, ValueError: a bad ``threshold`` or ``nonfinite`` (an
            uncalled rule factory or a callable that is not a schedule is a
            ``TypeError``).

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
    return _make_clipper(_GLOBAL, threshold=threshold, nonfinite=nonfinite, axis_name=axis_name)


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
    of the step count) or an [`adaclip.ThresholdRule`][adaclip.ThresholdRule];
    ``math.inf`` means "measure only": nothing is cut, every metric is
    recorded and the ``threshold`` metric reports the statistic. At run time
    a ``+inf`` threshold from a rule or schedule is no bound that step, and a
    NaN, negative or ``-inf`` one makes the step non-finite (below).

    **Dtypes.** The statistic is accumulated in float32, or in float64 when a
    leaf is float64 (``jax_enable_x64``), and is exact even when a sum of
    squares would overflow (float32 elements above ~1e19): a rescaled second
    pass runs then, and only then. Each leaf is scaled as
    ``(g.astype(w) * scale).astype(g.dtype)``, ``w`` the wider of float32 and
    the leaf's dtype, so an unclipped float64 leaf comes back bit for bit.
    Complex leaves count with their modulus ($|g|^2$), as in
    ``optax.clip_by_global_norm``; a NaN in either part is non-finite. The
    state's statistics stay float32.

    **Differentiable and donatable.** ``update`` differentiates in reverse
    and forward mode with respect to the gradients and to float
    hyper-parameters (a custom JVP rule on the statistic keeps the one-read
    loop), and ``init`` returns distinct buffers, so the state can be
    donated.

    **Non-finite steps.** When the statistic is NaN or infinite (or the
    rule's threshold is NaN, negative or ``-inf``), the rule's state is left
    untouched and ``nonfinite_count`` goes up. With ``nonfinite="zero"`` (or
    its older spelling ``"skip"``, the default) this clipper's output is all
    zeros, but an optimizer chained after it still steps: Adam's moments decay,
    its count advances and the parameters still move. To skip the whole step,
    wrap the chain: ``adaclip.skip_bad_steps(optax.chain(clipper, optimizer))``.
    With ``"propagate"`` the gradients pass through unchanged (NaN included).

    Args:
        threshold: a float >= 0, an optax schedule or a rule.
        nonfinite: ``"skip"`` (the default) or ``"zero"``, the same mode:
            zero this clipper's output on a non-finite step; ``"propagate"``:
            pass it through.
        axis_name: the mapped axis over which each leaf is split; each leaf's
            squared norm is summed over it.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState] with metrics of shape ``(n_leaves,)``.

    Raises:
        TypeError, ValueError: a bad ``threshold`` or ``nonfinite`` (an
            uncalled rule factory or a callable that is not a schedule is a
            ``TypeError``).

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_leaf_norm(1.0)
        >>> grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}
        >>> updates, state = tx.update(grads, tx.init(grads))
        >>> updates["a"], updates["b"]
        (Array([0.6, 0.8], dtype=float32), Array([0.3, 0.4], dtype=float32))
    """
    return _make_clipper(_LEAF, threshold=threshold, nonfinite=nonfinite, axis_name=axis_name)


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
    of the step count) or an [`adaclip.ThresholdRule`][adaclip.ThresholdRule];
    ``math.inf`` means "measure only": nothing is cut, every metric is
    recorded and the ``threshold`` metric reports the statistic. At run time
    a ``+inf`` threshold from a rule or schedule is no bound that step, and a
    NaN, negative or ``-inf`` one makes the step non-finite (below).

    **Dtypes.** The statistic $\\max |g|$ is taken in float32, or in float64
    when a leaf is float64 (``jax_enable_x64``); there is no sum of squares,
    so nothing overflows. Each leaf is clamped as
    ``clip(g.astype(w), -c, c).astype(g.dtype)``, ``w`` the wider of float32
    and the leaf's dtype, so an element within the bound comes back bit for
    bit. Complex leaves are rejected with a ``ValueError``, as ``optax.clip``
    rejects them: complex numbers have no order. The state's statistics stay
    float32.

    **Differentiable and donatable.** ``update`` differentiates in reverse
    and forward mode with respect to the gradients and to float
    hyper-parameters (a custom JVP rule on the statistic keeps the one-read
    loop), and ``init`` returns distinct buffers, so the state can be
    donated.

    **Non-finite steps.** When the statistic is NaN or infinite (or the
    rule's threshold is NaN, negative or ``-inf``), the rule's state is left
    untouched and ``nonfinite_count`` goes up. With ``nonfinite="zero"`` (or
    its older spelling ``"skip"``, the default) this clipper's output is all
    zeros, but an optimizer chained after it still steps: Adam's moments decay,
    its count advances and the parameters still move. To skip the whole step,
    wrap the chain: ``adaclip.skip_bad_steps(optax.chain(clipper, optimizer))``.
    With ``"propagate"`` the gradients pass through unchanged (NaN included).

    Args:
        threshold: a float >= 0, an optax schedule or a rule.
        nonfinite: ``"skip"`` (the default) or ``"zero"``, the same mode:
            zero this clipper's output on a non-finite step; ``"propagate"``:
            pass it through.
        axis_name: the mapped axis; the max is taken over it (``pmax``).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState].

    Raises:
        TypeError, ValueError: a bad ``threshold`` or ``nonfinite`` (an
            uncalled rule factory or a callable that is not a schedule is a
            ``TypeError``).

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_value(0.5)
        >>> grads = jnp.array([-2.0, 0.1, 0.7])
        >>> updates, state = tx.update(grads, tx.init(grads))
        >>> updates
        Array([-0.5,  0.1,  0.5], dtype=float32)
    """
    return _make_clipper(_VALUE, threshold=threshold, nonfinite=nonfinite, axis_name=axis_name)
