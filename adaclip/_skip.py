"""Skipping a whole optimizer step when the clip statistic says it is bad."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adaclip import _validation
from adaclip._base import PyTree, tree_select
from adaclip._clippers import ClipState


class SkipState(NamedTuple):
    """State of [`adaclip.skip_bad_steps`][adaclip.skip_bad_steps]: the wrapped
    optimizer's state and a count of the steps it did not take.

    On a skipped step the update is zeros and ``inner_state`` is left as it was.

    Examples:
        >>> import jax.numpy as jnp
        >>> import optax
        >>> import adaclip
        >>> tx = adaclip.skip_bad_steps(
        ...     optax.chain(adaclip.clip_by_global_norm(1.0), optax.sgd(0.1)), spike_factor=10.0
        ... )
        >>> params = {"w": jnp.zeros(2)}
        >>> state = tx.init(params)
        >>> for g in [1.0, jnp.nan, 1.0]:
        ...     updates, state = tx.update({"w": jnp.full(2, g)}, state, params)
        ...     print(bool(state.skipped), int(state.skip_count), int(state.nonfinite_skip_count))
        False 0 0
        True 1 1
        False 1 1
    """

    inner_state: PyTree  # the wrapped optimizer's state.
    skipped: jax.Array  # bool, (): whether the last step was skipped.
    skip_count: jax.Array  # int32, (): steps skipped so far.
    nonfinite_skip_count: jax.Array  # int32, (): of those, steps skipped for a NaN/Inf statistic.


def _is_clip(x: Any) -> bool:
    return isinstance(x, ClipState)


def _clip_states(tree: PyTree) -> list[ClipState]:
    return [x for x in jax.tree.leaves(tree, is_leaf=_is_clip) if _is_clip(x)]


def skip_bad_steps(
    inner: optax.GradientTransformation, *, spike_factor: Any = None
) -> optax.GradientTransformationExtraArgs:
    """Skips the whole optimizer step when an adaclip clipper inside flags it.

    ``inner`` is an optimizer that contains at least one adaclip clipper, e.g.
    ``optax.chain(adaclip.clip_by_global_norm(rule), optax.adam(1e-3))``. After
    ``inner`` has run, the step is **skipped** when, for any clipper inside,

    - the statistic was NaN or infinite, or
    - ``spike_factor`` is given and the statistic exceeded
      ``spike_factor`` times the threshold the rule set for this step
      (for per-leaf clipping: any leaf did),

    $$\\text{skip}_t = \\lnot\\,\\mathrm{isfinite}(s_t)\\ \\lor\\
      s_t > \\text{spike\\_factor} \\cdot c_t .$$

    A skipped step returns an all-zero update and leaves every part of the
    inner optimizer state as it was (Adam's moments and step count, schedules,
    injected hyper-parameters), except the clippers' own states, which
    record the step as they always do: a non-finite statistic is counted in
    ``nonfinite_count`` and kept out of the rule; a spike is seen by the rule
    exactly as without this wrapper, so an adaptive threshold can follow a
    genuine level shift instead of skipping forever.

    This is ``optax.apply_if_finite`` driven by the clip statistic (no extra
    pass over the gradients: the decision reads the clippers' states), plus
    the loss-spike skipping of OLMo-core and Levanter when a rule's threshold
    is the spike bound: with ``adaclip.fixed(c)`` and ``spike_factor=1`` every
    step with norm above ``c`` is skipped; with a rule that sets
    "mean + k std" (a z-score rule) and ``spike_factor=1`` it is their rule.

    With gradient accumulation, wrap this in ``optax.MultiSteps`` (not the
    other way round): ``optax.MultiSteps(adaclip.skip_bad_steps(inner), k)``
    skips a bad accumulated step and still resets the accumulator.

    Args:
        inner: the optimizer to wrap; it must contain an adaclip clipper and
            no ``optax.MultiSteps``.
        spike_factor: ``None`` (the default) to skip non-finite steps only,
            or a number > 0: a finite step whose statistic exceeds
            ``spike_factor`` times its threshold is skipped too.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.SkipState`][adaclip.SkipState]; ``adaclip.metrics`` still finds the
        clippers inside it.

    Raises:
        TypeError, ValueError: a bad ``spike_factor`` or an ``inner`` that is
            not an optax transformation (at construction); ValueError at
            ``init`` if ``inner``'s state holds no adaclip clipper or holds
            an ``optax.MultiSteps``.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import adaclip
        >>> tx = adaclip.skip_bad_steps(
        ...     optax.chain(adaclip.clip_by_global_norm(1.0), optax.adam(0.1)), spike_factor=10.0
        ... )
        >>> params = {"w": jnp.zeros(2)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, state, params)
        >>> updates["w"], bool(state.skipped)
        (Array([0., 0.], dtype=float32), True)
        >>> updates, state = tx.update({"w": jnp.array([30.0, 40.0])}, state, params)
        >>> bool(state.skipped), int(state.skip_count)
        (True, 2)
        >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, state, params)
        >>> bool(state.skipped), int(state.inner_state[1][0].count)
        (False, 1)
    """
    if not isinstance(inner, optax.GradientTransformation | optax.GradientTransformationExtraArgs):
        if not (hasattr(inner, "init") and hasattr(inner, "update")):
            raise TypeError(f"inner must be an optax GradientTransformation, got {inner!r}.")
    if spike_factor is not None:
        _validation.check_positive("spike_factor", spike_factor)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        inner_state = inner.init(params)
        multi = lambda x: isinstance(x, optax.MultiStepsState)  # noqa: E731
        if any(multi(x) for x in jax.tree.leaves(inner_state, is_leaf=multi)):
            raise ValueError(
                "inner contains optax.MultiSteps: put it outside instead, "
                "optax.MultiSteps(adaclip.skip_bad_steps(...), k), so that a skipped "
                "step still resets the accumulator."
            )
        if not _clip_states(inner_state):
            raise ValueError(
                "inner must contain an adaclip clipper (clip_by_global_norm, "
                "clip_by_leaf_norm, clip_by_value or a recipe); its state holds none."
            )
        return SkipState(
            inner_state=inner_state,
            skipped=jnp.zeros([], jnp.bool_),
            skip_count=jnp.zeros([], jnp.int32),
            nonfinite_skip_count=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        nonfinite = jnp.zeros([], jnp.bool_)
        spike = jnp.zeros([], jnp.bool_)
        for old, new in zip(_clip_states(state.inner_state), _clip_states(new_inner), strict=True):
            bad = new.nonfinite_count > old.nonfinite_count
            nonfinite = nonfinite | bad
            if spike_factor is not None:
                limit = jnp.asarray(spike_factor, jnp.float32) * new.threshold
                spike = spike | (~bad & jnp.any(new.norm > limit))
        skip = nonfinite | spike

        def keep(old, new):
            # Clippers always record the step; everything else rolls back.
            return new if _is_clip(old) else tree_select(skip, old, new)

        inner_state = jax.tree.map(keep, state.inner_state, new_inner, is_leaf=_is_clip)
        new_updates = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), new_updates)
        return new_updates, SkipState(
            inner_state=inner_state,
            skipped=skip,
            skip_count=state.skip_count + skip.astype(jnp.int32),
            nonfinite_skip_count=state.nonfinite_skip_count + nonfinite.astype(jnp.int32),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
