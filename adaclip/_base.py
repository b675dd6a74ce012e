"""The threshold-rule protocol, the rules every threshold can become, and the
one place where a rule is stepped.

A *threshold rule* turns a stream of statistics (a gradient norm, one norm per
leaf, or a max absolute value) into a stream of clipping thresholds. It never
sees gradients. It is a pair of pure functions, like an optax transformation:

- ``init(statistic) -> state``: ``statistic`` is a float32 array of zeros with
  the statistic's shape (``()`` for global clipping, ``(n_leaves,)`` for
  per-leaf clipping); the rule sizes its state from it.
- ``update(statistic, state) -> (threshold, new_state)``: the threshold for
  this step, same shape as ``statistic``, float32 (or float64, for a fixed or
  scheduled threshold under ``jax_enable_x64``).

Rules work element-wise on the statistic's shape, so every rule serves every
clipper. The clipper, not the rule, guards against non-finite statistics and
NaN thresholds: see `step_rule`.

This module sits on the bottom floor: it imports only `_validation`. The
rules that every threshold can become (a constant and a schedule of the step
count) are built here, so that `as_rule` needs nothing above it;
``adaclip.fixed`` and ``adaclip.scheduled`` validate their arguments and call
them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adaclip import _validation

PyTree: TypeAlias = Any
Schedule: TypeAlias = Callable[[jax.Array], Any]

# The largest float32: the "empty" filler of sorted windows and the cap of
# estimates that must stay finite.
F32_MAX = float(jnp.finfo(jnp.float32).max)
# What a rule feeds itself: the clipped statistic or the raw one.
FEEDS = ("clipped", "raw")
# How long (in spans of a rule's memory: 1/(1-decay) steps for an EMA, the
# window for a window rule) a clipped feed may cut the statistic on every
# step before the rule takes the raw statistic instead: see `feed_step`.
FEED_PATIENCE_SPANS = 8


class _RuleFields(NamedTuple):
    init: Callable[[jax.Array], PyTree]
    update: Callable[[jax.Array, PyTree], tuple[jax.Array, PyTree]]


class ThresholdRule(_RuleFields):
    """A threshold rule: pure ``init`` and ``update`` functions.

    A rule is not a gradient transformation: pass it to a clipper
    ([`adaclip.clip_by_global_norm`][adaclip.clip_by_global_norm] and the
    others). Its ``init`` checks that it got a statistic (a float array of at
    most one dimension), so a rule chained by mistake as a transformation
    (``optax.chain(adaclip.ema(2.0, 0.99), optax.adam(1e-3))``) fails at
    ``init`` with a message that says so.

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

    __slots__ = ()

    def __new__(cls, init: Callable[[jax.Array], PyTree], update: Callable[..., Any]):
        return super().__new__(cls, _checked_init(init), update)


def _checked_init(init: Callable[[jax.Array], PyTree]) -> Callable[[jax.Array], PyTree]:
    """``init`` wrapped so that it rejects anything but a statistic."""
    if getattr(init, "_adaclip_checked", False) or not callable(init):
        return init

    def checked(statistic, *args, **kwargs):
        if args or kwargs or not _is_statistic(statistic):
            raise TypeError(
                "a ThresholdRule's init takes the statistic (a float array of zeros, "
                f"shape () or (n_leaves,)), got {_describe(statistic)}. A rule is not a "
                "gradient transformation: pass it to a clipper, e.g. "
                "adaclip.clip_by_global_norm(rule), instead of chaining it."
            )
        return init(statistic)

    checked._adaclip_checked = True  # type: ignore[attr-defined]
    checked.__wrapped__ = init  # type: ignore[attr-defined]
    return checked


def _is_statistic(x: Any) -> bool:
    if not isinstance(x, jax.Array | np.ndarray):
        return False
    return jnp.issubdtype(x.dtype, jnp.floating) and x.ndim <= 1


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"a {type(x).__name__} of shape {tuple(shape)} and dtype {x.dtype}"
    return f"a {type(x).__name__}"


ThresholdLike: TypeAlias = float | jax.Array | Schedule | ThresholdRule


def as_f32(x: Any) -> jax.Array:
    """``x`` as a float32 array (hyper-parameters may arrive in any dtype)."""
    return jnp.asarray(x).astype(jnp.float32)


def as_threshold(x: Any) -> jax.Array:
    """``x`` as a float array at least as wide as float32.

    A Python float becomes float64 under ``jax_enable_x64`` (so a fixed
    threshold is used at full precision on float64 gradients), float32
    otherwise; bfloat16, float16 and integers become float32.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
        return x.astype(jnp.float32)
    return x


def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` for ``x >= 0`` whose derivative at 0 is 0 instead of inf.

    A variance that is exactly 0 (a constant history) would otherwise turn a
    gradient taken through the rule (meta-gradients) into NaN (``inf * 0``).
    """
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def increment(count: jax.Array) -> jax.Array:
    """``count + 1``, held at the int32 maximum (``optax.safe_increment``,
    typed as an array)."""
    return jnp.asarray(optax.safe_increment(count))


class FixedState(NamedTuple):
    """State of [`adaclip.fixed`][adaclip.fixed]: empty, a constant threshold needs no memory.

    A clipper given a plain number runs [`adaclip.fixed`][adaclip.fixed], so this is
    the ``rule_state`` of its [`adaclip.ClipState`][adaclip.ClipState].

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> state = adaclip.clip_by_global_norm(1.0).init({"w": jnp.zeros(3)})
        >>> state.rule_state
        FixedState()
        >>> adaclip.fixed(0.5).init(jnp.zeros(()))
        FixedState()
    """


class ScheduleState(NamedTuple):
    """State of [`adaclip.scheduled`][adaclip.scheduled] and [`adaclip.decaying`][adaclip.decaying].

    ``count`` is the step the schedule is evaluated at. It counts finite steps
    only: a step with a NaN or infinite gradient does not advance the schedule.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_global_norm(adaclip.decaying(1.0, 0.5))
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> for g in [1.0, jnp.nan, 1.0]:
        ...     _, state = tx.update({"w": jnp.full(2, g)}, state)
        ...     print(float(state.threshold), int(state.rule_state.count), int(state.count))
        1.0 1 1
        1.0 1 2
        0.5 2 3
    """

    count: jax.Array  # int32, (): finite steps taken so far.


def constant_rule(value: Any) -> ThresholdRule:
    """The rule of a constant threshold (unvalidated: see ``adaclip.fixed``)."""

    def init_fn(statistic):
        del statistic
        return FixedState()

    def update_fn(statistic, state):
        return jnp.broadcast_to(as_threshold(value), jnp.shape(statistic)), state

    return ThresholdRule(init_fn, update_fn)


def schedule_rule(schedule: Schedule) -> ThresholdRule:
    """The rule of a schedule of the step count (unvalidated: see
    ``adaclip.scheduled``). Values below 0 become 0."""

    def init_fn(statistic):
        del statistic
        return ScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(statistic, state):
        threshold = as_threshold(schedule(state.count))
        threshold = jnp.maximum(threshold, jnp.zeros([], threshold.dtype))
        threshold = jnp.broadcast_to(threshold, jnp.shape(statistic))
        return threshold, ScheduleState(count=increment(state.count))

    return ThresholdRule(init_fn, update_fn)


def check_schedule(name: str, schedule: Callable[..., Any]) -> None:
    """Checks that a callable is a schedule: called on an int32 step count it
    returns a real scalar. Catches an uncalled rule factory
    (``adaclip.ema``) or a rule's own function passed as a threshold."""
    kind = (
        f"{name} must be a number, an optax schedule (a callable of the int32 step count "
        "returning a scalar) or an adaclip.ThresholdRule"
    )
    try:
        out = jax.eval_shape(schedule, jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as err:  # noqa: BLE001 (any failure means "not a schedule")
        raise TypeError(
            f"{kind}, got {schedule!r}, which fails when called on a step count "
            f"({type(err).__name__}: {err}). Was a rule factory passed uncalled?"
        ) from None
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    real = dtype is not None and (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    )
    if shape != () or not real:
        raise TypeError(
            f"{kind}, got {schedule!r}, which returns {out!r} for a step count instead of "
            "a real scalar. Was a rule factory passed uncalled?"
        )


def _is_posinf(x: Any) -> bool:
    """A concrete ``+inf`` (a clipper's "measure only" threshold)."""
    if _validation.is_traced(x) or isinstance(x, bool | str) or x is None:
        return False
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001
        return False
    if arr.size != 1 or arr.dtype.kind not in "f":
        return False
    return math.isinf(float(arr.reshape(()))) and float(arr.reshape(())) > 0


def as_rule(
    threshold: ThresholdLike, name: str = "threshold", *, allow_inf: bool = False
) -> ThresholdRule:
    """Turns a float, an optax schedule or a rule into a
    [`adaclip.ThresholdRule`][adaclip.ThresholdRule].

    ``name`` is the argument's name in error messages. With ``allow_inf``
    (a clipper's own threshold), ``math.inf`` is accepted and means
    "measure only": no bound at any step.
    """
    if isinstance(threshold, ThresholdRule):
        return threshold
    if callable(threshold):
        check_schedule(name, threshold)
        return schedule_rule(threshold)
    if allow_inf and _is_posinf(threshold):
        return constant_rule(math.inf)
    try:
        _validation.check_nonnegative(name, threshold)
    except TypeError as err:
        raise TypeError(
            f"{name} must be a number, an optax schedule or an adaclip.ThresholdRule ({err})"
        ) from None
    return constant_rule(threshold)


def _is_variable(x: Any) -> bool:
    # Only a loaded flax can have made a Variable: no import of flax here.
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Variable)


def tree_structure(tree: PyTree) -> Any:
    """The treedef that a clipper records at ``init`` and checks at ``update``.

    A flax ``nnx.Variable`` counts as what it wraps: ``nnx.Optimizer`` calls
    ``init`` on the model's ``Param`` Variables and ``update`` on their plain
    arrays (``nnx.as_pure``), the same leaves at the same paths. (Inside
    ``optax.partition`` or ``optax.masked``, ``init`` gets a Variable around
    optax's ``MaskedNode`` where ``update`` gets the bare ``MaskedNode``.)
    """
    unwrapped = jax.tree.map(
        lambda x: x.get_value() if _is_variable(x) else x, tree, is_leaf=_is_variable
    )
    return jax.tree.structure(unwrapped)


def check_structure(name: str, initialised: Any, updates: PyTree) -> None:
    """Raises if ``updates`` is not shaped like the tree ``name`` was initialised on.

    ``initialised`` is the `tree_structure` of that tree (``None`` skips the check).
    Equal leaf counts are not enough: a per-leaf state initialised on
    ``{a, b}`` and updated with ``{b, c}`` would clip ``b`` against ``a``'s
    history. Treedefs are static, so this runs at trace time, under ``jax.jit``
    too, with no host sync.
    """
    if initialised is None:
        return
    got = tree_structure(updates)
    if got != initialised:
        raise ValueError(
            f"{name} was initialised on a tree of structure {initialised} but update got a "
            f"tree of structure {got}: pass updates shaped like the params given to init "
            "(or init a new state for the new tree)."
        )


def tree_select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """``jnp.where(pred, a, b)`` leaf by leaf, for a scalar ``pred``."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def rule_name(rule: ThresholdRule) -> str:
    """A name for ``rule`` in error messages: the factory that built it.

    A rule has no name of its own, so it is derived from its ``update``
    function: ``ema.<locals>.update_fn`` names ``ema``; a function of the
    user's (a lambda, a method) is named by module and qualified name.
    """
    update = rule.update
    update = getattr(update, "func", update)  # functools.partial
    qualname = getattr(update, "__qualname__", None)
    if qualname is None:
        return repr(update)
    module = getattr(update, "__module__", None) or ""
    if "<locals>" in qualname and module.startswith("adaclip"):
        return qualname.split(".<locals>")[0]
    return f"{module}.{qualname}" if module else qualname


def step_rule(
    rule: ThresholdRule, statistic: jax.Array, state: PyTree, *, signed: bool = False
) -> tuple[jax.Array, PyTree, jax.Array]:
    """Steps ``rule`` once, keeping a bad step out of its state.

    Returns ``(threshold, new_state, finite)``. The rule sees the statistic
    in float32 (a finite float64 statistic beyond float32's range is held at
    the float32 maximum). A step is *finite* when every entry of ``statistic``
    is finite and every entry of the rule's threshold is a bound: ``>= 0``
    (a ``+inf`` threshold is allowed: no bound this step), or, with
    ``signed`` (a loss rule, whose statistic may be negative), ``> -inf``.
    Otherwise ``finite`` is False and ``new_state`` is ``state`` unchanged, and
    the threshold returned is not meaningful (callers replace it): a NaN,
    negative or ``-inf`` threshold, from a hand-written rule or an injected
    negative hyper-parameter, is treated like a NaN statistic, never used to
    clamp (a negative bound would flip signs). The threshold is float32, or
    float64 when the rule gives float64 (a fixed threshold under
    ``jax_enable_x64``). Clippers, ``skip_bad_steps`` and offline replay all
    step rules through this function, so they agree step for step.

    Raises:
        ValueError: at trace time, when the rule's threshold is neither shaped
            like the statistic nor a scalar (which is broadcast), naming the
            rule and both shapes.
    """
    statistic = jnp.asarray(statistic)
    stat_finite = jnp.all(jnp.isfinite(statistic))
    statistic = saturating_f32(statistic)
    threshold, new_state = rule.update(statistic, state)
    threshold = as_threshold(threshold)
    if threshold.shape not in (statistic.shape, ()):
        raise ValueError(
            f"the threshold rule {rule_name(rule)} returned a threshold of shape "
            f"{threshold.shape} for a statistic of shape {statistic.shape}: a rule's "
            "threshold must be shaped like its statistic (or be a scalar)."
        )
    threshold = jnp.broadcast_to(threshold, statistic.shape)
    # NaN is ruled out explicitly: `>=` and `>` are False for NaN, but XLA
    # folds `maximum(x, 0) >= 0` (a schedule held at 0) to True under jit.
    is_bound = (threshold > -jnp.inf if signed else threshold >= 0) & ~jnp.isnan(threshold)
    finite = stat_finite & jnp.all(is_bound)
    new_state = tree_select(finite, new_state, state)
    return threshold, new_state, finite


def saturating_f32(x: jax.Array) -> jax.Array:
    """``x`` in float32, finite values beyond its range held at its maximum
    (a float64 statistic above ~3.4e38 stays finite for a float32 rule)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.float32:
        return x
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits > 32:
        x = jnp.where(jnp.isfinite(x), jnp.clip(x, -F32_MAX, F32_MAX), x)
    return x.astype(jnp.float32)


def reported_threshold(threshold: jax.Array, statistic: jax.Array) -> jax.Array:
    """The threshold a metric records: the statistic where there is no bound
    (``+inf``), so the metric stays finite and nothing is cut."""
    return jnp.where(jnp.isposinf(threshold), statistic.astype(threshold.dtype), threshold)


def feed_patience(span: Any) -> jax.Array:
    """The patience of a clipped feed, ``ceil(FEED_PATIENCE_SPANS * span)``
    steps (int32, at least 1), for a rule whose memory spans ``span`` steps.

    ``span`` may be traced (a decay given to ``optax.inject_hyperparams``).
    """
    k = jnp.ceil(FEED_PATIENCE_SPANS * as_f32(span))
    return jnp.clip(k, 1.0, 2.0**30).astype(jnp.int32)


def ema_span(decay: Any) -> jax.Array:
    """The span ``1 / (1 - decay)`` of an EMA, in steps (float32)."""
    return 1.0 / jnp.maximum(1.0 - as_f32(decay), 2.0**-30)


def feed_step(
    feed: str, statistic: jax.Array, level: jax.Array, run: jax.Array, patience: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """What a rule puts into its own state this step: ``(fed, new_run)``.

    The one feed mechanism of every rule with a ``feed=`` argument
    (``ema``, ``ema_zscore``, ``moving_average``, ``rolling_zscore``).
    ``level`` is the level the rule cuts the statistic at this step (its
    threshold, or the statistic itself where it sets no bound yet), ``run``
    (int32, the statistic's shape) counts the consecutive steps on which
    each entry was cut, and ``patience`` is `feed_patience` of the rule's
    span.

    - ``feed="raw"``: ``fed = statistic``, and ``run`` stays 0.
    - ``feed="clipped"``: ``fed = min(statistic, level)``, so a spike enters
      the rule's memory only up to the threshold. An entry that has been cut
      on each of the last ``patience`` steps (and is cut again) is not
      spiking: the statistic has left the level the rule remembers for good
      (a zero or tiny start, a dormant leaf, a level shift larger than the
      rule can follow, a multiplier below 1 that would shrink the threshold
      for ever). Such an entry is fed the raw statistic until a step is not
      cut, so no clipped feed can hold a rule's state at a level the raw
      statistics have left: after ``patience`` steps the state moves as a
      raw-fed one does, whatever its value was (zero, 1e-30 or a constant).

    On a sequence where no entry is cut ``patience`` steps in a row (every
    ordinary run of statistics), this is exactly ``min(statistic, level)``.
    """
    if feed == "raw":
        return statistic, jnp.zeros_like(run)
    cut = statistic > level
    run = jnp.where(cut, jnp.minimum(run, patience) + 1, 0).astype(jnp.int32)
    fed = jnp.where(run > patience, statistic, jnp.minimum(statistic, level))
    return fed, run


def no_scale(feed: str, memory_is_zero: jax.Array) -> jax.Array:
    """The entries of a rule's memory that hold no scale: all zero, with a clipped feed.

    A zero statistic carries no scale. A rule fed its clipped statistic
    whose memory is all zero would set a zero threshold, feed itself
    ``min(statistic, 0) = 0`` and stay there for ever; so such an entry sets
    no bound (the threshold is the statistic) and takes its next nonzero
    statistic as its whole memory. A raw feed is never trapped by a zero
    memory (the next statistic enters as it is), so there the rule keeps its
    formula (a zero threshold for one step) and this returns False.
    """
    if feed == "raw":
        return jnp.zeros_like(memory_is_zero)
    return memory_is_zero


def feed_run_init(statistic: jax.Array) -> jax.Array:
    """The initial run counter of `feed_step`: int32 zeros shaped like ``statistic``."""
    return jnp.zeros(jnp.shape(statistic), jnp.int32)
