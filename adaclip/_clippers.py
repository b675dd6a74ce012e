"""Clippers: measure a statistic of the gradients, ask a rule for a threshold, scale."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from adaclip import _blocks, _numerics, _validation
from adaclip._base import (
    PyTree,
    ThresholdLike,
    as_rule,
    check_structure,
    increment,
    reported_threshold,
    saturating_f32,
    step_rule,
    tree_structure,
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

    Shapes are ``()`` for global and value clipping, ``(n_leaves,)`` for
    per-leaf clipping and ``(n_units,)`` for unit-wise clipping (every leaf's
    units, flattened, in leaf order; ``adaclip.metrics(opt_state, params)``
    splits them by leaf). On a step whose statistic is not finite, ``norm``,
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
    # Per-leaf and unit-wise clippers: each leaf's path and the shape of its
    # blocks, for adaclip.metrics(state, params). Held in dict keys (the tree
    # structure, static under jit), never in arrays; None for the others.
    blocks: Any = None


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
    the whole statistic at once; ``clip_leaf(g, factor, keep_update, dims)``
    returns the clipped leaf ``g`` from its entry of the factor (``dims``: the
    leaf's axes that the entry spans; ``keep_update=False`` zeroes it);
    ``per_leaf`` says whether the statistic has one entry per leaf;
    ``complex_ok`` whether complex leaves can be clipped. ``block`` is what
    one entry of a norm statistic covers (``"tree"``, ``"leaf"`` or
    ``"unit"``; ``None`` for value clipping); with it the measures of
    `_Measure` apply, through `_numerics.block_norms` (``statistic`` is the
    plain L2 norm's fast path).
    """

    statistic: Callable[..., tuple[jax.Array, Any]]
    factor: Callable[[jax.Array, jax.Array], jax.Array]
    clip_leaf: Callable[..., jax.Array]
    per_leaf: bool
    complex_ok: bool
    name: str
    block: str | None = None


class _Measure(NamedTuple):
    """What a norm clipper's statistic is, per block ``b``: the L2 norm
    $\\lVert g_b \\rVert$; with ``rms`` that norm over $\\sqrt{|b|}$; with
    ``relative`` $\\lVert g_b \\rVert / \\max(\\lVert w_b \\rVert, \\epsilon)$, ``w``
    the parameters. ``axis`` picks the units of a unit-wise clipper."""

    relative: bool = False
    eps: Any = 1e-3
    rms: bool = False
    axis: Any = None


_L2 = _Measure()

# A rule's state may hold at most this many bytes (a window rule over
# 400 000 units would otherwise ask for tens of gigabytes at init).
MAX_RULE_STATE_BYTES = 1 << 30


def _check_measure(spec: _ClipperSpec, measure: _Measure) -> None:
    _validation.check_bool("relative", measure.relative)
    _validation.check_bool("rms", measure.rms)
    _validation.check_positive("eps", measure.eps)
    _blocks.check_axis(measure.axis)
    if measure.relative and measure.rms:
        raise ValueError(
            f"{spec.name}: rms=True with relative=True is refused (the ratio to the "
            "parameters' norm is already free of the block's size), got rms=True."
        )


def _layout(
    spec: _ClipperSpec, measure: _Measure, paths: list, leaves: list, blocks: Any = None
) -> _numerics.Layout:
    """The blocks of the statistic (the gradients' only; `relative` adds the
    parameters' as a second copy). ``blocks``, the state's record of them,
    gives a unit-wise clipper the axes that ``init`` chose."""
    shapes = [tuple(np.shape(x)) for x in leaves]
    if spec.block == "unit":
        recorded = _blocks.decode(blocks) if blocks else []
        if len(recorded) == len(leaves):
            axes = tuple(ax for _, _, ax in recorded)
        else:
            axes = tuple(
                _blocks.reduced_axes(measure.axis, p, x) for p, x in zip(paths, leaves, strict=True)
            )
        kept = tuple(
            tuple(shape[d] for d in _numerics.kept_axes(len(shape), a))
            for shape, a in zip(shapes, axes, strict=True)
        )
        return _numerics.Layout(axes, tuple(range(len(leaves))), kept)
    axes = tuple(tuple(range(len(shape))) for shape in shapes)
    if spec.block == "leaf":
        return _numerics.Layout(axes, tuple(range(len(leaves))), ((),) * len(leaves))
    return _numerics.Layout(axes, (0,) * len(leaves), ((),))


def _with_params(layout: _numerics.Layout) -> _numerics.Layout:
    """``layout`` twice: the gradients' blocks, then the parameters'."""
    shift = len(layout.kept_shapes)
    return _numerics.Layout(
        layout.axes * 2,
        layout.groups + tuple(g + shift for g in layout.groups),
        layout.kept_shapes * 2,
    )


def _block_sizes(layout: _numerics.Layout, leaves: list) -> np.ndarray:
    """The number of elements of each block, ``(layout.size,)``."""
    sizes = np.zeros(layout.size, np.float64)
    for x, axes, group in zip(leaves, layout.axes, layout.groups, strict=True):
        start = layout.offsets[group]
        n = math.prod(layout.kept_shapes[group])
        sizes[start : start + n] += math.prod(np.shape(x)[d] for d in axes)
    return sizes


def _rule_name(rule: Any) -> str:
    init = getattr(rule.init, "__wrapped__", rule.init)
    name = getattr(init, "__qualname__", "").split(".")[0]
    return name if name and not name.startswith("<") else "the threshold rule"


def _check_rule_state_size(rule: Any, statistic: jax.ShapeDtypeStruct, blocks: str) -> None:
    """Fails (at init) when the rule's state would not fit the number of blocks."""
    state = jax.eval_shape(rule.init, statistic)
    nbytes = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
    if nbytes > MAX_RULE_STATE_BYTES:
        kinds = sorted({type(x).__name__ for x in jax.tree.leaves(state, is_leaf=_is_state)})
        n = statistic.shape[0] if statistic.shape else 1
        raise ValueError(
            f"the threshold rule {_rule_name(rule)} ({', '.join(kinds)}) would keep "
            f"{nbytes / 2**30:.1f} GiB of state for {n} {blocks}, above the limit of "
            f"{MAX_RULE_STATE_BYTES / 2**30:.0f} GiB. Use a rule whose state per block is "
            "a few numbers (ema, zscore, ema_zscore, quantile), a shorter window, or larger "
            "blocks (clip_by_leaf_norm, or a coarser axis)."
        )


def _is_state(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _make_clipper(
    spec: _ClipperSpec,
    *,
    threshold: ThresholdLike,
    nonfinite: str,
    axis_name: Any,
    measure: _Measure = _L2,
) -> optax.GradientTransformationExtraArgs:
    """The machinery shared by all clippers (see `_ClipperSpec`, `_Measure`)."""
    _validation.check_choice("nonfinite", nonfinite, NONFINITE)
    _check_measure(spec, measure)
    rule = as_rule(threshold, allow_inf=True)
    # The plain L2 norm of a tree or a leaf keeps its own (fast) statistic.
    general = spec.block == "unit" or measure.relative or measure.rms
    named = spec.block in ("leaf", "unit")

    def describe(tree, blocks=None):
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
        paths = [p for p, _ in with_paths]
        leaves = [x for _, x in with_paths]
        return paths, leaves, treedef, _layout(spec, measure, paths, leaves, blocks)

    def init_fn(params):
        paths, leaves, _, layout = describe(params)
        if spec.block is None:
            shape = ()
        else:
            shape = (layout.size,) if spec.block == "unit" else (len(layout.kept_shapes),)
            if spec.block == "tree":
                shape = ()
        zeros = jax.ShapeDtypeStruct(shape, jnp.float32)
        blocks_kind = {"unit": "units", "leaf": "leaves"}.get(spec.block or "", "blocks")
        _check_rule_state_size(rule, zeros, blocks_kind)
        blocks = None
        if named:
            names = [_blocks.path_name(p) for p in paths]
            blocks = _blocks.encode(names, list(layout.kept_shapes), list(layout.axes))
        # Each field its own buffer, so that the state can be donated.
        return _state_type(tree_structure(params))(
            norm=jnp.zeros(shape, jnp.float32),
            threshold=jnp.zeros(shape, jnp.float32),
            clipped=jnp.zeros(shape, jnp.bool_),
            clip_rate=jnp.zeros(shape, jnp.float32),
            nonfinite_count=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
            rule_state=rule.init(jnp.zeros(shape, jnp.float32)),
            blocks=blocks,
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        check_structure(spec.name, getattr(state, "_structure", None), updates)
        if measure.relative and params is None:
            raise ValueError(
                f"{spec.name}(relative=True) divides each block's gradient norm by the "
                "parameters' norm: pass params to update, tx.update(grads, state, params) "
                "(optax.chain passes them on), got params=None."
            )
        paths, leaves, treedef, layout = describe(updates, state.blocks)
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
        if general:
            # The blocks' reductions need the leaf's axes: a non-float leaf
            # becomes zeros of its shape (a constant XLA folds).
            stat_leaves = [
                g if c else jnp.zeros(np.shape(g), jnp.float32)
                for g, c in zip(leaves, clippable, strict=True)
            ]
            if measure.relative:
                layout_all = _with_params(layout)
                param_leaves = treedef.flatten_up_to(params)
                stat_leaves = stat_leaves + [
                    w if _is_inexact(w) else jnp.zeros(np.shape(w), jnp.float32)
                    for w in param_leaves
                ]
            else:
                layout_all = layout
            statistic = functools.partial(_numerics.block_norms, layout=layout_all)
            sizes = _block_sizes(layout, leaves) if measure.rms else None
        else:
            stat_leaves = [g if c else zero for g, c in zip(leaves, clippable, strict=True)]
            statistic = spec.statistic
            sizes = None
            if measure.rms:  # pragma: no cover - rms takes the general path
                raise AssertionError

        def measured(raw):
            """The statistic from the measured norms (the measure's maths)."""
            if measure.relative:
                n = raw.shape[0] // 2
                eps = jnp.asarray(measure.eps).astype(raw.dtype)
                stat = raw[:n] / jnp.maximum(raw[n:], eps)
            elif sizes is not None:
                count = np.sqrt(sizes)
                stat = raw / jnp.asarray(count, raw.dtype)
                if axis_name is not None:
                    stat = stat / jnp.sqrt(jnp.asarray(lax.axis_size(axis_name), raw.dtype))
            else:
                stat = raw
            if spec.block == "tree":
                stat = jnp.reshape(stat, ())
            return stat

        def step(raw):
            # The rule's step and the clip factor, from the statistic. Run
            # inside the statistic's loop (see _numerics._measure), so that
            # XLA computes these scalars once instead of fusing a copy into
            # every leaf's optimizer loop.
            stat = measured(raw) if general else raw
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
            factor = spec.factor(stat_w, bound)
            return factor, threshold, clipped, rule_state, finite, stat

        stepped: Any = statistic(stat_leaves, axis_name=axis_name, step=step)[1]
        factor, threshold, clipped, rule_state, finite, stat = stepped
        keep_update = jnp.asarray(True) if nonfinite == "propagate" else finite
        new_leaves = [
            spec.clip_leaf(g, leaf_factor, keep_update, dims) if c else g
            for g, c, (leaf_factor, dims) in zip(
                leaves, clippable, _leaf_factors(spec, factor, layout, leaves), strict=True
            )
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
            blocks=state.blocks,
        )
        return jax.tree.unflatten(treedef, new_leaves), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _leaf_factors(
    spec: _ClipperSpec, factor: jax.Array, layout: _numerics.Layout, leaves: list
) -> list[tuple[jax.Array, tuple[int, ...]]]:
    """Each leaf's part of the factor and the leaf axes it spans: a scalar
    (one block per leaf, or the whole tree), or the leaf's units, shaped like
    its kept axes."""
    if spec.block == "unit":
        # Each leaf reads its units at an offset XLA cannot fold (see
        # _numerics.opaque_ints), so leaves of one shape share their kernels
        # (the optimizer's loops that the factor fuses into); constant slices
        # made every leaf's kernels distinct, 3-5x optax's compile time.
        starts = [layout.offsets[group] for group in layout.groups]
        out = []
        for x, axes, group, start in zip(
            leaves, layout.axes, layout.groups, _numerics.opaque_ints(starts, factor), strict=True
        ):
            shape = layout.kept_shapes[group]
            part = lax.dynamic_slice(factor, (start,), (math.prod(shape),))
            out.append((jnp.reshape(part, shape), _numerics.kept_axes(np.ndim(x), axes)))
        return out
    if spec.per_leaf:
        return [(f, ()) for f in _entries(factor)]
    return [(factor, ())] * len(leaves)


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


def _broadcast(x: jax.Array, like: jax.Array, dims: tuple[int, ...] = ()) -> jax.Array:
    return lax.broadcast_in_dim(x, like.shape, dims)


def _finish_leaf(g: jax.Array, out: jax.Array, keep_update: jax.Array) -> jax.Array:
    """``out`` where ``keep_update`` else 0 (a select, so NaN elements become
    0), cast back to ``g``'s dtype."""
    out = lax.select(_broadcast(keep_update, out), out, lax.full_like(out, 0))
    return _numerics.convert(out, g.dtype)


def _scale_leaf(
    g: jax.Array, scale: jax.Array, keep_update: jax.Array, dims: tuple[int, ...] = ()
) -> jax.Array:
    """``(g.astype(w) * scale).astype(g.dtype)`` with one scalar multiply,
    ``w`` the wider of float32 and ``g``'s dtype.

    The scale is a scalar, so XLA fuses the multiply into whatever reads the
    clipped gradient next (Adam's moment updates) instead of writing a new
    gradient tree. ``keep_update=False`` zeroes the leaf (a skipped step),
    with a select rather than a multiply so NaN elements become 0. Written
    with ``lax`` ops, which are cheaper to trace than ``jnp``'s for a function
    that runs once per leaf. A unit-wise scale has the shape of the leaf's
    kept axes ``dims`` and is broadcast along the others.
    """
    w = _numerics.work_dtype(g.dtype)
    y = _numerics.convert(g, w)
    scale = _broadcast(_numerics.convert(scale, w), y, dims)
    return _finish_leaf(g, lax.mul(y, scale), keep_update)


def _value_bound(max_abs: jax.Array, threshold: jax.Array) -> jax.Array:
    """Value clipping's factor is the bound itself."""
    del max_abs
    return threshold


def _clamp_leaf(
    g: jax.Array, bound: jax.Array, keep_update: jax.Array, dims: tuple[int, ...] = ()
) -> jax.Array:
    """Element-wise clamp of ``g`` to ``[-bound, bound]`` (NaN stays NaN)."""
    del dims  # one bound for the whole tree
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
    block="tree",
)
_LEAF = _ClipperSpec(
    statistic=_numerics.leaf_norms,
    factor=_norm_scale,
    clip_leaf=_scale_leaf,
    per_leaf=True,
    complex_ok=True,
    name="clip_by_leaf_norm",
    block="leaf",
)
_UNIT = _ClipperSpec(
    statistic=_numerics.block_norms,
    factor=_norm_scale,
    clip_leaf=_scale_leaf,
    per_leaf=False,
    complex_ok=True,
    name="clip_by_unit_norm",
    block="unit",
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
    threshold: ThresholdLike | None = None,
    *,
    max_norm: ThresholdLike | None = None,
    relative: bool = False,
    eps: float = 1e-3,
    rms: bool = False,
    nonfinite: str = "skip",
    axis_name: Any = None,
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
        max_norm: optax's name for ``threshold`` (give one of the two).
        relative: measure $\\lVert g_b \\rVert / \\max(\\lVert w_b \\rVert, \\epsilon)$
            with ``w`` the ``params`` given to ``update`` (a Python bool).
        eps: $\\epsilon > 0$, the floor of the parameters' norm (zero-initialised
            weights still move): used with ``relative``.
        rms: divide each block's norm by $\\sqrt{|b|}$ (a Python bool).
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
            ``TypeError``), both or neither of ``threshold`` and ``max_norm``,
            a bad ``relative``, ``eps`` or ``rms``, or ``rms`` with ``relative``.

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

        optax's spelling, and the norm relative to the parameters':

        >>> tx = adaclip.clip_by_global_norm(max_norm=0.5, relative=True)
        >>> params = {"w": jnp.array([0.0, 5.0, 0.0])}
        >>> updates, state = tx.update(grads, tx.init(params), params)
        >>> float(state.norm), updates["w"]
        (1.0, Array([1.5, 0. , 2. ], dtype=float32))
    """
    return _make_clipper(
        _GLOBAL,
        threshold=_threshold_or_max_norm(threshold, max_norm),
        nonfinite=nonfinite,
        axis_name=axis_name,
        measure=_Measure(relative=relative, eps=eps, rms=rms),
    )


def _threshold_or_max_norm(threshold: Any, max_norm: Any) -> ThresholdLike:
    """``threshold``, or optax's name for it, ``max_norm``: exactly one."""
    if threshold is not None and max_norm is not None:
        raise TypeError(
            "clip_by_global_norm takes threshold or max_norm (optax's name for it), not "
            f"both: got threshold={threshold!r} and max_norm={max_norm!r}."
        )
    if threshold is None and max_norm is None:
        raise TypeError(
            "clip_by_global_norm needs a threshold (or max_norm, optax's name for it), "
            "got threshold=None."
        )
    if threshold is not None:
        return threshold
    # Validated under its own name, so that an error names max_norm.
    return as_rule(cast(ThresholdLike, max_norm), "max_norm", allow_inf=True)


def clip_by_leaf_norm(
    threshold: ThresholdLike,
    *,
    relative: bool = False,
    eps: float = 1e-3,
    rms: bool = False,
    nonfinite: str = "skip",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Clips each leaf by its own L2 norm ("local" or per-layer clipping).

    $$g_i \\leftarrow g_i \\cdot \\min\\left(1, \\frac{c_{t,i}}{\\lVert g_i \\rVert_2}\\right)$$

    One norm and one threshold per leaf, in ``jax.tree.leaves`` order; the
    rule runs element-wise on the vector of leaf norms, so each leaf gets its
    own adaptive threshold (like Keras ``clipnorm``, which clips each
    variable separately). A step counts as non-finite when any leaf's norm is.
    ``adaclip.metrics(opt_state, params)`` names each leaf's entries by its
    path (``"norm/dense/kernel"``).

    **Measures.** ``rms=True`` divides each block's norm by the square root
    of its number of elements, $\\lVert g_b \\rVert_2 / \\sqrt{|b|}$ (chained
    after an optimizer, a bound on the update's RMS: Adafactor's and t5x's
    update clipping). ``relative=True`` measures each block against the
    parameters passed to ``update``,
    $\\lVert g_b \\rVert_2 / \\max(\\lVert w_b \\rVert_2, \\epsilon)$
    (Brock et al.'s adaptive gradient clipping), so the threshold is a ratio;
    ``update`` without ``params`` then raises. Both read each array once,
    accumulate in float32 (float64 with a float64 leaf), and never overflow.
    ``rms=True`` with ``relative=True`` is refused: the ratio is already free
    of the block's size.

    ``optax.chain(optimizer, adaclip.clip_by_leaf_norm(c, rms=True))`` is
    ``optax.chain(optimizer, optax.clip_by_block_rms(c))`` with adaclip's
    rules, metrics and NaN handling.

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
        relative: measure $\\lVert g_b \\rVert / \\max(\\lVert w_b \\rVert, \\epsilon)$
            with ``w`` the ``params`` given to ``update`` (a Python bool).
        eps: $\\epsilon > 0$, the floor of the parameters' norm (zero-initialised
            weights still move): used with ``relative``.
        rms: divide each block's norm by $\\sqrt{|b|}$ (a Python bool).
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

        Adafactor's update clipping: each leaf's update RMS at most 1,

        >>> tx = adaclip.clip_by_leaf_norm(1.0, rms=True)
        >>> grads = {"a": jnp.full(4, 2.0), "b": jnp.full(4, 0.5)}
        >>> updates, state = tx.update(grads, tx.init(grads))
        >>> state.norm
        Array([2. , 0.5], dtype=float32)
        >>> updates["a"], updates["b"]
        (Array([1., 1., 1., 1.], dtype=float32), Array([0.5, 0.5, 0.5, 0.5], dtype=float32))
    """
    return _make_clipper(
        _LEAF,
        threshold=threshold,
        nonfinite=nonfinite,
        axis_name=axis_name,
        measure=_Measure(relative=relative, eps=eps, rms=rms),
    )


def clip_by_unit_norm(
    threshold: ThresholdLike,
    *,
    axis: _blocks.AxisLike = None,
    relative: bool = False,
    eps: float = 1e-3,
    rms: bool = False,
    nonfinite: str = "skip",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Clips each unit of each leaf by its own L2 norm (unit-wise clipping).

    $$g_u \\leftarrow g_u \\cdot \\min\\left(1, \\frac{c_{t,u}}{s_u}\\right),
      \\qquad s_u = \\lVert g_u \\rVert_2$$

    A *unit* is a slice of a leaf: the leaf is reduced over some of its axes
    and every index of the axes it keeps is one unit. With ``axis=None``
    units follow optax's ``unitwise_norm``: a leaf that is a scalar or a
    vector once its size-1 axes are squeezed is one unit; a rank-2 ``(in,
    out)`` or rank-3 ``(in, heads, out)`` kernel reduces axis 0 (one unit per
    output); a rank-4 HWIO convolution reduces ``(0, 1, 2)``; a rank-5 one
    ``(0, 1, 2, 3)``; a higher rank fails at ``init``, asking for ``axis``.
    ``axis`` may instead name the reduced axes of every leaf (an int or a
    tuple), or be a callable ``(path, leaf) -> axes`` (``path`` as
    ``jax.tree_util.tree_map_with_path`` gives it; ``None`` means optax's
    convention for that leaf). [`adaclip.stacked`][adaclip.stacked] builds
    the callable for layers stacked along one axis (``nnx.scan``,
    ``nn.scan``): one block per layer.

    The rule runs element-wise on the vector of all units' statistics, so
    each unit (or layer) has its own threshold, with any rule; its metrics
    are ``(n_units,)`` vectors, and ``adaclip.metrics(opt_state, params)``
    splits them by leaf, each entry shaped like the leaf's kept axes. A step
    counts as non-finite when any unit's statistic is. The scale is one
    number per unit, broadcast along the reduced axes into the next
    transformation's loop.

    **Measures.** ``rms=True`` divides each block's norm by the square root
    of its number of elements, $\\lVert g_b \\rVert_2 / \\sqrt{|b|}$ (chained
    after an optimizer, a bound on the update's RMS: Adafactor's and t5x's
    update clipping). ``relative=True`` measures each block against the
    parameters passed to ``update``,
    $\\lVert g_b \\rVert_2 / \\max(\\lVert w_b \\rVert_2, \\epsilon)$
    (Brock et al.'s adaptive gradient clipping), so the threshold is a ratio;
    ``update`` without ``params`` then raises. Both read each array once,
    accumulate in float32 (float64 with a float64 leaf), and never overflow.
    ``rms=True`` with ``relative=True`` is refused: the ratio is already free
    of the block's size.

    With ``relative=True`` and a fixed threshold $\\lambda$ this is AGC,
    ``optax.adaptive_grad_clip(λ, eps)``: see [`adaclip.agc`][adaclip.agc].

    ``threshold`` is a float (a fixed threshold), an optax schedule or an
    [`adaclip.ThresholdRule`][adaclip.ThresholdRule]; ``math.inf`` means
    "measure only". A rule whose state would not fit the number of units (a
    10 000-step window over 400 000 units) fails at ``init``. Dtypes,
    derivatives, donation and non-finite steps are as in
    [`adaclip.clip_by_global_norm`][adaclip.clip_by_global_norm].

    Args:
        threshold: a float >= 0, an optax schedule or a rule.
        axis: ``None`` (optax's units), an int or a tuple of ints (the axes
            every leaf reduces), or a callable ``(path, leaf) -> axes``.
        relative: measure $\\lVert g_b \\rVert / \\max(\\lVert w_b \\rVert, \\epsilon)$
            with ``w`` the ``params`` given to ``update`` (a Python bool).
        eps: $\\epsilon > 0$, the floor of the parameters' norm (zero-initialised
            weights still move): used with ``relative``.
        rms: divide each block's norm by $\\sqrt{|b|}$ (a Python bool).
        nonfinite: ``"skip"`` (the default) or ``"zero"``, the same mode:
            zero this clipper's output on a non-finite step; ``"propagate"``:
            pass it through.
        axis_name: the mapped axis over which the leaves are split; each
            unit's squared norm is summed over it, so every unit must be
            split along its reduced axes (each device holds part of every
            unit).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState] with metrics of shape ``(n_units,)``.

    Raises:
        TypeError, ValueError: a bad ``threshold``, ``axis``, ``relative``,
            ``eps``, ``rms`` or ``nonfinite``, or ``rms`` with ``relative``;
            at ``init``, a leaf that ``axis`` cannot split, or a rule state
            too large for the number of units.

    Examples:
        A ``(2, 2)`` kernel has two units, its columns:

        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_unit_norm(1.0)
        >>> grads = {"kernel": jnp.array([[3.0, 0.3], [4.0, 0.4]])}
        >>> updates, state = tx.update(grads, tx.init(grads))
        >>> state.norm
        Array([5. , 0.5], dtype=float32)
        >>> updates["kernel"]
        Array([[0.6, 0.3],
               [0.8, 0.4]], dtype=float32)

        One statistic per row instead (``axis=1`` reduces the columns):

        >>> tx = adaclip.clip_by_unit_norm(1.0, axis=1)
        >>> _, state = tx.update(grads, tx.init(grads))
        >>> state.norm
        Array([3.0149627, 4.0199504], dtype=float32)
    """
    return _make_clipper(
        _UNIT,
        threshold=threshold,
        nonfinite=nonfinite,
        axis_name=axis_name,
        measure=_Measure(relative=relative, eps=eps, rms=rms, axis=axis),
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
