"""Skipping a whole optimizer step: a non-finite step, a clip-statistic spike or a loss spike."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adaclip import _validation
from adaclip._base import PyTree, ThresholdRule, rule_name, step_rule, tree_select
from adaclip._find import clip_states, is_clip_state

# Values of SkipState.reason, in order of precedence.
NOT_SKIPPED, NONFINITE, CLIP_STATISTIC, LOSS = 0, 1, 2, 3

# Rules whose threshold is a multiple of (or, in log space, needs) a positive
# statistic: on a loss that can be negative (a log-likelihood) or is shifted
# by a large constant, a multiple of the mean is no spike bound (2 x -5 = -10
# lies below every ordinary loss, so nearly every step is skipped).
_SCALE_RULES = ("ema", "moving_average", "quantile", "log_space")


class SkipState(NamedTuple):
    """State of [`adaclip.skip_bad_steps`][adaclip.skip_bad_steps]: the wrapped
    optimizer's state and a count of the steps it did not take.

    On a skipped step the update is zeros and ``inner_state`` is left as it was.
    Every field except ``inner_state`` and ``loss_rule_state`` is reported by
    [`adaclip.metrics`][adaclip.metrics] under its own name.

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
    nonfinite_skip_count: jax.Array  # int32, (): of those, for a NaN/Inf statistic or loss.
    spike_skip_count: jax.Array  # int32, (): of those, for a clip statistic beyond its bound.
    loss_skip_count: jax.Array  # int32, (): of those, for a loss above its threshold.
    # int32, (): why the last step was skipped: 0 not skipped, 1 non-finite,
    # 2 clip statistic, 3 loss (the first that applies, in that order).
    skip_reason: jax.Array
    loss: jax.Array  # float32, (): the last finite loss (0 without a loss_rule).
    loss_threshold: jax.Array  # float32, (): the loss rule's threshold for it.
    loss_rule_state: PyTree  # the loss rule's state; None without a loss_rule.


def skip_bad_steps(
    inner: optax.GradientTransformation,
    *,
    spike_factor: Any = None,
    loss_rule: ThresholdRule | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Skips the whole optimizer step when it is non-finite, a clip spike or a loss spike.

    ``inner`` is an optimizer that contains at least one adaclip clipper, e.g.
    ``optax.chain(adaclip.clip_by_global_norm(rule), optax.adam(1e-3))``. After
    ``inner`` has run, the step is **skipped** when

    - the statistic of any clipper inside was NaN or infinite, or the loss was;
    - ``spike_factor`` is given and, for any clipper inside, the statistic
      exceeded ``spike_factor`` times the threshold the rule set for this step
      (for per-leaf clipping: any leaf did);
    - ``loss_rule`` is given and the loss exceeded the threshold that
      ``loss_rule`` sets for it,

    $$\\text{skip}_t = \\lnot\\,\\mathrm{isfinite}(s_t, \\ell_t)\\ \\lor\\
      s_t > \\text{spike\\_factor} \\cdot c_t\\ \\lor\\ \\ell_t > c^{\\ell}_t .$$

    **The loss** is passed the optax way, as an extra argument of ``update``:
    ``tx.update(grads, state, params, loss=loss)`` (a scalar); extra
    arguments, ``loss`` included, are passed on to ``inner``. The loss rule
    is any [`adaclip.ThresholdRule`][adaclip.ThresholdRule]: it sees the loss
    as its statistic, exactly as a clipper's rule sees a norm (a non-finite
    loss, or a NaN or ``-inf`` threshold, never enters its state; a negative
    threshold is allowed, as losses can be negative). Use a shift-invariant
    spike test (mean + k standard deviations): a rule that multiplies the
    loss (``ema``, ``moving_average``, ``quantile``, ``log_space``) assumes a
    positive loss, skips nearly every step of a negative one (``2 x -5`` lies
    below ``-5``), and gets a ``UserWarning`` at construction. With
    [`adaclip.rolling_zscore`][adaclip.rolling_zscore] it is the loss-spike
    test of Levanter and OLMo-core; see the "Skipping spikes" docs page for
    each trainer's one-liner. Under ``jax.jit`` with sharded arrays the loss
    is one global scalar; inside ``jax.pmap`` or ``jax.shard_map`` pass the
    loss averaged over the devices (``jax.lax.pmean``), so that every device
    takes the same decision.

    A skipped step returns an all-zero update and leaves every part of the
    inner optimizer state as it was (Adam's moments and step count, schedules,
    injected hyper-parameters), except the clippers' own states and the loss
    rule's, which record the step as they always do: a non-finite statistic
    is counted in ``nonfinite_count`` and kept out of the rule; a spike is
    seen by the rule exactly as without this wrapper, so an adaptive threshold
    can follow a genuine level shift instead of skipping forever.

    This is ``optax.apply_if_finite`` driven by the clip statistic (no extra
    pass over the gradients: the decision reads the clippers' states). With
    ``adaclip.fixed(c)`` and ``spike_factor=1`` every step with norm above
    ``c`` is skipped; with a rule whose threshold is a spike bound ("mean + k
    std", [`adaclip.rolling_zscore`][adaclip.rolling_zscore]) and
    ``spike_factor=1`` it is the gradient-norm test of Levanter and OLMo-core.

    [`adaclip.metrics`][adaclip.metrics] reports ``skipped``, ``skip_count``,
    ``nonfinite_skip_count``, ``spike_skip_count``, ``loss_skip_count``
    (the last three sum to ``skip_count``: each skip counts under its first
    reason), ``skip_reason`` (0 not skipped, 1 non-finite, 2 clip statistic,
    3 loss) and, with a loss rule, ``loss`` and ``loss_threshold``.

    With gradient accumulation, wrap this in ``optax.MultiSteps`` (not the
    other way round): ``optax.MultiSteps(adaclip.skip_bad_steps(inner), k)``
    skips a bad accumulated step and still resets the accumulator.
    ``MultiSteps`` only keeps the decision of the last micro-step, made with
    the loss passed there: pass the mean of the micro-step losses so far
    (restarted where ``opt_state.mini_step == 0``), so that a spike or a NaN
    on any micro-step reaches the loss rule (see the "Skipping spikes" page).

    Args:
        inner: the optimizer to wrap; it must contain an adaclip clipper and
            no ``optax.MultiSteps``.
        spike_factor: ``None`` (the default) to skip non-finite steps only,
            or a number > 0: a finite step whose statistic exceeds
            ``spike_factor`` times its threshold is skipped too.
        loss_rule: ``None`` (the default), or an adaclip rule: a step whose
            loss exceeds the rule's threshold for it is skipped, and
            ``update`` then requires ``loss=``.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.SkipState`][adaclip.SkipState]; ``adaclip.metrics`` still finds the
        clippers inside it.

    Raises:
        TypeError, ValueError: a bad ``spike_factor``, a ``loss_rule`` that is
            not an adaclip rule or an ``inner`` that is not an optax
            transformation (a threshold rule included; at construction); ValueError at ``init`` if
            ``inner``'s state holds no adaclip clipper or holds an
            ``optax.MultiSteps``; TypeError at the first ``update`` (when it
            is traced) if ``loss_rule`` is set and ``loss`` is missing, not a
            real number (a string) or not a scalar.

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

        Skipping on the loss (a loss above the mean + 3 standard deviations of
        the last 8; the test is shift-invariant, so a negative loss such as a
        log-likelihood works as well as a positive one):

        >>> tx = adaclip.skip_bad_steps(
        ...     optax.chain(adaclip.clip_by_global_norm(1.0), optax.sgd(0.1)),
        ...     loss_rule=adaclip.rolling_zscore(3.0, 8, min_history=3),
        ... )
        >>> state = tx.init(params)
        >>> for loss in [-5.0, -5.2, -4.9, -5.1, 3.0, -5.0]:
        ...     _, state = tx.update({"w": jnp.ones(2)}, state, params, loss=loss)
        ...     print(bool(state.skipped), int(adaclip.metrics(state)["skip_reason"]))
        False 0
        False 0
        False 0
        False 0
        True 3
        False 0
    """
    if not isinstance(inner, optax.GradientTransformation | optax.GradientTransformationExtraArgs):
        if not (hasattr(inner, "init") and hasattr(inner, "update")):
            raise TypeError(f"inner must be an optax GradientTransformation, got {inner!r}.")
    if spike_factor is not None:
        _validation.check_positive("spike_factor", spike_factor)
    if isinstance(inner, ThresholdRule):
        raise TypeError(
            "inner must be an optax GradientTransformation that contains an adaclip "
            f"clipper, got {inner!r}, a threshold rule: pass the rule to a clipper, "
            "adaclip.skip_bad_steps(optax.chain(adaclip.clip_by_global_norm(rule), opt))."
        )
    if loss_rule is not None and not isinstance(loss_rule, ThresholdRule):
        raise TypeError(
            f"loss_rule must be an adaclip.ThresholdRule (e.g. adaclip.rolling_zscore(6.0, 128)) "
            f"or None, got {loss_rule!r}."
        )
    if loss_rule is not None and rule_name(loss_rule) in _SCALE_RULES:
        warnings.warn(
            f"loss_rule={rule_name(loss_rule)}(...) sets its threshold as a multiple of (or "
            "in log space from) the loss, which is right only for losses that are positive "
            "and not shifted by a constant. With a negative loss (a log-likelihood) nearly "
            "every ordinary step is skipped. Prefer a shift-invariant spike test such as "
            "adaclip.rolling_zscore(6.0, 128) or adaclip.ema_zscore.",
            UserWarning,
            stacklevel=2,
        )
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
        if not clip_states(inner_state):
            raise ValueError(
                "inner must contain an adaclip clipper (clip_by_global_norm, "
                "clip_by_leaf_norm, clip_by_value or a recipe); its state holds none."
            )
        # Every field is its own buffer, so the state can be donated.
        scalar = jnp.zeros([], jnp.float32)
        return SkipState(
            inner_state=inner_state,
            skipped=jnp.zeros([], jnp.bool_),
            skip_count=jnp.zeros([], jnp.int32),
            nonfinite_skip_count=jnp.zeros([], jnp.int32),
            spike_skip_count=jnp.zeros([], jnp.int32),
            loss_skip_count=jnp.zeros([], jnp.int32),
            skip_reason=jnp.zeros([], jnp.int32),
            loss=jnp.zeros([], jnp.float32),
            loss_threshold=jnp.zeros([], jnp.float32),
            loss_rule_state=None if loss_rule is None else loss_rule.init(scalar),
        )

    def update_fn(updates, state, params=None, **extra_args):
        loss = extra_args.get("loss")
        if loss_rule is not None and loss is None:
            raise TypeError(
                "skip_bad_steps has a loss_rule, so update needs the loss: call "
                "tx.update(grads, state, params, loss=loss), got loss=None."
            )
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        nonfinite = jnp.zeros([], jnp.bool_)
        spike = jnp.zeros([], jnp.bool_)
        for old, new in zip(clip_states(state.inner_state), clip_states(new_inner), strict=True):
            bad = new.nonfinite_count > old.nonfinite_count
            nonfinite = nonfinite | bad
            if spike_factor is not None:
                limit = jnp.asarray(spike_factor, jnp.float32) * new.threshold
                spike = spike | (~bad & jnp.any(new.norm > limit))

        loss_spike = jnp.zeros([], jnp.bool_)
        last_loss, loss_threshold, loss_rule_state = (
            state.loss,
            state.loss_threshold,
            state.loss_rule_state,
        )
        if loss_rule is not None:
            value = _loss_value(loss)
            threshold, loss_rule_state, loss_finite = step_rule(
                loss_rule, value, state.loss_rule_state, signed=True
            )
            nonfinite = nonfinite | ~loss_finite
            loss_spike = loss_finite & (value > threshold)
            last_loss = jnp.where(loss_finite, value, state.loss)
            loss_threshold = jnp.where(loss_finite, threshold, state.loss_threshold)

        spike = spike & ~nonfinite
        loss_spike = loss_spike & ~nonfinite & ~spike
        skip = nonfinite | spike | loss_spike
        reason = jnp.select(
            [nonfinite, spike, loss_spike],
            [jnp.int32(NONFINITE), jnp.int32(CLIP_STATISTIC), jnp.int32(LOSS)],
            jnp.int32(NOT_SKIPPED),
        )

        def keep_or_roll_back(old, new):
            # Clippers always record the step; everything else rolls back.
            return new if is_clip_state(old) else tree_select(skip, old, new)

        inner_state = jax.tree.map(
            keep_or_roll_back, state.inner_state, new_inner, is_leaf=is_clip_state
        )
        new_updates = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), new_updates)
        count = lambda c, b: c + b.astype(jnp.int32)  # noqa: E731
        return new_updates, SkipState(
            inner_state=inner_state,
            skipped=skip,
            skip_count=count(state.skip_count, skip),
            nonfinite_skip_count=count(state.nonfinite_skip_count, nonfinite),
            spike_skip_count=count(state.spike_skip_count, spike),
            loss_skip_count=count(state.loss_skip_count, loss_spike),
            skip_reason=reason,
            loss=last_loss,
            loss_threshold=loss_threshold,
            loss_rule_state=loss_rule_state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _loss_value(loss: Any) -> jax.Array:
    """The loss passed to ``update`` as a float32 scalar, or a clear error
    (at trace time) naming ``loss``."""
    try:
        value = None if isinstance(loss, str | bytes) else jnp.asarray(loss)
    except TypeError:
        value = None
    if value is None or not (
        jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
    ):
        raise TypeError(f"loss must be a real scalar (the step's loss), got {loss!r}.")
    if value.size != 1:
        raise ValueError(f"loss must be a scalar, got an array of shape {value.shape}.")
    return value.reshape(()).astype(jnp.float32)
